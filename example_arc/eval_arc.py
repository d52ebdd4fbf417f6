"""Step 4b: categorical accuracy of a trained checkpoint (letter logits at the answer position).

    python example_arc/eval_arc.py --model_path example_arc/arc_model/checkpoint-423 \\
        --data_path example_arc/arc_easy_test.jsonl --batch_size 16 [--max_problems 100] [--output_dir DIR]

The tokenizer is the checkpoint's own (saved beside the weights by cli/train_sft.py); only a folder without
one falls back to --tokenizer, and says so. Any local Hugging Face causal LM folder with a ChatML tokenizer
can be scored. Every question asked for is scored, or the run fails with one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slamkit.errors import one_line_on_ctrl_c, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

from slamkit.arc import read_conversations
from slamkit.chatml import prompt_format
from slamkit.evaluation import (
    add_eval_arguments,
    check_eval_arguments,
    eval_settings,
    first_problems,
    held_output_dir,
    run_categorical,
)
from slamkit.model import choose_device, choose_dtype, load_causal_lm, load_tokenizer
from slamkit.run_folder import check_run_finished, read_record

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", required=True, help="checkpoint folder (or any HF causal LM folder / hub id)")
    parser.add_argument("--tokenizer", default="Qwen/Qwen3-0.6B", help="used only if --model_path has no tokenizer")
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def trained_format(folder: Path, requested: str | None) -> str:
    """The prompt format to score in: ``--prompt_format`` when given (a note when it is not the one the checkpoint
    was trained in), else the checkpoint's own (its run record), else ``seed``."""
    record = read_record(folder) if folder.is_dir() else None
    trained = ((record or {}).get("effective") or {}).get("prompt_format")
    if requested is not None and trained is not None and requested != trained:
        print(f"note: {folder} was trained with --prompt_format {trained}; scoring it with {requested} as asked")
    return requested or trained or "seed"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_eval_arguments(args)
    with held_output_dir(args.output_dir, args.overwrite, inputs=[args.data_path]):
        return evaluate(args)


def evaluate(args: argparse.Namespace) -> int:
    records = first_problems(read_conversations(args.data_path, require_choices=True), args.max_problems)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    folder = Path(args.model_path)
    check_run_finished(folder)
    model = load_causal_lm(args.model_path, dtype).to(device)  # first: a missing folder is "no such model folder"
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        print(f"note: {folder} has no tokenizer; using --tokenizer {args.tokenizer}")
        tokenizer_name = args.tokenizer
    else:
        tokenizer_name = args.model_path
    tokenizer = load_tokenizer(tokenizer_name)
    fmt = prompt_format(trained_format(folder, args.prompt_format), tokenizer)
    settings = eval_settings(
        args.model_path, tokenizer_name, args.data_path, "categorical", args.batch_size, args.max_problems, device,
        dtype, fmt,
    )
    _, lines = run_categorical(model, tokenizer, records, settings, args.output_dir, fmt)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_main(main)
