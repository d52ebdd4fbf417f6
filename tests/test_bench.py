"""The one-command GPU check, run here as CI runs it (CPU, tiny shape, a small budget): every step runs and passes,
the benchmark inside it runs the shipped training path (build_trainer) with its --check holding, and the results
folder holds the JSON and the summary. A toy run: it checks that the check works, not how fast anything is."""

from __future__ import annotations

import json
import subprocess

from helpers import REPO


def test_the_gpu_check_runs_on_a_cpu_within_its_budget_and_leaves_its_results(tmp_path):
    """bash bench/gpu_check.sh --device cpu --shape tiny --budget 300 (CI machines vary; about 100 s here): exit 0;
    gpu_check.json says every step that ran passed (compile skipped off CUDA), the benchmark's report has both paths
    with equal losses, the phases, both checkpoints, validation before/after equal and scoring with no prediction
    differing; the four steps scored every question asked; gpu_check.md holds the tables."""
    out = tmp_path / "check"
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--shape", "tiny", "--budget", "300",
                           "--out", str(out), "--eval_questions", "16"], cwd=REPO, capture_output=True, text=True,
                          timeout=420)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:] + (out / "gpu_check.log").read_text()[-3000:]
    assert done.stdout.splitlines()[0].endswith(f"results in {out.resolve()}")
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert [name for name in steps] == ["environment", "bench_check", "bench_compile", "pipeline"]
    assert steps["environment"]["torch"] and steps["bench_compile"]["status"] == "skipped"
    assert all(steps[name]["status"] == "passed" for name in ("environment", "bench_check", "pipeline"))
    assert result["wall_s"] <= 300 + 30  # the budget, plus the last step's clean-up

    report = json.loads((out / "bench_check.json").read_text())
    paths = report["train"]["paths"]
    assert sorted(paths) == ["ours", "reference"] and report["data"]["source"].startswith(("synthetic", "ARC-Easy"))
    assert paths["ours"]["micro_batch"] == "16 per device x 1 accumulation"
    assert paths["reference"]["micro_batch"] == "4 per device x 4 accumulation"
    assert set(paths["ours"]["phase_seconds_per_step"]) == {"data", "forward", "backward", "clip", "optimizer", "other"}
    assert "optimizer.pt" in paths["reference"]["checkpoint"]["files"]
    assert "optimizer.pt" not in paths["ours"]["checkpoint"]["files"] and paths["ours"]["checkpoint"]["weights_dtype"] == "bfloat16"
    assert report["validation"]["before"]["eval_accuracy"] == report["validation"]["now"]["eval_accuracy"]
    assert report["eval"]["disagreements"] == 0

    pipeline = steps["pipeline"]
    assert list(pipeline["steps"]) == ["build random model", "1 prepare_arc_data", "2 prepare_arc_tokens train",
                                       "2 prepare_arc_tokens validation", "3 train_sft", "4 eval_arc"]
    assert (pipeline["eval"]["total"], pipeline["eval"]["skipped"], pipeline["eval"]["dtype"]) == (16, 0, "bfloat16")
    summary = (out / "gpu_check.md").read_text()
    assert "| bench_check | passed |" in summary and "## the four steps" in summary and "train speed-up" in summary
