"""Loading tokenizers and causal LMs, and building the TWIST-initialised model for training.

TWIST (Hassid et al., 2023): warm-start every weight of the model being trained from a pretrained text LM,
instead of a random initialisation. ``twist_init=False`` builds the same architecture with random weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Qwen3Config

    from slamkit.config import LoraSettings, ModelSettings

# The modelling classes are imported where a model is made: importing them costs seconds (torch's compiler stack),
# which step 2, a tokenizer's only user here, does not pay.

from slamkit.errors import SlamkitError, first_line

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


ATTENTION = ("sdpa", "eager", "flash_attention_2", "flex_attention")


def check_attention(name: str | None) -> None:
    """``model.attn_implementation`` names one transformers knows and whose package is installed (one line, before
    anything is loaded); None lets transformers choose."""
    if name is None:
        return
    if name not in ATTENTION:
        raise SlamkitError(f"model.attn_implementation={name!r}: not one of {', '.join(ATTENTION)} (or null)")
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise SlamkitError(
                "model.attn_implementation=flash_attention_2: the flash-attn package is not installed (or no CUDA "
                "GPU supports it here); pip install flash-attn, or use sdpa"
            )


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
    if not os.path.exists(name):
        offline_unless_the_hub_answers()


def offline_unless_the_hub_answers(seconds: float = 3.0) -> bool:
    """Without network the hub's clients retry for up to a minute before they fail: when the hub does not answer
    within ``seconds``, this process goes offline at once (the local cache still serves what it holds). True when
    offline (also when HF_HUB_OFFLINE was set)."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return True
    try:
        socket.create_connection((urlparse(hub.ENDPOINT).hostname, 443), timeout=seconds).close()
        return False
    except OSError:
        hub.HF_HUB_OFFLINE = True  # read at each request by huggingface_hub (and by transformers through it)
        os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries that read it later (datasets, when first imported)
        return True


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` with one-line errors; a local folder never touches the network."""
    _check_source(name, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(name, "a tokenizer", err) from None


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
        adapter = (Path(name) / "adapter_config.json").is_file()  # a LoRA run's checkpoint-N: the adapter alone
        raise SlamkitError(f"{name}: not a model folder (no config.json)" + (
            "; it holds a LoRA adapter: score the run's output folder, which holds the merged model" if adapter else ""))
    if os.path.isdir(name) and not allow_pickle:
        pickles = sorted(p.name for p in Path(name).glob("*.bin"))
        if pickles and not any(Path(name).glob("*.safetensors")):
            raise SlamkitError(
                f"{name}: only pickle weights ({', '.join(pickles)}), refused because unpickling can run code: "
                "convert them to safetensors, or opt in with allow_pickle=True (model.allow_pickle=true)"
            )
    for path in sorted(Path(name).glob("*.safetensors")) if os.path.isdir(name) else ():
        try:  # reads the header, and checks that the file holds every byte it lists
            safe_open(path, "pt")
        except SafetensorError as err:  # truncated or overwritten
            raise SlamkitError(f"{path}: corrupt weights file, cannot load the model ({first_line(err)})") from None
    from transformers import AutoModelForCausalLM

    report = logging.getLogger("transformers.modeling_utils")  # its load report: a table, refused below in one line
    quiet = lambda record: "LOAD REPORT" not in record.getMessage()  # noqa: E731
    report.addFilter(quiet)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True, output_loading_info=True, ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError, StrictDataclassError) as err:
        raise _load_error(name, "the model", err) from None
    finally:
        report.removeFilter(quiet)
    _refuse_unloaded_weights(name, info)
    return model


def _refuse_unloaded_weights(name: str, info: dict) -> None:
    """Every weight comes from the checkpoint, and all of it is used: a missing weight or one of another shape would
    be random, an unexpected one is another model's. (A tied LM head is tied to the loaded embeddings: not missing.)"""
    shapes = {key: f"{key} {list(stored)} in the file, {list(wanted)} in config.json"
              for key, stored, wanted in info["mismatched_keys"]}
    found = {"missing": info["missing_keys"], "unexpected": info["unexpected_keys"], "of another shape": shapes}
    parts = [f"{len(keys)} {what}: {', '.join(shapes.get(k, k) for k in sorted(keys)[:3])}{', ...' * (len(keys) > 3)}"
             for what, keys in found.items() if keys]
    if parts:
        raise SlamkitError(f"{name}: config.json does not describe its weights ({'; '.join(parts)}); refused rather "
                           "than run with weights left random or unused")


def _load_error(name: str, what: str, err: BaseException) -> SlamkitError:
    """``name: cannot load <what> (<reason>)``; a name that is no local folder was tried as a hub id: say so."""
    if os.path.exists(name):
        return SlamkitError(f"{name}: cannot load {what} ({first_line(err)})")
    import huggingface_hub.constants as hub

    offline = ("; offline, use a local folder: --tokenizer example_arc/sample/qwen_tokenizer (the Qwen vocabulary, "
               "bundled), or a real model built by python -m slamkit.real_models qwen2.5-coder-0.5b-instruct")
    reason = "the hub cannot be reached and the local cache does not hold it" if hub.HF_HUB_OFFLINE else first_line(err)
    return SlamkitError(f"{name}: no such local folder, and as a hub id: cannot load {what} ({reason}){offline}")


def load_model_config(name: str, trust_remote_code: bool = False):
    """``AutoConfig.from_pretrained`` with one-line errors (cheap: no weights are read)."""
    from transformers import AutoConfig

    _check_source(name, "model")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, StrictDataclassError) as err:
        raise _load_error(name, "the model config", err) from None


def embedding_rows(config_rows: int, tokenizer_size: int, vocab_size: int | None, name: str) -> int:
    """The embedding table's rows for training: the model's own, grown only to fit the tokenizer or ``vocab_size``.

    Qwen3 pads its table to 151,936 rows (> 151,669 tokens), so ChatML never grows it; a larger ``vocab_size``
    makes room for new token types (e.g. speech units). The table never shrinks.
    """
    if vocab_size is not None and vocab_size < tokenizer_size:
        raise SlamkitError(f"model.vocab_size={vocab_size} is smaller than the tokenizer ({tokenizer_size} tokens)")
    if vocab_size is not None and vocab_size < config_rows:
        raise SlamkitError(
            f"model.vocab_size={vocab_size} is smaller than {name}'s embedding table ({config_rows} rows); "
            "the table is never shrunk: set model.vocab_size=null"
        )
    return max(config_rows, tokenizer_size, vocab_size or 0)


def build_model(
    settings: ModelSettings, tokenizer_size: int, resume_from: Path | None = None, lora: LoraSettings | None = None
) -> PreTrainedModel:
    """The model to train: ``settings.base_model_name``'s architecture, TWIST-initialised from its weights
    (``twist_init``: warm-start every weight from the pretrained LM, Hassid et al. 2023) or random.

    The embedding table has :func:`embedding_rows` rows; rows added to it come from transformers' mean resizing
    (drawn around the mean of the old rows), and the log says so. ``resume_from``: the Trainer will load that
    checkpoint's weights over these, and the log says that instead.
    """
    name, dtype = settings.base_model_name, parse_dtype(settings.dtype)
    if settings.twist_init:
        model = load_causal_lm(name, dtype, settings.attn_implementation, settings.trust_remote_code, settings.allow_pickle)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(
            load_model_config(name, settings.trust_remote_code), dtype=dtype,
            attn_implementation=settings.attn_implementation, trust_remote_code=settings.trust_remote_code,
        )
    shown = str(dtype).removeprefix("torch.")
    if resume_from is not None:
        log.info("resuming from %s: its weights (in %s), optimizer state and schedule", resume_from, shown)
    elif settings.twist_init:
        log.info("TWIST init: every weight warm-started from %s (weights in %s)", name, shown)
    else:
        log.info("twist_init=false: %s architecture with random %s weights (from-scratch ablation)", name, shown)
    rows = model.get_input_embeddings().weight.shape[0]
    target = embedding_rows(rows, tokenizer_size, settings.vocab_size, name)
    if target > rows:
        model.resize_token_embeddings(target, mean_resizing=True)
        log.info("embedding table grown from %d to %d rows; new rows initialised by mean resizing", rows, target)
    else:
        log.info("embedding table kept at %d rows (tokenizer has %d tokens)", rows, tokenizer_size)
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    trained, total = (sum(p.numel() for p in model.parameters() if p.requires_grad or every) for every in (False, True))
    log.info("%s: %s of %s parameters trained (%.2f%%)", lora.describe(), f"{trained:,}", f"{total:,}", 100 * trained / total)
    return model


def choose_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; an explicit ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlamkitError(f"--device {device}: no CUDA device here (use --device cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SlamkitError(f"--device {device!r} is not a torch device (auto, cpu, cuda, cuda:1 ...)") from None


def cpu_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles). Without it (e.g. AVX2 only) torch
    emulates bfloat16 matmuls, several times slower than float32 (3.7x measured on an AMD EPYC, Zen 3)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_description() -> str:
    """``AVX512 with native bf16`` / ``AVX2, no native bf16``: what torch reports, for log lines and results."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability}, {'native bf16' if cpu_native_bf16() else 'no native bf16'}"


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype an evaluation runs the model in. ``auto`` is float32 on every device, so that every figure is the
    one a float32 scorer gives: a bfloat16 model's hidden states move near-ties (7 of the first 400 ARC-Easy test
    questions changed letter on Qwen2.5-Coder-0.5B, its letters already scored in float32); ``bfloat16`` is faster
    where the hardware has it. bfloat16 on a GPU without it is an error."""
    if dtype == "auto":
        return torch.float32
    chosen = parse_dtype(dtype)
    if chosen == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SlamkitError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bf16 (use float32 or float16)")
    return chosen


# Qwen3 shapes for random-weight models: the real Qwen3-0.6B (benchmarks) and a tiny one (tests, demo), both with
# Qwen3's real 151,936-row vocabulary so that the token ids are the real run's.
QWEN3_SHAPES = {
    "qwen3-0.6b": dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=3072, max_position_embeddings=40960,
    ),
    # the next sizes, as published (Qwen3-8B is the first with an untied LM head): what the memory plan is shown on
    "qwen3-1.7b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=6144, max_position_embeddings=40960),
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, max_position_embeddings=40960),
    "qwen3-8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=12288, max_position_embeddings=40960, tie_word_embeddings=False),
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, max_position_embeddings=1024,
    ),
    # the stand-in model that slamkit.training.rehearse_trainer checks the Trainer's settings with
    "micro": dict(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        intermediate_size=32, max_position_embeddings=64,
    ),
}


def qwen3_config(shape: str = "tiny", **overrides) -> Qwen3Config:
    """``Qwen3Config`` of a named shape (:data:`QWEN3_SHAPES`), real vocabulary, tied embeddings; ``overrides``
    change any field (e.g. ``vocab_size=1024`` for a faster test model)."""
    if shape not in QWEN3_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; one of {', '.join(QWEN3_SHAPES)}")
    from transformers import Qwen3Config

    fields = dict(vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, attention_dropout=0.0)
    return Qwen3Config(**{**fields, **QWEN3_SHAPES[shape], **overrides})


def random_model(config: Qwen3Config, seed: int = 0, attn_implementation: str | None = "sdpa") -> PreTrainedModel:
    """A float32 causal LM of ``config`` whose random weights depend only on ``seed``: the tiny test and demo
    model, and the benchmark's model of the real shape."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)


def save_random_model(folder: str | Path, config: Qwen3Config, tokenizer_dir: str | Path | None = None, seed: int = 0) -> Path:
    """:func:`random_model` saved to ``folder`` as a plain HF checkpoint (with the tokenizer of ``tokenizer_dir``
    beside it when given), so that the real ``from_pretrained`` path loads it."""
    random_model(config, seed).save_pretrained(folder)
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return Path(folder)


def head_logits(model, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The LM head applied in float32 to final hidden states ``hidden`` [N, H]: the logits of ``token_ids`` [N, C]
    only (the offered letters: no full-vocabulary logits), or of the whole vocabulary [N, V] when None.

    Whatever dtype the model runs in, the numbers that pick an answer are float32: in bfloat16 two letter logits
    between 16 and 32 that differ by less than 0.125 are equal, and argmax would hand the tie to the first letter."""
    head = model.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):  # inside the Trainer's bf16 autocast: float32 all the same
        if token_ids is None:
            logits = hidden.float() @ head.weight.float().T
        else:
            logits = torch.einsum("nh,nch->nc", hidden.float(), head.weight[token_ids].float())
        if getattr(head, "bias", None) is not None:
            logits = logits + (head.bias if token_ids is None else head.bias[token_ids]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 style: monotone, but it moves the probs
    return torch.tanh(logits / cap) * cap if cap else logits
