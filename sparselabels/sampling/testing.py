"""Helpers to check a sampler: invariants, goodness of fit, synthetic teacher logits.

Shared by the tests (CPU, interpreter, CUDA) and the benchmark's sanity check, so "the labels are valid" and "the
sampler is unbiased" are the same measurable statements everywhere.

Goodness of fit is Pearson's chi-square test of pooled counts of many independent draws against the softmax
probabilities. Bins whose expected count is below ``min_expected`` are merged into one bin (the usual validity
rule of the test), so a long tail is still tested — as a whole. The p-value is the exact chi-square survival
function, ``Q(df / 2, stat / 2)`` (the regularised upper incomplete gamma function,
``torch.special.gammaincc``); no scipy needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .labels import SampledLabels


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    df: int
    pvalue: float
    bins: int  # bins tested, the merged low-expectation bin included


def chi_square(observed: torch.Tensor, probs: torch.Tensor, *, min_expected: float = 5.0) -> ChiSquare:
    """Pearson's test of ``observed`` counts (any shape, flattened) against probabilities ``probs`` (same shape).

    ``probs`` is normalised here (float64). Any count observed where the probability is 0 makes the p-value 0.
    """
    observed = observed.reshape(-1).to(torch.float64).cpu()
    probs = probs.reshape(-1).to(torch.float64).cpu()
    if observed.shape != probs.shape:
        raise ValueError(f"observed {tuple(observed.shape)} and probs {tuple(probs.shape)} differ in size")
    n = float(observed.sum())
    probs = probs / probs.sum()
    if bool((observed[probs == 0] > 0).any()):
        return ChiSquare(math.inf, 0, 0.0, 0)
    expected = probs * n
    big = expected >= min_expected
    obs_bins = observed[big]
    exp_bins = expected[big]
    rest_expected = float(expected[~big].sum())
    if rest_expected > 0:
        obs_bins = torch.cat([obs_bins, observed[~big].sum().reshape(1)])
        exp_bins = torch.cat([exp_bins, torch.tensor([rest_expected], dtype=torch.float64)])
    bins = obs_bins.numel()
    statistic = float(((obs_bins - exp_bins) ** 2 / exp_bins).sum())
    df = bins - 1
    if df < 1:
        return ChiSquare(statistic, 0, 1.0, bins)
    half_df = torch.tensor(df / 2.0, dtype=torch.float64)
    pvalue = float(torch.special.gammaincc(half_df, torch.tensor(statistic / 2.0, dtype=torch.float64)))
    return ChiSquare(statistic, df, pvalue, bins)


def pooled_counts(ids: torch.Tensor, counts: torch.Tensor, vocab: int) -> torch.Tensor:
    """Total count of each id over all rows (float64 ``[vocab]``, on the ids' device)."""
    return torch.bincount(ids.to(torch.int64), weights=counts.to(torch.float64), minlength=vocab)


def expand_draws(labels: SampledLabels, rounds: int) -> torch.Tensor:
    """Every draw, ``[R, rounds]`` int64, ascending per row: the j-th entry is the id of the j-th smallest
    uniform (so two samplers on the same uniforms can be compared draw by draw)."""
    return torch.repeat_interleave(labels.ids.to(torch.int64), labels.counts.to(torch.int64)).view(-1, rounds)


def label_problems(labels: SampledLabels, rounds: int, vocab: int) -> list[str]:
    """Every documented invariant of ``sample_counts``' output that ``labels`` breaks (vectorised; [] if none)."""
    problems = []
    ids, counts, indptr = labels.ids, labels.counts, labels.indptr
    if ids.dtype != torch.int32 or counts.dtype != torch.uint8 or indptr.dtype != torch.int64:
        problems.append(f"dtypes {ids.dtype}, {counts.dtype}, {indptr.dtype}")
    num_rows = indptr.numel() - 1
    if int(indptr[0]) != 0 or int(indptr[-1]) != ids.numel() or counts.numel() != ids.numel():
        problems.append("indptr does not start at 0 or end at the number of labels")
        return problems
    lengths = indptr.diff()
    if bool((lengths < 1).any()):
        problems.append(f"{int((lengths < 1).sum())} rows without labels")
        return problems
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= vocab).any())):
        problems.append(f"ids outside [0, {vocab})")
    if bool((counts == 0).any()):
        problems.append("a count of 0")
    row = torch.repeat_interleave(torch.arange(num_rows, device=ids.device), lengths)
    sums = torch.zeros(num_rows, dtype=torch.int64, device=ids.device).index_add_(0, row, counts.to(torch.int64))
    if bool((sums != rounds).any()):
        problems.append(f"{int((sums != rounds).sum())} rows whose counts do not sum to {rounds}")
    same_row = row[1:] == row[:-1]
    if bool((same_row & (ids[1:] <= ids[:-1])).any()):
        problems.append("ids not strictly ascending within a row")
    return problems


def zipf_logits(
    rows: int,
    vocab: int,
    *,
    seed: int = 0,
    exponent: float = 1.8,
    noise: float = 1.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """LM-like teacher logits: Zipf-shaped probabilities over a random order of the ids, plus Gaussian noise.

    An id at uniform position ``u`` gets ``-exponent * log(u * vocab + 0.5)``, which is about
    ``-exponent * log(rank)`` over a random permutation, without sorting. At ``exponent = 1.8`` 50 draws give
    about 12-15 distinct ids per row for vocabularies of 32K-256K (the paper's ~12 at N = 50).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    position = torch.rand(rows, vocab, generator=g, device=device)
    logits = torch.randn(rows, vocab, generator=g, device=device).mul_(noise)
    logits.sub_(position.mul_(vocab).add_(0.5).log_().mul_(exponent))
    return logits.to(dtype)
