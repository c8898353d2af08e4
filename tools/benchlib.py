"""Shared plumbing for the benchmarks in tools/: machine description, timing, table printing, JSON output.

Every benchmark measures its baseline in the same run (these machines are noisy), reports medians, and writes
the JSON behind the numbers it prints, so a number in the docs can always be traced to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparselabels import _machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model, cores and library versions (and the GPU, when torch sees one)."""
    info = _machine.machine_info()
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def time_call(fn: Callable[[], Any], *, repeats: int = 5, min_time: float = 0.0, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls), by ``clock``: wall time by default,
    ``time.thread_time`` for the CPU time of this thread alone.

    With ``min_time`` > 0, keeps repeating until the total timed time reaches it (at least ``repeats`` calls).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or total < min_time:
        start = clock()
        fn()
        elapsed = clock() - start
        times.append(elapsed)
        total += elapsed
    return times


def cuda_sync(device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for off CUDA), so wall-clock timings cover it."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def evict(*paths: str | os.PathLike) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str | None = None) -> None:
    """Print ``rows`` as an aligned text table with the given column order."""
    if title:
        print(f"\n{title}")
    cells = [[_fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)]
    print("  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
        return f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class _QuickAction(argparse.Action):
    """``--quick``: also moves the JSON out of tools/results/ unless ``--out`` was given, so a smoke run never
    replaces the committed results the docs' tables are printed from."""

    def __init__(self, option_strings, dest, *, results: Path, scratch: Path, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)
        self.results, self.scratch = results, scratch

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        if namespace.out == self.results:
            namespace.out = self.scratch


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    """``--quick`` (seconds-long smoke run) and ``--out`` (JSON path, default tools/results/<name>.json; with
    ``--quick`` a file in the temporary directory)."""
    results = RESULTS_DIR / f"{name}.json"
    scratch = Path(tempfile.gettempdir()) / "sparselabels-quick" / f"{name}.json"
    parser.add_argument("--quick", action=_QuickAction, results=results, scratch=scratch,
                        help=f"tiny sizes, for smoke tests (JSON to {scratch} unless --out is given)")
    parser.add_argument("--out", type=Path, default=results, help="where to write the JSON")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write the results with the machine description attached."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"machine": machine_info(), **payload}
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {path}")
