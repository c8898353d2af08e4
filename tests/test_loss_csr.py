"""The losses on SparseTargets (CSR) against the same targets padded: values and gradients, float64 and float32."""

from __future__ import annotations

import pytest
import torch
from csr_targets import random_targets

import sparselabels.loss as L
from sparselabels.data import SparseTargets
from sparselabels.errors import InputError

VOCAB = 60


def _grads(fn, *tensors):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    value.backward() if value.dim() == 0 else value.sum().backward()
    return value.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("kind", ["counts", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sparse_kd_loss_on_csr_equals_padded(kind, reduction, temperature):
    g = torch.Generator().manual_seed(7)
    targets = random_targets((3, 7), VOCAB, g, kind=kind)
    ids, weights = targets.to_padded()
    mask = torch.rand(3, 7, generator=g) > 0.3
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        logits = torch.randn(3, 7, VOCAB, generator=g, dtype=dtype) * 2
        kwargs = {"temperature": temperature, "mask": mask, "reduction": reduction}
        csr, (csr_grad,) = _grads(lambda z, kwargs=kwargs: L.sparse_kd_loss(z, targets, **kwargs), logits)
        padded, (padded_grad,) = _grads(lambda z, kwargs=kwargs: L.sparse_kd_loss(z, ids, weights, **kwargs), logits)
        assert csr.dtype == dtype and csr.shape == padded.shape
        torch.testing.assert_close(csr, padded, rtol=tol, atol=tol)
        torch.testing.assert_close(csr_grad, padded_grad, rtol=tol, atol=tol)


def test_csr_loss_equals_a_float64_dense_reference():
    """KL(t || softmax(z)) written out densely, position by position."""
    g = torch.Generator().manual_seed(8)
    targets = random_targets((2, 5), VOCAB, g)
    logits = torch.randn(2, 5, VOCAB, generator=g, dtype=torch.float64)
    got = L.sparse_kd_loss(logits, targets, reduction="none")
    log_p = torch.log_softmax(logits, -1).reshape(10, VOCAB)
    weights = targets.weights(torch.float64)
    expected = torch.zeros(10, dtype=torch.float64)
    for p in range(10):
        lo, hi = int(targets.offsets[p]), int(targets.offsets[p + 1])
        for j in range(lo, hi):
            w = weights[j]
            expected[p] += w * (torch.log(w) - log_p[p, int(targets.ids[j])])
    torch.testing.assert_close(got.reshape(10), expected, rtol=1e-12, atol=1e-12)


def test_weights_are_count_over_rounds_bit_for_bit():
    counts = torch.arange(256, dtype=torch.uint8)
    targets = SparseTargets(torch.tensor([0, 256]), torch.arange(256, dtype=torch.int32), counts=counts, rounds=137,
                            shape=(1,))
    assert torch.equal(targets.weights(), torch.arange(256, dtype=torch.float32) / torch.tensor(137.0))


@pytest.mark.parametrize("kind", ["counts", "probs"])
@pytest.mark.parametrize(("ce_weight", "use_mask", "chunk_size"), [(0.0, False, 4), (0.3, True, 5), (0.5, True, 64)])
def test_fused_loss_on_csr_equals_padded(kind, ce_weight, use_mask, chunk_size):
    g = torch.Generator().manual_seed(9)
    leading, hidden_size = (3, 6), 12
    targets = random_targets(leading, VOCAB, g, kind=kind)
    ids, weights = targets.to_padded()
    labels = torch.randint(0, VOCAB, leading, generator=g)
    labels[0, 2] = -100
    mask = torch.rand(*leading, generator=g) > 0.3 if use_mask else None
    hidden = torch.randn(*leading, hidden_size, generator=g, dtype=torch.float64)
    weight = torch.randn(VOCAB, hidden_size, generator=g, dtype=torch.float64) * 0.5
    kwargs = {"labels": labels, "ce_weight": ce_weight, "temperature": 1.4, "mask": mask, "chunk_size": chunk_size,
              "backend": "torch"}
    csr, csr_grads = _grads(lambda h, w: L.sparse_kd_loss_from_hidden(h, w, targets, **kwargs), hidden, weight)
    padded, padded_grads = _grads(lambda h, w: L.sparse_kd_loss_from_hidden(h, w, ids, weights, **kwargs),
                                  hidden, weight)
    torch.testing.assert_close(csr, padded, rtol=1e-12, atol=1e-12)
    for a, b in zip(csr_grads, padded_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # float32, and reduction="none" without gradients
    h32, w32 = hidden.float(), weight.float()
    with torch.no_grad():
        rows = L.sparse_kd_loss_from_hidden(h32, w32, targets, reduction="none", chunk_size=chunk_size)
        rows_padded = L.sparse_kd_loss_from_hidden(h32, w32, ids, weights, reduction="none", chunk_size=chunk_size)
    torch.testing.assert_close(rows, rows_padded, rtol=1e-5, atol=1e-6)


def test_csr_without_labels_anywhere():
    """A batch of empty positions only: loss 0, gradient 0, in both losses."""
    targets = SparseTargets(torch.zeros(7, dtype=torch.int64), torch.zeros(0, dtype=torch.int32),
                            counts=torch.zeros(0, dtype=torch.uint8), rounds=50, shape=(2, 3))
    value, (grad,) = _grads(lambda z: L.sparse_kd_loss(z, targets), torch.randn(2, 3, VOCAB))
    assert value == 0 and torch.equal(grad, torch.zeros_like(grad))
    value, grads = _grads(lambda h, w: L.sparse_kd_loss_from_hidden(h, w, targets), torch.randn(2, 3, 8),
                          torch.randn(VOCAB, 8))
    assert value == 0 and all(torch.equal(x, torch.zeros_like(x)) for x in grads)


def _bad_targets(kind: str) -> SparseTargets:
    ids = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    counts = torch.tensor([20, 30, 25, 25], dtype=torch.uint8)
    if kind == "decreasing":
        return SparseTargets(torch.tensor([0, 2, 1, 4]), ids, counts=counts, rounds=50, shape=(1, 3), width=2)
    if kind == "overrun":
        return SparseTargets(torch.tensor([0, 2, 2, 6]), ids, counts=counts, rounds=50, shape=(1, 3), width=4)
    if kind == "vocab":
        return SparseTargets(torch.tensor([0, 2, 2, 4]), ids * 20, counts=counts, rounds=50, shape=(1, 3))
    return SparseTargets(torch.tensor([0, 2, 2, 4]), ids, counts=counts, rounds=50, shape=(3, 1))


@pytest.mark.parametrize(("kind", "message"), [
    ("decreasing", r"offsets decrease at position \(0, 1\): 2 -> 1"),
    ("overrun", "offsets end at 6 but there are 4 labels"),
    ("vocab", r"label 2 \(position \(0, 2\)\): id 60 is outside the vocabulary \[0, 60\)"),
    ("shape", r"SparseTargets of shape \[3, 1\] does not match"),
])
def test_bad_sparse_targets_raise_input_error_in_both_losses(kind, message):
    targets = _bad_targets(kind)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss(torch.randn(1, 3, VOCAB), targets)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss_from_hidden(torch.randn(1, 3, 8), torch.randn(VOCAB, 8), targets)


def test_a_width_below_the_widest_position_is_refused():
    """``width`` sizes the Triton kernel's label block: one below the widest position would drop that position's
    labels past the block, a wrong loss without an error."""
    offsets = torch.tensor([0, 20, 22])
    ids = torch.cat([torch.arange(20), torch.tensor([3, 4])]).to(torch.int32)
    targets = SparseTargets(offsets, ids, probs=torch.full((22,), 0.04), shape=(1, 2), width=2)
    message = r"width is 2 but position \(0, 0\) holds 20 labels"
    with pytest.raises(InputError, match=message):
        targets.check(VOCAB)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss(torch.randn(1, 2, VOCAB), targets)
    with pytest.raises(InputError, match=message):
        L.sparse_kd_loss_from_hidden(torch.randn(1, 2, 8), torch.randn(VOCAB, 8), targets)


def test_sparse_targets_are_passed_alone():
    targets = _bad_targets("shape")
    with pytest.raises(InputError, match="without target_weights"):
        L.sparse_kd_loss(torch.randn(3, 1, VOCAB), targets, torch.ones(3, 1, 2))
    with pytest.raises(InputError, match="target_weights is missing"):
        L.sparse_kd_loss(torch.randn(3, 1, VOCAB), torch.zeros(3, 1, 2, dtype=torch.int64))


def test_sliced_logits_and_one_position():
    """Non-contiguous logits (a slice of positions) and a single position of shape ()."""
    g = torch.Generator().manual_seed(10)
    targets = random_targets((2, 4), VOCAB, g)
    ids, weights = targets.to_padded()
    logits = torch.randn(2, 5, VOCAB, generator=g, dtype=torch.float64)[:, 1:]
    assert not logits.is_contiguous()
    torch.testing.assert_close(L.sparse_kd_loss(logits, targets, reduction="none"),
                               L.sparse_kd_loss(logits, ids, weights, reduction="none"), rtol=1e-12, atol=1e-12)
    one = SparseTargets(torch.tensor([0, 2]), torch.tensor([3, 9], dtype=torch.int32),
                        probs=torch.tensor([0.25, 0.75]), shape=())
    z = torch.randn(VOCAB, generator=g, dtype=torch.float64)
    one_ids, one_weights = one.to_padded()
    assert one_ids.shape == (2,)
    torch.testing.assert_close(L.sparse_kd_loss(z, one), L.sparse_kd_loss(z, one_ids, one_weights))
