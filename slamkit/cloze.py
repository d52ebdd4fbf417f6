"""Cloze scoring of base models, as lm-evaluation-harness scores ARC.

For each choice, the log-likelihood of ``" {choice text}"`` after ``"Question: {question}\\nAnswer:"``;
``acc`` takes the most likely choice, ``acc_norm`` divides each log-likelihood by the choice's length in
characters first. No chat template and no letters: this is how pretrained (not instruction-tuned) models
are usually compared on ARC, and it complements the categorical (letter) scoring of the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from slamkit.errors import SlamkitError

PAD_ID = 0  # right padding, masked: never read


def cloze_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


@dataclass(frozen=True)
class ClozePrediction:
    id: str
    gold: int
    loglik: list[float]  # one per choice
    lengths: list[int]  # characters of each continuation

    @property
    def pred(self) -> int:
        return max(range(len(self.loglik)), key=lambda i: self.loglik[i])

    @property
    def pred_norm(self) -> int:
        return max(range(len(self.loglik)), key=lambda i: self.loglik[i] / self.lengths[i])


@torch.no_grad()
def score_cloze(model, tokenizer, records: list[dict], batch_size: int, progress: bool = True) -> list[ClozePrediction]:
    """Log-likelihood of every choice of every record (needs ``question`` and ``choice_texts`` from step 1)."""
    for record in records:
        for key in ("question", "choice_texts", "choice_labels"):
            if key not in record:
                raise SlamkitError(f"{record['_where']}: missing field {key!r} (re-run prepare_arc_data.py)")
    pairs = []  # (record index, context ids, continuation ids)
    contexts = tokenizer([cloze_context(r["question"]) for r in records], add_special_tokens=False)["input_ids"]
    for index, (record, context) in enumerate(zip(records, contexts, strict=True)):
        continuations = tokenizer([f" {t}" for t in record["choice_texts"]], add_special_tokens=False)["input_ids"]
        pairs += [(index, context, continuation) for continuation in continuations]
    device = next(model.parameters()).device
    model.eval()
    scores: list[float] = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]) + len(pairs[i][2]))
    for start in tqdm(range(0, len(order), batch_size), desc="cloze", unit="batch", disable=not progress):
        batch = [pairs[i] for i in order[start : start + batch_size]]
        lengths = [len(c) + len(x) for _, c, x in batch]
        input_ids = torch.full((len(batch), max(lengths)), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        rows, positions, targets = [], [], []
        for row, (_, context, continuation) in enumerate(batch):
            ids = context + continuation
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            for offset, token in enumerate(continuation):
                rows.append(row)
                positions.append(len(context) + offset - 1)  # the logits that predict this token
                targets.append(token)
        # The LM head runs only over the trailing positions that hold some row's continuation (not the contexts).
        first = min(positions)
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False,
            logits_to_keep=input_ids.shape[1] - first,
        ).logits
        columns = torch.tensor([p - first for p in positions], device=device)
        picked = logits[torch.tensor(rows, device=device), columns].float()
        token_logprobs = F.log_softmax(picked, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        per_row = torch.zeros(len(batch), device=device).index_add_(0, torch.tensor(rows, device=device), token_logprobs)
        for row, value in enumerate(per_row.cpu().tolist()):
            scores[order[start + row]] = value
    results, cursor = [], 0
    for record in records:
        count = len(record["choice_texts"])
        results.append(
            ClozePrediction(
                id=str(record.get("id", record["_where"])),
                gold=record["choice_labels"].index(record["assistant_text"]),
                loglik=scores[cursor : cursor + count],
                lengths=[len(f" {t}") for t in record["choice_texts"]],
            )
        )
        cursor += count
    return results
