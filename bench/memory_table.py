"""The memory plan's figures for the Qwen3 sizes on one GPU, as a markdown table (what the README shows).

    python bench/memory_table.py                     # one H100 (80 GB), the shipped recipe's micro-batch
    python bench/memory_table.py --gpu_gb 141 --tokens 2464

Each cell is slamkit.memory.plan for the shape (slamkit.model.QWEN3_SHAPES: built on the meta device, nothing
downloaded): float32 weights and AdamW state, bf16 autocast activations, the shipped micro-batch of 16 ARC
examples (~77 tokens each), per GPU. A figure above the GPU's memory is marked: that setup does not fit.
"""

from __future__ import annotations

import argparse

from slamkit import memory
from slamkit.model import qwen3_config

SHAPES = ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu_gb", type=float, default=80.0, help="memory of one GPU (H100: 80, H200: 141)")
    parser.add_argument("--tokens", type=int, default=16 * 77, help="tokens per micro-batch (16 ARC examples)")
    opts = parser.parse_args()
    base = memory.Setup(weight_bytes=4, activation_bytes=2, optimizer="adamw_torch_fused", tokens=opts.tokens)
    setups = {
        "full": base,
        "full + activation checkpointing": memory.Setup(**{**base.__dict__, "checkpointing": True}),
        "LoRA r=16 (all linear)": memory.Setup(**{**base.__dict__, "lora_rank": 16}),
        "full, FSDP over 8 GPUs": memory.Setup(**{**base.__dict__, "processes": 8}),
    }
    print(f"| model | parameters | {' | '.join(setups)} |")
    print("|---|---|" + "---|" * len(setups))
    for shape in SHAPES:
        cells = []
        for setup in setups.values():
            found = memory.plan(qwen3_config(shape), setup, device="cuda")
            fits = found.total <= opts.gpu_gb * memory.GB
            cells.append(f"{found.total / memory.GB:.1f} GB" + ("" if fits else " (does not fit)"))
        print(f"| Qwen3-{shape.split('-')[1].upper()} | {memory.count(found.parameters)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
