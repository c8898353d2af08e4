"""Tests of sparselabels.loss: values and gradients against a float64 dense reference, the fused path against the
unfused one (PyTorch and, under TRITON_INTERPRET=1, Triton), padding, temperature, masks, bf16, input errors, and a
statistical test that RS-KD gradients average to the full-KD gradient."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import sparselabels.loss as L
from sparselabels.errors import InputError
from sparselabels.loss import fused

# ----------------------------------------------------------------------------------------------------------------
# helpers


def make_targets(leading, vocab, k, *, generator, pad=0, dtype=torch.float64, normalize=True):
    """Distinct ids per position, weights summing to 1 (or not), with ``pad`` trailing padded slots (id 0, w 0)."""
    n = math.prod(leading)
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(n)])
    weights = torch.rand(n, k, generator=generator, dtype=dtype) + 0.05
    weights = weights / weights.sum(-1, keepdim=True) * (1.0 if normalize else 0.7)
    if pad:
        ids = torch.cat([ids, torch.zeros(n, pad, dtype=torch.int64)], 1)
        weights = torch.cat([weights, torch.zeros(n, pad, dtype=dtype)], 1)
    return ids.reshape(*leading, k + pad), weights.reshape(*leading, k + pad)


def dense_reference(logits, ids, weights, temperature=1.0, mask=None, reduction="mean"):
    """Obviously correct float64 KL: scatter the targets into a dense distribution, sum over the whole vocabulary."""
    z = logits.double() / temperature
    dense = torch.zeros_like(z).scatter_add_(-1, ids.long(), weights.double())
    per_position = (torch.xlogy(dense, dense) - dense * torch.log_softmax(z, -1)).sum(-1)
    if mask is not None:
        per_position = per_position * mask.double()
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    count = mask.sum() if mask is not None else per_position.numel()
    return per_position.sum() / max(int(count), 1)


def grad_of(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*tensors)
    grads = torch.autograd.grad(value, tensors)
    return value.detach(), grads


# ----------------------------------------------------------------------------------------------------------------
# sparse_kd_loss against the dense reference


@pytest.mark.parametrize("leading", [(13,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sparse_kd_matches_float64_dense_reference(leading, temperature, reduction):
    g = torch.Generator().manual_seed(1)
    vocab = 37
    logits = torch.randn(*leading, vocab, generator=g, dtype=torch.float64) * 2
    ids, weights = make_targets(leading, vocab, 6, generator=g, pad=2)

    def ours(x):
        out = L.sparse_kd_loss(x, ids, weights, temperature=temperature, reduction=reduction)
        return out.sum() if reduction == "none" else out

    def reference(x):
        out = dense_reference(x, ids, weights, temperature, reduction=reduction)
        return out.sum() if reduction == "none" else out

    value, (grad,) = grad_of(ours, logits)
    ref_value, (ref_grad,) = grad_of(reference, logits)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-12)
    if reduction == "none":
        assert L.sparse_kd_loss(logits, ids, weights, reduction="none").shape == leading


def test_kl_is_nonnegative_and_zero_when_student_equals_target():
    g = torch.Generator().manual_seed(2)
    vocab = 50
    ids, weights = make_targets((20,), vocab, 5, generator=g, pad=3)
    logits = torch.randn(20, vocab, generator=g, dtype=torch.float64)
    per_position = L.sparse_kd_loss(logits, ids, weights, reduction="none")
    assert bool((per_position >= -1e-12).all())
    # A student whose softmax is exactly t̂ (mass outside the support ~ e^-60) has KL ~ 0.
    dense = torch.zeros(20, vocab, dtype=torch.float64).scatter_add_(1, ids, weights)
    matched = torch.where(dense > 0, dense.clamp(min=1e-300).log(), torch.full_like(dense, -60.0))
    assert float(L.sparse_kd_loss(matched, ids, weights, reduction="sum")) < 1e-20 * vocab + 1e-12


def test_topk_style_weights_give_the_cross_entropy_form():
    """Weights summing to < 1 keep Σ w log w - Σ w log p (no renormalisation anywhere)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 30, generator=g, dtype=torch.float64)
    ids, weights = make_targets((8,), 30, 4, generator=g, normalize=False)
    log_p = torch.log_softmax(logits, -1).gather(1, ids)
    expected = (weights * (weights.log() - log_p)).sum(-1)
    torch.testing.assert_close(L.sparse_kd_loss(logits, ids, weights, reduction="none"), expected)


def test_padding_slots_change_nothing():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 40, generator=g, dtype=torch.float64)
    ids, weights = make_targets((10,), 40, 5, generator=g)
    padded_ids = torch.cat([ids, torch.zeros(10, 7, dtype=torch.int64)], 1)
    padded_weights = torch.cat([weights, torch.zeros(10, 7, dtype=torch.float64)], 1)
    value, (grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids, weights), logits)
    padded_value, (padded_grad,) = grad_of(lambda x: L.sparse_kd_loss(x, padded_ids, padded_weights), logits)
    torch.testing.assert_close(padded_value, value, rtol=0, atol=0)
    torch.testing.assert_close(padded_grad, grad, rtol=0, atol=0)
    # A fully padded position contributes exactly 0 and no gradient.
    ids_zero = padded_ids.clone()
    weights_zero = padded_weights.clone()
    ids_zero[0] = 0
    weights_zero[0] = 0
    _, (none_grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids_zero, weights_zero, reduction="sum"), logits)
    assert float(L.sparse_kd_loss(logits, ids_zero, weights_zero, reduction="none")[0]) == 0.0
    assert bool((none_grad[0] == 0).all())


def test_minus_inf_logit_at_the_padding_id_adds_nothing():
    """A student that bans id 0 (logit -inf) while padding slots point at id 0 with weight 0: the loss and its
    gradient stay finite and equal the dense KL over the real targets (0 * -inf would be NaN)."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 30, generator=g, dtype=torch.float64)
    ids, weights = make_targets((8,), 30, 4, generator=g, pad=3)
    ids = torch.where(weights > 0, ids.clamp(min=1), ids)  # real targets avoid id 0, padding slots use it
    logits[:, 0] = -math.inf
    value, (grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids, weights, reduction="sum"), logits)
    log_p = torch.log_softmax(logits, -1).gather(1, ids)
    real = weights > 0
    expected = torch.where(real, weights * (weights.log() - log_p), torch.zeros_like(weights)).sum()
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(grad).all()
    # the fused loss's chunk function (its CPU path) likewise
    chunk_logits = logits.clone()
    rows, _ = fused.chunk_loss_and_grad_torch(chunk_logits, ids, weights, None, torch.ones(8, dtype=torch.float64),
                                              None, 1.0, -100, True)
    torch.testing.assert_close(rows.sum(), expected)
    assert torch.isfinite(chunk_logits).all()


def test_dense_baseline_with_a_masked_teacher_token():
    """A teacher logit of -inf (a masked token) has probability 0; kl_div(log_target=True) used to give NaN."""
    g = torch.Generator().manual_seed(7)
    student = torch.randn(5, 20, generator=g, dtype=torch.float64)
    teacher = torch.randn(5, 20, generator=g, dtype=torch.float64)
    teacher[:, 3] = -math.inf
    value = L.full_kd_loss_from_logits(student, teacher, reduction="sum")
    p = torch.softmax(teacher, -1)
    expected = torch.where(p > 0, p * (p.log() - torch.log_softmax(student, -1)), torch.zeros_like(p)).sum()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(L.full_kd_loss(student, p, reduction="sum"), expected)


def test_nan_weights_are_not_hidden_when_checks_are_off():
    """Weight-0 slots are skipped with ``!= 0``: a NaN weight (checks off) still makes the loss NaN."""
    logits = torch.randn(2, 10, dtype=torch.float64)
    ids = torch.tensor([[1, 2], [3, 4]])
    weights = torch.tensor([[0.5, float("nan")], [0.5, 0.5]], dtype=torch.float64)
    per_position = L.sparse_kd_loss(logits, ids, weights, reduction="none", check_inputs=False)
    assert torch.isnan(per_position[0]) and torch.isfinite(per_position[1])


def test_mask_selects_positions():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 25, generator=g, dtype=torch.float64)
    ids, weights = make_targets((4, 6), 25, 4, generator=g, pad=1)
    mask = torch.rand(4, 6, generator=g) > 0.4
    value, (grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids, weights, mask=mask), logits)
    subset = L.sparse_kd_loss(logits[mask], ids[mask], weights[mask])
    torch.testing.assert_close(value, subset)
    torch.testing.assert_close(value, dense_reference(logits, ids, weights, mask=mask))
    assert bool((grad[~mask] == 0).all())
    assert bool((grad[mask] != 0).any())
    per_position = L.sparse_kd_loss(logits, ids, weights, mask=mask, reduction="none")
    assert bool((per_position[~mask] == 0).all())
    torch.testing.assert_close(L.sparse_kd_loss(logits, ids, weights, mask=mask, reduction="sum"), per_position.sum())


def test_all_masked_out_gives_zero_and_zero_gradient():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 20, generator=g)
    ids, weights = make_targets((5,), 20, 3, generator=g, dtype=torch.float32)
    mask = torch.zeros(5, dtype=torch.bool)
    value, (grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids, weights, mask=mask), logits)
    assert float(value) == 0.0
    assert bool((grad == 0).all())


def test_temperature_divides_student_logits_without_t_squared():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 30, generator=g, dtype=torch.float64)
    ids, weights = make_targets((9,), 30, 5, generator=g)
    at_t = L.sparse_kd_loss(logits, ids, weights, temperature=3.0)
    torch.testing.assert_close(at_t, L.sparse_kd_loss(logits / 3.0, ids, weights))


def test_bf16_logits_match_float32_on_the_same_values():
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(6, 7, 300, generator=g) * 4).to(torch.bfloat16)
    ids, weights = make_targets((6, 7), 300, 12, generator=g, pad=4, dtype=torch.float32)
    value, (grad,) = grad_of(lambda x: L.sparse_kd_loss(x, ids, weights, temperature=1.5), logits)
    ref_value, (ref_grad,) = grad_of(
        lambda x: dense_reference(x, ids, weights, 1.5), logits.double()
    )
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-2, atol=2e-4)


def test_int32_ids_and_bf16_weights_are_accepted():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 20, generator=g)
    ids, weights = make_targets((5,), 20, 3, generator=g, dtype=torch.float32)
    a = L.sparse_kd_loss(logits, ids, weights)
    b = L.sparse_kd_loss(logits, ids.to(torch.int32), weights)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = L.sparse_kd_loss(logits, ids, weights.to(torch.bfloat16))
    torch.testing.assert_close(c, a, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lg, i, w, m: (lg, i.masked_fill(i == i[2, 1], 99), w, m), r"position 2, slot 1.*vocabulary \[0, 20\)"),
        (lambda lg, i, w, m: (lg, i - 1 - i.max(), w, m), r"outside the vocabulary"),
        (lambda lg, i, w, m: (lg, i, w.index_put((torch.tensor(3), torch.tensor(0)), torch.tensor(-0.1)), m),
         r"position 3, slot 0.*>= 0"),
        (lambda lg, i, w, m: (lg, i, w * float("nan"), m), r"finite"),
        (lambda lg, i, w, m: (lg, i[:, :2], w, m), r"shape"),
        (lambda lg, i, w, m: (lg, i[:4], w[:4], m), r"target_ids must have shape"),
        (lambda lg, i, w, m: (lg, i.float(), w, m), r"int64 or int32"),
        (lambda lg, i, w, m: (lg, i, (w * 50).to(torch.uint8), m), r"divide integer counts"),
        (lambda lg, i, w, m: (lg.long(), i, w, m), r"floating point"),
        (lambda lg, i, w, m: (lg, i, w, torch.ones(6, dtype=torch.bool)), r"mask must have shape"),
        (lambda lg, i, w, m: (lg, i, w, torch.ones(5)), r"mask must have dtype"),
    ],
)
def test_bad_inputs_raise_input_error(mutate, message):
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(5, 20, generator=g)
    ids, weights = make_targets((5,), 20, 3, generator=g, dtype=torch.float32)
    args = mutate(logits, ids, weights, None)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss(args[0], args[1], args[2], mask=args[3])


def test_bad_options_raise_input_error():
    logits = torch.randn(2, 5)
    ids = torch.zeros(2, 1, dtype=torch.int64)
    weights = torch.ones(2, 1)
    with pytest.raises(InputError, match="reduction"):
        L.sparse_kd_loss(logits, ids, weights, reduction="avg")
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="temperature"):
            L.sparse_kd_loss(logits, ids, weights, temperature=bad)
    # check_inputs=False skips only the value check (out-of-range ids then fail inside torch, not silently).
    with pytest.raises((RuntimeError, IndexError)):
        L.sparse_kd_loss(logits, ids + 7, weights, check_inputs=False)


# ----------------------------------------------------------------------------------------------------------------
# baselines


def test_full_kd_matches_reference_and_logit_form():
    g = torch.Generator().manual_seed(11)
    student = torch.randn(3, 4, 30, generator=g, dtype=torch.float64)
    teacher_logits = torch.randn(3, 4, 30, generator=g, dtype=torch.float64) * 2
    teacher = torch.softmax(teacher_logits, -1)
    mask = torch.rand(3, 4, generator=g) > 0.3
    expected = (teacher * (teacher.log() - torch.log_softmax(student / 2.0, -1))).sum(-1)
    expected = (expected * mask).sum() / mask.sum()
    value = L.full_kd_loss(student, teacher, temperature=2.0, mask=mask)
    torch.testing.assert_close(value, expected)
    from_logits = L.full_kd_loss_from_logits(student, teacher_logits, temperature=2.0, mask=mask)
    torch.testing.assert_close(from_logits, expected)
    t3 = L.full_kd_loss_from_logits(student, teacher_logits * 3, teacher_temperature=3.0, reduction="sum")
    torch.testing.assert_close(t3, L.full_kd_loss(student, teacher, reduction="sum"))
    # The sparse loss with every id as a target is full KD.
    all_ids = torch.arange(30).expand(3, 4, 30)
    torch.testing.assert_close(L.sparse_kd_loss(student, all_ids, teacher, temperature=2.0, mask=mask), expected)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(3, 4), r"mask must have dtype torch.bool, got torch.float32"),
        (torch.ones(4, 3, dtype=torch.bool), r"mask must have shape \[3, 4\]"),
        ([[True] * 4] * 3, r"mask must be a torch.Tensor, got list"),
    ],
    ids=["float-mask", "wrong-shape", "not-a-tensor"],
)
def test_dense_baselines_check_the_mask_like_the_sparse_loss(mask, message):
    """A float 0/1 mask would be read as weights and a transposed one would broadcast: both refused."""
    student = torch.randn(3, 4, 30)
    teacher_logits = torch.randn(3, 4, 30)
    with pytest.raises(InputError, match=message):
        L.full_kd_loss_from_logits(student, teacher_logits, mask=mask)
    with pytest.raises(InputError, match=message):
        L.full_kd_loss(student, torch.softmax(teacher_logits, -1), mask=mask)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss(student, torch.zeros(3, 4, 2, dtype=torch.int64), torch.full((3, 4, 2), 0.5), mask=mask)


def test_topk_renormalised_and_raw():
    g = torch.Generator().manual_seed(12)
    student = torch.randn(7, 40, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(7, 40, generator=g, dtype=torch.float64) * 2, -1)
    probs, ids = teacher.topk(5, dim=-1)
    renorm = probs / probs.sum(-1, keepdim=True)
    log_p = torch.log_softmax(student, -1).gather(1, ids)
    expected = (renorm * (renorm.log() - log_p)).sum(-1).mean()
    torch.testing.assert_close(L.topk_kd_loss(student, ids, probs), expected)
    torch.testing.assert_close(L.topk_kd_loss(student, ids, probs, renormalize=False),
                               L.sparse_kd_loss(student, ids, probs))
    # K = V is full KD.
    probs_all, ids_all = teacher.topk(40, dim=-1)
    torch.testing.assert_close(L.topk_kd_loss(student, ids_all, probs_all), L.full_kd_loss(student, teacher))
    # Fully padded rows stay at zero (no 0/0).
    padded = L.topk_kd_loss(student[:1], torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.float64))
    assert float(padded) == 0.0


def test_ghost_topk_is_the_k_plus_one_bucket_kl():
    g = torch.Generator().manual_seed(13)
    student = torch.randn(6, 30, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(6, 30, generator=g, dtype=torch.float64) * 2, -1)
    probs, ids = teacher.topk(4, dim=-1)
    ids = torch.cat([ids, torch.zeros(6, 2, dtype=torch.int64)], 1)  # padded slots
    probs = torch.cat([probs, torch.zeros(6, 2, dtype=torch.float64)], 1)
    p = torch.softmax(student, -1)
    p_k = p.gather(1, ids[:, :4])
    t_k = probs[:, :4]
    t_bucket = torch.cat([t_k, 1 - t_k.sum(-1, keepdim=True)], 1)
    p_bucket = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], 1)
    expected = (t_bucket * (t_bucket / p_bucket).log()).sum(-1)
    value, (grad,) = grad_of(lambda s: L.ghost_topk_kd_loss(s, ids, probs, reduction="none").sum(), student)
    ref_value, (ref_grad,) = grad_of(
        lambda s: (t_bucket * (t_bucket.log() - torch.cat(
            [torch.softmax(s, -1).gather(1, ids[:, :4]),
             1 - torch.softmax(s, -1).gather(1, ids[:, :4]).sum(-1, keepdim=True)], 1).log())).sum(), student)
    torch.testing.assert_close(L.ghost_topk_kd_loss(student, ids, probs, reduction="none"), expected)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    # Full coverage: no ghost mass left, ghost KD is full KD.
    probs_all, ids_all = teacher.topk(30, dim=-1)
    torch.testing.assert_close(L.ghost_topk_kd_loss(student, ids_all, probs_all), L.full_kd_loss(student, teacher))


# ----------------------------------------------------------------------------------------------------------------
# csr_to_padded


def test_csr_to_padded_round_trip_and_counts():
    ids = torch.tensor([5, 9, 1, 7, 7, 3], dtype=torch.int32)
    counts = torch.tensor([30, 20, 50, 10, 25, 15], dtype=torch.uint8)
    indptr = torch.tensor([0, 2, 3, 3, 6])
    out_ids, out_weights = L.csr_to_padded(ids, counts, indptr, rounds=50)
    assert out_ids.dtype == torch.int64 and out_weights.dtype == torch.float32
    assert out_ids.tolist() == [[5, 9, 0], [1, 0, 0], [0, 0, 0], [7, 7, 3]]
    torch.testing.assert_close(out_weights, torch.tensor([[0.6, 0.4, 0], [1.0, 0, 0], [0, 0, 0], [0.2, 0.5, 0.3]]))
    wide_ids, wide_weights = L.csr_to_padded(ids.numpy(), counts.numpy(), indptr.numpy(), rounds=50, pad_to=5)
    assert wide_ids.shape == (4, 5)
    torch.testing.assert_close(wide_weights[:, :3], out_weights)
    assert bool((wide_weights[:, 3:] == 0).all())
    _, float_weights = L.csr_to_padded(ids, counts.float() / 50, indptr)
    torch.testing.assert_close(float_weights, out_weights)
    empty_ids, empty_weights = L.csr_to_padded(ids[:0], counts[:0], torch.tensor([0, 0, 0]), rounds=50)
    assert empty_ids.shape == (2, 1) and float(empty_weights.abs().sum()) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"indptr": torch.tensor([0, 2, 1, 6])}, r"decreases at row 1"),
        ({"indptr": torch.tensor([1, 6])}, r"indptr\[0\] must be 0"),
        ({"indptr": torch.tensor([0, 5])}, r"indptr\[-1\] = 5 but there are 6 ids"),
        ({"pad_to": 2}, r"row 1 holds 4 labels, more than pad_to=2"),
        ({"rounds": None}, r"pass rounds="),
        ({"rounds": 0}, r"rounds must be a positive int"),
        ({"weights": torch.ones(6)}, r"already floating point"),
        ({"weights": torch.ones(5, dtype=torch.uint8)}, r"ids has 6 entries but weights has 5"),
    ],
)
def test_csr_to_padded_errors(kwargs, message):
    args = {
        "ids": torch.tensor([5, 9, 1, 7, 4, 3]),
        "weights": torch.tensor([1, 2, 3, 4, 5, 6], dtype=torch.uint8),
        "indptr": torch.tensor([0, 2, 6]),
        "rounds": 50,
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        L.csr_to_padded(args.pop("ids"), args.pop("weights"), args.pop("indptr"), **args)


# ----------------------------------------------------------------------------------------------------------------
# the fused loss against the unfused one


def unfused(hidden, weight, ids, weights, *, labels=None, ce_weight=0.0, temperature=1.0, mask=None,
            reduction="mean", ignore_index=-100):
    """The reference the fused path must equal: materialised logits, sparse_kd_loss and F.cross_entropy."""
    logits = hidden @ weight.t()
    loss = (1 - ce_weight) * L.sparse_kd_loss(logits, ids, weights, temperature=temperature, mask=mask,
                                              reduction=reduction)
    if ce_weight:
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float() if logits.dtype != torch.float64
                             else logits.reshape(-1, logits.shape[-1]),
                             labels.reshape(-1), ignore_index=ignore_index, reduction="none").reshape(labels.shape)
        valid = labels != ignore_index
        if mask is not None:
            valid = valid & mask
        ce = ce * valid
        if reduction == "mean":
            ce = ce.sum() / valid.sum().clamp(min=1)
        elif reduction == "sum":
            ce = ce.sum()
        loss = loss + ce_weight * ce
    return loss


def fused_problem(seed, leading=(3, 11), hidden_size=16, vocab=70, k=6, pad=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*leading, hidden_size, generator=g, dtype=torch.float64)).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    ids, weights = make_targets(leading, vocab, k, generator=g, pad=pad, dtype=torch.float32)
    labels = torch.randint(0, vocab, leading, generator=g)
    labels.view(-1)[::7] = -100
    labels.view(-1)[1] = ids.view(-1, k + pad)[1, 0]  # a label that is also a target id
    mask = torch.rand(*leading, generator=g) > 0.25
    return hidden, weight, ids, weights, labels, mask


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_equals_unfused_float64(temperature, ce_weight, use_mask, reduction):
    hidden, weight, ids, weights, labels, mask = fused_problem(20)
    mask = mask if use_mask else None
    kwargs = dict(labels=labels, ce_weight=ce_weight, temperature=temperature, mask=mask, reduction=reduction)
    value, (gh, gw) = grad_of(lambda h, w: unfused(h, w, ids, weights, **kwargs), hidden, weight)
    for chunk_size in (1, 5, 16, 1000):
        f_value, (fh, fw) = grad_of(
            lambda h, w, c=chunk_size: L.sparse_kd_loss_from_hidden(h, w, ids, weights, chunk_size=c, **kwargs),
            hidden, weight,
        )
        torch.testing.assert_close(f_value, value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fh, gh, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(fw, gw, rtol=1e-11, atol=1e-13)


def test_fused_matches_dense_float64_reference():
    hidden, weight, ids, weights, _, mask = fused_problem(21, leading=(40,), k=9, pad=0)
    value, (gh, gw) = grad_of(
        lambda h, w: dense_reference(h @ w.t(), ids, weights, 1.7, mask=mask), hidden, weight
    )
    f_value, (fh, fw) = grad_of(
        lambda h, w: L.sparse_kd_loss_from_hidden(h, w, ids, weights, temperature=1.7, mask=mask, chunk_size=7),
        hidden, weight,
    )
    torch.testing.assert_close(f_value, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fh, gh, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(fw, gw, rtol=1e-10, atol=1e-13)


def test_fused_float32_and_bf16_within_tolerance():
    hidden, weight, ids, weights, labels, mask = fused_problem(22, leading=(4, 32), hidden_size=32, vocab=500, k=12)
    kwargs = dict(labels=labels, ce_weight=0.25, temperature=1.3, mask=mask)
    ref, (rh, rw) = grad_of(lambda h, w: unfused(h, w, ids, weights, **kwargs), hidden, weight)
    for dtype, rtol, atol in ((torch.float32, 1e-5, 1e-6), (torch.bfloat16, 2e-2, 2e-3)):
        value, (fh, fw) = grad_of(
            lambda h, w: L.sparse_kd_loss_from_hidden(h, w, ids, weights, chunk_size=24, **kwargs),
            hidden.to(dtype), weight.to(dtype),
        )
        assert value.dtype == torch.float32 and fh.dtype == dtype and fw.dtype == dtype
        torch.testing.assert_close(value.double(), ref, rtol=rtol, atol=atol)
        scale_h, scale_w = rh.abs().max(), rw.abs().max()
        torch.testing.assert_close(fh.double() / scale_h, rh / scale_h, rtol=0, atol=atol * 10)
        torch.testing.assert_close(fw.double() / scale_w, rw / scale_w, rtol=0, atol=atol * 10)
        # Against the unfused path at the same precision.
        same = unfused(hidden.to(dtype), weight.to(dtype), ids, weights, **kwargs)
        torch.testing.assert_close(value, same.float(), rtol=rtol, atol=atol)


def test_fused_partial_grads_no_grad_and_output_scaling():
    hidden, weight, ids, weights, _, mask = fused_problem(23)
    _, (gh, gw) = grad_of(lambda h, w: unfused(h, w, ids, weights, mask=mask), hidden, weight)
    h = hidden.clone().requires_grad_(True)
    (3.0 * L.sparse_kd_loss_from_hidden(h, weight, ids, weights, mask=mask, chunk_size=4)).backward()
    torch.testing.assert_close(h.grad, 3.0 * gh)
    w = weight.clone().requires_grad_(True)
    L.sparse_kd_loss_from_hidden(hidden, w, ids, weights, mask=mask, chunk_size=4).backward()
    torch.testing.assert_close(w.grad, gw)
    with torch.no_grad():
        value = L.sparse_kd_loss_from_hidden(h, w, ids, weights, mask=mask)
        per_position = L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, mask=mask, reduction="none")
    torch.testing.assert_close(value, unfused(hidden, weight, ids, weights, mask=mask))
    torch.testing.assert_close(per_position, unfused(hidden, weight, ids, weights, mask=mask, reduction="none"))
    assert per_position.shape == mask.shape
    with pytest.raises(InputError, match="reduction='none'"):
        L.sparse_kd_loss_from_hidden(h, weight, ids, weights, reduction="none")
    # A retained graph can be differentiated twice (backward does not scale the stored gradients in place).
    h = hidden.clone().requires_grad_(True)
    loss = L.sparse_kd_loss_from_hidden(h, weight, ids, weights, mask=mask, chunk_size=4)
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    h.grad = None
    (2.0 * loss).backward()
    torch.testing.assert_close(h.grad, 2.0 * first)


def test_fused_bad_inputs():
    hidden, weight, ids, weights, labels, _ = fused_problem(24)
    with pytest.raises(InputError, match="dtype"):
        L.sparse_kd_loss_from_hidden(hidden, weight.float(), ids, weights)
    with pytest.raises(InputError, match=r"lm_head_weight must have shape \[V, H\]"):
        L.sparse_kd_loss_from_hidden(hidden, weight.t(), ids, weights)
    with pytest.raises(InputError, match="needs labels"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, ce_weight=0.5)
    with pytest.raises(InputError, match=r"ce_weight must be in \[0, 1\]"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, labels=labels, ce_weight=1.5)
    bad_labels = labels.clone()
    bad_labels[1, 2] = 70
    with pytest.raises(InputError, match=r"labels at position \(1, 2\): label 70"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, labels=bad_labels, ce_weight=0.5)
    with pytest.raises(InputError, match="vocabulary"):
        L.sparse_kd_loss_from_hidden(hidden, weight[:10], ids, weights)
    with pytest.raises(InputError, match="chunk_size"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, chunk_size=0)
    with pytest.raises(InputError, match="backend"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, backend="cuda")


class _LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor any ATen op returns (allocation sizes, device-independent)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_fused_half_precision_backward_takes_a_loss_scale():
    """GradScaler's default scale, 2**16, is inf in float16: the stored gradient is scaled in float32."""
    g = torch.Generator().manual_seed(40)
    hidden = torch.randn(6, 8, generator=g).half().requires_grad_()
    weight = torch.randn(20, 8, generator=g).half().requires_grad_()
    ids, weights = make_targets((6,), 20, 3, generator=g, dtype=torch.float32)
    (L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights) * 65536.0).backward()
    ref_h, ref_w = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    L.sparse_kd_loss(ref_h @ ref_w.t(), ids, weights).backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    torch.testing.assert_close(hidden.grad.float() / 65536, ref_h.grad, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(weight.grad.float() / 65536, ref_w.grad, rtol=2e-2, atol=2e-3)


def test_fused_under_autocast_runs_in_the_inputs_dtypes():
    """Under autocast the chunk product came out in bfloat16 while the gradient buffer was float32 (a crash)."""
    hidden, weight, ids, weights, _, mask = fused_problem(41, dtype=torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    expected, (eh, ew) = grad_of(lambda h, w: unfused(h, w, ids, weights, mask=mask), hidden, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, (gh, gw) = grad_of(lambda h, w: L.sparse_kd_loss_from_hidden(h, w, ids, weights, mask=mask),
                                  hidden, weight)
    assert value.dtype == torch.float32 and gh.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, eh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, ew, rtol=1e-4, atol=1e-6)


def test_fused_masked_rows_add_exactly_zero_and_options_are_checked():
    g = torch.Generator().manual_seed(42)
    hidden = torch.randn(3, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(10, 4, generator=g, dtype=torch.float64)
    hidden[1] = math.inf  # a masked-out position whose logits overflowed
    ids, weights = make_targets((3,), 10, 2, generator=g)
    mask = torch.tensor([True, False, True])
    expected = L.sparse_kd_loss(hidden[[0, 2]] @ weight.t(), ids[[0, 2]], weights[[0, 2]], reduction="sum")
    torch.testing.assert_close(L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, mask=mask,
                                                            reduction="sum"), expected)
    with pytest.raises(InputError, match="ignore_index"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, labels=torch.zeros(3, dtype=torch.long),
                                     ce_weight=0.5, ignore_index=1.5)
    with pytest.raises(InputError, match="labels"):  # checked even though ce_weight is 0
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="float64"):
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, backend="triton")


def test_fused_gradient_cannot_be_differentiated_again():
    hidden, weight, ids, weights, _, _ = fused_problem(43)
    hidden.requires_grad_()
    with pytest.raises(InputError, match="no second derivative"):  # it returned a graph-less gradient silently
        torch.autograd.grad(L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights), hidden, create_graph=True)


def test_ghost_bucket_keeps_real_leftover_mass_in_bfloat16():
    """The rounding allowance was K eps (25% for bfloat16 at K = 32): real leftover mass was dropped."""
    g = torch.Generator().manual_seed(44)
    logits = torch.randn(1, 200, generator=g, dtype=torch.float64)
    probs = torch.full((1, 32), 0.91 / 32, dtype=torch.bfloat16)
    ids = torch.randperm(200, generator=g)[:32].reshape(1, 32)
    exact = L.ghost_topk_kd_loss(logits, ids, probs.float(), reduction="sum")
    torch.testing.assert_close(L.ghost_topk_kd_loss(logits, ids, probs, reduction="sum"), exact)


def test_fused_never_materialises_tokens_by_vocab():
    tokens, hidden_size, vocab, chunk = 512, 8, 1000, 32
    g = torch.Generator().manual_seed(25)
    hidden = torch.randn(tokens, hidden_size, generator=g, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, generator=g, requires_grad=True)
    ids, weights = make_targets((tokens,), vocab, 5, generator=g, dtype=torch.float32)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    with _LargestTensor() as fused_mode:
        L.sparse_kd_loss_from_hidden(hidden, weight, ids, weights, labels=labels, ce_weight=0.5, temperature=2.0,
                                     chunk_size=chunk).backward()
    with _LargestTensor() as unfused_mode:
        unfused(hidden, weight, ids, weights, labels=labels, ce_weight=0.5, temperature=2.0).backward()
    # Every intermediate is at most one chunk of logits (or a weight-sized gradient), far below tokens x vocab.
    assert fused_mode.largest <= max(chunk * vocab, vocab * hidden_size)
    assert unfused_mode.largest >= tokens * vocab  # the instrument does see a materialised logits tensor


def test_default_chunk_size_bounds_the_buffer():
    hidden = torch.zeros(10_000, 4)
    rows = fused._chunk_rows(None, 10_000, 128_256, hidden)
    assert rows * 128_256 * 4 <= fused.CHUNK_BYTES_CPU
    assert rows & (rows - 1) == 0 and rows >= 1
    assert fused._chunk_rows(None, 3, 100, hidden) == 3


# ----------------------------------------------------------------------------------------------------------------
# the Triton kernel under the interpreter (in a fresh process: TRITON_INTERPRET must be set before triton loads)


def test_triton_kernel_under_interpreter():
    """Runs tests/triton_interpret_loss_cases.py (Triton kernel vs PyTorch twin, fused Triton backend vs unfused)."""
    import triton  # noqa: F401  (a test dependency: fail, do not skip, when it is missing)

    cases = Path(__file__).with_name("triton_interpret_loss_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


# ----------------------------------------------------------------------------------------------------------------
# statistics: RS-KD labels give the full-KD gradient in expectation (Top-K does not)


def test_rs_kd_gradient_is_unbiased_and_converges():
    g = torch.Generator().manual_seed(40)
    rows, hidden_size, vocab, rounds = 24, 8, 60, 50
    hidden = torch.randn(rows, hidden_size, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64) * 0.3
    teacher = torch.softmax(torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 1.5, -1)

    def gradient(loss_fn):
        w = weight.clone().requires_grad_(True)
        loss_fn(hidden @ w.t()).backward()
        return w.grad.reshape(-1)

    full = gradient(lambda z: L.full_kd_loss(z, teacher))

    def rs_kd_targets():
        """One RS-KD label set: N draws with replacement per row, kept as (id, count) CSR, padded to [rows, N]."""
        draws = torch.multinomial(teacher, rounds, replacement=True, generator=g)
        counts = torch.zeros(rows, vocab, dtype=torch.int64).scatter_add_(1, draws, torch.ones_like(draws))
        row, ids = torch.nonzero(counts, as_tuple=True)
        indptr = torch.zeros(rows + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(row, minlength=rows), 0)
        return L.csr_to_padded(ids, counts[row, ids].to(torch.uint8), indptr, rounds=rounds, pad_to=rounds)

    draws = [rs_kd_targets() for _ in range(2000)]
    target_ids = torch.stack([ids for ids, _ in draws])
    target_weights = torch.stack([weights for _, weights in draws]).double()

    def loss_of_weight(w, ids, weights):
        return L.sparse_kd_loss(hidden @ w.t(), ids, weights, check_inputs=False)

    # One gradient of the student's weight per draw (vmap only batches the 2,000 independent backward passes).
    samples = torch.func.vmap(torch.func.grad(loss_of_weight), in_dims=(None, 0, 0))(weight, target_ids,
                                                                                     target_weights)
    samples = samples.reshape(len(draws), -1)
    errors = {}
    for m in (20, 200, 2000):
        mean = samples[:m].mean(0)
        spread = ((samples[:m] - mean) ** 2).sum(1).mean()  # E‖g - ḡ‖², the per-draw variance (trace)
        error = ((mean - full) ** 2).sum()
        # Unbiased: E‖ḡ_m - g_full‖² = tr(Σ)/m. Allow 3x; a bias b would add ‖b‖², which does not shrink with m.
        assert float(error) <= 3.0 * float(spread) / m, (m, float(error), float(spread) / m)
        errors[m] = math.sqrt(float(error)) / float(full.norm())
    assert errors[2000] < 0.03
    assert errors[2000] < errors[20] / 4  # ~1/sqrt(m): 10x expected from 20 to 2000

    # The same test has the power to reject a biased estimator: renormalised Top-12 stays far from full KD.
    probs, ids = teacher.topk(12, dim=-1)
    topk = gradient(lambda z: L.topk_kd_loss(z, ids, probs))
    assert float((topk - full).norm() / full.norm()) > 5 * errors[2000]


# ----------------------------------------------------------------------------------------------------------------
# the tools run (smoke tests: --quick, JSON into a temporary directory)


def _load_tool(name: str):
    path = Path(__file__).resolve().parent.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_loss_quick_runs(tmp_path):
    out = tmp_path / "bench_loss.json"
    payload = _load_tool("bench_loss").main(["--quick", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["config"]["quick"] is True and "machine" in written
    rows = {row["case"]: row for row in payload["results"]}
    assert set(rows) >= {"cross_entropy", "full_kd_dense", "sparse_kd_unfused", "sparse_kd_fused",
                         "sparse_kd_unfused_csr", "sparse_kd_fused_csr"}
    assert all(rows[c]["ms"] > 0 for c in rows)
    assert rows["sparse_kd_fused"]["loss"] == pytest.approx(rows["sparse_kd_unfused"]["loss"], rel=1e-5)
    for case in ("sparse_kd_unfused_csr", "sparse_kd_fused_csr"):  # the same targets, without the padding
        assert rows[case]["loss"] == pytest.approx(rows["sparse_kd_unfused"]["loss"], rel=1e-5)
    # The chunked path's largest tensor is a chunk; the unfused one materialises tokens x vocab.
    assert rows["sparse_kd_fused"]["largest_tensor_elems"] < rows["sparse_kd_unfused"]["largest_tensor_elems"]


@pytest.mark.slow
def test_gradient_fidelity_quick_runs(tmp_path):
    out = tmp_path / "gradient_fidelity.json"
    payload = _load_tool("gradient_fidelity").main(["--quick", "--out", str(out), "--cache-dir", str(tmp_path)])
    written = json.loads(out.read_text())
    methods = {row["method"] for row in written["results"]}
    assert {"Top-K 12", "Top-K 50", "Top-K 300", "RS-KD (N=50)"} <= methods
    for row in payload["results"]:
        assert 0.0 <= row["angle_deg"] <= 180.0 and row["norm_ratio"] > 0
    rs_kd = next(row for row in payload["results"] if row["method"] == "RS-KD (N=50)")
    assert 1.0 <= rs_kd["labels/pos"] <= 50.0
    assert set(written["targets"]) >= {"rs_kd_angle_within_5_deg", "topk_angles_decrease_with_k"}
