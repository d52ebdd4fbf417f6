"""Step 3: configs compose, training writes plain HF checkpoints, TWIST really loads the base weights."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, SAMPLE, SAMPLE_TOKENIZER, build_tiny_qwen3, run_script
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from slamkit.chatml import encode_examples
from slamkit.jsonl import write_jsonl
from slamkit.model import build_model
from slamkit.training import (
    DataSettings,
    ModelSettings,
    SpeedSettings,
    train,
    training_arguments,
)

CONFIG_DIR = str(REPO / "config")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def token_files(tmp_path_factory) -> dict[str, Path]:
    """Step-2 rows of the bundled sample (first 48 train, 16 validation), with choice_ids."""
    from slamkit.arc import conversation_from_record
    from slamkit.jsonl import read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(SAMPLE_TOKENIZER)
    folder = tmp_path_factory.mktemp("tokens")
    files = {}
    for split, count in (("train", 48), ("validation", 16)):
        records = [conversation_from_record(r, f"{split}:{n}") for n, r in read_jsonl(SAMPLE / f"ARC-Easy-{split}.jsonl")][:count]
        encoded = encode_examples(tokenizer, [c.user_text for c in records], [c.assistant_text for c in records])
        letter = {x: tokenizer.convert_tokens_to_ids(x) for x in "ABCDE"}
        rows = [
            {"id": c.id, "input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids),
             "choice_ids": [letter[x] for x in c.choice_labels]}
            for c, e in zip(records, encoded)
        ]
        files[split] = folder / f"{split}_tokens.jsonl"
        write_jsonl(files[split], rows)
    return files


def run_train(base: Path, files: dict, out: Path, **overrides) -> Path:
    """train() on the tiny model in float32 on CPU with a few steps."""
    args = {
        "output_dir": str(out), "num_train_epochs": 1, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4, "learning_rate": 1e-3, "bf16": False, "eval_strategy": "no",
        "save_strategy": "epoch", "save_only_model": True, "logging_steps": 1, "report_to": "none", "seed": 0,
    }
    model_overrides = {k[6:]: overrides.pop(k) for k in list(overrides) if k.startswith("model_")}
    args.update(overrides)
    return train(
        ModelSettings(base_model_name=str(base), tokenizer_name=str(base), **model_overrides),
        DataSettings(train_path=str(files["train"]), val_path=str(files["validation"])),
        args,
        SpeedSettings(),
        run_config={"training_args": args},
    )


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("logger", ["print", "tensorboard", "wandb"])
def test_every_shipped_config_composes_into_training_arguments(logger, monkeypatch):
    """Each logger choice composes with the default groups, and its training_args build TrainingArguments
    (the logger's package counted as installed: its absence is the next test's subject)."""
    monkeypatch.setattr("slamkit.training._integration_available", lambda name: True)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train_sft", overrides=[f"logger={logger}"])
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["tokenizer_name"] == resolved["model"]["base_model_name"] == "Qwen/Qwen3-0.6B"
    args = training_arguments(resolved["training_args"], SpeedSettings(**resolved["speed"]), has_validation=True)
    assert args.report_to == ([] if logger == "print" else [logger])
    # The seed's 4 x 4 runs as one micro-batch of 16; 2,251 / 16 -> 141 steps per epoch -> checkpoint-423.
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)
    assert 3 * math.ceil(2251 / 16) == 423
    assert args.save_only_model and args.warmup_steps == 0.03 and args.lr_scheduler_type == "cosine"


def test_seed_training_command_writes_checkpoints_that_load_with_auto_classes(tiny_base, token_files, tmp_path):
    """The seed's cli/train_sft.py command (local tiny base model) writes checkpoint-N folders and a final folder
    that AutoModelForCausalLM / AutoTokenizer load, each holding the resolved run config."""
    out = tmp_path / "arc_model"
    done = run_script(
        "cli/train_sft.py",
        f"data.train_path={token_files['train']}", f"data.val_path={token_files['validation']}",
        f"training_args.output_dir={out}", "training_args.num_train_epochs=2",
        "training_args.per_device_train_batch_size=4", "training_args.gradient_accumulation_steps=4",
        "training_args.learning_rate=2e-5", "training_args.save_strategy=epoch", "training_args.eval_strategy=epoch",
        "training_args.logging_steps=10", f"model.base_model_name={tiny_base}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no CUDA device, training on CPU in bf16 autocast" in done.stdout + done.stderr
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]  # 48 rows / 16 per step = 3 steps per epoch
    for folder in [out / "checkpoint-3", out / "checkpoint-6", out]:
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert model.get_input_embeddings().weight.shape[0] == 151936
        assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
        record = yaml.safe_load((folder / "slamkit_run.yaml").read_text())
        assert record["training_args"]["output_dir"] == str(out)
        assert record["model"]["base_model_name"] == str(tiny_base)
        assert not (folder / "optimizer.pt").exists()  # save_only_model: no optimizer state
    assert (out / ".hydra" / "config.yaml").is_file()  # Hydra's run dir is the output dir
    assert (out / "training_curves.png").is_file()
    state = yaml.safe_load((out / "trainer_state.json").read_text())
    assert [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e]  # validation accuracy reported


def test_zero_learning_rate_keeps_the_twist_weights_exactly(tiny_base, token_files, tmp_path):
    """With learning_rate=0 every trained tensor equals the base model's (TWIST loaded them)."""
    out = run_train(tiny_base, token_files, tmp_path / "lr0", learning_rate=0.0)
    base, trained = tensors(tiny_base), tensors(out)
    assert base.keys() == trained.keys()
    assert all(torch.equal(base[k], trained[k]) for k in base)


def test_positive_learning_rate_changes_every_trained_tensor(tiny_base, token_files, tmp_path):
    """With a positive learning rate every saved tensor moves away from the base model's."""
    out = run_train(tiny_base, token_files, tmp_path / "lr", learning_rate=1e-3)
    base, trained = tensors(tiny_base), tensors(out)
    assert sorted(k for k in base if torch.equal(base[k], trained[k])) == []


def test_twist_init_false_starts_from_random_weights(tiny_base):
    """twist_init=false builds the same architecture with weights that differ from the pretrained ones."""
    pretrained = build_model(str(tiny_base), True, torch.float32, "sdpa", tokenizer_size=151646)
    scratch = build_model(str(tiny_base), False, torch.float32, "sdpa", tokenizer_size=151646)
    a, b = pretrained.state_dict(), scratch.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])


def test_embedding_table_grows_only_when_asked_or_needed(tiny_base, caplog):
    """The table keeps its 151,936 rows for the 151,646-token tokenizer; vocab_size=152,000 grows it (mean
    resizing) and keeps the old rows; a vocab_size below the table is an error."""
    import logging

    from slamkit.errors import SlamkitError

    kept = build_model(str(tiny_base), True, torch.float32, "sdpa", tokenizer_size=151646)
    assert kept.get_input_embeddings().weight.shape[0] == 151936
    with caplog.at_level(logging.INFO, logger="slamkit"):
        grown = build_model(str(tiny_base), True, torch.float32, "sdpa", tokenizer_size=151646, vocab_size=152000)
    assert grown.get_input_embeddings().weight.shape[0] == 152000
    assert torch.equal(grown.get_input_embeddings().weight[:151936], kept.get_input_embeddings().weight)
    assert "grown from 151936 to 152000 rows" in caplog.text
    with pytest.raises(SlamkitError, match="never shrunk"):
        build_model(str(tiny_base), True, torch.float32, "sdpa", tokenizer_size=151646, vocab_size=151700)


def test_two_process_gloo_run_finishes(tiny_base, token_files, tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo) trains and writes the final folder once."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "cli/train_sft.py"),
         f"data.train_path={token_files['train']}", f"data.val_path={token_files['validation']}",
         f"training_args.output_dir={out}", "training_args.num_train_epochs=1", "training_args.bf16=false",
         "training_args.eval_strategy=no", f"model.base_model_name={tiny_base}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # 48 rows / (16 x 2 ranks) -> 2 steps
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert done.stdout.count("data: 48 training rows") + done.stderr.count("data: 48 training rows") == 1  # rank 0 only


def test_logger_without_its_package_is_a_one_line_error():
    """logger=tensorboard / wandb without the package installed fails when the arguments are built, naming it."""
    from transformers import integrations

    from slamkit.errors import SlamkitError

    for name, available in (("tensorboard", integrations.is_tensorboard_available()), ("wandb", integrations.is_wandb_available())):
        if available:
            continue
        with pytest.raises(SlamkitError, match=f"logger={name} .* pip install {name}"):
            training_arguments({"output_dir": "x", "report_to": [name]}, SpeedSettings(), has_validation=False)
