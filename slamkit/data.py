"""Step-2 token rows for training: loading, checking, and the collator (packed or padded).

A token row is ``{"input_ids": [...], "labels": [...], "attention_mask": [...]}`` (``id``, ``choice_ids`` and
``prompt_format`` optional; rows without ``prompt_format`` are in the ``seed`` format), as written by
``example_arc/prepare_arc_tokens.py``; ``labels`` as :class:`slamkit.chatml.TokenRow` says.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DataCollatorWithFlattening

from slamkit.chatml import IGNORE_INDEX, PROMPT_FORMATS, PromptFormat, TokenRow, prompt_format, tokenizer_name
from slamkit.errors import SlamkitError
from slamkit.jsonl import read_jsonl


def expand_paths(paths: str | Sequence[str]) -> list[Path]:
    """A path, a glob, or a list of them → the files, in order; a pattern matching nothing is an error. A path
    that exists is taken as it is, even when it looks like a glob."""
    patterns = [paths] if isinstance(paths, str) else list(paths)
    if not patterns:
        raise SlamkitError("no data files given")
    files: dict[Path, Path] = {}  # resolved -> as given: the same file twice would train on its rows twice
    for pattern in patterns:
        literal = Path(pattern).exists() or not glob.has_magic(str(pattern))  # "data[1].jsonl" that exists is that file
        matches = [str(pattern)] if literal else sorted(glob.glob(str(pattern)))
        if not matches:
            raise SlamkitError(f"{pattern}: no file matches")
        for match in map(Path, matches):
            if match.is_dir():
                raise SlamkitError(f"{match}: a folder, not a file; give its files (e.g. {match / '*.jsonl'})")
            resolved = match.resolve()
            if resolved in files:
                raise SlamkitError(f"{match}: given twice (also as {files[resolved]}); list each data file once")
            files[resolved] = match
    return list(files.values())


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
    if min(input_ids) < 0:
        raise SlamkitError(f"{where}: negative token id {min(input_ids)} in input_ids")
    if vocab_rows is not None and max(input_ids) >= vocab_rows:
        raise SlamkitError(
            f"{where}: token id {max(input_ids)} is outside the model's {vocab_rows:,}-row embedding table: these rows "
            "were made with another model's tokenizer; re-run prepare_arc_tokens.py with --tokenizer set to this model"
        )
    choice_ids = record.get("choice_ids")
    if choice_ids is not None:
        choice_ids = _int_list(choice_ids, where, "choice_ids")
        if len(choice_ids) < 2 or len(set(choice_ids)) != len(choice_ids):
            raise SlamkitError(f"{where}: choice_ids {choice_ids} must be at least two different token ids")
        if min(choice_ids) < 0:
            raise SlamkitError(f"{where}: negative token id in choice_ids {choice_ids}")
        if vocab_rows is not None and max(choice_ids) >= vocab_rows:
            raise SlamkitError(f"{where}: choice_ids {choice_ids} reach beyond the model's {vocab_rows:,}-row embedding table")
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        if input_ids[first] not in choice_ids:
            raise SlamkitError(f"{where}: the answer token {input_ids[first]} is not among choice_ids {choice_ids}")
    prompt_format = record.get("prompt_format", "seed")
    if prompt_format not in PROMPT_FORMATS:
        raise SlamkitError(f"{where}: prompt_format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    digest = record.get("prompt_digest")
    if prompt_format != "seed" and not isinstance(digest, str):
        raise SlamkitError(f"{where}: prompt_format {prompt_format} without the prompt_digest of its template; re-run "
                           "prepare_arc_tokens.py")
    return TokenRow(input_ids=input_ids, labels=labels, id=record.get("id"), choice_ids=choice_ids,
                    prompt_format=prompt_format, prompt_digest=digest)


def load_token_rows(
    files: Sequence[Path], max_length: int | None = None, vocab_rows: int | None = None, limit: int | None = None
) -> list[TokenRow]:
    """Read and check token rows from jsonl ``files`` (see :func:`expand_paths`); ``limit`` keeps the first N."""
    rows: list[TokenRow] = []
    for path in files:
        for line, record in read_jsonl(path):
            rows.append(check_token_row(record, f"{path}:{line}", max_length, vocab_rows))
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


def rows_prompt_format(groups: Sequence[tuple[str, Sequence[TokenRow]]], tokenizer) -> PromptFormat:
    """The one prompt format of every row in ``groups`` (``(name, rows)`` pairs), as ``tokenizer`` renders it.

    Rows of two formats, or chat_template rows rendered by another template than ``tokenizer``'s (its digest
    differs), are refused: a model trained on one prompt and validated, recorded or scored with another measures
    the mismatch."""
    formats = {(name, row.prompt_format, row.prompt_digest) for name, rows in groups for row in rows}
    if len({(fmt, digest) for _, fmt, digest in formats}) > 1:
        found = ", ".join(sorted({f"{name}: {fmt}" for name, fmt, _ in formats}))
        raise SlamkitError(
            f"token rows of different prompt formats or templates ({found}): make them all with the same "
            "prepare_arc_tokens.py --tokenizer and --prompt_format"
        )
    name, fmt, digest = next(iter(formats)) if formats else ("", "seed", None)
    chosen = prompt_format(fmt, tokenizer)
    if digest is not None and digest != chosen.digest:
        raise SlamkitError(
            f"{name}: the rows' prompts were rendered with another chat template than the tokenizer's "
            f"({tokenizer_name(tokenizer)}); re-run prepare_arc_tokens.py with this tokenizer"
        )
    return chosen


class TokenDataset(torch.utils.data.Dataset):
    """Token rows as a map-style dataset of ``{"input_ids", "labels"}`` lists, plus ``choice_ids`` when asked
    (validation accuracy needs them; training does not)."""

    def __init__(self, rows: Sequence[TokenRow], with_choice_ids: bool = False):
        self.rows = list(rows)
        self.with_choice_ids = with_choice_ids
        if with_choice_ids and any(row.choice_ids is None for row in self.rows):
            raise ValueError("with_choice_ids=True needs choice_ids on every row")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        item = {"input_ids": row.input_ids, "labels": row.labels}
        if self.with_choice_ids:
            item["choice_ids"] = row.choice_ids
        return item


def right_pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """``[len(sequences), longest]`` int64 tensor, each sequence left-aligned and padded with ``value``.

    >>> right_pad([[5, 6, 7], [8]], value=0)
    tensor([[5, 6, 7],
            [8, 0, 0]])
    """
    return pad_sequence([torch.tensor(s, dtype=torch.long) for s in sequences], batch_first=True, padding_value=value)


class SFTCollator:
    """Collate token rows for the Trainer, packed or padded; rows' ``choice_ids`` travel along, padded with -1.

    Packed (the default, ``speed.packing``): transformers' ``DataCollatorWithFlattening`` concatenates the
    micro-batch into one padding-free row whose ``position_ids`` restart at 0 for every sequence, which (with no
    attention mask and no cache) keeps the sequences from attending to each other; it marks each sequence's
    first label -100 (slamkit's rows never supervise it anyway). The loss then reads the supervised positions
    from ``labels``:

    >>> rows = [{"input_ids": [5, 6, 7], "labels": [-100, -100, 7], "choice_ids": [7, 9]},
    ...         {"input_ids": [8, 9, 10, 11], "labels": [-100, -100, 10, 11], "choice_ids": [10, 12, 13]}]
    >>> batch = SFTCollator(packing=True)(rows)
    >>> {key: value.tolist() for key, value in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'input_ids': [[5, 6, 7, 8, 9, 10, 11]], 'labels': [[-100, -100, 7, -100, -100, 10, 11]],
     'position_ids': [[0, 1, 2, 0, 1, 2, 3]], 'choice_ids': [[7, 9, -1], [10, 12, 13]]}

    Padded (the straightforward path): right padding with ``pad_id``, attention mask 0 and label -100 on pads:

    >>> batch = SFTCollator(packing=False, pad_id=0)(rows)
    >>> {key: value.tolist() for key, value in batch.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'input_ids': [[5, 6, 7, 0], [8, 9, 10, 11]], 'attention_mask': [[1, 1, 1, 0], [1, 1, 1, 1]],
     'labels': [[-100, -100, 7, -100], [-100, -100, 10, 11]], 'choice_ids': [[7, 9, -1], [10, 12, 13]]}
    """

    def __init__(self, packing: bool = True, pad_id: int = 0):
        self.packing = packing
        self.pad_id = pad_id
        self.flatten = DataCollatorWithFlattening(return_tensors="pt")

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        if self.packing:
            batch = dict(self.flatten(rows))
        else:
            batch = {
                "input_ids": right_pad([r["input_ids"] for r in rows], self.pad_id),
                "attention_mask": right_pad([[1] * len(r["input_ids"]) for r in rows], 0),
                "labels": right_pad([r["labels"] for r in rows], IGNORE_INDEX),
            }
        if "choice_ids" in features[0]:
            batch["choice_ids"] = right_pad([f["choice_ids"] for f in features], -1)
        return batch


