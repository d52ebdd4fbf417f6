"""The run folder is the record: one run per folder, complete checkpoints recognisable, and the final weights,
``trainer_state.json`` and the run record (``slamkit_run.yaml``) always from the same run.

- A lock (``.slamkit.lock``, ``flock``) is held for the whole run: a second run into the folder fails at once,
  naming the process that holds it. The kernel drops the lock of a killed process, so it never blocks for ever.
- A folder that holds another run is refused unless the new run resumes it (``cont_training``, with the
  settings that matter compared) or replaces it (``overwrite``); a folder with anything else in it is refused.
- A checkpoint is complete when its ``trainer_state.json`` parses and names its step: the Trainer writes that
  file after the weights and optimizer state and before it deletes older checkpoints, so a folder cut short at
  any point is recognised, and a complete one is never mistaken for a partial one.
- The record in the output folder says ``status: running`` from the start until the final weights and
  ``trainer_state.json`` are written, then ``complete``; ``failed`` (with the error) if the run stopped on an
  error; a ``running`` record whose lock is free belongs to a run that was killed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError, safe_open

from slamkit.errors import Interrupted, SlamkitError, first_line
from slamkit.jsonl import atomic_output, readable_mode

log = logging.getLogger(__name__)

RUN_RECORD = "slamkit_run.yaml"  # the run record, beside the weights of every checkpoint and of the output folder
LOCK_FILE = ".slamkit.lock"
# What a run writes into its folder (the Trainer, the tokenizer, slamkit, the loggers): all overwrite=true may move.
RUN_FILES = re.compile(
    r"checkpoint-\d+|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|pytorch_model\.bin|config\.json|"
    r"generation_config\.json|tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|"
    r"merges\.txt|chat_template\.jinja|training_args\.bin|trainer_state\.json|all_results\.json|train_results\.json|"
    r"eval_results\.json|slamkit_run\.yaml|train_sft\.log|training_curves\.png|runs|wandb|README\.md|adapter"
)
# ... and what the Trainer adds inside a checkpoint-N/ (optimizer, schedule, RNG, sharded FSDP state, adapters)
CHECKPOINT_FILES = re.compile(
    RUN_FILES.pattern + r"|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|(optimizer|pytorch_model_fsdp)_\d+|"
    r"pytorch_model_fsdp(_\d+)?\.bin|adapter_(model\.safetensors|config\.json)"
)
MODEL_CARD_TAG = "generated_from_trainer"  # in the README.md the Trainer writes (push_to_hub): the model card
LOG_FILE = "train_sft.log"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
RESUME_STATE = ("optimizer.pt", "scheduler.pt")  # what resuming needs beside the weights (torch.save zip files)

# Settings that must match to resume a run (dotted paths in the record); others (logging, saving, eval) may change.
RESUME_KEYS = (
    "config.model.base_model_name", "config.model.tokenizer_name", "config.model.twist_init", "config.model.dtype",
    "config.model.vocab_size", "config.data.train_path", "config.data.val_path", "config.data.max_train_examples",
    "config.data.max_val_examples", "data.train.sha256", "data.validation.sha256",
    "config.training_args.seed", "config.training_args.learning_rate", "config.training_args.lr_scheduler_type",
    "config.training_args.warmup_steps", "config.training_args.weight_decay", "config.training_args.num_train_epochs",
    "config.training_args.max_steps", "config.training_args.optim", "config.training_args.max_grad_norm",
    "config.training_args.label_smoothing_factor", "config.training_args.adam_beta1", "config.training_args.adam_beta2",
    "config.training_args.adam_epsilon", "config.training_args.optim_args", "config.training_args.lr_scheduler_kwargs",
    "config.training_args.data_seed", "config.training_args.train_sampling_strategy", "effective.bf16",
    "effective.global_batch", "config.peft",
)
# The data paths as written may differ (relative or absolute, another spelling) while the files are the same ones:
# for those the contents decide (data.*.sha256).
SAME_FILES = {"config.data.train_path": "data.train.sha256", "config.data.val_path": "data.validation.sha256"}


def read_record(folder: Path) -> dict[str, Any] | None:
    """The run record of ``folder``, or None when it has none (or an unreadable one)."""
    try:
        record = yaml.safe_load((folder / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    with atomic_output(folder / RUN_RECORD) as handle:
        yaml.safe_dump(record, handle, sort_keys=False)


def files_sha256(paths: Sequence[Path]) -> str:
    """One digest over the bytes of ``paths``, in order (the data a run trained on)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _weights_present(folder: Path) -> bool:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all((folder / shard).is_file() for shard in shards)
    return any((folder / name).is_file() for name in WEIGHTS)


def is_run_file(path: Path) -> bool:
    """True for what a run writes into its folder (:data:`RUN_FILES`). A ``README.md`` counts only when it is the
    Trainer's model card (tagged ``generated_from_trainer``): notes of the user's own in that name are theirs."""
    if not RUN_FILES.fullmatch(path.name):
        return False
    if path.name != "README.md":
        return True
    try:
        return path.is_file() and MODEL_CARD_TAG in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def foreign_files(entries: Sequence[Path]) -> list[Path]:
    """What no run wrote among a run folder's ``entries``, inside its checkpoints too (an evaluation saved into a
    checkpoint-N/): what overwrite and checkpoint rotation must never move or delete."""
    found = [p for p in entries if not is_run_file(p)]
    for checkpoint in (p for p in entries if checkpoint_step(p) is not None and p.is_dir() and not p.is_symlink()):
        found += [p for p in checkpoint.iterdir() if not CHECKPOINT_FILES.fullmatch(p.name)]
    return found


def checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_NAME.fullmatch(folder.name)
    return int(match[1]) if match else None


def checkpoint_is_complete(folder: Path) -> bool:
    """True when ``folder`` is a ``checkpoint-N`` whose trainer_state.json (written last) parses and says step N."""
    step = checkpoint_step(folder)
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return step is not None and isinstance(state, dict) and state.get("global_step") == step and _weights_present(folder)


def _is_whole(path: Path) -> bool:
    """A safetensors file holds every byte its header lists (safetensors checks it on opening); torch.save's zip
    archive has its central directory, and in a small one (RNG and scheduler states) every entry's checksum holds
    (the optimizer state's gigabytes are not read twice)."""
    try:
        if path.suffix == ".safetensors":
            safe_open(path, "np")
            return True
        with zipfile.ZipFile(path) as archive:
            return path.stat().st_size > 64 * 2**20 or archive.testzip() is None
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, SafetensorError):
        return False


def checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def newest_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in checkpoints(output_dir) if checkpoint_is_complete(p)]
    return complete[-1] if complete else None


def check_run_finished(folder: Path) -> None:
    """Refuse to evaluate weights that a run had not finished writing: a ``checkpoint-N`` cut short, or an output
    folder whose record does not say ``complete``. Folders that are not slamkit runs pass."""
    if not folder.is_dir():
        return
    record = read_record(folder)
    if checkpoint_step(folder) is not None and record is not None:
        if not checkpoint_is_complete(folder):
            raise SlamkitError(
                f"{folder}: an incomplete checkpoint (the run stopped while saving it); evaluate an earlier checkpoint"
            )
        return
    status = record.get("status") if record else None
    if status not in (None, "complete"):
        error = f": {record['error']}" if record.get("error") else ""
        raise SlamkitError(
            f"{folder}: the run that writes this folder has not finished (status {status}{error}); "
            "its final weights may be missing or partial: evaluate one of its checkpoint-N folders"
        )


def make_readable(root: Path, run_files: bool = False) -> None:
    """Give what a run wrote the permissions the umask allows (transformers 5.24 writes model.safetensors as 0600
    whatever the umask, so teammates could not read the weights).

    Without ``run_files``, ``root`` and everything under it (a folder slamkit made: a checkpoint, a staged model).
    With ``run_files``, only the entries of ``root`` that a run writes (:func:`is_run_file`), and what is under them:
    a run folder may also hold the user's own files, whose permissions are theirs to choose."""
    if not run_files:
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    else:
        paths = []
        for entry in root.iterdir():
            if is_run_file(entry) and not entry.is_symlink():
                paths += [entry, *entry.rglob("*")] if entry.is_dir() else [entry]
    for path in paths:
        if path.is_symlink():
            continue
        with contextlib.suppress(OSError):  # a file we do not own: leave it as it is
            os.chmod(path, readable_mode(directory=path.is_dir()))


def _get(record: dict[str, Any] | None, dotted: str) -> Any:
    node: Any = record
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting of :data:`RESUME_KEYS` that differs between two run records."""
    changes = []
    for key in RESUME_KEYS:
        before, after = _get(old, key), _get(new, key)
        if key in SAME_FILES and _get(old, SAME_FILES[key]) == _get(new, SAME_FILES[key]) is not None:
            continue
        if before != after:
            shown = key.removeprefix("config.")
            if key.endswith("sha256"):
                changes.append(f"{shown.removesuffix('.sha256')} file contents")
            else:
                changes.append(f"{shown}: {before!r} -> {after!r}")
    return changes


def _describe(entries: list[Path]) -> str:
    """What a folder holds, the run's landmarks first: ``checkpoint-3/, checkpoint-6/, model.safetensors, ...``."""
    landmarks = [*WEIGHTS, RUN_RECORD, TRAINER_STATE]

    def order(path: Path) -> tuple:
        step = checkpoint_step(path)
        if step is not None:
            return (0, step, "")
        return (1, landmarks.index(path.name), "") if path.name in landmarks else (2, 0, path.name)

    names = [(f"{p.parent.name}/" if checkpoint_step(p.parent) is not None else "") + p.name + ("/" if p.is_dir() else "")
             for p in sorted(entries, key=order)]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class RunFolder:
    """``training_args.output_dir`` held by one run (the main process only).

    Use as a context manager around the whole run (entering takes the lock): :meth:`claim` refuses a folder the
    run may not use, before anything is loaded; :meth:`resume_point` picks and checks the checkpoint to resume
    from, before the weights are loaded; :meth:`start` replaces an old run (``overwrite``) and marks the folder
    running once the weights are loaded; :meth:`finish` marks it complete. A run that fails before
    :meth:`start` leaves the folder as it found it (the folders it created are removed again).

    A sweep's folder and an evaluation's ``--output_dir`` are held with the same lock (:meth:`hold`,
    :meth:`leave_as_found`); ``key`` and ``holder`` are what the messages call the folder's setting and its user.
    """

    def __init__(self, path: Path, key: str = "training_args.output_dir", holder: str = "run"):
        self.path = path
        self.key, self.holder = key, holder  # what the messages call the folder's setting, and who holds it
        self.created: Path | None = None
        self.started = False
        self._lock: int | None = None
        self._lock_existed = False
        self._replace = False  # overwrite=true: the old run is moved aside, whole, when this run starts
        self.replaced: Path | None = None  # ... to this sibling folder, which nothing ever deletes
        self._stale: list[Path] = []  # incomplete checkpoints a resumed run deletes when it starts
        self._handler: logging.Handler | None = None
        self._levels: dict[str, int] = {}
        self.previous: dict[str, Any] | None = None  # the record of the run found in the folder

    # ---------------------------------------------------------------- lock

    def __enter__(self) -> RunFolder:
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        self.created = missing[-1] if missing else None  # the outermost folder this run creates
        self._lock = self._acquire()
        return self

    def _acquire(self) -> int:
        """Make the folder if need be and lock it (``flock`` on its lock file, never following a symlink)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_existed = (self.path / LOCK_FILE).exists() or (self.path / LOCK_FILE).is_symlink()
            # O_NOFOLLOW: a lock file that is a symlink must not make the run truncate the file it points to
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, readable_mode(directory=False))
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise SlamkitError(
                    f"{self.path / LOCK_FILE}: is a symbolic link, not slamkit's lock file; remove it (nothing else "
                    "was touched)"
                ) from None
            raise SlamkitError(f"{self.path}: cannot use as {self.key} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            kind, _, holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip().rpartition(": pid ")
            os.close(fd)
            raise SlamkitError(
                f"{self.path}: in use by another {kind or self.holder} ({'pid ' + holder if holder else 'a process'}); "
                f"wait for it to finish or choose another {self.key}"
            ) from None
        try:
            replaced = os.fstat(fd).st_ino != os.stat(self.path / LOCK_FILE).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:  # the run that held it removed the lock file meanwhile (it never started): the folder moved on
            os.close(fd)
            raise SlamkitError(f"{self.path}: in use by another {self.holder} (it just started); choose another {self.key}")
        return fd

    def hold(self) -> None:
        """Say in the lock file who holds the folder (what a second run's error names)."""
        holder = f"{self.holder}: pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            os.ftruncate(self._lock, 0)
            os.pwrite(self._lock, holder.encode() + b"\n", 0)
        except OSError as err:  # a full disk: the lock holds all the same, only its note is missing
            raise SlamkitError(f"{self.path / LOCK_FILE}: {err.strerror.lower()} while writing; nothing else was "
                               "changed") from None

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is not None and self.started:
                self._mark_failed(error)
            if error is not None and self.replaced is not None:
                log.warning("overwrite=true: this run did not finish; the run it replaced is kept whole in %s",
                            self.replaced)
            if error is not None and not self.started:
                self.leave_as_found()
        finally:
            self._detach_log()
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None

    def leave_as_found(self) -> None:
        """A run that never started: remove the lock file it created, and the folders it created (when empty)."""
        if not self._lock_existed:
            with contextlib.suppress(OSError):
                os.unlink(self.path / LOCK_FILE)
        if self.created is not None:
            for folder in [self.path, *self.path.parents]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
                if folder == self.created:
                    break

    # ---------------------------------------------------------------- decide

    def claim(self, cont_training: bool, overwrite: bool, inputs: Sequence[str | Path] = (), rotates: bool = False) -> None:
        """Decide, from what the folder holds, whether this run may use it; before anything is loaded.

        A folder that is, holds or lies inside one of the run's ``inputs`` (the base model, the tokenizer, the data:
        those that are local paths) is refused. An empty folder is this run's. A folder holding another run (its run
        record, or checkpoints with one) needs ``cont_training`` (resume it) or ``overwrite`` (replace it when this
        run starts); a folder holding anything else, a model folder included, is refused.
        """
        here = self.path.resolve()
        for source in map(Path, inputs):
            if source.exists() and (here == source.resolve() or here in source.resolve().parents
                                    or source.resolve() in here.parents):
                raise SlamkitError(
                    f"{self.path}: {self.key} is, holds or lies inside the run's input {source}; a run writes "
                    f"(and overwrite=true replaces) what is in its folder: choose a folder apart from its inputs"
                )
        entries = [p for p in self.path.iterdir() if p.name != LOCK_FILE]
        if not entries:
            self.hold()
            return
        self.previous = read_record(self.path)
        if self.previous is None and (self.path / RUN_RECORD).exists() and not overwrite:
            raise SlamkitError(
                f"{self.path / RUN_RECORD}: cannot be read (damaged), so this run cannot be checked against the run "
                "in the folder; replace it with overwrite=true or train into another training_args.output_dir"
            )
        is_run = self.previous is not None or (self.path / RUN_RECORD).exists() or any(
            checkpoint_step(p) is not None and (p / RUN_RECORD).is_file() for p in entries
        )
        if not is_run:
            raise SlamkitError(
                f"{self.path}: not empty and not a slamkit run folder ({_describe(entries)}); "
                "choose a new or empty training_args.output_dir"
            )
        if not (overwrite or cont_training):
            status = self.previous.get("status") if self.previous else None
            status = {None: "", "running": "; it stopped before finishing"}.get(status, f"; status {status}")
            raise SlamkitError(
                f"{self.path}: already holds a run ({_describe(entries)}{status}); resume it with "
                "cont_training=true, write to another training_args.output_dir, or replace it with overwrite=true"
            )
        foreign = foreign_files(entries) if overwrite or rotates else []
        if overwrite and foreign:
            raise SlamkitError(
                f"{self.path}: overwrite=true, but the folder also holds what no run writes ({_describe(foreign)}); "
                "move those elsewhere first (overwrite replaces a run, never other files)"
            )
        if foreign and [p for p in foreign if p.parent != self.path]:
            raise SlamkitError(
                f"{self.path}: its checkpoints also hold what no run writes ({_describe(foreign)}), which "
                "training_args.save_total_limit would delete with them; move those elsewhere first"
            )
        if overwrite:
            self._replace = True
            log.info("overwrite=true: the run in %s (%s) is moved, whole, to a sibling folder when this run starts "
                     "(and kept there: delete it when you no longer need it)", self.path, _describe(entries))
        elif cont_training and newest_complete_checkpoint(self.path) is None and (self.previous or {}).get("status") == "complete":
            raise SlamkitError(
                f"{self.path}: cont_training=true, but its run finished and left no checkpoint to resume from; "
                "train into another training_args.output_dir, or replace it with overwrite=true"
            )
        self.hold()

    def resume_point(self, record: dict[str, Any], cont_training: bool, accept_changed_settings: bool) -> Path | None:
        """The checkpoint to resume from (None: start from the beginning); still before the weights are loaded.

        A resume whose settings that matter differ from the folder's record is refused unless
        ``accept_changed_settings``, and so is a checkpoint whose optimizer state is missing or damaged.
        """
        if not cont_training:
            return None
        if self.previous is not None and "config" in self.previous and not accept_changed_settings:
            changes = changed_settings(self.previous, record)
            if changes:
                raise SlamkitError(
                    f"{self.path}: cont_training=true, but this run's settings differ from the run in the folder "
                    f"({'; '.join(changes)}); resume with the same settings, or set accept_changed_settings=true"
                )
        resume = newest_complete_checkpoint(self.path)
        newer = [p for p in checkpoints(self.path) if resume is None or checkpoint_step(p) > checkpoint_step(resume)]
        self._stale = [p for p in newer if not checkpoint_is_complete(p)]
        kept = [p for p in foreign_files(self._stale) if p.parent in self._stale]
        if kept:  # the incomplete checkpoints go when the run starts: never with a file the run did not write
            raise SlamkitError(f"{self.path}: cont_training=true deletes the incomplete checkpoints, which also hold "
                               f"what no run writes ({_describe(kept)}); move those elsewhere first")
        if resume is None:
            log.info("cont_training: no complete checkpoint in %s yet, starting from the beginning", self.path)
            return None
        if any(not (resume / name).is_file() for name in RESUME_STATE):
            raise SlamkitError(
                f"{resume}: no optimizer state to resume from (saved with save_only_model=true); "
                "train with training_args.save_only_model=false to be able to resume"
            )
        # What the Trainer reads back: the optimizer and scheduler state, the RNG states (torch.save zip archives)
        # and the weights. A damaged one would be a traceback from deep inside the Trainer, after the model loaded.
        archives = [resume / name for name in RESUME_STATE] + sorted(resume.glob("rng_state*.pth"))
        weights = sorted(resume.glob("model*.safetensors"))
        for path in archives + weights:
            if not _is_whole(path):
                raise SlamkitError(
                    f"{path}: damaged (truncated or overwritten), cannot resume from {resume.name}; "
                    f"delete {resume} to resume from the checkpoint before it, or start again with overwrite=true"
                )
        log.info("cont_training: resuming from %s", resume)
        return resume

    # ---------------------------------------------------------------- run

    def start(self, record: dict[str, Any], header: Sequence[str] = ()) -> None:
        """The run really starts (weights loaded): replace the old run if asked, mark the folder running, and log
        to ``train_sft.log`` from here on, starting with ``header`` (the lines the run printed before)."""
        if self._replace:
            self._move_aside()
        for path in self._stale:
            log.warning("cont_training: deleting %s: incomplete (the run stopped while saving it)", path)
            shutil.rmtree(path)
        try:
            write_record(self.path, {**record, "status": "running"})
        except SlamkitError as err:  # e.g. a full disk: say where the old run is now
            if self.replaced is None:
                raise
            raise SlamkitError(f"{str(err).removesuffix('; nothing was changed')}; the run this one was to replace is "
                               f"kept whole in {self.replaced}") from None
        self.started = True
        self._attach_log()
        for line in header:  # into the file only: the console has shown them already
            entry = {"name": "slamkit", "levelno": logging.INFO, "levelname": "INFO", "msg": line}
            self._handler.handle(logging.makeLogRecord(entry))

    def finish(self, record: dict[str, Any]) -> None:
        """The final weights and trainer_state.json are written: the record says so, last."""
        make_readable(self.path, run_files=True)
        write_record(self.path, {**record, "status": "complete", "finished": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _move_aside(self) -> None:
        """overwrite=true, as this run starts: the old run becomes the sibling ``<folder>.replaced-<time>``, whole, in
        one rename (a kill at any moment leaves it in one place or the other), and is never deleted; this run then
        locks a new, empty folder of the old name."""
        stamp = f"{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        aside = next(p for n in range(1, 1000) if not (p := self.path.with_name(stamp + f"-{n}" * (n > 1))).exists())
        os.rename(self.path, aside)
        self.replaced, old_lock, self._lock = aside, self._lock, None
        try:
            self._lock = self._acquire()
        except SlamkitError as err:  # another run took the new folder meanwhile: it is theirs, leave it alone
            self._lock_existed, self.created = True, None
            raise SlamkitError(f"{err}; the run it held before is kept whole in {aside}") from None
        finally:
            os.close(old_lock)
        os.unlink(aside / LOCK_FILE)  # the lock this run held there (the folder is the old run's only now)
        self.hold()
        log.warning("overwrite=true: the run that was in %s is now %s (kept whole: delete it when you no longer need "
                    "it)", self.path, aside)

    def _mark_failed(self, error: BaseException) -> None:
        record = read_record(self.path) or {}
        reason = first_line(error)
        status = "interrupted" if isinstance(error, Interrupted) else "failed"
        with contextlib.suppress(OSError, SlamkitError):  # e.g. the disk is full: the record stays "running"
            write_record(self.path, {**record, "status": status, "error": reason})

    def _attach_log(self) -> None:
        """Everything slamkit logs during the run, the metrics included, also goes to ``train_sft.log``."""
        handler = logging.FileHandler(self.path / LOG_FILE, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        for name in ("slamkit", METRICS_LOGGER):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        self._handler = handler

    def _detach_log(self) -> None:
        if self._handler is not None:
            for name in ("slamkit", METRICS_LOGGER):
                logging.getLogger(name).removeHandler(self._handler)
                logging.getLogger(name).setLevel(self._levels.pop(name))
            self._handler.close()
            self._handler = None


METRICS_LOGGER = "slamkit.metrics"  # the Trainer's logged metrics: written to train_sft.log, not to the console
logging.getLogger(METRICS_LOGGER).propagate = False  # the console already shows them (the Trainer prints them)
