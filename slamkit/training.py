"""Supervised fine-tuning with the Hugging Face Trainer.

:func:`train` runs an :class:`~slamkit.config.SFTConfig`; :func:`build_trainer` is the one place an
:class:`SFTTrainer` is built, and ``train()``, the benchmark and the tests all call it.

Fast paths (on by default; each leaves the result unchanged, see README "Performance"):
- packing: a micro-batch is one padding-free row (transformers' ``DataCollatorWithFlattening``), and the LM head
  runs only at the supervised positions (``logits_to_keep``): 2 rows of logits per ARC example instead of ~77;
- single_micro_batch: per-device ``b`` × accumulation ``g`` runs as one micro-batch of ``b·g`` sequences
  (same samples, same order, same optimizer steps, same loss normalisation);
- one forward pass per validation gives both ``eval_loss`` and ``eval_accuracy``;
- checkpoints without optimizer state (``save_only_model: true`` in the shipped config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from slamkit import __version__, memory
from slamkit.chatml import IGNORE_INDEX, PromptFormat, chatml_ids
from slamkit.config import REDACTED, SFTConfig, SpeedSettings, is_secret, redact_command_line
from slamkit.data import SFTCollator, TokenDataset, TokenRow, expand_paths, load_token_rows, rows_prompt_format
from slamkit.errors import Interrupted, SlamkitError, first_line
from slamkit.evaluation import letter_choice
from slamkit.jsonl import DISK_ERRORS
from slamkit.model import (
    build_model,
    check_attention,
    head_logits,
    cpu_description,
    cpu_native_bf16,
    embedding_rows,
    load_model_config,
    load_tokenizer,
    parse_dtype,
)
from slamkit.run_folder import (
    METRICS_LOGGER,
    RESUME_STATE,
    RunFolder,
    files_sha256,
    make_readable,
    newest_complete_checkpoint,
    write_record,
)

log = logging.getLogger(__name__)
metrics_log = logging.getLogger(METRICS_LOGGER)


class NonFiniteError(SlamkitError):
    """A loss, gradient norm or weight that is NaN or infinite: the run has diverged."""


# ------------------------------------------------------------------------------------------- arguments


def _integration_available(name: str) -> bool:
    from transformers.integrations import get_available_reporting_integrations

    return name in get_available_reporting_integrations()


def check_reporters(report_to: Any) -> None:
    """Each name of ``training_args.report_to`` is a reporter transformers knows, whose package is installed: one
    line now, instead of a traceback when the Trainer is built after the weights are loaded."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in [report_to] if isinstance(report_to, str) else report_to or []:
        if name in ("none", "all"):  # all: those installed
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise SlamkitError(
                f"training_args.report_to={name!r}: not one of {', '.join(INTEGRATION_TO_CALLBACK)} (or none, all)"
            )
        if not _integration_available(name):
            key = f"logger={name} (training_args.report_to)" if name in LOGGER_CONFIGS else f"training_args.report_to={name}"
            raise SlamkitError(f"{key} needs the {name} package: pip install {name}")


def build_training_arguments(settings: Any, speed: SpeedSettings, has_validation: bool) -> TrainingArguments:
    """``TrainingArguments`` from :class:`~slamkit.config.TrainingArgumentsSettings`, built once, after the checks
    and the adjustments: the device and precision (logged), the run name, and ``single_micro_batch`` (the run's
    batch line states it; the run record keeps the requested and the effective batch)."""
    changes: dict[str, Any] = {}
    if settings.eval_strategy != "no" and not has_validation:
        raise SlamkitError(f"training_args.eval_strategy={settings.eval_strategy} needs data.val_path")
    if torch.cuda.is_available() and not settings.use_cpu:
        if settings.bf16 and not torch.cuda.is_bf16_supported():
            raise SlamkitError(
                f"training_args.bf16=true but {torch.cuda.get_device_name()} has no bf16: "
                "set training_args.bf16=false (float32) or training_args.fp16=true"
            )
        precision = "bf16 autocast" if settings.bf16 else "float32"
        log.info("precision: %s on CUDA (%s)", precision, torch.cuda.get_device_name())
    else:
        changes["use_cpu"] = True
        if not settings.use_cpu and os.environ.get("RANK", "0") == "0":  # once, not once per process
            log.warning("warning: %s", no_cuda_reason())
        if settings.bf16 and speed.cpu_bf16 == "auto" and not cpu_native_bf16():
            changes["bf16"] = False
            log.info(
                "precision: no CUDA device, training on CPU in float32: this CPU (%s) has no native bfloat16, where "
                "bf16 autocast is several times slower than float32 (speed.cpu_bf16=force to autocast anyway)",
                cpu_description(),
            )
        else:
            precision = "bf16 autocast" if settings.bf16 else "float32"
            log.info("precision: no CUDA device, training on CPU (%s) in %s", cpu_description(), precision)
    check_reporters(settings.report_to)
    if settings.run_name is None:
        changes["run_name"] = Path(settings.output_dir).name  # loggers name the run after its folder
    # The datasets yield exactly what SFTCollator needs; the Trainer would otherwise drop the rows' choice_ids
    # (not an argument of model.forward) before collation, and validation accuracy with them.
    changes["remove_unused_columns"] = False
    per_device, accumulation = settings.per_device_train_batch_size, settings.gradient_accumulation_steps
    if speed.single_micro_batch and accumulation > 1 and settings.dataloader_drop_last:
        # one micro-batch of b·g would drop up to b·g-1 rows per epoch where b x g drops at most b-1: not the same run
        log.info("speed.single_micro_batch: not applied with training_args.dataloader_drop_last=true")
    elif speed.single_micro_batch and accumulation > 1:
        changes["per_device_train_batch_size"], changes["gradient_accumulation_steps"] = per_device * accumulation, 1
    if settings.deepspeed:
        from transformers.integrations.deepspeed import is_deepspeed_available

        if not is_deepspeed_available():  # TrainingArguments would fail on the import, in a traceback
            raise SlamkitError("training_args.deepspeed: needs the deepspeed package: pip install deepspeed")
    try:
        args = TrainingArguments(**dataclasses.asdict(dataclasses.replace(settings, **changes)))
    except (ValueError, TypeError, ImportError) as err:
        raise SlamkitError(f"training_args: {first_line(err)}") from None
    check_trainer_settings(args)
    return args


def no_cuda_reason() -> str:
    """Why a run that did not ask for the CPU got it, and what to check: on a cluster, an hours-long surprise."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        cause = f"CUDA_VISIBLE_DEVICES is {visible!r}, which hides every GPU"
    elif torch.version.cuda is None:
        cause = f"this torch ({torch.__version__}) is a CPU-only build"
    elif any(os.path.exists(path) for path in ("/dev/nvidia0", "/dev/nvidiactl")):
        cause = "this machine has NVIDIA devices but torch cannot use them (a container started without --nv?)"
    else:
        cause = "torch finds no GPU (singularity exec without --nv, or a node without GPUs?)"
    return (f"no CUDA device: training on the CPU, hours where a GPU takes minutes; {cause}. Set "
            "training_args.use_cpu=true to train on the CPU on purpose")


LOGGER_CONFIGS = ("tensorboard", "wandb")  # the reporters config/logger/ has a file for: logger=NAME

# Metrics a validation logs (SFTTrainer: the loss, and answer_accuracy's): what metric_for_best_model may name.
VALIDATION_METRICS = ("loss", "accuracy", "correct", "questions")


def check_trainer_settings(args: TrainingArguments) -> None:
    """What the Trainer itself would only find out once the weights are loaded and the run folder claimed (some of
    it only after an epoch): each a one-line error here, before anything is read.

    The settings slamkit cannot serve are named first; then :func:`rehearse_trainer` lets transformers check the
    rest with its own code."""
    from transformers.utils import import_utils

    def refuse(key: str, what: str) -> None:
        raise SlamkitError(f"training_args.{key}: {what}")

    if args.batch_eval_metrics:
        refuse("batch_eval_metrics=true", "slamkit's validation accuracy is computed over the whole set; set it to false")
    if not args.eval_do_concat_batches:
        refuse("eval_do_concat_batches=false", "slamkit's validation accuracy needs the batches concatenated; set it to true")
    if args.metric_for_best_model is not None and args.metric_for_best_model.removeprefix("eval_") not in VALIDATION_METRICS:
        names = ", ".join(f"eval_{name}" for name in VALIDATION_METRICS)
        refuse(f"metric_for_best_model={args.metric_for_best_model}", f"a validation logs only {names}")
    if _name(args.eval_strategy) == "no":  # what only a validation feeds would silently do nothing
        for key, value in (("save_strategy=best", _name(args.save_strategy) == "best"),
                           ("load_best_model_at_end=true", args.load_best_model_at_end),
                           (f"metric_for_best_model={args.metric_for_best_model}", args.metric_for_best_model)):
            if value:
                refuse(key, "needs a validation: set data.val_path and training_args.eval_strategy (epoch or steps)")
    if _name(args.save_strategy) == "best" and args.metric_for_best_model is None:
        refuse("save_strategy=best", "needs training_args.metric_for_best_model (e.g. eval_accuracy)")
    if args.use_liger_kernel and not import_utils.is_liger_kernel_available():
        refuse("use_liger_kernel=true", "needs the liger-kernel package: pip install liger-kernel")
    if args.push_to_hub and os.environ.get("HF_HUB_OFFLINE"):
        refuse("push_to_hub=true", "HF_HUB_OFFLINE is set: nothing can be pushed; set push_to_hub=false")
    if args.fsdp and args.world_size == 1:
        refuse("fsdp", "needs several processes (torchrun --nproc_per_node=N or accelerate launch --multi_gpu)")
    rehearse_trainer(args)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))  # the strategies and optimizers are str enums


def rehearse_trainer(args: TrainingArguments) -> None:
    """Let transformers check ``args`` with its own code, on a one-layer stand-in model, before the run folder is
    claimed or a weight is read: a ``Trainer`` is built (accelerator, plugins, its own argument checks) and makes
    its optimizer and learning-rate scheduler; gradient checkpointing runs one step with its keyword arguments, and
    ``torch_compile`` has its backend and mode checked by ``torch.compile``. Without this, each of these fails with a
    traceback after the weights are loaded (some after the run started). Nothing is written (the stand-in's output
    folder is the temporary folder, which exists); like any Trainer, it seeds the random generators with args.seed."""
    import copy
    import tempfile
    import warnings

    from slamkit.model import qwen3_config, random_model

    # Every failure below comes from a setting: the stand-in model and the temporary folder are valid by construction,
    # and what transformers raises for a setting is any kind of exception (ValueError, TypeError, ImportError, ...).
    if args.torch_compile:  # torch.compile checks its backend and mode when called (compiling waits for a call)
        try:
            torch.compile(lambda x: x, backend=args.torch_compile_backend, mode=args.torch_compile_mode)
        except Exception as err:  # any kind: see above
            raise SlamkitError(
                f"training_args.torch_compile_backend={args.torch_compile_backend!r}, "
                f"torch_compile_mode={args.torch_compile_mode!r}: {first_line(err)}"
            ) from None
    probe = copy.deepcopy(args)
    # nothing written, nothing pushed, nothing reported (check_reporters has checked the reporters)
    probe.output_dir, probe.push_to_hub, probe.report_to = tempfile.gettempdir(), False, []
    model = random_model(qwen3_config("micro"))
    try:
        trainer = Trainer(model=model, args=probe, eval_dataset=[] if _name(args.eval_strategy) != "no" else None)
    except Exception as err:  # any kind: see above
        raise SlamkitError(f"training_args: {first_line(err)}") from None
    try:
        optimizer = trainer.create_optimizer()
    except Exception as err:  # any kind: see above
        key = f"optim={_name(args.optim)}" + (f" with optim_args={args.optim_args!r}" if args.optim_args else "")
        raise SlamkitError(f"training_args.{key}: {first_line(err)}") from None
    try:  # the scheduler with its keyword arguments
        trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    except Exception as err:  # any kind: see above
        raise SlamkitError(
            f"training_args.lr_scheduler_kwargs: {args.lr_scheduler_kwargs} do not fit "
            f"lr_scheduler_type={_name(args.lr_scheduler_type)} ({first_line(err)})"
        ) from None
    if args.gradient_checkpointing:  # the old name mirrors activation_checkpointing where transformers has both
        kwargs = dict(args.gradient_checkpointing_kwargs or {})
        try:  # enabled as Trainer.train enables it, then one forward and backward pass through a checkpoint
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x: two keys are its own
                every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs=kwargs or None, every_n_layers=every_n_layers, offload=offload
                )
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
            model.train()
            ids = torch.tensor([[1, 2]], device=model.device)
            with warnings.catch_warnings():  # torch's own warnings about these settings come when the run trains
                warnings.simplefilter("ignore")
                model(input_ids=ids, labels=ids).loss.backward()
        except Exception as err:  # any kind: see above
            key = "activation" if hasattr(args, "activation_checkpointing_kwargs") else "gradient"
            raise SlamkitError(
                f"training_args.{key}_checkpointing_kwargs={args.gradient_checkpointing_kwargs}: {first_line(err)}"
            ) from None


@dataclass(frozen=True)
class BatchPlan:
    """How many sequences an optimizer step sees and how many steps the run makes (stated in its first lines)."""

    rows: int
    world_size: int
    per_device: int  # what runs
    accumulation: int
    requested_per_device: int  # what the config asked for (single_micro_batch may fold accumulation into it)
    requested_accumulation: int
    epochs: float
    max_steps: int
    saves_checkpoints: bool = True  # save_strategy epoch or steps: the last checkpoint is at the last step
    drop_last: bool = False  # dataloader_drop_last: a last micro-batch smaller than the others is not run

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """As the Trainer counts them: micro-batches per process, then optimizer steps (the last one partial)."""
        per_pass = self.per_device * self.world_size
        micro_batches = self.rows // per_pass if self.drop_last else math.ceil(self.rows / per_pass)
        return max(micro_batches // self.accumulation + int(micro_batches % self.accumulation > 0), 1)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps > 0 else math.ceil(self.epochs * self.steps_per_epoch)

    def describe(self) -> str:
        """``batch: 4 per device × 4 accumulation × 2 processes = 32 sequences per step → 71 steps per epoch, ...``"""
        line = (
            f"batch: {self.requested_per_device} per device x {self.requested_accumulation} accumulation x "
            f"{self.world_size} process{'es' if self.world_size > 1 else ''} = {self.global_batch} sequences per "
            f"optimizer step"
        )
        if (self.per_device, self.accumulation) != (self.requested_per_device, self.requested_accumulation):
            line += f" (run as one micro-batch of {self.per_device} per device: speed.single_micro_batch)"
        last = f" (the last checkpoint is checkpoint-{self.total_steps})" if self.saves_checkpoints else ""
        return (
            f"{line}; {self.rows:,} training rows -> {self.steps_per_epoch} steps per epoch, {self.total_steps} steps "
            f"in all{last}"
        )


def batch_plan(args: TrainingArguments, settings: Any, rows: int) -> BatchPlan:
    if args.dataloader_drop_last and rows < args.per_device_train_batch_size * args.world_size:
        raise SlamkitError(
            f"training_args.dataloader_drop_last=true drops every row: {rows} training rows are fewer than one "
            f"micro-batch ({args.per_device_train_batch_size} x {args.world_size} processes)"
        )
    return BatchPlan(
        rows=rows, world_size=args.world_size, per_device=args.per_device_train_batch_size,
        accumulation=args.gradient_accumulation_steps, requested_per_device=settings.per_device_train_batch_size,
        requested_accumulation=settings.gradient_accumulation_steps, epochs=args.num_train_epochs,
        max_steps=args.max_steps, saves_checkpoints=args.save_strategy in ("epoch", "steps"),
        drop_last=args.dataloader_drop_last,
    )


# ------------------------------------------------------------------------------------------- the trainer


def answer_predictions(
    model, hidden: torch.Tensor, targets: torch.Tensor, sequence: torch.Tensor, choice_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The predicted and the gold choice of every sequence, from the final hidden states at its supervised positions.

    ``hidden`` [K, H] and ``targets`` [K] are the supervised positions in order, ``sequence`` [K] the sequence each
    belongs to, ``choice_ids`` [S, C] each sequence's candidate ids (-1 = none). A sequence's first supervised
    position predicts its answer letter, exactly where categorical evaluation reads it, and the letters' logits are
    float32 as there (:func:`slamkit.model.head_logits`).
    """
    first = torch.ones_like(sequence, dtype=torch.bool)
    first[1:] = sequence[1:] != sequence[:-1]
    answer_hidden, gold_ids = hidden[first], targets[first]
    if answer_hidden.shape[0] != choice_ids.shape[0]:
        raise ValueError(f"{answer_hidden.shape[0]} supervised sequences but {choice_ids.shape[0]} rows of choice_ids")
    predicted, _, _ = letter_choice(head_logits(model, answer_hidden, choice_ids.clamp(min=0)), choice_ids >= 0)
    gold = (choice_ids == gold_ids[:, None]).int().argmax(dim=1)
    return {"answer_pred": predicted, "answer_gold": gold}


def answer_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """``compute_metrics``: the categorical accuracy of the validation rows (logged as ``eval_accuracy``)."""
    predicted, gold = prediction.predictions
    correct = int((predicted == gold).sum())
    return {"accuracy": correct / len(gold), "correct": correct, "questions": len(gold)}


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """A model with a NaN or infinite weight is never saved (one host sync)."""
    parameters = [p for p in model.parameters()]
    if bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
        return
    name = next(name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all()))
    raise NonFiniteError(
        f"{what}: weight {name} is not finite (nan or inf): the run diverged and was stopped before saving it; "
        "lower training_args.learning_rate or check the data and the base model"
    )


class SFTTrainer(Trainer):
    """The HF Trainer with two changed hooks.

    ``compute_loss``: packed batches get the LM head only at the supervised positions (read from ``labels``);
    in evaluation the same pass also yields each validation row's predicted and gold answer, so one forward
    pass gives ``eval_loss`` and ``eval_accuracy``. ``_save_checkpoint``: the weights are checked finite, and
    the run record is written into the checkpoint folder before the Trainer's files (``trainer_state.json``,
    written last, marks a checkpoint complete), whose permissions then follow the umask.
    """

    run_record: dict[str, Any] | None = None
    save_dtype: torch.dtype | None = None  # weights are written in this dtype (None: as trained)

    def _save(self, output_dir=None, state_dict=None):
        # Weights-only checkpoints in the base model's dtype: a float32-trained Qwen3-0.6B saves 1.2 GB instead of
        # 2.4 GB, about as fast (bench/README.md). The training state itself stays float32. (A LoRA run saves its
        # adapter alone, as trained: save_final casts the merged model.)
        cast_to = None if hasattr(self.model, "merge_and_unload") else self.save_dtype
        if cast_to is not None:
            cast: dict[tuple, torch.Tensor] = {}  # one copy per tensor, so that tied weights stay tied (saved once)
            source = state_dict if state_dict is not None else self.model.state_dict()
            state_dict = {}
            for name, tensor in source.items():
                key = (tensor.data_ptr(), tensor.shape, tensor.stride())
                if tensor.is_floating_point() and key not in cast:
                    cast[key] = tensor.to(cast_to)
                    if not bool(torch.isfinite(cast[key]).all()):  # float16 overflows above 65,504
                        raise NonFiniteError(
                            f"weight {name} is not finite in model.save_dtype={str(cast_to).removeprefix('torch.')} "
                            "(it is in the trained weights): nothing was saved; use model.save_dtype=bfloat16 or null"
                        )
                state_dict[name] = cast.get(key, tensor)
        with secrets_hidden(self.args):  # training_args.bin is the TrainingArguments object, pickled
            super()._save(output_dir, state_dict)
        if cast_to is not None and self.args.should_save:
            # save_pretrained wrote the dtype of the weights in memory (float32) into config.json; the file must say
            # what the saved tensors are, so that dtype="auto" (and vLLM's --dtype auto) loads them as they are.
            config = self.model.config
            trained, config.dtype = config.dtype, str(cast_to).removeprefix("torch.")
            try:
                config.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)
            finally:
                config.dtype = trained

    def _issue_warnings_after_load(self, load_result):
        # Resuming: every weight of the model must come from the checkpoint. A tied LM head is saved once, as the
        # input embedding, so it is "missing" and tied again; any other missing or unexpected key is refused (the
        # Trainer would only warn, and train on with that weight as it was before the load).
        head, embedding = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        tied = {"lm_head.weight"} if head is not None and head.weight is embedding.weight else set()
        missing, unexpected = set(load_result.missing_keys) - tied, set(load_result.unexpected_keys)
        if missing or unexpected:
            found = [f"{what}: {', '.join(sorted(keys)[:3])}" for what, keys in (("missing", missing),
                                                                                  ("unexpected", unexpected)) if keys]
            raise SlamkitError(f"the checkpoint resumed from does not hold this model's weights ({'; '.join(found)})")
        self.model.tie_weights()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        choice_ids = inputs.pop("choice_ids", None)
        labels = inputs["labels"]
        if "position_ids" in inputs:  # packed: the LM head only at the positions whose next token is supervised
            del inputs["labels"]
            shifted = labels[0, 1:]
            positions = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
            outputs = model(**inputs, logits_to_keep=positions, use_cache=False, output_hidden_states=choice_ids is not None)
            logits = outputs.logits.squeeze(0).float()  # squeeze, not [0]: indexing would allocate a zeroed grad
            targets = shifted[positions]
            loss = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=self.args.label_smoothing_factor)
            # Normalised as transformers' own loss: by the supervised tokens of the whole optimizer step (across
            # accumulation and devices) when the Trainer counted them, else a per-batch mean.
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients; undo it for a global sum
            if not return_outputs:
                return loss
            sequence = (inputs["position_ids"][0] == 0).cumsum(0)[positions] - 1
            hidden = outputs.hidden_states[-1][0, positions] if choice_ids is not None else None
        else:  # padded: the model's own loss over the logits at every position (the straightforward path)
            if choice_ids is not None:
                inputs["output_hidden_states"] = True
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if not return_outputs:
                return loss
            supervised = labels[:, 1:] != IGNORE_INDEX
            targets, sequence = labels[:, 1:][supervised], supervised.nonzero()[:, 0]
            hidden = outputs.hidden_states[-1][:, :-1][supervised] if choice_ids is not None else None
        result = {"loss": loss}
        if choice_ids is not None:  # validation: each row's answer from the same pass, its letters scored in float32
            result.update(answer_predictions(self.model, hidden.detach(), targets, sequence, choice_ids))
        return loss, result

    def _save_checkpoint(self, model, trial):
        # Overridden rather than a callback: on_save runs after the Trainer has written the checkpoint AND deleted
        # older ones (save_total_limit), so a record written there could be missing from the only complete one.
        step = self.state.global_step
        check_finite_weights(self.model, f"checkpoint-{step}")
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        if self.args.should_save and self.run_record is not None:
            write_record(folder, {k: v for k, v in self.run_record.items() if k != "status"})
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            make_readable(folder)


class NonFiniteGuard(TrainerCallback):
    """Stop the run when a logged loss or gradient norm is not finite, instead of training on into NaN weights
    (the weights themselves are checked before every save)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteError(
                    f"{key} is {value} at step {state.global_step} (training_args.learning_rate={args.learning_rate}): "
                    "the run diverged and was stopped; the checkpoints saved before it are finite. Lower "
                    "training_args.learning_rate, or check the data and the base model"
                )


class DivergenceWatch(TrainerCallback):
    """Flag a training loss that climbs far above where it started: finite, so :class:`NonFiniteGuard` lets it pass,
    but a run that diverged (too high a learning rate, too short a warm-up). Said in the log when it happens (at each
    new high) and again when training ends; ``warnings`` keeps the line for the run record.

    The reference point is the first logged training loss; a loss above ``FACTOR`` times it counts.
    """

    FACTOR = 3.0

    def __init__(self) -> None:
        self.start: float | None = None
        self.highest: float | None = None
        self.warnings: list[str] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None or not math.isfinite(loss):
            return
        if self.start is None:
            self.start = loss
        elif loss > self.FACTOR * self.start and (self.highest is None or loss > self.highest):
            self.highest = loss
            self.warnings = [
                f"the training loss climbed to {loss:.4g} at step {state.global_step}, {loss / self.start:.1f}x its "
                f"start ({self.start:.4g}): the run diverged; lower training_args.learning_rate (now "
                f"{args.learning_rate:g}) or raise training_args.warmup_steps"
            ]
            if state.is_world_process_zero:
                log.warning("warning: %s", self.warnings[0])

    def on_train_end(self, args, state, control, **kwargs):
        if self.warnings and state.is_world_process_zero:
            log.warning("warning: training ended after diverging: %s", self.warnings[0])


class MetricsLog(TrainerCallback):
    """Every logged metrics dict (loss, learning rate, eval loss, eval accuracy) also goes to train_sft.log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            metrics_log.info("step %d: %s", state.global_step, logs)


def build_trainer(
    model: torch.nn.Module,
    args: TrainingArguments,
    train_rows: Sequence[TokenRow],
    val_rows: Sequence[TokenRow] | None = None,
    *,
    tokenizer=None,
    speed: SpeedSettings = SpeedSettings(),
    callbacks: Sequence[TrainerCallback] = (),
    run_record: dict[str, Any] | None = None,
    save_dtype: torch.dtype | None = None,
) -> SFTTrainer:
    """The one construction site of :class:`SFTTrainer`: collator, datasets, validation accuracy, compile.

    Validation rows that all carry ``choice_ids`` get ``eval_accuracy`` beside ``eval_loss`` (same pass).
    """
    with_choices = bool(val_rows) and all(row.choice_ids is not None for row in val_rows)
    if val_rows and not with_choices:
        log.info("validation rows carry no choice_ids: reporting validation loss only")
    if speed.compile:
        for layer in model.get_decoder().layers:
            layer.compile(dynamic=True)
        log.info("compile: each decoder layer wrapped in torch.compile (dynamic shapes)")
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(train_rows),
        eval_dataset=TokenDataset(val_rows, with_choice_ids=with_choices) if val_rows else None,
        data_collator=SFTCollator(packing=speed.packing, pad_id=pad_id),
        processing_class=tokenizer,
        compute_metrics=answer_accuracy if with_choices else None,
        callbacks=[NonFiniteGuard(), DivergenceWatch(), MetricsLog(), *callbacks],
    )
    trainer.run_record = run_record
    trainer.save_dtype = save_dtype
    return trainer


# ------------------------------------------------------------------------------------------------ train()


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    global_step: int
    metrics: dict[str, float]  # the last evaluation's eval_* metrics ({} without validation)

    @property
    def eval_accuracy(self) -> float | None:
        return self.metrics.get("eval_accuracy")


DISK_MESSAGES = ("no space left on device", "disk quota exceeded", "read-only file system", "file too large")


def disk_problem(err: BaseException) -> str | None:
    """``"no space left on device"`` (etc.) when ``err`` is a write failing for the disk's sake, else None: an
    OSError says so with its errno, safetensors' and torch.save's errors only in their message."""
    if isinstance(err, OSError) and err.errno in DISK_ERRORS:
        return (err.strerror or str(err)).lower()
    return next((message for message in DISK_MESSAGES if message in str(err).lower()), None)


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe plain data (enums and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def secrets_hidden(args: TrainingArguments):
    """While the block writes ``args`` somewhere (the Trainer's training_args.bin), its secrets are blank."""
    kept = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if is_secret(f.name) and getattr(args, f.name)}
    for name in kept:
        setattr(args, name, None)
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(args, name, value)


def run_record(
    config: SFTConfig, args: TrainingArguments, plan: BatchPlan, data: dict[str, Any], command_line: Sequence[str],
    fmt: PromptFormat,
) -> dict[str, Any]:
    """What the run folder records: the requested config (secrets redacted), what really ran, and the data."""
    plain = _plain(dataclasses.asdict(config))
    return {
        "slamkit": __version__,
        "status": "running",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
        "command_line": redact_command_line(command_line),
        "config": {**plain, "training_args": {k: REDACTED if is_secret(k) and v else v for k, v in plain["training_args"].items()}},
        "effective": {
            "world_size": plan.world_size,
            "per_device_train_batch_size": plan.per_device,
            "gradient_accumulation_steps": plan.accumulation,
            "global_batch": plan.global_batch,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps,
            "device": args.device.type,
            "bf16": args.bf16,
            "saved_weights_dtype": (config.model.save_dtype if args.save_only_model else None) or config.model.dtype,
            # how the rows' prompts were rendered (step 2's --prompt_format); eval_arc.py scores in the same format
            "prompt_format": fmt.name,
            "prompt": fmt.prompt("{user_text}"),
        },
        "data": data,
    }


def _data_record(files: Sequence[Path], rows: Sequence[TokenRow] | None) -> dict[str, Any] | None:
    if rows is None:
        return None
    return {"files": [str(f) for f in files], "rows": len(rows), "sha256": files_sha256(files)}


def check_rows_match_tokenizer(rows: Sequence[TokenRow], tokenizer, where: str, tokenizer_name: str) -> None:
    """Token rows end with ``<|im_end|>`` (step 2 supervises it): rows made with another model's tokenizer have
    another id there. Refused, naming the row, with what to re-run."""
    try:
        im_end = chatml_ids(tokenizer).im_end
    except SlamkitError:
        return  # no ChatML tokenizer: nothing to compare against
    for index, row in enumerate(rows):
        last = next(label for label in reversed(row.labels) if label != IGNORE_INDEX)
        if last != im_end:
            raise SlamkitError(
                f"{where} row {index + 1}{f' (id {row.id})' if row.id else ''}: ends with token id {last}, but "
                f"<|im_end|> is {im_end} for {tokenizer_name}: the rows were made with another tokenizer; re-run "
                f"prepare_arc_tokens.py with --tokenizer {tokenizer_name}"
            )


def interrupted(err: KeyboardInterrupt, output_dir: Path, step: int | None) -> Interrupted:
    """The one line for a run stopped by a signal, with what can resume it."""
    name = str(err) or "SIGINT"
    number = getattr(signal, name, signal.SIGINT)
    resume = newest_complete_checkpoint(output_dir)
    if resume is not None and all((resume / name).is_file() for name in RESUME_STATE):
        after = f"cont_training=true resumes from {resume.name}"
    elif resume is not None:
        after = f"{resume.name} holds weights only (save_only_model=true): it cannot be resumed"
    else:
        after = "no checkpoint was saved yet"
    at = f" at step {step}" if step is not None else " before training began"
    return Interrupted(f"{output_dir}: interrupted ({name}){at}; {after}", int(number))


@dataclass
class PreparedRun:
    """Everything :func:`prepare` checked and read before the weights are loaded."""

    tokenizer: Any
    train_rows: list[TokenRow]
    val_rows: list[TokenRow] | None
    record: dict[str, Any]  # the run record (slamkit_run.yaml)
    header: list[str]  # the lines the run printed first, repeated at the top of train_sft.log
    resume_from: Path | None  # cont_training: the checkpoint to resume from


def prepare(config: SFTConfig, args: TrainingArguments, folder: RunFolder | None, command_line: Sequence[str]) -> PreparedRun:
    """Every check that needs no weights, the cheapest first, before any weight is read: the folder (claimed by this
    run), the data files, the tokenizer, the token rows (against the model's context and vocabulary, the tokenizer
    and one prompt format), the batch plan and the checkpoint to resume from."""
    data, model = config.data, config.model
    check_attention(model.attn_implementation)
    if args.n_gpu > 1 and config.speed.packing:
        raise SlamkitError(
            f"{args.n_gpu} GPUs visible to one process: launch with torchrun --nproc_per_node={args.n_gpu} "
            "(or accelerate launch --multi_gpu), or set CUDA_VISIBLE_DEVICES to one GPU"
        )
    train_files, val_files = (expand_paths(paths) if paths else [] for paths in (data.train_path, data.val_path))
    if folder is not None:  # a folder that holds another run, or any of this run's inputs, is refused here
        folder.claim(config.cont_training, config.overwrite, rotates=args.save_total_limit is not None,
                     inputs=[model.base_model_name, model.tokenizer_name, *train_files, *val_files])
    for path in set(val_files) & set(train_files):
        log.warning("warning: data.val_path %s is also a training file: its validation figures measure data the "
                    "model trains on", path)
    tokenizer = load_tokenizer(model.tokenizer_name, model.trust_remote_code)
    model_config = load_model_config(model.base_model_name, model.trust_remote_code)
    context = getattr(model_config, "max_position_embeddings", None)
    rows = embedding_rows(model_config.vocab_size, len(tokenizer), model.vocab_size, model.base_model_name)
    train_rows = load_token_rows(train_files, context, rows, data.max_train_examples)
    val_rows = load_token_rows(val_files, context, rows, data.max_val_examples) if val_files else None
    groups = [("data.train_path", train_rows), ("data.val_path", val_rows or [])]
    for name, checked in groups:
        check_rows_match_tokenizer(checked, tokenizer, name, model.tokenizer_name)
    fmt = rows_prompt_format(groups, tokenizer)
    plan = batch_plan(args, config.training_args, len(train_rows))
    memory = check_memory(config, args, model_config, plan, train_rows)
    header = [
        f"command line: {' '.join(redact_command_line(command_line)) or '(none)'}",
        f"data: {len(train_rows)} training rows" + (f", {len(val_rows)} validation rows" if val_rows else "")
        + (f" (prompt format {fmt.name})" if fmt.name != "seed" else ""),
        plan.describe(),
    ]
    for line in header[1:]:
        log.info("%s", line)
    data_record = {"train": _data_record(train_files, train_rows), "validation": _data_record(val_files, val_rows)}
    record = run_record(config, args, plan, data_record, command_line, fmt)
    record["effective"].update(trained=config.peft.describe() if config.peft else "every weight (full fine-tuning)",
                               parameters=memory.parameters, trained_parameters=memory.trained)
    if folder is not None:
        resume_from = folder.resume_point(record, config.cont_training, config.accept_changed_settings)
    else:
        resume_from = newest_complete_checkpoint(Path(args.output_dir)) if config.cont_training else None
    return PreparedRun(tokenizer, train_rows, val_rows, record, header, resume_from)


def check_memory(config: SFTConfig, args: TrainingArguments, model_config, plan: BatchPlan, rows) -> memory.Plan:
    """The memory plan of this run (slamkit.memory), from the model's config, before any weight is read."""
    if config.peft is not None:
        from transformers.utils import is_peft_available

        if not is_peft_available():
            raise SlamkitError("peft=lora needs the peft package: pip install -e '.[lora]'")
        if args.fsdp:
            raise SlamkitError("peft=lora with training_args.fsdp: not supported here; LoRA trains on one GPU what "
                               "full fine-tuning needs several for (the memory plan says which fits)")
    tokens = round(plan.per_device * sum(len(row.input_ids) for row in rows) / len(rows))
    setup = memory.Setup(
        weight_bytes=parse_dtype(config.model.dtype).itemsize, activation_bytes=2 if args.bf16 else 4,
        optimizer=_name(args.optim), tokens=tokens, accumulation=plan.per_device // plan.requested_per_device,
        processes=args.world_size if args.fsdp else 1, local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        checkpointing=args.gradient_checkpointing, lora_rank=config.peft.r if config.peft else None,
    )
    return memory.check(model_config, setup, args.device.type, enforce=config.memory_check)


@contextlib.contextmanager
def disk_errors_stop_the_run(output_dir: Path):
    """A full disk (or a read-only one) while saving: one line saying what is intact. safetensors and torch.save
    report it as RuntimeError or SafetensorError with the reason in the message."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        reason = disk_problem(err)
        if reason is None:
            raise
        raise SlamkitError(
            f"{output_dir}: {reason} while saving; the run stopped, its complete checkpoints are intact "
            "(cont_training=true resumes from the newest)"
        ) from None


def save_final(trainer: SFTTrainer, output_dir: Path) -> None:
    """The final weights, a plain HF model; a LoRA run's adapter goes to ``adapter/`` and its merged model here (an
    adapter_config.json beside config.json would make from_pretrained look for the base model)."""
    if hasattr(trainer.model, "merge_and_unload"):  # a peft model
        trainer.save_model(str(output_dir / "adapter"))
        merged = trainer.model.merge_and_unload()
        if trainer.args.should_save:
            merged.to(trainer.save_dtype or merged.dtype).save_pretrained(output_dir)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json (the log history) beside the final weights


def record_the_run(folder: RunFolder, trainer: SFTTrainer, record: dict[str, Any]) -> None:
    """The finished run's record (with any divergence warning) and its training curves; the folder marked complete."""
    from slamkit.plots import plot_training_curves

    watch = next(c for c in trainer.callback_handler.callbacks if isinstance(c, DivergenceWatch))
    if watch.warnings:
        record["warnings"] = watch.warnings
    try:
        plot_training_curves(trainer.state.log_history, folder.path / "training_curves.png", title=trainer.args.run_name)
    except ValueError as err:  # e.g. fewer steps than logging_steps: nothing was logged
        log.info("training curves not plotted: %s", err)
    folder.finish(record)


def train(config: SFTConfig, command_line: Sequence[str] = ()) -> TrainResult:
    """Fine-tune as ``config`` says; return the output folder (a plain HF checkpoint of the final weights).

    The recipe: check the settings (transformers' own checks included), hold the run folder, check everything else
    that needs no weights, load the model, build the trainer, train, save, record. Every ``checkpoint-N/`` and the
    output folder hold the weights (safetensors), the tokenizer and ``slamkit_run.yaml``, and load with
    ``AutoModelForCausalLM``/``AutoTokenizer``.
    """
    args = build_training_arguments(config.training_args, config.speed, has_validation=config.data.val_path is not None)
    output_dir = Path(args.output_dir)
    with RunFolder(output_dir) if args.process_index == 0 else contextlib.nullcontext() as folder:
        trainer = None  # rank 0 holds the folder (folder is None elsewhere)
        try:
            run = prepare(config, args, folder, command_line)
            set_seed(args.seed)
            model = build_model(config.model, len(run.tokenizer), run.resume_from, config.peft)
            trainer = build_trainer(
                model, args, run.train_rows, run.val_rows, tokenizer=run.tokenizer, speed=config.speed,
                run_record=run.record, save_dtype=parse_dtype(config.model.save_dtype)
                if config.model.save_dtype and args.save_only_model else None,
            )
            if folder is not None:
                folder.start(run.record, run.header)
            with disk_errors_stop_the_run(output_dir):
                trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
                check_finite_weights(trainer.model, f"{output_dir} (final weights)")
                save_final(trainer, output_dir)
            if folder is not None:
                record_the_run(folder, trainer, run.record)
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (errors.run_main): one line, the record says so
            raise interrupted(err, output_dir, trainer.state.global_step if trainer is not None else None) from None
    metrics = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), {})
    return TrainResult(output_dir, trainer.state.global_step, {k: v for k, v in metrics.items() if k.startswith("eval_")})
