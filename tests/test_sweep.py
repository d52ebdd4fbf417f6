"""Sweeps: every job in its own folder, through Hydra's basic launcher, submitit's local executor and the Optuna
sweeper; a sweep ends in a comparison whose numbers are each job's own; a sweep folder in use is refused; a
missing plugin is one line naming the extra to install."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import OFFLINE_ENV, REPO, every_byte_string, load_script, run_cli, run_script, start_script
from hydra import compose, initialize_config_dir

from slamkit.evaluation import wilson_interval
from slamkit.run_folder import LOCK_FILE

JOB_ARGS = (  # one epoch of 48 sample rows: 3 steps, one evaluation of 16 validation rows
    "training_args.num_train_epochs=1", "training_args.bf16=false", "training_args.save_strategy=no",
    "training_args.logging_steps=1",
)


def sweep_args(tiny_model: Path, sample_tokens: dict[str, Path], out: Path) -> list[str]:
    return [f"model.base_model_name={tiny_model}", f"data.train_path={sample_tokens['train']}",
            f"data.val_path={sample_tokens['validation']}", f"training_args.output_dir={out}", *JOB_ARGS]


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_summary_is_each_jobs_own(sweep: Path, jobs: int) -> list[dict[str, str]]:
    """The summary has one row per job folder, and its numbers are that job's trainer_state.json's."""
    rows = summary_rows(sweep)
    assert [row["job"] for row in rows] == [str(n) for n in range(jobs)]
    for row in rows:
        folder = sweep / row["job"]
        assert row["folder"] == str(folder) and row["status"] == "complete"
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        last_eval = [e for e in history if "eval_loss" in e][-1]
        assert row["train_loss"] == f"{[e['loss'] for e in history if 'loss' in e][-1]:.4f}"
        assert row["eval_loss"] == f"{last_eval['eval_loss']:.4f}"
        assert row["eval_accuracy"] == f"{100 * last_eval['eval_accuracy']:.2f}%"
        assert row["eval_n"] == str(last_eval["eval_questions"]) == "16"
        low, high = wilson_interval(last_eval["eval_correct"], 16)
        assert row["eval_ci95"] == f"{100 * low:.1f}-{100 * high:.1f}%"
        assert row["steps"] == "3"
        record = yaml.safe_load((folder / "slamkit_run.yaml").read_text())
        assert record["config"]["training_args"]["output_dir"] == str(folder)  # the job's own folder
    assert (sweep / "sweep_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| job | overrides | status |" in (sweep / "sweep_summary.md").read_text()
    return rows


def test_a_basic_sweep_gives_every_job_its_own_folder_and_ends_in_a_summary(tiny_model, sample_tokens, tmp_path):
    """-m over two learning rates with one output_dir on the command line: two job folders (0, 1), each with its
    own weights and record, and a summary naming each job's swept override, printed at the end."""
    sweep = tmp_path / "lr_sweep"
    code, out, err = run_cli("-m", "training_args.learning_rate=1e-3,2e-3", *sweep_args(tiny_model, sample_tokens, sweep))
    assert code == 0, (out + err)[-3000:]
    rows = assert_summary_is_each_jobs_own(sweep, jobs=2)
    assert [row["overrides"] for row in rows] == ["training_args.learning_rate=0.001", "training_args.learning_rate=0.002"]
    assert f"sweep summary (2 jobs, {sweep}):" in out and "best validation accuracy: " in out
    assert (sweep / "0" / "model.safetensors").is_file() and (sweep / "1" / "model.safetensors").is_file()


def test_a_sweep_into_a_folder_in_use_is_refused_before_any_job(tiny_model, sample_tokens, tmp_path):
    """A sweep whose folder holds a single run, or an earlier sweep's jobs, stops at once with one line."""
    single = tmp_path / "single"
    code, out, err = run_cli(*sweep_args(tiny_model, sample_tokens, single))
    assert code == 0, err[-2000:]
    code, _, err = run_cli("-m", "training_args.learning_rate=1e-3,2e-3", *sweep_args(tiny_model, sample_tokens, single))
    assert (code, err.splitlines()[-1]) == (2, (
        f"error: {single}: holds a training run, and a sweep writes one folder per job into its folder; give the "
        "sweep its own training_args.output_dir"
    ))
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "slamkit_run.yaml").write_text("status: complete\n")
    code, _, err = run_cli("-m", "training_args.learning_rate=1e-3,2e-3", *sweep_args(tiny_model, sample_tokens, sweep))
    assert (code, err.splitlines()[-1]) == (2, (
        f"error: {sweep}: already holds the jobs of a sweep (0); give this sweep another training_args.output_dir"
    ))
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]


def test_a_failed_job_is_listed_in_the_summary_and_the_sweep_exits_2(tiny_model, sample_tokens, tmp_path):
    """A job that fails (here: a learning rate out of range) does not stop the others; the summary lists it as
    failed with its error, and the command exits 2 after it."""
    sweep = tmp_path / "sweep"
    code, out, err = run_cli("-m", "training_args.learning_rate=1e-3,-1", *sweep_args(tiny_model, sample_tokens, sweep))
    assert code == 2
    assert err.splitlines()[-1] == f"error: {sweep}: 1 of 2 jobs did not complete (job 1): see sweep_summary.md"
    rows = summary_rows(sweep)
    assert rows[0]["status"] == "complete"
    assert rows[1]["status"] == "failed: training_args.learning_rate=-1.0: must be a finite number >= 0"


def test_submitit_local_sweep_runs_each_job_as_its_own_process(tiny_model, sample_tokens, tmp_path):
    """The README's Slurm sweep with submitit's local executor instead of Slurm: two jobs, two folders with their
    own model and record, and the same summary. A second submitit sweep into the same folder while the first runs
    stops at once, naming the first, and changes nothing of it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = ("cli/train_sft.py", "-m", "hydra/launcher=submitit_local", "training_args.learning_rate=1e-3,2e-3",
            *sweep_args(tiny_model, sample_tokens, sweep))
    first = start_script(*args, env={"OMP_NUM_THREADS": "1"})
    lock = sweep / LOCK_FILE
    deadline = time.monotonic() + 300
    while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the first sweep holds its folder: its lock file names it
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = run_script(*args, env={"OMP_NUM_THREADS": "1"}, timeout=300)
    refusal = second.stderr.splitlines()[-1]
    assert second.returncode == 2 and refusal.startswith(f"error: {sweep}: in use by another run ("), second.stderr[-3000:]
    out, err = first.communicate(timeout=600)
    done = subprocess.CompletedProcess(args, first.returncode, out, err)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    assert_summary_is_each_jobs_own(sweep, jobs=2)
    assert f"sweep summary (2 jobs, {sweep}):" in done.stdout and "best validation accuracy: " in done.stdout


def test_the_slurm_launcher_config_composes(tiny_model):
    """hydra/launcher=slurm_h100 composes onto submitit's Slurm launcher with one H100 per job and the knobs set."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    load_script("cli/train_sft.py")  # registers the schema
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base="1.3"):
        cfg = compose("train_sft", overrides=["hydra/launcher=slurm_h100", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.nodes, launcher.tasks_per_node, launcher.partition) == (1, 1, 1, "gpu")
    assert launcher.timeout_min == 60 and launcher.mem_gb == 64 and launcher.cpus_per_task == 8
    assert set(launcher) >= {"account", "qos", "constraint", "additional_parameters", "setup"}


def fail_some_trainings(monkeypatch, fail: set[int]) -> list[int]:
    """Make the n-th training of this process (0, 1, ...) raise what slamkit does not expect (a RuntimeError, as CUDA
    running out of memory would) for each n in ``fail``; returns the list of trainings started."""
    from slamkit.training import SFTTrainer

    started: list[int] = []
    original = SFTTrainer.train

    def train(self, *args, **kwargs):
        started.append(len(started))
        if started[-1] in fail:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "train", train)
    return started


def test_optuna_sweeper_maximises_the_returned_validation_accuracy(tiny_model, sample_tokens, tmp_path, monkeypatch):
    """hparams_search=lr_optuna with the config's example overrides (a search range on the command line replaces
    the config's) and the sqlite storage it suggests: each trial is a job with its own folder, its value the job's
    final eval_accuracy; a trial that fails (here trial 1, with an error slamkit does not expect) is a failed trial
    in the study and a failed row in the summary, the others go on, and the command exits 2 after the summary."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import optuna

    fail_some_trainings(monkeypatch, fail={1})
    sweep, db = tmp_path / "search", tmp_path / "study.db"
    code, out, err = run_cli("-m", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=3",
                             f"hydra.sweeper.storage=sqlite:///{db}", "training_args.learning_rate=tag(log, interval(1e-3, 2e-3))",
                             *sweep_args(tiny_model, sample_tokens, sweep))
    assert code == 2, (out + err)[-3000:]
    assert err.splitlines()[-1] == f"error: {sweep}: 1 of 3 jobs did not complete (job 1): see sweep_summary.md"
    rows = summary_rows(sweep)
    assert [row["status"] for row in rows] == [
        "complete", "failed: CUDA out of memory. Tried to allocate 20.00 GiB", "complete"]
    study = optuna.load_study(study_name="slamkit_lr", storage=f"sqlite:///{db}")
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert all(1e-3 <= trial.params["training_args.learning_rate"] <= 2e-3 for trial in study.trials)
    done = [rows[0], rows[2]]
    assert [t.value for t in study.trials if t.state.name == "COMPLETE"] == [
        pytest.approx(float(row["eval_accuracy"].rstrip("%")) / 100, abs=5e-5) for row in done]
    optimization = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert optimization["best_value"] == max(t.value for t in study.trials if t.state.name == "COMPLETE")


def test_a_search_that_ends_without_a_completed_trial_still_ends_in_its_summary(tiny_model, sample_tokens, tmp_path,
                                                                                 monkeypatch):
    """Every trial failed: Optuna has no best trial and gives up; the sweep still writes its summary and ends in one
    line naming why it stopped, exit 2."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    fail_some_trainings(monkeypatch, fail={0})
    sweep = tmp_path / "search"
    code, out, err = run_cli("-m", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=1",
                             *sweep_args(tiny_model, sample_tokens, sweep))
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: {sweep}: the sweep stopped after 1 jobs (ValueError: No trials are completed yet.): see "
        "sweep_summary.md")
    assert [row["status"] for row in summary_rows(sweep)] == ["failed: CUDA out of memory. Tried to allocate 20.00 GiB"]
    assert not (sweep / ".slamkit.lock").exists()


def test_a_search_without_validation_or_a_slurm_sweep_without_sbatch_is_refused_before_any_job(
        tiny_model, sample_tokens, tmp_path, monkeypatch):
    """Optuna maximises the validation accuracy: with no data.val_path no trial could have a value. The Slurm
    launcher submits with sbatch: without it on PATH. Both one line, exit 2, nothing written."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "search"
    args = [a for a in sweep_args(tiny_model, sample_tokens, sweep) if not a.startswith("data.val_path=")]
    code, _, err = run_cli("-m", "hparams_search=lr_optuna", *args, "data.val_path=null")
    assert (code, err.splitlines()) == (2, [
        "error: OptunaSweeper searches for the best final validation accuracy, and data.val_path is not set: without "
        "validation no trial has a value; set data.val_path"])
    monkeypatch.setenv("PATH", str(tmp_path / "no_slurm_here"))
    code, _, err = run_cli("-m", "hydra/launcher=slurm_h100", "training_args.learning_rate=1e-3,2e-3",
                           *sweep_args(tiny_model, sample_tokens, sweep))
    assert (code, err.splitlines()[-1]) == (2, (
        "error: hydra/launcher=slurm_h100 submits every job with sbatch, which is not on PATH here: run the sweep from "
        "a Slurm login node (inside the container: see container/README.md), or run the jobs on this machine with "
        "hydra/launcher=submitit_local"))
    assert not sweep.exists()


def test_a_custom_subdir_sweep_lists_its_jobs_and_a_job_that_raises_is_a_failed_row(tiny_model, sample_tokens,
                                                                                   tmp_path, monkeypatch):
    """hydra.sweep.subdir named by the overrides: the summary finds the jobs in their folders; a job that raises
    anything (not only a slamkit error) is that job's failure, not the sweep's end; a second sweep into the folder is
    refused, whatever the subdir; a sweep folder held by another sweep is refused at once."""
    fail_some_trainings(monkeypatch, fail={1})
    sweep = tmp_path / "sweep"
    subdir = "hydra.sweep.subdir=lr_${training_args.learning_rate}"
    code, out, err = run_cli("-m", subdir, "training_args.learning_rate=1e-3,2e-3",
                             *sweep_args(tiny_model, sample_tokens, sweep))
    assert code == 2, (out + err)[-3000:]
    assert err.splitlines()[-1] == f"error: {sweep}: 1 of 2 jobs did not complete (job lr_0.002): see sweep_summary.md"
    rows = summary_rows(sweep)
    assert [(row["job"], row["status"]) for row in rows] == [
        ("lr_0.001", "complete"), ("lr_0.002", "failed: CUDA out of memory. Tried to allocate 20.00 GiB")]
    assert rows[0]["folder"] == str(sweep / "lr_0.001") and (sweep / "lr_0.001" / "model.safetensors").is_file()
    assert "RuntimeError: CUDA out of memory" in out + err  # the job's traceback is logged: it may be a bug

    code, _, err = run_cli("-m", "hydra.sweep.subdir=again_${hydra.job.num}", "training_args.learning_rate=1e-3",
                           *sweep_args(tiny_model, sample_tokens, sweep))
    assert (code, err.splitlines()[-1]) == (2, (
        f"error: {sweep}: already holds the jobs of a sweep (lr_0.001, lr_0.002); give this sweep another "
        "training_args.output_dir"))

    from slamkit.run_folder import RunFolder

    other = tmp_path / "other"
    with RunFolder(other) as held:
        held.hold()
        code, _, err = run_cli("-m", "training_args.learning_rate=1e-3,2e-3",
                               *sweep_args(tiny_model, sample_tokens, other))
        assert sorted(p.name for p in other.iterdir()) == [".slamkit.lock"]  # no job started
    assert code == 2 and err.splitlines()[-1].startswith(f"error: {other}: in use by another run (pid {os.getpid()} ")


def test_a_missing_plugin_is_one_line_naming_the_extra(tmp_path):
    """With Hydra's plugins hidden (a bare hydra_plugins package first on the path), the README's Slurm sweep
    fails in one line that names the extra to install; so does the Optuna search, whose message comes from the
    same translation of Hydra's "could not find" error."""
    shadow = tmp_path / "shadow" / "hydra_plugins"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # a regular package hides the installed namespace package's plugins
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run([sys.executable, str(REPO / "cli/train_sft.py"), "-m", "hydra/launcher=slurm_h100"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        "error: hydra/launcher/submitit_slurm needs a Hydra plugin that is not installed: pip install -e '.[slurm]'"
    ]
    from hydra.errors import MissingConfigException

    missing = MissingConfigException("In 'hparams_search/lr_optuna': Could not load 'hydra/sweeper/optuna'.", "x")
    assert load_script("cli/train_sft.py").config_error(missing) == (
        "hydra/sweeper/optuna needs a Hydra plugin that is not installed: pip install -e '.[sweep]'"
    )


def test_each_jobs_run_name_and_curves_title_say_which_job_and_what_it_swept(tiny_model, sample_tokens, tmp_path,
                                                                            monkeypatch):
    """In a basic sweep over two learning rates, job N's record has training_args.run_name "job N: ..." holding its
    swept override, and its training_curves.png is drawn with that name as its title (the title is read off the
    Figure as it is saved: a PNG's pixels do not say it)."""
    from slamkit import plots

    titles: dict[Path, str] = {}
    save_png = plots._save_png

    def saved_with_title(figure, path, outputs=None):
        titles[Path(path)] = figure.get_suptitle()
        return save_png(figure, path, outputs)

    monkeypatch.setattr(plots, "_save_png", saved_with_title)
    sweep = tmp_path / "sweep"
    args = [arg for arg in sweep_args(tiny_model, sample_tokens, sweep)
            if not arg.startswith(("data.val_path", "training_args.num_train"))]  # one step, no validation
    code, out, err = run_cli("-m", "training_args.learning_rate=1e-3,2e-3", "training_args.max_steps=1",
                             "data.val_path=null", "training_args.eval_strategy=no", *args)
    assert code == 0, (out + err)[-3000:]
    swept = [row["overrides"] for row in summary_rows(sweep)]
    assert swept == ["training_args.learning_rate=0.001", "training_args.learning_rate=0.002"]
    for job, override in enumerate(swept):
        name = yaml.safe_load((sweep / str(job) / "slamkit_run.yaml").read_text())["config"]["training_args"]
        name = name["run_name"]
        assert name.startswith(f"job {job}: ") and override in name.split()
        title = titles[sweep / str(job) / "training_curves.png"]
        assert "".join(title.split()) == "".join(name.split())  # the whole name, wrapped onto lines of 100 characters


def test_a_hub_token_given_to_a_sweep_is_written_nowhere(tiny_model, sample_tokens, tmp_path, monkeypatch):
    """training_args.hub_token written out on a sweep's command line is refused before any job (Hydra would save it
    into multirun.yaml); given through the environment ('${oc.env:...}') to a sweep of a job that completes and one
    that fails (a learning rate out of range), it appears in no file under the sweep folder (each job's record,
    training_args.bin searched inside its pickle, multirun.yaml), and the completed job's record says <redacted>."""
    token = "hf_slamkitTestSweepSecret0123456789"
    sweep = tmp_path / "sweep"
    args = [arg for arg in sweep_args(tiny_model, sample_tokens, sweep)
            if not arg.startswith(("data.val_path", "training_args.num_train"))]  # one step, no validation
    common = ["-m", "training_args.learning_rate=1e-3,-1", "training_args.max_steps=1", "data.val_path=null",
              "training_args.eval_strategy=no", *args]
    code, out, err = run_cli(*common, f"training_args.hub_token={token}")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: training_args.hub_token: "), (out + err)[-3000:]
    assert not sweep.exists() or not any(token.encode() in data for data in every_byte_string(sweep).values())
    monkeypatch.setenv("SLAMKIT_TEST_TOKEN", token)
    code, out, err = run_cli(*common, "training_args.hub_token=${oc.env:SLAMKIT_TEST_TOKEN}")
    assert code == 2, (out + err)[-3000:]
    assert [row["status"].split(":")[0] for row in summary_rows(sweep)] == ["complete", "failed"]
    leaked = sorted({name.split("!")[0] for name, data in every_byte_string(sweep).items() if token.encode() in data})
    assert (sweep / "0" / "training_args.bin").is_file() and (sweep / "1" / "slamkit_run.yaml").is_file()
    assert leaked == []
    assert yaml.safe_load((sweep / "0" / "slamkit_run.yaml").read_text())["config"]["training_args"]["hub_token"] == (
        "<redacted>")
