"""The torch side of reading labels: a Dataset joined to input tokens, a padding collate, a resumable sampler.

``SparseLabelDataset(labels, tokens)`` → items; ``collate`` / ``SparseLabelCollator`` → padded ``[B, T, K]``
targets or compact CSR ``SparseTargets`` (``layout="csr"``); ``ResumableSampler`` → a deterministic order that
resumes exactly, also across world sizes; ``PackedDataset`` → whole documents packed into fixed-length rows
(position ids and boundaries for attention).
"""

from sparselabels._extras import require

require("sparselabels.data", "torch")

from sparselabels.data.collate import (
    LAYOUTS,
    OVERFLOW_POLICIES,
    SparseBatch,
    SparseLabelCollator,
    collate,
    collate_reference,
)
from sparselabels.data.dataset import SparseItem, SparseLabelDataset
from sparselabels.data.identity import check_label_convention, check_tokenizer
from sparselabels.data.packing import PackedCollator, PackedDataset, PackedItem
from sparselabels.data.sampler import ResumableSampler, epoch_order
from sparselabels.data.streams import StreamTokens, TokenStream
from sparselabels.data.targets import SparseTargets
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
    "LAYOUTS",
    "OVERFLOW_POLICIES",
    "ArrayTokens",
    "HFTokens",
    "MegatronTokens",
    "NpyTokens",
    "PackedCollator",
    "PackedDataset",
    "PackedItem",
    "ResumableSampler",
    "SparseBatch",
    "SparseItem",
    "SparseLabelCollator",
    "SparseLabelDataset",
    "SparseTargets",
    "StreamTokens",
    "TokenSource",
    "TokenStream",
    "check_label_convention",
    "check_tokenizer",
    "collate",
    "collate_reference",
    "epoch_order",
    "open_tokens",
    "write_megatron_tokens",
]
