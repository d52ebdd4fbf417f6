"""User-facing errors: one clear line, naming the file and line or record, and a non-zero exit."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class SlamkitError(Exception):
    """Bad input or an impossible setting. The message is one line a user can act on."""

    exit_code = EXIT_BAD_INPUT


class Interrupted(SlamkitError):
    """The run was stopped by a signal (Ctrl-C's SIGINT, or SIGTERM from ``kill`` or a scheduler): exit 128 + N."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` and turn a :class:`SlamkitError` into ``error: <message>`` and exit code 2.

    Ctrl-C (SIGINT) and SIGTERM (``kill``, a scheduler's preemption) stop any step the same way: a KeyboardInterrupt
    raised where the step is, so that what it holds is let go and its outputs (written to temporary files first)
    never appear half-written; one line, exit code 130 or 143. Anything else is a bug and keeps its traceback.
    """

    def stop(number, frame):
        raise KeyboardInterrupt(signal.Signals(number).name)

    if signal.getsignal(signal.SIGINT) is _stop_while_starting:  # started: Ctrl-C is a KeyboardInterrupt again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_IGN:  # a process started with it ignored keeps ignoring it
        signal.signal(signal.SIGTERM, stop)
    try:
        code = main()
    except SlamkitError as err:
        print_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:  # a step with nothing to record: one line, not a traceback
        name = str(err) if str(err) in ("SIGINT", "SIGTERM") else "SIGINT"
        print_error(SlamkitError(f"interrupted ({name}); nothing was written"))
        sys.exit(128 + getattr(signal, name))
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code or 0)


def one_line_on_ctrl_c() -> None:
    """Ctrl-C or SIGTERM before :func:`run_main` is reached, while a script still imports torch and transformers
    (seconds): one line and exit status 130 or 143, instead of a traceback through the import machinery (or, when the
    interrupt lands inside torch's C++ start-up, an abort). Nothing has been written yet, so the process ends at once.
    ``run_main`` puts its own handlers in place. Scripts call this first, when run as ``__main__``; a process that
    was started with SIGINT ignored (a background job) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_while_starting)
    signal.signal(signal.SIGTERM, _stop_while_starting)


def _stop_while_starting(number, frame) -> None:
    sys.stderr.write(f"error: interrupted ({signal.Signals(number).name}) while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + number)


def first_line(err: BaseException) -> str:
    """The first line of ``err`` (with the next when it ends in ':', a heading such as "Class validation error:"),
    else its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def one_line(err: BaseException) -> str:
    """What went wrong, in one line: a slamkit error's message; anything else as ``Type: first line``."""
    return first_line(err) if isinstance(err, SlamkitError) or not str(err).strip() else f"{type(err).__name__}: {first_line(err)}"


def print_error(err: SlamkitError) -> None:
    """``error: <message>`` on stderr, on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # the step stopped inside a loop: end its bar's line now,
        bar.close()  # or the bar would redraw itself after this line when the process exits
    sys.stderr.write(f"error: {err}\n")
