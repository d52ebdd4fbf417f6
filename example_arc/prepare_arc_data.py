"""Step 1: ARC (hub ``allenai/ai2_arc`` or a local copy) → ``{id, user_text, assistant_text, choice_labels}`` jsonl.

    python example_arc/prepare_arc_data.py                                  # hub, ARC-Easy, into example_arc/
    python example_arc/prepare_arc_data.py --source ../shared/data/arc_easy --output_dir data/
    python example_arc/prepare_arc_data.py --subset ARC-Challenge

Numeric labels ("1".."5") become letters; 3- and 5-choice questions are kept. Every record is checked before
any file is written, and each file appears only when complete.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slamkit.arc import SPLITS, Conversation, conversation_from_record
from slamkit.errors import SlamkitError, run_main
from slamkit.jsonl import read_jsonl, write_jsonl

HUB_DATASET = "allenai/ai2_arc"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", default="ARC-Easy", choices=["ARC-Easy", "ARC-Challenge"])
    parser.add_argument(
        "--source",
        default=None,
        help="folder with one file per split (name contains train/validation/test; JSON lines or parquet) "
        f"in the hub's record layout; default: download {HUB_DATASET} from the hub",
    )
    parser.add_argument("--output_dir", default="example_arc", help="where arc_<subset>_<split>.jsonl go")
    return parser.parse_args(argv)


def local_split_file(source: Path, split: str, subset: str) -> Path:
    """The one file in ``source`` for ``split`` (its name contains the split; the subset breaks ties)."""
    if not source.is_dir():
        raise SlamkitError(f"{source}: --source is not a folder")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(LOCAL_SUFFIXES))
    matches = [p for p in files if split in p.name.lower()]
    if len(matches) > 1:
        matches = [p for p in matches if subset.lower() in p.name.lower()]
    if not matches:
        raise SlamkitError(f"{source}: no {split} file (expected a .jsonl or .parquet file whose name contains '{split}')")
    if len(matches) > 1:
        raise SlamkitError(f"{source}: several files for split {split}: {', '.join(p.name for p in matches)}")
    return matches[0]


def local_records(path: Path):
    """``(where, record)`` pairs from a local JSON lines or parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for unreadable files
            raise SlamkitError(f"{path}: not a readable parquet file ({err})") from None
        if not rows:
            raise SlamkitError(f"{path}: empty file (no records)")
        for index, row in enumerate(rows):
            yield f"{path}:row {index}", row
    else:
        for line, record in read_jsonl(path):
            yield f"{path}:{line}", record


def hub_records(subset: str):
    """``{split: [(where, record), ...]}`` from the Hugging Face hub (needs network or a warm cache)."""
    import datasets

    try:
        loaded = datasets.load_dataset(HUB_DATASET, subset)
    except Exception as err:  # offline, no cache, hub errors: datasets raises many types
        raise SlamkitError(
            f"{HUB_DATASET} ({subset}): cannot load from the hub ({type(err).__name__}: {err}); "
            "offline, pass --source DIR with a local copy"
        ) from None
    return {
        split: [(f"{HUB_DATASET}/{subset}/{split}[{i}]", dict(r)) for i, r in enumerate(loaded[split])]
        for split in SPLITS
    }


def convert(records) -> list[Conversation]:
    """Convert and check one split; ids must be unique."""
    conversations, seen = [], {}
    for where, record in records:
        conversation = conversation_from_record(record, where)
        if conversation.id in seen:
            raise SlamkitError(f"{where}: duplicate id {conversation.id!r} (first at {seen[conversation.id]})")
        seen[conversation.id] = where
        conversations.append(conversation)
    return conversations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source is None:
        sources = hub_records(args.subset)
        origin = f"{HUB_DATASET} ({args.subset})"
    else:
        source = Path(args.source)
        sources = {split: local_records(local_split_file(source, split, args.subset)) for split in SPLITS}
        origin = str(source)
    splits = {split: convert(records) for split, records in sources.items()}  # check everything first
    prefix = args.subset.lower().replace("-", "_")
    print(f"{args.subset} from {origin}")
    for split, conversations in splits.items():
        out = Path(args.output_dir) / f"{prefix}_{split}.jsonl"
        write_jsonl(out, (c.to_record() for c in conversations))
        relabelled = sum(c.relabelled for c in conversations)
        not_four = sum(len(c.choice_labels) != 4 for c in conversations)
        print(
            f"  {split:<10} {len(conversations):>6,} questions  "
            f"({relabelled} relabelled from numeric labels, {not_four} with other than 4 choices, 0 dropped) -> {out}"
        )
    return 0


if __name__ == "__main__":
    run_main(main)
