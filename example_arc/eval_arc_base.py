"""Step 4a: accuracy of the base model before any training (same prompt and scoring as eval_arc.py).

    python example_arc/eval_arc_base.py --model_name Qwen/Qwen3-0.6B \\
        --data_path example_arc/arc_easy_test.jsonl --batch_size 16 --max_problems 100
    python example_arc/eval_arc_base.py --scoring cloze ...   # lm-evaluation-harness style acc / acc_norm

The base model and its own tokenizer, as published: no embedding resize. Every question asked for is scored,
or the run fails with one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slamkit.errors import SlamkitError, one_line_on_ctrl_c, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

from slamkit.arc import read_conversations
from slamkit.chatml import prompt_format
from slamkit.cloze import score_cloze
from slamkit.evaluation import (
    add_eval_arguments,
    check_eval_arguments,
    eval_settings,
    first_problems,
    held_output_dir,
    run_categorical,
    summary_line,
    wilson_interval,
    write_outputs,
)
from slamkit.model import choose_device, choose_dtype, load_causal_lm, load_tokenizer
from slamkit.run_folder import check_run_finished


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="Qwen/Qwen3-0.6B", help="hub id or local folder")
    parser.add_argument(
        "--scoring", default="categorical", choices=["categorical", "cloze"],
        help="categorical: letter logits after the ChatML prompt (as eval_arc.py); cloze: log-likelihood of each "
        "choice's text after 'Question: ...\\nAnswer:', acc and acc_norm as lm-evaluation-harness's arc_easy",
    )
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_eval_arguments(args)
    if args.scoring == "cloze" and args.prompt_format is not None:
        raise SlamkitError("--prompt_format applies to categorical scoring; cloze uses the harness's own prompt")
    with held_output_dir(args.output_dir, args.overwrite, inputs=[args.data_path]):
        return evaluate(args)


def evaluate(args: argparse.Namespace) -> int:
    records = first_problems(read_conversations(args.data_path, require_choices=True), args.max_problems)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    check_run_finished(Path(args.model_name))  # a slamkit run folder must be finished; other folders pass
    tokenizer = load_tokenizer(args.model_name)
    model = load_causal_lm(args.model_name, dtype).to(device)
    fmt = prompt_format(args.prompt_format or "seed", tokenizer) if args.scoring == "categorical" else None
    settings = eval_settings(
        args.model_name, args.model_name, args.data_path, args.scoring, args.batch_size, args.max_problems, device,
        dtype, fmt,
    )
    if fmt is not None:
        _, lines = run_categorical(model, tokenizer, records, settings, args.output_dir, fmt)
        print("\n".join(lines))
        return 0
    start = time.perf_counter()
    predictions = score_cloze(model, tokenizer, records, args.batch_size)
    total = len(records)
    correct = sum(p.pred == p.gold for p in predictions)
    correct_norm = sum(p.pred_norm == p.gold for p in predictions)
    print(f"{args.model_name} on {args.data_path}: {total} questions (cloze), {device} {settings['dtype']}, "
          f"{time.perf_counter() - start:.1f} s")
    print(summary_line(correct, total, label="acc"))
    print(summary_line(correct_norm, total, label="acc_norm"))
    if args.output_dir:
        results = {
            "accuracy": correct / total, "accuracy_norm": correct_norm / total, "correct": correct,
            "correct_norm": correct_norm, "total": total, "skipped": 0, "ci95": list(wilson_interval(correct, total)),
            "ci95_norm": list(wilson_interval(correct_norm, total)), **settings,
        }
        lines = [
            {"id": p.id, "gold": r["choice_labels"][p.gold], "pred": r["choice_labels"][p.pred],
             "pred_norm": r["choice_labels"][p.pred_norm], "loglik": dict(zip(r["choice_labels"], p.loglik, strict=True))}
            for p, r in zip(predictions, records, strict=True)
        ]
        letters = sorted({letter for r in records for letter in r["choice_labels"]})
        confusion = ([line["gold"] for line in lines], [line["pred"] for line in lines], letters)  # acc's predictions
        for path in write_outputs(args.output_dir, results, lines, confusion):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
