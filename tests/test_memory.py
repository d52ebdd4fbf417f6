"""The memory plan: counted from the model's config on the meta device, printed before any weight is read, and a
run that will not fit stops there in one line that says by how much and what would fit."""

from __future__ import annotations


import pytest
from helpers import SAMPLE_TOKENIZER, run_cli
from transformers import AutoTokenizer

from slamkit import memory
from slamkit.config import LoraSettings, ModelSettings
from slamkit.model import build_model, qwen3_config, random_model, save_random_model


def test_the_plan_counts_the_parameters_the_model_and_peft_really_have(tmp_path):
    """Full: the parameters of the real model (a tied head once); LoRA r=16 on all-linear: exactly the parameters peft
    makes trainable."""
    pytest.importorskip("peft")
    config = qwen3_config("tiny", vocab_size=1024)
    real = random_model(config)
    setup = memory.Setup(weight_bytes=4, activation_bytes=4, optimizer="adamw_torch", tokens=100)
    assert memory.plan(config, setup).parameters == sum(p.numel() for p in real.parameters())
    folder = save_random_model(tmp_path / "m", config)
    lora = build_model(ModelSettings(str(folder), str(folder)), 1024, lora=LoraSettings())
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert memory.plan(config, memory.Setup(4, 4, "adamw_torch", 100, lora_rank=16)).trained == trained


def test_the_plan_scales_as_stated():
    """AdamW keeps two moments (optimizer = 2 x gradients = 2 x weights in full fine-tuning); FSDP over 8 divides the
    states by 8; bf16 weights halve them; activation checkpointing keeps less than the whole layer stack."""
    config = qwen3_config("qwen3-0.6b")
    full = memory.plan(config, memory.Setup(4, 4, "adamw_torch_fused", 1232), "cuda")
    assert full.optimizer == 2 * full.gradients == 2 * full.weights == 2 * 4 * full.parameters
    sharded = memory.plan(config, memory.Setup(4, 4, "adamw_torch_fused", 1232, processes=8), "cuda")
    assert sharded.weights == full.weights / 8 and sharded.optimizer == full.optimizer / 8
    assert memory.plan(config, memory.Setup(2, 4, "adamw_torch_fused", 1232), "cuda").weights == full.weights / 2
    checkpointed = memory.plan(config, memory.Setup(4, 4, "adamw_torch_fused", 1232, checkpointing=True), "cuda")
    assert checkpointed.activations < full.activations / 10


def qwen3_8b_folder(tmp_path):
    """A folder with Qwen3-8B's config.json and the bundled tokenizer, and no weights at all."""
    folder = tmp_path / "qwen3-8b"
    qwen3_config("qwen3-8b").save_pretrained(folder)
    AutoTokenizer.from_pretrained(SAMPLE_TOKENIZER).save_pretrained(folder)
    return folder


def test_an_8b_model_stops_before_loading_with_the_plan_and_what_would_fit(tmp_path, sample_tokens):
    """cli/train_sft.py on Qwen3-8B's config (no weights in the folder) on this CPU: exit 2 at the memory plan (the
    8.19B parameters named, the GB it is short, the settings that would fit or that none does, the flag to run
    anyway), its output folder never made; memory_check=false goes past the plan (to the missing weights)."""
    free, _ = memory.available("cpu")
    if free > 150e9:
        pytest.skip("this machine has the RAM to fully fine-tune an 8B model")
    folder, out = qwen3_8b_folder(tmp_path), tmp_path / "run"
    args = [f"model.base_model_name={folder}", f"data.train_path={sample_tokens['train']}", "training_args.bf16=false",
            f"training_args.output_dir={out}", "training_args.eval_strategy=no", "training_args.use_cpu=true", "data.val_path=null"]
    code, printed, err = run_cli(*args)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: memory plan: this run needs ~"), printed + err
    assert " GB short; would fit: " in line and line.endswith("memory_check=false runs anyway")
    assert "8.19B parameters" in printed + err and not out.exists()
    code, printed, err = run_cli(*args, "memory_check=false")
    assert code == 2 and "memory plan" not in err.strip().splitlines()[-1] and str(folder) in err.strip().splitlines()[-1]
