"""CUDA tests of sparselabels.loss: the compiled Triton kernel against its PyTorch twin, the fused loss against the
unfused float64 reference at realistic vocabulary sizes, both weight-gradient accumulation paths, the memory bound
of the fused path, and input checks on the device. Run on a lent GPU (``tools/gpu_check.sh loss``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparselabels.loss as L
from sparselabels.errors import InputError
from sparselabels.loss import fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")


def _targets(rows, vocab, k, pad, generator, device=CUDA):
    ids = torch.randint(0, vocab, (rows, k + pad), generator=generator)
    ids[:, k:] = 0
    weights = torch.rand(rows, k + pad, generator=generator) + 0.05
    weights[:, k:] = 0
    weights = weights / weights.sum(-1, keepdim=True)
    return ids.to(device), weights.to(device)


def _problem(rows, hidden_size, vocab, k, pad, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, hidden_size, generator=g, dtype=torch.float64) / hidden_size**0.25
    weight = torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64) / hidden_size**0.5
    ids, weights = _targets(rows, vocab, k, pad, g)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[::9] = -100
    labels[1] = ids[1, 0].cpu()
    mask = torch.rand(rows, generator=g) > 0.2
    return hidden.to(CUDA, dtype), weight.to(CUDA, dtype), ids, weights, labels.to(CUDA), mask.to(CUDA)


def _reference(hidden, weight, ids, weights, labels, mask, ce_weight, temperature):
    """Float64 materialised reference: sparse_kd_loss + F.cross_entropy, autograd gradients."""
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    logits = h @ w.t()
    loss = (1 - ce_weight) * L.sparse_kd_loss(logits, ids, weights, temperature=temperature, mask=mask)
    if ce_weight:
        valid = mask & (labels != -100)
        ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
        loss = loss + ce_weight * (ce * valid).sum() / valid.sum()
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _fused(hidden, weight, ids, weights, labels, mask, ce_weight, temperature, **kwargs):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    loss = L.sparse_kd_loss_from_hidden(
        h, w, ids, weights, labels=labels, ce_weight=ce_weight, temperature=temperature, mask=mask, **kwargs
    )
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("vocab", [1000, 128_256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_ce", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_triton_kernel_equals_torch_twin_on_cuda(vocab, dtype, with_ce, temperature):
    g = torch.Generator().manual_seed(1)
    rows = 64
    logits = (torch.randn(rows, vocab, generator=g) * 4).to(CUDA, dtype)
    ids, weights = _targets(rows, vocab, 12, 38, g)
    ids[3, 1] = ids[3, 0]  # duplicate id with positive weights
    labels = torch.randint(0, vocab, (rows,), generator=g).to(CUDA) if with_ce else None
    if with_ce:
        labels[2] = -100
        labels[4] = ids[4, 5]
        labels[5] = 0
    kd_coef = torch.rand(rows, generator=g).to(CUDA)
    ce_coef = torch.rand(rows, generator=g).to(CUDA) if with_ce else None
    from sparselabels.loss.triton_kernels import chunk_loss_and_grad_triton

    expected_grad, got_grad = logits.clone(), logits.clone()
    expected = fused.chunk_loss_and_grad_torch(expected_grad, ids, weights, labels, kd_coef, ce_coef,
                                               1 / temperature, -100, True)
    got = chunk_loss_and_grad_triton(got_grad, ids, weights, labels, kd_coef, ce_coef, 1 / temperature, -100, True)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-4)
    if with_ce:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-4)
    ulp = 4e-6 if dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=ulp, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("ce_weight", "temperature"), [(0.0, 1.0), (0.3, 1.0), (0.2, 2.0)])
def test_fused_triton_matches_float64_reference(dtype, ce_weight, temperature):
    hidden, weight, ids, weights, labels, mask = _problem(1024, 256, 32_000, 12, 20, 2, dtype)
    ref, ref_h, ref_w = _reference(hidden, weight, ids, weights, labels, mask, ce_weight, temperature)
    value, grad_h, grad_w = _fused(hidden, weight, ids, weights, labels, mask, ce_weight, temperature,
                                   chunk_size=384, backend="triton")
    assert grad_h.dtype == dtype and grad_w.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert abs(float(value) - float(ref)) <= tol * abs(float(ref)) + 1e-6
    assert _relative_error(grad_h, ref_h) < (1e-4 if dtype == torch.float32 else 2e-2)
    assert _relative_error(grad_w, ref_w) < (1e-4 if dtype == torch.float32 else 2e-2)


def test_fused_triton_equals_fused_torch_on_cuda():
    hidden, weight, ids, weights, labels, mask = _problem(2048, 128, 50_000, 12, 4, 3, torch.bfloat16)
    a = _fused(hidden, weight, ids, weights, labels, mask, 0.1, 1.0, chunk_size=512, backend="triton")
    b = _fused(hidden, weight, ids, weights, labels, mask, 0.1, 1.0, chunk_size=512, backend="torch")
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert _relative_error(a[1], b[1].double()) < 1e-2
    assert _relative_error(a[2], b[2].double()) < 1e-2


def test_both_weight_grad_accumulation_paths(monkeypatch):
    """The fp32 out_dtype addmm (when this torch has it) and the bf16-product fallback give the same gradient."""
    hidden, weight, ids, weights, labels, mask = _problem(1024, 128, 8_000, 12, 4, 4, torch.bfloat16)
    ref = _reference(hidden, weight, ids, weights, labels, mask, 0.0, 1.0)
    with_probe = _fused(hidden, weight, ids, weights, labels, mask, 0.0, 1.0, chunk_size=128)
    monkeypatch.setattr(fused, "fp32_accumulating_addmm_works", lambda device: False)
    fallback = _fused(hidden, weight, ids, weights, labels, mask, 0.0, 1.0, chunk_size=128)
    for got in (with_probe, fallback):
        assert _relative_error(got[2], ref[2]) < 2e-2
    print("weight-gradient accumulation here:", fused.weight_grad_accumulation(CUDA, torch.bfloat16))


def test_fused_peak_memory_is_far_below_materialised_logits():
    tokens, hidden_size, vocab, chunk = 8192, 512, 128_256, 1024
    hidden, weight, ids, weights, _, _ = _problem(tokens, hidden_size, vocab, 12, 4, 5, torch.bfloat16)
    h = hidden.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    L.sparse_kd_loss_from_hidden(h, w, ids, weights, chunk_size=chunk).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    logits_bytes = tokens * vocab * 2
    # One bf16 chunk of logits, the float32 weight-gradient accumulator, its scaled float32 and bf16 copies in
    # backward, grad_hidden twice, and slack for per-row vectors and cuBLAS workspaces.
    budget = chunk * vocab * 2 + vocab * hidden_size * (4 + 4 + 2) + tokens * hidden_size * 2 * 2 + (64 << 20)
    assert extra < logits_bytes / 2, (extra, logits_bytes)
    assert extra <= budget, (extra, budget)


def test_sparse_kd_loss_on_cuda_bf16_matches_cpu_float64():
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(4, 64, 32_000, generator=g) * 3).to(torch.bfloat16)
    ids, weights = _targets(256, 32_000, 12, 4, g, device="cpu")
    ids, weights = ids.reshape(4, 64, 16), weights.reshape(4, 64, 16)
    expected = L.sparse_kd_loss(logits.double(), ids, weights.double(), temperature=1.5)
    got = L.sparse_kd_loss(logits.to(CUDA), ids.to(CUDA), weights.to(CUDA), temperature=1.5)
    assert abs(float(got) - float(expected)) < 1e-4 * abs(float(expected))


def test_out_of_range_ids_raise_input_error_on_cuda():
    hidden, weight, ids, weights, _, _ = _problem(64, 32, 1000, 4, 2, 7, torch.bfloat16)
    bad = ids.clone()
    bad[5, 2] = 1000
    with pytest.raises(InputError, match=r"position 5, slot 2: id 1000"):
        L.sparse_kd_loss_from_hidden(hidden, weight, bad, weights)
    with pytest.raises(InputError, match=r"position 5, slot 2: id 1000"):
        L.sparse_kd_loss(hidden @ weight.t(), bad, weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["counts", "probs"])
def test_csr_targets_on_cuda_equal_the_padded_path(dtype, kind):
    """SparseTargets moved to the GPU: both losses (the fused one through the compiled Triton kernel) give the
    padded path's values and gradients; to_padded() on the GPU equals the CPU one."""
    from csr_targets import random_targets

    g = torch.Generator().manual_seed(50)
    leading, hidden_size, vocab = (4, 33), 64, 5003
    cpu_targets = random_targets(leading, vocab, g, kind=kind, max_labels=40)
    targets = cpu_targets.to(CUDA)
    ids, weights = targets.to_padded()
    cpu_ids, cpu_weights = cpu_targets.to_padded()
    assert torch.equal(ids.cpu(), cpu_ids) and torch.equal(weights.cpu(), cpu_weights)
    hidden = (torch.randn(*leading, hidden_size, generator=g) / 3).to(CUDA, dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / 8).to(CUDA, dtype)
    labels = torch.randint(0, vocab, leading, generator=g).to(CUDA)
    mask = (torch.rand(*leading, generator=g) > 0.2).to(CUDA)
    results = []
    for extra in ((ids, weights), (targets,)):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        value = L.sparse_kd_loss_from_hidden(h, w, *extra, labels=labels, ce_weight=0.2, mask=mask, chunk_size=37,
                                             backend="triton")
        value.backward()
        plain = L.sparse_kd_loss((hidden @ weight.t()).float(), *extra, mask=mask)
        results.append((value.detach(), h.grad.float(), w.grad.float(), plain))
    (ref, rh, rw, rp), (got, gh, gw, gp) = results
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gp, rp, rtol=1e-5, atol=1e-6)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gh, rh, rtol=tol, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=tol, atol=1e-6)
