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


@pytest.mark.parametrize(("native", "expected"), [(False, torch.float32), (True, torch.bfloat16)])
def test_evaluation_dtype_auto_follows_the_cpu(monkeypatch, native, expected):
    """--dtype auto on the CPU: bfloat16 where the CPU has it natively, float32 elsewhere; explicit dtypes stay."""
    monkeypatch.setattr("slamkit.model.cpu_native_bf16", lambda: native)
    assert choose_dtype("auto", torch.device("cpu")) == expected
    assert choose_dtype("float32", torch.device("cpu")) == torch.float32


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
