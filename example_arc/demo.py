"""The offline demo: all four steps end to end on the bundled ARC-Easy sample with a tiny Qwen3 built here.

    bash example_arc/demo.sh            # or: python example_arc/demo.py --run_dir demo_run

No network: the data (400/100/200 real ARC-Easy questions, CC BY-SA 4.0) and the Qwen tokenizer are in
example_arc/sample/. The "base model" is a 2-layer Qwen3 with random weights and the real 151,936-token
vocabulary, so this checks the plumbing (files, formats, masking, checkpoints, scoring, reporting), not
science accuracy: a model this small cannot know science. Each step runs the real script in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slamkit.errors import SlamkitError, run_main
from slamkit.model import qwen3_config, save_random_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = HERE / "sample"


def build_base_model(folder: Path, seed: int) -> None:
    """A tiny Qwen3 (hidden 64, 2 layers, real vocabulary) with random weights, saved as a plain HF folder."""
    save_random_model(folder, qwen3_config("tiny"), tokenizer_dir=SAMPLE / "qwen_tokenizer", seed=seed)


def run_step(name: str, script: str, *args: str) -> float:
    """Run one pipeline script; stream its output; stop the demo if it fails. Returns seconds."""
    print(f"\n=== {name}: python {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO)
    if done.returncode != 0:
        raise SlamkitError(f"demo step '{name}' failed with exit code {done.returncode}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", default="demo_run", help="everything the demo writes goes here (replaced)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="a random tiny model needs far more than 2e-5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run = Path(args.run_dir).resolve()
    shutil.rmtree(run, ignore_errors=True)
    data, model_dir, base_model = run / "data", run / "arc_model", run / "tiny_qwen3_base"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    build_base_model(base_model, args.seed)
    timings["0. build tiny Qwen3 base model"] = time.perf_counter() - start
    timings["1. prepare_arc_data"] = run_step(
        "step 1", "example_arc/prepare_arc_data.py", "--source", str(SAMPLE), "--output_dir", str(data)
    )
    tokens = {}
    for split in ("train", "validation"):
        tokens[split] = data / f"arc_easy_{split}_tokens.jsonl"
        timings[f"2. prepare_arc_tokens ({split})"] = run_step(
            "step 2", "example_arc/prepare_arc_tokens.py", "--data_path", str(data / f"arc_easy_{split}.jsonl"),
            "--out_path", str(tokens[split]), "--tokenizer", str(SAMPLE / "qwen_tokenizer"),
        )
    test = str(data / "arc_easy_test.jsonl")
    timings["4a. eval_arc_base"] = run_step(
        "step 4a", "example_arc/eval_arc_base.py", "--model_name", str(base_model), "--data_path", test,
        "--batch_size", "16", "--output_dir", str(run / "eval_base"),
    )
    timings["3. train_sft"] = run_step(
        "step 3", "cli/train_sft.py", f"data.train_path={tokens['train']}", f"data.val_path={tokens['validation']}",
        f"training_args.output_dir={model_dir}", f"model.base_model_name={base_model}",
        f"training_args.num_train_epochs={args.epochs}", f"training_args.learning_rate={args.learning_rate}",
        "training_args.bf16=false", "training_args.logging_steps=5", f"training_args.seed={args.seed}",
    )
    checkpoints = sorted(model_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    timings["4b. eval_arc"] = run_step(
        "step 4b", "example_arc/eval_arc.py", "--model_path", str(checkpoints[-1]), "--data_path", test,
        "--batch_size", "16", "--output_dir", str(run / "eval_trained"),
    )
    base = json.loads((run / "eval_base" / "results.json").read_text())
    trained = json.loads((run / "eval_trained" / "results.json").read_text())
    print("\n=== slamkit offline demo: tiny random Qwen3 (2 layers, hidden 64) - checks the plumbing, not science")
    print(f"{'model':<32} {'correct/n':>10} {'accuracy':>9} {'95% CI':>15} {'skipped':>8}")
    for name, result in ((f"base ({base_model.name})", base), (f"trained ({checkpoints[-1].name})", trained)):
        low, high = result["ci95"]
        print(f"{name:<32} {result['correct']:>4}/{result['total']:<5} {100 * result['accuracy']:>8.2f}% "
              f"{f'{100 * low:.1f}-{100 * high:.1f}%':>15} {result['skipped']:>8}")
    print(f"\n{'step':<36} {'seconds':>8}")
    for name, seconds in sorted(timings.items()):
        print(f"{name:<36} {seconds:>8.1f}")
    print(f"{'total':<36} {time.perf_counter() - start:>8.1f}")
    print(f"\noutputs in {run}: checkpoints, training_curves.png, eval_*/results.json, predictions.jsonl, confusion_matrix.png")
    return 0


if __name__ == "__main__":
    run_main(main)
