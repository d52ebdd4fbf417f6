"""JSON-lines input and output: errors name the file and line; outputs appear only when complete, as a set.

Reading refuses what is not UTF-8 JSON lines (gzip, UTF-16, stray bytes, unpaired surrogates, a key given twice, JSON
beyond Python's limits) in one line naming the file and line. :func:`output_set`, the one writer every tool uses,
writes only regular files, never a tool's input, a set as a unit, and says in one line what is on disk if it cannot.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from slamkit.errors import SlamkitError

# Write errors that are the disk's or the folder's, not a bug: reported in one line, nothing changed.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
NOT_REGULAR = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)",
               stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of ``path`` (1-based). A missing file, a file with no
    records and any line that is not one JSON object in valid UTF-8 (the module docstring lists the cases) are
    :class:`SlamkitError` naming the file (and line)."""
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
                record = json.loads(line, object_pairs_hook=lambda pairs: unique_keys(pairs, f"{path}:{number}"))
            except json.JSONDecodeError as err:
                reason = err.msg.removesuffix(" at")  # "Unterminated string starting at" + " at column 5"
                raise SlamkitError(f"{path}:{number}: malformed JSON ({reason} at column {err.colno})") from None
            except (RecursionError, ValueError) as err:  # '[' * 100000; an integer of more than 4,300 digits
                what = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(":")[0]
                raise SlamkitError(f"{path}:{number}: JSON beyond Python's limits ({what})") from None
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


def unique_keys(pairs: list[tuple[str, Any]], where: str) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice, which plain ``json`` would read as its last value, is refused."""
    record = dict(pairs)
    if len(record) < len(pairs):
        key = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise SlamkitError(f"{where}: key {key!r} appears twice in one object; keep one")
    return record


def refuse_input_as_output(output: str | Path, inputs: Iterable[str | Path], flag: str | None = None) -> None:
    """An output that is one of the files being read (the same file under any name) would replace the data it was
    made from: refused, naming the flag to change when given. :func:`output_set` calls it for every file."""
    output = Path(output)
    for source in map(Path, inputs):
        if output.exists() and source.exists() and os.path.samefile(output, source):
            where = f"{flag} " if flag else ""
            raise SlamkitError(f"{output}: {where}would write over the input file {source}; write the output elsewhere")


def refuse_not_regular(path: Path) -> None:
    """Only a regular file (or nothing) is ever replaced: a symbolic link (to anything), a device such as
    /dev/null, a FIFO, a socket or a folder at ``path`` is refused, naming what it is."""
    with contextlib.suppress(FileNotFoundError):
        kind = stat.S_IFMT(os.lstat(path).st_mode)
        if kind != stat.S_IFREG:
            raise SlamkitError(f"{path}: is {NOT_REGULAR.get(kind, 'not a regular file')}, and slamkit writes only "
                               "regular files; remove it or write elsewhere (nothing was changed)")


def readable_mode(directory: bool) -> int:
    """The permissions a new file (or folder) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def disk_error(path: Path, err: OSError, doing: str = "writing") -> SlamkitError:
    what = (err.strerror or str(err)).lower()
    return SlamkitError(f"{path}: {what} while {doing}; nothing was changed")


class OutputSet:
    """Files written as one set: see :func:`output_set`."""

    def __init__(self, inputs: Iterable[str | Path] = ()) -> None:
        self.inputs = list(inputs)
        self.pending: list[tuple[str, Path]] = []  # (temporary name, target), in the order they were opened

    @contextlib.contextmanager
    def open(self, path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
        """A temporary file beside ``path``; it becomes ``path`` when the whole set is complete."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            refuse_not_regular(path)
            refuse_input_as_output(path, self.inputs)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise SlamkitError(f"{path}: cannot write output ({err.strerror}); nothing was changed") from None
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
        self.pending = []

    def commit(self) -> None:
        """Rename every temporary file onto its target, all or none: each old target is first kept as a hard link
        beside it (a copy where there are none), and a failed rename puts back every target already replaced."""
        old: dict[Path, str] = {}  # target -> its previous contents, kept until every rename has succeeded
        done: list[Path] = []
        try:
            for tmp_name, path in self.pending:
                refuse_not_regular(path)  # made a link, a pipe or a folder since it was opened
                os.chmod(tmp_name, readable_mode(directory=False))  # mkstemp makes 0600
                if path.exists():
                    old[path] = tmp_name.removesuffix("tmp") + "old"
                    try:
                        os.link(path, old[path])
                    except OSError:  # a filesystem without hard links
                        shutil.copy2(path, old[path])
            for tmp_name, path in self.pending:
                os.replace(tmp_name, path)
                done.append(path)
        except BaseException as err:  # an OSError, or Ctrl-C between two renames: the old set goes back
            stuck = []
            for target in done:
                try:
                    os.replace(old.pop(target), target) if target in old else os.unlink(target)
                except OSError:
                    stuck.append(str(target))
            what = (getattr(err, "strerror", None) or type(err).__name__).lower()
            if stuck:  # each keeps the new output; its old contents stay beside it
                raise SlamkitError(f"{path}: {what} while renaming the outputs into place, and {', '.join(stuck)} "
                                   "could not be put back: new output, any old one kept beside as .*.old") from None
            if isinstance(err, OSError):
                raise disk_error(path, err, "renaming the outputs into place" if done else "writing") from None
            raise
        finally:
            for name in old.values():
                with contextlib.suppress(OSError):
                    os.unlink(name)
        self.pending = []


@contextlib.contextmanager
def output_set(inputs: Iterable[str | Path] = ()) -> Iterator[OutputSet]:
    """Write several files as one set, none of them one of the tool's ``inputs``::

        with output_set(inputs=[data_path]) as outputs:
            with outputs.open(a) as handle: ...
            with outputs.open(b, "wb") as handle: ...

    Each file goes to a temporary file beside its target, and all are renamed into place only when the block
    finishes (:meth:`OutputSet.commit`). A target that is not a regular file (:func:`refuse_not_regular`) or is one
    of ``inputs`` is refused when opened; an exception (or Ctrl-C) removes the temporary files, targets unchanged.
    """
    outputs = OutputSet(inputs)
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", inputs: Iterable[str | Path] = ()) -> Iterator[IO[Any]]:
    """One file written as a set of one: ``path`` appears (or is replaced) only when the block finishes."""
    with output_set(inputs) as outputs, outputs.open(path, mode) as handle:
        yield handle


def write_jsonl_lines(handle: IO[str], records: Iterable[dict[str, Any]]) -> int:
    count = 0
    for count, record in enumerate(records, start=1):
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return count


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], inputs: Iterable[str | Path] = ()) -> int:
    """Write ``records`` as JSON lines to ``path`` atomically, never over one of ``inputs``; return how many."""
    with atomic_output(path, inputs=inputs) as handle:
        return write_jsonl_lines(handle, records)


def write_json_document(handle: IO[str], obj: Any) -> None:
    json.dump(obj, handle, indent=2, ensure_ascii=False)
    handle.write("\n")
