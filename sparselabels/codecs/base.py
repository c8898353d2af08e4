"""The interface every codec implements.

A codec turns the labels of a *chunk* (a run of whole sequences that the writer encodes together) into
bytes, and one sequence's bytes back into CSR arrays. The container (header, chunks, index, footer; see
spec/FORMAT.md) is the same for every codec: it stores, for each chunk, an optional codec *table* (bytes
shared by the chunk's sequences, e.g. a dictionary) and, for each sequence, one *record* starting at an
8-byte-aligned offset. The container records each sequence's position count, label count and record size,
so a codec never stores them again.

Decoding is the security boundary: ``decode`` receives bytes from an untrusted file. It must check every
length and every value it reads before it uses it to index anything, and raise
:class:`~sparselabels.errors.FormatError` (never crash, hang or allocate more than ``O(num_positions +
num_labels)``) on anything inconsistent. The caller adds the file, chunk and sequence to the message.
Semantic checks that do not depend on the codec (ids ascending and below the vocabulary, counts summing to
``rounds``) are done by the caller on the decoded arrays, unless the codec declares ``checks_label_rules``: it
then checks them itself while decoding (cheaper than a second pass) when given ``vocab_size`` and ``rounds``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sparselabels.errors import FormatError
from sparselabels.format.checks import LabelProblem
from sparselabels.format.values import VALUE_DTYPES, VALUE_KINDS

__all__ = ["VALUE_DTYPES", "VALUE_KINDS", "ChunkInput", "Codec", "EncodedChunk", "LabelRuleError", "padded"]


class LabelRuleError(FormatError):
    """A record that decodes, but to labels breaking the rules; raised by codecs that check them inline.

    ``problem`` is what :func:`~sparselabels.format.checks.check_labels` reports for the decoded labels, so the
    reader's message is the same whichever side checked."""

    def __init__(self, problem: LabelProblem) -> None:
        super().__init__(problem.describe(), **problem.location())
        self.problem = problem


@dataclass(frozen=True)
class ChunkInput:
    """The validated labels of ``n`` consecutive sequences, concatenated.

    ``ids``: uint32[M]; ``values``: uint8[M] (count) or float16[M] (prob); ``labels_per_position``:
    uint32[P], the number of labels of each position; ``seq_positions`` and ``seq_labels``: int64[n], the
    number of positions and labels of each sequence (sum to P and M).
    """

    ids: np.ndarray
    values: np.ndarray
    labels_per_position: np.ndarray
    seq_positions: np.ndarray
    seq_labels: np.ndarray
    value_kind: str
    vocab_size: int

    @classmethod
    def from_sequences(cls, sequences, value_kind: str, vocab_size: int) -> ChunkInput:
        """The chunk of ``(ids, values, indptr)`` sequences, for tests and benchmarks that drive a codec directly
        (the writer fills its chunks from its own buffers). Nothing is validated here."""
        return cls(
            ids=np.concatenate([s[0] for s in sequences]).astype(np.uint32),
            values=np.concatenate([s[1] for s in sequences]).astype(VALUE_DTYPES[value_kind]),
            labels_per_position=np.concatenate([np.diff(s[2]) for s in sequences]).astype(np.uint32),
            seq_positions=np.array([len(s[2]) - 1 for s in sequences], dtype=np.int64),
            seq_labels=np.array([len(s[0]) for s in sequences], dtype=np.int64),
            value_kind=value_kind,
            vocab_size=vocab_size,
        )


@dataclass(frozen=True)
class EncodedChunk:
    """A codec's output for one chunk.

    ``table``: uint8[*] (may be empty), the bytes shared by the chunk's records. ``records``: uint8[*], the
    records one after another, each padded with zero bytes to a multiple of 8. ``record_sizes``: int64[n],
    the padded size of each record (so they sum to ``len(records)``).
    """

    table: np.ndarray
    records: np.ndarray
    record_sizes: np.ndarray


class Codec(abc.ABC):
    """One way of laying out a sequence's labels as bytes. Stateless; one instance serves all files."""

    name: ClassVar[str]
    #: Upper bounds on positions and labels per byte of record that any valid record respects. The reader
    #: rejects an index that claims more before decoding, so a hostile index cannot make ``decode``
    #: allocate more than a small multiple of the record's size.
    max_positions_per_byte: ClassVar[int] = 8
    max_labels_per_byte: ClassVar[int] = 8
    #: Optional capability. True: ``decode`` also accepts ``vocab_size`` and ``rounds`` keywords and, when they
    #: are given, guarantees every label rule of spec/FORMAT.md (the ones ``check_labels`` enforces) for what it
    #: returns, raising :class:`LabelRuleError` otherwise; the reader then skips its own label-rule pass.
    checks_label_rules: ClassVar[bool] = False
    #: Whether chunks carry a codec table; a codec without one (raw) requires every ``table_size`` to be 0.
    uses_tables: ClassVar[bool] = True

    @classmethod
    def over_capacity(cls, positions: np.ndarray, labels: np.ndarray, record_sizes: np.ndarray) -> np.ndarray:
        """Which records claim more positions or labels than their size can hold (bool mask): the bound the
        reader checks on an index and the writer on chunks it keeps when resuming."""
        sizes = np.asarray(record_sizes, dtype=np.int64)
        return (np.asarray(positions) > sizes * cls.max_positions_per_byte) | (
            np.asarray(labels) > sizes * cls.max_labels_per_byte)

    def unencodable(self, ids: np.ndarray, indptr: np.ndarray) -> LabelProblem | None:
        """The first label of a valid sequence this codec cannot store, or None (the writer refuses such a sequence
        before it is buffered, rather than write a record that does not decode)."""
        return None

    @abc.abstractmethod
    def encode_chunk(self, chunk: ChunkInput) -> EncodedChunk:
        """Encode the sequences of one chunk. Inputs are already validated; output is deterministic."""

    @abc.abstractmethod
    def decode(
        self,
        record: np.ndarray,
        table: np.ndarray,
        num_positions: int,
        num_labels: int,
        value_kind: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode one record (uint8 view, exactly its padded size) into ``(ids, values, indptr)``.

        ``ids`` uint32[num_labels], ``values`` of the value kind's dtype, ``indptr`` int64[num_positions+1]
        with ``indptr[0] == 0`` and ``indptr[-1] == num_labels``. Views into ``record`` are allowed (and
        preferred); the caller never writes to them. Raises FormatError on any inconsistency.
        """


def padded(nbytes: int, alignment: int = 8) -> int:
    """``nbytes`` rounded up to a multiple of ``alignment``."""
    return (nbytes + alignment - 1) // alignment * alignment
