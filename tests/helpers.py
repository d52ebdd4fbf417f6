"""Shared test helpers: tiny Qwen3 models built in-process, the bundled tokenizer, running scripts, a small
filesystem of its own."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # present on the project's machines and CI, absent in a user's clone
SAMPLE = REPO / "example_arc" / "sample"
SAMPLE_TOKENIZER = SAMPLE / "qwen_tokenizer"


def build_tiny_qwen3(folder: Path, seed: int = 0, **config) -> Path:
    """A random tiny Qwen3 (the library's "tiny" shape: real vocabulary, 1,024-token context unless ``config``
    says otherwise) with the bundled Qwen tokenizer, saved to ``folder``."""
    from slamkit.model import qwen3_config, save_random_model

    return save_random_model(folder, qwen3_config("tiny", **config), tokenizer_dir=SAMPLE_TOKENIZER, seed=seed)


OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "PYTHONIOENCODING": "utf-8",
}


def script_env(**extra: str) -> dict[str, str]:
    """The environment of the scripts the tests run: offline, tests/ importable (tests/interrupt.py imports
    helpers), and ``extra``. Without ``extra`` it is the environment tests/warm.py keeps a warm process for."""
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests"), **extra}


def start_script(script: str, *args, env: dict | None = None):
    """``python <script> args`` from the repository root, running: a ``subprocess.Popen`` (text output captured),
    or its tests/warm.py equivalent when ``env`` adds nothing (the process is as real, without seconds of imports)."""
    import warm

    return warm.popen([str(REPO / script), *map(str, args)], REPO, script_env(**(env or {})), script_env())


def run_script(script: str, *args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repository root, offline, to its end; capture text output."""
    import warm

    return warm.run([str(REPO / script), *map(str, args)], REPO, script_env(**(env or {})), script_env(), timeout)


_SCRIPTS: dict[str, ModuleType] = {}


def load_script(script: str) -> ModuleType:
    """Import a standalone script (not a package module) by path, once, to call its ``main(argv)`` in-process."""
    if script not in _SCRIPTS:
        path = REPO / script
        spec = importlib.util.spec_from_file_location("script_" + path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up by name
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


def sft_config(base: Path, train: Path, out: Path, val: Path | None = None, *, speed=None, cont_training: bool = False,
               overwrite: bool = False, accept_changed_settings: bool = False, save_dtype: str | None = None,
               **training_args):
    """An SFTConfig for a CPU float32 test run of ``base`` (its own tokenizer) on ``train`` into ``out``:
    ``training_args`` on top of bf16=false, report_to=none, no tqdm (everything else transformers' defaults)."""
    from slamkit.config import DataSettings, ModelSettings, SFTConfig, SpeedSettings

    return SFTConfig(
        model=ModelSettings(base_model_name=str(base), tokenizer_name=str(base), save_dtype=save_dtype),
        data=DataSettings(train_path=str(train), val_path=str(val) if val else None),
        training_args={"output_dir": str(out), "bf16": False, "report_to": "none", "disable_tqdm": True, **training_args},
        speed=speed or SpeedSettings(),
        cont_training=cont_training, overwrite=overwrite, accept_changed_settings=accept_changed_settings,
    )


def run_cli(*args: str) -> tuple[int, str, str]:
    """cli/train_sft.py with ``args`` in this process, as its __main__ runs it (no seconds of imports):
    ``(exit code, stdout, stderr)``. The logging set-up Hydra installs for the run is undone afterwards."""
    import contextlib
    import io
    import logging

    from slamkit.errors import run_main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = sys.argv, os.environ.get("HYDRA_FULL_ERROR"), root.handlers[:], root.level
    sys.argv, os.environ["HYDRA_FULL_ERROR"] = ["cli/train_sft.py", *args], "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_main(load_script("cli/train_sft.py").cli)
    except SystemExit as stop:
        return stop.code, out.getvalue(), err.getvalue()
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        root.handlers[:] = saved[2]
        root.setLevel(saved[3])
    raise AssertionError("run_main always exits")


def in_small_tmpfs(size: str, script: str, options: str = "") -> subprocess.CompletedProcess:
    """Run ``script`` (bash) with a fresh tmpfs of ``size`` mounted at $FS (more mount ``options``: ",ro"), in a
    private mount namespace ($ERR: a file outside it for stderr); a script that cannot mount what it needs exits 99,
    and the test is skipped."""
    import pytest

    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here (unshare -rm) to mount a small filesystem")
    full = f'set -u; FS=$(mktemp -d); ERR=$(mktemp); mount -t tmpfs -o size={size}{options} tmpfs "$FS" || exit 99; cd {REPO}; {script}'
    done = subprocess.run(["unshare", "-rm", "bash", "-c", full], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"})
    if done.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    return done


def hub_unreachable_env(cache: Path) -> dict[str, str]:
    """The environment of a user who set none of the offline switches (HF_HUB_OFFLINE, ...) and whose Hugging Face
    cache (under ``cache``) is empty, for a test of what happens without network; the test is skipped where the
    hub answers."""
    import socket

    import pytest

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        pass
    else:
        pytest.skip("the Hugging Face hub is reachable from here: this checks a machine without network")
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV and not k.startswith("HF_")}
    return {**env, "HF_HOME": str(cache), "PYTHONIOENCODING": "utf-8", "TOKENIZERS_PARALLELISM": "false"}


def every_byte_string(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (by its relative path) as bytes, and each member of a zip archive (torch.save's
    training_args.bin, an optimizer state) decompressed as ``path!member``: where a secret pickled inside is found,
    whatever the archive's compression."""
    import zipfile

    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        found[str(path.relative_to(folder))] = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    found[f"{path.relative_to(folder)}!{member}"] = archive.read(member)
    return found
