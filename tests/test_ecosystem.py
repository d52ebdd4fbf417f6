"""ARC-Challenge goes through the same four steps; checkpoints are plain HF folders other tools read."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import REPO, SAMPLE_TOKENIZER, sft_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from slamkit.training import train

CHALLENGE = REPO / "tests" / "data" / "arc_challenge_mini"


def test_arc_challenge_flows_through_steps_1_to_4(tiny_model, tmp_path: Path, load_script, capsys):
    """--subset ARC-Challenge output (5-, 3-choice and numeric-label questions) is tokenized, trained on and
    scored with no change to steps 2-4: every test question scored, skipped 0."""
    data = tmp_path / "data"
    assert load_script("example_arc/prepare_arc_data.py").main(
        ["--subset", "ARC-Challenge", "--source", str(CHALLENGE), "--output_dir", str(data)]
    ) == 0
    tokens = load_script("example_arc/prepare_arc_tokens.py")
    for split in ("train", "validation"):
        assert tokens.main([
            "--data_path", str(data / f"arc_challenge_{split}.jsonl"),
            "--out_path", str(data / f"{split}_tokens.jsonl"), "--tokenizer", str(SAMPLE_TOKENIZER),
        ]) == 0
    out = train(sft_config(
        tiny_model, data / "train_tokens.jsonl", tmp_path / "model", data / "validation_tokens.jsonl",
        num_train_epochs=1, eval_strategy="epoch", save_strategy="no", learning_rate=1e-3,
    )).output_dir
    capsys.readouterr()
    test_file = data / "arc_challenge_test.jsonl"
    assert load_script("example_arc/eval_arc.py").main(
        ["--model_path", str(out), "--data_path", str(test_file), "--output_dir", str(tmp_path / "eval")]
    ) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    questions = test_file.read_text().splitlines()
    assert results["total"] == len(questions) and results["skipped"] == 0
    assert any(len(json.loads(q)["choice_labels"]) == 5 for q in questions)


def test_checkpoint_loads_with_auto_classes_and_text_generation_pipeline(tiny_model, tmp_path: Path):
    """A slamkit output folder is a plain HF checkpoint: AutoModelForCausalLM loads exactly the saved weights,
    AutoTokenizer its tokenizer, and pipeline("text-generation") generates what greedy model.generate does."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        json.dumps({"input_ids": [151644, 872, 198, 32, 151645], "labels": [-100, -100, -100, 32, 151645]}) + "\n"
        for _ in range(4)
    ))
    out = train(sft_config(tiny_model, rows, tmp_path / "model", max_steps=1, save_strategy="no")).output_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"][0] == 151644
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    text = generator(prompt, max_new_tokens=3, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1]:]
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
