"""Cloze scoring of base models, defined as lm-evaluation-harness defines its ``arc_easy`` task.

For each choice, the log-likelihood of the continuation ``" {choice text}"`` after the context
``"Question: {question}\\nAnswer:"``. As the harness does it:

- the pair is encoded as a whole (``context + continuation`` in one tokenizer call, no special tokens) and the
  continuation is what follows the context's own encoding; trailing spaces of a context would move to the
  continuation first (ARC's contexts have none);
- ``acc`` takes the choice with the largest log-likelihood; ``acc_norm`` divides each log-likelihood by the
  length in characters of the choice text, without the space that joins it to the context;
- ties go to the first choice (``argmax``); the log-likelihoods are float32 whatever dtype the model runs in, and
  a tie that remains is counted (``ties`` in results.json).

No chat template and no letters: this is how pretrained (not instruction-tuned) models are usually compared on
ARC, and it complements the categorical (letter) scoring of the trained model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from slamkit.data import right_pad
from slamkit.errors import SlamkitError
from slamkit.model import head_logits

PAD_ID = 0  # right padding, masked: never read
TARGET_DELIMITER = " "  # what joins the context and a choice (the harness's target_delimiter)


def cloze_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def normalised(loglik: float, length: int) -> float:
    """``loglik / length`` with numpy's conventions for a zero length (as the harness computes it)."""
    if length:
        return loglik / length
    return math.copysign(math.inf, loglik) if loglik else math.nan


@dataclass(frozen=True)
class ClozePrediction:
    id: str
    gold: int
    loglik: list[float]  # one per choice
    lengths: list[int]  # characters of each choice text (the delimiter space not counted)

    @property
    def pred(self) -> int:
        return _argmax(self.loglik)

    @property
    def pred_norm(self) -> int:
        return _argmax(self.normalised)

    @property
    def normalised(self) -> list[float]:
        return [normalised(value, length) for value, length in zip(self.loglik, self.lengths, strict=True)]

    @property
    def tie(self) -> bool:
        """The best log-likelihood is shared (in float32): ``pred`` is the first of the tied choices."""
        return self.loglik.count(max(self.loglik)) > 1

    @property
    def tie_norm(self) -> bool:
        return self.normalised.count(max(self.normalised)) > 1


def _argmax(values: Sequence[float]) -> int:
    """The index of the largest value; the first one on a tie (numpy's argmax)."""
    return max(range(len(values)), key=values.__getitem__)


def encode_pairs(tokenizer, contexts: Sequence[str], continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """``(context ids, continuation ids)`` per pair, split as lm-evaluation-harness splits them (batched)."""
    moved = [(c.rstrip(), c[len(c.rstrip()) :] + x) for c, x in zip(contexts, continuations, strict=True)]
    wholes = tokenizer([c + x for c, x in moved], add_special_tokens=False)["input_ids"]
    heads = tokenizer([c for c, _ in moved], add_special_tokens=False)["input_ids"]
    return [(head, whole[len(head) :]) for head, whole in zip(heads, wholes, strict=True)]


@torch.no_grad()
def score_cloze(model, tokenizer, records: list[dict], batch_size: int, progress: bool = True) -> list[ClozePrediction]:
    """Log-likelihood of every choice of every record (needs ``question`` and ``choice_texts`` from step 1)."""
    for record in records:
        where = record["_where"]
        for key in ("question", "choice_texts", "choice_labels"):
            if key not in record:
                raise SlamkitError(f"{where}: missing field {key!r} (re-run prepare_arc_data.py)")
        texts = record["choice_texts"]
        if not isinstance(record["question"], str) or not record["question"].strip():
            raise SlamkitError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise SlamkitError(f"{where}: 'choice_texts' must be a list of strings")
        if len(texts) != len(record["choice_labels"]):
            raise SlamkitError(f"{where}: {len(texts)} choice_texts for {len(record['choice_labels'])} choice_labels")
    owners = [index for index, record in enumerate(records) for _ in record["choice_texts"]]
    pairs = encode_pairs(
        tokenizer,
        [cloze_context(records[index]["question"]) for index in owners],
        [TARGET_DELIMITER + text for record in records for text in record["choice_texts"]],
    )
    for (context, continuation), index in zip(pairs, owners, strict=True):
        if not context or not continuation:
            raise SlamkitError(f"{records[index]['_where']}: a choice encodes to no tokens after the context")
    device = next(model.parameters()).device
    model.eval()
    scores: list[float] = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in tqdm(range(0, len(order), batch_size), desc="cloze", unit="batch", disable=not progress):
        batch = [pairs[i] for i in order[start : start + batch_size]]
        sequences = [context + continuation for context, continuation in batch]
        input_ids = right_pad(sequences, PAD_ID)
        attention_mask = right_pad([[1] * len(ids) for ids in sequences], 0)
        rows, positions, targets = zip(*(  # every continuation token, and the position whose logits predict it
            (row, len(context) + offset - 1, token)
            for row, (context, continuation) in enumerate(batch) for offset, token in enumerate(continuation)
        ))
        # The decoder's final hidden states, and the LM head in float32 only at the positions that predict a
        # continuation token: a log-likelihood compared in bfloat16 would tie (and go to the first choice).
        hidden = model.get_decoder()(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
        ).last_hidden_state
        picked = head_logits(model, hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)])
        token_logprobs = F.log_softmax(picked, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        per_row = torch.zeros(len(batch), device=device).index_add_(0, torch.tensor(rows, device=device), token_logprobs)
        for row, value in enumerate(per_row.cpu().tolist()):
            if not math.isfinite(value):
                raise SlamkitError(
                    f"{records[owners[order[start + row]]]['_where']}: a choice's log-likelihood is not finite (nan "
                    "or inf), so no accuracy is reported; the model's weights are damaged"
                )
            scores[order[start + row]] = value
    results, cursor = [], 0
    for record in records:
        count = len(record["choice_texts"])
        results.append(ClozePrediction(
            id=str(record.get("id", record["_where"])), gold=record["choice_labels"].index(record["assistant_text"]),
            loglik=scores[cursor : cursor + count], lengths=[len(text) for text in record["choice_texts"]],
        ))
        cursor += count
    return results
