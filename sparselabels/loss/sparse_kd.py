"""KD loss from sparse teacher targets on materialised student logits (the unfused reference path).

The loss at one position is the forward KL from the sparse target t̂ to the student's softmax p over the **full**
vocabulary:

    KL(t̂ ‖ p) = Σ_k w_k (log w_k - log p_{id_k}),   log p_j = z_j / T - LSE(z / T)

so it is computed as ``Σ w log w - Σ_k w_k z_{id_k} / T + (Σ_k w_k) · LSE(z / T)`` (the decomposition Cut
Cross-Entropy uses): the log-sum-exp runs over all of V, only the K target logits are gathered.

Conventions shared by every loss in :mod:`sparselabels.loss`:

* ``temperature`` T divides the **student** logits only. The teacher's temperature is already baked into the
  targets when they are sampled (``sample_counts(..., temperature=)``). The loss is **not** multiplied by T²;
  multiply it yourself for the Hinton convention.
* ``Σ w log w`` (a constant for the student) is included, so with weights summing to 1 (RS-KD counts / rounds) the
  value is a true KL, ≥ 0 up to rounding. With Top-K probabilities (sum < 1) it is the cross-entropy form
  ``Σ w log(w / p)`` and may be negative. Slots with weight 0 (padding: id 0, weight 0) contribute exactly 0.
* Targets are constants: no gradient flows into ``target_weights``.
* Targets come padded (``target_ids``/``target_weights [..., K]``) or as one
  :class:`~sparselabels.data.SparseTargets` (CSR, ``layout="csr"`` batches) in place of the pair; the CSR path
  gathers the target logit of each label and sums per position (``index_add``), never padding to K.
* ``mask`` (bool, the leading shape) selects the positions that count; ``reduction="mean"`` divides by the number
  of selected positions (all positions without a mask), and returns 0 when none is selected.
* Computation is in float32 for fp16/bf16 logits (float64 stays float64); the result has that dtype.
"""

from __future__ import annotations

import torch

from sparselabels.data.targets import SparseTargets
from sparselabels.errors import InputError
from sparselabels.loss.checks import (
    check_reduction,
    check_sparse_targets,
    check_target_tensors,
    check_target_values,
)
from sparselabels.options import check_temperature


def sparse_kd_loss(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor | SparseTargets,
    target_weights: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Forward KL(t̂ ‖ softmax(student_logits / T)) from sparse targets, any leading shape.

    Args:
        student_logits: ``[..., V]`` float32/bf16/fp16/float64 logits over the full vocabulary.
        target_ids: ``[..., K]`` int64 or int32 token ids, ``0 <= id < V``; padded slots hold id 0. Or a
            :class:`~sparselabels.data.SparseTargets` of shape ``student_logits.shape[:-1]`` (then no
            ``target_weights``: its counts or probabilities are the weights).
        target_weights: ``[..., K]`` floating weights ``>= 0`` (RS-KD counts / rounds, or Top-K probabilities);
            padded slots hold 0.
        temperature: divides the student logits; the loss is not multiplied by T².
        mask: optional ``[...]`` bool, True where a position counts.
        reduction: ``"mean"`` over selected positions, ``"sum"``, or ``"none"`` (per position, ``[...]``, zero
            where masked out).
        check_inputs: check id range and weight values (one host sync on GPU; see :mod:`sparselabels.loss.checks`).
    """
    per_position = sparse_kd_per_position(
        student_logits, target_ids, target_weights, temperature=temperature, mask=mask, check_inputs=check_inputs
    )
    return reduce_positions(per_position, mask, reduction)


def sparse_kd_per_position(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor | SparseTargets,
    target_weights: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """The unreduced loss ``[...]`` of :func:`sparse_kd_loss` (masked-out positions are not zeroed here)."""
    logits = check_logits(student_logits)
    temperature = check_temperature(temperature)
    if isinstance(target_ids, SparseTargets) or target_weights is None:
        targets = check_sparse_targets(logits.shape[:-1], target_ids, target_weights, mask, device=logits.device,
                                       source="student_logits", vocab_size=logits.shape[-1],
                                       check_values=check_inputs)
        z = logits.to(compute_dtype(logits.dtype))
        if temperature != 1.0:
            z = z / temperature
        rows = targets.row_index()
        # index the logits in their own shape: a flat view would copy sliced (non-contiguous) logits
        z_targets = z[(*torch.unravel_index(rows, z.shape[:-1]), targets.ids.long())]
        lse = torch.logsumexp(z, dim=-1).reshape(-1)
        return kd_label_losses(targets.weights(z.dtype), z_targets, lse, rows).reshape(logits.shape[:-1])
    check_target_tensors(
        logits.shape[:-1], target_ids, target_weights, mask, device=logits.device, source="student_logits"
    )
    vocab_size = logits.shape[-1]
    if check_inputs:
        check_target_values(target_ids, target_weights, vocab_size)
    z = logits.to(compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    weights = target_weights.detach().to(z.dtype)
    return kd_row_losses(weights, z.gather(-1, target_ids.long()), torch.logsumexp(z, dim=-1))


def kd_row_losses(weights: torch.Tensor, z_targets: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``Σ w log w - Σ w z_id + (Σ w) lse`` per row, from the tempered logits at the target ids and their log-sum-exp.

    A slot or row of weight 0 adds exactly 0, even where the student's logit is -inf (a banned token at the
    padding id 0): ``0 * -inf`` would be NaN. (A NaN weight still gives NaN: ``!= 0``, not ``> 0``.)"""
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    total = weights.sum(-1)
    return (
        torch.xlogy(weights, weights).sum(-1)
        - torch.where(weights != 0, weights * z_targets, zero).sum(-1)
        + torch.where(total != 0, total * lse, zero)
    )


def kd_label_losses(weights: torch.Tensor, z_targets: torch.Tensor, lse: torch.Tensor, rows: torch.Tensor,
                    totals: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`kd_row_losses` from one entry per label: ``weights``, ``z_targets`` and ``rows`` (the row of each
    label) are ``[L]``, ``lse`` is ``[R]``; the per-row sums are one ``index_add`` (a segment sum, no padding).
    ``totals`` (``Σ w`` per row), when given, receives the weight sums (the fused gradient needs them)."""
    zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
    per_label = torch.stack(
        [torch.xlogy(weights, weights), torch.where(weights != 0, weights * z_targets, zero), weights], dim=1)
    sums = torch.zeros((lse.shape[0], 3), dtype=per_label.dtype, device=per_label.device).index_add(
        0, rows, per_label)
    total = sums[:, 2]
    if totals is not None:
        totals.copy_(total.detach())
    return sums[:, 0] - sums[:, 1] + torch.where(total != 0, total * lse, zero)


def reduce_positions(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Apply ``mask`` and ``reduction`` to a per-position loss (shared by all losses in this package)."""
    check_reduction(reduction)
    if mask is not None:
        per_position = torch.where(mask, per_position, torch.zeros((), dtype=per_position.dtype,
                                                                   device=per_position.device))
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    count = mask.sum() if mask is not None else torch.tensor(per_position.numel(), device=per_position.device)
    return total / count.clamp(min=1).to(total.dtype)


def check_logits(logits: torch.Tensor, name: str = "student_logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise InputError(f"{name} must be floating point, got {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise InputError(f"{name} must have shape [..., V] with V >= 1, got {list(logits.shape)}")
    return logits


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (numerics), float64 kept (references and tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
