"""ARC (AI2 Reasoning Challenge) records in the hub's layout → ``{id, user_text, assistant_text, choice_labels}``.

Hub layout: ``{"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}``.
About 4% of ARC-Easy uses numeric labels "1".."5"; they become letters "A".."E" here, at the source, so no
later step can drop them (the reference scored 94 of its "100 problems" because it skipped them).
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slamkit.errors import SlamkitError
from slamkit.jsonl import read_jsonl

SPLITS = ("train", "validation", "test")
INSTRUCTION = "Respond only with the letter of the correct answer."
LETTERS = string.ascii_uppercase


def format_user_text(question: str, choice_texts: list[str], letters: list[str]) -> str:
    """The seed's user turn, exactly.

    >>> print(format_user_text("Which is a gas?", ["ice", "steam"], ["A", "B"]))
    Multiple Choice question: Which is a gas?
    - ice=A
    - steam=B
    <BLANKLINE>
    Respond only with the letter of the correct answer.
    """
    lines = "".join(f"- {text}={letter}\n" for text, letter in zip(choice_texts, letters, strict=True))
    return f"Multiple Choice question: {question}\n{lines}\n{INSTRUCTION}"


def letters_for(labels: list[str]) -> tuple[list[str], bool]:
    """Map the record's labels to letters; return ``(letters, relabelled)``.

    Letter labels are kept as they are; numeric labels "1".."N" become "A".."N"th letter. Anything else
    (mixed, repeated, out of order numbers, lower case) raises ``ValueError`` with the reason.
    """
    if all(len(label) == 1 and label in LETTERS for label in labels):
        if len(set(labels)) != len(labels):
            raise ValueError(f"repeated choice labels {labels}")
        return list(labels), False
    if all(label.isdigit() for label in labels):
        if len(labels) > len(LETTERS):
            raise ValueError(f"{len(labels)} numeric choice labels: more than the {len(LETTERS)} letters A..Z")
        numbers = [int(label) for label in labels]
        if numbers != list(range(1, len(labels) + 1)):
            raise ValueError(f"numeric choice labels {labels} are not 1..{len(labels)}")
        return [LETTERS[n - 1] for n in numbers], True
    raise ValueError(f"choice labels {labels} are neither single capital letters nor 1..N")


@dataclass(frozen=True)
class Conversation:
    """One question ready for ChatML: what the user says, what the assistant answers, the letters offered."""

    id: str
    user_text: str
    assistant_text: str
    choice_labels: list[str]
    relabelled: bool
    question: str
    choice_texts: list[str]

    def to_record(self) -> dict[str, Any]:
        """The step-1 JSON line: every field but ``relabelled``, in this order."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "relabelled"}


def conversation_from_record(record: dict[str, Any], where: str) -> Conversation:
    """Turn one hub-layout ARC record into a :class:`Conversation`; ``where`` (``file:line``) prefixes errors."""
    if "id" in record:  # name the record in every error below, a missing field included
        where = f"{where} (id {record['id']})"
    for key in ("id", "question", "choices", "answerKey"):
        if key not in record:
            raise SlamkitError(f"{where}: missing field {key!r}")
    choices = record["choices"]
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise SlamkitError(f"{where}: 'choices' must be an object with 'text' and 'label' lists")
    texts, labels = choices["text"], choices["label"]
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise SlamkitError(f"{where}: choices.text and choices.label must be lists of equal length")
    if not texts:
        raise SlamkitError(f"{where}: empty choices")
    if len(texts) < 2:
        raise SlamkitError(f"{where}: only one choice ({texts[0]!r}); a multiple-choice question needs at least two")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise SlamkitError(f"{where}: empty question")
    if any(not isinstance(t, str) for t in texts):
        raise SlamkitError(f"{where}: every choice text must be a string")
    labels = [str(label) for label in labels]
    try:
        letters, relabelled = letters_for(labels)
    except ValueError as err:
        raise SlamkitError(f"{where}: {err}") from None
    answer = str(record["answerKey"])
    if answer not in labels:
        raise SlamkitError(f"{where}: answerKey {answer!r} is not among the labels {labels}")
    return Conversation(
        id=str(record["id"]),
        user_text=format_user_text(record["question"], texts, letters),
        assistant_text=letters[labels.index(answer)],
        choice_labels=letters,
        relabelled=relabelled,
        question=record["question"],
        choice_texts=list(texts),
    )


def read_conversations(path: str | Path, require_choices: bool = False) -> list[dict]:
    """Step-1 records, checked: text fields are strings; the answer is among ``choice_labels`` when given.

    Each record gains ``_where`` (``file:line (id …)``) for later messages. ``require_choices`` makes
    ``choice_labels`` mandatory (categorical scoring needs the offered letters).
    """
    records = []
    for line, record in read_jsonl(path):
        where = f"{path}:{line}" + (f" (id {record['id']})" if "id" in record else "")
        for key in ("user_text", "assistant_text"):
            if key not in record:
                raise SlamkitError(f"{where}: missing field {key!r}")
            if not isinstance(record[key], str) or not record[key]:
                raise SlamkitError(f"{where}: {key!r} must be a non-empty string")
        labels = record.get("choice_labels")
        if labels is None and require_choices:
            raise SlamkitError(f"{where}: missing field 'choice_labels' (the letters offered, from prepare_arc_data.py)")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise SlamkitError(f"{where}: 'choice_labels' must be a list of strings")
            if len(labels) < 2:
                raise SlamkitError(f"{where}: choice_labels {labels} offers fewer than two letters")
            if len(set(labels)) != len(labels):
                raise SlamkitError(f"{where}: repeated letters in choice_labels {labels}")
            if record["assistant_text"] not in labels:
                raise SlamkitError(f"{where}: answer {record['assistant_text']!r} is not among choice_labels {labels}")
        records.append({**record, "_where": where})
    return records
