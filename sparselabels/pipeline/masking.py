"""Labeling only the positions a loss mask keeps (``generate(..., mask_column=...)``).

The teacher still reads every token (its context is the whole sequence); the positions the mask drops are stored
empty (no labels), so a chat corpus pays storage only for the tokens that are trained. Labels at kept positions are
exactly those of an unmasked run with the same seed: a draw depends only on (seed, global position, logits row).
Which positions are kept follows :mod:`sparselabels.data.masks` (token-aligned 0/1 or ``labels`` with -100).
"""

from __future__ import annotations

import numpy as np

from sparselabels.data.masks import mask_source, read_position_mask
from sparselabels.data.tokens import HFTokens
from sparselabels.errors import InputError
from sparselabels.io.sequence import CsrLabels


def open_mask(tokens, column: str | None):
    """The mask source for ``column`` of the token source ``tokens`` (None when no column is given), every
    sequence's mask checked (lengths and values) before the teacher runs: a bad value fails before any output."""
    if column is None:
        return None, "mask"
    if not isinstance(tokens, HFTokens):  # (mask_source's advice, masks=, is the dataset's; generate has none)
        raise InputError(f"mask_column={column!r} names a column of a datasets source, but the tokens are "
                         f"{tokens.describe()}; label a datasets source (or a saved datasets directory) that holds "
                         "the mask column beside the tokens")
    source, kind = mask_source(tokens, column, None)
    for i in range(len(tokens)):
        read_position_mask(source, i, np.asarray(tokens[i]), kind, source.describe())
    return source, kind


def keep_only(labels: CsrLabels, keep: np.ndarray) -> CsrLabels:
    """``labels`` with every position where ``keep`` is False emptied (its ids and counts removed)."""
    ids, counts, indptr = labels
    per_position = np.diff(indptr)
    kept_labels = np.repeat(keep, per_position)
    new_counts = np.where(keep, per_position, 0)
    new_indptr = np.zeros_like(indptr)
    np.cumsum(new_counts, out=new_indptr[1:])
    return ids[kept_labels], counts[kept_labels], new_indptr


def masked_labels(source, kind: str, first: int, sequences: list[np.ndarray],
                  labels: list[CsrLabels]) -> list[CsrLabels]:
    """The labels of sequences ``first, first + 1, ...`` with the positions their mask drops emptied."""
    if source is None:
        return labels
    return [keep_only(lab, read_position_mask(source, first + j, seq, kind, source.describe()))
            for j, (seq, lab) in enumerate(zip(sequences, labels, strict=True))]
