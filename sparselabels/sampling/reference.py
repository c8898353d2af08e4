"""The PyTorch reference sampler: the CPU path, and the oracle the Triton kernel is tested against.

Obviously correct by construction: the softmax of ``logits / temperature`` is computed in float64 over the
row's first ``vocab_size`` columns, its cumulative sum is taken in float64 (so a 256K-entry prefix keeps the
tail: each step's rounding is ~1e-16 of the total), and every draw is an exact inverse-CDF look-up of one of the
row's sorted uniforms (``rng.sorted_uniforms``, the same stream the kernel uses). Sorted uniforms give
ascending ids, so the (id, count) runs fall out of a consecutive-unique pass — no sort over the vocabulary.

Inverse CDF: a uniform u picks the first id whose cumulative mass exceeds ``u * total``; an id with zero mass
(a ``-inf`` logit, or an underflowed one) has no interval and can never be picked, and when rounding makes
``u * total`` reach the total, the draw goes to the last id with positive mass — never past it.
"""

from __future__ import annotations

import torch

from .checks import SamplingRequest, check_rows_finite, prepare_sampling, scaled_logits
from .labels import SampledLabels
from .rng import sorted_uniforms

# Rows are processed in chunks so that the float64 work buffers stay near this many elements.
_CHUNK_ELEMENTS = 1 << 22


def sample_counts_reference(
    logits: torch.Tensor,
    rounds: int = 50,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    seed: int | None = None,
    row_ids: torch.Tensor | None = None,
) -> SampledLabels:
    """Same interface and same draws (up to float rounding at CDF boundaries) as ``sample_counts``."""
    request = prepare_sampling(logits, rounds, temperature, vocab_size, seed, row_ids)
    check_rows_finite(request.rows)
    return counts_from_draws(draw_ids_reference(request), request.rows.vocab_size)


def draw_ids_reference(request: SamplingRequest) -> torch.Tensor:
    """Every draw, ``[R, rounds]`` int64: column j is the id picked by the row's j-th smallest uniform."""
    x = request.rows.valid
    num_rows, vocab = x.shape
    uniforms = sorted_uniforms(request.seed, request.row_ids, request.rounds)
    draws = torch.empty((num_rows, request.rounds), dtype=torch.int64, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // vocab)
    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        draws[start:stop] = _inverse_cdf(x[start:stop], request.temperature, uniforms[start:stop])
    return draws


def _inverse_cdf(x: torch.Tensor, temperature: float, uniforms: torch.Tensor) -> torch.Tensor:
    scaled = scaled_logits(x, temperature, torch.float64)
    weights = torch.exp(scaled - scaled.amax(-1, keepdim=True))  # exp(-inf) = 0: masked ids get no mass
    cdf = torch.cumsum(weights, -1)
    total = cdf[:, -1:]
    picked = torch.searchsorted(cdf, uniforms * total, right=True)  # first id with cdf > target
    # The id at which the cdf first reaches its total has positive mass: the bound for a target rounded up to it.
    last_positive = (cdf < total).sum(-1, keepdim=True)
    return torch.minimum(picked, last_positive)


def counts_from_draws(draws: torch.Tensor, vocab: int) -> SampledLabels:
    """Run-length encode each row's draws (already ascending) into (id, count) pairs in CSR form."""
    num_rows = draws.shape[0]
    device = draws.device
    if num_rows == 0:
        return SampledLabels(
            torch.empty(0, dtype=torch.int32, device=device),
            torch.empty(0, dtype=torch.uint8, device=device),
            torch.zeros(1, dtype=torch.int64, device=device),
        )
    keys = (torch.arange(num_rows, device=device)[:, None] * vocab + draws).reshape(-1)
    unique, counts = torch.unique_consecutive(keys, return_counts=True)
    per_row = torch.bincount(unique // vocab, minlength=num_rows)
    indptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
    torch.cumsum(per_row, 0, out=indptr[1:])
    return SampledLabels((unique % vocab).to(torch.int32), counts.to(torch.uint8), indptr)
