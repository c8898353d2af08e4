"""Baseline KD losses for experiments: full KD from dense teacher distributions, and Top-K KD.

They follow the conventions of :mod:`sparselabels.loss.sparse_kd` (``temperature`` divides the student logits
only, no T² factor, ``Σ t log t`` included, ``mask``/``reduction`` alike). They materialise ``[..., V]`` tensors
and exist to be compared against, not to train 128K-vocabulary models at scale.

* :func:`full_kd_loss` / :func:`full_kd_loss_from_logits` — KL(t ‖ p) with the whole teacher distribution.
* :func:`topk_kd_loss` — the teacher's top-K probabilities, by default renormalised to sum to 1 (the usual
  practice; biased: it trains on upscaled targets t_i / Σ_K t).
* :func:`ghost_topk_kd_loss` — top-K plus one "ghost" bucket holding the leftover teacher mass 1 - Σ_K t, matched
  against the student's mass outside the K ids (a KL between two (K+1)-bucket distributions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparselabels.errors import InputError
from sparselabels.loss.checks import check_position_tensor, check_target_tensors, check_target_values
from sparselabels.loss.sparse_kd import check_logits, compute_dtype, reduce_positions, sparse_kd_loss
from sparselabels.options import check_temperature


def full_kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(t ‖ softmax(student_logits / T)) with dense teacher probabilities ``[..., V]`` (rows summing to 1)."""
    z = _student_log_probs(student_logits, temperature)
    _check_dense_teacher(student_logits, teacher_probs, mask)
    t = teacher_probs.detach().to(z.dtype)
    # kl_div computes t·(log t - z) with 0·log 0 = 0 in one pass: one [..., V] temporary instead of three.
    per_position = F.kl_div(z, t, reduction="none").sum(-1)
    return reduce_positions(per_position, mask, reduction)


def full_kd_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(softmax(teacher_logits / T_t) ‖ softmax(student_logits / T)); T_t defaults to 1 like the sampled labels."""
    z = _student_log_probs(student_logits, temperature)
    _check_dense_teacher(student_logits, teacher_logits, mask)
    teacher_temperature = check_temperature(teacher_temperature)
    teacher = teacher_logits.detach().to(z.dtype)
    log_t = torch.log_softmax(teacher / teacher_temperature if teacher_temperature != 1.0 else teacher, dim=-1)
    del teacher
    # a masked teacher token (logit -inf) has probability exp(-inf) = 0, but kl_div would multiply it by
    # -inf - z = -inf: NaN. The most negative finite value gives the same 0 (in place: no [..., V] temporary).
    log_t.clamp_(min=torch.finfo(log_t.dtype).min)
    per_position = F.kl_div(z, log_t, reduction="none", log_target=True).sum(-1)
    return reduce_positions(per_position, mask, reduction)


def topk_kd_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    *,
    renormalize: bool = True,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Top-K KD: the sparse loss on the teacher's top-K probabilities, renormalised to sum 1 by default.

    With ``renormalize=False`` this is exactly :func:`sparse_kd_loss` on the raw probabilities (cross-entropy form,
    since they sum to less than 1). Rows whose probabilities are all 0 (full padding) stay 0.
    """
    weights = renormalized(topk_probs) if renormalize else topk_probs
    return sparse_kd_loss(
        student_logits,
        topk_ids,
        weights,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        check_inputs=check_inputs,
    )


def ghost_topk_kd_loss(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Top-K KD with a ghost token: KL over the K stored ids plus one bucket for everything else.

    Teacher ghost mass r = 1 - Σ_k t_k; an r below eps of ``topk_probs``' dtype is rounding and counts as 0
    (otherwise full coverage, K = V, would give log(r / 0)). Student ghost mass 1 - Σ_k p_{id_k} over the
    slots whose stored probability is > 0 (zero-probability slots are padding, so their ids fall in the ghost
    bucket). Ids in one row must be distinct (Top-K ids are).
    """
    z = _student_log_probs(student_logits, temperature)
    check_target_tensors(z.shape[:-1], topk_ids, topk_probs, mask, device=z.device, source="student_logits")
    if check_inputs:
        check_target_values(topk_ids, topk_probs, z.shape[-1])
    t = topk_probs.detach().to(z.dtype)
    present = t > 0
    log_p = z.gather(-1, topk_ids.long())
    log_p_present = torch.where(present, log_p, torch.full_like(log_p, -torch.inf))
    log_p_covered = torch.logsumexp(log_p_present, dim=-1)  # log Σ_k p_k, -inf for an empty row
    # log(1 - Σ p_k) computed as log(-expm1(log Σ p_k)): exact when Σ p_k is tiny, stable when it is near 1.
    log_p_ghost = torch.log(-torch.expm1(log_p_covered.clamp(max=0.0)))
    ghost = 1.0 - t.sum(-1)
    # each stored probability is off by at most eps/2 of itself, so their sum by at most eps/2 (not K eps: that is
    # 25% for bfloat16 at K = 32, and real leftover mass was dropped)
    rounding = torch.finfo(topk_probs.dtype).eps
    ghost = torch.where(ghost > rounding, ghost, torch.zeros_like(ghost))
    per_position = (torch.xlogy(t, t) - torch.where(present, t * log_p, torch.zeros_like(t))).sum(-1)
    per_position = per_position + torch.xlogy(ghost, ghost) - torch.where(ghost > 0, ghost * log_p_ghost,
                                                                           torch.zeros_like(ghost))
    return reduce_positions(per_position, mask, reduction)


def renormalized(probs: torch.Tensor) -> torch.Tensor:
    """``probs / probs.sum(-1)``, with all-zero rows kept at zero."""
    if not probs.is_floating_point():
        raise InputError(f"topk_probs must be floating point, got {probs.dtype}")
    total = probs.sum(-1, keepdim=True)
    return torch.where(total > 0, probs / total.clamp(min=torch.finfo(probs.dtype).tiny), torch.zeros_like(probs))


def _student_log_probs(student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = check_logits(student_logits)
    temperature = check_temperature(temperature)
    z = logits.to(compute_dtype(logits.dtype))
    return torch.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)


def _check_dense_teacher(student_logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> None:
    if not isinstance(teacher, torch.Tensor) or not teacher.is_floating_point():
        raise InputError("the teacher distribution must be a floating-point torch.Tensor")
    if teacher.shape != student_logits.shape:
        raise InputError(
            f"teacher shape {list(teacher.shape)} differs from student_logits shape {list(student_logits.shape)}"
        )
    if teacher.device != student_logits.device:
        raise InputError(f"teacher is on {teacher.device} but student_logits is on {student_logits.device}")
    if mask is not None:  # the same mask rules as every other loss: bool, the leading shape, the same device
        check_position_tensor("mask", mask, student_logits.shape[:-1], device=student_logits.device,
                              source="student_logits", dtype=torch.bool)
