"""User-facing errors: one clear line, naming the file and line or record, and a non-zero exit."""

from __future__ import annotations

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

    Ctrl-C is one line and exit code 130 (every output is written to a temporary file first, so nothing half-written
    is left). Anything else is a bug and keeps its traceback.
    """
    import signal

    try:
        code = main()
    except SlamkitError as err:
        print_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C in a step with nothing to record: one line, not a traceback
        print_error(SlamkitError("interrupted (SIGINT); nothing was written"))
        sys.exit(128 + signal.SIGINT)
    sys.exit(code or 0)


def one_line(err: BaseException) -> str:
    """What went wrong, in one line: a slamkit error's message; anything else as ``Type: first line``."""
    text = str(err).splitlines()[0] if str(err) else ""
    return text if isinstance(err, SlamkitError) else f"{type(err).__name__}: {text}".rstrip(": ")


def print_error(err: SlamkitError) -> None:
    """``error: <message>`` on stderr, on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # the step stopped inside a loop: end its bar's line now,
        bar.close()  # or the bar would redraw itself after this line when the process exits
    sys.stderr.write(f"error: {err}\n")
