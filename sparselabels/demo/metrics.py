"""Held-out metrics of a causal LM: mean next-token cross-entropy and the expected calibration error (ECE).

ECE here is the usual top-1 confidence ECE (Guo et al., "On Calibration of Modern Neural Networks", 2017), the
measure the RS-KD paper reports: for every held-out next-token prediction take the confidence ``c`` = the
model's largest probability and whether its argmax is the true next token. Split ``[0, 1]`` into 15
equal-width bins, bin ``b`` holding ``b/15 < c <= (b+1)/15`` (``c = 0`` goes to the first bin), and

    ECE = Σ_b (n_b / n) · |accuracy_b - mean confidence_b|

A calibrated model's 70%-confident predictions are right 70% of the time and its ECE is 0; a model trained on
renormalised Top-K targets is over-confident, which ECE shows and the loss alone does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sparselabels.errors import InputError

ECE_BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of top-1 predictions (the data of a reliability diagram) and the ECE they give."""

    edges: np.ndarray  # float64 [bins + 1]: 0, 1/bins, ..., 1
    counts: np.ndarray  # int64 [bins]: predictions per bin
    confidence: np.ndarray  # float64 [bins]: mean confidence per bin (NaN when empty)
    accuracy: np.ndarray  # float64 [bins]: fraction correct per bin (NaN when empty)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error as a fraction (multiply by 100 for %)."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / max(self.total, 1))


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> Reliability:
    """Bin top-1 ``confidence`` (floats in [0, 1]) with ``correct`` (bools) into ``bins`` equal-width bins."""
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct).reshape(-1)
    if confidence.shape != correct.shape:
        raise InputError(f"confidence has {confidence.size} entries but correct has {correct.size}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"bins must be a positive integer, got {bins!r}")
    if confidence.size == 0:
        raise InputError("no predictions to bin")
    bad = np.flatnonzero(~((confidence >= 0.0) & (confidence <= 1.0)))
    if bad.size:
        raise InputError(f"prediction {int(bad[0])}: confidence {confidence[bad[0]]!r} is not in [0, 1]")
    # Bin b holds (b/bins, (b+1)/bins]; ceil(c * bins) - 1 is that b, and c = 0 joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    hit_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        accuracy = np.where(counts > 0, hit_sum / counts, np.nan)
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, mean_conf, accuracy)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Top-1 ECE (a fraction) of predictions with the given confidences and correctness; see the module docstring."""
    return reliability(confidence, correct, bins=bins).ece


@dataclass(frozen=True)
class Evaluation:
    """A model's held-out numbers: mean cross-entropy (nats per token) and calibration."""

    loss: float
    reliability: Reliability

    @property
    def predictions(self) -> int:
        """Next-token predictions evaluated (one confidence each)."""
        return self.reliability.total

    @property
    def ece(self) -> float:
        return self.reliability.ece


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Sequence[torch.Tensor], *, bins: int = ECE_BINS) -> Evaluation:
    """Next-token cross-entropy and top-1 calibration of ``model`` over ``batches`` of ``[B, S]`` token ids.

    Position ``t`` predicts token ``t + 1``, so each window gives ``S - 1`` predictions; the loss is their mean.
    """
    if not batches:
        raise InputError("evaluate needs at least one batch")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss = 0.0
    confidences, hits = [], []
    for batch in batches:
        ids = batch.to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        log_probs = torch.log_softmax(logits, dim=-1)
        total_loss += float(-log_probs.gather(-1, targets.unsqueeze(-1)).sum())
        top_log_prob, top_id = log_probs.max(dim=-1)
        confidences.append(top_log_prob.exp().reshape(-1).cpu().numpy())
        hits.append((top_id == targets).reshape(-1).cpu().numpy())
    model.train(was_training)
    confidence = np.clip(np.concatenate(confidences).astype(np.float64), 0.0, 1.0)  # exp may round past 1
    binned = reliability(confidence, np.concatenate(hits), bins=bins)
    return Evaluation(total_loss / binned.total, binned)
