"""Step-2 token rows for training: loading, checking, and the two collators (packed and padded).

A token row is ``{"input_ids": [...], "labels": [...], "attention_mask": [...]}`` (``id`` and ``choice_ids``
optional), as written by ``example_arc/prepare_arc_tokens.py``. ``labels[i]`` is the id to predict at
position ``i`` (unshifted, -100 where unsupervised), the Hugging Face convention.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from slamkit.chatml import IGNORE_INDEX
from slamkit.errors import SlamkitError
from slamkit.jsonl import read_jsonl


@dataclass(frozen=True)
class TokenRow:
    input_ids: list[int]
    labels: list[int]
    id: str | None = None
    choice_ids: list[int] | None = None

    @property
    def prompt_length(self) -> int:
        """Index of the first supervised position (everything before it is the prompt)."""
        return next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX)


def expand_paths(paths: str | Sequence[str]) -> list[Path]:
    """A path, a glob, or a list of them → the files, in order; a pattern matching nothing is an error."""
    patterns = [paths] if isinstance(paths, str) else list(paths)
    if not patterns:
        raise SlamkitError("no data files given")
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [str(pattern)]
        if not matches:
            raise SlamkitError(f"{pattern}: no file matches")
        files.extend(Path(m) for m in matches)
    return files


def _int_list(value, where: str, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise SlamkitError(f"{where}: {key!r} must be a list of integers")
    return value


def check_token_row(record: dict, where: str, max_length: int | None = None, vocab_rows: int | None = None) -> TokenRow:
    """Validate one token row; every problem is a :class:`SlamkitError` naming ``where``."""
    for key in ("input_ids", "labels"):
        if key not in record:
            raise SlamkitError(f"{where}: missing field {key!r}")
    input_ids = _int_list(record["input_ids"], where, "input_ids")
    labels = _int_list(record["labels"], where, "labels")
    if len(input_ids) != len(labels):
        raise SlamkitError(f"{where}: input_ids ({len(input_ids)}) and labels ({len(labels)}) differ in length")
    if not input_ids:
        raise SlamkitError(f"{where}: empty input_ids")
    if "attention_mask" in record:
        mask = _int_list(record["attention_mask"], where, "attention_mask")
        if len(mask) != len(input_ids):
            raise SlamkitError(f"{where}: attention_mask ({len(mask)}) and input_ids ({len(input_ids)}) differ in length")
        if any(m != 1 for m in mask):
            raise SlamkitError(f"{where}: attention_mask has zeros; rows must be unpadded (the collator pads)")
    if all(label == IGNORE_INDEX for label in labels):
        raise SlamkitError(f"{where}: no supervised label (every label is -100): this row would train on nothing")
    if labels[0] != IGNORE_INDEX:
        raise SlamkitError(f"{where}: the first position is supervised, but no token precedes it to predict it")
    if any(label != IGNORE_INDEX and label != token for label, token in zip(labels, input_ids)):
        raise SlamkitError(f"{where}: a supervised label differs from its input id (labels must be unshifted copies)")
    if max_length is not None and len(input_ids) > max_length:
        raise SlamkitError(
            f"{where}: {len(input_ids)} tokens, longer than the model's context of {max_length} "
            "(drop long examples with prepare_arc_tokens.py --max_length)"
        )
    if vocab_rows is not None and max(input_ids) >= vocab_rows:
        raise SlamkitError(f"{where}: token id {max(input_ids)} is outside the model's {vocab_rows}-row embedding table")
    choice_ids = record.get("choice_ids")
    if choice_ids is not None:
        choice_ids = _int_list(choice_ids, where, "choice_ids")
        first = labels.index(next(label for label in labels if label != IGNORE_INDEX))
        if input_ids[first] not in choice_ids:
            raise SlamkitError(f"{where}: the answer token {input_ids[first]} is not among choice_ids {choice_ids}")
    return TokenRow(input_ids=input_ids, labels=labels, id=record.get("id"), choice_ids=choice_ids)


def load_token_rows(
    paths: str | Sequence[str],
    max_length: int | None = None,
    vocab_rows: int | None = None,
    limit: int | None = None,
) -> list[TokenRow]:
    """Read and check token rows from one or more jsonl files (paths, globs or a list); ``limit`` keeps the first N."""
    rows: list[TokenRow] = []
    for path in expand_paths(paths):
        for line, record in read_jsonl(path):
            rows.append(check_token_row(record, f"{path}:{line}", max_length, vocab_rows))
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


class TokenDataset(torch.utils.data.Dataset):
    """Token rows as a map-style dataset of ``{"input_ids", "labels"}`` lists."""

    def __init__(self, rows: Sequence[TokenRow]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels}


class PackedCollator:
    """Concatenate a micro-batch into one padding-free row, and say where the loss is read.

    ``position_ids`` restart at 0 for every sequence, which (with no attention mask and no cache) keeps
    the sequences from attending to each other in transformers' sdpa/eager/flex attention. The LM head is
    then computed only at ``logits_positions``: the positions whose next token is supervised.

    >>> PackedCollator()([{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
    ...                   {"input_ids": [8, 9, 10, 11], "labels": [-100, -100, 10, 11]}])
    {'input_ids': tensor([[ 5,  6,  7,  8,  9, 10, 11]]), 'position_ids': tensor([[0, 1, 2, 0, 1, 2, 3]]), \
'labels': tensor([[-100, -100,    7, -100, -100,   10,   11]]), 'logits_positions': tensor([1, 4, 5]), \
'targets': tensor([ 7, 10, 11])}

    ``labels`` (unshifted, as the Trainer expects) is kept so the Trainer counts the supervised tokens of an
    accumulated step; the loss itself uses ``logits_positions`` and ``targets``.
    """

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids: list[int] = []
        position_ids: list[int] = []
        labels: list[int] = []
        for feature in features:
            input_ids += feature["input_ids"]
            position_ids += range(len(feature["input_ids"]))
            labels += feature["labels"]
        positions = [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]
        return {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([position_ids]),
            "labels": torch.tensor([labels]),
            "logits_positions": torch.tensor(positions),
            "targets": torch.tensor([labels[t + 1] for t in positions]),
        }


class PaddedCollator:
    """The straightforward path: right-pad to the longest row, labels -100 and attention_mask 0 on pads.

    >>> PaddedCollator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
    ...                           {"input_ids": [8, 9], "labels": [-100, 9]}])
    {'input_ids': tensor([[5, 6, 7],
            [8, 9, 0]]), 'attention_mask': tensor([[1, 1, 1],
            [1, 1, 0]]), 'labels': tensor([[-100, -100,    7],
            [-100,    9, -100]])}
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids, mask, labels = [], [], []
        for feature in features:
            pad = width - len(feature["input_ids"])
            ids.append(feature["input_ids"] + [self.pad_id] * pad)
            mask.append([1] * len(feature["input_ids"]) + [0] * pad)
            labels.append(feature["labels"] + [IGNORE_INDEX] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
