"""Shared test helpers: tiny Qwen3 models built in-process, the bundled tokenizer, running scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # present on the project's machines and CI, absent in a user's clone
SAMPLE = REPO / "example_arc" / "sample"
SAMPLE_TOKENIZER = SAMPLE / "qwen_tokenizer"


def build_tiny_qwen3(folder: Path, vocab_size: int = 151936, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random tiny Qwen3 (real vocabulary size by default) and the bundled Qwen tokenizer to ``folder``."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=hidden // 4, vocab_size=vocab_size, max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(SAMPLE_TOKENIZER).save_pretrained(folder)
    return folder


OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "PYTHONIOENCODING": "utf-8",
}


def run_script(script: str, *args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root, offline; capture text output (3-5 s of imports)."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=REPO, env={**os.environ, **OFFLINE_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


_SCRIPTS: dict[str, ModuleType] = {}


def load_script(script: str) -> ModuleType:
    """Import a standalone script (not a package module) by path, once, to call its ``main(argv)`` in-process."""
    if script not in _SCRIPTS:
        path = REPO / script
        spec = importlib.util.spec_from_file_location("script_" + path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]
