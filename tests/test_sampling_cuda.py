"""The Triton sampler on a GPU at full size: R = 8,192 rows, V up to 262,144, bfloat16 and float32.

- the kernel against the float64 reference on the same uniforms, draw by draw: every draw that differs must be a
  float near-tie (the uniform lies within 1e-6 of the row's mass of the kernel's interval under the exact CDF);
- chi-square of pooled counts against the softmax, with a negative control; the tail test (1e-3 of the mass over
  262,136 ids); temperature and ``vocab_size`` padding; documented dtypes and invariants;
- errors naming the row, determinism, and independence of a row's draws from the rest of the batch.

Skipped without CUDA. Run on a lent GPU by ``tools/gpu_check.sh sampler``. The same tests can be dry-run on CPU
through the interpreter at small sizes, to check the tests themselves:
``SAMPLER_CUDA_TESTS_ON_CPU=1 TRITON_INTERPRET=1 python -m pytest -q tests/test_sampling_cuda.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

DRY_RUN = os.environ.get("SAMPLER_CUDA_TESTS_ON_CPU") == "1" and os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or DRY_RUN), reason="needs CUDA")

if DRY_RUN:  # small sizes; the negative control needs a bigger error to be rejected with 800 draws
    DEVICE, ROWS, VOCABS, WIDE, WRONG_TEMPERATURE = "cpu", 16, (3000, 5003), 4000, 1.6
else:
    DEVICE, ROWS, VOCABS, WIDE, WRONG_TEMPERATURE = "cuda", 8192, (32000, 128256, 262144), 128256, 1.05
ROUNDS = 50
P_MIN = 1e-3
NEAR_TIE = 1e-6  # of the row's total mass: float32 sub-tile sums and exp2 are good to a few 1e-7


def _imports():
    from sparselabels.sampling import checks, reference, testing, triton_kernel

    return checks, reference, testing, triton_kernel


def _repeated(row: torch.Tensor, rows: int) -> torch.Tensor:
    return row.unsqueeze(0).expand(rows, -1).contiguous()


def _near_tie_violations(x, request, got, mismatch, temperature=1.0):
    """Mismatched draws whose uniform is NOT within NEAR_TIE of the kernel's interval under the exact CDF."""
    from sparselabels.sampling.rng import sorted_uniforms

    rows, cols = torch.nonzero(mismatch, as_tuple=True)
    bad = []
    u = sorted_uniforms(request.seed, request.row_ids[rows], ROUNDS)
    u = u[torch.arange(rows.numel(), device=rows.device), cols]
    for r in torch.unique(rows).tolist():
        scaled = x[r, : request.rows.vocab_size].double() / temperature
        cdf = torch.cumsum(torch.exp(scaled - scaled.max()), 0)
        total = float(cdf[-1])
        for i in torch.nonzero(rows == r)[:, 0].tolist():
            picked = int(got[r, cols[i]])
            lo = float(cdf[picked - 1]) if picked > 0 else 0.0
            hi = float(cdf[picked])
            target = float(u[i]) * total
            if not (lo - NEAR_TIE * total <= target <= hi + NEAR_TIE * total):
                bad.append((r, int(cols[i]), picked, (target - lo) / total, (hi - target) / total))
    return bad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("vocab", VOCABS)
def test_kernel_agrees_with_float64_reference_draw_by_draw(vocab, dtype):
    checks, reference, testing, triton_kernel = _imports()
    x = testing.zipf_logits(ROWS, vocab, seed=vocab, device=DEVICE, dtype=dtype)
    labels = triton_kernel.sample_counts_triton(x, ROUNDS, seed=1234)
    assert labels.ids.device == x.device and labels.indptr.device == x.device
    assert testing.label_problems(labels, ROUNDS, vocab) == []
    request = checks.prepare_sampling(x, ROUNDS, 1.0, None, 1234, None)
    want = reference.draw_ids_reference(request)
    got = testing.expand_draws(labels, ROUNDS)
    mismatch = got != want
    rate = float(mismatch.double().mean())
    print(f"V={vocab} {dtype}: {int(mismatch.sum())} of {mismatch.numel()} draws differ ({rate:.2e})")
    assert rate <= 1e-2
    assert _near_tie_violations(x, request, got, mismatch) == []


def test_pooled_counts_match_softmax_at_full_size():
    _, _, testing, triton_kernel = _imports()
    row = testing.zipf_logits(1, WIDE, seed=5, device=DEVICE, dtype=torch.bfloat16)[0]
    labels = triton_kernel.sample_counts_triton(_repeated(row, ROWS), ROUNDS, seed=6)
    observed = testing.pooled_counts(labels.ids, labels.counts, WIDE)
    exact = torch.softmax(row.double(), -1)
    result = testing.chi_square(observed, exact)
    print(f"chi-square {result}")
    assert result.pvalue > P_MIN
    assert testing.chi_square(observed, torch.softmax(row.double() / WRONG_TEMPERATURE, -1)).pvalue < 1e-6


def test_tail_mass_over_262k_ids_is_sampled_at_its_rate():
    _, _, testing, triton_kernel = _imports()
    vocab, head, tail_mass = max(VOCABS), 8, 1e-3
    tail = vocab - head
    probs = torch.cat([torch.full((head,), (1 - tail_mass) / head), torch.full((tail,), tail_mass / tail)]).double()
    row = torch.log(probs).float().to(DEVICE)
    labels = triton_kernel.sample_counts_triton(_repeated(row, ROWS), ROUNDS, seed=7)
    observed = testing.pooled_counts(labels.ids, labels.counts, vocab).cpu()
    n = ROWS * ROUNDS
    exact = torch.softmax(row.double().cpu(), -1)  # of the float32 logits actually sampled
    expected_tail = n * float(exact[head:].sum())
    sd = math.sqrt(expected_tail * (1 - tail_mass))
    tail_draws = float(observed[head:].sum())
    print(f"tail draws {tail_draws:.0f}, expected {expected_tail:.1f} +- {sd:.1f}")
    assert abs(tail_draws - expected_tail) < 4 * sd + 1
    assert testing.chi_square(observed, exact).pvalue > P_MIN


def test_temperature_and_padded_vocabulary_at_full_size():
    _, _, testing, triton_kernel = _imports()
    width = WIDE
    vocab = width - 256
    row = testing.zipf_logits(1, width, seed=8, device=DEVICE, dtype=torch.bfloat16)[0]
    row[vocab:] = 1e4  # padding that would take every draw if it were read
    labels = triton_kernel.sample_counts_triton(_repeated(row, ROWS), ROUNDS, seed=9, temperature=0.8, vocab_size=vocab)
    assert testing.label_problems(labels, ROUNDS, vocab) == []
    observed = testing.pooled_counts(labels.ids, labels.counts, vocab)
    valid = row[:vocab].double()
    assert testing.chi_square(observed, torch.softmax(valid / 0.8, -1)).pvalue > P_MIN
    assert testing.chi_square(observed, torch.softmax(valid, -1)).pvalue < 1e-6


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter (dry run) warns on the NaN rows
def test_errors_name_the_row_at_full_size():
    from sparselabels.errors import InputError

    _, _, testing, triton_kernel = _imports()
    vocab = VOCABS[0]
    x = testing.zipf_logits(ROWS, vocab, seed=10, device=DEVICE, dtype=torch.bfloat16)
    cases = [
        ((ROWS * 5 // 8, vocab // 3), float("nan"), f"logits row {ROWS * 5 // 8} has NaN at column {vocab // 3}"),
        ((ROWS - 1, vocab - 1), float("inf"), f"logits row {ROWS - 1} has +inf at column {vocab - 1}"),
    ]
    for (r, c), value, message in cases:
        y = x.clone()
        y[r, c] = value
        with pytest.raises(InputError, match=message.replace("+", r"\+")):
            triton_kernel.sample_counts_triton(y, ROUNDS, seed=1)
    y = x.clone()
    y[7] = float("-inf")
    with pytest.raises(InputError, match="logits row 7 has no finite logit"):
        triton_kernel.sample_counts_triton(y, ROUNDS, seed=1)
    nested = x.reshape(4, ROWS // 4, vocab).clone()
    nested[2, 3, 5] = float("nan")
    row = 2 * (ROWS // 4) + 3
    with pytest.raises(InputError, match=rf"logits row {row} \(index \(2, 3\)\) has NaN at column 5"):
        triton_kernel.sample_counts_triton(nested, ROUNDS, seed=1)


def test_determinism_and_row_identity_at_full_size():
    _, _, testing, triton_kernel = _imports()
    x = testing.zipf_logits(ROWS, WIDE, seed=11, device=DEVICE, dtype=torch.bfloat16)
    a = triton_kernel.sample_counts_triton(x, ROUNDS, seed=12)
    b = triton_kernel.sample_counts_triton(x, ROUNDS, seed=12)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.counts, b.counts) and torch.equal(a.indptr, b.indptr)
    c = triton_kernel.sample_counts_triton(x, ROUNDS, seed=13)
    assert not torch.equal(expand(a), expand(c))
    subset = torch.arange(3, ROWS, 7, device=DEVICE)
    part = triton_kernel.sample_counts_triton(x[subset], ROUNDS, seed=12, row_ids=subset)
    assert torch.equal(expand(part), expand(a)[subset])


def expand(labels):
    from sparselabels.sampling.testing import expand_draws

    return expand_draws(labels, ROUNDS)


@pytest.mark.skipif(DRY_RUN, reason="the dispatch picks the kernel only for CUDA tensors")
def test_auto_backend_uses_the_kernel_on_cuda():
    import sparselabels as sl

    _, _, testing, triton_kernel = _imports()
    x = testing.zipf_logits(64, WIDE, seed=14, device=DEVICE, dtype=torch.bfloat16)
    auto = sl.sample_counts(x, ROUNDS, seed=15)
    kernel = triton_kernel.sample_counts_triton(x, ROUNDS, seed=15)
    assert torch.equal(auto.ids, kernel.ids) and torch.equal(auto.counts, kernel.counts)
    assert auto.ids.is_cuda


def test_topk_on_the_device_matches_cpu():
    from sparselabels.sampling import topk_labels

    _, _, testing, _ = _imports()
    x = testing.zipf_logits(32, WIDE, seed=16, device=DEVICE, dtype=torch.bfloat16)
    on_device = topk_labels(x, 12)
    on_cpu = topk_labels(x.cpu(), 12)
    assert on_device.ids.device == x.device
    assert torch.equal(on_device.ids.cpu(), on_cpu.ids) and torch.equal(on_device.indptr.cpu(), on_cpu.indptr)
    torch.testing.assert_close(on_device.probs.cpu().float(), on_cpu.probs.float(), rtol=2e-3, atol=1e-7)
