"""The one-command GPU check, run here as CI runs it (CPU, tiny shape, a small budget): every step runs and passes,
the benchmark inside it runs the shipped training path (build_trainer) with its --check holding, and the results
folder holds the JSON and the summary, and nothing is written anywhere else. A toy run: it checks that the check
works, not how fast anything is. Then what it refuses before any work (each one ``error:`` line, exit 2), a Ctrl-C
or SIGTERM during a step, and the rules that decide the compile step and the bf16 validation comparison."""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import REPO, load_script

CHECK = str(REPO / "bench" / "gpu_check.sh")


def new_files(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def untracked_and_ignored() -> set[str]:
    """The checkout's untracked and ignored paths (bytecode aside): what a run could have added to it."""
    listing = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    return {line[3:] for line in listing if line[:2] in ("??", "!!") and "__pycache__" not in line}


def run_check(*args: str, cwd: Path = REPO, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", CHECK, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def test_the_gpu_check_runs_on_a_cpu_within_its_budget_and_leaves_its_results_only_under_out(tmp_path):
    """bash bench/gpu_check.sh --device cpu --shape tiny --budget 300 --out check, from another folder (CI machines
    vary; about 100 s here): exit 0; the relative --out is that folder's; gpu_check.json says the essential steps
    passed in order (compile last, skipped off CUDA), the benchmark's report has both paths with equal losses, the
    phases, both checkpoints, validation before/after equal row by row and scoring with no prediction differing;
    the four steps scored every question asked; gpu_check.md holds the tables; and nothing was written outside --out
    (the TMPDIR it was given is empty, the checkout has no new file, its scratch folder is gone)."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    before, folders = untracked_and_ignored(), sorted(REPO.glob("gpu_check_*"))
    done = run_check("--device", "cpu", "--shape", "tiny", "--budget", "300", "--out", "check", "--eval_questions",
                     "16", cwd=cwd, timeout=420, TMPDIR=str(tmp))
    out = cwd / "check"
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:] + log[-3000:]
    assert done.stdout.splitlines()[0].endswith(f"results in {out}")
    assert sorted(p.name for p in out.iterdir()) == ["bench_check.json", "gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert new_files(tmp) == []
    assert untracked_and_ignored() - before == set() and sorted(REPO.glob("gpu_check_*")) == folders

    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == ["environment", "bench_check", "pipeline", "bench_compile"]
    assert steps["environment"]["torch"] and steps["bench_compile"]["status"] == "skipped"
    assert all(steps[name]["status"] == "passed" for name in ("environment", "bench_check", "pipeline"))
    assert result["wall_s"] <= 300 + 30  # the budget, plus the last step's clean-up
    assert done.stdout.splitlines()[-1].startswith("gpu_check: PASSED")

    report = json.loads((out / "bench_check.json").read_text())
    paths = report["train"]["paths"]
    assert sorted(paths) == ["ours", "reference"] and report["data"]["source"].startswith(("synthetic", "ARC-Easy"))
    assert report["dtype"] == "float32"
    assert paths["ours"]["micro_batch"] == "16 per device x 1 accumulation"
    assert paths["reference"]["micro_batch"] == "4 per device x 4 accumulation"
    assert set(paths["ours"]["phase_seconds_per_step"]) == {"data", "forward", "backward", "clip", "optimizer", "other"}
    assert "optimizer.pt" in paths["reference"]["checkpoint"]["files"]
    assert "optimizer.pt" not in paths["ours"]["checkpoint"]["files"] and paths["ours"]["checkpoint"]["weights_dtype"] == "bfloat16"
    validation = report["validation"]
    assert validation["before"]["eval_accuracy"] == validation["now"]["eval_accuracy"]
    assert (validation["flips"], validation["allowed_flips"], validation["rows"]) == (0, 0, 16)
    assert report["eval"]["disagreements"] == 0

    pipeline = steps["pipeline"]
    assert list(pipeline["steps"]) == ["build random model", "1 prepare_arc_data", "2 prepare_arc_tokens train",
                                       "2 prepare_arc_tokens validation", "3 train_sft", "4 eval_arc"]
    assert (pipeline["eval"]["total"], pipeline["eval"]["skipped"], pipeline["eval"]["dtype"]) == (16, 0, "bfloat16")
    summary = (out / "gpu_check.md").read_text()
    assert "| bench_check | passed |" in summary and "## the four steps" in summary and "train speed-up" in summary


def assert_refused(done: subprocess.CompletedProcess, *named: str) -> None:
    """Exit 2 and one ``error:`` line on stderr naming ``named``, nothing on stdout (no work was started)."""
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr + done.stdout
    assert all(name in lines[0] for name in named), lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize("option, value", [("--budget", "nan"), ("--budget", "inf"), ("--budget", "-60"),
                                           ("--budget", "30"), ("--train_steps", "0"), ("--train_steps", "-1"),
                                           ("--eval_questions", "0"), ("--dtype", "float16")])
def test_a_bad_option_is_one_error_line_before_any_work(tmp_path, option, value):
    """A --budget that is not a finite number of seconds above the minimum, a --train_steps or --eval_questions
    below 1, or an unknown --dtype is one error line naming the option, exit 2, and --out is not even made."""
    done = run_check("--out", str(tmp_path / "out"), option, value)
    assert_refused(done, option)
    assert not (tmp_path / "out").exists()


def test_an_out_that_holds_a_checks_results_is_refused_and_kept(tmp_path):
    """An --out holding gpu_check.json (an earlier check's results) is refused naming it, and left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_check.json").write_text('{"earlier": true}\n')
    assert_refused(run_check("--out", str(out)), str(out), "gpu_check.json")
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json"]
    assert (out / "gpu_check.json").read_text() == '{"earlier": true}\n'


def test_an_out_with_a_scratch_folder_is_refused_since_the_check_removes_its_own(tmp_path):
    """An --out already holding scratch/ (the name of the folder the check removes at its end) is refused, untouched."""
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "mine.txt").write_text("keep")
    assert_refused(run_check("--out", str(tmp_path)), str(tmp_path), "scratch")
    assert (tmp_path / "scratch" / "mine.txt").read_text() == "keep"


def test_a_relative_out_is_the_callers_not_the_repositorys(tmp_path):
    """A relative --out is resolved against the caller's working directory (here: refused, naming that folder)."""
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "gpu_check.json").write_text("{}\n")
    assert_refused(run_check("--out", "earlier", cwd=tmp_path), str(tmp_path / "earlier"))


def test_an_out_that_cannot_be_made_is_one_error_line(tmp_path):
    """An --out under a file (it cannot be made) is one error line naming it, exit 2, and nothing is written."""
    (tmp_path / "file").write_text("")
    assert_refused(run_check("--out", str(tmp_path / "file" / "out")), str(tmp_path / "file" / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_python_that_does_not_exist_is_one_error_line(tmp_path):
    """PYTHON=/does/not/exist is one error line naming that interpreter, exit 2 (not bash's 127)."""
    done = run_check("--out", str(tmp_path / "out"), PYTHON="/does/not/exist")
    assert_refused(done, "/does/not/exist")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def python_without_hydra(tmp_path) -> tuple[Path, Path]:
    """A Python like the NVIDIA image's: torch and transformers but no hydra, omegaconf, antlr4 (a venv seeing this
    one's packages but those), and a copy of bench/ in a checkout of its own, whose .whl/ the test fills."""
    packages = tmp_path / "packages"
    packages.mkdir()
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        for entry in Path(folder).glob("*") if Path(folder).is_dir() else []:
            if not entry.name.startswith(("hydra", "omegaconf", "antlr4", "__editable__")) and entry.suffix != ".pth" \
                    and not (packages / entry.name).exists():
                (packages / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "packages.pth").write_text(f"{packages}\n")
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    (checkout / ".whl").mkdir()
    for name in ("gpu_check.sh", "gpu_check.py"):
        (checkout / "bench" / name).write_bytes((REPO / "bench" / name).read_bytes())
    return python, checkout


def test_a_missing_package_without_its_wheel_is_one_line_naming_the_wheel(tmp_path, python_without_hydra):
    """A Python without hydra-core and a .whl/ without its wheel: one error line naming the package and the command
    that fetches it, exit 2, before --out is made."""
    python, checkout = python_without_hydra
    done = subprocess.run(["bash", str(checkout / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": str(python)})
    assert_refused(done, "hydra-core", "bash bench/fetch_device_wheels.sh", "PYTHON_VERSION=3.12")
    assert not (tmp_path / "out").exists()


def test_a_wheel_pip_cannot_install_is_one_line_with_pips_reason(tmp_path, python_without_hydra):
    """Wheels in .whl/ that pip cannot install: one error line ending with pip's last line, exit 2, and --out (made
    for the private site folder) is gone again."""
    python, checkout = python_without_hydra
    for name in ("hydra_core-1.3.2-py3-none-any.whl", "omegaconf-2.3.0-py3-none-any.whl",
                 "antlr4_python3_runtime-4.9.3-py3-none-any.whl"):
        (checkout / ".whl" / name).write_text("not a wheel")
    done = subprocess.run(["bash", str(checkout / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": str(python)})
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: pip could not install hydra-core") and "invalid" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_check_stops_its_step_and_says_where_its_results_are(tmp_path, signum, code):
    """SIGINT or SIGTERM during bench_check: exit 130 / 143, one line (no traceback) saying it was interrupted and
    naming --out and the results there, the step's process is gone, gpu_check.json records the interruption and the
    scratch folder is removed."""
    out = tmp_path / "out"
    process = subprocess.Popen(["bash", CHECK, "--device", "cpu", "--shape", "tiny", "--budget", "300", "--out",
                                str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, child = time.monotonic() + 120, None
    while child is None and time.monotonic() < deadline and process.poll() is None:
        log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
        child = next((int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
                      if line.startswith("=== bench_check: pid ")), None)
        time.sleep(0.2)
    assert child is not None, process.communicate(timeout=60)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "bench_check" in lines[0] and str(out) in lines[0]
    assert "gpu_check.json" in lines[0]
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["steps"]["bench_check"]["status"] == "interrupted"
    assert result["interrupted"] == f"{signal.Signals(signum).name} during bench_check"
    assert not (out / "scratch").exists()


def test_compile_runs_last_with_what_is_left_and_running_out_of_time_is_no_failure():
    """On CUDA the compile step is skipped, with the seconds left and the minimum, below MIN_COMPILE_S; a compile
    stopped for time leaves the check passed, saying so; a failed compile or essential step fails it."""
    gpu_check = load_script("bench/gpu_check.py")
    check = SimpleNamespace(opts=SimpleNamespace(device="cuda", compile=False), left=lambda: 120.0)
    skipped = gpu_check.compile_step(check)
    assert skipped["status"] == "skipped" and "120 s" in skipped["reason"] and str(gpu_check.MIN_COMPILE_S) in skipped["reason"]
    passed = {name: {"status": "passed"} for name in ("environment", "bench_check", "pipeline")}
    code, line = gpu_check.verdict({"steps": {**passed, "bench_compile": {"status": "timed out", "seconds": 190.0}}})
    assert code == 0 and "PASSED" in line and "stopped after 190 s" in line and "not counted as a failure" in line
    assert gpu_check.verdict({"steps": {**passed, "bench_compile": {"status": "failed"}}})[0] == 1
    assert gpu_check.verdict({"steps": {**passed, "pipeline": {"status": "timed out"}}})[0] == 1


def test_a_validation_flip_is_allowed_only_within_bf16s_rounding():
    """A row whose one-pass answer differs from the two-pass one is allowed only when the two-pass scoring's best two
    letters are within 2^-4 in log-probability; rows that agree are not flips."""
    from slamkit.evaluation import Prediction

    bench = load_script("bench/bench_sft.py")
    assert bench.FLIP_TOLERANCE == 2**-4
    two_pass = [Prediction("close", 0, 0, [0.5, 0.49, 0.01]), Prediction("far", 1, 1, [0.1, 0.9]),
                Prediction("same", 0, 2, [0.2, 0.3, 0.5]), Prediction("zero", 0, 0, [1.0, 0.0])]
    flips = bench.validation_flips(two_pass, [1, 0, 2, 1])
    assert [(f["id"], f["two_pass"], f["one_pass"], f["allowed"]) for f in flips] == [
        ("close", 0, 1, True), ("far", 1, 0, False), ("zero", 0, 1, False)]
