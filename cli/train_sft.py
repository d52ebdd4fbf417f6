"""Step 3: fine-tune with the HF Trainer; every setting is a Hydra override (see config/train_sft.yaml).

    python cli/train_sft.py data.train_path=example_arc/arc_easy_train_tokens.jsonl \\
        data.val_path=example_arc/arc_easy_validation_tokens.jsonl training_args.output_dir=example_arc/arc_model
    torchrun --nproc_per_node=2 cli/train_sft.py ...        # or: accelerate launch cli/train_sft.py ...
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from slamkit.errors import EXIT_BAD_INPUT, SlamkitError
from slamkit.training import (
    REMOVED_TRAINING_ARGS,
    TRAINING_ARGUMENT_NAMES,
    DataSettings,
    ModelSettings,
    SpeedSettings,
    train,
    unknown_training_argument_message,
)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "config")


def _keys(node, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return [prefix]
    keys = [prefix] if prefix else []
    for key in node:
        keys += _keys(node[key], f"{prefix}.{key}" if prefix else str(key))
    return keys


def check_overrides(argv: list[str]) -> str | None:
    """A one-line message for an override that names no config key (with what to write instead), else None.

    Hydra would also refuse it, but its message suggests appending the misspelt key; this says what to write.
    """
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))]
    for override in overrides:
        section, _, name = override.split("=")[0].partition(".")
        if section == "training_args" and name in REMOVED_TRAINING_ARGS:
            return unknown_training_argument_message(name)
    group_names = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}  # model, data, training_args, logger
    groups = [a for a in overrides if a.split("=")[0] in group_names]
    try:
        with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = hydra.compose("train_sft", overrides=groups)
    except Exception:  # a bad group choice: Hydra's own message names the choices
        return None
    known = set(_keys(cfg))
    for override in overrides:
        key = override.split("=")[0]
        if key in group_names or key in known:
            continue
        section, _, name = key.partition(".")
        if section == "training_args" and name in TRAINING_ARGUMENT_NAMES:
            return f"{key} is a TrainingArguments field not listed in config/training_args: write +{override}"
        if section == "training_args":
            return unknown_training_argument_message(name)
        close = difflib.get_close_matches(key, sorted(known), n=1)
        return f"{key} is not a config key" + (f": did you mean {close[0]}?" if close else "")
    return None


@hydra.main(version_base="1.3", config_path="../config", config_name="train_sft")
def main(cfg: DictConfig) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: user-facing output from rank 0 only
        logging.getLogger("slamkit").setLevel(logging.WARNING)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    try:
        train(
            model=ModelSettings(**run_config["model"]),
            data=DataSettings(**run_config["data"]),
            training_args=run_config["training_args"],
            speed=SpeedSettings(**run_config["speed"]),
            cont_training=run_config["cont_training"],
            run_config=run_config,
        )
    except SlamkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    problem = check_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    main()
