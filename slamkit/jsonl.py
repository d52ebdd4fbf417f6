"""JSON-lines input and output: errors name the file and line; outputs appear only when complete, as a set.

Reading refuses what is not UTF-8 JSON lines (gzip, UTF-16, stray non-UTF-8 bytes, unpaired surrogates) with
one line naming the file and line. Writing goes to temporary files beside the targets; they are renamed into
place only when every file of the set is complete, so a reader finds the old set or the new one, never a mix,
and a full disk or a read-only folder is one line saying that nothing was changed.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from slamkit.errors import SlamkitError

# Write errors that are the disk's or the folder's, not a bug: reported in one line, nothing changed.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of ``path`` (1-based line numbers).

    A missing file, a file that is not UTF-8 text, a malformed line, a line that is not a JSON object, text
    that is not valid Unicode and a file with no records are :class:`SlamkitError` naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise SlamkitError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    seen = False
    with path.open("rb") as handle:
        head = handle.read(4)
        if head[:2] == b"\x1f\x8b":
            raise SlamkitError(f"{path}: gzip-compressed; decompress it first (gunzip)")
        if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise SlamkitError(f"{path}: UTF-16 text; save it as UTF-8")
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if b"\x00" in raw:
                raise SlamkitError(f"{path}:{number}: NUL bytes (UTF-16 text or a binary file); save it as UTF-8 JSON lines")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SlamkitError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                reason = err.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column 5"
                raise SlamkitError(f"{path}:{number}: malformed JSON ({reason} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise SlamkitError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            if b"\\u" in raw:  # only an escape can make a lone surrogate, which no file or tokenizer can hold
                try:
                    json.dumps(record, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError as err:
                    raise SlamkitError(
                        f"{path}:{number}: text holds an unpaired surrogate {err.object[err.start:err.end]!r} "
                        "(an escape like \\ud800 that is not valid Unicode)"
                    ) from None
            seen = True
            yield number, record
    if not seen:
        raise SlamkitError(f"{path}: empty file (no records)")


def refuse_input_as_output(output: str | Path, inputs: Iterable[str | Path], flag: str) -> None:
    """An output that is one of the files being read (the same file under any name) would replace the data it was
    made from: refused, naming the flag to change."""
    output = Path(output)
    for source in inputs:
        source = Path(source)
        same = output.exists() and source.exists() and os.path.samefile(output, source)
        if same or output.resolve() == source.resolve():
            raise SlamkitError(f"{output}: {flag} would write over the input file {source}; write the output elsewhere")


def readable_mode(directory: bool) -> int:
    """The permissions a new file (or folder) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def disk_error(path: Path, err: OSError) -> SlamkitError:
    what = (err.strerror or str(err)).lower()
    return SlamkitError(f"{path}: {what} while writing; nothing was changed")


class OutputSet:
    """Files written as one set: see :func:`output_set`."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Path]] = []  # (temporary name, target), in the order they were finished

    @contextlib.contextmanager
    def open(self, path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
        """A temporary file beside ``path``; it becomes ``path`` when the whole set is complete."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise SlamkitError(f"{path}: cannot write output ({err.strerror})") from None
        self.pending.append((tmp_name, path))
        try:
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
        except OSError as err:
            if err.errno in DISK_ERRORS:
                raise disk_error(path, err) from None
            raise

    def discard(self) -> None:
        for tmp_name, _ in self.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def commit(self) -> None:
        mode = readable_mode(directory=False)
        for tmp_name, path in self.pending:
            os.chmod(tmp_name, mode)  # mkstemp makes 0600; outputs get the usual permissions
        for tmp_name, path in self.pending:
            os.replace(tmp_name, path)


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Write several files as one set::

        with output_set() as outputs:
            with outputs.open(a) as handle: ...
            with outputs.open(b, "wb") as handle: ...

    Every file is written to a temporary file beside its target; only when the block finishes are they all
    renamed into place. An exception (or Ctrl-C) anywhere in the block removes the temporary files, so the
    targets keep their previous contents (or stay absent).
    """
    outputs = OutputSet()
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise
    try:
        outputs.commit()
    except OSError as err:
        outputs.discard()
        raise disk_error(outputs.pending[0][1].parent, err) from None


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """One file written as a set of one: ``path`` appears (or is replaced) only when the block finishes."""
    with output_set() as outputs, outputs.open(path, mode) as handle:
        yield handle


def write_jsonl_lines(handle: IO[str], records: Iterable[dict[str, Any]]) -> int:
    count = 0
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` as JSON lines to ``path`` atomically; return how many were written."""
    with atomic_output(path) as handle:
        return write_jsonl_lines(handle, records)


def write_json_document(handle: IO[str], obj: Any) -> None:
    json.dump(obj, handle, indent=2, ensure_ascii=False)
    handle.write("\n")
