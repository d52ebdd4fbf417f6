"""A run folder belongs to one run: never overwritten, mixed or misreported, whatever happens to the process.

Faults are injected for real: ``kill -9`` (tests/interrupt.py SIGKILLs the training process at a chosen point:
mid-run, during save_total_limit's checkpoint rotation, during the final save), two runs started into one folder,
SIGINT and SIGTERM (tests/test_faults.py: numbers that are not finite, a full or read-only disk). CPU, float32, the tiny Qwen3 on 48
sample rows: 16 per step, 3 steps per epoch, so "identical" means bit-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import every_byte_string, run_cli, run_script, start_script
from safetensors.torch import load_file

from slamkit.errors import SlamkitError
from slamkit.run_folder import LOCK_FILE, RUN_RECORD, checkpoint_is_complete

EPOCH = 3  # optimizer steps per epoch: 48 rows / 16


def overrides(base: Path, tokens: dict[str, Path], out: Path, *extra: str, epochs: int = 2) -> list[str]:
    """The seed's step-3 command on the tiny model, checkpointing every epoch with the optimizer state."""
    return [
        f"model.base_model_name={base}", f"data.train_path={tokens['train']}", f"data.val_path={tokens['validation']}",
        f"training_args.output_dir={out}", f"training_args.num_train_epochs={epochs}",
        "training_args.per_device_train_batch_size=4", "training_args.gradient_accumulation_steps=4",
        "training_args.learning_rate=1e-3", "training_args.bf16=false", "training_args.save_strategy=epoch",
        "training_args.eval_strategy=no", "training_args.save_only_model=false", "training_args.logging_steps=1",
        "training_args.seed=7", *extra,
    ]


def interrupted(point: str, action: str, args: list[str], wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """tests/interrupt.py: run the command and SIGKILL (or pause) it at ``point``."""
    # The same torch thread count as this process: the resumed half runs here, and float sums depend on it.
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    if not wait:
        return start_script("tests/interrupt.py", point, action, *args, env=env)
    return run_script("tests/interrupt.py", point, action, *args, env=env)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def record(folder: Path) -> dict:
    return yaml.safe_load((folder / RUN_RECORD).read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the run, byte for byte (the lock file says who last held the folder, so it may change)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, sample_tokens, tmp_path_factory) -> dict[int, Path]:
    """Reference runs, never interrupted: ``{epochs: folder}`` for 2 epochs and for 3 with save_total_limit=1."""
    folders = {}
    for epochs, extra in ((2, ()), (3, ("training_args.save_total_limit=1",))):
        out = tmp_path_factory.mktemp("uninterrupted") / f"run{epochs}"
        cli_ok(*overrides(tiny_model, sample_tokens, out, *extra, epochs=epochs))
        folders[epochs] = out
    return folders


def cli_ok(*args: str) -> str:
    """cli/train_sft.py in-process, which must succeed; everything it printed."""
    code, out, err = run_cli(*args)
    assert code == 0, (out + err)[-3000:]
    return out + err


def cli_fails(*args: str) -> str:
    """The one ``error:`` line (on stderr) of a run that must stop with exit code 2."""
    code, out, err = run_cli(*args)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, (out + err)[-3000:]
    return errors[0]


# ---------------------------------------------------------------- one run per folder


def test_a_second_run_into_a_finished_run_is_refused_and_changes_nothing(uninterrupted, tiny_model, sample_tokens):
    """Re-running the same command into a folder that holds a run stops before loading anything, says what is
    there and the three choices, and leaves every file as it was."""
    out = uninterrupted[2]
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out))
    assert line.startswith(f"error: {out}: already holds a run (checkpoint-3/, checkpoint-6/, ")
    assert line.endswith(
        "status complete); resume it with cont_training=true, write to another training_args.output_dir, "
        "or replace it with overwrite=true"
    )
    assert snapshot(out) == before


def test_a_folder_that_is_not_a_run_is_refused(tiny_model, sample_tokens, tmp_path):
    """An output_dir holding other files (here a project folder) is refused, even with overwrite=true."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ((), ("overwrite=true",)):
        line = cli_fails(*overrides(tiny_model, sample_tokens, out), *extra)
        assert line == f"error: {out}: not empty and not a slamkit run folder (notes.txt); choose a new or empty training_args.output_dir"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_moves_the_old_run_whole_beside_the_folder_once_the_new_one_has_started(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """overwrite=true whose run fails before it starts (no such base model) leaves the old run in place; one that
    starts moves it, byte for byte, to the sibling run.replaced-<time>, named in the log, and never deletes it: the
    folder holds only the new run."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "overwrite=true", epochs=1), f"model.base_model_name={tmp_path}/none")
    assert f"{tmp_path}/none" in line and snapshot(out) == before
    printed = cli_ok(*overrides(tiny_model, sample_tokens, out, "overwrite=true", epochs=1))
    [aside] = tmp_path.glob("run.replaced-*")
    assert snapshot(aside) == before and str(aside) in printed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert record(out)["status"] == "complete" and record(out)["config"]["training_args"]["num_train_epochs"] == 1


def test_overwrite_refuses_a_folder_that_also_holds_what_no_run_writes(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """overwrite=true into a run folder that also holds the user's notes.txt, a README.md of their own, an
    eval_test/ folder and an evaluation saved inside checkpoint-3/ is refused, naming them; every file stays as it
    was."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("# my run\n")
    (out / "eval_test").mkdir()
    (out / "checkpoint-3" / "results.json").write_text("{}")
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "overwrite=true", epochs=1))
    assert line.startswith(f"error: {out}: overwrite=true") and "never other files" in line
    named = line.split("(", 1)[1].split(")")[0].split(", ")
    assert sorted(named) == ["README.md", "checkpoint-3/results.json", "eval_test/", "notes.txt"]
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["the base model", "inside the base model", "a folder holding the training file"])
def test_an_output_dir_that_is_holds_or_lies_in_an_input_is_refused(where, tiny_model, sample_tokens, tmp_path):
    """training_args.output_dir that is the pretrained model's folder, lies inside it, or holds the training file is
    refused before anything is loaded, naming the input, with overwrite=true and cont_training=true too; nothing
    changes."""
    model, tokens = tmp_path / "model", dict(sample_tokens)
    shutil.copytree(tiny_model, model)
    out = {"the base model": model, "inside the base model": model / "run",
           "a folder holding the training file": tmp_path / "data"}[where]
    if where.startswith("a folder"):
        out.mkdir()
        tokens["train"] = Path(shutil.copy(sample_tokens["train"], out / "train.jsonl"))
    before = snapshot(tmp_path)
    for extra in ("overwrite=true", "cont_training=true"):
        line = cli_fails(*overrides(model, tokens, out, extra, epochs=1))
        assert line.startswith(f"error: {out}: training_args.output_dir") and "input" in line
        assert str(model if where != "a folder holding the training file" else tokens["train"]) in line
    assert snapshot(tmp_path) == before


def wait_for(marker: Path, process: subprocess.Popen) -> None:
    for _ in range(600):
        if marker.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), process.communicate()[1][-2000:]


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_an_overwrite_stopped_or_killed_leaves_the_old_run_whole_beside_the_folder(how, uninterrupted, tiny_model, sample_tokens, tmp_path):
    """Ctrl-C (exit 130, one line, status interrupted) or kill -9 of an overwrite=true run while it trains: the old run
    is in run.replaced-<time>, byte for byte; the folder holds the new run that did not finish, which the next run
    into it refuses to take without cont_training or overwrite."""
    out, marker = tmp_path / "run", tmp_path / "at_step_1"
    shutil.copytree(uninterrupted[2], out)
    before = snapshot(out)
    args = overrides(tiny_model, sample_tokens, out, "overwrite=true", epochs=1)
    if how == "SIGKILL":
        killed = interrupted("step:1", "kill", args)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert record(out)["status"] == "running"
    else:
        run = interrupted("step:1", f"pause:{marker}", args, wait=False)
        wait_for(marker, run)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
        assert run.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith(f"error: {out}: interrupted (SIGINT) at step 1")
        assert record(out)["status"] == "interrupted"
    [aside] = tmp_path.glob("run.replaced-*")
    assert snapshot(aside) == before
    line = cli_fails(*overrides(tiny_model, sample_tokens, out))
    assert line.startswith(f"error: {out}: already holds a run (")
    assert ("stopped before finishing" if how == "SIGKILL" else "status interrupted") in line


def test_sigterm_stops_a_run_with_one_line_and_a_record_that_says_interrupted(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """SIGTERM (kill, a scheduler) after checkpoint-3: exit 143, one line naming what resumes, record status
    interrupted; cont_training=true then ends with the uninterrupted run's weights."""
    out, marker = tmp_path / "run", tmp_path / "at_step_4"
    run = interrupted("step:4", f"pause:{marker}", overrides(tiny_model, sample_tokens, out), wait=False)
    wait_for(marker, run)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"error: {out}: interrupted (SIGTERM) at step 4; cont_training=true resumes from checkpoint-3"
    )
    assert record(out)["status"] == "interrupted"
    cli_ok(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
    assert_identical(weights(out), weights(uninterrupted[2]))


# Run a script as `python SCRIPT` would, pressing Ctrl-C (a real SIGINT to the process) the moment it starts
# importing torch: the seconds in which a user who spots a typo in the command line stops it.
CTRL_C_WHILE_IMPORTING = """
import importlib.abc, os, runpy, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)

signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C (a nohup'd suite hands it ignored)
sys.meta_path.insert(0, CtrlC())
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["cli/train_sft.py", "example_arc/prepare_arc_tokens.py",
                                    "example_arc/eval_arc_base.py", "example_arc/eval_arc.py"])
def test_ctrl_c_while_a_script_is_still_starting_is_one_line(script, tmp_path):
    """Ctrl-C while a script imports torch and transformers (before it has read or written anything): exit 130 and
    one line, not a traceback through the import machinery. (Step 1 imports neither before it starts.)"""
    from helpers import REPO, script_env

    done = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_IMPORTING, str(REPO / script)], cwd=tmp_path,
                          env=script_env(), capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (130, "error: interrupted (SIGINT) while starting; nothing was written\n")
    assert list(tmp_path.iterdir()) == []


def test_resuming_a_finished_run_that_left_no_checkpoint_is_refused(tiny_model, sample_tokens, tmp_path):
    """cont_training=true on a finished run without checkpoints would train from step 0 over its weights: refused."""
    out = tmp_path / "run"
    cli_ok(*overrides(tiny_model, sample_tokens, out, "training_args.save_strategy=no", epochs=1))
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "training_args.save_strategy=no", "cont_training=true", epochs=1))
    assert line == (
        f"error: {out}: cont_training=true, but its run finished and left no checkpoint to resume from; train "
        "into another training_args.output_dir, or replace it with overwrite=true"
    )
    assert snapshot(out) == before


def test_resume_with_changed_settings_is_refused_naming_them(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """cont_training=true with another learning rate and another seed names both changes; nothing is changed."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "cont_training=true", "training_args.learning_rate=5e-4",
                                "training_args.seed=8"))
    assert line == (
        f"error: {out}: cont_training=true, but this run's settings differ from the run in the folder "
        "(training_args.seed: 7 -> 8; training_args.learning_rate: 0.001 -> 0.0005); resume with the same "
        "settings, or set accept_changed_settings=true"
    )
    assert snapshot(out) == before


def test_two_runs_at_once_the_second_fails_naming_the_first_and_a_killed_lock_does_not_block(tiny_model, sample_tokens, tmp_path):
    """While a run holds its folder, a second one into it fails at once naming the first one's process; after
    the first is killed with SIGKILL its lock is gone, and cont_training=true runs to completion."""
    out, marker = tmp_path / "run", tmp_path / "started"
    first = interrupted("started", f"pause:{marker}", overrides(tiny_model, sample_tokens, out), wait=False)
    try:
        for _ in range(600):
            if marker.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), first.communicate()[1][-2000:]
        pid = int(marker.read_text())
        line = cli_fails(*overrides(tiny_model, sample_tokens, out))
        assert line.startswith(f"error: {out}: in use by another run (pid {pid} on ")
        assert line.endswith("); wait for it to finish or choose another training_args.output_dir")
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert record(out)["status"] == "running"  # what a killed run leaves: its lock is free
    line = cli_fails(*overrides(tiny_model, sample_tokens, out))
    assert "; it stopped before finishing); resume it with cont_training=true" in line
    cli_ok(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
    assert record(out)["status"] == "complete"


# ---------------------------------------------------------------- kill -9, then resume


def test_kill_9_mid_run_then_resume_gives_the_weights_of_an_uninterrupted_run(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """SIGKILL at step 4 (after checkpoint-3), then cont_training=true: every checkpoint and the final weights are
    bit-identical to an uninterrupted run's."""
    out = tmp_path / "run"
    died = interrupted("step:4", "kill", overrides(tiny_model, sample_tokens, out))
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"] and record(out)["status"] == "running"
    printed = cli_ok(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
    assert f"cont_training: resuming from {out / 'checkpoint-3'}" in printed
    for sub in ("checkpoint-3", "checkpoint-6", "."):
        assert_identical(weights(out / sub), weights(uninterrupted[2] / sub))
    assert record(out)["status"] == "complete"


def test_a_lora_run_killed_and_resumed_gives_the_weights_of_an_uninterrupted_one(tiny_model, sample_tokens, tmp_path):
    """peft=lora, SIGKILL at step 4 (after checkpoint-3), then cont_training=true: each checkpoint's adapter, the
    final adapter/ and the merged model are bit-identical to an uninterrupted LoRA run's; the record says what was
    trained."""
    pytest.importorskip("peft")
    runs = {name: tmp_path / name for name in ("whole", "resumed")}
    cli_ok(*overrides(tiny_model, sample_tokens, runs["whole"], "peft=lora"))
    died = interrupted("step:4", "kill", overrides(tiny_model, sample_tokens, runs["resumed"], "peft=lora"))
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    cli_ok(*overrides(tiny_model, sample_tokens, runs["resumed"], "peft=lora", "cont_training=true"))
    for sub in ("checkpoint-3", "checkpoint-6", "adapter"):
        a, b = (load_file(run / sub / "adapter_model.safetensors") for run in runs.values())
        assert a and all("lora_" in name for name in a)
        assert_identical(a, b)
    assert_identical(weights(runs["whole"]), weights(runs["resumed"]))
    assert record(runs["resumed"])["effective"]["trained"].startswith("LoRA r=16")


def test_a_resumed_run_keeps_every_validation_point_in_its_history_and_plot(tiny_model, sample_tokens, tmp_path):
    """Validated every epoch, killed at step 4 and resumed: the final trainer_state.json holds the validation point
    of epoch 1 (from before the kill) and of epoch 2, and every training step's loss once."""
    out = tmp_path / "run"
    args = overrides(tiny_model, sample_tokens, out, "training_args.eval_strategy=epoch")
    assert interrupted("step:4", "kill", args).returncode == -signal.SIGKILL
    cli_ok(*args, "cont_training=true")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [EPOCH, 2 * EPOCH]
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 2 * EPOCH + 1))
    assert (out / "training_curves.png").is_file()


def test_kill_9_during_checkpoint_rotation_never_discards_the_complete_checkpoint(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """save_total_limit=1: SIGKILL while the Trainer deletes checkpoint-3 (checkpoint-6 already complete, its run
    record written before its weights). The resume starts from checkpoint-6, not from step 0, and ends with the
    uninterrupted run's weights."""
    out = tmp_path / "run"
    args = overrides(tiny_model, sample_tokens, out, "training_args.save_total_limit=1", epochs=3)
    died = interrupted("rotation", "kill", args)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    assert checkpoint_is_complete(out / "checkpoint-6") and (out / "checkpoint-6" / RUN_RECORD).is_file()
    assert not checkpoint_is_complete(out / "checkpoint-3")  # cut short by the kill
    printed = cli_ok(*args, "cont_training=true")
    assert f"cont_training: resuming from {out / 'checkpoint-6'}" in printed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-9"]
    assert_identical(weights(out), weights(uninterrupted[3]))


def test_kill_9_during_the_final_save_is_never_reported_as_a_finished_run(uninterrupted, tiny_model, sample_tokens, tmp_path, capsys):
    """SIGKILL after the final weights are written but before trainer_state.json and the record: the record still
    says running, so evaluating the folder is refused; resuming rewrites the final files, all from one run."""
    out = tmp_path / "run"
    died = interrupted("final-save", "kill", overrides(tiny_model, sample_tokens, out))
    assert died.returncode == -signal.SIGKILL
    assert (out / "model.safetensors").is_file() and not (out / "trainer_state.json").exists()
    assert record(out)["status"] == "running"
    from slamkit.run_folder import check_run_finished

    with pytest.raises(SlamkitError, match=r"the run that writes this folder has not finished \(status running\)"):
        check_run_finished(out)
    cli_ok(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
    assert record(out)["status"] == "complete"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2 * EPOCH
    assert_identical(weights(out), weights(uninterrupted[2]))


def test_resume_from_a_damaged_optimizer_state_is_one_line(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """A truncated optimizer.pt, an overwritten rng_state.pth or a truncated model.safetensors in the newest
    checkpoint (each read by the Trainer only after the model loaded) is named, with what to do, before any weight
    is loaded; nothing changes."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    checkpoint = out / "checkpoint-6"
    damage = {
        "optimizer.pt": lambda data: data[:1000],
        "rng_state.pth": lambda data: data[:200] + bytes(len(data) - 200),
        "model.safetensors": lambda data: data[:-4096],
    }
    for name, damaged in damage.items():
        path = checkpoint / name
        whole = path.read_bytes()
        path.write_bytes(damaged(whole))
        before = snapshot(out)
        line = cli_fails(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
        assert line == (
            f"error: {path}: damaged (truncated or overwritten), cannot resume from checkpoint-6; delete "
            f"{checkpoint} to resume from the checkpoint before it, or start again with overwrite=true"
        ), name
        assert snapshot(out) == before
        path.write_bytes(whole)


def test_a_finished_run_makes_its_own_files_readable_and_leaves_the_users_alone(tmp_path):
    """transformers writes weights 0600; a finished run opens what it wrote to the umask's permissions, and only
    that: a private file of the user's in the same folder keeps its mode, a README.md of their own included (only
    the Trainer's model card, tagged generated_from_trainer, is a run's)."""
    from slamkit.run_folder import make_readable

    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "cards").mkdir()
    files = {name: run / name for name in ("model.safetensors", "checkpoint-2/model.safetensors", "notes.txt", "secret",
                                           "README.md", "checkpoint-2/README.md")}
    for path in files.values():
        path.write_text("---\ntags:\n- generated_from_trainer\n---\n" if path.parent.name == "checkpoint-2" else "mine")
        path.chmod(0o600)
    old = os.umask(0o022)
    try:
        make_readable(run, run_files=True)
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in files.items()}
    assert modes == {"model.safetensors": 0o644, "checkpoint-2/model.safetensors": 0o644, "notes.txt": 0o600,
                     "secret": 0o600, "README.md": 0o600, "checkpoint-2/README.md": 0o644}


def test_resume_from_a_checkpoint_without_optimizer_state_is_an_error(tiny_model, sample_tokens, tmp_path):
    """cont_training=true on a save_only_model=true checkpoint says so and what to set, and changes nothing."""
    out = tmp_path / "run"
    args = overrides(tiny_model, sample_tokens, out, "training_args.save_only_model=true", epochs=1)
    cli_ok(*args)
    before = snapshot(out)
    line = cli_fails(*args, "cont_training=true")
    assert line == (
        f"error: {out / 'checkpoint-3'}: no optimizer state to resume from (saved with save_only_model=true); "
        "train with training_args.save_only_model=false to be able to resume"
    )
    assert snapshot(out) == before


def test_same_seed_same_data_gives_identical_checkpoints(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """The same command twice: every checkpoint's and the final weights are bit-identical, and the run record
    beside each holds the seed."""
    again = tmp_path / "again"
    cli_ok(*overrides(tiny_model, sample_tokens, again))
    for sub in ("checkpoint-3", "checkpoint-6", "."):
        assert_identical(weights(again / sub), weights(uninterrupted[2] / sub))
        assert record(uninterrupted[2] / sub)["config"]["training_args"]["seed"] == 7


# ---------------------------------------------------------------- secrets, damaged records, rotation, resume log


@pytest.mark.parametrize("given", ["environment", "command line"])
def test_a_hub_token_is_never_written_to_disk(given, tiny_model, sample_tokens, tmp_path, monkeypatch):
    """training_args.hub_token, from ${oc.env:...} or typed on the command line, appears in no file under the finished
    run's folder (record, log, training_args.bin of the final folder and of the checkpoint: pickles searched byte
    for byte) nor in what the run printed; the records say <redacted> and the run succeeds."""
    token = f"hf_slamkitTestSecret{given.replace(' ', '')}0123456789"
    if given == "environment":
        monkeypatch.setenv("SLAMKIT_TEST_HUB_TOKEN", token)
        setting = "training_args.hub_token=${oc.env:SLAMKIT_TEST_HUB_TOKEN}"
    else:
        setting = f"training_args.hub_token={token}"
    out = tmp_path / "run"
    printed = cli_ok(*overrides(tiny_model, sample_tokens, out, setting, epochs=1))
    files = every_byte_string(tmp_path)  # the run folder, and anything else the run wrote beside it
    for name in ("slamkit_run.yaml", "train_sft.log", "training_args.bin", "checkpoint-3/training_args.bin",
                 "checkpoint-3/slamkit_run.yaml"):
        assert f"run/{name}" in files  # what is searched below includes what a secret would have leaked into
    assert [name for name, data in files.items() if token.encode() in data] == []
    assert token not in printed
    for folder in (out, out / "checkpoint-3"):
        assert record(folder)["config"]["training_args"]["hub_token"] == "<redacted>"
        assert "training_args.hub_token=<redacted>" in record(folder)["command_line"]
    assert record(out)["status"] == "complete"
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None


def test_a_damaged_run_record_refuses_cont_training_naming_it_and_changes_nothing(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """cont_training=true into a run folder whose slamkit_run.yaml cannot be read (it could not be checked against
    this run's settings) stops with one line naming that file; every file stays as it was."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    (out / RUN_RECORD).write_text("{{{")
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "cont_training=true"))
    assert line.startswith(f"error: {out / RUN_RECORD}: ")
    assert snapshot(out) == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_checkpoint_rotation_is_refused_where_it_would_delete_a_users_file(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """A results.json the user saved inside checkpoint-3/: resuming for a third epoch with save_total_limit=1 (which
    would delete checkpoint-3 and checkpoint-6 with it) is refused, naming checkpoint-3/results.json; every file
    stays as it was."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    (out / "checkpoint-3" / "results.json").write_text('{"accuracy": 0.5}\n')
    before = snapshot(out)
    line = cli_fails(*overrides(tiny_model, sample_tokens, out, "cont_training=true", "accept_changed_settings=true",
                                "training_args.save_total_limit=1", epochs=3))
    assert line.startswith(f"error: {out}: ") and "checkpoint-3/results.json" in line
    assert "save_total_limit" in line
    assert snapshot(out) == before


def test_a_resumed_run_says_it_resumes_from_its_checkpoint_not_that_it_warm_started(uninterrupted, tiny_model, sample_tokens, tmp_path):
    """cont_training=true (here a third epoch on a finished two-epoch run) logs that its weights come from
    checkpoint-6 and never "TWIST init: every weight warm-started", which the base model's weights no longer are."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted[2], out)
    printed = cli_ok(*overrides(tiny_model, sample_tokens, out, "cont_training=true", "accept_changed_settings=true",
                                epochs=3))
    resumed = [line for line in printed.splitlines() if f"resuming from {out / 'checkpoint-6'}" in line]
    assert any("weights" in line for line in resumed), printed[-3000:]
    assert "TWIST init" not in printed and "warm-started" not in printed
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3 * EPOCH
