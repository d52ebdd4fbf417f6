"""JSON-lines input and output: errors name the file and line; outputs appear only when complete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from slamkit.errors import SlamkitError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    A missing file, a malformed line, a line that is not a JSON object and a file with no records are
    :class:`SlamkitError` naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise SlamkitError(f"{path}: no such file")
    seen = False
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                reason = err.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column 5"
                raise SlamkitError(f"{path}:{number}: malformed JSON ({reason} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise SlamkitError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            seen = True
            yield number, record
    if not seen:
        raise SlamkitError(f"{path}: empty file (no records)")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block finishes.

    An exception (or Ctrl-C) inside the block removes the temporary file, so a reader finds either the
    previous file or none, never a half-written one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise SlamkitError(f"{path}: cannot write output ({err.strerror})") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` as JSON lines to ``path`` atomically; return how many were written."""
    count = 0
    with atomic_output(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document to ``path`` atomically (indented, UTF-8)."""
    with atomic_output(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
