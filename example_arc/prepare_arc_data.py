"""Step 1: ARC (hub ``allenai/ai2_arc`` or a local copy) → ``{id, user_text, assistant_text, choice_labels}`` jsonl.

    python example_arc/prepare_arc_data.py                                  # hub, ARC-Easy, into example_arc/
    python example_arc/prepare_arc_data.py --source ../shared/data/arc_easy --output_dir data/
    python example_arc/prepare_arc_data.py --subset ARC-Challenge

Numeric labels ("1".."5") become letters; 3- and 5-choice questions are kept. Every record is checked before
any file is written, and the three files appear together, only when all are complete.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from slamkit.arc import SPLITS, Conversation, conversation_from_record
from slamkit.errors import SlamkitError, first_line, run_main
from slamkit.jsonl import output_set, read_jsonl, write_jsonl_lines

HUB_DATASET = "allenai/ai2_arc"
SUBSETS = ("ARC-Easy", "ARC-Challenge")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", default="ARC-Easy", choices=SUBSETS)
    parser.add_argument(
        "--source",
        default=None,
        help="folder with one file per split (train/validation/test a word of its name; JSON lines or parquet) "
        f"in the hub's record layout; default: download {HUB_DATASET} from the hub",
    )
    parser.add_argument("--output_dir", default="example_arc", help="where arc_<subset>_<split>.jsonl go")
    return parser.parse_args(argv)


def name_parts(path: Path) -> list[str]:
    """The words of a file name, lower case: ``ARC-Easy-test.jsonl`` -> ``['arc', 'easy', 'test', 'jsonl']``."""
    return [part for part in re.split(r"[-_.\s]+", path.name.lower()) if part]


def local_split_file(source: Path, split: str, subset: str) -> Path:
    """The one file in ``source`` for ``split``: a name part equal to the split (``ARC-Easy-test.jsonl``,
    ``test-00000-of-00001.parquet``, ``test.jsonl``; not ``contest_entries.jsonl``), and not naming the other
    subset (``ARC-Challenge-test.jsonl`` is not ARC-Easy's). Two candidates are an error listing both."""
    if not source.is_dir():
        raise SlamkitError(f"{source}: --source is not a folder")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(LOCAL_SUFFIXES))
    others = [name.lower().split("-")[1] for name in SUBSETS if name != subset]  # e.g. "challenge" for ARC-Easy
    matches = [p for p in files if split in name_parts(p) and not any(o in name_parts(p) for o in others)]
    if not matches:
        raise SlamkitError(
            f"{source}: no {split} file (expected a .jsonl or .parquet file with '{split}' as a word of its name, "
            f"e.g. {subset}-{split}.jsonl)"
        )
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
    from slamkit.model import offline_unless_the_hub_answers

    offline_unless_the_hub_answers()  # before datasets is imported: it reads HF_HUB_OFFLINE once
    import datasets

    try:
        loaded = datasets.load_dataset(HUB_DATASET, subset)
    except Exception as err:  # offline, no cache, hub errors: datasets raises many types
        raise SlamkitError(
            f"{HUB_DATASET} ({subset}): cannot load from the hub ({type(err).__name__}: {first_line(err)}); offline, "
            "pass --source example_arc/sample (400/100/200 ARC-Easy questions, bundled) or --source DIR holding the "
            "full ARC-Easy in the hub's layout"
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
    prefix = args.subset.lower().replace("-", "_")
    outputs_written = {split: Path(args.output_dir) / f"{prefix}_{split}.jsonl" for split in SPLITS}
    files: dict[str, Path] = {}  # the local files it reads, which no output may replace
    if args.source is None:
        sources = hub_records(args.subset)
        origin = f"{HUB_DATASET} ({args.subset})"
    else:
        source = Path(args.source)
        files = {split: local_split_file(source, split, args.subset) for split in SPLITS}
        sources = {split: local_records(path) for split, path in files.items()}
        origin = str(source)
    splits = {split: convert(records) for split, records in sources.items()}  # check everything first
    print(f"{args.subset} from {origin}")
    with output_set(inputs=files.values()) as outputs:  # all splits or none, never one run's beside another's
        for split, conversations in splits.items():
            with outputs.open(outputs_written[split]) as handle:
                write_jsonl_lines(handle, (c.to_record() for c in conversations))
    for split, conversations in splits.items():
        relabelled = sum(c.relabelled for c in conversations)
        not_four = sum(len(c.choice_labels) != 4 for c in conversations)
        print(
            f"  {split:<10} {len(conversations):>6,} questions  "
            f"({relabelled} relabelled from numeric labels, {not_four} with other than 4 choices, 0 dropped) "
            f"-> {outputs_written[split]}"
        )
    return 0


if __name__ == "__main__":
    run_main(main)
