"""The settings of a training run, as typed dataclasses: the schema of ``config/train_sft.yaml`` and what
:func:`slamkit.training.train` takes.

``cli/train_sft.py`` registers :class:`SFTConfig` with Hydra's ConfigStore, so a misspelt key or a value of the
wrong type (``training_args.num_train_epochs=three``, ``speed.packing=maybe``) fails when the config is
composed, naming the key. The ranges are checked here, in ``__post_init__``, when the dataclasses are built
(``OmegaConf.to_object``): still before any data or weights are read. The library itself never sees Hydra.

``training_args`` is ``transformers.TrainingArguments`` itself, field for field: its schema is generated from
the installed transformers, with transformers' own defaults, so every ``TrainingArguments`` keyword can be set
(``training_args.max_grad_norm=0.5``) and none of its defaults is restated here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from slamkit.errors import SlamkitError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
CPU_BF16_CHOICES = ("auto", "force")

# TrainingArguments keys that transformers 5.x no longer accepts, and what to write instead.
REMOVED_TRAINING_ARGS = {
    "warmup_ratio": "training_args.warmup_steps=0.03 (a float below 1 is a fraction of the total steps)",
    "evaluation_strategy": "training_args.eval_strategy=...",
    "overwrite_output_dir": "overwrite=true (replaces the run in training_args.output_dir) or another output_dir",
    "logging_dir": "nothing: delete it (loggers write under output_dir)",
    "torch_dtype": "model.dtype=...",
    "group_by_length": "training_args.train_sampling_strategy=group_by_length",
    "save_safetensors": "nothing: delete it (checkpoints are always safetensors)",
    "no_cuda": "training_args.use_cpu=true",
}

_PRIMITIVES = (bool, int, float, str)


def _schema_type(annotation: Any) -> Any:
    """The type OmegaConf checks for a ``TrainingArguments`` field: ``int``, ``float``, ``bool``, ``str`` (or
    ``X | None``) as declared; ``Any`` for the unions OmegaConf cannot check (``TrainingArguments`` checks those)."""
    if annotation in _PRIMITIVES:
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = typing.get_args(annotation)
        kept = [m for m in members if m is not type(None)]
        if len(kept) == 1 and kept[0] in _PRIMITIVES:
            return kept[0] | None
        if str in kept and type(None) not in members and all(isinstance(m, type) and issubclass(m, str) for m in kept):
            return str  # e.g. IntervalStrategy | str: the strategies are str enums
    return Any


def _finite(low: float, high: float = math.inf, high_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: v is not None and math.isfinite(v) and low <= v and (v < high if high_open else v <= high)


# Ranges of TrainingArguments values that TrainingArguments itself accepts but that cannot train.
TRAINING_ARGUMENT_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_train_epochs": (lambda v: math.isfinite(v) and v > 0, "a number above 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (train num_train_epochs) or at least 1"),
    "per_device_train_batch_size": (lambda v: v >= 1, "at least 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "learning_rate": (_finite(0), "a finite number >= 0"),
    "weight_decay": (_finite(0), "a finite number >= 0"),
    "max_grad_norm": (_finite(0), "a finite number >= 0 (0 = no clipping)"),
    "warmup_steps": (_finite(0), "a finite number >= 0 (below 1: a fraction of the total steps)"),
    "label_smoothing_factor": (_finite(0, 1, high_open=True), "at least 0 and below 1"),
    "logging_steps": (lambda v: v > 0, "above 0"),
    "save_steps": (lambda v: v > 0, "above 0"),
    "eval_steps": (lambda v: v is None or v > 0, "null or above 0"),
    "save_total_limit": (lambda v: v is None or v >= 1, "null (keep all) or at least 1"),
    "dataloader_num_workers": (lambda v: v >= 0, "at least 0"),
    # numpy's generator, which transformers' set_seed seeds too, takes 0 .. 2**32-1 only
    "seed": (lambda v: 0 <= v < 2**32, f"between 0 and {2**32 - 1:,}"),
    "data_seed": (lambda v: v is None or 0 <= v < 2**32, f"null (= seed) or between 0 and {2**32 - 1:,}"),
    "neftune_noise_alpha": (lambda v: v is None or (math.isfinite(v) and v > 0), "null (off) or a number above 0"),
    # the Trainer never reads it (only example scripts do): a run resumes its own folder with cont_training=true
    "resume_from_checkpoint": (lambda v: v is None, "null: resume with cont_training=true (from the newest complete "
                                                    "checkpoint of training_args.output_dir)"),
}


class _TrainingArgumentsChecks:
    def __post_init__(self) -> None:
        for name, (ok, what) in TRAINING_ARGUMENT_RANGES.items():
            value = getattr(self, name, None)
            if name in self.__dataclass_fields__ and not ok(value):
                raise SlamkitError(f"training_args.{name}={value!r}: must be {what}")


_TRAINING_ARGUMENT_TYPES = typing.get_type_hints(TrainingArguments)
TrainingArgumentsSettings = dataclasses.make_dataclass(
    "TrainingArgumentsSettings",
    [(f.name, _schema_type(_TRAINING_ARGUMENT_TYPES[f.name]), field(default=f.default, default_factory=f.default_factory))
     for f in dataclasses.fields(TrainingArguments) if f.init],
    bases=(_TrainingArgumentsChecks,),
    namespace={"__module__": __name__, "__doc__": "Every ``transformers.TrainingArguments`` keyword with its type and "
               "transformers' default (generated from the installed transformers); ranges checked on construction."},
)
TRAINING_ARGUMENT_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArgumentsSettings))


def training_arguments_settings(**kwargs: Any) -> Any:
    """``TrainingArgumentsSettings(**kwargs)``; an unknown key is a one-line error with what to write instead."""
    for key in kwargs:
        if key not in TRAINING_ARGUMENT_NAMES:
            raise SlamkitError(unknown_key_message(f"training_args.{key}"))
    return TrainingArgumentsSettings(**kwargs)


@dataclass
class ModelSettings:
    base_model_name: str  # hub id or local folder of the pretrained text LM
    tokenizer_name: str  # saved beside every checkpoint; must have <|im_start|>/<|im_end|>
    twist_init: bool = True  # false: the same architecture with random weights
    dtype: str = "float32"  # weights (and AdamW state); bf16 compute comes from training_args.bf16
    attn_implementation: str | None = "sdpa"
    vocab_size: int | None = None  # grow the embedding table to this many rows (new token types)
    trust_remote_code: bool = False
    allow_pickle: bool = False  # load .bin (pickle) weights; false = safetensors only
    # The dtype of the saved weights when checkpoints are weights only (training_args.save_only_model=true); null =
    # as trained. Checkpoints that can be resumed always keep the weights as trained.
    save_dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.base_model_name or not self.tokenizer_name:
            raise SlamkitError("model.base_model_name and model.tokenizer_name are required")
        for key in ("dtype", "save_dtype"):
            value = getattr(self, key)
            if value not in DTYPE_NAMES and (key == "dtype" or value is not None):
                raise SlamkitError(f"model.{key}={value!r}: must be one of {', '.join(DTYPE_NAMES)}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise SlamkitError(f"model.vocab_size={self.vocab_size}: must be null or at least 1")


def _strings(value: Any) -> bool:
    """A non-empty string, or a non-empty list of them."""
    items = [value] if isinstance(value, str) else value
    return isinstance(items, list) and bool(items) and all(isinstance(item, str) and item for item in items)


@dataclass
class DataSettings:
    train_path: Any  # step-2 token rows: a file, a glob, or a list of them (str | list[str])
    val_path: Any = None  # the same for validation; null = no validation
    max_train_examples: int | None = None  # the first N rows; null = all
    max_val_examples: int | None = None

    def __post_init__(self) -> None:
        for key, value in (("train_path", self.train_path), ("val_path", self.val_path)):
            if not _strings(value) and not (key == "val_path" and value is None):
                raise SlamkitError(f"data.{key}={value!r}: must be a file, a glob or a non-empty list of them")
        for key in ("max_train_examples", "max_val_examples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SlamkitError(f"data.{key}={value}: must be null (all rows) or at least 1")


@dataclass
class SpeedSettings:
    packing: bool = True  # one padding-free row per micro-batch, LM head only at the supervised positions
    single_micro_batch: bool = True  # per-device batch x accumulation run as one micro-batch
    compile: bool = False  # torch.compile each decoder layer (regional), dynamic shapes
    # training_args.bf16 on a CPU: "auto" autocasts only where the CPU computes bfloat16 natively (AVX512-BF16 or
    # AMX) and trains in float32 elsewhere (on AVX2 bf16 autocast is several times slower); "force" autocasts anyway
    cpu_bf16: str = "auto"

    def __post_init__(self) -> None:
        if self.cpu_bf16 not in CPU_BF16_CHOICES:
            raise SlamkitError(f"speed.cpu_bf16={self.cpu_bf16!r}: must be one of {', '.join(CPU_BF16_CHOICES)}")


@dataclass
class LoraSettings:
    """LoRA through peft (``peft=lora``: config/peft/lora.yaml): adapters of rank ``r`` on ``target_modules``, the
    base weights frozen. ``all-linear``: every linear layer of the decoder (not the LM head)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names (q_proj, v_proj, ...)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise SlamkitError(f"peft: r={self.r}, alpha={self.alpha}, dropout={self.dropout}: r and alpha must be "
                               "above 0 and dropout in [0, 1)")
        if not _strings(self.target_modules):
            raise SlamkitError(f"peft.target_modules={self.target_modules!r}: must be all-linear or a list of module names")

    def describe(self) -> str:
        return f"LoRA r={self.r} alpha={self.alpha} dropout={self.dropout} on {self.target_modules}"


@dataclass
class SFTConfig:
    """One training run: what ``config/train_sft.yaml`` composes and :func:`slamkit.training.train` runs."""

    model: ModelSettings
    data: DataSettings
    training_args: TrainingArgumentsSettings = field(default_factory=TrainingArgumentsSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    cont_training: bool = False  # resume the run in training_args.output_dir from its newest complete checkpoint
    overwrite: bool = False  # replace the run in training_args.output_dir (moved, whole, to <folder>.replaced-<time>)
    accept_changed_settings: bool = False  # resume although settings that matter differ from the folder's run
    peft: LoraSettings | None = None  # None: full fine-tuning (config/peft/none.yaml); peft=lora: LoRA adapters
    memory_check: bool = True  # false: run even when the memory plan says the run will not fit

    def __post_init__(self) -> None:
        if self.cont_training and self.overwrite:
            raise SlamkitError("cont_training=true and overwrite=true contradict each other: choose one")
        if isinstance(self.training_args, dict):
            self.training_args = training_arguments_settings(**self.training_args)
        if not self.training_args.output_dir:
            raise SlamkitError("training_args.output_dir is required: the folder of this run")
        self.training_args.output_dir = os.path.expanduser(self.training_args.output_dir)  # "~/runs/x": not a "~"


REDACTED = "<redacted>"


def is_secret(key: str) -> bool:
    """A setting that holds a credential: transformers' own rule (``TrainingArguments.to_dict`` hides ``*_token``)."""
    return key.rsplit(".", 1)[-1].lstrip("+~").endswith("_token")


def redact_command_line(command_line: Sequence[str]) -> list[str]:
    """The overrides as given, a secret's value replaced (``training_args.hub_token=<redacted>``)."""
    return [f"{item.split('=', 1)[0]}={REDACTED}" if is_secret(item.split("=", 1)[0]) else item for item in command_line]


def config_keys(schema: type = SFTConfig, prefix: str = "") -> list[str]:
    """Every key of the schema, dotted (``model``, ``model.base_model_name``, ``training_args.seed``, ...)."""
    keys: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def unknown_key_message(key: str) -> str:
    """What to say about a config key the schema does not have, with the key it probably meant."""
    section, _, name = key.partition(".")
    if section == "training_args" and name in REMOVED_TRAINING_ARGS:
        return f"training_args.{name} was removed in transformers 5.x: write {REMOVED_TRAINING_ARGS[name]}"
    if section == "training_args" and name:
        close = difflib.get_close_matches(name, sorted(TRAINING_ARGUMENT_NAMES), n=1)
        hint = f": did you mean training_args.{close[0]}?" if close else ""
        return f"{key} is not a transformers TrainingArguments field{hint}"
    keys = config_keys()
    if section not in keys:
        candidates = [k for k in keys if "." not in k]
        target = section
    else:
        candidates = [k for k in keys if k.startswith(section + ".") and k.count(".") == key.count(".")]
        target = key
    close = difflib.get_close_matches(target, candidates, n=1)
    return f"{key} is not a config key" + (f": did you mean {close[0]}?" if close else "")
