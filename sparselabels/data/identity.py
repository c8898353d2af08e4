"""What ties a label store to its inputs: the token source's fingerprint, the tokenizer's, the label convention.

``generate`` stores ``source_fingerprint`` (the whole token source), ``tokenizer_fingerprint`` (the teacher's
tokenizer files) and ``label_convention`` in the metadata. Here are the cheap checks against them:
:class:`~sparselabels.data.SparseLabelDataset` compares the source fingerprint at construction, and
:func:`check_tokenizer` compares a student's tokenizer, so a mismatch is found before training starts rather
than inside a DataLoader worker (or never).

Label convention ``"next-token"``: position ``t`` holds the teacher's distribution of the token *after* input
token ``t``, the target of a causal LM's logits at ``t`` as they come out of the model. Do not shift: Hugging
Face's ``labels[:, 1:]`` against ``logits[:, :-1]`` is already done.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from sparselabels.errors import AlignmentError, CompatibilityError, InputError
from sparselabels.format.fingerprint import input_fingerprint

NEXT_TOKEN = "next-token"
LABEL_CONVENTIONS = (NEXT_TOKEN,)


def sampled_sequences(n: int) -> list[int]:
    """The sequences a whole-source fingerprint reads: the first, middle and last of ``n`` (cheap at any size)."""
    return sorted({0, n // 2, n - 1}) if n else []


def source_fingerprint(src, lengths: np.ndarray | None = None) -> str:
    """``tokens-blake2b:<hex>`` over the sequence count, every length, and the first, middle and last sequences.

    Cheap at any size (reads three sequences); catches resuming, sharding or training against another source.
    """
    if lengths is None:
        lengths = np.asarray(src.lengths(), dtype=np.int64)
    h = hashlib.blake2b(digest_size=16)
    n = len(lengths)
    h.update(n.to_bytes(8, "little"))
    h.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    for i in sampled_sequences(n):
        h.update(input_fingerprint(np.asarray(src[i]), where=f"tokens, sequence {i}").to_bytes(8, "little"))
    return f"tokens-blake2b:{h.hexdigest()}"


def stream_fingerprint(head: list[np.ndarray]) -> str:
    """``stream-blake2b:<hex>`` over the first sequences of a token stream (count, then each one's input
    fingerprint): what identifies a source that can only be read once, in order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(len(head).to_bytes(8, "little"))
    for i, seq in enumerate(head):
        h.update(input_fingerprint(seq, where=f"tokens, sequence {i}").to_bytes(8, "little"))
    return f"stream-blake2b:{h.hexdigest()}"


def check_source(metadata: dict, tokens, where: str) -> None:
    """AlignmentError when ``metadata`` records a whole-source fingerprint that ``tokens`` does not have (not
    checked for one shard of a multi-rank run, which holds a slice; its per-item fingerprints still are)."""
    stored = metadata.get("source_fingerprint")
    if not isinstance(stored, str) or not stored.startswith("tokens-blake2b:"):
        return
    shard = metadata.get("shard")
    if isinstance(shard, dict) and shard.get("world_size", 1) != 1:
        return  # one rank's shard: the fingerprint is of the whole source, the labels of a slice of it
    found = source_fingerprint(tokens)
    if found != stored:
        raise AlignmentError(
            f"{where}: the labels were computed from token source {stored}, but these tokens are {found} (same "
            "sequence count and lengths, other tokens: another order or other data)"
        )


def label_convention(metadata: dict) -> str | None:
    """The stored ``label_convention`` (None when the file does not say)."""
    value = metadata.get("label_convention")
    return value if isinstance(value, str) else None


def check_label_convention(metadata: dict, *, labels_are_shifted: bool, where: str) -> None:
    """Refuse a training setup that shifts labels the store says must not be shifted.

    ``labels_are_shifted=True`` declares that the training code pairs ``labels[:, t]`` with ``logits[:, t-1]``
    (Hugging Face's shift); stored ``"next-token"`` labels must be paired with ``logits[:, t]``.
    """
    convention = label_convention(metadata)
    if labels_are_shifted and convention == NEXT_TOKEN:
        raise AlignmentError(
            f"{where}: label_convention is 'next-token': labels position t is already the target of the logits at "
            "t (the teacher's distribution of the token after input t). Pair them with logits[:, t] unshifted "
            "(labels_are_shifted=False); shifting as for Hugging Face input-id labels trains on the wrong targets"
        )


def _tokenizer_dir(tokenizer: Any) -> Path:
    """A directory of tokenizer files: a path, a hub id in the local cache, or a tokenizer object's
    ``name_or_path``."""
    from sparselabels.pipeline.teacher import resolve_model

    ref = tokenizer if isinstance(tokenizer, str | os.PathLike) else getattr(tokenizer, "name_or_path", None)
    if not ref:
        raise InputError(f"tokenizer: pass a directory, a hub id or a tokenizer with name_or_path, got "
                         f"{type(tokenizer).__name__}")
    return resolve_model(ref)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The ``tokenizer_fingerprint`` ``generate`` stores, of a tokenizer directory, hub id or loaded tokenizer."""
    from sparselabels.pipeline.teacher import files_fingerprint, tokenizer_files

    directory = _tokenizer_dir(tokenizer)
    files = tokenizer_files(directory)
    if not files:
        raise InputError(f"tokenizer {str(directory)!r}: holds no tokenizer files (tokenizer.json, ...)")
    return files_fingerprint(files)


def check_tokenizer(store, tokenizer: Any) -> str:
    """Check that ``tokenizer`` is the one the labels were made with; returns its fingerprint.

    ``store``: a Labels object, a path to one, or a SparseLabelDataset. ``tokenizer``: a directory, a hub id
    in the local cache, or a loaded tokenizer (its ``name_or_path`` is read). Raises CompatibilityError on a
    mismatch, InputError when the store records no tokenizer fingerprint.
    """
    metadata, name = _metadata_of(store)
    stored = metadata.get("tokenizer_fingerprint")
    if not isinstance(stored, str):
        raise InputError(f"labels {name}: store no tokenizer_fingerprint (the teacher had no tokenizer files); "
                         "nothing to check the tokenizer against")
    found = tokenizer_fingerprint(tokenizer)
    if found != stored:
        raise CompatibilityError(
            f"labels {name} were made with tokenizer {stored}, but {str(_tokenizer_dir(tokenizer))!r} is {found}: "
            "label ids would mean other tokens to this student"
        )
    return found


def _metadata_of(store: Any) -> tuple[dict, str]:
    labels = getattr(store, "labels", store)  # a SparseLabelDataset holds its Labels
    if isinstance(labels, str | os.PathLike):
        from sparselabels.io.open import open_labels

        with open_labels(labels, verify="structure") as f:
            return dict(f.metadata), os.fspath(labels)
    metadata = getattr(labels, "metadata", None)
    if not isinstance(metadata, dict):
        raise InputError(f"expected labels, a path or a SparseLabelDataset, got {type(store).__name__}")
    return metadata, str(getattr(labels, "path", None) or type(labels).__name__)
