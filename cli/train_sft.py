"""Step 3: fine-tune with the HF Trainer; every setting is a Hydra override (see config/train_sft.yaml).

    python cli/train_sft.py data.train_path=example_arc/arc_easy_train_tokens.jsonl \\
        data.val_path=example_arc/arc_easy_validation_tokens.jsonl training_args.output_dir=example_arc/arc_model
    python cli/train_sft.py -m training_args.learning_rate=1e-5,2e-5 ...   # a sweep: one folder per job + a summary
    torchrun --nproc_per_node=2 cli/train_sft.py ...       # or: accelerate launch --multi_gpu --num_processes 2 ...

The config is checked against the typed schema (slamkit.config.SFTConfig) when Hydra composes it; any error,
there or later, is one `error:` line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
from pathlib import Path

from slamkit.errors import Interrupted, SlamkitError, one_line, one_line_on_ctrl_c, print_error, run_main

if __name__ == "__main__":
    one_line_on_ctrl_c()  # Ctrl-C while the imports below load torch and transformers (seconds): one line

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from slamkit.config import SFTConfig, redact_command_line, unknown_key_message
from slamkit.run_folder import read_record, write_record
from slamkit.sweep import stopped_early
from slamkit.training import train

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "config")  # absolute: also when tests import this file
ConfigStore.instance().store(name="slamkit_schema", node=SFTConfig)  # the first entry of train_sft.yaml's defaults
PLUGINS = {"submitit": "slurm", "optuna": "sweep"}  # Hydra plugin -> the slamkit extra that installs it


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train_sft")
def main(cfg: DictConfig) -> float | None:
    """Train once; return the final validation accuracy (what a Hydra sweeper such as Optuna maximises)."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: user-facing output from rank 0 only
        logging.getLogger("slamkit").setLevel(logging.WARNING)
    job = HydraConfig.get()
    sweep = job.mode == RunMode.MULTIRUN
    try:
        added = added_keys(cfg)
        if added:  # '+key=value' adds a key that the schema's check at composition could not see
            raise SlamkitError(unknown_key_message(added[0]))
        config: SFTConfig = OmegaConf.to_object(cfg)
        if sweep:  # every job of a sweep gets its own folder: <sweep dir>/<job number>, and a name that says what it ran
            config.training_args.output_dir = job.runtime.output_dir
            overrides = " ".join(redact_command_line(job.overrides.task))
            config.training_args.run_name = config.training_args.run_name or f"job {job.job.num}: {overrides}"
        accuracy = train(config, command_line=list(job.overrides.task)).eval_accuracy
        # a sweeper such as Optuna records a job that returns None as a failed trial; NaN would be a value
        return accuracy if accuracy is not None and math.isfinite(accuracy) else None
    except Exception as err:
        if not sweep:
            if isinstance(err, SlamkitError):
                print_error(err)
                sys.exit(err.exit_code)
            raise  # a bug in a single run keeps its traceback
        if isinstance(err, Interrupted):
            raise  # Ctrl-C or SIGTERM stops the whole sweep, not just this job (cli() still writes the summary)
        # In a sweep any failure of one job (a bad setting, CUDA out of memory, a bug) is that job's failure: the
        # sweep goes on, its summary lists the error, and the command exits 2.
        if isinstance(err, SlamkitError):
            print_error(err)
        else:
            logging.getLogger("slamkit").exception("job %s failed", job.job.num)
        folder = Path(job.runtime.output_dir)
        if read_record(folder) is None:  # failed before it started: the job's folder still says why
            write_record(folder, {"status": "failed", "error": one_line(err),
                                  "command_line": redact_command_line(job.overrides.task)})
        return None


def added_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` that its schema dataclasses do not declare (they can only come from '+key=value')."""
    schema = OmegaConf.get_type(cfg)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key, value in cfg.items_ex(resolve=False):
        if declared is not None and key not in declared:
            found.append(f"{prefix}{key}")
        elif isinstance(value, DictConfig) and value._is_none() is False:  # peft: null is a DictConfig of None
            found += added_keys(value, f"{prefix}{key}.")
    return found


def config_error(err: Exception) -> str:
    """Hydra's and OmegaConf's composition errors as one line, naming the key (and the key probably meant)."""
    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        named = re.search(r"override '([^']+)'", str(err))
        return unknown_key_message(named[1] if named else str(cause.full_key))
    if isinstance(cause, ValidationError):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    text = str(err).split("Config search path")[0]
    existing = re.search(r"An item is already at '([^']+)'", text)
    if existing:
        return f"{existing[1]} is already a config key: set it without the + ({existing[1]}=...)"
    missing = re.search(r"Could not (?:find|load) '(hydra/(?:launcher|sweeper)/[^']+)'", text)
    for plugin, extra in PLUGINS.items():
        if missing and plugin in missing[1]:
            return f"{missing[1]} needs a Hydra plugin that is not installed: pip install -e '.[{extra}]'"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":; ", ": ")


def cli() -> None:
    modes = [arg for arg in sys.argv[1:] if arg in ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "--run", "-r")]
    if len({arg.lstrip("-")[0] for arg in modes}) > 1:  # Hydra would raise a ValueError of its own, after parsing
        raise SlamkitError(f"{' and '.join(modes)}: one of -m (a sweep), --cfg (print the config) or --info at a time")
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        stopped_early(err)
        raise SlamkitError(config_error(err)) from None
    except OSError as err:  # Hydra making a folder it was given (hydra.run.dir, hydra.sweep.dir) that cannot be made
        stopped_early(err)
        raise SlamkitError(f"{err.filename}: {err.strerror}") from None
    except (Exception, KeyboardInterrupt) as err:
        stopped_early(err)  # a sweep that stopped early (a sweeper that gave up, Ctrl-C) still ends in its summary
        raise


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors instead of printing them: one line (ours)
    run_main(cli)
