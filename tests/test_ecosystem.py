"""ARC-Challenge goes through the same four steps; checkpoints are plain HF folders other tools read."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import REPO, SAMPLE_TOKENIZER, build_tiny_qwen3
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from slamkit.training import DataSettings, ModelSettings, train

CHALLENGE = REPO / "tests" / "data" / "arc_challenge_mini"


def test_arc_challenge_flows_through_steps_1_to_4(tmp_path: Path, load_script, capsys):
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
    base = build_tiny_qwen3(tmp_path / "base")
    out = train(
        ModelSettings(base_model_name=str(base), tokenizer_name=str(base)),
        DataSettings(train_path=str(data / "train_tokens.jsonl"), val_path=str(data / "validation_tokens.jsonl")),
        {"output_dir": str(tmp_path / "model"), "num_train_epochs": 1, "bf16": False, "eval_strategy": "epoch",
         "save_strategy": "no", "report_to": "none", "learning_rate": 1e-3},
    )
    capsys.readouterr()
    test_file = data / "arc_challenge_test.jsonl"
    assert load_script("example_arc/eval_arc.py").main(
        ["--model_path", str(out), "--data_path", str(test_file), "--output_dir", str(tmp_path / "eval")]
    ) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    questions = test_file.read_text().splitlines()
    assert results["total"] == len(questions) and results["skipped"] == 0
    assert any(len(json.loads(q)["choice_labels"]) == 5 for q in questions)


def test_checkpoint_loads_with_auto_classes_and_text_generation_pipeline(tmp_path: Path):
    """A slamkit output folder is a plain HF checkpoint: AutoModelForCausalLM, AutoTokenizer and
    pipeline("text-generation") load it offline and generate."""
    base = build_tiny_qwen3(tmp_path / "base")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(
        json.dumps({"input_ids": [151644, 872, 198, 32, 151645], "labels": [-100, -100, -100, 32, 151645]}) + "\n"
        for _ in range(4)
    ))
    out = train(
        ModelSettings(base_model_name=str(base), tokenizer_name=str(base)), DataSettings(train_path=str(rows)),
        {"output_dir": str(tmp_path / "model"), "max_steps": 1, "bf16": False, "eval_strategy": "no",
         "save_strategy": "no", "report_to": "none"},
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    text = generator("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", max_new_tokens=3, do_sample=False)
    assert text[0]["generated_text"].startswith("<|im_start|>user\nHi")
