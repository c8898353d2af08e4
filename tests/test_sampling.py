"""The samplers on CPU: the PyTorch reference (statistics, exactness rules, invariants, errors), the public
dispatch, the Philox stream, the label containers and ``topk_labels``.

Statistical tests run at fixed seeds, so they are deterministic; each has a negative control showing that the
same test rejects a wrong distribution. The Triton kernel is tested against this reference in
``test_sampling_triton.py`` (interpreter) and ``test_sampling_cuda.py`` (GPU).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sparselabels as sl
import sparselabels.sampling as sampling
from sparselabels.errors import InputError
from sparselabels.sampling import SampledLabels, TopKLabels, sample_counts, topk_labels
from sparselabels.sampling.checks import prepare_sampling
from sparselabels.sampling.reference import _inverse_cdf, draw_ids_reference, sample_counts_reference
from sparselabels.sampling.rng import philox4x32_10, sorted_uniforms
from sparselabels.sampling.testing import chi_square, label_problems, pooled_counts, zipf_logits

P_MIN = 1e-3  # a correct sampler fails a fixed-seed test at this level one time in a thousand seeds


def assert_label_invariants(labels: SampledLabels, num_rows: int, rounds: int, vocab: int) -> None:
    assert labels.ids.dtype == torch.int32
    assert labels.counts.dtype == torch.uint8
    assert labels.indptr.dtype == torch.int64
    assert labels.indptr.shape == (num_rows + 1,)
    assert int(labels.indptr[0]) == 0
    assert int(labels.indptr[-1]) == labels.ids.numel() == labels.counts.numel()
    indptr = labels.indptr.cpu().tolist()
    ids = labels.ids.cpu().to(torch.int64)
    counts = labels.counts.cpu().to(torch.int64)
    assert bool((ids >= 0).all()) and bool((ids < vocab).all())
    assert bool((counts >= 1).all())
    for r in range(num_rows):
        row_ids = ids[indptr[r] : indptr[r + 1]]
        assert row_ids.numel() >= 1
        assert bool((row_ids[1:] > row_ids[:-1]).all()), f"row {r}: ids not strictly ascending"
        assert int(counts[indptr[r] : indptr[r + 1]].sum()) == rounds, f"row {r}: counts do not sum to rounds"
    assert label_problems(labels, rounds, vocab) == []


def repeated_row(logits_row: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The same distribution in every row: rows have distinct row ids, so their draws are independent."""
    return logits_row.unsqueeze(0).expand(num_rows, -1).contiguous()


def softmax_probs(logits_row: torch.Tensor, temperature: float = 1.0, vocab: int | None = None) -> torch.Tensor:
    x = logits_row.to(torch.float64)[: vocab or logits_row.shape[-1]] / temperature
    return torch.softmax(x, -1)


# ---------------------------------------------------------------------------------------------------------------
# Philox stream


def test_philox_matches_random123_known_answers():
    vectors = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in vectors:
        out = philox4x32_10(tuple(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in out) == expected


def test_sorted_uniforms_are_sorted_53_bit_and_depend_only_on_seed_and_row_id():
    ids = torch.tensor([0, 1, 2**40 + 3, 7])
    u = sorted_uniforms(123, ids, 51)
    assert u.dtype == torch.float64 and u.shape == (4, 51)
    assert bool((u >= 0).all()) and bool((u < 1).all())
    assert bool((u[:, 1:] >= u[:, :-1]).all())
    assert torch.equal(u * 2.0**53, torch.floor(u * 2.0**53))  # exactly k / 2^53
    alone = sorted_uniforms(123, ids[2:3], 51)
    assert torch.equal(alone[0], u[2])
    assert not torch.equal(sorted_uniforms(124, ids, 51), u)
    # the first 50 draws of 51 are not simply a prefix (sorting mixes them), but the multiset of 50 is the
    # 51's multiset minus draw 51: check the stream layout by recomputing the unsorted words
    u50 = sorted_uniforms(123, ids, 50)
    for r in range(4):
        merged = torch.sort(torch.cat([u50[r], u[r]]))[0]
        assert np.isin(u50[r].numpy(), u[r].numpy()).all(), "draw j must use the same words whatever rounds is"
        assert merged.numel() == 101


def test_uniforms_are_uniform():
    u = sorted_uniforms(5, torch.arange(2000), 50).reshape(-1)
    hist = torch.histc(u.float(), bins=20, min=0, max=1)
    assert chi_square(hist, torch.full((20,), 0.05)).pvalue > P_MIN


# ---------------------------------------------------------------------------------------------------------------
# inverse CDF: exactness rules at the boundaries


def test_inverse_cdf_never_picks_zero_mass_or_past_the_end():
    x = torch.tensor([[float("-inf"), 0.0, float("-inf"), 1.0, float("-inf"), float("-inf")]])
    extreme = torch.tensor([[0.0, 2.0**-53, 0.5, 1 - 2.0**-53]], dtype=torch.float64)
    picked = _inverse_cdf(x, 1.0, extreme)
    assert picked.tolist() == [[1, 1, 3, 3]]
    # a target rounded up to the total goes to the last id with positive mass, not past it
    assert _inverse_cdf(x, 1.0, torch.ones((1, 1), dtype=torch.float64)).tolist() == [[3]]


def test_inverse_cdf_boundaries_are_half_open():
    x = torch.log(torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64))
    u = torch.tensor([[0.0, 0.25 - 2**-53, 0.25, 0.5 - 2**-53, 0.5, 0.999]], dtype=torch.float64)
    assert _inverse_cdf(x, 1.0, u).tolist() == [[0, 0, 1, 1, 2, 2]]


# ---------------------------------------------------------------------------------------------------------------
# statistics of the reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_counts_match_softmax(dtype):
    g = torch.Generator().manual_seed(0)
    row = (torch.randn(400, generator=g) * 2.5).to(dtype)
    labels = sample_counts(repeated_row(row, 400), 50, seed=1)
    assert_label_invariants(labels, 400, 50, 400)
    observed = pooled_counts(labels.ids, labels.counts, 400)
    probs = softmax_probs(row)
    assert chi_square(observed, probs).pvalue > P_MIN
    # negative control: the same counts against a slightly wrong distribution are rejected
    assert chi_square(observed, softmax_probs(row, temperature=1.1)).pvalue < 1e-6


def test_each_row_is_sampled_from_its_own_distribution():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, generator=g) * 2, torch.randn(50, generator=g) * 2
    x = torch.stack([a, b] * 300)
    labels = sample_counts(x, 20, seed=2)
    rows = torch.repeat_interleave(torch.arange(600), labels.indptr.diff())
    for which, row in ((0, a), (1, b)):
        mask = rows % 2 == which
        observed = pooled_counts(labels.ids[mask], labels.counts[mask], 50)
        assert chi_square(observed, softmax_probs(row)).pvalue > P_MIN


def test_tail_mass_spread_over_100k_ids_is_sampled_at_its_rate():
    """1e-3 of the mass over 100,000 ids (1e-8 each): a float32 cumulative sum over 100K ids would lose it."""
    head, tail, tail_mass = 8, 100_000, 1e-3
    probs = torch.cat([torch.full((head,), (1 - tail_mass) / head), torch.full((tail,), tail_mass / tail)])
    row = torch.log(probs.to(torch.float64)).to(torch.float32)
    rows, rounds = 400, 255
    labels = sample_counts(repeated_row(row, rows), rounds, seed=3)
    observed = pooled_counts(labels.ids, labels.counts, head + tail)
    n = rows * rounds
    tail_draws = float(observed[head:].sum())
    expected, sd = n * tail_mass, math.sqrt(n * tail_mass * (1 - tail_mass))
    assert abs(tail_draws - expected) < 4 * sd, (tail_draws, expected, sd)
    assert int((observed[head:] > 0).sum()) > 0.9 * tail_draws  # spread over the tail, not one id
    # and the head, bin by bin, with the tail as one merged bin
    assert chi_square(observed, probs).pvalue > P_MIN


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_is_honoured(temperature):
    g = torch.Generator().manual_seed(4)
    row = torch.randn(300, generator=g) * 2
    labels = sample_counts(repeated_row(row, 400), 50, temperature=temperature, seed=5)
    observed = pooled_counts(labels.ids, labels.counts, 300)
    assert chi_square(observed, softmax_probs(row, temperature)).pvalue > P_MIN
    assert chi_square(observed, softmax_probs(row, 1.0)).pvalue < 1e-6


def test_vocab_size_masks_padded_columns_even_with_huge_logits():
    g = torch.Generator().manual_seed(6)
    row = torch.randn(264, generator=g)
    row[256:] = 1e4  # padding columns that would take every draw if they were not masked
    labels = sample_counts(repeated_row(row, 300), 50, vocab_size=256, seed=7)
    assert_label_invariants(labels, 300, 50, 256)
    observed = pooled_counts(labels.ids, labels.counts, 264)
    assert float(observed[256:].sum()) == 0
    assert chi_square(observed[:256], softmax_probs(row, vocab=256)).pvalue > P_MIN


def test_minus_inf_logits_are_never_sampled():
    g = torch.Generator().manual_seed(8)
    row = torch.randn(200, generator=g)
    row[::2] = float("-inf")
    labels = sample_counts(repeated_row(row, 300), 50, seed=9)
    assert bool((labels.ids % 2 == 1).all())
    observed = pooled_counts(labels.ids, labels.counts, 200)
    assert chi_square(observed, softmax_probs(row)).pvalue > P_MIN


def test_single_finite_logit_takes_every_draw():
    row = torch.full((1000,), float("-inf"))
    row[777] = -3.0
    labels = sample_counts(row[None], 50, seed=0)
    assert labels.ids.tolist() == [777] and labels.counts.tolist() == [50]


def test_extreme_but_finite_logits():
    row = torch.tensor([-3.0e38, 3.0e38, 0.0, 3.0e38])
    labels = sample_counts(repeated_row(row, 200), 50, seed=1)
    assert set(labels.ids.tolist()) == {1, 3}


# ---------------------------------------------------------------------------------------------------------------
# determinism and row identity


def test_same_seed_same_labels_and_different_seed_different_labels():
    x = torch.randn(20, 500)
    a, b = sample_counts(x, 50, seed=42), sample_counts(x, 50, seed=42)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.counts, b.counts) and torch.equal(a.indptr, b.indptr)
    c = sample_counts(x, 50, seed=43)
    assert not (torch.equal(a.ids, c.ids) and torch.equal(a.counts, c.counts))


def test_seed_none_draws_from_torch_generator():
    x = torch.randn(10, 300)
    torch.manual_seed(3)
    a = sample_counts(x, 50)
    torch.manual_seed(3)
    b = sample_counts(x, 50)
    c = sample_counts(x, 50)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.counts, b.counts)
    assert not (torch.equal(b.ids, c.ids) and torch.equal(b.counts, c.counts))


def test_a_rows_draws_depend_only_on_seed_row_id_and_its_logits():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(12, 400, generator=g) * 2
    ids = torch.arange(1000, 1012)
    whole = sample_counts(x, 50, seed=5, row_ids=ids)
    # a subset of the rows, in another order, in another call
    order = torch.tensor([7, 3, 11, 0])
    part = sample_counts(x[order], 50, seed=5, row_ids=ids[order])
    for i, r in enumerate(order.tolist()):
        got, want = part.row(i), whole.row(r)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the default row ids are the row numbers: row r of a call equals row_ids=[r]
    default = sample_counts(x, 50, seed=5)
    single = sample_counts(x[4:5], 50, seed=5, row_ids=torch.tensor([4]))
    assert torch.equal(default.row(4)[0], single.row(0)[0])


def test_leading_dimensions_flatten_in_c_order():
    x = torch.randn(2, 3, 64)
    nested = sample_counts(x, 50, seed=1)
    flat = sample_counts(x.reshape(6, 64), 50, seed=1)
    assert torch.equal(nested.ids, flat.ids) and torch.equal(nested.indptr, flat.indptr)
    assert sample_counts(x[0, 0], 50, seed=1).num_rows == 1  # a single [V] row


def test_reference_draws_equal_expanded_counts():
    x = torch.randn(5, 300)
    request = prepare_sampling(x, 50, 1.0, None, 9, None)
    draws = draw_ids_reference(request)
    labels = sample_counts_reference(x, 50, seed=9)
    expanded = torch.repeat_interleave(labels.ids.long(), labels.counts.long()).view(5, 50)
    assert torch.equal(draws, expanded)


def test_noncontiguous_logits():
    x = torch.randn(300, 8).t()  # [8, 300] with stride (1, 8)
    assert torch.equal(sample_counts(x, 50, seed=2).ids, sample_counts(x.contiguous(), 50, seed=2).ids)


def test_zero_rows():
    labels = sample_counts(torch.empty(0, 100), 50, seed=1)
    assert labels.num_rows == 0 and labels.num_labels == 0 and labels.indptr.tolist() == [0]


# ---------------------------------------------------------------------------------------------------------------
# errors


def _error(**kwargs) -> str:
    logits = kwargs.pop("logits", torch.zeros(4, 10))
    with pytest.raises(InputError) as info:
        sample_counts(logits, **kwargs)
    return str(info.value)


def test_non_finite_logits_name_the_row():
    x = torch.zeros(2, 3, 10)
    x[1, 2, 4] = float("nan")
    assert "row 5 (index (1, 2))" in _error(logits=x, seed=0) and "NaN at column 4" in _error(logits=x, seed=0)
    y = torch.zeros(7, 10)
    y[6, 9] = float("inf")
    message = _error(logits=y, seed=0)
    assert "logits row 6 " in message and "+inf at column 9" in message
    z = torch.zeros(3, 10)
    z[2] = float("-inf")
    assert "logits row 2 " in _error(logits=z, seed=0) and "no finite logit" in _error(logits=z, seed=0)


def test_finite_logits_only_in_padding_is_an_error():
    x = torch.full((2, 10), float("-inf"))
    x[:, 8:] = 0.0
    x[0, 3] = 0.0
    message = _error(logits=x, vocab_size=8, seed=0)
    assert "logits row 1 " in message and "first 8 columns" in message
    nan_in_padding = torch.zeros(2, 10)
    nan_in_padding[:, 9] = float("nan")
    assert sample_counts(nan_in_padding, 5, vocab_size=9, seed=0).num_rows == 2  # padding is not read


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rounds": 0}, "rounds must be in 1..255"),
        ({"rounds": 256}, "rounds must be in 1..255"),
        ({"rounds": True}, "rounds must be an integer"),
        ({"rounds": 2.0}, "rounds must be an integer"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"vocab_size": 0}, "vocab_size must be in 1..10"),
        ({"vocab_size": 11}, "vocab_size must be in 1..10"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"row_ids": torch.arange(3)}, "row_ids must have shape [4]"),
        ({"row_ids": torch.tensor([0, 1, -2, 3])}, "row 2 has -2"),
        ({"row_ids": torch.zeros(4)}, "integer tensor"),
        ({"backend": "cuda"}, "backend"),
        ({"logits": torch.zeros(4, 10, dtype=torch.int64)}, "floating dtype"),
        ({"logits": torch.zeros(4, 0)}, "V >= 1"),
        ({"logits": [[0.0, 1.0]]}, "torch.Tensor"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    kwargs.setdefault("seed", 0)
    assert fragment in _error(**kwargs)


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="CUDA"):
        sample_counts(torch.zeros(2, 10), 5, seed=0, backend="triton")


def test_auto_backend_is_the_reference_on_cpu():
    x = torch.randn(3, 100)
    auto = sample_counts(x, 50, seed=4)
    ref = sample_counts(x, 50, seed=4, backend="reference")
    assert torch.equal(auto.ids, ref.ids) and torch.equal(auto.counts, ref.counts)


def test_float64_logits():
    x = torch.randn(3, 100, dtype=torch.float64)
    assert_label_invariants(sample_counts(x, 50, seed=1), 3, 50, 100)


# ---------------------------------------------------------------------------------------------------------------
# containers


def test_sampled_labels_rows_and_numpy():
    x = torch.randn(6, 200)
    labels = sample_counts(x, 50, seed=3)
    ids, counts, indptr = labels.numpy()
    assert ids.dtype == np.uint32 and counts.dtype == np.uint8 and indptr.dtype == np.int64
    part = labels.rows(2, 5)
    assert part.num_rows == 3 and int(part.indptr[0]) == 0
    for i in range(3):
        assert torch.equal(part.row(i)[0], labels.row(2 + i)[0])
        assert torch.equal(part.row(i)[1], labels.row(2 + i)[1])
    assert torch.equal(labels.row(-1)[0], labels.row(5)[0])
    with pytest.raises(IndexError):
        labels.row(6)
    with pytest.raises(IndexError):
        labels.rows(4, 7)
    with pytest.raises(InputError):
        SampledLabels(labels.ids.long(), labels.counts, labels.indptr)
    assert labels.values is labels.counts


def test_labels_go_through_the_writer_and_back(tmp_path):
    x = torch.randn(2, 64, 300)
    labels = sample_counts(x, 50, seed=11)
    path = tmp_path / "labels.slbl"
    with sl.LabelWriter(path, vocab_size=300, rounds=50, value_kind="count", codec="raw", metadata={}) as writer:
        for seq in range(2):
            writer.write(*labels.rows(64 * seq, 64 * (seq + 1)).numpy())
    stored = sl.open_labels(path)
    assert len(stored) == 2
    for seq in range(2):
        want_ids, want_counts, want_indptr = labels.rows(64 * seq, 64 * (seq + 1)).numpy()
        got = stored[seq]
        assert np.array_equal(got.ids, want_ids) and np.array_equal(got.counts, want_counts)
        assert np.array_equal(got.indptr, want_indptr)


# ---------------------------------------------------------------------------------------------------------------
# topk_labels


def _topk_brute_force(row: torch.Tensor, k: int, temperature: float = 1.0):
    scaled = row.to(torch.float64) / temperature
    finite = [i for i in range(row.numel()) if scaled[i] > float("-inf")]
    chosen = sorted(sorted(finite, key=lambda i: (-float(scaled[i]), i))[:k])
    probs = torch.softmax(scaled, -1)
    return chosen, probs[chosen]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_topk_matches_brute_force_with_full_softmax_probs(temperature):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(5, 40, generator=g)
    x[1, 5:10] = 2.5  # five-way tie across the cut-off
    x[2, :35] = float("-inf")  # only five finite ids
    labels = topk_labels(x, 7, temperature=temperature)
    assert isinstance(labels, TopKLabels) and labels.probs.dtype == torch.float16 and labels.ids.dtype == torch.int32
    for r in range(5):
        ids, probs = labels.row(r)
        want_ids, want_probs = _topk_brute_force(x[r], 7, temperature)
        assert ids.tolist() == want_ids
        torch.testing.assert_close(probs.double(), want_probs, rtol=1e-3, atol=1e-7)
    assert labels.row(1)[0].tolist()[:5] == sorted(labels.row(1)[0].tolist()[:5])
    assert labels.row(2)[0].numel() == 5


def test_topk_ties_go_to_lower_ids_and_probs_are_not_renormalised():
    x = torch.zeros(1, 10)
    labels = topk_labels(x, 3)
    assert labels.ids.tolist() == [0, 1, 2]
    assert labels.probs.tolist() == [pytest.approx(0.1, rel=1e-3)] * 3


def test_topk_vocab_size_and_tiny_probabilities():
    x = torch.zeros(2, 12)
    x[:, 10:] = 100.0  # padding
    x[0, 3] = 40.0  # every other kept id has probability ~4e-18
    labels = topk_labels(x, 3, vocab_size=10)
    assert bool((labels.ids < 10).all())
    assert labels.row(0)[0].tolist() == [0, 1, 3]
    assert float(labels.row(0)[1].min()) == 2.0**-24  # stored as the smallest positive float16, not 0


def test_topk_errors():
    with pytest.raises(InputError, match=r"k must be in 1\.\.10"):
        topk_labels(torch.zeros(2, 10), 11)
    with pytest.raises(InputError, match=r"k must be in 1\.\.8"):
        topk_labels(torch.zeros(2, 10), 9, vocab_size=8)
    x = torch.zeros(2, 10)
    x[1, 1] = float("nan")
    with pytest.raises(InputError, match=r"row 1 .*NaN"):
        topk_labels(x, 2)


def test_label_problems_finds_each_broken_invariant():
    good = SampledLabels(
        torch.tensor([1, 5, 0], dtype=torch.int32), torch.tensor([2, 3, 5], dtype=torch.uint8), torch.tensor([0, 2, 3])
    )
    assert label_problems(good, 5, 6) == []
    assert label_problems(good, 5, 5) == ["ids outside [0, 5)"]
    assert label_problems(good, 4, 6) == ["2 rows whose counts do not sum to 4"]
    unsorted = SampledLabels(torch.tensor([5, 1, 0], dtype=torch.int32), good.counts, good.indptr)
    assert "ids not strictly ascending within a row" in label_problems(unsorted, 5, 6)
    empty_row = SampledLabels(good.ids, good.counts, torch.tensor([0, 3, 3]))
    assert label_problems(empty_row, 5, 6) == ["1 rows without labels"]


def test_zipf_logits_look_like_a_teacher():
    labels = sample_counts(zipf_logits(32, 32000, seed=1), 50, seed=2)
    assert 8 <= labels.num_labels / 32 <= 20


def test_public_exports():
    assert set(sampling.__all__) >= {"sample_counts", "topk_labels", "SampledLabels", "TopKLabels"}
    assert sl.sample_counts is sample_counts and sl.topk_labels is topk_labels


# ---------------------------------------------------------------------------------------------------------------
# tools


ROOT = Path(__file__).resolve().parents[1]


def test_bench_sampler_quick_runs_and_writes_json(tmp_path):
    root = ROOT
    out = tmp_path / "bench_sampler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(root / "tools" / "bench_sampler.py"), "--quick", "--out", str(out)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["machine"]["cores"] >= 1
    for row in payload["results"]:
        assert row["read_once_ms"] > 0 and row["softmax_multinomial_ms"] > 0
        assert 1 <= row["labels_per_row"] <= 50
        assert row["write_ms"] is not None and row["write_ms"] > 0
    if "interpreter_check" in payload:
        assert payload["interpreter_check"]["equal_to_reference"] is True


def _compiled_offline(code: str) -> str:
    """Run ``code`` in a fresh interpreter without ``TRITON_INTERPRET`` (the interpreter cannot compile); its stdout."""
    pytest.importorskip("triton")
    assert importlib.util.find_spec("triton.backends.nvidia") is not None
    clean = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=clean
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_kernel_compiles_when_int_arguments_are_specialized_to_one():
    """Triton's launcher turns an int argument equal to 1 into a compile-time constant (seed 1 gave seed_lo == 1
    and failed to compile on the first GPU run: ``'int' object has no attribute 'to'``). The kernel now keeps the
    seed unspecialized, and its body must compile with any of these arguments constant anyway."""
    out = _compiled_offline(
        "import torch; from sparselabels.sampling.triton_kernel import compile_offline, _sample_rows_kernel;"
        "compile_offline(32000, torch.bfloat16, rounds=1, ones=('seed_lo', 'seed_hi', 'num_rows', 'rounds'));"
        "k = _sample_rows_kernel; print([k.arg_names[i] if isinstance(i, int) else i for i in k.do_not_specialize])"
    )
    assert "seed_hi" in out and "seed_lo" in out


@pytest.mark.slow
def test_kernel_compiles_for_hopper_within_128_registers():
    """Compiled offline for sm_90 (no GPU needed): what the interpreter cannot check — that both kernels compile,
    that the sampling kernel keeps the default geometry within 128 registers with no local memory in this
    toolchain's build (split, and as one kernel) and at least 2 programs per SM, and that one kernel pipelines
    its pass-1 loads."""
    out = _compiled_offline(
        "import sys, json; sys.path.insert(0, 'tools'); import sampler_build_report as r;"
        "print(json.dumps([r.report(128256, 'bf16', split=split) for split in (True, False)]))"
    )
    split, one_kernel = json.loads(out.strip().splitlines()[-1])
    for report in (split, one_kernel):
        assert report["registers"] <= 128 and report["local_bytes"] == 0
        assert report["programs_per_sm"] >= 2
    assert split["split"] and not one_kernel["split"]
    assert split["pass1_registers"] > 0 and one_kernel["pass1_registers"] is None
    assert one_kernel["cp_async"] > 0  # pass 1 streams through software-pipelined loads


def test_tiny_temperatures_and_huge_logits_do_not_overflow_into_wrong_ids():
    """logits / temperature overflowing to +inf gave inf - inf = NaN: every draw went to id 0 and Top-K returned
    NaN probabilities. Overflowing rows are shifted by their maximum first (greedy in the limit)."""
    cases = [(torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64), 1e-310, 1),
             (torch.tensor([[1e308, -1e308, 5e307]], dtype=torch.float64), 0.5, 0),
             (torch.tensor([[1.0, 20.0, 0.5]]), 1e-39, 1),
             (torch.tensor([[1e38, 3e38, -3e38]]), 0.5, 1)]
    for logits, temperature, best in cases:
        labels = sl.sample_counts(logits, 10, seed=0, temperature=temperature, backend="reference")
        assert labels.ids.tolist() == [best] and labels.counts.tolist() == [10]
        top = sl.topk_labels(logits, k=1, temperature=temperature)
        assert top.ids.tolist() == [best] and top.probs.tolist() == [1.0]
    # rows that do not overflow are computed as before, in the same call
    both = torch.tensor([[0.0, 1e-300, 5e-301], [0.0, 1e10, 0.0]], dtype=torch.float64)  # only row 1 overflows
    mixed = sl.sample_counts(both, 50, seed=3, temperature=1e-300, backend="reference")
    alone = sl.sample_counts(both[:1], 50, seed=3, temperature=1e-300, backend="reference")
    assert mixed.ids[: int(mixed.indptr[1])].tolist() == alone.ids.tolist() and len(alone.ids) == 3
    assert mixed.ids[int(mixed.indptr[1]):].tolist() == [1]
