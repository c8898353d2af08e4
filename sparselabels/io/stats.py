"""Distributions over a label store: labels per position, count histogram, probability mass, bytes."""

from __future__ import annotations

import numpy as np

from sparselabels.errors import InputError
from sparselabels.io.reader import LabelFile, Labels
from sparselabels.io.shards import LabelShards


def _file_bytes(labels: Labels) -> int:
    if isinstance(labels, LabelFile):
        return labels.file_size
    if isinstance(labels, LabelShards):
        return sum(labels.shard(k).file_size for k in range(labels.num_shards))
    return 0


def label_stats(labels: Labels, *, max_sequences: int | None = None, seed: int = 0) -> dict:
    """Statistics over all sequences, or over ``max_sequences`` of them drawn at random (without replacement)."""
    n = len(labels)
    if max_sequences is not None and (isinstance(max_sequences, bool) or not isinstance(max_sequences, int)
                                      or max_sequences < 1):
        raise InputError(f"max_sequences must be a positive integer or None, got {max_sequences!r}")
    if max_sequences is not None and max_sequences < n:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_sequences, replace=False))
    else:
        chosen = np.arange(n)
    is_count = labels.value_kind == "count"
    lpp_hist = np.zeros(1, dtype=np.int64)
    value_hist = np.zeros(256, dtype=np.int64)
    mass_sum = 0.0
    mass_positions = 0
    positions = 0
    for i in chosen:
        s = labels[int(i)]
        lpp = np.diff(s.indptr)
        positions += lpp.size
        h = np.bincount(lpp)
        if h.size > lpp_hist.size:
            lpp_hist = np.pad(lpp_hist, (0, h.size - lpp_hist.size))
        lpp_hist[: h.size] += h
        if is_count:
            value_hist += np.bincount(s.counts, minlength=256)
        elif s.num_labels:
            sums = np.add.reduceat(s.counts.astype(np.float64), s.indptr[:-1][lpp > 0])
            mass_sum += float(sums.sum())
            mass_positions += int(sums.size)
    total_bytes = _file_bytes(labels)
    levels = np.arange(lpp_hist.size)
    mean = float((levels * lpp_hist).sum() / positions) if positions else 0.0
    cdf = np.cumsum(lpp_hist)

    def quantile(q: float) -> int:
        return int(np.searchsorted(cdf, q * positions)) if positions else 0

    out = {
        "sequences": n,
        "sequences_sampled": int(chosen.size),
        "positions_sampled": positions,
        "positions": labels.num_positions,
        "labels": labels.num_labels,
        "bytes": total_bytes,
        "bytes_per_position": total_bytes / labels.num_positions if labels.num_positions else None,
        "labels_per_position": {
            "mean": mean,
            "median": quantile(0.5),
            "p99": quantile(0.99),
            "max": int(levels[lpp_hist > 0].max()) if positions else 0,
            "empty_positions": int(lpp_hist[0]) if lpp_hist.size else 0,
            "histogram": {int(k): int(v) for k, v in enumerate(lpp_hist) if v},
        },
    }
    if is_count:
        out["count_histogram"] = {int(k): int(v) for k, v in enumerate(value_hist) if v}
    else:
        out["mean_probability_mass"] = mass_sum / mass_positions if mass_positions else None
    return out
