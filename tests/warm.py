"""Real processes for the scripts the tests run, without paying torch's and transformers' imports in each.

A fresh ``python cli/train_sft.py`` spends 6-10 s of CPU importing torch and transformers before it does anything;
the suite starts a few dozen. Here one *warm* process per pytest worker imports them once and then, for each
script to run, forks: the child is a real process of its own (its own pid, exit code, signals, ``kill -9``,
locks, files), which runs the script as ``python SCRIPT ARGS`` would (``__name__ == "__main__"``, ``sys.argv``,
``sys.path[0]`` the script's folder, the interpreter's own exit), with only the imports already done. The warm
process runs no torch operation itself, so a child starts with no thread pool to inherit.

Only a run whose environment is the warm process's own is served this way (what torch and Hugging Face read at
import time would otherwise differ); any other, and every run when ``SLAMKIT_TEST_FRESH_PROCESSES=1``, is a fresh
``subprocess.Popen`` as before. ``python tests/warm.py FD`` is the warm process (requests on stdin, reports on FD).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PRELOAD = ("torch", "transformers", "transformers.trainer", "hydra", "omegaconf", "datasets", "slamkit.training",
           "slamkit.evaluation", "slamkit.sweep", "slamkit.arc")


# ---------------------------------------------------------------- the warm process


CHANNEL = -1  # in the warm process: the pipe to the test process (its stdout is the children's, not this)


def serve(channel: int) -> None:
    """Import PRELOAD, say ``ready``, then fork a child per request line until stdin closes; report every child's
    pid when it starts and its return code (``-N``: killed by signal N, as subprocess says) when it ends."""
    import importlib

    global CHANNEL
    CHANNEL = channel
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a fresh interpreter has (a nohup'd suite: ignored)
    report("ready")
    children, pending = set(), b""
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                report(f"exit {pid} {os.waitstatus_to_exitcode(status)}")
        readable, _, _ = select.select([0], [], [], 0.05)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the test process is gone: its children finish on their own
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_child(request)  # never returns: the interpreter exits with the script's code
            children.add(pid)
            report(f"pid {pid}")


def report(line: str) -> None:
    os.write(CHANNEL, (line + "\n").encode())


def run_child(request: dict) -> None:
    """In the forked child: become ``python SCRIPT ARGS`` in ``cwd`` with its output in the given files."""
    import runpy

    os.close(CHANNEL)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY), (2, request["stderr"], os.O_WRONLY)):
        target = os.open(path, flags)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()  # the same as the warm process's but for what changes while the tests run (RUNTIME_ONLY)
    os.environ.update(request["env"])
    script = os.path.abspath(request["argv"][0])
    sys.argv = [request["argv"][0], *request["argv"][1:]]
    sys.path[0] = os.path.dirname(script)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    raise SystemExit(code)


# ---------------------------------------------------------------- the test side


class WarmProcess:
    """The part of ``subprocess.Popen`` the tests use (text mode), for a child of the warm process."""

    def __init__(self, server: Server, pid: int, stdout: Path, stderr: Path, args: list[str]):
        self.server, self.pid, self.args = server, pid, args
        self._stdout, self._stderr = stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, timeout=timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (self._stdout.read_text(encoding="utf-8", errors="replace"),
                self._stderr.read_text(encoding="utf-8", errors="replace"))

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Server:
    """The warm process for one environment, started on first use."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.env = env
        read, write = os.pipe()
        self.process = subprocess.Popen([sys.executable, __file__, str(write)], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, pass_fds=(write,))
        os.close(write)
        self.channel = os.fdopen(read, "r", encoding="utf-8")
        self.lock, self.changed = threading.Lock(), threading.Condition()
        self.pids: list[int] = []
        self.exits: dict[int, int] = {}
        self.ready = False
        self.count = 0  # children started: their output files are named by it
        threading.Thread(target=self._listen, daemon=True).start()
        with self.changed:
            if not self.changed.wait_for(lambda: self.ready or self.process.poll() is not None, timeout=300) or not self.ready:
                raise RuntimeError("tests/warm.py: the warm process did not start")
        self.folder = Path(tempfile.mkdtemp(prefix="slamkit_warm_"))  # the children's output files
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def _listen(self) -> None:
        for line in self.channel:
            kind, *rest = line.split()
            with self.changed:
                if kind == "ready":
                    self.ready = True
                elif kind == "pid":
                    self.pids.append(int(rest[0]))
                elif kind == "exit":
                    self.exits[int(rest[0])] = int(rest[1])
                self.changed.notify_all()
        with self.changed:
            self.ready = False
            self.changed.notify_all()

    def start(self, argv: list[str], cwd: Path, env: dict[str, str]) -> WarmProcess:
        with self.lock:
            self.count += 1
            stdout, stderr = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
            stdout.touch()
            stderr.touch()
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            with self.changed:
                if not self.changed.wait_for(lambda: self.pids or not self.ready, timeout=60) or not self.pids:
                    raise RuntimeError("tests/warm.py: the warm process did not fork")
                pid = self.pids.pop(0)
        return WarmProcess(self, pid, stdout, stderr, argv)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self.changed:
            self.changed.wait_for(lambda: pid in self.exits or not self.ready, timeout=timeout)
            if pid not in self.exits and not self.ready:
                raise RuntimeError("tests/warm.py: the warm process ended while its child ran")
            return self.exits.get(pid)


_SERVERS: dict[tuple, Server] = {}
# Set while the tests run (by pytest for each test, by torch once), and read by nothing at import time.
RUNTIME_ONLY = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def _import_time_env(env: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if k not in RUNTIME_ONLY))


def popen(argv: list[str], cwd: Path, env: dict[str, str], warm_env: dict[str, str]) -> subprocess.Popen | WarmProcess:
    """``python ARGV`` in ``cwd`` with ``env``, output captured as text: a warm child when ``env`` is ``warm_env``
    (the one environment a warm process is kept for), else a fresh process."""
    key = _import_time_env(env)
    if key != _import_time_env(warm_env) or os.environ.get("SLAMKIT_TEST_FRESH_PROCESSES") == "1":
        return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    if key not in _SERVERS or _SERVERS[key].process.poll() is not None:
        _SERVERS[key] = Server(env, cwd)
    return _SERVERS[key].start(argv, cwd, env)


def run(argv: list[str], cwd: Path, env: dict[str, str], warm_env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """:func:`popen`, waited for, as ``subprocess.run(..., capture_output=True, text=True, timeout=...)``."""
    process = popen(argv, cwd, env, warm_env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess([sys.executable, *argv], process.returncode, stdout, stderr)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
