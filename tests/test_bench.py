"""The benchmark runs the shipped training path (build_trainer) and its --check holds: both paths' losses agree,
one-pass validation equals the two passes of before, and the scoring paths predict the same letters. A toy run
(tiny shape, synthetic rows, one timed step): this checks that the benchmark works, not how fast anything is."""

from __future__ import annotations

import json

from helpers import load_script


def test_the_benchmark_runs_the_product_path_and_its_check_passes(tmp_path, capsys):
    """bench/bench_sft.py --check on the tiny shape exits 0 and reports both paths, the phases, both checkpoints,
    validation before/after with equal numbers, and scoring with no prediction differing."""
    report = tmp_path / "bench.json"
    code = load_script("bench/bench_sft.py").main([
        "--shape", "tiny", "--device", "cpu", "--threads", "auto", "--steps", "1", "--warmup", "1", "--phase_steps", "1",
        "--eval_prompts", "16", "--val_rows", "16", "--shared", str(tmp_path / "absent"), "--check", "--json", str(report),
    ])
    assert code == 0, capsys.readouterr().out[-3000:]
    result = json.loads(report.read_text())
    paths = result["train"]["paths"]
    assert sorted(paths) == ["ours", "reference"] and result["data"]["source"].startswith("synthetic")
    assert paths["ours"]["micro_batch"] == "16 per device x 1 accumulation"
    assert paths["reference"]["micro_batch"] == "4 per device x 4 accumulation"
    assert set(paths["ours"]["phase_seconds_per_step"]) == {"data", "forward", "backward", "clip", "optimizer", "other"}
    assert "optimizer.pt" in paths["reference"]["checkpoint"]["files"]
    assert "optimizer.pt" not in paths["ours"]["checkpoint"]["files"] and paths["ours"]["checkpoint"]["weights_dtype"] == "bfloat16"
    validation = result["validation"]
    assert validation["before"]["eval_accuracy"] == validation["now"]["eval_accuracy"]
    assert result["eval"]["disagreements"] == 0
