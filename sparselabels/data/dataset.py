"""A map-style torch Dataset over a label store, optionally joined to the input tokens, with alignment checked.

Convention: a label file and its token source describe the same sequences in the same order, with the same
length. Labels position ``t`` holds the teacher's distribution over the token that *follows* input token ``t``
(the next-token target of position ``t``), exactly what a causal LM's logits at ``t`` are trained against.
So ``labels[i].num_positions == len(tokens[i])`` for every ``i``; there is no shift to apply at training time.
Files from ``generate`` say so in their metadata (``label_convention: "next-token"``, exposed as
:attr:`SparseLabelDataset.label_convention`); ``labels_are_shifted=True`` (a training loop that shifts as for
Hugging Face input-id labels) is refused at construction against such a file.

Alignment is checked three times over: sequence counts and every sequence length at construction (one
vectorised comparison of the two indexes); the whole-source fingerprint the labels store
(``source_fingerprint``: the count, the lengths and three sequences) against the tokens, at construction too;
and, when the label file stores input fingerprints, the fingerprint of the tokens read
(``verify_fingerprints="lazy"``, per item as it is read; ``"all"``: every sequence at construction, which
reads all tokens; ``"off"``: neither this nor the source fingerprint). A mismatch raises
:class:`~sparselabels.errors.AlignmentError` naming the first bad sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from sparselabels.data.identity import check_label_convention, check_source, label_convention
from sparselabels.data.masks import mask_source, read_position_mask
from sparselabels.data.tokens import TokenSource, open_tokens
from sparselabels.errors import AlignmentError, InputError
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.io.open import open_labels
from sparselabels.io.reader import Labels

VERIFY_FINGERPRINTS = ("lazy", "all", "off")


@dataclass(frozen=True, slots=True)
class SparseItem:
    """One dataset item: a sequence's labels in CSR form (read-only views) and, if known, its input ids.

    ``values`` are uint8 counts (weight = count / ``rounds``) or float16 probabilities. :func:`collate`
    consumes a list of these; any object with ``ids``, ``values`` and ``indptr`` attributes works too.
    """

    index: int
    ids: np.ndarray
    values: np.ndarray
    indptr: np.ndarray
    input_ids: np.ndarray | None
    rounds: int | None
    vocab_size: int
    loss_mask: np.ndarray | None = None  # bool[T]: positions to train (see sparselabels.data.masks); None: all

    @property
    def counts(self) -> np.ndarray:
        """Alias of ``values``, as on :class:`~sparselabels.Sequence`."""
        return self.values

    @property
    def num_positions(self) -> int:
        return int(self.indptr.shape[0] - 1)


def _open_labels(labels: Labels | str | os.PathLike) -> Labels:
    if isinstance(labels, Labels):
        return labels
    if isinstance(labels, str | os.PathLike):
        return open_labels(labels)
    raise InputError(f"labels must be a Labels object or a path, got {type(labels).__name__}")


def _token_fingerprint(tokens: TokenSource, index: int, input_ids: np.ndarray | None = None) -> int:
    """The input fingerprint of token sequence ``index`` (``input_ids``, if already read), errors naming it."""
    ids = tokens[index] if input_ids is None else input_ids
    return input_fingerprint(ids, where=f"tokens {tokens.describe()}, sequence {index}")


def _first_fingerprint_mismatch(tokens: TokenSource, stored: np.ndarray) -> int | None:
    for i in range(len(tokens)):
        if _token_fingerprint(tokens, i) != int(stored[i]):
            return i
    return None


class SparseLabelDataset(torch.utils.data.Dataset):
    """Item ``i`` is sequence ``i``'s sparse labels (and input ids when ``tokens`` is given) as a SparseItem.

    ``labels``: a Labels object or a path (file, shard directory, manifest) or URL (``s3://...``; open it with
    :func:`~sparselabels.open_labels` to pass ``storage_options`` or ``cache_dir``). ``tokens``: anything
    :func:`~sparselabels.data.tokens.open_tokens` accepts (``token_column`` names a ``datasets`` column).
    ``mask_column`` names a per-token column of a ``datasets`` source (0/1, or ``labels`` with -100) and
    ``masks`` is any other token source of such values; either gives each item a ``loss_mask`` of the
    positions to train (rules in :mod:`sparselabels.data.masks`; lengths checked here, values per item).
    ``check_labels=False`` skips the reader's per-read label-rule pass (ascending ids, counts summing to
    ``rounds``), for files already checked with ``sparselabels validate``; :func:`collate` still checks every id
    against the vocabulary. ``labels_are_shifted``: whether the training code pairs ``labels[:, t]`` with
    ``logits[:, t-1]``; True is refused (AlignmentError) for labels stored as ``"next-token"``, which pair with
    ``logits[:, t]`` as they are.
    Pickles by path (labels and file-backed tokens), so it works with ``DataLoader(num_workers>0)``.
    """

    def __init__(
        self,
        labels: Labels | str | os.PathLike,
        tokens: Any = None,
        *,
        token_column: str = "input_ids",
        verify_fingerprints: str = "lazy",
        check_labels: bool = True,
        mask_column: str | None = None,
        masks: Any = None,
        labels_are_shifted: bool = False,
    ) -> None:
        if verify_fingerprints not in VERIFY_FINGERPRINTS:
            raise InputError(f"verify_fingerprints must be one of {VERIFY_FINGERPRINTS}, got {verify_fingerprints!r}")
        self.labels = _open_labels(labels)
        check_label_convention(self.labels.metadata, labels_are_shifted=bool(labels_are_shifted),
                               where=f"labels {_describe(self.labels)}")
        self.check_labels = bool(check_labels)
        self.tokens = None if tokens is None else open_tokens(tokens, column=token_column)
        self.vocab_size = self.labels.vocab_size
        self.rounds = self.labels.rounds if self.labels.value_kind == "count" else None
        self.value_kind = self.labels.value_kind
        self._check_fingerprints = False
        if self.tokens is not None:
            self._check_alignment(verify_fingerprints)
        self.masks, self.mask_kind = mask_source(self.tokens, mask_column, masks)

    def _check_alignment(self, verify: str) -> None:
        labels, tokens = self.labels, self.tokens
        assert tokens is not None
        where = f"labels {_describe(labels)} and tokens {tokens.describe()}"
        if len(labels) != len(tokens):
            raise AlignmentError(f"{where}: {len(labels)} label sequences but {len(tokens)} token sequences")
        label_lengths = np.asarray(labels.sequence_lengths, dtype=np.int64)
        token_lengths = np.asarray(tokens.lengths(), dtype=np.int64)
        bad = np.flatnonzero(label_lengths != token_lengths)
        if bad.size:
            i = int(bad[0])
            raise AlignmentError(
                f"{where}: sequence {i} has {label_lengths[i]} label positions but {token_lengths[i]} tokens "
                f"({bad.size} sequences differ in length; labels position t is the target of input token t, "
                "so lengths must be equal)"
            )
        if verify != "off":
            check_source(labels.metadata, tokens, where)
        if verify == "all":
            stored = labels.fingerprints  # (a shard set concatenates its shards' columns: only when needed)
            if stored is None:
                raise InputError(f"{where}: verify_fingerprints='all', but the labels store no input fingerprints")
            i = _first_fingerprint_mismatch(tokens, stored)
            if i is not None:
                raise self._fingerprint_error(i, int(stored[i]))
        # per item, wherever the item's labels carry a fingerprint (a shard set may store them only in some shards)
        self._check_fingerprints = verify == "lazy"

    def _fingerprint_error(self, index: int, stored: int) -> AlignmentError:
        assert self.tokens is not None
        found = _token_fingerprint(self.tokens, index)
        return AlignmentError(
            f"labels {_describe(self.labels)} and tokens {self.tokens.describe()}: sequence {index}: the tokens' "
            f"input fingerprint is {found:#018x}, the labels were computed from input {stored:#018x} (same length, "
            "different tokens: the two sources are not in the same order, or come from different data)"
        )

    @property
    def label_convention(self) -> str | None:
        """The stored convention (``"next-token"``: position t targets the logits at t, no shift), or None."""
        return label_convention(self.labels.metadata)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> SparseItem:
        return self._item(self.labels.read(index, check=self.check_labels), index)

    def __getitems__(self, indices: list[int]) -> list[SparseItem]:
        """A batch of items, their labels read together (``DataLoader`` calls this with a sampler's batch): a
        remote store fetches the batch's records concurrently, in as few requests as they allow."""
        seqs = self.labels.read_many(indices, check=self.check_labels)
        return [self._item(seq, index) for seq, index in zip(seqs, indices, strict=True)]

    def _item(self, seq, index: int) -> SparseItem:
        i = int(seq.index) if seq.index is not None else int(index)
        input_ids = None
        if self.tokens is not None:
            input_ids = self.tokens[i]
            if input_ids.shape[0] != seq.num_positions:
                raise AlignmentError(
                    f"sequence {i}: {seq.num_positions} label positions but {input_ids.shape[0]} tokens "
                    f"in {self.tokens.describe()}"
                )
            if self._check_fingerprints and seq.fingerprint is not None \
                    and _token_fingerprint(self.tokens, i, input_ids) != seq.fingerprint:
                raise self._fingerprint_error(i, seq.fingerprint)
        loss_mask = None
        if self.masks is not None:
            loss_mask = read_position_mask(self.masks, i, input_ids, self.mask_kind, self.masks.describe())
        return SparseItem(i, seq.ids, seq.counts, seq.indptr, input_ids, self.rounds, self.vocab_size, loss_mask)

    def __repr__(self) -> str:
        tok = f", tokens={self.tokens.describe()!r}" if self.tokens is not None else ""
        return f"SparseLabelDataset({_describe(self.labels)!r}{tok}, sequences={len(self)})"


def _describe(labels: Labels) -> str:
    return str(getattr(labels, "path", None) or getattr(labels, "_source", None) or repr(labels))
