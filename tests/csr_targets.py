"""Random SparseTargets for the loss tests: ragged positions (empty ones included), counts or probabilities."""

from __future__ import annotations

import torch

from sparselabels.data import SparseTargets


def random_targets(shape: tuple[int, ...], vocab: int, generator: torch.Generator, *, kind: str = "counts",
                   max_labels: int = 6, rounds: int = 50, empty_prob: float = 0.2) -> SparseTargets:
    """Ascending distinct ids per position; counts summing to at most ``rounds``, or probabilities summing to <= 1."""
    positions = 1
    for d in shape:
        positions *= d
    n = torch.randint(1, max_labels + 1, (positions,), generator=generator)
    n[torch.rand(positions, generator=generator) < empty_prob] = 0
    offsets = torch.zeros(positions + 1, dtype=torch.int64)
    offsets[1:] = n.cumsum(0)
    ids = torch.cat([torch.randperm(vocab, generator=generator)[:k].sort().values for k in n.tolist()]
                    + [torch.zeros(0, dtype=torch.int64)]).to(torch.int32)
    if kind == "counts":
        counts = torch.randint(1, max(2, rounds // max_labels), (ids.shape[0],), generator=generator)
        return SparseTargets(offsets, ids, counts=counts.to(torch.uint8), rounds=rounds, shape=shape)
    probs = torch.rand(ids.shape[0], generator=generator) / max_labels
    return SparseTargets(offsets, ids, probs=probs, shape=shape)
