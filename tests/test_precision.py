"""Precision that fits the machine, and runs that diverge without a NaN are flagged.

On a CPU without native bfloat16 (AVX2 only: bf16 matmuls emulated, several times slower than float32) the
shipped ``training_args.bf16: true`` trains in float32 and says why; with native bf16 (AVX512-BF16, AMX) it
autocasts; ``speed.cpu_bf16=force`` autocasts anyway. Evaluation's ``--dtype auto`` follows the same rule. The CPU
kind is faked here, so both branches run on every machine."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from slamkit.config import SpeedSettings, training_arguments_settings
from slamkit.errors import SlamkitError
from slamkit.model import choose_dtype
from slamkit.training import DivergenceWatch, build_training_arguments


def shipped_settings(tmp_path):
    return training_arguments_settings(output_dir=str(tmp_path), bf16=True, report_to="none")


@pytest.mark.parametrize(("native", "cpu_bf16", "autocast"), [(False, "auto", False), (True, "auto", True),
                                                              (False, "force", True)])
def test_cpu_bf16_follows_the_cpu(monkeypatch, caplog, tmp_path, native, cpu_bf16, autocast):
    """bf16: true autocasts on a CPU with native bf16 or with speed.cpu_bf16=force, and trains in float32 on one
    without, with a line saying why and how to insist."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU rule does not apply")
    monkeypatch.setattr("slamkit.training.cpu_native_bf16", lambda: native)
    with caplog.at_level(logging.INFO, logger="slamkit"):
        args = build_training_arguments(shipped_settings(tmp_path), SpeedSettings(cpu_bf16=cpu_bf16), has_validation=False)
    assert args.bf16 is autocast and args.use_cpu
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:"))
    if autocast:
        assert line.endswith("in bf16 autocast")
    else:
        assert "training on CPU in float32: this CPU (" in line and "has no native bfloat16" in line
        assert line.endswith("(speed.cpu_bf16=force to autocast anyway)")


def test_cpu_bf16_takes_only_its_two_values():
    with pytest.raises(SlamkitError, match=r"speed.cpu_bf16='yes': must be one of auto, force"):
        SpeedSettings(cpu_bf16="yes")


@pytest.mark.parametrize("native", [False, True])
def test_evaluation_dtype_auto_is_float32_on_every_cpu(monkeypatch, native):
    """--dtype auto evaluates in float32 whether or not the CPU has native bf16 (a float32 scorer's figures);
    explicit dtypes stay."""
    monkeypatch.setattr("slamkit.model.cpu_native_bf16", lambda: native)
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def replay(losses, learning_rate=2e-5):
    """DivergenceWatch fed one logged loss per step; returns it."""
    watch = DivergenceWatch()
    args = SimpleNamespace(learning_rate=learning_rate)
    for step, loss in enumerate(losses, start=1):
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        watch.on_log(args, state, None, logs={"loss": loss})
    watch.on_train_end(args, SimpleNamespace(global_step=len(losses), is_world_process_zero=True), None)
    return watch


def test_a_loss_that_climbs_far_above_its_start_is_flagged_while_it_happens_and_at_the_end(caplog):
    """The diverged run of issue 18 (0.687, 0.681, 3.57, 3.22, 6.25 at lr 5e-5) is flagged at step 3 (3.57 > 3 x
    0.687) and again at the new high of step 5, and once more when training ends; the record's line names the
    highest loss, its step and what to lower."""
    with caplog.at_level(logging.WARNING, logger="slamkit"):
        watch = replay([0.687, 0.681, 3.57, 3.22, 6.25], learning_rate=5e-5)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" at step ")[1].split(",")[0] for line in lines[:2]] == ["3", "5"]
    assert lines[-1].startswith("warning: training ended after diverging: the training loss climbed to 6.25 at step 5")
    assert watch.warnings == [
        "the training loss climbed to 6.25 at step 5, 9.1x its start (0.687): the run diverged; lower "
        "training_args.learning_rate (now 5e-05) or raise training_args.warmup_steps"
    ]


def test_a_noisy_but_healthy_loss_is_not_flagged(caplog):
    """The lr 2e-5 run's oscillation (0.687 up to 1.48, about 2.2x) and a NaN (NonFiniteGuard's business) are not
    flagged."""
    with caplog.at_level(logging.WARNING, logger="slamkit"):
        watch = replay([0.687, 0.681, 0.870, 1.48, 0.742, 1.36, 0.608, math.nan, 0.716])
    assert watch.warnings == [] and caplog.records == []


# ------------------------------------------------------------------ choices in float32, whatever the model's dtype

LETTERS = [10, 11, 12, 13]  # the "letters" of the tie set below
VOCAB = 1024


def near_tie_model():
    """A tiny untied Qwen3 (float32) whose final hidden state is almost the same for every prompt, and whose four
    letter rows of the LM head give logits near 32 that differ by 1/32 to 3/32: exact ties in bfloat16 (its spacing
    is 0.125 below 32 and 0.25 above), distinct in float32, with the last letter the largest.

    Sixteen hidden dimensions carry a constant 50 from every token's embedding and are the only ones the final norm
    keeps, so each of them is about 2 after the norm; every letter row reads them with weight 1, and letter k reads
    the first one with weight 1 + k/64 (exact in bfloat16)."""
    from slamkit.model import qwen3_config, random_model

    model = random_model(qwen3_config("tiny", vocab_size=VOCAB, tie_word_embeddings=False))
    dims = slice(0, 16)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dims] = 50.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[dims] = 1.0
        for k, letter in enumerate(LETTERS):
            model.lm_head.weight[letter].zero_()
            model.lm_head.weight[letter, dims] = 1.0
            model.lm_head.weight[letter, 0] = 1.0 + k / 64
    return model


def tie_questions(count: int = 24):
    from slamkit.evaluation import Question

    rng = torch.Generator().manual_seed(0)
    return [
        Question(id=f"q{i}", prompt_ids=torch.randint(100, VOCAB, (int(torch.randint(3, 30, (1,), generator=rng)),),
                                                      generator=rng).tolist(),
                 choice_ids=LETTERS, gold=i % 4)
        for i in range(count)
    ]


def test_a_bfloat16_model_picks_the_letters_a_float32_model_picks_where_bfloat16_logits_tie():
    """On a set built so that the bf16 model's own letter logits tie (argmax would say the first letter every time),
    score_questions on the bf16 model predicts exactly what it predicts on the same weights in float32 (the last
    letter), reports no float32 tie, and batch sizes 1 and 16 agree."""
    from slamkit.evaluation import score_questions

    questions = tie_questions()
    model32 = near_tie_model().eval()
    model16 = near_tie_model().to(torch.bfloat16).eval()
    with torch.no_grad():  # the set is what it claims: the bf16 model's own logits tie on most questions
        own = [model16(input_ids=torch.tensor([q.prompt_ids])).logits[0, -1, LETTERS] for q in questions]
    assert sum(int((row == row.max()).sum()) > 1 for row in own) >= len(questions) // 2
    expected = [p.pred for p in score_questions(model32, questions, 16, progress=False)]
    assert expected == [3] * len(questions)
    for batch_size in (1, 16):
        for fast in (True, False):
            scored = score_questions(model16, questions, batch_size, progress=False, fast=fast)
            assert [p.pred for p in scored] == expected and not any(p.tie for p in scored)


def test_validation_accuracy_under_bf16_autocast_equals_float32(tmp_path):
    """The validation accuracy computed in the training pass under bf16 autocast (packed and padded paths) counts
    the same correct answers as in float32 on the near-tie set: its letters are scored in float32 too."""
    from slamkit.chatml import IGNORE_INDEX
    from slamkit.data import check_token_row
    from slamkit.training import build_trainer, build_training_arguments

    rows = [
        check_token_row({"input_ids": q.prompt_ids + [LETTERS[q.gold], 3],
                         "labels": [IGNORE_INDEX] * len(q.prompt_ids) + [LETTERS[q.gold], 3], "choice_ids": LETTERS},
                        q.id, vocab_rows=VOCAB)
        for q in tie_questions()
    ]
    results = set()
    for bf16 in (False, True):
        for speed in (SpeedSettings(), SpeedSettings(packing=False, single_micro_batch=False)):
            settings = training_arguments_settings(output_dir=str(tmp_path), report_to="none", bf16=bf16,
                                                   eval_strategy="epoch", per_device_eval_batch_size=8)
            args = build_training_arguments(settings, SpeedSettings(cpu_bf16="force"), has_validation=True)
            metrics = build_trainer(near_tie_model(), args, rows, rows, speed=speed).evaluate()
            results.add(metrics["eval_correct"])
    assert results == {sum(q.gold == 3 for q in tie_questions())}


def test_float32_ties_are_counted_not_hidden():
    """Letters whose float32 logits are exactly equal are a reported tie (the first of them is the prediction)."""
    from slamkit.evaluation import letter_choice

    pred, probs, tie = letter_choice(torch.tensor([[1.0, 2.0, 2.0, -5.0], [3.0, 1.0, 0.0, 9.0]]),
                                     torch.tensor([[True] * 4, [True, True, True, False]]))
    assert pred.tolist() == [1, 0] and tie.tolist() == [True, False] and probs[1, 3] == 0


@pytest.mark.parametrize(("visible", "named"), [("", "CUDA_VISIBLE_DEVICES is ''"), (None, "training_args.use_cpu=true")])
def test_a_run_that_finds_no_cuda_warns_unless_the_cpu_was_asked_for(monkeypatch, caplog, tmp_path, visible, named):
    """Without CUDA, training warns at its start, naming the likely cause (an empty CUDA_VISIBLE_DEVICES first) and
    use_cpu=true; with training_args.use_cpu=true the same run is quiet."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for use_cpu in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="slamkit"):
            settings = training_arguments_settings(output_dir=str(tmp_path), report_to="none", use_cpu=use_cpu)
            build_training_arguments(settings, SpeedSettings(), has_validation=False)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if use_cpu:
            assert warnings == []
        else:
            assert len(warnings) == 1 and warnings[0].startswith("warning: no CUDA device") and named in warnings[0]
