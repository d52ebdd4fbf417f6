"""PNG figures of a run: loss and accuracy curves from the Trainer's log, and an answer-letter confusion matrix.

Figures are drawn with the Agg canvas on a private ``Figure`` (no pyplot, no display, no global state) and
each PNG appears at its path only when fully written.
"""

from __future__ import annotations

import itertools
import logging
import math
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from slamkit.jsonl import OutputSet, atomic_output

logger = logging.getLogger(__name__)

# Per-point value labels stay readable up to about this many evaluations; beyond it they would collide.
MAX_ANNOTATED_POINTS = 12


def _series(log_history: list[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The ``(steps, values)`` of every log entry that carries ``key``, in log order."""
    steps: list[float] = []
    values: list[float] = []
    for index, entry in enumerate(log_history):
        if key not in entry:
            continue
        if "step" not in entry:
            raise ValueError(f"log entry {index} has {key!r} but no 'step': {dict(entry)}")
        steps.append(float(entry["step"]))
        values.append(float(entry[key]))
    return steps, values


def _steps_per_epoch(log_history: list[Mapping[str, Any]]) -> float | None:
    """Optimizer steps per epoch read off the last entry logging both a positive step and epoch, or None."""
    for entry in reversed(log_history):
        step, epoch = entry.get("step"), entry.get("epoch")
        if step and epoch and step > 0 and epoch > 0:
            return float(step) / float(epoch)
    return None


def _save_png(figure: Figure, path: str | Path, outputs: OutputSet | None = None) -> Path:
    """Render ``figure`` as a PNG at ``path`` atomically (or as one file of ``outputs``) and return the path.

    Only a PNG written on its own is announced here: one of ``outputs`` exists only once the whole set is written,
    and whoever writes the set says so."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_output(path, mode="wb") if outputs is None else outputs.open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    if outputs is None:
        logger.info("wrote %s", path)
    return path


def plot_training_curves(log_history: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Plot training and validation loss, and validation accuracy, against optimizer step into a PNG at ``path``.

    ``log_history`` is ``trainer_state.json["log_history"]``: entries with ``loss`` are training points,
    entries with ``eval_loss`` / ``eval_accuracy`` (a fraction, drawn in percent) are validation points, and
    anything else (the final ``train_loss`` / ``train_runtime`` summary) is ignored. A series that was never
    logged is left out; epochs are shown on a secondary x axis when the log records them.

    Example (``run_dir`` is a finished ``output_dir``)::

        state = json.loads((run_dir / "trainer_state.json").read_text())
        plot_training_curves(state["log_history"], run_dir / "training_curves.png", title=run_dir.name)
    """
    train_steps, train_losses = _series(log_history, "loss")
    eval_steps, eval_losses = _series(log_history, "eval_loss")
    accuracy_steps, accuracies = _series(log_history, "eval_accuracy")
    if not (train_steps or eval_steps or accuracy_steps):
        raise ValueError("no training log entries to plot")

    figure = Figure(figsize=(8, 6.5), layout="constrained")
    loss_ax, accuracy_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    figure.suptitle(textwrap.fill(title or "Training curves", 100), parse_math=False)  # a run named "$5" is text, not mathtext

    if train_steps:
        # a run of a step or two logs one or two points: a line alone would not show them
        marker = "o" if len(train_steps) < 3 else None
        loss_ax.plot(train_steps, train_losses, color="tab:blue", linewidth=1.2, marker=marker, label="training loss")
    if eval_steps:
        loss_ax.plot(eval_steps, eval_losses, color="tab:orange", marker="o", label="validation loss")
    if train_steps or eval_steps:
        loss_ax.legend(loc="best")
    else:
        loss_ax.text(0.5, 0.5, "no loss logged", transform=loss_ax.transAxes, ha="center", va="center", color="0.4")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)

    steps_per_epoch = _steps_per_epoch(log_history)
    if steps_per_epoch is not None:
        epoch_axis = loss_ax.secondary_xaxis(
            "top", functions=(lambda step: step / steps_per_epoch, lambda epoch: epoch * steps_per_epoch)
        )
        epoch_axis.set_xlabel("epoch")

    accuracy_ax.set_ylabel("validation accuracy (%)")
    if accuracy_steps:
        percents = [100.0 * value for value in accuracies]
        accuracy_ax.plot(accuracy_steps, percents, marker="o", color="tab:green", label="validation accuracy")
        if len(accuracy_steps) <= MAX_ANNOTATED_POINTS:
            gap = 0.04 * (max(accuracy_steps) - min(accuracy_steps))  # closer labels would print over each other
            labelled = -math.inf
            for step, percent in zip(accuracy_steps, percents, strict=True):
                if step - labelled < gap:
                    continue  # e.g. a validation at the last step right after a scheduled one
                labelled = step
                # below the point, unless that would run into the step tick labels
                accuracy_ax.annotate(f"{percent:.1f}%", (step, percent), textcoords="offset points",
                                     xytext=(0, -14 if percent >= 15 else 8), ha="center", fontsize=8)
        accuracy_ax.set_ylim(0, 100)
        accuracy_ax.grid(alpha=0.3)
        accuracy_ax.legend(loc="best")
    else:
        accuracy_ax.text(0.5, 0.5, "no validation accuracy logged", transform=accuracy_ax.transAxes, ha="center",
                         va="center", color="0.4")
        accuracy_ax.set_yticks([])
    accuracy_ax.set_xlabel("optimizer step")
    return _save_png(figure, path)


def plot_confusion_matrix(
    gold: list[str], pred: list[str], letters: list[str], path: str | Path, title: str | None = None,
    outputs: OutputSet | None = None,
) -> Path:
    """Plot the gold × predicted letter counts into a PNG at ``path``, with accuracy in the title (written as one
    file of ``outputs`` when given, see :func:`slamkit.jsonl.output_set`).

    Rows are gold letters and columns predicted letters, both in the order of ``letters``; the diagonal
    holds the correct answers. A letter outside ``letters``, unequal lengths or no answers raise ``ValueError``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold letters but {len(pred)} predictions")
    if not gold:
        raise ValueError("no answers to plot")
    if len(set(letters)) != len(letters) or not letters:
        raise ValueError(f"letters must be distinct and non-empty, got {letters}")
    for name, answers in (("gold", gold), ("predicted", pred)):
        unknown = sorted(set(answers) - set(letters))
        if unknown:
            raise ValueError(f"{name} letters {unknown} are not among {letters}")

    size = len(letters)
    pairs = Counter(zip(gold, pred, strict=True))
    counts = [[pairs[gold_letter, pred_letter] for pred_letter in letters] for gold_letter in letters]
    correct = sum(pairs[letter, letter] for letter in letters)
    total = len(gold)
    largest = max(max(row) for row in counts)

    side = 2.5 + 0.6 * size
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(largest, 1))
    for row, column in itertools.product(range(size), repeat=2):  # white on the dark cells, so the count stays legible
        count = counts[row][column]
        ax.text(column, row, str(count), ha="center", va="center", color="white" if count > largest / 2 else "black")
    ax.set_xticks(range(size), letters)
    ax.set_yticks(range(size), letters)
    ax.set_xlabel("predicted letter")
    ax.set_ylabel("gold letter")
    colorbar = figure.colorbar(image, ax=ax, label="answers", shrink=0.8)
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title or 'Confusion matrix'}\naccuracy {correct}/{total} ({100.0 * correct / total:.1f}%)",
                 parse_math=False)
    return _save_png(figure, path, outputs)


def plot_sweep_curves(
    curves: Mapping[str, tuple[list[tuple[int, float]], list[tuple[int, float]]]], path: str | Path,
    title: str | None = None, outputs: OutputSet | None = None,
) -> Path:
    """One PNG comparing the jobs of a sweep: training loss (top) and validation accuracy (bottom, a fraction drawn
    in percent) against optimizer step, one colour per job. ``curves`` maps a job's label (its swept overrides) to
    its ``(loss points, accuracy points)``, each a list of ``(step, value)``."""
    if not curves:
        raise ValueError("no curves to plot")
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    loss_ax, accuracy_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for index, (label, (losses, accuracies)) in enumerate(curves.items()):
        color = f"C{index % 10}"
        if losses:
            loss_ax.plot([s for s, _ in losses], [v for _, v in losses], color=color, linewidth=1.2, label=label)
        if accuracies:
            accuracy_ax.plot([s for s, _ in accuracies], [100.0 * v for _, v in accuracies], color=color, marker="o",
                             label=label)
            step, value = accuracies[-1]  # the final accuracy, labelled
            accuracy_ax.annotate(f"{100.0 * value:.1f}%", (step, 100.0 * value), textcoords="offset points",
                                 xytext=(6, 4 + 10 * index), fontsize=8, color=color)
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(loc="best", fontsize=8)
    accuracy_ax.set_ylabel("validation accuracy (%)")
    accuracy_ax.set_xlabel("optimizer step")
    accuracy_ax.set_ylim(0, 100)
    accuracy_ax.grid(alpha=0.3)
    figure.suptitle(title or "Sweep", parse_math=False)
    return _save_png(figure, path, outputs)
