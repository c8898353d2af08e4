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
) -> Path:
    """One line per student: ``curves[name] = (steps, held-out losses)``; ``reference`` adds horizontal lines
    (e.g. the teacher's loss). ``colours`` fixes a colour per name (to match the reliability diagram)."""
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
    return _save(figure, path)


def plot_reliability(
    diagrams: Mapping[str, Reliability],
    path: str | os.PathLike,
    *,
    title: str = "Reliability of top-1 next-token predictions (held out)",
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Accuracy against mean confidence per bin for each model, beside the diagonal of perfect calibration;
    the legend gives each model's ECE."""
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
    return _save(figure, path)
