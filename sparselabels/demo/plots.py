"""The demo's two pictures, as PNG files: held-out loss curves and a reliability diagram.

Drawn on matplotlib ``Figure`` objects with the Agg canvas directly (no ``pyplot``), so nothing here changes the
caller's matplotlib backend or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sparselabels.demo.metrics import Reliability

#: Colours taken in order by curves not named in ``colours`` ("tab10" picks).
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#7f7f7f")
#: What ``demo --quick`` writes across its plots: tiny models barely move from uniform predictions, so the
#: reliability points sit near (0, 0) and the curves have two points; the picture must say it is no result.
SMOKE_TEST_NOTE = "SMOKE TEST (demo --quick)\ntiny models, a few steps:\nthis plot shows nothing"


def _mark_smoke_test(figure, ax, note: str | None) -> None:
    """Write ``note`` across the axes and into the title, so the PNG cannot be mistaken for a result."""
    if not note:
        return
    ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=16, color="#d62728",
            alpha=0.6, fontweight="bold", zorder=10)
    ax.set_title(f"[{note.splitlines()[0]}] {ax.get_title()}", fontsize="medium")


def _colour(name: str, index: int, colours: Mapping[str, str] | None) -> str:
    return (colours or {}).get(name, COLOURS[index % len(COLOURS)])


def _save(figure, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_loss_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | os.PathLike,
    *,
    reference: Mapping[str, float] | None = None,
    title: str = "Held-out LM loss during student training",
    colours: Mapping[str, str] | None = None,
    note: str | None = None,
) -> Path:
    """One line per student: ``curves[name] = (steps, held-out losses)``; ``reference`` adds horizontal lines
    (e.g. the teacher's loss). ``colours`` fixes a colour per name (to match the reliability diagram);
    ``note`` is written across the plot (:data:`SMOKE_TEST_NOTE` for ``demo --quick``)."""
    return _save(loss_curves_figure(curves, reference=reference, title=title, colours=colours, note=note), path)


def loss_curves_figure(curves, *, reference=None, title: str = "Held-out LM loss during student training",
                       colours: Mapping[str, str] | None = None, note: str | None = None):
    """The ``Figure`` :func:`plot_loss_curves` saves."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5))
    ax = figure.add_subplot(1, 1, 1)
    for i, (name, (steps, losses)) in enumerate(curves.items()):
        ax.plot(list(steps), list(losses), marker="o", markersize=3, color=_colour(name, i, colours), label=name)
    for name, value in (reference or {}).items():
        ax.axhline(value, color="black", linestyle="--", linewidth=1, label=f"{name} ({value:.3f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _mark_smoke_test(figure, ax, note)
    return figure


def plot_reliability(
    diagrams: Mapping[str, Reliability],
    path: str | os.PathLike,
    *,
    title: str = "Reliability of top-1 next-token predictions (held out)",
    colours: Mapping[str, str] | None = None,
    note: str | None = None,
) -> Path:
    """Accuracy against mean confidence per bin for each model, beside the diagonal of perfect calibration;
    the legend gives each model's ECE. ``note``: as for :func:`plot_loss_curves`."""
    return _save(reliability_figure(diagrams, title=title, colours=colours, note=note), path)


def reliability_figure(diagrams: Mapping[str, Reliability], *,
                       title: str = "Reliability of top-1 next-token predictions (held out)",
                       colours: Mapping[str, str] | None = None, note: str | None = None):
    """The ``Figure`` :func:`plot_reliability` saves."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 6.0))
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfectly calibrated")
    for i, (name, rel) in enumerate(diagrams.items()):
        filled = rel.counts > 0
        ax.plot(rel.confidence[filled], rel.accuracy[filled], marker="o", markersize=4,
                color=_colour(name, i, colours), label=f"{name} (ECE {100 * rel.ece:.2f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(title)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    _mark_smoke_test(figure, ax, note)
    return figure
