"""Top-k labels: the baseline that RS-KD is compared with (prob-valued, biased once renormalised).

Each row keeps its ``k`` most probable ids among its first ``vocab_size`` columns, with their probabilities
under the *full* softmax of ``logits / temperature`` — not renormalised over the kept ids (a loss that wants the
renormalised, biased target can divide by the row sum itself).

Rules:

- Ties at the cut-off go to the lower id, so the result is deterministic and does not depend on the device's
  top-k implementation.
- Ids with zero probability (``-inf`` logits) are never kept, so a row with fewer than ``k`` finite logits keeps
  fewer than ``k`` ids.
- ``probs`` is float16 (what a ``value_kind="prob"`` file stores), rounded to nearest from the float32
  probability, except that a kept probability too small for float16 is stored as its smallest positive value
  (2^-24 ≈ 6e-8): every stored label keeps a positive value, as the file format requires.
"""

from __future__ import annotations

import torch

from sparselabels.errors import InputError, check_int
from sparselabels.options import check_temperature

from .checks import as_rows, check_rows_finite, scaled_logits
from .labels import TopKLabels

_CHUNK_ELEMENTS = 1 << 22
_FLOAT16_TINY = 2.0**-24


def topk_labels(
    logits: torch.Tensor, k: int = 12, *, temperature: float = 1.0, vocab_size: int | None = None
) -> TopKLabels:
    """The ``k`` most probable ids per row (ascending) with their full-softmax probabilities (float16)."""
    temperature = check_temperature(temperature)
    rows = as_rows(logits, vocab_size)
    k = check_int("k", k, None)
    if not 1 <= k <= rows.vocab_size:
        raise InputError(f"k must be in 1..{rows.vocab_size} (vocab_size), got {k}")
    check_rows_finite(rows)
    x = rows.valid
    num_rows, vocab = x.shape
    device = x.device
    ids, probs, per_row = [], [], []
    step = max(1, _CHUNK_ELEMENTS // vocab)
    for start in range(0, num_rows, step):
        chunk = x[start : start + step]
        work_dtype = torch.float64 if chunk.dtype == torch.float64 else torch.float32
        scaled = scaled_logits(chunk, temperature, work_dtype)
        keep = _top_k_mask(scaled, k)
        log_z = torch.logsumexp(scaled, -1, keepdim=True)
        row, col = torch.nonzero(keep, as_tuple=True)  # row-major: ascending ids within a row
        p = torch.exp(scaled[row, col] - log_z[row, 0]).to(torch.float32)
        ids.append(col.to(torch.int32))
        probs.append(p.clamp_min(_FLOAT16_TINY).to(torch.float16))
        per_row.append(keep.sum(-1))
    indptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
    if num_rows:
        torch.cumsum(torch.cat(per_row), 0, out=indptr[1:])
    empty_ids = torch.empty(0, dtype=torch.int32, device=device)
    empty_probs = torch.empty(0, dtype=torch.float16, device=device)
    return TopKLabels(torch.cat([empty_ids, *ids]), torch.cat([empty_probs, *probs]), indptr)


def _top_k_mask(scaled: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of each row's k largest finite values; at the cut-off value, the lowest ids win."""
    cutoff = torch.topk(scaled, k, dim=-1).values[:, -1:]
    above = scaled > cutoff
    at = scaled == cutoff
    room = k - above.sum(-1, keepdim=True)  # how many of the tied ids still fit
    keep = above | (at & (torch.cumsum(at, -1) <= room))
    return keep & (scaled > float("-inf"))
