"""Triton kernel of the fused sparse KD loss under TRITON_INTERPRET=1, against its PyTorch twin.

Not collected by the main suite (no ``test_`` prefix): ``tests/test_loss.py::test_triton_kernel_under_interpreter``
runs this file in a fresh process, because TRITON_INTERPRET is read when triton's kernels are decorated. It can be
run by hand: ``TRITON_INTERPRET=1 python -m pytest -q tests/triton_interpret_loss_cases.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn.functional as F
import triton

import sparselabels.loss as L
from sparselabels.loss import fused
from sparselabels.loss.triton_kernels import chunk_loss_and_grad_triton


def test_running_under_the_interpreter():
    assert triton.knobs.runtime.interpret, "TRITON_INTERPRET=1 must be set before triton is imported"


def _targets(rows, vocab, k, pad, generator):
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(rows)])
    weights = torch.rand(rows, k, generator=generator) + 0.05
    weights = weights / weights.sum(-1, keepdim=True)
    ids = torch.cat([ids, torch.zeros(rows, pad, dtype=torch.int64)], 1)
    weights = torch.cat([weights, torch.zeros(rows, pad)], 1)
    return ids, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("with_ce", [False, True])
def test_chunk_kernel_equals_torch_twin(dtype, temperature, with_ce):
    g = torch.Generator().manual_seed(30)
    rows, vocab = 6, 200
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    ids, weights = _targets(rows, vocab, 5, 2, g)
    ids[1, 1] = ids[1, 0]  # a duplicate id with positive weights: both slots must store the same full gradient
    labels = None
    if with_ce:
        labels = torch.randint(0, vocab, (rows,), generator=g)
        labels[2] = -100
        labels[3] = ids[3, 2]  # label is also a target
        labels[4] = 0  # label is the padding id
    kd_coef = torch.rand(rows, generator=g)
    kd_coef[5] = 0.0
    ce_coef = torch.rand(rows, generator=g) if with_ce else None
    expected_grad, got_grad = logits.clone(), logits.clone()
    expected = fused.chunk_loss_and_grad_torch(
        expected_grad, ids, weights, labels, kd_coef, ce_coef, 1 / temperature, -100, True
    )
    got = chunk_loss_and_grad_triton(got_grad, ids, weights, labels, kd_coef, ce_coef, 1 / temperature, -100, True)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    if with_ce:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    else:
        assert got[1] is None
    # Both round each element once from float32: equal up to one unit in the last place of the logits' dtype.
    ulp = 2e-6 if dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=ulp, atol=1e-6)
    # Without gradients the logits are left untouched.
    untouched = logits.clone()
    chunk_loss_and_grad_triton(untouched, ids, weights, labels, kd_coef, ce_coef, 1 / temperature, -100, False)
    assert torch.equal(untouched, logits)


def test_chunk_kernel_int32_ids_and_large_k():
    g = torch.Generator().manual_seed(31)
    rows, vocab = 3, 150
    logits = torch.randn(rows, vocab, generator=g)
    ids, weights = _targets(rows, vocab, 40, 3, g)  # K = 43: BLOCK_K 64
    expected_grad, got_grad = logits.clone(), logits.clone()
    coef = torch.full((rows,), 0.5)
    expected = fused.chunk_loss_and_grad_torch(expected_grad, ids, weights, None, coef, None, 1.0, -100, True)
    got = chunk_loss_and_grad_triton(got_grad, ids.to(torch.int32), weights, None, coef, None, 1.0, -100, True)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=2e-6, atol=1e-7)


def test_fused_triton_backend_equals_unfused():
    g = torch.Generator().manual_seed(32)
    leading, hidden_size, vocab = (2, 9), 16, 90
    hidden = torch.randn(*leading, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    ids, weights = _targets(18, vocab, 6, 2, g)
    ids, weights = ids.reshape(*leading, 8), weights.reshape(*leading, 8)
    labels = torch.randint(0, vocab, leading, generator=g)
    labels[0, 3] = -100
    mask = torch.rand(*leading, generator=g) > 0.25

    def reference(h, w):
        logits = h @ w.t()
        kd = L.sparse_kd_loss(logits, ids, weights, temperature=1.5, mask=mask)
        valid = mask & (labels != -100)
        ce = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100, reduction="none")
        ce = (ce * valid.reshape(-1)).sum() / valid.sum()
        return 0.6 * kd + 0.4 * ce

    def ours(h, w):
        return L.sparse_kd_loss_from_hidden(
            h, w, ids, weights, labels=labels, ce_weight=0.4, temperature=1.5, mask=mask, chunk_size=7,
            backend="triton",
        )

    results = []
    for fn in (reference, ours):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        value = fn(h, w)
        value.backward()
        results.append((value.detach(), h.grad, w.grad))
    (ref, rh, rw), (value, fh, fw) = results
    torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fh, rh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fw, rw, rtol=1e-4, atol=1e-6)


def test_chunk_kernel_minus_inf_at_the_padding_id():
    """Weight-0 padding slots at id 0 whose logit is -inf add exactly 0, in the kernel as in its twin."""
    g = torch.Generator().manual_seed(31)
    rows, vocab = 4, 64
    logits = torch.randn(rows, vocab, generator=g)
    ids, weights = _targets(rows, vocab, 5, 2, g)
    ids[:, :5] = ids[:, :5].clamp(min=1)
    logits[:, 0] = -float("inf")
    kd_coef = torch.ones(rows)
    expected_grad, got_grad = logits.clone(), logits.clone()
    expected = fused.chunk_loss_and_grad_torch(expected_grad, ids, weights, None, kd_coef, None, 1.0, -100, True)
    got = chunk_loss_and_grad_triton(got_grad, ids, weights, None, kd_coef, None, 1.0, -100, True)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got_grad).all()
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_chunk_kernel_keeps_nan_weights_nan():
    """With checks off a NaN weight reaches the kernel: its row's loss is NaN, as in the twin (not hidden)."""
    logits = torch.randn(2, 32)
    ids = torch.tensor([[1, 2], [3, 4]])
    weights = torch.tensor([[0.5, float("nan")], [0.5, 0.5]])
    kd_coef = torch.ones(2)
    expected = fused.chunk_loss_and_grad_torch(logits.clone(), ids, weights, None, kd_coef, None, 1.0, -100, False)
    got = chunk_loss_and_grad_triton(logits.clone(), ids, weights, None, kd_coef, None, 1.0, -100, False)
    assert torch.isnan(expected[0][0]) and torch.isnan(got[0][0])
    torch.testing.assert_close(got[0][1], expected[0][1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ CSR targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("with_ce", [False, True])
def test_chunk_kernel_reads_csr_targets_like_its_twin(dtype, temperature, with_ce):
    """Rows with 0..7 labels (one with a duplicate id), offsets of a chunk that does not start at label 0."""
    g = torch.Generator().manual_seed(40)
    rows, vocab = 7, 120
    counts = [3, 0, 7, 1, 0, 4, 2]
    ids = torch.cat([torch.randperm(vocab, generator=g)[:k] for k in [5, *counts]]).to(torch.int32)
    ids[9] = ids[8]  # row 2 (labels 8..14): a duplicate id
    weights = torch.rand(ids.shape[0], generator=g) / 4
    offsets = torch.tensor([0, 5, *torch.tensor(counts).cumsum(0).add(5).tolist()])[1:]  # this chunk starts at 5
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    labels = None
    if with_ce:
        labels = torch.randint(0, vocab, (rows,), generator=g)
        labels[1] = -100
        labels[0] = int(ids[5 + 1])  # the label is also a target
    kd_coef = torch.rand(rows, generator=g)
    kd_coef[4] = 0.0
    ce_coef = torch.rand(rows, generator=g) if with_ce else None
    expected_grad, got_grad = logits.clone(), logits.clone()
    args = (ids, weights, labels, kd_coef, ce_coef, 1 / temperature, -100, True)
    expected = fused.chunk_loss_and_grad_torch(expected_grad, *args, offsets=offsets, width=7)
    got = chunk_loss_and_grad_triton(got_grad, *args, offsets=offsets, width=7)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    if with_ce:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    ulp = 2e-6 if dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=ulp, atol=1e-6)
    # the same rows padded to K give the same losses and gradients
    padded_ids = torch.zeros(rows, 7, dtype=torch.int32)
    padded_w = torch.zeros(rows, 7)
    for r in range(rows):
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        padded_ids[r, : hi - lo] = ids[lo:hi]
        padded_w[r, : hi - lo] = weights[lo:hi]
    padded_grad = logits.clone()
    padded = chunk_loss_and_grad_triton(padded_grad, padded_ids, padded_w, *args[2:])
    torch.testing.assert_close(got[0], padded[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad.float(), padded_grad.float(), rtol=ulp, atol=1e-6)


@pytest.mark.parametrize("kind", ["counts", "probs"])
def test_fused_triton_backend_takes_sparse_targets(kind):
    from csr_targets import random_targets

    g = torch.Generator().manual_seed(41)
    leading, hidden_size, vocab = (3, 6), 16, 90
    targets = random_targets(leading, vocab, g, kind=kind)
    ids, weights = targets.to_padded()
    hidden = torch.randn(*leading, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    labels = torch.randint(0, vocab, leading, generator=g)
    mask = torch.rand(*leading, generator=g) > 0.25
    results = []
    for padded in (True, False):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        extra = (ids, weights) if padded else (targets,)
        value = L.sparse_kd_loss_from_hidden(h, w, *extra, labels=labels, ce_weight=0.3, temperature=1.3,
                                             mask=mask, chunk_size=5, backend="triton")
        value.backward()
        results.append((value.detach(), h.grad, w.grad))
    (ref, rh, rw), (value, fh, fw) = results
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fh, rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fw, rw, rtol=1e-5, atol=1e-6)
