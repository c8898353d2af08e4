"""Loss masks: which label positions are trained, from a per-token column of the token source.

Two column kinds, both **token-aligned** as chat-template tooling writes them (value ``t`` describes input
token ``t``):

* a 0/1 mask (``loss_mask``, ``assistant_masks``, ...): 1 where the token is a training target;
* a Hugging Face ``labels`` column: ``-100`` where the token is not trained, the token id itself elsewhere.

A label position ``t`` holds the teacher's distribution of the token *after* token ``t``, so position ``t`` is
kept when token ``t + 1`` is. The last position's next token is not in the data: it is kept when the last token
is (an all-ones mask keeps every position, exactly as no mask does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparselabels.data.tokens import HFTokens, TokenSource, open_tokens
from sparselabels.errors import InputError

IGNORE_INDEX = -100


def mask_kind(column: str) -> str:
    """``"labels"`` for a column named ``labels`` (HF convention: -100 or the token id), else ``"mask"`` (0/1)."""
    return "labels" if column == "labels" else "mask"


def token_mask(values: np.ndarray, input_ids: np.ndarray | None, kind: str, where: str) -> np.ndarray:
    """bool[T]: which tokens are training targets, with the column's values checked (InputError naming ``where``).

    ``labels`` values must be -100 or equal the input token at the same place (a column shifted by one, as
    some pipelines store it, fails here instead of silently moving every mask by one position)."""
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)
                            and values.dtype != np.bool_):
        raise InputError(f"{where}: a mask column must hold 1-D integer lists, got {values.dtype} {values.shape}")
    if input_ids is not None and values.shape[0] != input_ids.shape[0]:
        raise InputError(f"{where}: {values.shape[0]} mask values for {input_ids.shape[0]} tokens")
    v = values.astype(np.int64, copy=False)
    if kind == "mask":
        bad = np.flatnonzero((v != 0) & (v != 1))
        if bad.size:
            t = int(bad[0])
            hint = ("; a Hugging Face labels column (-100 / token ids) is read as one only under the name 'labels'"
                    if (v == IGNORE_INDEX).any() else "")
            raise InputError(f"{where}, token {t}: mask value {int(v[t])} is not 0 or 1 ({bad.size} such values)"
                             f"{hint}")
        return v == 1
    if kind != "labels":
        raise InputError(f"mask kind must be 'mask' or 'labels', got {kind!r}")
    keep = v != IGNORE_INDEX
    if input_ids is None:
        bad = np.flatnonzero(keep & (v < 0))
    else:
        bad = np.flatnonzero(keep & (v != np.asarray(input_ids).astype(np.int64, copy=False)))
    if bad.size:
        t = int(bad[0])
        found = "" if input_ids is None else f", the token there is {int(input_ids[t])}"
        raise InputError(f"{where}, token {t}: labels value {int(v[t])} is neither -100 nor the input token"
                         f"{found} (labels must be token-aligned, -100 where not trained; {bad.size} such values)")
    return keep


def position_mask(keep_tokens: np.ndarray) -> np.ndarray:
    """bool[T]: label position ``t`` is kept when token ``t + 1`` is; the last position follows the last token."""
    out = np.empty_like(keep_tokens, dtype=np.bool_)
    if keep_tokens.shape[0]:
        out[:-1] = keep_tokens[1:]
        out[-1] = keep_tokens[-1]
    return out


def mask_source(tokens: TokenSource | None, column: str | None, masks: Any) -> tuple[TokenSource | None, str]:
    """The source of mask values (None without a mask) and its kind, every sequence's length checked against
    ``tokens``. ``column`` names a column of a ``datasets`` token source; ``masks`` is any other token source."""
    if column is None and masks is None:
        return None, "mask"
    if column is not None and masks is not None:
        raise InputError("pass mask_column (a column of the datasets token source) or masks, not both")
    if tokens is None:
        raise InputError("a loss mask needs the tokens (pass tokens= with mask_column or masks)")
    if column is not None:
        if not isinstance(tokens, HFTokens):
            raise InputError(f"mask_column={column!r} names a column of a datasets source, but the tokens are "
                             f"{tokens.describe()}; pass the mask values as masks= instead")
        source, kind = HFTokens(tokens.dataset, column=column, path=tokens.path), mask_kind(column)
    else:
        source, kind = open_tokens(_bool_as_0_1(masks)), "mask"
    mask_lengths = np.asarray(source.lengths(), dtype=np.int64)
    token_lengths = np.asarray(tokens.lengths(), dtype=np.int64)
    if mask_lengths.shape != token_lengths.shape:
        raise InputError(f"mask {source.describe()}: {mask_lengths.shape[0]} sequences but {tokens.describe()} "
                         f"has {token_lengths.shape[0]}")
    bad = np.flatnonzero(mask_lengths != token_lengths)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"mask {source.describe()}, sequence {i}: {mask_lengths[i]} mask values for "
                         f"{token_lengths[i]} tokens ({bad.size} sequences differ)")
    return source, kind


def _bool_as_0_1(masks: Any) -> Any:
    """Bool mask arrays as uint8 0/1 (a token source holds integers); anything else as it is."""
    if isinstance(masks, np.ndarray) and masks.dtype == np.bool_:
        return masks.astype(np.uint8)
    if isinstance(masks, list | tuple) or (isinstance(masks, np.ndarray) and masks.dtype == object):
        arrays = [np.asarray(m) for m in masks]
        return [m.astype(np.uint8) if m.dtype == np.bool_ else m for m in arrays]
    return masks


def read_position_mask(source, index: int, input_ids: np.ndarray | None, kind: str, what: str) -> np.ndarray:
    """The position mask of sequence ``index`` from a mask token source (see the module docstring)."""
    where = f"mask column {what}, sequence {index}"
    return position_mask(token_mask(np.asarray(source[index]), input_ids, kind, where))


def batch_masks(batch, lengths: np.ndarray, indices: np.ndarray, width: int) -> np.ndarray | None:
    """The items' ``loss_mask`` as bool ``[B, width]``, False in padding (None when no item carries one; an item
    without one keeps all its positions), each checked to have one value per position."""
    parts = [getattr(item, "loss_mask", None) for item in batch]
    if all(p is None for p in parts):
        return None
    mask = np.zeros((len(parts), width), dtype=np.bool_)
    for b, (p, n) in enumerate(zip(parts, lengths.tolist(), strict=True)):
        if p is None:
            mask[b, :n] = True
            continue
        p = np.asarray(p)
        if p.ndim != 1 or p.shape[0] != n or not (p.dtype == np.bool_ or np.issubdtype(p.dtype, np.integer)):
            raise InputError(f"collate: sequence {indices[b]}: loss_mask of {p.dtype} {p.shape} for {n} positions "
                             "(need bool or 0/1, one per position)")
        if p.dtype != np.bool_ and p.size and (int(p.min()) < 0 or int(p.max()) > 1):
            raise InputError(f"collate: sequence {indices[b]}: loss_mask values must be 0 or 1")
        mask[b, :n] = p
    return mask


def with_loss_mask(batch, out: dict) -> dict:
    """``out`` (a collated batch) with ``loss_mask`` bool ``[B, T]`` added when any item carries one (False in
    padding; an item without one keeps all its positions)."""
    mask = batch_masks(batch, out["lengths"].numpy(), out["indices"].numpy(), out["attention_mask"].shape[1])
    if mask is not None:
        pinned = out["attention_mask"].is_pinned()
        out["loss_mask"] = torch.from_numpy(mask).pin_memory() if pinned else torch.from_numpy(mask)
    return out
