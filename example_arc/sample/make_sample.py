"""Regenerate the bundled ARC-Easy sample (``ARC-Easy-{train,validation,test}.jsonl`` beside this script).

    python example_arc/sample/make_sample.py --source ../shared/data/arc_easy

Selection, per split, deterministic: the first N records in file order (train 400, validation 100, test 200),
then, for each kind of question below that the window lacks, the split's first record of that kind is swapped
in from later in the file, replacing the last record of the window that is of no listed kind and not among
the first ``KEEP`` records. The result is written in file order, each line copied byte for byte.

Kinds: numeric labels ("1".."4"), 3 choices, 5 choices, answer "E", numeric labels with 3 choices ("1".."3").
A kind the whole split lacks is skipped. Test keeps its first 100 records untouched: they are the reference's
"100 problems", 6 of them numeric-label.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

SIZES = {"train": 400, "validation": 100, "test": 200}
KEEP = {"train": 0, "validation": 0, "test": 100}  # leading records that must stay exactly as in the source


def _numeric(record: dict) -> bool:
    return all(label.isdigit() for label in record["choices"]["label"])


KINDS: dict[str, Callable[[dict], bool]] = {
    "numeric labels": _numeric,
    "3 choices": lambda r: len(r["choices"]["label"]) == 3,
    "5 choices": lambda r: len(r["choices"]["label"]) == 5,
    "answer E": lambda r: r["answerKey"] == "E",
    "numeric labels with 3 choices": lambda r: _numeric(r) and len(r["choices"]["label"]) == 3,
}


def read_lines(path: Path) -> list[bytes]:
    """The non-blank lines of ``path`` as raw bytes (no newline), so the sample copies them exactly."""
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def select(records: list[dict], size: int, keep: int) -> list[int]:
    """Indices (in file order) of the sample records; see the module docstring for the rule."""
    chosen = list(range(min(size, len(records))))
    for kind, is_kind in KINDS.items():
        if any(is_kind(records[i]) for i in chosen):
            continue
        extra = next((i for i in range(len(records)) if i not in chosen and is_kind(records[i])), None)
        if extra is None:
            continue  # the whole split lacks this kind
        # the last window record that is of no kind and may be replaced
        victim = next(
            i for i in reversed(chosen) if i >= keep and not any(test(records[i]) for test in KINDS.values())
        )
        chosen.remove(victim)
        chosen.append(extra)
    return sorted(chosen)


def describe(records: list[dict]) -> str:
    counts = {kind: sum(is_kind(r) for r in records) for kind, is_kind in KINDS.items()}
    return ", ".join(f"{kind}: {n}" for kind, n in counts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder with ARC-Easy-{train,validation,test}.jsonl")
    parser.add_argument(
        "--output_dir", default=str(Path(__file__).resolve().parent), help="where the sample goes; default: beside this script"
    )
    args = parser.parse_args(argv)
    source, output_dir = Path(args.source), Path(args.output_dir)
    missing = [f"ARC-Easy-{split}.jsonl" for split in SIZES if not (source / f"ARC-Easy-{split}.jsonl").is_file()]
    if missing:
        parser.error(f"{source} lacks {', '.join(missing)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, size in SIZES.items():
        name = f"ARC-Easy-{split}.jsonl"
        lines = read_lines(source / name)
        records = [json.loads(line) for line in lines]
        chosen = select(records, size, KEEP[split])
        (output_dir / name).write_bytes(b"".join(lines[i] + b"\n" for i in chosen))
        swapped = [i + 1 for i in chosen if i >= size]
        print(
            f"{split:<10} {len(chosen)} of {len(records):,} records ({describe([records[i] for i in chosen])}); "
            f"swapped in source lines {swapped or 'none'} -> {output_dir / name}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
