"""The one ChatML renderer: tokenization (step 2), training-time checks and both evaluation scripts use it.

A training example is rendered as::

    <|im_start|>user\\n{user_text}<|im_end|>\\n<|im_start|>assistant\\n{assistant_text}<|im_end|>
    └──────────────────────────── prompt ─────────────────────────────┘└──── completion ─────┘

The prompt and the completion are encoded separately and concatenated, so the prompt ids are exactly the
prefix of the training ids, by construction. Only the completion (the answer tokens and the closing
``<|im_end|>``) is supervised; the role header ``<|im_start|>assistant\\n`` is part of the prompt and is not
(the reference trained on it too; TRL, LLaMA-Factory and nanochat do not).

That is the ``seed`` :class:`PromptFormat`, the default. ``chat_template`` renders the prompt with the tokenizer's
own chat template, thinking off (:func:`chat_template_format`), and the same code encodes, masks and scores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from slamkit.errors import SlamkitError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IGNORE_INDEX = -100  # label of a position that carries no loss (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class PromptFormat:
    """How a user turn becomes the prompt the model answers after: ``head + user_text + tail`` (``seed``, the
    reference example's ChatML with no system turn, or ``chat_template``, see the module's docstring); the
    completion is always ``assistant_text + <|im_end|>``."""

    name: str
    head: str
    tail: str

    def prompt(self, user_text: str) -> str:
        return f"{self.head}{user_text}{self.tail}"

    def example(self, user_text: str, assistant_text: str) -> str:
        return self.prompt(user_text) + render_completion(assistant_text)

    @property
    def digest(self) -> str:
        """What token rows carry of the template they were rendered with (``prompt_digest``)."""
        return hashlib.sha256(f"{self.head}\0{self.tail}".encode()).hexdigest()[:16]


SEED_FORMAT = PromptFormat("seed", f"{IM_START}user\n", f"{IM_END}\n{IM_START}assistant\n")
PROMPT_FORMATS = ("seed", "chat_template")
# Stands for the user text while a chat template is rendered; the spaces and newlines around it must survive (a
# template that trims the user text would render other text than the rows hold).
_PLACEHOLDER = " \nSLAMKIT-USER-TEXT-8f14e45f\n "


def render_completion(assistant_text: str) -> str:
    """The supervised text: the answer and the closing ``<|im_end|>``."""
    return f"{assistant_text}{IM_END}"


def chat_template_format(tokenizer) -> PromptFormat:
    """The tokenizer's own chat template, thinking off, as a :class:`PromptFormat`; refused unless prefix-stable.

    The prompt is ``apply_chat_template([user], add_generation_prompt=True, enable_thinking=False)`` (Qwen3: the
    empty ``<think>\\n\\n</think>\\n\\n`` block after the assistant header; Qwen2.5: its default system turn).
    It must hold the user text verbatim, once, and the whole conversation rendered by the same template must be
    exactly that prompt followed by the answer and ``<|im_end|>`` (a trailing newline allowed): otherwise what is
    trained and what is scored would not be the template's text, and the format is refused.
    """
    name = tokenizer_name(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise SlamkitError(f"tokenizer {name}: has no chat template; use --prompt_format seed")
    user = [{"role": "user", "content": _PLACEHOLDER}]
    answer = "B"
    try:
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, enable_thinking=False, tokenize=False)
        whole = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], enable_thinking=False, tokenize=False
        )
    except Exception as err:  # a template is user-supplied Jinja: any failure of it is the template's
        raise SlamkitError(f"tokenizer {name}: its chat template fails to render ({err})") from None
    if prompt.count(_PLACEHOLDER) != 1 or IM_START not in prompt:
        raise SlamkitError(
            f"tokenizer {name}: its chat template does not render the user text verbatim (untrimmed) in a ChatML prompt; "
            "use --prompt_format seed"
        )
    head, tail = prompt.split(_PLACEHOLDER)
    if not (whole.startswith(prompt) and whole[len(prompt):] in (render_completion(answer), render_completion(answer) + "\n")):
        raise SlamkitError(
            f"tokenizer {name}: its chat template is not prefix-stable (the conversation with the answer does not "
            "begin with the prompt and end with the answer + <|im_end|>); use --prompt_format seed"
        )
    return PromptFormat("chat_template", head, tail)


def prompt_format(name: str, tokenizer) -> PromptFormat:
    """``seed`` or ``chat_template`` (of ``tokenizer``) by name."""
    if name == "seed":
        return SEED_FORMAT
    if name == "chat_template":
        return chat_template_format(tokenizer)
    raise SlamkitError(f"prompt format {name!r} is not one of {', '.join(PROMPT_FORMATS)}")


@dataclass(frozen=True)
class ChatMLIds:
    """The tokenizer's own ids of the two ChatML markers."""

    im_start: int
    im_end: int


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def chatml_ids(tokenizer) -> ChatMLIds:
    """Return the ids of ``<|im_start|>``/``<|im_end|>``; a tokenizer without them (as single tokens) is an error.

    slamkit never adds the markers itself: Qwen tokenizers already have them, and adding them again (or
    resizing the embedding table for them) would silently change the checkpoint.
    """
    name, vocab = tokenizer_name(tokenizer), tokenizer.get_vocab()
    for marker in (IM_START, IM_END):
        if marker not in vocab:
            raise SlamkitError(f"tokenizer {name}: has no ChatML token {marker}; use a tokenizer that defines "
                               "<|im_start|> and <|im_end|> (every Qwen tokenizer does)")
        added = tokenizer.added_tokens_decoder.get(vocab[marker])
        if added is None or not added.special:
            kind = "a plain vocabulary entry" if added is None else "an added token"
            raise SlamkitError(
                f"tokenizer {name}: {marker} is {kind}, not a special token, so text in the data could forge a turn; "
                "register it as special (tokenizer.add_special_tokens({'additional_special_tokens': ['<|im_start|>', "
                "'<|im_end|>']}) and save the tokenizer)"
            )
        encoded = tokenizer.encode(marker, add_special_tokens=False)
        if encoded != [vocab[marker]]:
            raise SlamkitError(f"tokenizer {name}: {marker} is not encoded as its single special token (got ids "
                               f"{encoded}); it must be registered as a special token")
    return ChatMLIds(im_start=vocab[IM_START], im_end=vocab[IM_END])


def single_token_ids(tokenizer, texts: Sequence[str]) -> list[int]:
    """Ids of ``texts`` that must each be exactly one token (the choice letters); anything else is an error."""
    name = tokenizer_name(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded, strict=True):
        if len(ids) != 1:
            raise SlamkitError(f"tokenizer {name}: choice letter {text!r} is {len(ids)} tokens {ids}, not one; "
                               "categorical scoring needs every offered letter to be a single token")
        if tokenizer.decode(ids) != text:  # e.g. an unknown-token id standing in for a letter not in the vocabulary
            raise SlamkitError(f"tokenizer {name}: choice letter {text!r} is not in the vocabulary (it encodes to id "
                               f"{ids[0]}, which decodes to {tokenizer.decode(ids)!r})")
        added = tokenizer.added_tokens_decoder.get(ids[0])
        if added is not None and added.special:  # e.g. a label "<|im_end|>": it would be scored as the control token
            raise SlamkitError(f"tokenizer {name}: choice letter {text!r} is a special token, not text")
    return [ids[0] for ids in encoded]


def letter_token_ids(tokenizer, letter_lists: Sequence[Sequence[str]], names: Sequence[str]) -> dict[str, int]:
    """The one token id of every letter offered in ``letter_lists``; an error names the record (``names``) that
    first offers a letter that is not one token."""
    ids: dict[str, int] = {}
    for letters, name in zip(letter_lists, names, strict=True):
        missing = [x for x in letters if x not in ids]
        if missing:
            try:
                ids.update(zip(missing, single_token_ids(tokenizer, missing), strict=True))
            except SlamkitError as err:
                raise SlamkitError(f"{name}: {err}") from None
    return ids


def _encode_text(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text with its special-token strings kept as plain text (``split_special_tokens``)."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_prompts(tokenizer, user_texts: Sequence[str], fmt: PromptFormat = SEED_FORMAT) -> list[list[int]]:
    """Token ids of ``fmt.prompt(u)`` for each user text (batched).

    The format's markers are the tokenizer's own tokens; the user text, with the plain text around it up to the
    nearest marker (``user\\n`` before it in the seed format), is encoded as text, so a user text that contains
    ``<|im_end|>`` or ``<|im_start|>`` stays those characters and can never forge a turn. Special tokens split a
    string into pieces that are tokenized independently, so for ordinary text these are exactly the ids of encoding
    the whole rendered string at once.
    """
    chatml_ids(tokenizer)
    markers = list(tokenizer.get_added_vocab())
    # the format's own text, its markers as their tokens: the head up to its last marker, the tail from its first
    cut_head = max((fmt.head.rfind(m) + len(m) for m in markers if m in fmt.head), default=0)
    cut_tail = min((fmt.tail.find(m) for m in markers if m in fmt.tail), default=len(fmt.tail))
    before, after = [tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
                     for text in (fmt.head[:cut_head], fmt.tail[cut_tail:])]
    users = _encode_text(tokenizer, [f"{fmt.head[cut_head:]}{u}{fmt.tail[:cut_tail]}" for u in user_texts])
    return [[*before, *user, *after] for user in users]


@dataclass(frozen=True)
class TokenRow:
    """One tokenized example, as step 2 writes it and training reads it. ``labels[i]`` is ``input_ids[i]`` where
    supervised, else -100 (unshifted, the Hugging Face convention)."""

    input_ids: list[int]
    labels: list[int]
    id: str | None = None
    choice_ids: list[int] | None = None  # the offered letters' ids (validation accuracy)
    prompt_format: str = "seed"  # how the prompt was rendered (PROMPT_FORMATS)
    prompt_digest: str | None = None  # a chat_template row: PromptFormat.digest of the template it was rendered with

    @property
    def prompt_length(self) -> int:
        """Number of leading unsupervised tokens: the prompt."""
        return next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX)


def encode_examples(
    tokenizer,
    user_texts: Sequence[str],
    assistant_texts: Sequence[str],
    names: Sequence[str] | None = None,
    fmt: PromptFormat = SEED_FORMAT,
) -> list[TokenRow]:
    """Encode prompt + completion pairs with the label mask; batched.

    Invariants checked here for every example (an exception names the example otherwise): decoding
    ``input_ids`` reproduces ``fmt.example(user, answer)`` exactly, and the supervised ids end with ``<|im_end|>``. The
    texts are encoded as text (see :func:`encode_prompts`). With the Qwen tokenizer bundled in the repository:

    >>> from transformers import AutoTokenizer
    >>> qwen = AutoTokenizer.from_pretrained("example_arc/sample/qwen_tokenizer")
    >>> example = encode_examples(qwen, ["Hi"], ["B"])[0]
    >>> example.input_ids
    [151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198, 33, 151645]
    >>> example.labels
    [-100, -100, -100, -100, -100, -100, -100, -100, -100, 33, 151645]
    """
    if len(user_texts) != len(assistant_texts):
        raise ValueError("user_texts and assistant_texts differ in length")
    names = names if names is not None else [f"example {i}" for i in range(len(user_texts))]
    markers = chatml_ids(tokenizer)
    prompt_ids = encode_prompts(tokenizer, user_texts, fmt)
    completion_ids = [answer + [markers.im_end] for answer in _encode_text(tokenizer, assistant_texts)]
    examples = []
    for name, user, assistant, prompt, completion in zip(
        names, user_texts, assistant_texts, prompt_ids, completion_ids, strict=True
    ):
        if len(completion) < 2:
            raise SlamkitError(f"{name}: assistant_text {assistant!r} does not encode to answer tokens + <|im_end|>")
        input_ids = prompt + completion
        decoded = tokenizer.decode(input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded != fmt.example(user, assistant):
            raise SlamkitError(
                f"{name}: tokenizer {tokenizer_name(tokenizer)} does not reproduce the text exactly "
                "(decode(encode(text)) != text)"
            )
        examples.append(TokenRow(input_ids=input_ids, labels=[IGNORE_INDEX] * len(prompt) + list(completion)))
    return examples
