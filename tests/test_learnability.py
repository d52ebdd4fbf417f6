"""End to end through the real scripts: a tiny model learns a multiple-choice task whose answer follows from
the question. A label mask or position off by one would leave it at chance (25%)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from helpers import SAMPLE_TOKENIZER, run_cli

ORDINALS = ["first", "second", "third", "fourth"]
WORDS = (
    "apple river stone cloud tiger maple copper violin desert candle harbor pepper meadow falcon lantern "
    "glacier orbit quartz saddle tundra walnut zephyr bamboo cactus dolphin ember fossil granite"
).split()


def synthetic_split(count: int, seed: int, prefix: str) -> list[dict]:
    """Hub-layout records: 'Which choice is the third one?' over 4 random words; the answer is its position."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        k = rng.randrange(4)
        records.append({
            "id": f"{prefix}-{index}",
            "question": f"Which choice is the {ORDINALS[k]} one?",
            "choices": {"text": rng.sample(WORDS, 4), "label": list("ABCD")},
            "answerKey": "ABCD"[k],
        })
    return records


def test_tiny_model_learns_a_synthetic_task_through_the_four_steps(tiny_model, tmp_path: Path, load_script, capsys):
    """prepare_arc_data -> prepare_arc_tokens -> cli/train_sft.py -> eval_arc.py reaches >= 90% on 100 held-out
    questions (new word combinations) after 4 epochs of 320 examples (80 steps)."""
    source = tmp_path / "source"
    source.mkdir()
    for split, count, seed in (("train", 320, 1), ("validation", 32, 2), ("test", 100, 3)):
        lines = "".join(json.dumps(r) + "\n" for r in synthetic_split(count, seed, split))
        (source / f"synthetic-{split}.jsonl").write_text(lines)
    data = tmp_path / "data"
    assert load_script("example_arc/prepare_arc_data.py").main(["--source", str(source), "--output_dir", str(data)]) == 0
    tokens = load_script("example_arc/prepare_arc_tokens.py")
    for split in ("train", "validation"):
        assert tokens.main([
            "--data_path", str(data / f"arc_easy_{split}.jsonl"), "--out_path", str(data / f"{split}_tokens.jsonl"),
            "--tokenizer", str(SAMPLE_TOKENIZER),
        ]) == 0
    code, out, err = run_cli(
        f"data.train_path={data / 'train_tokens.jsonl'}", f"data.val_path={data / 'validation_tokens.jsonl'}",
        f"training_args.output_dir={tmp_path / 'model'}", f"model.base_model_name={tiny_model}",
        "training_args.num_train_epochs=4", "training_args.learning_rate=3e-3", "training_args.bf16=false",
        "training_args.save_strategy=no", "training_args.eval_strategy=no",
    )
    assert code == 0, (out + err)[-3000:]
    capsys.readouterr()
    code = load_script("example_arc/eval_arc.py").main([
        "--model_path", str(tmp_path / "model"), "--data_path", str(data / "arc_easy_test.jsonl"),
        "--output_dir", str(tmp_path / "eval"),
    ])
    assert code == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["total"] == 100 and results["skipped"] == 0
    assert results["accuracy"] >= 0.9, capsys.readouterr().out
