"""Step 4a: accuracy of the base model before any training (same prompt and scoring as eval_arc.py).

    python example_arc/eval_arc_base.py --model_name Qwen/Qwen3-0.6B \
        --data_path example_arc/arc_easy_test.jsonl --batch_size 16 --max_problems 100
    python example_arc/eval_arc_base.py --scoring cloze ...   # lm-evaluation-harness style acc / acc_norm

The base model and its own tokenizer, as published: no embedding resize. The answer is picked in float32 whatever
dtype the model runs in. Every question asked for is scored, or the run fails with one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse

from slamkit.errors import one_line_on_ctrl_c, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

from slamkit.evaluation import add_eval_arguments, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="Qwen/Qwen3-0.6B", help="hub id or local folder")
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("\n".join(evaluate(args, model_name=args.model_name, tokenizer_name=args.model_name)))
    return 0


if __name__ == "__main__":
    run_main(main)
