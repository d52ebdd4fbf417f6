"""Step 4b: categorical accuracy of a trained checkpoint (letter logits at the answer position).

    python example_arc/eval_arc.py --model_path example_arc/arc_model/checkpoint-423 \
        --data_path example_arc/arc_easy_test.jsonl --batch_size 16 [--max_problems 100] [--output_dir DIR]

The tokenizer is the checkpoint's own (saved beside the weights by cli/train_sft.py); only a folder without
one falls back to --tokenizer, and says so. The prompt format is the one the checkpoint was trained in (its
slamkit_run.yaml). Any local Hugging Face causal LM folder with a ChatML tokenizer can be scored. Every question
asked for is scored, or the run fails with one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slamkit.errors import one_line_on_ctrl_c, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

from slamkit.evaluation import add_eval_arguments, evaluate

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", required=True, help="checkpoint folder (or any HF causal LM folder / hub id)")
    parser.add_argument("--tokenizer", default="Qwen/Qwen3-0.6B", help="used only if --model_path has no tokenizer")
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.model_path)
    tokenizer = args.model_path
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        print(f"note: {folder} has no tokenizer; using --tokenizer {args.tokenizer}")
        tokenizer = args.tokenizer
    print("\n".join(evaluate(args, model_name=args.model_path, tokenizer_name=tokenizer)))
    return 0


if __name__ == "__main__":
    run_main(main)
