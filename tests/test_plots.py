"""Run figures: PNGs of the training log and of the answer-letter confusion matrix, written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from slamkit.plots import plot_confusion_matrix, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 141  # 2,251 / 16 per optimizer step, as in the reference run
EPOCHS = 3
LOGGING_STEPS = 10


def trainer_log_history(*, with_eval: bool = True, with_accuracy: bool = True) -> list[dict]:
    """A ``trainer_state.json["log_history"]`` shaped like the reference run's: 3 epochs, loss every 10 steps."""
    history: list[dict] = []
    last_step = EPOCHS * STEPS_PER_EPOCH
    for step in range(1, last_step + 1):
        epoch = step / STEPS_PER_EPOCH
        if step % LOGGING_STEPS == 0:
            history.append(
                {
                    "epoch": round(epoch, 4),
                    "grad_norm": 4.2,
                    "learning_rate": 2e-5 * 0.5 * (1 + math.cos(math.pi * step / last_step)),
                    "loss": 0.3 + 2.2 * math.exp(-step / 60),
                    "step": step,
                }
            )
        if with_eval and step % STEPS_PER_EPOCH == 0:
            entry = {
                "epoch": float(step // STEPS_PER_EPOCH),
                "eval_loss": 0.9 - 0.1 * step / STEPS_PER_EPOCH,
                "eval_runtime": 3.4,
                "eval_samples_per_second": 167.6,
                "eval_steps_per_second": 10.6,
                "step": step,
            }
            if with_accuracy:
                entry["eval_accuracy"] = 0.6 + 0.06 * step / STEPS_PER_EPOCH
            history.append(entry)
    history.append(
        {
            "epoch": float(EPOCHS),
            "step": last_step,
            "total_flos": 1.2e15,
            "train_loss": 0.61,
            "train_runtime": 181.3,
            "train_samples_per_second": 37.2,
            "train_steps_per_second": 2.33,
        }
    )
    return history


def assert_png(path: Path) -> None:
    """``path`` is a complete PNG of a plausible figure size, with no temporary file left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = imread(path).shape
    assert 300 <= height <= 2000 and 300 <= width <= 2000 and channels in (3, 4)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def drawn(monkeypatch) -> list:
    """The figures the plotting functions save, captured as they are saved."""
    import slamkit.plots as plots

    figures, save = [], plots._save_png
    monkeypatch.setattr(plots, "_save_png", lambda figure, *a, **k: (figures.append(figure), save(figure, *a, **k))[1])
    return figures


def test_training_curves_draw_every_logged_point(tmp_path: Path, monkeypatch) -> None:
    """A 3-epoch log plots to a PNG whose lines hold exactly the logged points: every training loss, the validation
    losses, and the validation accuracies in percent, at their steps."""
    figures, history = drawn(monkeypatch), trainer_log_history()
    path = plot_training_curves(history, tmp_path / "curves.png", title="ARC-Easy SFT")
    assert path == tmp_path / "curves.png"
    assert_png(path)
    loss_ax, accuracy_ax = figures[0].axes[:2]
    lines = {line.get_label(): line.get_xydata().tolist() for ax in (loss_ax, accuracy_ax) for line in ax.get_lines()}
    expected = {
        "training loss": [[e["step"], e["loss"]] for e in history if "loss" in e],
        "validation loss": [[e["step"], e["eval_loss"]] for e in history if "eval_loss" in e],
        "validation accuracy": [[e["step"], 100 * e["eval_accuracy"]] for e in history if "eval_accuracy" in e],
    }
    assert lines.keys() == expected.keys()
    for name, points in expected.items():
        assert [x for point in lines[name] for x in point] == pytest.approx([x for point in points for x in point])


@pytest.mark.parametrize("with_accuracy", [False, True])
def test_training_curves_without_validation_still_plot(tmp_path: Path, with_accuracy: bool) -> None:
    """A log with no evaluation at all, or evaluation without accuracy, still plots (the series is left out)."""
    history = trainer_log_history(with_eval=with_accuracy, with_accuracy=False)
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))


def test_training_curves_creates_missing_folders(tmp_path: Path) -> None:
    """The PNG's parent folders are created as needed and a string path is accepted."""
    path = plot_training_curves(trainer_log_history(), str(tmp_path / "run" / "plots" / "curves.png"))
    assert_png(Path(path))


@pytest.mark.parametrize(
    "history",
    [[], [{"epoch": 3.0, "step": 423, "train_loss": 0.6, "train_runtime": 181.3}]],
    ids=["empty", "summary-only"],
)
def test_training_curves_with_nothing_to_plot_raise(tmp_path: Path, history: list[dict]) -> None:
    """An empty log, or one holding only the final summary, raises and writes nothing."""
    with pytest.raises(ValueError, match="no training log entries to plot"):
        plot_training_curves(history, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_confusion_matrix_cells_are_the_counts_of_the_answers(tmp_path: Path, monkeypatch) -> None:
    """Each cell of the drawn matrix (image and number) is the count of (gold, predicted) pairs, rows gold and columns
    predicted in the order of the letters; the title gives the diagonal's share."""
    figures = drawn(monkeypatch)
    gold = ["A", "A", "B", "C", "C", "C", "D"]
    pred = ["A", "B", "B", "C", "A", "C", "D"]
    path = plot_confusion_matrix(gold, pred, ["A", "B", "C", "D"], tmp_path / "confusion.png", title="m")
    assert path == tmp_path / "confusion.png"
    assert_png(path)
    ax = figures[0].axes[0]
    expected = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
    assert ax.get_images()[0].get_array().tolist() == expected
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(r, c): n for r, row in enumerate(expected) for c, n in enumerate(row)}
    assert "accuracy 5/7" in ax.get_title()


@pytest.mark.parametrize(
    ("gold", "pred"),
    [(["A", "Z"], ["A", "B"]), (["A", "B"], ["A", "1"])],
    ids=["unknown-gold", "unknown-prediction"],
)
def test_confusion_matrix_rejects_unknown_letters(tmp_path: Path, gold: list[str], pred: list[str]) -> None:
    """A gold or predicted letter outside ``letters`` raises, naming it, and writes nothing."""
    with pytest.raises(ValueError, match=r"not among \['A', 'B', 'C', 'D'\]"):
        plot_confusion_matrix(gold, pred, list("ABCD"), tmp_path / "confusion.png")
    assert list(tmp_path.iterdir()) == []


def test_confusion_matrix_rejects_unequal_lengths(tmp_path: Path) -> None:
    """Fewer predictions than gold letters raise instead of silently truncating."""
    with pytest.raises(ValueError, match="2 gold letters but 1 predictions"):
        plot_confusion_matrix(["A", "B"], ["A"], list("ABCD"), tmp_path / "confusion.png")


def half_written_savefig(self: Figure, handle: IO[bytes], **kwargs: object) -> None:
    """Stand-in for ``Figure.savefig`` that writes the start of a PNG and then fails, as a crash midway would."""
    handle.write(PNG_SIGNATURE + b"partial")
    raise RuntimeError("renderer crashed")


def test_failed_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If rendering fails midway, no file (and no temporary file) is left at or beside the target."""
    monkeypatch.setattr(Figure, "savefig", half_written_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_training_curves(trainer_log_history(), tmp_path / "curves.png")
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_confusion_matrix(["A"], ["A"], ["A"], tmp_path / "confusion.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_render_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    """A re-plot that fails while writing (half a PNG written, then an error) leaves the earlier PNG as it was."""
    from matplotlib.figure import Figure

    path = plot_training_curves(trainer_log_history(), tmp_path / "curves.png")
    before = path.read_bytes()

    def half_then_fail(self, handle, **kwargs):
        handle.write(before[: len(before) // 2])
        raise ValueError("drawing failed")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(ValueError):
        plot_training_curves(trainer_log_history(), path)
    assert path.read_bytes() == before
    assert_png(path)


def test_titles_are_text_not_mathtext(tmp_path: Path) -> None:
    """A run named with dollar signs and a backslash (mathtext syntax) is drawn as that text, not parsed."""
    assert_png(plot_training_curves(trainer_log_history(), tmp_path / "curves.png", title=r"$\notacommand$ run $5"))
