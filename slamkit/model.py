"""Loading tokenizers and causal LMs, and building the TWIST-initialised model for training.

TWIST (Hassid et al., 2023): warm-start every weight of the model being trained from a pretrained text LM,
instead of a random initialisation. ``twist_init=False`` builds the same architecture with random weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from slamkit.errors import SlamkitError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` → ``torch.bfloat16``; an unknown name is an error listing the choices."""
    if name not in DTYPES:
        raise SlamkitError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _looks_local(name: str) -> bool:
    """A name that can only be a folder (absolute, relative with ./ ../ ~, or more than one '/')."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_source(name: str, what: str) -> None:
    if not os.path.exists(name) and _looks_local(name):
        raise SlamkitError(f"{name}: no such {what} folder")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` with one-line errors; a local folder never touches the network."""
    _check_source(name, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise SlamkitError(f"{name}: cannot load a tokenizer ({_first_line(err)})") from None


def load_causal_lm(
    name: str,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` from a hub id or folder; safetensors only unless ``allow_pickle``."""
    _check_source(name, "model")
    if os.path.isdir(name) and not (Path(name) / "config.json").is_file():
        raise SlamkitError(f"{name}: not a model folder (no config.json)")
    try:
        return AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise SlamkitError(f"{name}: cannot load the model ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
