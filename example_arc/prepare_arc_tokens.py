"""Step 2: conversations jsonl → ChatML token rows ``{input_ids, labels, attention_mask}`` with label masking.

    python example_arc/prepare_arc_tokens.py --data_path example_arc/arc_easy_train.jsonl \\
        --out_path example_arc/arc_easy_train_tokens.jsonl --tokenizer Qwen/Qwen3-0.6B

Only the answer tokens and the closing <|im_end|> are supervised (labels = -100 elsewhere). ``--prompt_format
chat_template`` renders the prompt with the tokenizer's own chat template, thinking off (Qwen3: an empty think
block after the assistant header; Qwen2.5: its default system turn) instead of the reference's plain ChatML; the
rows record the format, and training and evaluation use it. Rows also carry
``id`` and, when the input has ``choice_labels``, ``choice_ids`` (the token id of each offered letter), which
training uses to report categorical validation accuracy with the same evaluator as step 4.
"""

from __future__ import annotations

import argparse

from slamkit.errors import SlamkitError, one_line_on_ctrl_c, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

from tqdm import tqdm

from slamkit.arc import read_conversations
from slamkit.chatml import (
    IGNORE_INDEX,
    PROMPT_FORMATS,
    PromptFormat,
    chatml_ids,
    encode_examples,
    letter_token_ids,
    prompt_format,
)
from slamkit.jsonl import write_jsonl
from slamkit.model import load_tokenizer

CHUNK = 512  # conversations per batched tokenizer call


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="step-1 jsonl (user_text, assistant_text[, choice_labels])")
    parser.add_argument("--out_path", required=True, help="token rows jsonl to write")
    parser.add_argument("--tokenizer", default="Qwen/Qwen3-0.6B", help="hub id or local tokenizer folder")
    parser.add_argument("--max_length", type=int, default=None, help="drop (and count) longer examples")
    parser.add_argument(
        "--prompt_format", default="seed", choices=PROMPT_FORMATS,
        help="seed: the reference's ChatML prompt (default); chat_template: the tokenizer's own template, thinking off",
    )
    args = parser.parse_args(argv)
    if args.max_length is not None and args.max_length < 2:
        parser.error("--max_length must be at least 2")
    return args


def tokenize(records: list[dict], tokenizer, fmt: PromptFormat) -> list[dict]:
    """Token rows for ``records`` in the prompt format ``fmt`` (batched, with a progress bar)."""
    rows = []
    chatml_ids(tokenizer)  # the checks that need no example run before the progress bar starts
    offered = [r for r in records if "choice_labels" in r]
    letter_ids = letter_token_ids(tokenizer, [r["choice_labels"] for r in offered], [r["_where"] for r in offered])
    with tqdm(total=len(records), desc="tokenizing", unit="ex") as bar:
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            encoded = encode_examples(
                tokenizer,
                [r["user_text"] for r in chunk],
                [r["assistant_text"] for r in chunk],
                names=[r["_where"] for r in chunk],
                fmt=fmt,
            )
            for record, example in zip(chunk, encoded, strict=True):
                row = {"input_ids": example.input_ids, "labels": example.labels, "attention_mask": [1] * len(example.input_ids)}
                if "id" in record:
                    row = {"id": record["id"], **row}
                if fmt.name != "seed":  # rows without the field are in the seed format
                    row["prompt_format"], row["prompt_digest"] = fmt.name, fmt.digest
                if "choice_labels" in record:
                    row["choice_ids"] = [letter_ids[x] for x in record["choice_labels"]]
                    gold = row["choice_ids"][record["choice_labels"].index(record["assistant_text"])]
                    if example.input_ids[example.prompt_length] != gold:
                        raise SlamkitError(
                            f"{record['_where']}: the answer's first token differs from its letter's own token"
                        )
                rows.append(row)
            bar.update(len(chunk))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = read_conversations(args.data_path)
    tokenizer = load_tokenizer(args.tokenizer)
    fmt = prompt_format(args.prompt_format, tokenizer)
    rows = tokenize(records, tokenizer, fmt)
    dropped = 0
    if args.max_length is not None:
        kept = [r for r in rows if len(r["input_ids"]) <= args.max_length]
        dropped = len(rows) - len(kept)
        rows = kept
    if not rows:
        raise SlamkitError(f"{args.data_path}: every example is longer than --max_length {args.max_length}")
    write_jsonl(args.out_path, rows, inputs=[args.data_path])
    lengths = [len(r["input_ids"]) for r in rows]
    supervised = sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows)
    total = sum(lengths)
    print(f"{args.data_path} -> {args.out_path}  (tokenizer {args.tokenizer})")
    if fmt.name != "seed":
        print(f"  prompt       {fmt.name}: {fmt.prompt('{user_text}')!r}")
    print(f"  examples     {len(rows):,}" + (f"  (dropped {dropped:,} longer than {args.max_length} tokens)" if args.max_length else ""))
    print(f"  tokens       {total:,} total = {total - supervised:,} masked + {supervised:,} supervised")
    print(f"  length       mean {total / len(rows):.1f}, max {max(lengths)}")
    return 0


if __name__ == "__main__":
    run_main(main)
