"""A sweep ends in a comparison: one row per job, from each job's own folder, and one figure of their curves.

After ``python cli/train_sft.py -m ...`` (any launcher: Hydra's basic one, submitit local or Slurm, a sweeper
such as Optuna), the sweep folder (``hydra.sweep.dir``: ``training_args.output_dir``, jobs in ``0/``, ``1/``, ...)
gets ``sweep_summary.csv``, ``sweep_summary.md`` and ``sweep_curves.png``. Every number comes from the job's
own ``trainer_state.json`` and run record.

:class:`SweepSummary` is the Hydra callback that does it (``hydra.callbacks`` in config/train_sft.yaml): the one
place in slamkit that Hydra calls into; it hands plain paths to :func:`summarize` and :func:`write_summary`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from slamkit.config import is_secret
from slamkit.errors import EXIT_BAD_INPUT, Interrupted, SlamkitError, one_line, print_error
from slamkit.evaluation import wilson_interval
from slamkit.jsonl import output_set
from slamkit.run_folder import RUN_RECORD, TRAINER_STATE, RunFolder, checkpoints, read_record

log = logging.getLogger(__name__)

SUMMARY_FILES = ("sweep_summary.csv", "sweep_summary.md", "sweep_curves.png")
COLUMNS = ("job", "overrides", "status", "train_loss", "eval_loss", "eval_accuracy", "eval_n", "eval_ci95", "steps",
           "wall_s", "folder")


@dataclass
class JobSummary:
    job: str
    overrides: str  # the overrides in which this job differs from the others
    status: str
    train_loss: float | None  # the last logged training loss (the run's mean when no step was logged)
    eval_loss: float | None
    eval_accuracy: float | None
    eval_n: int | None
    eval_correct: int | None
    steps: int | None
    wall_s: float | None
    folder: Path
    curve: list[tuple[int, float]]  # (step, eval_accuracy) of every evaluation
    loss_curve: list[tuple[int, float]]  # (step, loss) of every logged training step
    error: str | None = None

    def row(self) -> dict[str, str]:
        ci = (
            "-" if self.eval_correct is None or not self.eval_n
            else "{:.1f}-{:.1f}%".format(*(100 * x for x in wilson_interval(self.eval_correct, self.eval_n)))
        )
        return {
            "job": self.job, "overrides": self.overrides or "-",
            "status": self.status + (f": {self.error}" if self.error else ""),
            "train_loss": _fmt(self.train_loss, ".4f"), "eval_loss": _fmt(self.eval_loss, ".4f"),
            "eval_accuracy": "-" if self.eval_accuracy is None else f"{100 * self.eval_accuracy:.2f}%",
            "eval_n": _fmt(self.eval_n, "d"), "eval_ci95": ci, "steps": _fmt(self.steps, "d"),
            "wall_s": _fmt(self.wall_s, ".1f"), "folder": str(self.folder),
        }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _trainer_state(folder: Path) -> dict[str, Any] | None:
    """The job's final trainer_state.json, else its newest checkpoint's (a job that stopped early)."""
    for candidate in [folder, *reversed(checkpoints(folder))]:
        try:
            return json.loads((candidate / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def job_folders(sweep_dir: Path, depth: int = 3) -> list[Path]:
    """The job folders of a sweep (each holds a run record or Hydra's record of the job), in job order: ``0``, ``1``,
    ... with Hydra's default ``hydra.sweep.subdir``, or whatever folders (up to ``depth`` levels down) another gives."""
    found: list[Path] = []

    def visit(folder: Path, level: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if child.name.startswith("."):  # .hydra, .slamkit_replaced: never a job
                continue
            if (child / RUN_RECORD).is_file() or (child / ".hydra" / "overrides.yaml").is_file():
                found.append(child)
            elif level < depth:
                visit(child, level + 1)

    visit(sweep_dir, 1)  # no folder (yet): no jobs
    return sorted(found, key=lambda p: [(0, int(x), "") if x.isdigit() else (1, 0, x)  # job 2 before job 10
                                        for x in p.relative_to(sweep_dir).parts])


def summarize(sweep_dir: Path) -> list[JobSummary]:
    """One :class:`JobSummary` per job folder, read from its run record and trainer_state.json."""
    records = {folder: read_record(folder) or {} for folder in job_folders(sweep_dir)}
    overrides = {folder: list(record.get("command_line", [])) for folder, record in records.items()}
    common = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    jobs = []
    for folder, record in records.items():
        state = _trainer_state(folder) or {}
        history = state.get("log_history", [])
        losses = [e["loss"] for e in history if "loss" in e] or [e["train_loss"] for e in history if "train_loss" in e]
        evals = [e for e in history if "eval_loss" in e]
        last_eval = evals[-1] if evals else {}
        final = next((e for e in reversed(history) if "train_runtime" in e), {})
        jobs.append(JobSummary(
            job=str(folder.relative_to(sweep_dir)),
            overrides=" ".join(o for o in overrides[folder] if o not in common),
            status=record.get("status", "no record"),
            train_loss=losses[-1] if losses else None,
            eval_loss=last_eval.get("eval_loss"),
            eval_accuracy=last_eval.get("eval_accuracy"),
            eval_n=last_eval.get("eval_questions"),
            eval_correct=last_eval.get("eval_correct"),
            steps=state.get("global_step"),
            wall_s=final.get("train_runtime"),
            folder=folder,
            curve=[(e["step"], e["eval_accuracy"]) for e in evals if "eval_accuracy" in e],
            loss_curve=[(e["step"], e["loss"]) for e in history if "loss" in e],
            error=record.get("error"),
        ))
    return jobs


def markdown_table(jobs: list[JobSummary]) -> str:
    rows = [job.row() for job in jobs]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c].replace("|", "\\|") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, jobs: list[JobSummary]) -> list[Path]:
    """Write the CSV, the markdown table and the curves PNG into ``sweep_dir`` as one set."""
    from slamkit.plots import plot_sweep_curves  # matplotlib: imported only when a plot is drawn

    with output_set() as outputs:
        with outputs.open(sweep_dir / "sweep_summary.csv") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(job.row() for job in jobs)
        with outputs.open(sweep_dir / "sweep_summary.md") as handle:
            handle.write(markdown_table(jobs))
        jobs_with_curves = [job for job in jobs if job.curve or job.loss_curve]
        if jobs_with_curves:
            plot_sweep_curves(
                {f"{job.job}: {job.overrides or '-'}": (job.loss_curve, job.curve) for job in jobs_with_curves},
                sweep_dir / "sweep_curves.png", title=sweep_dir.name, outputs=outputs,
            )
    return [sweep_dir / name for name in SUMMARY_FILES if (sweep_dir / name).exists()]


def check_sweep_dir(sweep_dir: Path) -> None:
    """A sweep writes into a folder of its own: one that holds a run, or the jobs of an earlier sweep, is refused
    before any job starts."""
    if (sweep_dir / RUN_RECORD).exists() or checkpoints(sweep_dir):
        raise SlamkitError(
            f"{sweep_dir}: holds a training run, and a sweep writes one folder per job into its folder; "
            "give the sweep its own training_args.output_dir"
        )
    taken = [str(p.relative_to(sweep_dir)) for p in job_folders(sweep_dir)]
    if taken:
        raise SlamkitError(
            f"{sweep_dir}: already holds the jobs of a sweep ({', '.join(taken[:5])}); give this sweep another "
            "training_args.output_dir"
        )


_ACTIVE: dict[str, Any] = {}  # the sweep this process is running: its folder and the lock on it


def preflight(config) -> None:
    """What would only fail after the first job (or after every job): refused before any job starts."""
    sweeper = str(config.hydra.sweeper.get("_target_", ""))
    if not sweeper.endswith("BasicSweeper") and config.data.get("val_path") is None:
        raise SlamkitError(
            f"{sweeper.rsplit('.', 1)[-1]} searches for the best final validation accuracy, and data.val_path is not "
            "set: without validation no trial has a value; set data.val_path"
        )
    sweep = config.hydra.sweep
    subdir = str(OmegaConf.to_container(sweep, resolve=False)["subdir"])  # as written: ${hydra.job.num} unfilled
    if str(sweep.dir).startswith("~") or subdir.startswith(("/", "~")) or ".." in Path(subdir).parts:
        raise SlamkitError(
            f"hydra.sweep.dir={sweep.dir}, hydra.sweep.subdir={subdir}: every job's folder must lie inside the sweep "
            "folder (no '..', no absolute subdir), and Hydra does not expand '~': write the path out"
        )
    for override in OmegaConf.to_container(config.hydra.overrides.task, resolve=False):  # as given: multirun.yaml
        key, _, value = override.partition("=")
        if is_secret(key) and "${" not in value:
            raise SlamkitError(f"{key}: a secret on a sweep's command line would be written into multirun.yaml; pass "
                               f"it through the environment: '{key}=${{oc.env:HF_TOKEN}}'")
    launcher = str(config.hydra.launcher.get("_target_", ""))
    if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise SlamkitError(
            "hydra/launcher=slurm_h100 submits every job with sbatch, which is not on PATH here: run the sweep from a "
            "Slurm login node (inside the container: see container/README.md), or run the jobs on this machine with "
            "hydra/launcher=submitit_local"
        )


class SweepSummary(Callback):
    """Hydra callback: claim the sweep folder (the run folders' lock: a second sweep into it fails at once) and
    refuse one in use; summarise the sweep when it ends, and exit 2, after the summary, when a job failed.

    Hydra turns a callback's exceptions into warnings and carries on, so a refusal here prints its ``error:`` line
    and raises ``SystemExit`` itself, which Hydra lets through.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            preflight(config)
            _ACTIVE["lock"] = RunFolder(sweep_dir).__enter__()
            check_sweep_dir(sweep_dir)
            _ACTIVE["lock"].hold()
        except SlamkitError as err:
            release()
            print_error(err)
            raise SystemExit(EXIT_BAD_INPUT) from None
        _ACTIVE["dir"] = sweep_dir

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            report(Path(str(config.hydra.sweep.dir)))
        finally:
            release()


def release() -> None:
    """Let go of the sweep folder: its lock file goes (unless it was there before), and the folder too if the
    sweep created it and left it empty."""
    lock = _ACTIVE.pop("lock", None)
    _ACTIVE.clear()
    if lock is not None:
        lock.leave_as_found()
        lock.__exit__(None, None, None)


def report(sweep_dir: Path, stopped: BaseException | None = None) -> None:
    """Write and print the summary of the jobs in ``sweep_dir``; raise the one-line error the sweep ends with when a
    job failed, or when the sweep itself stopped early (``stopped``)."""
    jobs = summarize(sweep_dir)
    if jobs:
        written = write_summary(sweep_dir, jobs)
        best = best_jobs(jobs)
        lines = [f"sweep summary ({len(jobs)} jobs, {sweep_dir}):", markdown_table(jobs).rstrip("\n")]
        if len(best) == 1:
            lines.append(f"best validation accuracy: job {best[0].job} ({best[0].overrides or 'no overrides'}), "
                         f"{100 * best[0].eval_accuracy:.2f}% of {best[0].eval_n}")
        elif best:
            lines.append(f"best validation accuracy: a tie of jobs {', '.join(job.job for job in best)} at "
                         f"{100 * best[0].eval_accuracy:.2f}% of {best[0].eval_n}: the sweep does not tell them apart")
        lines += [f"wrote {path}" for path in written]
        log.info("\n".join(lines))
    failed = [job.job for job in jobs if job.status != "complete"]
    where = ": see sweep_summary.md" if jobs else ""
    if stopped is not None:
        message = f"{sweep_dir}: the sweep stopped after {len(jobs)} jobs ({one_line(stopped)}){where}"
        if isinstance(stopped, Interrupted):
            raise Interrupted(message, stopped.exit_code - 128) from None
        if isinstance(stopped, KeyboardInterrupt):  # Ctrl-C between two jobs
            raise Interrupted(f"{sweep_dir}: the sweep was interrupted (SIGINT) after {len(jobs)} jobs{where}",
                              signal.SIGINT) from None
        raise SlamkitError(message) from None
    if failed:
        print_error(SlamkitError(
            f"{sweep_dir}: {len(failed)} of {len(jobs)} jobs did not complete (job {', '.join(failed)}){where}"
        ))
        raise SystemExit(EXIT_BAD_INPUT)


def stopped_early(err: BaseException) -> None:
    """The sweep this process runs ended in ``err`` before Hydra's end-of-sweep callback (a sweeper that gave up,
    Ctrl-C): the jobs that ran are still summarised, and the sweep ends in one line. No sweep running: nothing."""
    if "dir" in _ACTIVE:
        try:
            report(_ACTIVE["dir"], stopped=err)
        finally:
            release()


def best_jobs(jobs: list[JobSummary]) -> list[JobSummary]:
    """The completed jobs with the highest final validation accuracy: one, or several when they tie (a failed job's
    last validation never counts)."""
    done = [job for job in jobs if job.status == "complete" and job.eval_accuracy is not None
            and not math.isnan(job.eval_accuracy)]
    top = max((job.eval_accuracy for job in done), default=None)
    return [job for job in done if job.eval_accuracy == top]
