"""Benchmark: the seed's training and evaluation path against slamkit's fast paths, in one process.

    python bench/bench_sft.py --shape tiny --device cpu --json bench_tiny.json --check
    python bench/bench_sft.py --shape qwen3-0.6b --device cuda --json bench_gpu.json --check

Both training paths run the product code: ``slamkit.training.SFTTrainer`` with the arguments built by
``slamkit.training.training_arguments``, from the same random initialisation, on the same token rows in the
same (seeded) order, for ``--warmup`` untimed + ``--steps`` timed optimizer steps:

- reference: the seed's settings: 4 per device × 4 accumulation, right-padded batches (``PaddedCollator``),
  logits at every position through the model's own loss (``SpeedSettings(packing=False, single_micro_batch=False)``);
- ours: the shipped defaults: one padding-free micro-batch of 16 (``PackedCollator``), LM head only at the
  supervised positions (``SpeedSettings()``).

Evaluation times ``score_questions(fast=False)`` (file order, full logits) against ``fast=True`` on the
ARC-Easy test prompts. ``--check`` asserts both training paths give the same loss and gradients on one batch.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import os
import platform
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from slamkit.arc import conversation_from_record
from slamkit.chatml import IGNORE_INDEX, encode_examples
from slamkit.data import PackedCollator, PaddedCollator, TokenDataset, TokenRow, check_token_row
from slamkit.evaluation import Question, questions_from_conversations, score_questions
from slamkit.jsonl import read_jsonl
from slamkit.model import load_tokenizer
from slamkit.training import SFTTrainer, SpeedSettings, training_arguments

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # full ARC-Easy and the Qwen tokenizer, beside the repo on the project's machines

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
)
SEQUENCES_PER_STEP = 16
EPOCHS = 3  # the seed's num_train_epochs, for the projected train-loop time
EVAL_BATCH_SIZE = 16  # the seed's --batch_size / per_device_eval_batch_size

# Dense bf16 tensor-core peak of an H100/H200 SXM (989.4 TFLOP/s); MFU is stated against --peak_tflops.
DEFAULT_PEAK_TFLOPS = 989.0


# --------------------------------------------------------------------------------------------- model shapes


def model_config(shape: str) -> Qwen3Config:
    """``qwen3-0.6b``: Qwen3-0.6B's real shape (random weights); ``tiny``: 2 layers of width 64, real vocabulary."""
    common = dict(vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, attention_dropout=0.0)
    if shape == "qwen3-0.6b":
        return Qwen3Config(
            hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            intermediate_size=3072, max_position_embeddings=40960, **common,
        )
    if shape == "tiny":
        return Qwen3Config(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, max_position_embeddings=40960, **common,
        )
    raise ValueError(f"unknown shape {shape!r}")


def build_model(config: Qwen3Config, seed: int):
    """The same random float32 model every call (seeded init), sdpa attention, on the CPU."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())  # tied LM head counted once
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------------- data


@dataclass
class BenchData:
    train_rows: list[TokenRow]
    test_questions: list[Question]
    pad_id: int
    description: dict


def arc_easy_data(shared: Path) -> BenchData:
    """ARC-Easy train rows and test prompts, tokenized with ../shared/tokenizers/qwen2 by slamkit's one renderer."""
    tokenizer = load_tokenizer(str(shared / "tokenizers" / "qwen2"))
    folder = shared / "data" / "arc_easy"

    def conversations(split: str):
        path = folder / f"ARC-Easy-{split}.jsonl"
        return [conversation_from_record(record, f"{path}:{line}") for line, record in read_jsonl(path)]

    train = conversations("train")
    encoded = encode_examples(
        tokenizer, [c.user_text for c in train], [c.assistant_text for c in train], [c.id for c in train]
    )
    rows = [
        check_token_row({"input_ids": e.input_ids, "labels": e.labels, "id": c.id}, c.id)
        for c, e in zip(train, encoded, strict=True)
    ]
    test = conversations("test")
    questions = questions_from_conversations(tokenizer, [c.to_record() for c in test], [c.id for c in test])
    description = describe("ARC-Easy (../shared), qwen2 tokenizer", rows, questions)
    return BenchData(rows, questions, tokenizer.pad_token_id, description)


def synthetic_data(seed: int = 0) -> BenchData:
    """Random ids with ARC-Easy's length distribution (log-normal, median 72, p95 ~115, 46..201 tokens).

    Used when ../shared is absent. Each row ends with a letter id and ``<|im_end|>``, the two supervised tokens.
    """
    rng = random.Random(seed)
    letters, im_end, pad = [32, 33, 34, 35], 151645, 151643

    def length(low: int, high: int) -> int:
        return min(high, max(low, round(rng.lognormvariate(math.log(72), 0.28))))

    rows = []
    for index in range(2251):
        n = length(46, 201)
        prompt = [rng.randrange(151643) for _ in range(n - 2)]
        ids = prompt + [rng.choice(letters), im_end]
        rows.append(TokenRow(input_ids=ids, labels=[IGNORE_INDEX] * (n - 2) + ids[-2:], id=f"synthetic-{index}"))
    questions = [
        Question(
            id=f"synthetic-test-{index}", prompt_ids=[rng.randrange(151643) for _ in range(length(43, 213))],
            choice_ids=letters, gold=rng.randrange(4), letters=["A", "B", "C", "D"],
        )
        for index in range(2376)
    ]
    description = describe("synthetic (ARC-Easy-like lengths; ../shared absent)", rows, questions)
    return BenchData(rows, questions, pad, description)


def describe(source: str, rows: list[TokenRow], questions: list[Question]) -> dict:
    lengths = [len(r.input_ids) for r in rows]
    return {
        "source": source,
        "train_rows": len(rows),
        "train_tokens": sum(lengths),
        "train_mean_length": round(sum(lengths) / len(rows), 2),
        "train_max_length": max(lengths),
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


CPU_MEMORY_METHOD = (
    "CPU: the kernel's resident-set high-water mark (VmHWM in /proc/self/status), reset before each path "
    "(echo 5 > /proc/self/clear_refs) after freed heap was handed back (malloc_trim); peak minus the RSS just "
    "before the path built its model"
)
CPU_SAMPLED_MEMORY_METHOD = (
    "CPU: resident set size (/proc/self/statm) sampled every 2 ms by a thread (VmHWM could not be reset here); "
    "peak minus the RSS just before the path built its model; the sampling thread slows small-op CPU paths"
)
CUDA_MEMORY_METHOD = (
    "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated just before "
    "the path built its model"
)


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


def cpu_memory_method() -> str:
    return CPU_MEMORY_METHOD if os.path.exists("/proc/self/status") and _reset_peak_rss() else CPU_SAMPLED_MEMORY_METHOD


class PeakMemory:
    """Peak memory of one path over a baseline taken before its model exists: weights, gradients, AdamW
    state, activations and logits (how it is measured: the *_MEMORY_METHOD texts)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _status_kb("VmRSS"))

    def __enter__(self) -> PeakMemory:
        release_memory(self.device)
        self._baseline = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/status"):
            self._hwm = _reset_peak_rss()
            self._baseline = self._max = _status_kb("VmRSS")
            if not self._hwm:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._baseline is None:
            return
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self._hwm:
            self.peak_bytes = _status_kb("VmHWM") - self._baseline
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._max, _status_kb("VmRSS")) - self._baseline


class CountingCollator:
    """Wrap a collator and count what it hands the model: sequences, real and padded tokens, LM-head rows."""

    def __init__(self, collator):
        self.collator = collator
        self.examples = self.tokens = self.padded_tokens = self.head_rows = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.examples += len(features)
        self.tokens += sum(len(f["input_ids"]) for f in features)
        self.padded_tokens += batch["input_ids"].numel()
        # padded batches compute the LM head at every position, pads included
        head = batch["logits_positions"] if "logits_positions" in batch else batch["input_ids"]
        self.head_rows += head.numel()
        return batch

    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.examples, self.tokens, self.padded_tokens, self.head_rows)


class StepTimer(TrainerCallback):
    """Time optimizer steps ``warmup+1 .. warmup+steps`` (on_step_end to on_step_end: collation, forward,
    backward, clipping, optimizer, logging); CUDA is synchronised at the two window boundaries only."""

    def __init__(self, warmup: int, steps: int, device: torch.device, counter: CountingCollator):
        self.warmup, self.steps, self.device, self.counter = warmup, steps, device, counter
        self.step_begin = 0.0
        self.step_seconds: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.train_begin = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_seconds.append(now - self.step_begin)
        if state.global_step in (self.warmup, self.warmup + self.steps):
            synchronize(self.device)
            now = time.perf_counter()
            if state.global_step == self.warmup:
                self.window_begin, self.counts_begin = now, self.counter.snapshot()
            else:
                self.window_end, self.counts_end = now, self.counter.snapshot()


# ------------------------------------------------------------------------------------------ training paths


@dataclass(frozen=True)
class BenchPath:
    name: str
    speed: SpeedSettings


REFERENCE = BenchPath("reference", SpeedSettings(packing=False, single_micro_batch=False))
OURS = BenchPath("ours", SpeedSettings())
OURS_COMPILED = BenchPath("ours_compiled", SpeedSettings(compile=True))


def make_trainer(path: BenchPath, model, rows, pad_id: int, args_kwargs: dict, callbacks=(), counter=None):
    """What ``slamkit.training.train`` builds, minus loading and saving: the product's arguments and collator."""
    args = training_arguments(args_kwargs, path.speed, has_validation=False)
    collator = PackedCollator() if path.speed.packing else PaddedCollator(pad_id)
    if counter is not None:
        counter.collator = collator
        collator = counter
    if path.speed.compile:  # as in train(): regional compilation of each decoder layer
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=TokenDataset(rows), data_collator=collator, callbacks=list(callbacks)
    )
    trainer.remove_callback(PrinterCallback)  # no per-step log lines in the benchmark's output
    return trainer


def training_kwargs(output_dir: str, device: torch.device, bf16: bool, max_steps: int) -> dict:
    device_args = {"use_cpu": device.type == "cpu", "bf16": bf16}
    return {**SEED_TRAINING_ARGS, **device_args, "output_dir": output_dir, "max_steps": max_steps}


def run_training_path(
    path: BenchPath, config, data: BenchData, device, bf16, warmup, steps, seed, peak_flops, output_dir
) -> tuple[dict, object]:
    """Train ``warmup + steps`` optimizer steps along ``path``; return its figures and the trained model."""
    counter = CountingCollator(None)
    timer = StepTimer(warmup, steps, device, counter)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with PeakMemory(device) as memory:
        model = build_model(config, seed)
        init_checksum = checksum(model)
        trainer = make_trainer(
            path, model, data.train_rows, data.pad_id, training_kwargs(output_dir, device, bf16, warmup + steps),
            [timer], counter,
        )
        wall = time.perf_counter()
        trainer.train()
        synchronize(device)
        wall = time.perf_counter() - wall
    window = timer.window_end - timer.window_begin
    examples, tokens, padded, head_rows = (e - b for e, b in zip(timer.counts_end, timer.counts_begin))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    args = trainer.args
    counts = parameter_counts(model)
    hidden, vocab = config.hidden_size, config.vocab_size
    # Model FLOPs of the timed window: 6·N·tokens for the non-embedding weights (real tokens) + the LM head
    # rows this path actually computes (every padded position for the reference; supervised ones for ours).
    flops = 6 * counts["non_embedding"] * tokens + 6 * hidden * vocab * head_rows
    result = {
        "micro_batch": f"{args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation",
        "collator": type(counter.collator).__name__,
        "seconds_per_step": window / steps,
        "step_seconds_median": sorted(timer.step_seconds[warmup:])[len(timer.step_seconds[warmup:]) // 2],
        "tokens_per_s": tokens / window,
        "examples_per_s": examples / window,
        "timed_window_s": window,
        "warmup_s": timer.window_begin - timer.train_begin,
        "train_call_s": wall,
        "examples": examples,
        "tokens": tokens,
        "padded_tokens": padded,
        "lm_head_rows": head_rows,
        "peak_memory_mb": None if memory.peak_bytes is None else memory.peak_bytes / 2**20,
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "init_checksum": init_checksum,
        "model_flops": flops,
        "mfu": flops / window / peak_flops if device.type == "cuda" else None,
        "load_1min_before_after": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "projected_3_epochs_s": window / steps * EPOCHS * math.ceil(len(data.train_rows) / SEQUENCES_PER_STEP),
    }
    return result, trainer.model


# --------------------------------------------------------------------------------------------- exactness


def exactness_check(config, data: BenchData, device, seed, dtype_name: str, output_dir: str) -> dict:
    """Loss and gradients of one fixed batch of 16 rows through both paths, from the same weights, eval mode.

    Reference: four padded micro-batches of 4 through the model's own loss, each normalised by the supervised
    tokens of all 16 (as the Trainer does), gradients accumulated. Ours: one packed micro-batch of 16.
    """
    rows = data.train_rows[:SEQUENCES_PER_STEP]
    features = TokenDataset(rows)
    items = [features[i] for i in range(len(rows))]
    num_items = sum(sum(x != IGNORE_INDEX for x in f["labels"][1:]) for f in items)
    bf16 = dtype_name == "bfloat16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    results = {}
    model = build_model(config, seed).to(device).eval()
    for path in (REFERENCE, OURS):
        trainer = make_trainer(path, model, rows, data.pad_id, training_kwargs(output_dir, device, bf16, 1))
        collator = trainer.data_collator
        micro = trainer.args.per_device_train_batch_size
        model.eval()  # the Trainer's constructor leaves the mode alone, but be explicit: no dropout
        model.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for start in range(0, len(items), micro):
            batch = {k: v.to(device) for k, v in collator(items[start : start + micro]).items()}
            with autocast:
                loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(num_items, device=device))
            loss.backward()
            total += loss.detach().float()
        grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[path.name] = (float(total), grads)
    ref_loss, ref_grads = results["reference"]
    our_loss, our_grads = results["ours"]
    assert ref_grads.keys() == our_grads.keys(), "the two paths produced gradients for different parameters"
    grad_diff = max(float((ref_grads[n] - our_grads[n]).abs().max()) for n in ref_grads)
    grad_scale = max(float(g.abs().max()) for g in ref_grads.values())
    # float32: the paths differ only in kernel shapes (padding, which logits rows), so they agree to float32
    # rounding (measured on the CPU: 8e-8 on the loss, 3e-7 of the largest gradient). bfloat16 autocast rounds
    # every matmul output to 8 significant bits, differently in the padded and packed kernels: allow one bf16
    # ulp (2^-8 = 3.9e-3) relative on the loss and 2e-2 of the largest gradient (CPU: 7e-6 and 3e-3).
    loss_rtol, grad_rtol = (1e-5, 1e-4) if not bf16 else (2**-8, 2e-2)
    loss_rel = abs(our_loss - ref_loss) / abs(ref_loss)
    check = {
        "dtype": dtype_name,
        "sequences": len(rows),
        "supervised_tokens": num_items,
        "reference_loss": ref_loss,
        "ours_loss": our_loss,
        "loss_rel_diff": loss_rel,
        "loss_rtol": loss_rtol,
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
        "grad_rel_diff": grad_diff / grad_scale,
        "grad_rtol": grad_rtol,
        "passed": loss_rel <= loss_rtol and grad_diff <= grad_rtol * grad_scale,
    }
    del model, results, ref_grads, our_grads
    release_memory(device)
    return check


# ------------------------------------------------------------------------------------------------ scoring


def time_scoring(model, questions: list[Question], batch_size: int, fast: bool, device) -> tuple[dict, list]:
    score_questions(model, questions[:batch_size], batch_size, progress=False, fast=fast)  # warm-up (untimed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    begin = time.perf_counter()
    predictions = score_questions(model, questions, batch_size, progress=False, fast=fast)
    synchronize(device)
    seconds = time.perf_counter() - begin
    result = {
        "seconds": seconds,
        "prompts_per_s": len(questions) / seconds,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    return result, predictions


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "qwen3-0.6b"], default="tiny")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bf16 autocast (float32 weights) on CUDA, float32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 8 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed optimizer steps first (default 2 on CPU, 5 on CUDA)")
    parser.add_argument("--eval_prompts", type=int, default=None,
                        help="test prompts to score, first N in file order (default: all 2,376 on CUDA, 256 on CPU)")
    parser.add_argument("--eval_batch_size", type=int, default=EVAL_BATCH_SIZE, help="the seed's 16 by default")
    parser.add_argument("--check", action="store_true", help="assert equal loss and gradients on one batch of 16")
    parser.add_argument("--compile", action="store_true", help="also time ours with SpeedSettings(compile=True)")
    parser.add_argument("--threads", default="auto",
                        help="CPU: torch intra-op threads, or auto: every core on an idle machine, 1 on a busy one")
    parser.add_argument("--peak_tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                        help="the accelerator's peak for MFU (989 = H100/H200 SXM dense bf16)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with data/arc_easy and tokenizers/qwen2")
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
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1 (the first step is never timed)")
    if args.eval_prompts is None:
        args.eval_prompts = 256 if on_cpu else None
    return args


BUSY_LOAD = 0.5  # 1-minute load average above which another process is taking CPU time


def choose_threads(threads: str, device: torch.device) -> str:
    """Set torch's intra-op threads for a CPU run; return why, for the report.

    Intra-op parallel regions end at a barrier: when another process holds one of the cores, every
    multi-threaded op waits for its descheduled worker (milliseconds each, thousands of ops per step). On the
    project's shared 2-core machines both paths ran faster on 1 thread than on 2 whenever the load average
    was above ~2 (ours 0.19 vs 0.58-1.5 s/step, reference 3.0 vs 3.6-6.0 s/step), so ``auto`` uses 1 thread
    on a busy machine and torch's default (every core) on an idle one.
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
        return (f"auto: 1-min load average {load:.2f} before the run, the cores are shared, so 1 thread; "
                f"--threads {cores} to override")
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
    print(f"slamkit SFT benchmark: shape={report['shape']} device={report['device']} ({report['device_name']}) "
          f"dtype={report['dtype']} warmup={report['warmup']} steps={report['steps']}")
    if report["device"] == "cpu":
        print(f"cpu: {report['cpu_threads']} torch threads on {report['cpu_cores']} cores "
              f"({report['cpu_threads_reason']})")
    print(f"data: {report['data']['source']}: {report['data']['train_rows']} rows, "
          f"mean {report['data']['train_mean_length']} "
          f"tokens; model {report['parameters']['total'] / 1e6:.1f}M params "
          f"({report['parameters']['non_embedding'] / 1e6:.1f}M non-embedding)")
    print()
    header = (f"{'train path':<14}{'micro-batch':<28}{'s/step':>9}{'tokens/s':>11}{'examples/s':>12}{'peak MB':>10}"
              f"{'final loss':>12}{'MFU %':>7}")
    print(header)
    print("-" * len(header))
    for name in ("reference", "ours", "ours_compiled"):
        if name not in train:
            continue
        row = train[name]
        print(f"{name:<14}{row['micro_batch']:<28}{row['seconds_per_step']:>9.4f}{row['tokens_per_s']:>11.0f}"
              f"{row['examples_per_s']:>12.1f}{fmt(row['peak_memory_mb'], '.0f'):>10}{row['final_loss']:>12.6f}"
              f"{fmt(row['mfu'] and 100 * row['mfu'], '.1f'):>7}")
    print(f"train speed-up (reference s/step / ours): {train['speedup']:.1f}x; peak memory ours/reference: "
          f"{fmt(train['memory_ratio'], '.3f')}; loss relative difference: final {train['final_loss_rel_diff']:.1e}, "
          f"largest over all {len(train['ours']['losses'])} steps {train['loss_curve_max_rel_diff']:.1e}")
    print(f"projected {EPOCHS}-epoch train loop: reference {train['reference']['projected_3_epochs_s']:.1f} s, "
          f"ours {train['ours']['projected_3_epochs_s']:.1f} s")
    if "compile_overhead_s" in train:
        print(f"compiled: warm-up took {train['compile_overhead_s']:.1f} s longer than eager (compile time); "
              f"speed-up vs reference {train['compiled_speedup']:.1f}x")
    print()
    print(f"{'eval path':<14}{'prompts':>9}{'seconds':>10}{'prompts/s':>11}")
    for name in ("reference", "ours"):
        row = evaluation[name]
        print(f"{name:<14}{evaluation['prompts']:>9}{row['seconds']:>10.3f}{row['prompts_per_s']:>11.1f}")
    print(f"eval speed-up: {evaluation['speedup']:.1f}x; predictions that differ: {evaluation['disagreements']}"
          f"/{evaluation['prompts']}; max |prob difference| {evaluation['max_prob_diff']:.2e}")
    for check in report.get("check") or []:
        print(f"check ({check['dtype']}, {check['sequences']} sequences, "
              f"{check['supervised_tokens']} supervised tokens): "
              f"loss reference {check['reference_loss']:.8f} ours {check['ours_loss']:.8f} "
              f"(rel diff {check['loss_rel_diff']:.2e} <= {check['loss_rtol']:g}); gradients max |diff| "
              f"{check['grad_max_abs_diff']:.2e} (max |grad| {check['grad_max_abs']:.2e}, "
              f"rel {check['grad_rel_diff']:.2e} "
              f"<= {check['grad_rtol']:g}): {'PASSED' if check['passed'] else 'FAILED'}")
    print(f"memory: {report['memory_method']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    threads_reason = choose_threads(args.threads, device)
    bf16 = args.dtype == "bfloat16"
    started = time.perf_counter()
    config = model_config(args.shape)
    have_shared = (args.shared / "data" / "arc_easy").is_dir() and (args.shared / "tokenizers" / "qwen2").is_dir()
    data = arc_easy_data(args.shared) if have_shared else synthetic_data()
    questions = data.test_questions[: args.eval_prompts] if args.eval_prompts else data.test_questions
    print(f"data ready in {time.perf_counter() - started:.1f} s: {data.description['source']}")
    peak_flops = args.peak_tflops * 1e12
    report: dict = {
        "shape": args.shape,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_threads_reason": threads_reason,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "dtype": args.dtype + (" autocast, float32 weights" if bf16 else ""),
        "steps": args.steps,
        "warmup": args.warmup,
        "eval_batch_size": args.eval_batch_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "data": data.description,
        "memory_method": CUDA_MEMORY_METHOD if device.type == "cuda" else cpu_memory_method(),
        "mfu_peak_tflops": args.peak_tflops if device.type == "cuda" else None,
    }
    with tempfile.TemporaryDirectory(prefix="slamkit_bench_") as output_dir:
        if args.check:
            dtypes = ["float32"] + (["bfloat16"] if bf16 else [])
            report["check"] = [exactness_check(config, data, device, args.seed, d, output_dir) for d in dtypes]
        train: dict = {}
        # Ours first: on the CPU, heap the reference could reuse from an earlier path would only understate it.
        paths = [OURS, REFERENCE] + ([OURS_COMPILED] if args.compile else [])
        model = None
        for path in paths:
            print(f"training: {path.name} ({args.warmup} + {args.steps} steps) ...", flush=True)
            del model
            release_memory(device)
            train[path.name], model = run_training_path(
                path, config, data, device, bf16, args.warmup, args.steps, args.seed, peak_flops, output_dir
            )
            if path is OURS:
                eval_model = model
        ref, ours = train["reference"], train["ours"]
        train["speedup"] = ref["seconds_per_step"] / ours["seconds_per_step"]
        train["memory_ratio"] = (
            ours["peak_memory_mb"] / ref["peak_memory_mb"] if ours["peak_memory_mb"] and ref["peak_memory_mb"] else None
        )
        train["final_loss_rel_diff"] = abs(ours["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"])
        train["loss_curve_max_rel_diff"] = max(
            abs(a - b) / abs(b) for a, b in zip(ours["losses"], ref["losses"], strict=True)
        )
        train["same_init"] = ours["init_checksum"] == ref["init_checksum"]
        if args.compile:
            compiled = train["ours_compiled"]
            train["compile_overhead_s"] = compiled["warmup_s"] - ours["warmup_s"]
            train["compiled_speedup"] = ref["seconds_per_step"] / compiled["seconds_per_step"]
        report["parameters"] = parameter_counts(model)
        report["train"] = train
        del model
        release_memory(device)

    print(f"scoring {len(questions)} test prompts both ways ...", flush=True)
    eval_model = eval_model.to(torch.bfloat16 if bf16 else torch.float32).eval()
    evaluation: dict = {"prompts": len(questions), "model": "ours after training", "dtype": args.dtype}
    evaluation["reference"], slow = time_scoring(eval_model, questions, args.eval_batch_size, False, device)
    evaluation["ours"], fast = time_scoring(eval_model, questions, args.eval_batch_size, True, device)
    evaluation["speedup"] = evaluation["reference"]["seconds"] / evaluation["ours"]["seconds"]
    evaluation["disagreements"] = sum(a.pred != b.pred for a, b in zip(slow, fast, strict=True))
    evaluation["max_prob_diff"] = max(
        abs(x - y) for a, b in zip(slow, fast, strict=True) for x, y in zip(a.probs, b.probs, strict=True)
    )
    report["eval"] = evaluation
    report["wall_s"] = time.perf_counter() - started

    print_report(report)
    print(f"total wall time {report['wall_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    failures = [c for c in report.get("check") or [] if not c["passed"]]
    if args.check and not bf16 and evaluation["disagreements"]:
        failures.append({"eval": f"{evaluation['disagreements']} float32 predictions differ between the paths"})
    if failures:
        print(f"CHECK FAILED: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
