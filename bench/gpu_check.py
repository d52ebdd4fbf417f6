"""The GPU check in one command, within a time budget it enforces itself: ``bash bench/gpu_check.sh`` runs this.

    bash bench/gpu_check.sh                                         # CUDA, Qwen3-0.6B's shape, 480 s budget
    bash bench/gpu_check.sh --device cpu --shape tiny --budget 120  # the same on a CPU at a toy shape (CI runs it)

In order, each as a subprocess under what is left of the budget (a step that would start with too little left is
skipped, one that runs past it is stopped; every result so far is written after each step):

1. environment: the device's name, torch / transformers / CUDA versions, the CPU;
2. ``bench/bench_sft.py --check``: the reference path against ours (s/step, tokens/s, MFU, peak memory, host syncs,
   phases, checkpoint seconds and bytes, the 3-epoch projection, validation and scoring), losses checked equal;
3. ``speed.compile`` on against off (``--paths ours,compile``), on CUDA (``--compile`` to force it elsewhere);
4. the four steps end to end on a random model of the shape, bf16 autocast: steps 1-2 on the bundled ARC-Easy
   sample, step 3 for ``--train_steps`` steps, step 4 on ``--eval_questions`` test questions.

Everything goes to ``--out`` (named in the first line): ``gpu_check.json`` (all figures), ``gpu_check.md`` (a
summary), ``gpu_check.log`` (every step's output) and the benchmark's own JSON files. Exit code 0 when every step
that ran passed, 1 otherwise (a skipped step is reported, not failed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "example_arc" / "sample"
MIN_STEP_S = 20  # a step is not started with less than this left: it could not even import torch


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


class Check:
    """Runs the steps, keeps the results, writes them after every step."""

    def __init__(self, opts: argparse.Namespace):
        self.opts, self.out = opts, opts.out
        self.budget = Budget(opts.budget)
        self.results: dict = {"options": {k: str(v) for k, v in vars(opts).items()}, "steps": {}}
        self.log = (self.out / "gpu_check.log").open("w", encoding="utf-8")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

    def run(self, name: str, command: list[str], limit: float | None = None) -> dict:
        """One subprocess under the budget (and ``limit``); its output goes to the log."""
        left = self.budget.left()
        if left < MIN_STEP_S:
            return {"status": "skipped", "reason": f"budget: {left:.0f} s left"}
        timeout = min(left, limit) if limit else left
        self.log.write(f"\n=== {name}: {' '.join(command)}  (timeout {timeout:.0f} s)\n")
        self.log.flush()
        begin = time.monotonic()
        try:
            done = subprocess.run(command, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timed out", "seconds": time.monotonic() - begin, "reason": f"stopped after {timeout:.0f} s"}
        seconds = time.monotonic() - begin
        return {"status": "passed" if done.returncode == 0 else "failed", "returncode": done.returncode, "seconds": seconds}

    def record(self, name: str, result: dict) -> None:
        self.results["steps"][name] = result
        self.results["wall_s"] = self.opts.budget - self.budget.left()
        print(f"[{self.results['wall_s']:6.1f} s] {name}: {result['status']}"
              + (f" ({result['reason']})" if result.get("reason") else ""), flush=True)
        self.write()

    def write(self) -> None:
        tmp = self.out / "gpu_check.json.partial"
        tmp.write_text(json.dumps(self.results, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "gpu_check.json")
        tmp = self.out / "gpu_check.md.partial"
        tmp.write_text(summary(self.results), encoding="utf-8")
        os.replace(tmp, self.out / "gpu_check.md")


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {
        "status": "passed", "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    from slamkit.model import cpu_native_bf16

    info["cpu_native_bf16"] = cpu_native_bf16()
    if torch.cuda.is_available():
        info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    elif device == "cuda":
        info.update(status="failed", reason="--device cuda but torch sees no CUDA device")
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def bench(check: Check, name: str, extra: list[str], limit: float) -> dict:
    report = check.out / f"{name}.json"
    opts = check.opts
    command = [sys.executable, "bench/bench_sft.py", "--shape", opts.shape, "--device", opts.device, "--json",
               str(report), *extra]
    if opts.device == "cpu":  # a CPU at a toy shape: few steps, few prompts
        command += ["--steps", "1", "--warmup", "1", "--eval_prompts", "16", "--val_rows", "16", "--threads", "auto"]
    result = check.run(name, command, limit)
    if report.is_file():
        figures = json.loads(report.read_text())
        result["report"] = report.name
        result["figures"] = bench_figures(figures)
    return result


def bench_figures(report: dict) -> dict:
    """The headline numbers of a bench_sft.py JSON report."""
    paths = report["train"]["paths"]
    figures = {name: {key: row.get(key) for key in ("micro_batch", "seconds_per_step", "tokens_per_s", "peak_memory_mb",
                                                     "mfu", "host_syncs_per_step", "projected_3_epochs_s", "final_loss")}
               for name, row in paths.items()}
    for name, row in paths.items():
        if "checkpoint" in row:
            figures[name]["checkpoint_s"] = row["checkpoint"]["seconds"]
            figures[name]["checkpoint_mb"] = row["checkpoint"]["bytes"] / 1e6
        if row.get("phase_seconds_per_step"):
            figures[name]["phases"] = row["phase_seconds_per_step"]
    out = {"paths": figures, "device_name": report["device_name"], "dtype": report["dtype"],
           "parameters_m": report["parameters"]["total"] / 1e6}
    train = report["train"]
    if "speedup" in train:
        out.update(train_speedup=train["speedup"], loss_rel_diff=train["loss_curve_max_rel_diff"])
    if "eval" in report:
        out.update(eval_speedup=report["eval"]["speedup"], eval_disagreements=report["eval"]["disagreements"],
                   eval_prompts=report["eval"]["prompts"])
    if "validation" in report:
        out["validation_speedup"] = report["validation"]["speedup"]
    return out


def pipeline(check: Check, work: Path) -> dict:
    """Steps 1-4 on a random model of the shape (bf16 autocast): each step's seconds, and the final accuracy line."""
    opts = check.opts
    model, data, run = work / "base_model", work / "data", work / "arc_model"
    build = ("from slamkit.model import qwen3_config, save_random_model; "
             f"save_random_model({str(model)!r}, qwen3_config({opts.shape!r}), tokenizer_dir={str(SAMPLE / 'qwen_tokenizer')!r})")
    tokens = {split: data / f"arc_easy_{split}_tokens.jsonl" for split in ("train", "validation")}
    steps = [
        ("build random model", [sys.executable, "-c", build]),
        ("1 prepare_arc_data", [sys.executable, "example_arc/prepare_arc_data.py", "--source", str(SAMPLE),
                                "--output_dir", str(data)]),
        *[(f"2 prepare_arc_tokens {split}", [sys.executable, "example_arc/prepare_arc_tokens.py", "--data_path",
                                             str(data / f"arc_easy_{split}.jsonl"), "--out_path", str(path),
                                             "--tokenizer", str(model)]) for split, path in tokens.items()],
        ("3 train_sft", [sys.executable, "cli/train_sft.py", f"model.base_model_name={model}",
                         f"data.train_path={tokens['train']}", f"data.val_path={tokens['validation']}",
                         f"training_args.output_dir={run}", f"training_args.max_steps={opts.train_steps}",
                         "training_args.eval_strategy=no", "training_args.save_strategy=no", "training_args.bf16=true",
                         "speed.cpu_bf16=force", "training_args.logging_steps=1", "training_args.disable_tqdm=true"]),
        ("4 eval_arc", [sys.executable, "example_arc/eval_arc.py", "--model_path", str(run), "--data_path",
                        str(data / "arc_easy_test.jsonl"), "--max_problems", str(opts.eval_questions),
                        "--device", opts.device, "--dtype", "bfloat16", "--output_dir", str(work / "eval")]),
    ]
    result: dict = {"status": "passed", "steps": {}}
    for name, command in steps:
        step = check.run(f"pipeline: {name}", command)
        result["steps"][name] = step
        if step["status"] != "passed":
            result.update(status=step["status"], reason=f"{name}: {step.get('reason') or 'exit ' + str(step.get('returncode'))}")
            break
    evaluation = work / "eval" / "results.json"
    if evaluation.is_file():
        scored = json.loads(evaluation.read_text())
        result["eval"] = {k: scored[k] for k in ("correct", "total", "skipped", "accuracy", "device", "dtype")}
    return result


def summary(results: dict) -> str:
    steps = results["steps"]
    lines = ["# slamkit GPU check", ""]
    env = steps.get("environment", {})
    if env:
        device = env.get("device_name") or f"CPU: {env.get('cpu')} ({env.get('cpu_capability')})"
        lines += [f"- device: {device}", f"- torch {env.get('torch')}, transformers {env.get('transformers')}, "
                  f"CUDA {env.get('cuda')}, Python {env.get('python')}", ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    for name, step in steps.items():
        lines.append(f"| {name} | {step['status']}{' (' + step['reason'] + ')' if step.get('reason') else ''} | "
                     f"{step.get('seconds', 0):.1f} |")
    for name in ("bench_check", "bench_compile"):
        figures = steps.get(name, {}).get("figures")
        if not figures:
            continue
        lines += ["", f"## {name} ({figures['device_name']}, {figures['dtype']}, {figures['parameters_m']:.1f}M parameters)", "",
                  "| path | micro-batch | s/step | tokens/s | peak MB | MFU % | syncs/step | 3-epoch loop s | checkpoint s / MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for path, row in figures["paths"].items():
            mfu = f"{100 * row['mfu']:.1f}" if row.get("mfu") else "-"
            syncs = f"{row['host_syncs_per_step']:.1f}" if row.get("host_syncs_per_step") is not None else "-"
            peak = f"{row['peak_memory_mb']:.0f}" if row.get("peak_memory_mb") else "-"
            save = f"{row['checkpoint_s']:.2f} / {row['checkpoint_mb']:.0f}" if "checkpoint_s" in row else "-"
            lines.append(f"| {path} | {row['micro_batch']} | {row['seconds_per_step']:.4f} | {row['tokens_per_s']:.0f} | "
                         f"{peak} | {mfu} | {syncs} | {row['projected_3_epochs_s']:.1f} | {save} |")
        if "train_speedup" in figures:
            lines.append(f"\ntrain speed-up {figures['train_speedup']:.2f}x, loss relative difference "
                         f"{figures['loss_rel_diff']:.1e}; eval speed-up {figures.get('eval_speedup', 0):.1f}x, "
                         f"{figures.get('eval_disagreements')} of {figures.get('eval_prompts')} predictions differ")
    pipe = steps.get("pipeline", {})
    if pipe.get("steps"):
        lines += ["", "## the four steps (random weights of the shape; plumbing and time, not accuracy)", "",
                  "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {n} | {s['status']} | {s.get('seconds', 0):.1f} |" for n, s in pipe["steps"].items()]
        if "eval" in pipe:
            e = pipe["eval"]
            lines.append(f"\nstep 4: {e['correct']}/{e['total']} scored, skipped {e['skipped']} ({e['device']}, {e['dtype']})")
    lines += ["", f"wall time {results.get('wall_s', 0):.0f} s of a {float(results['options']['budget']):.0f} s budget", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shape", choices=["qwen3-0.6b", "tiny"], default="qwen3-0.6b")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 8 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default gpu_check_<date>_<time>)")
    parser.add_argument("--compile", action="store_true", help="time speed.compile on a CPU too (slow to compile)")
    parser.add_argument("--train_steps", type=int, default=None, help="step 3's optimizer steps (30 on CUDA, 2 on CPU)")
    parser.add_argument("--eval_questions", type=int, default=200, help="step 4's test questions (first N)")
    opts = parser.parse_args(argv)
    if opts.budget < MIN_STEP_S:
        parser.error(f"--budget must be at least {MIN_STEP_S} seconds")
    opts.out = opts.out or Path(f"gpu_check_{time.strftime('%Y%m%d_%H%M%S')}")
    opts.train_steps = opts.train_steps or (30 if opts.device == "cuda" else 2)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {opts.device}, shape {opts.shape}, budget {opts.budget:.0f} s; results in {opts.out.resolve()}",
          flush=True)
    check = Check(opts)
    check.record("environment", environment(opts.device))
    if check.results["steps"]["environment"]["status"] != "passed":
        return 1
    # the check's own share of the budget: about half, so that the other steps get their turn
    check.record("bench_check", bench(check, "bench_check", ["--check"], limit=max(0.5 * opts.budget, MIN_STEP_S)))
    if opts.device == "cuda" or opts.compile:
        check.record("bench_compile", bench(check, "bench_compile", ["--paths", "ours,compile", "--no_checkpoint"],
                                            limit=max(0.25 * opts.budget, MIN_STEP_S)))
    else:
        check.record("bench_compile", {"status": "skipped", "reason": "not on CUDA (--compile to time it here)"})
    work = Path(tempfile.mkdtemp(prefix="slamkit_gpu_check_"))
    try:
        check.record("pipeline", pipeline(check, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check.log.close()
    failed = [name for name, step in check.results["steps"].items() if step["status"] in ("failed", "timed out")]
    print(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'every step that ran passed'}; "
          f"{opts.out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
