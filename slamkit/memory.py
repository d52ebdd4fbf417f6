"""The memory plan: what a run will hold per process, from the model's config alone, before any weight is read.

The parameters are counted on the meta device (shapes, no storage). Per process:

- weights: every parameter in ``model.dtype`` (sharded over the processes with FSDP);
- gradients and optimizer state: for the trained parameters only (all of them, or LoRA's adapters), the
  optimizer's state as its kind keeps it (AdamW: two moments in the weights' dtype);
- activations: what autograd keeps per token and decoder layer (the norms' and projections' inputs, q/k/v and the
  attention output, the MLP's gate, up and product), for the tokens of one micro-batch; with activation
  checkpointing, each layer's input plus one layer's worth;
- under bf16 autocast of float32 weights, the bfloat16 copy of every weight that the forward pass keeps for the
  backward;
- a fixed 1 GB on a CPU for the Python and torch runtime.

Compared with the measured peak on a CPU (docs/performance.md) it is an estimate to about 20%, not a bound.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from slamkit.errors import SlamkitError

log = logging.getLogger(__name__)

GB = 1e9
CPU_RUNTIME = 1.0 * GB  # Python, torch, transformers, the data: measured 0.7-1.0 GB on a CPU
# Optimizer state per trained parameter, in units of the weights' bytes (AdamW: two moments).
OPTIMIZER_STATES = {"sgd": 0.0, "adafactor": 0.05, "adamw_torch_4bit": 0.25, "adamw_8bit": 0.5, "bnb_8bit": 0.5}


@dataclass(frozen=True)
class Setup:
    """What the plan depends on besides the model's shape."""

    weight_bytes: int  # 4 for float32 weights, 2 for bfloat16
    activation_bytes: int  # 4 in float32, 2 under bf16 autocast
    optimizer: str  # training_args.optim
    tokens: int  # tokens of one micro-batch per process (packed rows: their total length)
    accumulation: int = 1  # the sequences of one micro-batch over those of per_device_train_batch_size
    processes: int = 1  # FSDP shards weights, gradients and optimizer state over them
    local_processes: int = 1  # of them on this machine (they share its RAM)
    checkpointing: bool = False  # activation (gradient) checkpointing
    lora_rank: int | None = None  # LoRA on every linear layer of the decoder, of this rank


@dataclass(frozen=True)
class Plan:
    parameters: int
    trained: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    copies: float  # bf16 copies of float32 weights under autocast
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.copies + self.runtime


_SHAPES: dict[str, tuple[int, list[tuple[int, int]]]] = {}  # per config: a plan and its alternatives count once


def _shapes(model_config) -> tuple[int, list[tuple[int, int]]]:
    """The parameter count (tied weights once) and the (in, out) features of the decoder's linear layers."""
    key = model_config.to_json_string()
    if key not in _SHAPES:
        _SHAPES[key] = _count(model_config)
    return _SHAPES[key]


def _count(model_config) -> tuple[int, list[tuple[int, int]]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    linears = [(m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "layers." in name]
    return sum(p.numel() for p in model.parameters()), linears


def plan(model_config, setup: Setup, device: str = "cpu") -> Plan:
    """The bytes one process holds for ``model_config`` trained as ``setup`` (see the module's docstring)."""
    parameters, linears = _shapes(model_config)
    trained = parameters if setup.lora_rank is None else sum(setup.lora_rank * (i + o) for i, o in linears)
    state = next((share for key, share in OPTIMIZER_STATES.items() if key in setup.optimizer), 2.0)
    shard = setup.processes if setup.lora_rank is None else 1  # LoRA keeps its few trained parameters whole
    c = model_config
    h, layers = c.hidden_size, c.num_hidden_layers
    heads = c.num_attention_heads * (getattr(c, "head_dim", None) or h // c.num_attention_heads)
    per_layer = (4 * h + 7 * heads + 4 * c.intermediate_size) * setup.activation_bytes  # per token, see above
    if setup.checkpointing:
        activations = setup.tokens * (layers * h * setup.activation_bytes + per_layer)
    else:
        activations = setup.tokens * layers * per_layer
    return Plan(
        parameters=parameters, trained=trained,
        weights=parameters * setup.weight_bytes / setup.processes,
        gradients=trained * setup.weight_bytes / shard, optimizer=state * trained * setup.weight_bytes / shard,
        activations=activations, runtime=CPU_RUNTIME if device == "cpu" else 0.0,
        copies=parameters * setup.activation_bytes / setup.processes if setup.activation_bytes < setup.weight_bytes else 0,
    )


def available(device: str) -> tuple[float, str]:
    """Bytes free for this run: CUDA's free memory on this process's GPU, else the CPU's available RAM."""
    if device == "cuda":
        return float(torch.cuda.mem_get_info()[0]), f"free on {torch.cuda.get_device_name()}"
    with open("/proc/meminfo", encoding="utf-8") as handle:
        kb = next(int(line.split()[1]) for line in handle if line.startswith("MemAvailable:"))
    return kb * 1024.0, "available CPU RAM"


def count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"


def describe(found: Plan, setup: Setup) -> str:
    how = "full fine-tuning" if setup.lora_rank is None else f"LoRA r={setup.lora_rank}"
    shards = f", sharded over {setup.processes} processes (FSDP)" if setup.processes > 1 else ""
    return (f"{count(found.parameters)} parameters, {count(found.trained)} trained ({how}{shards}): weights "
            f"{found.weights / GB:.1f} GB + gradients {found.gradients / GB:.1f} + optimizer {found.optimizer / GB:.1f} "
            f"+ activations {found.activations / GB:.1f} ({setup.tokens:,} tokens per micro-batch"
            f"{', checkpointed' if setup.checkpointing else ''}) + bf16 weight copies {found.copies / GB:.1f} + runtime "
            f"{found.runtime / GB:.1f} = "
            f"{found.total / GB:.1f} GB per process")


def alternatives(model_config, setup: Setup, free: float, device: str) -> list[str]:
    """The settings whose plan fits in ``free`` bytes (one change at a time, then LoRA's combinations)."""
    lora = replace(setup, lora_rank=16, processes=1)
    tried = {
        "training_args.gradient_checkpointing=true": replace(setup, checkpointing=True),
        "speed.single_micro_batch=false (a micro-batch of per_device_train_batch_size)": replace(
            setup, tokens=max(1, setup.tokens // setup.accumulation)),
        "peft=lora": lora,
        "peft=lora training_args.gradient_checkpointing=true": replace(lora, checkpointing=True),
        "peft=lora model.dtype=bfloat16 training_args.gradient_checkpointing=true": replace(
            lora, checkpointing=True, weight_bytes=2),
    }
    fits = [f"{change} ({found.total / GB:.1f} GB)" for change, s in tried.items()
            if (found := plan(model_config, s, device)).total <= free]
    for n in (2, 4, 8, 16, 32, 64) if setup.lora_rank is None and device == "cuda" else ():
        if (found := plan(model_config, replace(setup, processes=n), device)).total <= free:
            fits.append(f"FSDP over {n} GPUs (torchrun --nproc_per_node={n} cli/train_sft.py training_args=sft_fsdp "
                        f"...; {found.total / GB:.1f} GB each)")
            break
    return fits


def check(model_config, setup: Setup, device: str, enforce: bool) -> Plan:
    """Log the plan against the memory this process can use; a run that will not fit stops here (``enforce``) in
    one line that says by how much and which settings would fit, or goes on with a warning."""
    found = plan(model_config, setup, device)
    free, where = available(device)
    if device == "cpu":
        free /= setup.local_processes  # processes of one machine share its RAM (each GPU is its own)
    log.info("memory plan: %s; %.1f GB %s", describe(found, setup), free / GB, where)
    if found.total > free:
        fits = alternatives(model_config, setup, free, device)
        message = (f"memory plan: this run needs ~{found.total / GB:.1f} GB per process and {free / GB:.1f} GB is "
                   f"{where}: {(found.total - free) / GB:.1f} GB short; would fit: "
                   f"{'; '.join(fits) or 'none of LoRA, activation checkpointing, a smaller micro-batch'}; "
                   "memory_check=false runs anyway")
        if enforce:
            raise SlamkitError(message)
        log.warning("warning: %s", message)
    return found
