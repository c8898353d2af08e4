"""The torch side of reading labels: a Dataset joined to input tokens, a padding collate, a resumable sampler.

``SparseLabelDataset(labels, tokens)`` → items; ``collate`` / ``SparseLabelCollator`` → padded ``[B, T, K]``
targets; ``ResumableSampler`` → a deterministic order that resumes exactly, also across world sizes.
"""

from sparselabels._extras import require

require("sparselabels.data", "torch")

from sparselabels.data.collate import (
    OVERFLOW_POLICIES,
    SparseBatch,
    SparseLabelCollator,
    collate,
    collate_reference,
)
from sparselabels.data.dataset import SparseItem, SparseLabelDataset
from sparselabels.data.sampler import ResumableSampler, epoch_order
from sparselabels.data.tokens import (
    ArrayTokens,
    HFTokens,
    MegatronTokens,
    NpyTokens,
    TokenSource,
    open_tokens,
    write_megatron_tokens,
)

__all__ = [
    "OVERFLOW_POLICIES",
    "ArrayTokens",
    "HFTokens",
    "MegatronTokens",
    "NpyTokens",
    "ResumableSampler",
    "SparseBatch",
    "SparseItem",
    "SparseLabelCollator",
    "SparseLabelDataset",
    "TokenSource",
    "collate",
    "collate_reference",
    "epoch_order",
    "open_tokens",
    "write_megatron_tokens",
]
