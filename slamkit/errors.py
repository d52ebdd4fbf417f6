"""User-facing errors: one clear line, naming the file and line or record, and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class SlamkitError(Exception):
    """Bad input or an impossible setting. The message is one line a user can act on."""


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` and turn a :class:`SlamkitError` into ``error: <message>`` and exit code 2.

    Anything else is a bug and keeps its traceback.
    """
    try:
        code = main()
    except SlamkitError as err:
        print_error(err)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code or 0)


def print_error(err: SlamkitError) -> None:
    """``error: <message>`` on stderr, on a line of its own."""
    from tqdm import tqdm

    if getattr(tqdm, "_instances", None):  # a progress bar left mid-line: the step stopped inside a loop
        sys.stderr.write("\n")
    sys.stderr.write(f"error: {err}\n")
