"""ARC record -> conversation (slamkit/arc.py): the seed's exact user turn, relabelling, 3/5 choices, loud errors."""

from __future__ import annotations

import copy

import pytest

from slamkit.arc import conversation_from_record, format_user_text, letters_for
from slamkit.errors import SlamkitError

WHERE = "data/ARC-Easy-train.jsonl:7"

# The first ARC-Easy train record and the user_text the seed's README shows for it (seed_example_arc_README.md).
FEVER = {
    "id": "Mercury_7220990",
    "question": "Which factor will most likely cause a person to develop a fever?",
    "choices": {
        "text": [
            "a leg muscle relaxing after exercise",
            "a bacterial population in the bloodstream",
            "several viral particles on the skin",
            "carbohydrates being digested in the stomach",
        ],
        "label": ["A", "B", "C", "D"],
    },
    "answerKey": "B",
}
FEVER_USER_TEXT = (
    "Multiple Choice question: Which factor will most likely cause a person to develop a fever?\n"
    "- a leg muscle relaxing after exercise=A\n"
    "- a bacterial population in the bloodstream=B\n"
    "- several viral particles on the skin=C\n"
    "- carbohydrates being digested in the stomach=D\n"
    "\n"
    "Respond only with the letter of the correct answer."
)


def record(labels: list[str], answer: str, record_id: str = "Q_1") -> dict:
    return {
        "id": record_id,
        "question": "Which of these is a gas?",
        "choices": {"text": [f"choice {i}" for i in range(len(labels))], "label": labels},
        "answerKey": answer,
    }


def test_seed_user_text_exactly():
    """The fever record renders to the seed README's user_text byte for byte, answer "B", letters A-D, not relabelled."""
    conversation = conversation_from_record(FEVER, WHERE)
    assert conversation.user_text == FEVER_USER_TEXT
    assert conversation.assistant_text == "B"
    assert conversation.choice_labels == ["A", "B", "C", "D"]
    assert conversation.relabelled is False
    expected = {"id": FEVER["id"], "user_text": FEVER_USER_TEXT, "assistant_text": "B", "choice_labels": list("ABCD")}
    assert conversation.to_record().items() >= expected.items()


def test_format_user_text_uses_given_letters():
    """format_user_text writes one "- text=letter" line per choice, a blank line, then the instruction."""
    assert format_user_text("Q?", ["x", "y", "z"], ["A", "B", "C"]) == (
        "Multiple Choice question: Q?\n- x=A\n- y=B\n- z=C\n\nRespond only with the letter of the correct answer."
    )


@pytest.mark.parametrize(("answer", "letter"), [("1", "A"), ("2", "B"), ("3", "C"), ("4", "D")])
def test_numeric_labels_become_letters(answer, letter):
    """Labels "1".."4" become "A".."D" in both the user text and the answer, and relabelled is True."""
    conversation = conversation_from_record(record(["1", "2", "3", "4"], answer), WHERE)
    assert conversation.choice_labels == ["A", "B", "C", "D"]
    assert conversation.assistant_text == letter
    assert conversation.relabelled is True
    assert "=1\n" not in conversation.user_text
    assert conversation.user_text.splitlines()[1:5] == ["- choice 0=A", "- choice 1=B", "- choice 2=C", "- choice 3=D"]


def test_numeric_labels_one_to_three():
    """Labels "1".."3" (ARC-Easy has one such question) become "A".."C" and relabelled is True."""
    conversation = conversation_from_record(record(["1", "2", "3"], "3"), WHERE)
    assert conversation.choice_labels == ["A", "B", "C"]
    assert (conversation.assistant_text, conversation.relabelled) == ("C", True)


@pytest.mark.parametrize(
    ("labels", "answer"),
    [(["A", "B", "C"], "C"), (["A", "B", "C", "D", "E"], "E"), (["A", "B", "C", "D", "E"], "A")],
)
def test_three_and_five_choice_questions_kept(labels, answer):
    """3- and 5-choice letter questions keep all their letters (E included) and their answer, not relabelled."""
    conversation = conversation_from_record(record(labels, answer), WHERE)
    assert conversation.choice_labels == labels
    assert conversation.assistant_text == answer
    assert conversation.relabelled is False
    assert conversation.user_text.count("\n- ") == len(labels)


def test_letters_for():
    """letters_for keeps letters, maps 1..N to A..N, and rejects mixed, repeated, gapped and lower-case labels."""
    assert letters_for(["A", "B", "C"]) == (["A", "B", "C"], False)
    assert letters_for(["1", "2", "3", "4", "5"]) == (["A", "B", "C", "D", "E"], True)
    for bad in (["A", "2"], ["A", "A"], ["1", "3"], ["2", "1"], ["a", "b"], ["0", "1"]):
        with pytest.raises(ValueError):
            letters_for(bad)


def broken(mutate) -> dict:
    bad = copy.deepcopy(FEVER)
    mutate(bad)
    return bad


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(answerKey="E"), r"answerKey 'E' is not among the labels \['A', 'B', 'C', 'D'\]"),
        (lambda r: r.update(answerKey="2"), r"answerKey '2' is not among the labels"),
        (lambda r: r.update(choices={"text": [], "label": []}), "empty choices"),
        (lambda r: r["choices"]["text"].pop(), "choices.text and choices.label must be lists of equal length"),
        (lambda r: r["choices"].pop("label"), "'choices' must be an object with 'text' and 'label' lists"),
        (lambda r: r.update(question="  "), "empty question"),
        (lambda r: r["choices"].update(label=["A", "B", "B", "D"]), r"repeated choice labels"),
        (lambda r: r["choices"].update(label=["1", "2", "4", "5"]), r"numeric choice labels .* are not 1..4"),
        (lambda r: r.pop("question"), "missing field 'question'"),
        (lambda r: r.pop("answerKey"), "missing field 'answerKey'"),
    ],
)
def test_bad_record_names_where_and_id(mutate, message):
    """Each malformed record raises SlamkitError whose message starts with `file:line (id ...)` and says what is wrong."""
    with pytest.raises(SlamkitError, match=message) as caught:
        conversation_from_record(broken(mutate), WHERE)
    assert str(caught.value).startswith(f"{WHERE} (id Mercury_7220990): ")


def test_record_without_id_names_where():
    """A record without an id raises SlamkitError `file:line: missing field 'id'`."""
    with pytest.raises(SlamkitError, match=f"^{WHERE}: missing field 'id'$"):
        conversation_from_record(broken(lambda r: r.pop("id")), WHERE)
