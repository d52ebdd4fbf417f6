"""The GPU check in one command, within a time budget it enforces itself: ``bash bench/gpu_check.sh`` runs this.

    bash bench/gpu_check.sh --out "$OUT/gpu_check" --budget 300      # CUDA, Qwen3-0.6B's shape (bench/README.md)
    bash bench/gpu_check.sh --device cpu --shape tiny --budget 300   # the same on a CPU at a toy shape (the tests)

Options are checked first (a bad one is one ``error:`` line, exit 2, before anything is written), then the Python
packages: Hydra's (hydra-core, omegaconf, antlr4-python3-runtime) are installed from the wheels in .whl/ when this
Python lacks them (``bash bench/fetch_device_wheels.sh`` fills it where PyPI is reachable). Then, in order, each as a
subprocess under what is left of the budget (one that would start with too little left is skipped, one that runs
past its time is stopped; every result so far is written after each step):

1. environment: the device's name, torch / transformers / CUDA versions, the CPU;
2. ``bench/bench_sft.py --check``: the reference path against ours (s/step, tokens/s, MFU, peak memory, host syncs,
   phases, checkpoint seconds and bytes, the 3-epoch projection, validation and scoring), results checked equal;
3. the four steps end to end on a random model of the shape: steps 1-2 on the bundled ARC-Easy sample, step 3 for
   ``--train_steps`` steps, step 4 on ``--eval_questions`` test questions;
4. ``speed.compile`` on against off (``--paths ours,compile``), on CUDA (``--compile`` to force it elsewhere), last
   and with what is left: skipped below MIN_COMPILE_S, and a speed path, so running out of time is no failure.

Everything goes under ``--out`` (named in the first line): ``gpu_check.json`` (all figures), ``gpu_check.md`` (a
summary), ``gpu_check.log`` (every step's output), ``bench_check.json`` and ``bench_compile.json``, and, while it
runs, ``scratch/`` (the wheels' site, the steps' TMPDIR and caches, the four steps' model and data), removed at the
end. Exit 0 when every step that ran passed (a skipped step, or a compile stopped for time, is reported, not failed),
1 otherwise, 2 for a bad option or a missing package, 130 / 143 when interrupted (SIGINT / SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "example_arc" / "sample"
WHEELS = REPO / ".whl"
MIN_BUDGET_S = 60  # less cannot even import torch in the steps' processes
MIN_STEP_S = 20  # a step is not started with less than this left
MIN_COMPILE_S = 180  # compiling 28 decoder layers, then timing them, takes minutes: less is skipped, not started
BENCH_SHARE = 0.5  # bench_check's most of the budget: the four steps get their turn after it
STOP_GRACE_S = 10  # a stopped step's processes get this long to end after SIGTERM, then SIGKILL
FETCH = "run bash bench/fetch_device_wheels.sh where PyPI is reachable first (PYTHON_VERSION=3.12 for the NVIDIA image)"
# Imported by the steps, installed from .whl/ when missing: module -> (distribution, wheel file prefix).
FROM_WHEELS = {
    "hydra": ("hydra-core", "hydra_core-"),
    "omegaconf": ("omegaconf", "omegaconf-"),
    "antlr4": ("antlr4-python3-runtime", "antlr4_python3_runtime-"),
}
# Imported by the steps and not carried in .whl/ (the NVIDIA image has them). datasets is not among them: slamkit
# imports it only to load ARC from the hub, and the check's step 1 reads the bundled sample (--source).
NEEDED = {"torch": "torch", "transformers": "transformers", "accelerate": "accelerate", "safetensors": "safetensors",
          "tokenizers": "tokenizers", "yaml": "PyYAML", "packaging": "packaging", "tqdm": "tqdm",
          "matplotlib": "matplotlib"}


class CheckError(Exception):
    """A bad option, an unusable --out or a missing package: one ``error:`` line, exit 2."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, as KeyboardInterrupt: nothing on the way catches it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.name, self.exit_code = signal.Signals(signum).name, 128 + signum


def on_signal(signum, frame) -> None:
    # Once: a second Ctrl-C while the running step is being stopped and the results written must not cut that short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped(signum)


# ------------------------------------------------------------------------------------------------ options


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise CheckError(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--shape", choices=["qwen3-0.6b", "tiny"], default="qwen3-0.6b")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="bench_sft.py's --dtype (auto: bf16 autocast on CUDA, float32 on CPU); the four steps "
                        "train and score in bf16 unless float32")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 8 minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder, relative to where you run the command (default gpu_check_<date>_<time>)")
    parser.add_argument("--compile", action="store_true", help="time speed.compile on a CPU too (slow to compile)")
    parser.add_argument("--train_steps", type=int, default=None, help="step 3's optimizer steps (default 30 on CUDA, 2 on CPU)")
    parser.add_argument("--eval_questions", type=int, default=200, help="step 4's test questions (first N)")
    opts = parser.parse_args(argv)
    if not (math.isfinite(opts.budget) and opts.budget >= MIN_BUDGET_S):
        raise CheckError(f"--budget must be a number of seconds, at least {MIN_BUDGET_S}; got {opts.budget:g}")
    if opts.train_steps is not None and opts.train_steps < 1:
        raise CheckError(f"--train_steps must be at least 1 (leave it out for the default); got {opts.train_steps}")
    if opts.eval_questions < 1:
        raise CheckError(f"--eval_questions must be at least 1; got {opts.eval_questions}")
    if opts.train_steps is None:
        opts.train_steps = 30 if opts.device == "cuda" else 2
    # Relative to the caller's working directory (gpu_check.sh does not change it); absolute from here on, since
    # the steps run in the repository.
    opts.out = Path(os.path.abspath(opts.out or f"gpu_check_{time.strftime('%Y%m%d_%H%M%S')}"))
    if (opts.out / "gpu_check.json").exists():
        raise CheckError(f"--out {opts.out} already holds a check's results (gpu_check.json): choose another folder")
    if opts.out.exists() and not opts.out.is_dir():
        raise CheckError(f"--out {opts.out} is not a folder")
    if (opts.out / "scratch").exists():  # the check's own work folder, removed at its end: never someone else's
        raise CheckError(f"--out {opts.out} already holds a scratch/ folder (the check's work folder): choose another folder")
    return opts


def wheels_to_install() -> dict[str, Path]:
    """The wheel of each package this Python lacks (distribution -> file); a package missing with no wheel for it
    in .whl/, or one the check needs that .whl/ does not carry, is a CheckError naming it."""
    python = f"{sys.executable} (Python {platform.python_version()})"
    for module, distribution in NEEDED.items():
        if importlib.util.find_spec(module) is None:
            raise CheckError(f"{python} lacks {distribution}, which the check needs and .whl/ does not carry: "
                             "install it there, or run the check with another PYTHON=")
    wheels = {}
    for module, (distribution, prefix) in FROM_WHEELS.items():
        if importlib.util.find_spec(module) is not None:
            continue
        found = sorted(WHEELS.glob(f"{prefix}*.whl"))
        if not found:
            raise CheckError(f"{python} lacks {distribution} and {WHEELS} has no {distribution} wheel: {FETCH}")
        if len(found) > 1:  # pip refuses two versions of one package in one install
            raise CheckError(f"{WHEELS} holds {len(found)} {distribution} wheels ({', '.join(f.name for f in found)}): "
                             "keep one (bash bench/fetch_device_wheels.sh leaves one of each)")
        wheels[distribution] = found[0]
    return wheels


# ------------------------------------------------------------------------------------------------ the check


def run_stoppable(command: list[str], *, timeout: float | None, stdout, env: dict, cwd: Path = REPO, on_start=None):
    """Run ``command`` in a process group of its own (so that stopping it stops whatever it started, e.g.
    torch.compile's workers; a Ctrl-C at the terminal then reaches this process only, which stops it). Returns its
    exit code, or None when it ran past ``timeout``; a signal arriving meanwhile stops it and propagates.

    A process group, not a session: whoever ends this process's session (the device tool at its time limit) still
    ends the steps' processes too."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT, process_group=0)
    try:
        if on_start is not None:
            on_start(process)
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if process.poll() is None:
            stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    for signum, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class Check:
    """Holds --out, runs the steps under the budget, keeps the results, writes them after every step."""

    def __init__(self, opts: argparse.Namespace):
        self.opts, self.out = opts, opts.out
        self.start = time.monotonic()
        self.made_out = not opts.out.exists()
        try:
            opts.out.mkdir(parents=True, exist_ok=True)
            # The claim: created exclusively, so that two checks into one folder cannot both write there.
            with (opts.out / "gpu_check.json").open("x", encoding="utf-8") as handle:
                handle.write('{"status": "running"}\n')
        except FileExistsError:
            raise CheckError(f"--out {opts.out} already holds a check's results (gpu_check.json): choose another folder") from None
        except OSError as err:
            raise CheckError(f"--out {opts.out}: cannot write there ({err.strerror or err})") from None
        self.scratch = opts.out / "scratch"
        self.results: dict = {"options": {k: str(v) for k, v in vars(opts).items()}, "steps": {}}
        self.current: str | None = None
        self.log = (opts.out / "gpu_check.log").open("w", encoding="utf-8")
        tmp = self.scratch / "tmp"
        tmp.mkdir(parents=True)
        # Every file a step writes goes under --out: its temporary folders (bench_sft.py's checkpoints, compile
        # caches) and the caches that would otherwise go to the home folder. No bytecode written into the checkout.
        self.env = {
            **os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(self.scratch / "cache"), "HF_HOME": str(self.scratch / "hf"),
            "MPLCONFIGDIR": str(self.scratch / "matplotlib"), "TRITON_CACHE_DIR": str(self.scratch / "triton"),
            "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1", "PIP_ROOT_USER_ACTION": "ignore",
        }

    def left(self) -> float:
        return self.opts.budget - (time.monotonic() - self.start)

    def install(self, wheels: dict[str, Path]) -> None:
        """pip-install the wheels (no index, no dependencies: they are each other's) into scratch/site."""
        if not wheels:
            return
        site = self.scratch / "site"
        print(f"gpu_check: installing {', '.join(wheels)} from .whl/ into {site}", flush=True)
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                   "--no-deps", "--no-compile", "--no-cache-dir", "--target", str(site), *map(str, wheels.values())]
        self.current = "installing wheels"
        with (self.scratch / "pip.log").open("w+", encoding="utf-8") as output:
            code = run_stoppable(command, timeout=max(self.left(), MIN_STEP_S), stdout=output, env=self.env)
            output.seek(0)
            lines = [line.strip() for line in output if line.strip()]
        self.current = None
        if code != 0:
            last = lines[-1] if lines else ("ran past the budget" if code is None else f"exit {code}, no output")
            raise CheckError(f"pip could not install {', '.join(wheels)} from .whl/: {last}")
        self.env["PYTHONPATH"] = os.pathsep.join((str(site), self.env["PYTHONPATH"]))
        self.results["installed_from_wheels"] = sorted(path.name for path in wheels.values())

    def abandon(self) -> None:
        """Undo the claim (a setup that failed): what this check wrote goes, and --out too if it made it."""
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        for name in ("gpu_check.json", "gpu_check.log"):
            (self.out / name).unlink(missing_ok=True)
        if self.made_out:
            try:
                self.out.rmdir()
            except OSError:
                pass

    def run(self, name: str, command: list[str], limit: float | None = None) -> dict:
        """One subprocess under the budget (and ``limit``); its output goes to the log."""
        left = self.left()
        if left < MIN_STEP_S:
            return {"status": "skipped", "reason": f"budget: {left:.0f} s left"}
        timeout = min(left, limit) if limit else left
        self.log.write(f"\n=== {name}: {' '.join(command)}  (timeout {timeout:.0f} s)\n")
        self.log.flush()
        self.current = name
        begin = time.monotonic()

        def started(process: subprocess.Popen) -> None:
            self.log.write(f"=== {name}: pid {process.pid}\n")
            self.log.flush()

        code = run_stoppable(command, timeout=timeout, stdout=self.log, env=self.env, on_start=started)
        seconds = time.monotonic() - begin
        self.current = None
        if code is None:
            return {"status": "timed out", "seconds": seconds, "reason": f"stopped after {seconds:.0f} s"}
        return {"status": "passed" if code == 0 else "failed", "returncode": code, "seconds": seconds}

    def record(self, name: str, result: dict) -> None:
        self.results["steps"][name] = result
        self.results["wall_s"] = time.monotonic() - self.start
        print(f"[{self.results['wall_s']:6.1f} s] {name}: {result['status']}"
              + (f" ({result['reason']})" if result.get("reason") else ""), flush=True)
        self.write()

    def write(self) -> None:
        self.results["wall_s"] = time.monotonic() - self.start
        for name, text in (("gpu_check.json", json.dumps(self.results, indent=2) + "\n"),
                           ("gpu_check.md", summary(self.results))):
            tmp = self.out / f"{name}.partial"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)

    def close(self) -> None:
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def results_files(self) -> str:
        return ", ".join(sorted(p.name for p in self.out.iterdir() if p.is_file() and not p.name.endswith(".partial")))


def write_environment(device: str, path: str) -> None:
    """The environment step's body, run in a subprocess (torch is never imported by the check's own process)."""
    import torch
    import transformers

    from slamkit.model import cpu_native_bf16

    info = {
        "status": "passed", "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_native_bf16(),
    }
    for module in ("accelerate", "hydra", "omegaconf"):
        imported = __import__(module)
        info[module] = {"version": getattr(imported, "__version__", None), "from": str(Path(imported.__file__).parent.parent)}
    if torch.cuda.is_available():
        info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    elif device == "cuda":
        info.update(status="failed", reason="--device cuda but torch sees no CUDA device")
    Path(path).write_text(json.dumps(info), encoding="utf-8")


def environment(check: Check) -> dict:
    path = check.scratch / "environment.json"
    code = f"import runpy, sys; runpy.run_path({str(Path(__file__))!r})['write_environment'](*sys.argv[1:])"
    result = check.run("environment", [sys.executable, "-c", code, check.opts.device, str(path)])
    if result["status"] == "passed":
        return {**json.loads(path.read_text(encoding="utf-8")), "seconds": result["seconds"]}
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def bench(check: Check, name: str, extra: list[str], limit: float | None) -> dict:
    report = check.out / f"{name}.json"
    opts = check.opts
    command = [sys.executable, "bench/bench_sft.py", "--shape", opts.shape, "--device", opts.device, "--dtype",
               opts.dtype, "--json", str(report), *extra]
    if opts.device == "cpu":  # a CPU: few steps, few prompts
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
        val = report["validation"]
        out.update(validation_speedup=val["speedup"], validation_flips=val.get("flips"),
                   validation_allowed_flips=val.get("allowed_flips"), validation_rows=val.get("rows"))
    return out


def pipeline(check: Check) -> dict:
    """Steps 1-4 on a random model of the shape: each step's seconds, and the final accuracy line."""
    opts = check.opts
    work = check.scratch / "pipeline"
    model, data, run = work / "base_model", work / "data", work / "arc_model"
    # bf16 (the shipped setting, also on a CPU) unless --dtype float32 asks otherwise.
    bf16 = opts.dtype != "float32"
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
                         "training_args.eval_strategy=no", "training_args.save_strategy=no",
                         f"training_args.bf16={str(bf16).lower()}", *(["speed.cpu_bf16=force"] if bf16 else []),
                         "training_args.logging_steps=1", "training_args.disable_tqdm=true"]),
        ("4 eval_arc", [sys.executable, "example_arc/eval_arc.py", "--model_path", str(run), "--data_path",
                        str(data / "arc_easy_test.jsonl"), "--max_problems", str(opts.eval_questions),
                        "--device", opts.device, "--dtype", "bfloat16" if bf16 else "float32",
                        "--output_dir", str(work / "eval")]),
    ]
    result: dict = {"status": "passed", "steps": {}}
    check.results["steps"]["pipeline"] = result  # so that an interruption finds the steps so far
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


def compile_step(check: Check) -> dict:
    """speed.compile on against off, with what the essential steps left (a speed path: not started on too little)."""
    if not (check.opts.device == "cuda" or check.opts.compile):
        return {"status": "skipped", "reason": "not on CUDA (--compile to time it here)"}
    left = check.left()
    if left < MIN_COMPILE_S:
        return {"status": "skipped", "reason": f"{left:.0f} s of the budget left, compiling needs at least "
                f"{MIN_COMPILE_S} s: a larger --budget gives it its turn"}
    return bench(check, "bench_compile", ["--paths", "ours,compile", "--no_checkpoint"], None)


def summary(results: dict) -> str:
    steps = results["steps"]
    lines = ["# slamkit GPU check", ""]
    env = steps.get("environment", {})
    if env.get("torch"):
        device = env.get("device_name") or f"CPU: {env.get('cpu')} ({env.get('cpu_capability')})"
        lines += [f"- device: {device}", f"- torch {env.get('torch')}, transformers {env.get('transformers')}, "
                  f"CUDA {env.get('cuda')}, Python {env.get('python')}", ""]
    if results.get("interrupted"):
        lines += [f"**interrupted ({results['interrupted']})**: the results below are those so far", ""]
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
                         f"{figures.get('eval_disagreements')} of {figures.get('eval_prompts')} predictions differ; "
                         f"validation one pass vs two: {figures.get('validation_flips')} of "
                         f"{figures.get('validation_rows')} predictions flipped, {figures.get('validation_allowed_flips')} "
                         "of them within bf16's rounding")
    pipe = steps.get("pipeline", {})
    if pipe.get("steps"):
        lines += ["", "## the four steps (random weights of the shape; plumbing and time, not accuracy)", "",
                  "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {n} | {s['status']} | {s.get('seconds', 0):.1f} |" for n, s in pipe["steps"].items()]
        if "eval" in pipe:
            e = pipe["eval"]
            lines.append(f"\nstep 4: {e['correct']}/{e['total']} scored, skipped {e['skipped']} ({e['device']}, {e['dtype']})")
    lines += ["", f"wall time {results.get('wall_s', 0):.0f} s of a {float(results['options']['budget']):.0f} s budget", ""]
    if results.get("verdict"):
        lines += [results["verdict"], ""]
    return "\n".join(lines)


def verdict(results: dict) -> tuple[int, str]:
    """Exit code and the closing line: an essential step that failed or ran out of time fails the check; compile
    is a speed path, so only a compile that failed does (one stopped for time is reported)."""
    steps = results["steps"]
    failed = [name for name, step in steps.items() if step["status"] == "failed"
              or (step["status"] == "timed out" and name != "bench_compile")]
    compile_ = steps.get("bench_compile", {})
    note = ""
    if compile_.get("status") == "timed out":
        note = f"; bench_compile stopped after {compile_['seconds']:.0f} s (a speed path: not counted as a failure)"
    elif compile_.get("status") == "skipped":
        note = f"; bench_compile skipped ({compile_['reason']})"
    if failed:
        return 1, f"gpu_check: FAILED: {', '.join(failed)}{note}"
    return 0, f"gpu_check: PASSED: every essential step passed{note}"


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    check = None
    try:
        try:
            opts = parse_args(argv)
            wheels = wheels_to_install()
            check = Check(opts)
            print(f"gpu_check: {opts.device}, shape {opts.shape}, dtype {opts.dtype}, budget {opts.budget:.0f} s; "
                  f"results in {opts.out}", flush=True)
            check.install(wheels)
        except CheckError as err:
            if check is not None:
                check.abandon()
            print(f"error: {err}", file=sys.stderr)
            return 2
        check.record("environment", environment(check))
        if check.results["steps"]["environment"]["status"] == "passed":
            check.record("bench_check", bench(check, "bench_check", ["--check"], limit=max(BENCH_SHARE * opts.budget, MIN_STEP_S)))
            check.record("pipeline", pipeline(check))
            check.record("bench_compile", compile_step(check))
        code, line = verdict(check.results)
        check.results["verdict"] = line
        check.write()
        print(f"{line}; results in {opts.out}", flush=True)
        return code
    except Stopped as stop:
        if check is None or check.log.closed:
            print(f"gpu_check: interrupted ({stop.name}) before it started; nothing written", file=sys.stderr)
            return stop.exit_code
        where = check.current or "between steps"
        pipe = check.results["steps"].get("pipeline")
        if pipe is not None and check.current and check.current.startswith("pipeline: "):
            pipe["steps"][check.current.removeprefix("pipeline: ")] = {"status": "interrupted"}
            pipe.update(status="interrupted", reason=f"{stop.name} during {check.current}")
        elif check.current:
            check.results["steps"][check.current] = {"status": "interrupted", "reason": stop.name}
        check.results["interrupted"] = f"{stop.name} during {where}"
        check.write()
        print(f"gpu_check: interrupted ({stop.name}) during {where}, which was stopped; results so far in "
              f"{check.out}: {check.results_files()}", file=sys.stderr, flush=True)
        return stop.exit_code
    finally:
        if check is not None and not check.log.closed:
            check.close()


if __name__ == "__main__":
    raise SystemExit(main())
