"""Teacher logits → sparse labels: RS-KD counts (``sample_counts``) and the top-k baseline (``topk_labels``).

``sample_counts`` draws ``rounds`` tokens with replacement from ``softmax(logits / temperature)`` per row and
returns each distinct id with its count — an unbiased estimate of the teacher distribution, tail included. Two
backends give the same draws for the same seed (up to float rounding at CDF boundaries):

- ``"triton"``: a kernel that reads each logit about once (CUDA; CPU only under ``TRITON_INTERPRET=1``);
- ``"reference"``: PyTorch, float64, the oracle of the tests and the CPU path.

``backend="auto"`` picks the kernel for CUDA float32/bfloat16/float16 logits when triton is installed, the
reference otherwise.

Randomness is counter-based (Philox keyed by ``seed``, counted by ``(row_id, draw)``): a row's draws depend
only on the seed, its row id and its logits — not on the other rows in the call — so labeling can be split
across ranks and resumed with identical results. ``row_ids`` defaults to ``arange(R)``; pass global position
numbers to make that independence hold across calls. ``seed=None`` draws a fresh seed from torch's default
generator (``torch.manual_seed`` makes it repeatable). Given a seed, results are deterministic on a given
device.
"""

from __future__ import annotations

from sparselabels._extras import require

require("sparselabels.sampling", "torch")

import torch

from sparselabels.errors import InputError

from .labels import SampledLabels, TopKLabels
from .reference import sample_counts_reference
from .topk import topk_labels

__all__ = ["SampledLabels", "TopKLabels", "sample_counts", "sample_counts_reference", "topk_labels"]

_BACKENDS = ("auto", "triton", "reference")


def sample_counts(
    logits: torch.Tensor,
    rounds: int = 50,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    seed: int | None = None,
    row_ids: torch.Tensor | None = None,
    backend: str = "auto",
) -> SampledLabels:
    """RS-KD labels: ``rounds`` draws with replacement per row of ``logits [..., V]``, as (id, count) runs.

    Leading dimensions are flattened to rows in C order. Columns at or beyond ``vocab_size`` (padding) are never
    sampled; ``-inf`` logits are allowed (probability 0); NaN, +inf, or a row without a finite logit raises
    :class:`~sparselabels.errors.InputError` naming the row. Returns ids (int32, ascending per row), counts
    (uint8, >= 1, summing to ``rounds`` per row) and indptr (int64, R+1) on the logits' device.
    """
    if backend not in _BACKENDS:
        raise InputError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if _kernel_applies(logits) else "reference"
    if backend == "reference":
        return sample_counts_reference(
            logits, rounds, temperature=temperature, vocab_size=vocab_size, seed=seed, row_ids=row_ids
        )
    from .triton_kernel import sample_counts_triton  # lazy: triton is optional

    return sample_counts_triton(
        logits, rounds, temperature=temperature, vocab_size=vocab_size, seed=seed, row_ids=row_ids
    )


def _kernel_applies(logits: object) -> bool:
    if not (isinstance(logits, torch.Tensor) and logits.is_cuda):
        return False
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
