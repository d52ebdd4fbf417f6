"""Benchmark: the seed's training and evaluation path against slamkit's fast paths, in one process.

    python bench/bench_sft.py --shape qwen3-0.6b --device cpu --steps 2 --warmup 1 --eval_prompts 32 --threads 2
    python bench/bench_sft.py --shape qwen3-0.6b --device cpu --steps 2 --warmup 1 --paths ours,bf16,multi_micro_batch
    python bench/bench_sft.py --shape qwen3-0.6b --device cuda --json bench_gpu.json --check --profile 2
    python bench/bench_sft.py --shape tiny --device cpu --json bench_tiny.json --check       # a toy shape

Every trainer here is built by ``slamkit.training.build_trainer`` with arguments from
``slamkit.training.build_training_arguments``: the benchmark measures what ``train()`` runs, never a copy.

- reference: the seed's settings: 4 per device × 4 accumulation, right-padded batches, logits at every
  position through the model's own loss (``SpeedSettings(packing=False, single_micro_batch=False)``), checkpoints
  with optimizer state;
- ours: the shipped defaults (``SpeedSettings()``: one padding-free micro-batch of 16, LM head only at the
  supervised positions), checkpoints without optimizer state;
- ``--paths``: which to time, in order (``ours,reference`` by default); besides those, ours with one change each
  (``bf16``/``fp32``, ``attn=eager``, ``compile``, ``multi_micro_batch``), timed in the same process against ours.

Per path: seconds per optimizer step over a window, peak memory, the time per phase (collation, forward, backward,
clipping, optimizer, the rest; host syncs on CUDA), a checkpoint save (seconds and bytes), and optionally a
``torch.profiler`` table. Then validation (one pass vs the two passes of before) and test-prompt scoring.
``--check`` fails the run when the paths' losses or float32 predictions disagree (the exactness tests in
tests/test_exactness.py own exactness; this checks the measured runs). See bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from slamkit.arc import conversation_from_record
from slamkit.chatml import IGNORE_INDEX, encode_examples, letter_token_ids
from slamkit.config import SpeedSettings, training_arguments_settings
from slamkit.data import TokenRow, check_token_row
from slamkit.evaluation import Prediction, Question, questions_from_conversations, score_questions
from slamkit.jsonl import read_jsonl
from slamkit.model import load_causal_lm, load_model_config, load_tokenizer, qwen3_config, random_model
from slamkit.training import build_trainer, build_training_arguments

REPO = Path(__file__).resolve().parents[1]
# A local copy of the full ARC-Easy in the hub's layout (--arc_source); the project's machines keep one beside the repo.
DEFAULT_ARC = REPO.parent / "shared" / "data" / "arc_easy"
TOKENIZER = REPO / "example_arc" / "sample" / "qwen_tokenizer"  # the bundled Qwen vocabulary (Qwen3's ids)

# The seed's training arguments (config/training_args/sft.yaml) minus saving, evaluation and logging to files.
SEED_TRAINING_ARGS = dict(
    per_device_train_batch_size=4,
    gradient_accumulation_steps=4,  # 4 × 4 = 16 sequences per optimizer step
    learning_rate=2.0e-5,
    lr_scheduler_type="cosine",
    warmup_steps=0.03,
    weight_decay=0.0,
    seed=42,
    dataloader_num_workers=0,
    logging_nan_inf_filter=False,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    logging_steps=1,  # the final loss is the last step's own loss
    disable_tqdm=True,
    per_device_eval_batch_size=16,
)
SEQUENCES_PER_STEP = 16
EPOCHS = 3  # the seed's num_train_epochs, for the projected train-loop time
EVAL_BATCH_SIZE = 16  # the seed's --batch_size / per_device_eval_batch_size
DEFAULT_PEAK_TFLOPS = 989.0  # dense bf16 tensor-core peak of an H100/H200 SXM; MFU is stated against --peak_tflops


@dataclass(frozen=True)
class BenchPath:
    name: str
    speed: SpeedSettings
    save_only_model: bool  # what its checkpoints hold: the seed saved the optimizer state, ours does not
    dtype: str | None = None  # None: the run's --dtype
    attn_implementation: str = "sdpa"
    save_dtype: str | None = None  # the weights' dtype in its checkpoints (None: as trained, float32)


REFERENCE = BenchPath("reference", SpeedSettings(packing=False, single_micro_batch=False), save_only_model=False)
OURS = BenchPath("ours", SpeedSettings(), save_only_model=True, save_dtype="bfloat16")  # config/model/sft_qwen.yaml
VARIANTS = {
    "bf16": replace(OURS, name="ours+bf16", dtype="bfloat16"),
    "fp32": replace(OURS, name="ours+fp32", dtype="float32"),
    "attn=eager": replace(OURS, name="ours+eager", attn_implementation="eager"),
    "compile": replace(OURS, name="ours+compile", speed=SpeedSettings(compile=True)),
    "multi_micro_batch": replace(OURS, name="ours+4x4", speed=SpeedSettings(single_micro_batch=False)),
}


# ----------------------------------------------------------------------------------------------------- data


@dataclass
class BenchData:
    train_rows: list[TokenRow]
    val_rows: list[TokenRow]  # with choice_ids: validation loss and accuracy
    test_questions: list[Question]
    description: dict


def arc_easy_data(folder: Path) -> BenchData:
    """ARC-Easy train/validation rows and test prompts from ``folder`` (the hub's layout), tokenized with the bundled
    Qwen tokenizer by slamkit's one renderer (the rows prepare_arc_tokens.py writes)."""
    tokenizer = load_tokenizer(str(TOKENIZER))

    def conversations(split: str):
        path = folder / f"ARC-Easy-{split}.jsonl"
        return [conversation_from_record(record, f"{path}:{line}") for line, record in read_jsonl(path)]

    def rows(split: str) -> list[TokenRow]:
        found = conversations(split)
        encoded = encode_examples(tokenizer, [c.user_text for c in found], [c.assistant_text for c in found])
        letters = letter_token_ids(tokenizer, [c.choice_labels for c in found], [c.id for c in found])
        return [
            check_token_row({"input_ids": e.input_ids, "labels": e.labels, "id": c.id,
                             "choice_ids": [letters[x] for x in c.choice_labels]}, c.id)
            for c, e in zip(found, encoded, strict=True)
        ]

    test = conversations("test")
    questions = questions_from_conversations(tokenizer, [c.to_record() for c in test], [c.id for c in test])
    train, val = rows("train"), rows("validation")
    return BenchData(train, val, questions, describe(f"ARC-Easy ({folder}), Qwen tokenizer", train, questions))


def synthetic_data(seed: int = 0) -> BenchData:
    """Random ids with ARC-Easy's length distribution (log-normal, median 72, p95 ~115, 46..201 tokens), when
    no ARC-Easy copy is given. Each row ends with a letter id and ``<|im_end|>``, the two supervised tokens."""
    rng = random.Random(seed)
    letters, im_end = [32, 33, 34, 35], 151645

    def length(low: int, high: int) -> int:
        return min(high, max(low, round(rng.lognormvariate(math.log(72), 0.28))))

    def rows(count: int, name: str) -> list[TokenRow]:
        made = []
        for index in range(count):
            n = length(46, 201)
            ids = [rng.randrange(151643) for _ in range(n - 2)] + [rng.choice(letters), im_end]
            made.append(TokenRow(ids, [IGNORE_INDEX] * (n - 2) + ids[-2:], f"{name}-{index}", letters))
        return made

    questions = [
        Question(id=f"synthetic-test-{index}", prompt_ids=[rng.randrange(151643) for _ in range(length(43, 213))],
                 choice_ids=letters, gold=rng.randrange(4), letters=["A", "B", "C", "D"])
        for index in range(2376)
    ]
    train = rows(2251, "train")
    return BenchData(train, rows(570, "validation"), questions,
                     describe("synthetic (ARC-Easy-like lengths; no --arc_source)", train, questions))


def describe(source: str, rows: list[TokenRow], questions: list[Question]) -> dict:
    lengths = [len(r.input_ids) for r in rows]
    return {
        "source": source, "train_rows": len(rows), "train_tokens": sum(lengths),
        "train_mean_length": round(sum(lengths) / len(rows), 2), "train_max_length": max(lengths),
        "supervised_per_row": round(sum(sum(x != IGNORE_INDEX for x in r.labels) for r in rows) / len(rows), 3),
        "test_prompts": len(questions),
        "test_mean_prompt_length": round(sum(len(q.prompt_ids) for q in questions) / len(questions), 2),
    }


# --------------------------------------------------------------------------------------- measuring helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap pages back to the OS so the next path's RSS baseline is honest
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before the "
    "path built its model",
    "hwm": "the kernel's resident-set high-water mark (VmHWM), reset before each path (/proc/self/clear_refs) after "
    "freed heap was handed back (malloc_trim); peak minus the RSS before the path built its model",
}


class PeakMemory:
    """Peak memory of one path over a baseline taken before its model exists: weights, gradients, AdamW state,
    activations and logits. None where it cannot be measured (a CPU without a resettable VmHWM)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.method: str | None = None

    def __enter__(self) -> PeakMemory:
        release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method, self._baseline = "cuda", torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/status") and _reset_peak_rss():
            self.method, self._baseline = "hwm", _status_kb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self.method == "hwm":
            self.peak_bytes = _status_kb("VmHWM") - self._baseline


class CountingCollator:
    """Wrap the trainer's collator: count what it hands the model (sequences, real and padded tokens, LM-head
    rows) and time it (the data phase)."""

    def __init__(self, collator):
        self.collator = collator
        self.examples = self.tokens = self.padded_tokens = self.head_rows = 0
        self.seconds = 0.0

    def __call__(self, features):
        begin = time.perf_counter()
        batch = self.collator(features)
        self.seconds += time.perf_counter() - begin
        self.examples += len(features)
        self.tokens += sum(len(f["input_ids"]) for f in features)
        self.padded_tokens += batch["input_ids"].numel()
        # packed rows compute the LM head at the supervised positions only; padded ones at every position
        packed = "position_ids" in batch
        self.head_rows += int((batch["labels"][0, 1:] != IGNORE_INDEX).sum()) if packed else batch["input_ids"].numel()
        return batch

    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.examples, self.tokens, self.padded_tokens, self.head_rows)


class StepClock(TrainerCallback):
    """The throughput window: optimizer steps ``warmup+1 .. warmup+steps``, on_step_end to on_step_end (collation,
    forward, backward, clipping, optimizer, scheduler, logging), CUDA synchronised at its two ends only. Then the
    phase window: ``phase_steps`` more steps, synchronised at every phase boundary (forward, backward, clipping,
    optimizer), each phase's seconds summed. On CUDA the host syncs of the throughput window are counted."""

    PHASES = ("data", "forward", "backward", "clip", "optimizer", "other")

    def __init__(self, warmup: int, steps: int, phase_steps: int, device: torch.device, counter: CountingCollator):
        self.warmup, self.steps, self.phase_steps, self.device, self.counter = warmup, steps, phase_steps, device, counter
        self.phases = dict.fromkeys(self.PHASES, 0.0)
        self.in_phase_window = False
        self.syncs: int | None = None
        self._marks: dict[str, float] = {}
        self._warnings = None

    def now(self) -> float:
        if self.in_phase_window:
            synchronize(self.device)
        return time.perf_counter()

    def install(self, trainer) -> None:
        """Hooks for the phase window: the model's forward and the trainer's training_step."""
        model, training_step = trainer.model, trainer.training_step

        def forward_begin(*_):
            self._marks["forward"] = self.now()

        def forward_end(*_):
            if self.in_phase_window:
                self.phases["forward"] += self.now() - self._marks["forward"]

        def timed_training_step(*args, **kwargs):
            begin = self.now()
            forward_before = self.phases["forward"]
            loss = training_step(*args, **kwargs)
            end = self.now()
            if self.in_phase_window:  # backward = the step's forward+backward minus its forward
                self.phases["backward"] += end - begin - (self.phases["forward"] - forward_before)
            self._marks["backward_end"] = end
            return loss

        model.register_forward_pre_hook(forward_begin)
        model.register_forward_hook(forward_end)
        trainer.training_step = timed_training_step

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.train_begin = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._marks["optimizer"] = self.now()
        if self.in_phase_window:
            self.phases["clip"] += self._marks["optimizer"] - self._marks["backward_end"]

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.in_phase_window:
            self.phases["optimizer"] += self.now() - self._marks["optimizer"]

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == self.warmup:
            synchronize(self.device)
            self.window_begin, self.counts_begin = time.perf_counter(), self.counter.snapshot()
            self._sync_count(start=True)
        elif step == self.warmup + self.steps:
            synchronize(self.device)
            self.window_end, self.counts_end = time.perf_counter(), self.counter.snapshot()
            self._sync_count(start=False)
            self.in_phase_window = self.phase_steps > 0
            self.phase_begin, self.collate_begin = self.now(), self.counter.seconds
        elif step == self.warmup + self.steps + self.phase_steps and self.in_phase_window:
            self.in_phase_window = False
            synchronize(self.device)
            total = time.perf_counter() - self.phase_begin
            self.phases["data"] = self.counter.seconds - self.collate_begin
            measured = sum(self.phases[name] for name in self.PHASES if name != "other")
            self.phases["other"] = total - measured  # dataloader fetch and transfer, scheduler, zero_grad, logging
            self.phases = {name: value / self.phase_steps for name, value in self.phases.items()}

    def _sync_count(self, start: bool) -> None:
        """Count the CUDA host syncs of the throughput window (torch's sync debug mode warns at each one)."""
        if self.device.type != "cuda":
            return
        if start:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(None, None, None)
            self.syncs = sum("synchronizing" in str(w.message) for w in self._caught)


def directory_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def save_checkpoint(trainer, device: torch.device) -> dict:
    """One checkpoint as the path saves it (the Trainer's own _save_checkpoint): seconds and bytes; for a path that
    saves its weights in another dtype, the same checkpoint with the weights as trained, for comparison."""

    def save() -> dict:
        synchronize(device)
        begin = time.perf_counter()
        trainer._save_checkpoint(trainer.model, None)
        seconds = time.perf_counter() - begin
        written = next(Path(trainer.args.output_dir).glob("checkpoint-*"))
        result = {"seconds": seconds, "bytes": directory_bytes(written), "files": sorted(p.name for p in written.iterdir())}
        shutil.rmtree(written)
        return result

    result = save()
    if trainer.save_dtype is not None:
        result["weights_dtype"] = str(trainer.save_dtype).removeprefix("torch.")
        trainer.save_dtype, dtype = None, trainer.save_dtype
        result["as_trained"] = save()
        trainer.save_dtype = dtype
    return result


# ------------------------------------------------------------------------------------------ training paths


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())  # tied LM head counted once
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    untied_head = 0 if head is model.get_input_embeddings().weight else head.numel()  # its FLOPs are counted apart
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding - untied_head}


def path_arguments(path: BenchPath, output_dir: str, device: torch.device, dtype: str, max_steps: int):
    settings = training_arguments_settings(
        **SEED_TRAINING_ARGS, output_dir=output_dir, use_cpu=device.type == "cpu", bf16=dtype == "bfloat16",
        max_steps=max_steps, save_only_model=path.save_only_model,
    )
    # A bf16 path is timed in bf16 on any CPU: the shipped config's fallback to float32 on CPUs without native bf16
    # (speed.cpu_bf16=auto) is what it measures against, not something to apply to itself.
    speed = replace(path.speed, cpu_bf16="force") if dtype == "bfloat16" else path.speed
    return build_training_arguments(settings, speed, has_validation=False)


def build_path_model(path: BenchPath, config, opts):
    """The model a path trains: the shape's seeded random weights, or ``--model``'s real ones (float32)."""
    if opts.model is None:
        return random_model(config, opts.seed, attn_implementation=path.attn_implementation)
    return load_causal_lm(str(opts.model), torch.float32, path.attn_implementation)


def run_training_path(path: BenchPath, config, data: BenchData, device, opts, output_dir: str) -> tuple[dict, object]:
    """Train warm-up + timed + phase steps along ``path``; return its figures and the trained trainer."""
    dtype = path.dtype or opts.dtype
    folder = Path(output_dir) / path.name
    args = path_arguments(path, str(folder), device, dtype, opts.warmup + opts.steps + opts.phase_steps + opts.profile)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with PeakMemory(device) as memory:
        model = build_path_model(path, config, opts)
        trainer = build_trainer(
            model, args, data.train_rows, speed=path.speed,
            save_dtype=getattr(torch, path.save_dtype) if path.save_dtype else None,
        )
        trainer.remove_callback(PrinterCallback)  # no per-step log lines in the benchmark's output
        trainer.remove_callback(ProgressCallback)
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        clock = StepClock(opts.warmup, opts.steps, opts.phase_steps, device, counter)
        clock.install(trainer)
        trainer.add_callback(clock)
        profiler = ProfileSteps(opts.warmup + opts.steps + opts.phase_steps, opts.profile, device) if opts.profile else None
        if profiler:
            trainer.add_callback(profiler)
        wall = time.perf_counter()
        trainer.train()
        synchronize(device)
        wall = time.perf_counter() - wall
    window = clock.window_end - clock.window_begin
    examples, tokens, padded, head_rows = (e - b for e, b in zip(clock.counts_end, clock.counts_begin))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    counts = parameter_counts(trainer.model)
    # Model FLOPs of the timed window: 6·N·tokens for the non-embedding weights (real tokens) + the LM head rows
    # this path computes (every padded position for the reference; the supervised ones for ours).
    flops = 6 * counts["non_embedding"] * tokens + 6 * config.hidden_size * config.vocab_size * head_rows
    result = {
        "micro_batch": f"{trainer.args.per_device_train_batch_size} per device x "
        f"{trainer.args.gradient_accumulation_steps} accumulation",
        "dtype": dtype + (" autocast, float32 weights" if dtype == "bfloat16" else ""),
        "attn_implementation": path.attn_implementation,
        "seconds_per_step": window / opts.steps,
        "tokens_per_s": tokens / window,
        "examples_per_s": examples / window,
        "timed_window_s": window,
        "warmup_s": clock.window_begin - clock.train_begin,
        "train_call_s": wall,
        "examples": examples, "tokens": tokens, "padded_tokens": padded, "lm_head_rows": head_rows,
        "peak_memory_mb": None if memory.peak_bytes is None else memory.peak_bytes / 2**20,
        "memory_method": MEMORY_METHODS.get(memory.method, "unavailable"),
        "final_loss": losses[opts.warmup + opts.steps - 1],  # the timed window's last step (phase steps follow)
        "losses": losses,
        "phase_seconds_per_step": clock.phases if opts.phase_steps else None,
        "host_syncs_per_step": None if clock.syncs is None else clock.syncs / opts.steps,
        "model_flops": flops,
        "mfu": flops / window / (opts.peak_tflops * 1e12) if device.type == "cuda" else None,
        "load_1min_before_after": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "projected_3_epochs_s": window / opts.steps * EPOCHS * math.ceil(len(data.train_rows) / SEQUENCES_PER_STEP),
    }
    if opts.checkpoint:
        result["checkpoint"] = save_checkpoint(trainer, device)
    if profiler:
        result["profile"] = profiler.table()
    return result, trainer


class ProfileSteps(TrainerCallback):
    """torch.profiler over the last ``steps`` optimizer steps of the run (after the timed and phase windows)."""

    def __init__(self, first_step: int, steps: int, device: torch.device):
        from torch.profiler import ProfilerActivity, profile

        self.first_step, self.steps, self.device = first_step, steps, device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler = profile(activities=activities)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first_step:
            synchronize(self.device)
            self.profiler.start()
        elif state.global_step == self.first_step + self.steps:
            synchronize(self.device)
            self.profiler.stop()

    def table(self, top: int = 12) -> list[dict]:
        """The top ops by self time (device time on CUDA), per step."""
        key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        events = sorted(self.profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in events)
        return [{"op": e.key, "self_ms_per_step": getattr(e, key) / 1e3 / self.steps, "share": getattr(e, key) / total,
                 "calls_per_step": e.count / self.steps} for e in events[:top]]


# ------------------------------------------------------------------------------------ validation, scoring


# A validation prediction that differs between the one-pass and the two-pass validation (a "flip") is explained by
# bf16 when the two-pass scoring put its best and second-best letter closer than this, in log-probability (the
# letters' logit difference). bf16 keeps 8 significant bits: a logit in [4, 8) is held to an ulp of 2^-5, and two
# such logits each off by one ulp, in opposite directions, move their gap by 2^-4. The paths' bf16 kernels round
# differently (packed row vs padded batch), so a pair closer than that may come out in either order; the letter
# logits of an untrained or briefly trained model are well below 4, so this is generous there. float32 allows none.
FLIP_TOLERANCE = 2**-4


def time_validation(trainer, data: BenchData, device) -> dict:
    """One evaluation of the validation rows, two ways, on the same trained model:
    before: the Trainer's pass for eval_loss, then a categorical-scoring pass (score_questions) for the accuracy;
    now: one pass giving both (SFTTrainer.compute_loss returns each row's answer with the loss).
    Besides the seconds, each row's prediction both ways: ``flips`` rows differ, ``allowed_flips`` of them by a
    two-pass margin below FLIP_TOLERANCE (what bf16's rounding explains)."""
    args = trainer.args
    model = trainer.model
    questions = [
        Question(id=row.id or str(i), prompt_ids=row.input_ids[: row.prompt_length], choice_ids=row.choice_ids,
                 gold=row.choice_ids.index(row.input_ids[row.prompt_length]))
        for i, row in enumerate(data.val_rows)
    ]
    loss_only = [replace(row, choice_ids=None) for row in data.val_rows]
    result = {}
    for name, rows in (("before", loss_only), ("now", data.val_rows)):
        evaluator = build_trainer(model, args, data.train_rows[:1], rows)
        evaluator.remove_callback(PrinterCallback)
        synchronize(device)
        begin = time.perf_counter()
        if name == "before":
            metrics = evaluator.evaluate()
            scored = score_questions(model, questions, args.per_device_eval_batch_size, progress=False)
            metrics["eval_accuracy"] = sum(p.correct for p in scored) / len(scored)
        else:  # evaluate()'s own pass (evaluation_loop), keeping the per-row answers it computes anyway
            output = evaluator.predict(evaluator.eval_dataset, metric_key_prefix="eval")
            metrics = output.metrics
        synchronize(device)
        result[name] = {"seconds": time.perf_counter() - begin, "eval_loss": metrics["eval_loss"],
                        "eval_accuracy": metrics["eval_accuracy"]}
    one_pass, gold = (list(map(int, column)) for column in output.predictions)  # (answer_pred, answer_gold), row order
    if gold != [q.gold for q in questions]:
        raise RuntimeError("the one-pass validation's rows are not in the two-pass order (their gold answers differ)")
    flips = validation_flips(scored, one_pass)
    result["rows"] = len(data.val_rows)
    result["speedup"] = result["before"]["seconds"] / result["now"]["seconds"]
    result.update(flips=len(flips), allowed_flips=sum(f["allowed"] for f in flips), flip_tolerance=FLIP_TOLERANCE,
                  flipped=flips[:20])
    return result


def validation_flips(two_pass: list[Prediction], one_pass: list[int]) -> list[dict]:
    """The rows whose one-pass answer differs from the two-pass one, each ``allowed`` when the two-pass scoring's
    best and second-best letters are within FLIP_TOLERANCE in log-probability (bf16's rounding can swap them).

    >>> from slamkit.evaluation import Prediction
    >>> two = [Prediction("a", 0, 0, [0.5, 0.49, 0.01]), Prediction("b", 1, 1, [0.1, 0.9]), Prediction("c", 0, 0, [1.0, 0.0])]
    >>> [(f["id"], f["allowed"]) for f in validation_flips(two, [1, 0, 1])]
    [('a', True), ('b', False), ('c', False)]
    """
    flips = []
    for prediction, answer in zip(two_pass, one_pass, strict=True):
        if prediction.pred != answer:
            best, second = sorted(prediction.probs, reverse=True)[:2]
            gap = math.log(best / second) if second > 0 else math.inf
            flips.append({"id": prediction.id, "two_pass": prediction.pred, "one_pass": answer,
                          "two_pass_logprob_gap": gap, "allowed": gap < FLIP_TOLERANCE})
    return flips


def time_scoring(model, questions: list[Question], batch_size: int, fast: bool, device) -> tuple[dict, list]:
    score_questions(model, questions[:batch_size], batch_size, progress=False, fast=fast)  # warm-up (untimed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    begin = time.perf_counter()
    predictions = score_questions(model, questions, batch_size, progress=False, fast=fast)
    synchronize(device)
    seconds = time.perf_counter() - begin
    return {
        "seconds": seconds, "prompts_per_s": len(questions) / seconds,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }, predictions


def time_evaluation(model, questions: list[Question], opts, device) -> dict:
    """Test-prompt scoring both ways on ``model`` (bf16 weights when the run is bf16): seconds and agreement."""
    model = model.to(torch.bfloat16 if opts.dtype == "bfloat16" else torch.float32).eval()
    evaluation: dict = {"prompts": len(questions), "model": "ours after training", "dtype": opts.dtype}
    evaluation["reference"], slow = time_scoring(model, questions, opts.eval_batch_size, False, device)
    evaluation["ours"], fast = time_scoring(model, questions, opts.eval_batch_size, True, device)
    evaluation["speedup"] = evaluation["reference"]["seconds"] / evaluation["ours"]["seconds"]
    evaluation["disagreements"] = sum(a.pred != b.pred for a, b in zip(slow, fast, strict=True))
    evaluation["max_prob_diff"] = max(
        abs(x - y) for a, b in zip(slow, fast, strict=True) for x, y in zip(a.probs, b.probs, strict=True)
    )
    return evaluation


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "qwen3-0.6b"], default="qwen3-0.6b")
    parser.add_argument("--model", type=Path, default=None,
                        help="a real model folder to time instead of --shape's random weights (e.g. one built by "
                        "python -m slamkit.real_models); its tokenizer must give the Qwen ids the data uses")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bf16 autocast (float32 weights) on CUDA, float32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 8 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on CPU, 5 on CUDA)")
    parser.add_argument("--phase_steps", type=int, default=1, help="steps after the window timed phase by phase")
    parser.add_argument("--eval_prompts", type=int, default=None,
                        help="test prompts to score, first N in file order (default: all 2,376 on CUDA, 256 on CPU)")
    parser.add_argument("--val_rows", type=int, default=None, help="validation rows (default all 570 on CUDA, 64 on CPU)")
    parser.add_argument("--eval_batch_size", type=int, default=EVAL_BATCH_SIZE, help="the seed's 16 by default")
    parser.add_argument("--paths", default="ours,reference",
                        help=f"comma-separated, timed in this order; ours is required: ours, reference, {', '.join(VARIANTS)}")
    parser.add_argument("--no_checkpoint", dest="checkpoint", action="store_false", help="skip the checkpoint save")
    parser.add_argument("--profile", type=int, default=0, help="torch.profiler over N more steps per path (after the others)")
    parser.add_argument("--check", action="store_true",
                        help="fail unless the paths' losses agree and float32 predictions are identical")
    parser.add_argument("--threads", default="auto",
                        help="CPU: torch intra-op threads, or auto: every core on an idle machine, 1 on a busy one")
    parser.add_argument("--peak_tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                        help="the accelerator's peak for MFU (989 = H100/H200 SXM dense bf16)")
    parser.add_argument("--arc_source", type=Path, default=DEFAULT_ARC,
                        help="a local ARC-Easy in the hub's layout (ARC-Easy-{train,validation,test}.jsonl); "
                        "without one, synthetic rows with ARC-Easy's lengths")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed (the data order uses 42)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    on_cpu = args.device == "cpu"
    args.steps = args.steps if args.steps is not None else (8 if on_cpu else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if on_cpu else 5)
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        parser.error(f"--threads must be auto or a positive integer, got {args.threads!r}")
    if args.steps < 1 or args.warmup < 1 or args.phase_steps < 0:
        parser.error("--steps and --warmup must be at least 1 (the first step is never timed), --phase_steps >= 0")
    args.paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in args.paths if p not in ("ours", "reference", *VARIANTS)]
    if unknown or "ours" not in args.paths:
        parser.error(f"--paths must include ours; unknown {unknown}; choose from ours, reference, {', '.join(VARIANTS)}")
    if args.eval_prompts is None:
        args.eval_prompts = 256 if on_cpu else None
    if args.val_rows is None:
        args.val_rows = 64 if on_cpu else None
    return args


BUSY_LOAD = 0.5  # 1-minute load average above which another process is taking CPU time


def choose_threads(threads: str, device: torch.device) -> str:
    """Set torch's intra-op threads for a CPU run; return why, for the report.

    Intra-op parallel regions end at a barrier: when another process holds one of the cores, every
    multi-threaded op waits for its descheduled worker (milliseconds each, thousands of ops per step). On the
    project's shared 2-core machines both paths ran faster on 1 thread than on 2 whenever the load average
    was above ~2, so ``auto`` uses 1 thread on a busy machine and torch's default (every core) on an idle one.
    """
    if device.type != "cpu":
        return "not a CPU run"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return f"--threads {threads}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > BUSY_LOAD:
        torch.set_num_threads(1)
        return f"auto: 1-min load average {load:.2f}, the cores are shared, so 1 thread; --threads {cores} to override"
    return f"auto: idle machine (1-min load average {load:.2f}), torch's default; --threads 1 to override"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    train, evaluation = report["train"], report["eval"]
    print()
    print(f"slamkit SFT benchmark: shape={report['shape']} ({report['parameters']['total'] / 1e6:.1f}M params, "
          f"{report['parameters']['non_embedding'] / 1e6:.1f}M non-embedding) device={report['device']} "
          f"({report['device_name']}) dtype={report['dtype']} warmup={report['warmup']} steps={report['steps']}")
    if report["device"] == "cpu":
        print(f"cpu: {report['cpu_threads']} torch threads on {report['cpu_cores']} cores ({report['cpu_threads_reason']})")
    print(f"data: {report['data']['source']}: {report['data']['train_rows']} rows, mean "
          f"{report['data']['train_mean_length']} tokens")
    print()
    header = (f"{'train path':<15}{'micro-batch':<31}{'s/step':>9}{'tokens/s':>10}{'peak MB':>9}{'final loss':>12}"
              f"{'MFU %':>7}{'syncs/step':>11}")
    print(header)
    print("-" * len(header))
    for name, row in train["paths"].items():
        print(f"{name:<15}{row['micro_batch']:<31}{row['seconds_per_step']:>9.4f}{row['tokens_per_s']:>10.0f}"
              f"{fmt(row['peak_memory_mb'], '.0f'):>9}{row['final_loss']:>12.6f}{fmt(row['mfu'] and 100 * row['mfu'], '.1f'):>7}"
              f"{fmt(row['host_syncs_per_step'], '.1f'):>11}")
    if "speedup" in train:
        print(f"train speed-up (reference s/step / ours): {train['speedup']:.2f}x; peak memory ours/reference: "
              f"{fmt(train['memory_ratio'], '.3f')}; loss relative difference: final {train['final_loss_rel_diff']:.1e}, "
              f"largest over the timed steps {train['loss_curve_max_rel_diff']:.1e}")
    print(f"projected {EPOCHS}-epoch train loop: " + ", ".join(
        f"{name} {row['projected_3_epochs_s']:.1f} s" for name, row in train["paths"].items()))
    for name, row in train["paths"].items():
        if name in ("reference", "ours"):
            continue
        ours = train["paths"]["ours"]
        print(f"variant {name}: {ours['seconds_per_step'] / row['seconds_per_step']:.2f}x ours' speed, final loss "
              f"{row['final_loss']:.6f} (ours {ours['final_loss']:.6f}), peak {fmt(row['peak_memory_mb'], '.0f')} MB")
    phases = {name: row["phase_seconds_per_step"] for name, row in train["paths"].items() if row["phase_seconds_per_step"]}
    if phases:
        print()
        print(f"{'seconds per step':<15}" + "".join(f"{p:>11}" for p in StepClock.PHASES) + f"{'total':>11}")
        for name, row in phases.items():
            print(f"{name:<15}" + "".join(f"{row[p]:>11.4f}" for p in StepClock.PHASES) + f"{sum(row.values()):>11.4f}")
    saves = {name: row["checkpoint"] for name, row in train["paths"].items() if "checkpoint" in row}
    if saves:
        print()
        for name, save in saves.items():
            weights = f"weights {save.get('weights_dtype', 'as trained')}"
            print(f"checkpoint {name:<11} {save['seconds']:7.2f} s {save['bytes'] / 1e6:9.1f} MB  {weights}; "
                  f"{', '.join(save['files'])}")
            if "as_trained" in save:
                print(f"  {'':<20} {save['as_trained']['seconds']:7.2f} s {save['as_trained']['bytes'] / 1e6:9.1f} MB  "
                      "the same with the weights as trained (float32)")
    if "validation" in report:
        val = report["validation"]
        print()
        print(f"validation ({val['rows']} rows): before (loss pass + scoring pass) {val['before']['seconds']:.2f} s, now "
              f"(one pass) {val['now']['seconds']:.2f} s, {val['speedup']:.2f}x; eval_loss {val['before']['eval_loss']:.6f} "
              f"vs {val['now']['eval_loss']:.6f}, eval_accuracy {val['before']['eval_accuracy']:.4f} vs "
              f"{val['now']['eval_accuracy']:.4f}; predictions that differ: {val['flips']} ({val['allowed_flips']} with a "
              f"two-pass margin below {val['flip_tolerance']:g}, bf16's rounding)")
    print()
    print(f"{'eval path':<14}{'prompts':>9}{'seconds':>10}{'prompts/s':>11}")
    for name in ("reference", "ours"):
        row = evaluation[name]
        print(f"{name:<14}{evaluation['prompts']:>9}{row['seconds']:>10.3f}{row['prompts_per_s']:>11.1f}")
    print(f"eval speed-up: {evaluation['speedup']:.1f}x; predictions that differ: {evaluation['disagreements']}"
          f"/{evaluation['prompts']}; max |prob difference| {evaluation['max_prob_diff']:.2e}")
    for name, row in train["paths"].items():
        if row.get("profile"):
            print(f"\nprofile {name} (self time per step, top {len(row['profile'])}):")
            for op in row["profile"]:
                print(f"  {op['op'][:48]:<48} {op['self_ms_per_step']:>10.1f} ms {100 * op['share']:>5.1f}% "
                      f"{op['calls_per_step']:>8.0f} calls")
    print(f"memory: {train['paths']['ours']['memory_method']}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    transformers.logging.set_verbosity_error()
    device = torch.device(opts.device)
    threads_reason = choose_threads(opts.threads, device)
    started = time.perf_counter()
    config = load_model_config(str(opts.model)) if opts.model else qwen3_config(opts.shape)
    have_arc = all((opts.arc_source / f"ARC-Easy-{split}.jsonl").is_file() for split in ("train", "validation", "test"))
    data = arc_easy_data(opts.arc_source) if have_arc else synthetic_data()
    data.val_rows = data.val_rows[: opts.val_rows] if opts.val_rows else data.val_rows
    questions = data.test_questions[: opts.eval_prompts] if opts.eval_prompts else data.test_questions
    print(f"data ready in {time.perf_counter() - started:.1f} s: {data.description['source']}", flush=True)
    report: dict = {
        "shape": str(opts.model) if opts.model else opts.shape, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(), "cpu_threads_reason": threads_reason,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "dtype": opts.dtype + (" autocast, float32 weights" if opts.dtype == "bfloat16" else ""),
        "steps": opts.steps, "warmup": opts.warmup, "phase_steps": opts.phase_steps,
        "eval_batch_size": opts.eval_batch_size, "torch": torch.__version__, "transformers": transformers.__version__,
        "data": data.description, "mfu_peak_tflops": opts.peak_tflops if device.type == "cuda" else None,
    }
    paths = {p: {"ours": OURS, "reference": REFERENCE}.get(p) or VARIANTS[p] for p in opts.paths}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="slamkit_bench_") as output_dir:
        for key, path in paths.items():
            print(f"training: {path.name} ({opts.warmup} + {opts.steps} + {opts.phase_steps} steps) ...", flush=True)
            results[path.name], trainer = run_training_path(path, config, data, device, opts, output_dir)
            if path is OURS:  # validation and scoring use ours' trained model, before the next path needs memory
                report["parameters"] = parameter_counts(trainer.model)
                trainer.accelerator.free_memory()
                trainer.optimizer = trainer.lr_scheduler = None
                trainer.model.zero_grad(set_to_none=True)
                print(f"validation: {len(data.val_rows)} rows, two passes and one ...", flush=True)
                report["validation"] = time_validation(trainer, data, device)
                print(f"scoring {len(questions)} test prompts both ways ...", flush=True)
                report["eval"] = time_evaluation(trainer.model, questions, opts, device)
            del trainer
            release_memory(device)
    ours = results["ours"]
    train: dict = {"paths": results}
    if "reference" in results:
        ref = results["reference"]
        train.update({
            "speedup": ref["seconds_per_step"] / ours["seconds_per_step"],
            "memory_ratio": ours["peak_memory_mb"] / ref["peak_memory_mb"]
            if ours["peak_memory_mb"] and ref["peak_memory_mb"] else None,
            "final_loss_rel_diff": abs(ours["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"]),
            "loss_curve_max_rel_diff": max(
                abs(a - b) / abs(b) for a, b in zip(ours["losses"][: opts.warmup + opts.steps],
                                                    ref["losses"][: opts.warmup + opts.steps], strict=True)
            ),
        })
    report["train"] = train
    report["wall_s"] = time.perf_counter() - started

    print_report(report)
    print(f"total wall time {report['wall_s']:.1f} s")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {opts.json}")
    if opts.check:
        # float32: the paths differ only in kernel shapes (padding, which logits rows); bf16 autocast rounds each
        # matmul output to 8 significant bits differently in padded and packed kernels: one bf16 ulp (2^-8).
        tolerance = 1e-5 if opts.dtype == "float32" else 2**-8
        failures = []
        evaluation = report["eval"]
        if train.get("loss_curve_max_rel_diff", 0.0) > tolerance:
            failures.append(f"loss curves differ by {train['loss_curve_max_rel_diff']:.1e} (> {tolerance:g})")
        val = report["validation"]
        if opts.dtype == "float32" and (val["flips"] or val["before"]["eval_accuracy"] != val["now"]["eval_accuracy"]):
            failures.append(f"float32 validation: {val['flips']} of {val['rows']} one-pass predictions differ from the "
                            f"two-pass ones (accuracy {val['now']['eval_accuracy']:.4f} vs {val['before']['eval_accuracy']:.4f})")
        elif val["flips"] > val["allowed_flips"]:
            failures.append(f"bf16 validation: {val['flips'] - val['allowed_flips']} of {val['rows']} one-pass predictions "
                            f"differ from the two-pass ones by more than rounding (two-pass margin >= {FLIP_TOLERANCE:g})")
        if opts.dtype == "float32" and evaluation["disagreements"]:
            failures.append(f"{evaluation['disagreements']} float32 predictions differ between the scoring paths")
        validation = ("validation predictions equal" if not val["flips"] else
                      f"{val['flips']} of {val['rows']} validation predictions flipped, each within bf16's rounding")
        scoring = "scoring predictions equal" if opts.dtype == "float32" else "bf16 scoring not compared"
        print("check: " + ("; ".join(failures) if failures else f"PASSED (losses within {tolerance:g}, {validation}, "
                                                                   f"{scoring})"))
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
