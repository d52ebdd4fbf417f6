"""Run cli/train_sft.py in this process and SIGKILL it (or pause it) at a chosen point: the faults that
tests/test_run_integrity.py injects. A SIGKILL runs no cleanup, exactly as a node failure or `kill -9` would.

    python tests/interrupt.py POINT ACTION [overrides ...]

POINT:  step:N       end of optimizer step N
        rotation     inside save_total_limit's deletion of an old checkpoint (its weights already gone)
        final-save   after the final weights are written, before trainer_state.json and the record
        started      right after the run took its folder and marked it running
ACTION: kill         SIGKILL this process
        pause:FILE   create FILE, then sleep (the test kills the process)
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path

import helpers
import transformers.trainer
from transformers import TrainerCallback

from slamkit import run_folder, training


def act(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    marker = Path(action.removeprefix("pause:"))
    marker.write_text(str(os.getpid()))
    time.sleep(300)


def install(point: str, action: str) -> None:
    if point.startswith("step:"):
        step = int(point.removeprefix("step:"))

        class AtStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    act(action)

        build = training.build_trainer
        training.build_trainer = lambda *a, callbacks=(), **k: build(*a, callbacks=[*callbacks, AtStep()], **k)
    elif point == "rotation":
        rotate = transformers.trainer.rotate_checkpoints

        def rotate_and_die(output_dir, save_total_limit=None, **kwargs):
            older = run_folder.checkpoints(Path(output_dir))[:-1]
            if save_total_limit and len(older) >= save_total_limit:
                (older[0] / "model.safetensors").unlink()  # the deletion has begun...
                act(action)  # ...and the run dies before it ends
            return rotate(output_dir, save_total_limit=save_total_limit, **kwargs)

        transformers.trainer.rotate_checkpoints = rotate_and_die
    elif point == "final-save":
        save_state = training.SFTTrainer.save_state

        def die_before_state(self, *a, **k):
            act(action)
            return save_state(self, *a, **k)

        training.SFTTrainer.save_state = die_before_state
    elif point == "started":
        start = run_folder.RunFolder.start

        def start_then(self, *a, **k):
            start(self, *a, **k)
            act(action)

        run_folder.RunFolder.start = start_then
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    # A suite started in the background (`nohup pytest &`) hands its children SIGINT ignored, and Python then keeps
    # it ignored: the tests' Ctrl-C would never arrive. A terminal's Ctrl-C is what they stand for.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    point, action, *overrides = sys.argv[1:]
    install(point, action)
    script = str(helpers.REPO / "cli" / "train_sft.py")
    sys.argv = [script, *overrides]
    runpy.run_path(script, run_name="__main__")  # as `python cli/train_sft.py ...` runs it, signal handling included
