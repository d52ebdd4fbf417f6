"""The fast paths change nothing but speed: packed loss, gradients, batching, validation and scoring equal the
straightforward ones. Every trainer here comes from slamkit.training.build_trainer, the one construction site.

Float32 on the CPU, a tiny Qwen3 (2 layers, vocabulary 1,024) loaded through ``from_pretrained``, and
synthetic rows shaped like ARC-Easy's (a prompt, then one answer token and ``<|im_end|>`` supervised).
No timing here: bench/bench_sft.py measures speed.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import build_tiny_qwen3
from transformers import AutoModelForCausalLM, TrainingArguments

from slamkit.chatml import IGNORE_INDEX
from slamkit.config import SpeedSettings, training_arguments_settings
from slamkit.data import SFTCollator, TokenDataset, check_token_row
from slamkit.evaluation import Question, score_questions
from slamkit.training import SFTTrainer, build_trainer, build_training_arguments

VOCAB = 1024  # small for speed; every synthetic id is below it
PAD_ID = 0
ROWS = 37  # 2 full optimizer steps of 16 and a last one of 5, like ARC-Easy's 2,251 = 140 × 16 + 11
REFERENCE = SpeedSettings(packing=False, single_micro_batch=False)  # the seed's path: 4 × 4, padded, full logits
OURS = SpeedSettings()  # packed, LM head at supervised positions only, 4 × 4 run as one micro-batch of 16


def synthetic_rows(count: int, seed: int = 0) -> list:
    """``count`` checked token rows of 6..40 tokens; the first id is the row's index (to follow the sample order).
    Each offers 3 to 5 "letters" (ids 10..14) and supervises one of them, then an "<|im_end|>" (id 3)."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        prompt = [index] + [rng.randrange(100, VOCAB) for _ in range(rng.randint(4, 37))]
        choices = [10, 11, 12, 13, 14][: rng.choice([3, 4, 4, 5])]
        answer = [rng.choice(choices), 3]
        record = {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer, "choice_ids": choices}
        rows.append(check_token_row(record, f"synthetic row {index}", vocab_rows=VOCAB))
    return rows


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model", vocab_size=VOCAB)


def load_model(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")


def slamkit_args(tmp_path, speed: SpeedSettings, **overrides) -> TrainingArguments:
    """The product's TrainingArguments for the seed's 4 per device × 4 accumulation, on the CPU."""
    settings = training_arguments_settings(**{
        "output_dir": str(tmp_path / "run"), "report_to": "none", "save_strategy": "no", "eval_strategy": "no",
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "seed": 42, "disable_tqdm": True,
        **overrides,
    })
    return build_training_arguments(settings, speed, has_validation="eval_strategy" in overrides)


def make_trainer(model, args: TrainingArguments, rows, speed: SpeedSettings, val_rows=None) -> SFTTrainer:
    return build_trainer(model, args, rows, val_rows, speed=speed)


def features(rows) -> list[dict]:
    dataset = TokenDataset(rows)
    return [dataset[i] for i in range(len(dataset))]


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_and_gradients_equal_padded_full_logits(tiny_model_dir, tmp_path):
    """SFTTrainer.compute_loss on a packed batch of 16 equals the model's own full-logits loss on the padded
    batch (rtol 1e-5), and so do the gradients (atol 1e-6)."""
    model = load_model(tiny_model_dir).eval()
    batch = features(synthetic_rows(16))
    trainer = make_trainer(model, slamkit_args(tmp_path, OURS), [], OURS)

    reference = model(**SFTCollator(packing=False, pad_id=PAD_ID)(batch), use_cache=False).loss
    reference.backward()
    reference_grads = gradients(model)
    model.zero_grad(set_to_none=True)

    packed = SFTCollator(packing=True)(batch)
    assert packed["input_ids"].shape[0] == 1  # one padding-free row
    assert int((packed["labels"][0, 1:] != IGNORE_INDEX).sum()) == 2 * 16  # the LM head runs at 2 positions per row
    ours = trainer.compute_loss(model, packed)
    ours.backward()
    our_grads = gradients(model)

    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    assert our_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def epoch_order(trainer: SFTTrainer, epoch: int) -> list[list[int]]:
    """The row indices of each dataloader batch of ``epoch``, read back from the collated tensors."""
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    batches = []
    for batch in loader:
        if "position_ids" in batch:  # packed: a sequence starts where its position id is 0
            starts = batch["position_ids"][0] == 0
            batches.append(batch["input_ids"][0][starts].tolist())
        else:
            batches.append(batch["input_ids"][:, 0].tolist())
    return batches


def test_one_micro_batch_of_16_keeps_sample_order_and_step_count(tiny_model_dir, tmp_path):
    """16 × 1 packed yields, per optimizer step, exactly the rows 4 × 4 padded yields in that step, in the same
    order, for the same number of optimizer steps."""
    rows = synthetic_rows(ROWS)
    reference_args = slamkit_args(tmp_path, REFERENCE, num_train_epochs=3)
    our_args = slamkit_args(tmp_path, OURS, num_train_epochs=3)
    assert (reference_args.per_device_train_batch_size, reference_args.gradient_accumulation_steps) == (4, 4)
    assert (our_args.per_device_train_batch_size, our_args.gradient_accumulation_steps) == (16, 1)
    model = load_model(tiny_model_dir)
    reference = make_trainer(model, reference_args, rows, REFERENCE)
    ours = make_trainer(model, our_args, rows, OURS)

    for epoch in (0, 1):
        micro_batches = epoch_order(reference, epoch)
        steps = [sum(micro_batches[i : i + 4], []) for i in range(0, len(micro_batches), 4)]
        assert epoch_order(ours, epoch) == steps
        assert sorted(sum(steps, [])) == list(range(ROWS))
    assert [len(s) for s in steps] == [16, 16, 5]

    counts = {}
    for name, trainer in (("reference", reference), ("ours", ours)):
        loader = trainer.get_train_dataloader()
        _, per_epoch, _, _, _, _, max_steps = trainer.set_initial_training_values(trainer.args, loader)
        counts[name] = (per_epoch, max_steps)
    assert counts["reference"] == counts["ours"] == (3, 9)


def test_one_optimizer_step_of_16_packed_equals_4x4_padded(tiny_model_dir, tmp_path):
    """One Trainer optimizer step of 16 × 1 packed gives the same weights (atol 1e-6) and logged loss as one of
    4 × 4 padded, from the same initialisation."""
    rows = synthetic_rows(ROWS)
    # SGD without clipping makes the update proportional to the gradient, so a loss-normalisation error shows
    # in the weights (AdamW's first step is lr·sign(g), and clipping rescales the gradient to norm 1).
    settings = dict(
        max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1
    )
    results = {}
    for name, speed in (("reference", REFERENCE), ("ours", OURS)):
        model = load_model(tiny_model_dir)
        trainer = make_trainer(model, slamkit_args(tmp_path / name, speed, **settings), rows, speed)
        trainer.train()
        loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
        results[name] = (loss, {k: v.detach().clone() for k, v in model.state_dict().items()})

    initial = load_model(tiny_model_dir).state_dict()
    (reference_loss, reference_weights), (our_loss, our_weights) = results["reference"], results["ours"]
    assert our_loss == pytest.approx(reference_loss, rel=1e-5)
    assert not torch.equal(reference_weights["model.norm.weight"], initial["model.norm.weight"])  # it did train
    for name, weight in reference_weights.items():
        torch.testing.assert_close(our_weights[name], weight, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_fast_scoring_equals_full_logits_scoring(tiny_model_dir):
    """score_questions predicts the same letters with fast=True (length-sorted, LM head at the last positions)
    as with fast=False (file order, full logits), with probabilities within 1e-5, at any batch size."""
    model = load_model(tiny_model_dir)
    rng = random.Random(1)
    questions = []
    for index in range(29):
        choices = [10, 11, 12, 13, 14][: rng.choice([3, 4, 4, 4, 5])]
        questions.append(
            Question(
                id=f"q{index}", prompt_ids=[rng.randrange(100, VOCAB) for _ in range(rng.randint(3, 40))],
                choice_ids=choices, gold=rng.randrange(len(choices)),
            )
        )
    slow = score_questions(model, questions, batch_size=8, progress=False, fast=False)
    for batch_size in (1, 8, 29):
        fast = score_questions(model, questions, batch_size=batch_size, progress=False, fast=True)
        assert [p.id for p in fast] == [q.id for q in questions]
        assert [p.pred for p in fast] == [p.pred for p in slow]
        for a, b in zip(fast, slow, strict=True):
            assert a.probs == pytest.approx(b.probs, abs=1e-5)


def test_one_validation_pass_gives_the_loss_and_the_accuracy_of_the_two_straightforward_passes(tiny_model_dir, tmp_path):
    """trainer.evaluate() on the packed path gives eval_loss equal (rtol 1e-5) to the padded, full-logits path's,
    and eval_accuracy equal to categorical scoring (score_questions, fast=False) of the same rows' prompts: one
    forward pass where there used to be two."""
    model = load_model(tiny_model_dir)
    rows = synthetic_rows(ROWS, seed=3)
    settings = dict(eval_strategy="epoch", per_device_eval_batch_size=16)
    ours = make_trainer(model, slamkit_args(tmp_path, OURS, **settings), rows, OURS, val_rows=rows).evaluate()
    reference = make_trainer(model, slamkit_args(tmp_path, REFERENCE, **settings), rows, REFERENCE, val_rows=rows).evaluate()
    assert ours["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)

    questions = [
        Question(id=str(i), prompt_ids=row.input_ids[: row.prompt_length], choice_ids=row.choice_ids,
                 gold=row.choice_ids.index(row.input_ids[row.prompt_length]))
        for i, row in enumerate(rows)
    ]
    scored = score_questions(model, questions, batch_size=8, progress=False, fast=False)
    correct = sum(p.correct for p in scored)
    assert 0 < correct < ROWS  # a random model: neither all nor none, so the comparison means something
    assert (ours["eval_correct"], ours["eval_questions"]) == (reference["eval_correct"], reference["eval_questions"]) == (correct, ROWS)
    assert ours["eval_accuracy"] == correct / ROWS
