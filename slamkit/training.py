"""Supervised fine-tuning with the Hugging Face Trainer: ``train(...)`` takes plain typed settings.

Fast paths (on by default; each leaves the result unchanged, see README "Performance"):
- packing: a micro-batch is one padding-free row (``PackedCollator``), and the LM head runs only at the
  supervised positions (``logits_to_keep``), so logits are 2 rows per ARC example instead of ~77;
- single_micro_batch: per-device ``b`` × accumulation ``g`` becomes one micro-batch of ``b·g`` sequences
  (same samples, same order, same optimizer steps, same loss normalisation);
- checkpoints without optimizer state (``save_only_model: true`` in the shipped config).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from slamkit.data import PackedCollator, PaddedCollator, TokenDataset, load_token_rows
from slamkit.errors import SlamkitError
from slamkit.evaluation import (
    Question,
    accuracy,
    questions_from_token_rows,
    score_questions,
)
from slamkit.jsonl import atomic_output
from slamkit.model import (
    build_model,
    embedding_rows,
    load_model_config,
    load_tokenizer,
    parse_dtype,
)

log = logging.getLogger(__name__)

RUN_RECORD = "slamkit_run.yaml"  # the resolved run config, saved beside the weights of every checkpoint
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # the Trainer's checkpoint folders

# TrainingArguments keys that transformers 5.x no longer accepts, and what to write instead.
REMOVED_TRAINING_ARGS = {
    "warmup_ratio": "training_args.warmup_steps=0.03 (a float below 1 is a fraction of the total steps)",
    "evaluation_strategy": "training_args.eval_strategy=...",
    "overwrite_output_dir": "nothing: delete it (the Trainer writes into output_dir as it is)",
    "logging_dir": "nothing: delete it (loggers write under output_dir)",
    "torch_dtype": "model.dtype=...",
    "group_by_length": "training_args.train_sampling_strategy=group_by_length",
    "save_safetensors": "nothing: delete it (checkpoints are always safetensors)",
    "no_cuda": "training_args.use_cpu=true",
}
TRAINING_ARGUMENT_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def unknown_training_argument_message(key: str) -> str:
    """What to say about ``training_args.<key>`` that TrainingArguments does not take."""
    if key in REMOVED_TRAINING_ARGS:
        return f"training_args.{key} was removed in transformers 5.x: write {REMOVED_TRAINING_ARGS[key]}"
    close = difflib.get_close_matches(key, sorted(TRAINING_ARGUMENT_NAMES), n=1)
    hint = f": did you mean training_args.{close[0]}?" if close else ""
    return f"training_args.{key} is not a transformers TrainingArguments field{hint}"


@dataclass(frozen=True)
class ModelSettings:
    base_model_name: str  # hub id or local folder of the pretrained text LM
    tokenizer_name: str  # saved beside every checkpoint
    twist_init: bool = True
    dtype: str = "float32"  # weights (and AdamW state) dtype; bf16 compute comes from training_args.bf16
    attn_implementation: str | None = "sdpa"
    vocab_size: int | None = None  # grow the embedding table to this many rows (new token types)
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load .bin (pickle) weights; off = safetensors only


@dataclass(frozen=True)
class DataSettings:
    train_path: str | list[str]
    val_path: str | list[str] | None = None
    max_train_examples: int | None = None
    max_val_examples: int | None = None


@dataclass(frozen=True)
class SpeedSettings:
    packing: bool = True
    single_micro_batch: bool = True
    compile: bool = False  # torch.compile each decoder layer (regional), dynamic shapes


class SFTTrainer(Trainer):
    """The HF Trainer with one changed hook: the loss of packed batches from the supervised positions only.

    ``choice_questions`` (set after construction) adds categorical validation accuracy to each evaluation.
    """

    choice_questions: list[Question] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "logits_positions" not in inputs:  # padded batches: the model's own full-logits loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        positions, targets = inputs.pop("logits_positions"), inputs.pop("targets")
        inputs.pop("labels")  # only there for the Trainer's count of supervised tokens
        outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
        logits = outputs.logits.squeeze(0).float()  # squeeze, not [0]: indexing would allocate a zeroed grad
        loss = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=self.args.label_smoothing_factor)
        # Same normalisation as transformers' own loss: by the supervised tokens of the whole optimizer step
        # (across accumulation and devices) when the Trainer counted them, else a per-batch mean.
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; undo it for a global sum
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.choice_questions:
            predictions = score_questions(
                self.model, self.choice_questions, self.args.per_device_eval_batch_size, progress=False
            )
            extra = {f"{metric_key_prefix}_accuracy": accuracy(predictions)}
            self.log(extra)
            metrics.update(extra)
        return metrics


class RunRecordCallback(TrainerCallback):
    """Write the resolved run config beside the weights of every checkpoint (rank 0)."""

    def __init__(self, run_config: dict[str, Any]):
        self.run_config = run_config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_record(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.run_config)


def write_run_record(folder: Path, run_config: dict[str, Any]) -> None:
    with atomic_output(folder / RUN_RECORD) as handle:
        yaml.safe_dump(run_config, handle, sort_keys=False)


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` holding the run record, which :class:`RunRecordCallback` writes last.

    The Trainer writes a checkpoint's files in place, one after another; a newer folder without the record
    was cut short (the run died while saving) and is skipped, with a warning, instead of failing the resume.
    """
    if not output_dir.is_dir():
        return None
    numbered = [(int(m[1]), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.fullmatch(p.name))]
    for _, folder in sorted(numbered, reverse=True):
        if (folder / RUN_RECORD).is_file():
            return str(folder)
        log.warning("cont_training: skipping %s: incomplete (no %s; the run stopped while saving it)", folder, RUN_RECORD)
    return None


def _integration_available(name: str) -> bool:
    from transformers import integrations

    return {"tensorboard": integrations.is_tensorboard_available, "wandb": integrations.is_wandb_available}[name]()


def training_arguments(kwargs: dict[str, Any], speed: SpeedSettings, has_validation: bool) -> TrainingArguments:
    """``TrainingArguments(**kwargs)`` after the checks and the device/precision decision (logged in one line)."""
    for key in kwargs:
        if key not in TRAINING_ARGUMENT_NAMES:
            raise SlamkitError(unknown_training_argument_message(key))
    kwargs = dict(kwargs)
    if kwargs.get("output_dir") in (None, ""):
        raise SlamkitError("training_args.output_dir is required")
    if kwargs.get("eval_strategy", "no") != "no" and not has_validation:
        raise SlamkitError(f"training_args.eval_strategy={kwargs['eval_strategy']} needs data.val_path")
    bf16 = bool(kwargs.get("bf16"))
    if torch.cuda.is_available() and not kwargs.get("use_cpu"):
        if bf16 and not torch.cuda.is_bf16_supported():
            raise SlamkitError(
                f"training_args.bf16=true but {torch.cuda.get_device_name()} has no bf16: "
                "set training_args.bf16=false (float32) or training_args.fp16=true"
            )
        log.info("precision: %s on CUDA (%s)", "bf16 autocast, float32 weights" if bf16 else "float32", torch.cuda.get_device_name())
    else:
        kwargs["use_cpu"] = True
        log.info("precision: no CUDA device, training on CPU in %s", "bf16 autocast (float32 weights)" if bf16 else "float32")
    reporters = kwargs.get("report_to") or []
    reporters = [reporters] if isinstance(reporters, str) else reporters
    for name in ("tensorboard", "wandb"):
        if name in reporters and not _integration_available(name):
            raise SlamkitError(f"logger={name} (training_args.report_to) needs the {name} package: pip install {name}")
    if kwargs.get("run_name") is None:
        kwargs["run_name"] = Path(kwargs["output_dir"]).name  # loggers name the run after its folder
    if speed.single_micro_batch and kwargs.get("gradient_accumulation_steps", 1) > 1:
        per_device, steps = kwargs.get("per_device_train_batch_size", 8), kwargs["gradient_accumulation_steps"]
        kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"] = per_device * steps, 1
        log.info(
            "single_micro_batch: %d per device x %d accumulation run as one micro-batch of %d "
            "(same samples, order and steps; speed.single_micro_batch=false keeps %d micro-batches)",
            per_device, steps, per_device * steps, steps,
        )
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:
        raise SlamkitError(f"training_args: {str(err).strip().splitlines()[0]}") from None


def train(
    model: ModelSettings,
    data: DataSettings,
    training_args: dict[str, Any],
    speed: SpeedSettings = SpeedSettings(),
    cont_training: bool = False,
    run_config: dict[str, Any] | None = None,
) -> Path:
    """Fine-tune ``model`` on ``data``; return the output folder (a plain HF checkpoint of the final weights).

    Every ``checkpoint-N/`` and the output folder hold the weights (safetensors), the tokenizer and
    ``slamkit_run.yaml`` (``run_config``), and load with ``AutoModelForCausalLM``/``AutoTokenizer``.
    """
    args = training_arguments(training_args, speed, has_validation=data.val_path is not None)
    if args.n_gpu > 1 and speed.packing:
        raise SlamkitError(
            f"{args.n_gpu} GPUs visible to one process: launch with torchrun --nproc_per_node={args.n_gpu} "
            "(or accelerate launch), or set CUDA_VISIBLE_DEVICES to one GPU"
        )
    resume_from = None  # decided before any loading, so a run that cannot resume fails at once
    if cont_training:
        resume_from = last_complete_checkpoint(Path(args.output_dir))
        if resume_from is None:
            log.info("cont_training: no checkpoint in %s yet, starting from the beginning", args.output_dir)
        elif not any((Path(resume_from) / name).exists() for name in ("optimizer.pt", "optimizer.bin")):
            raise SlamkitError(
                f"{resume_from}: no optimizer state to resume from (saved with save_only_model=true); "
                "train with training_args.save_only_model=false to be able to resume"
            )
        else:
            log.info("cont_training: resuming from %s", resume_from)

    # Everything that can be checked without the weights is checked before loading them.
    tokenizer = load_tokenizer(model.tokenizer_name, model.trust_remote_code)
    config = load_model_config(model.base_model_name, model.trust_remote_code)
    context = getattr(config, "max_position_embeddings", None)
    rows = embedding_rows(config.vocab_size, len(tokenizer), model.vocab_size, model.base_model_name)
    train_rows = load_token_rows(data.train_path, context, rows, data.max_train_examples)
    val_rows = load_token_rows(data.val_path, context, rows, data.max_val_examples) if data.val_path else None
    log.info("data: %d training rows%s", len(train_rows), f", {len(val_rows)} validation rows" if val_rows else "")
    set_seed(args.seed)
    net = build_model(
        model.base_model_name, model.twist_init, parse_dtype(model.dtype), model.attn_implementation,
        tokenizer_size=len(tokenizer), vocab_size=model.vocab_size,
        trust_remote_code=model.trust_remote_code, allow_pickle=model.allow_pickle,
    )
    if speed.compile:
        for layer in net.get_decoder().layers:
            layer.compile(dynamic=True)
        log.info("compile: each decoder layer wrapped in torch.compile (dynamic shapes)")

    trainer = SFTTrainer(
        model=net,
        args=args,
        train_dataset=TokenDataset(train_rows),
        eval_dataset=TokenDataset(val_rows) if val_rows else None,
        data_collator=PackedCollator() if speed.packing else PaddedCollator(tokenizer.pad_token_id or 0),
        processing_class=tokenizer,
        callbacks=[RunRecordCallback(run_config or {})],
    )
    if val_rows and all(r.choice_ids is not None for r in val_rows):
        trainer.choice_questions = questions_from_token_rows(val_rows)
    elif val_rows:
        log.info("validation rows carry no choice_ids: reporting validation loss only")
    trainer.train(resume_from_checkpoint=resume_from)
    output_dir = Path(args.output_dir)
    trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json (the log history) beside the final weights
    if trainer.is_world_process_zero():
        write_run_record(output_dir, run_config or {})
        from slamkit.plots import plot_training_curves

        try:
            plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
        except ValueError as err:  # e.g. fewer steps than logging_steps: nothing was logged
            log.info("training curves not plotted: %s", err)
    return output_dir
