"""What ``generate`` checks before the teacher's weights load: the output path, the tokens against the config.

Loading a large teacher takes minutes; a typo in a path, a token file of the wrong shape, an id outside the
vocabulary or a sequence longer than the teacher's context must cost seconds. These checks need at most the
model's ``config.json`` (:class:`~sparselabels.pipeline.teacher.TeacherSpec`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparselabels.errors import InputError
from sparselabels.pipeline.teacher import TeacherSpec
from sparselabels.pipeline.windows import WindowPolicy

_SCAN_BLOCK = 1 << 24  # tokens per min/max pass: bounded memory, whatever the source's size


def check_out(out: str | os.PathLike) -> Path:
    """``out`` is (or will be) a directory: an existing file there is an error, not something to write into."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"out {str(path)!r} is an existing file; generate writes a directory (shards and "
                         "manifest.json)")
    return path


def check_context(lengths: np.ndarray, spec: TeacherSpec, windows: WindowPolicy | None, where: str) -> None:
    """Every sequence fits the teacher's context, or is labeled in windows no longer than it."""
    limit, key = spec.context, spec.context_key
    if windows is not None:
        if limit is not None and windows.max_length > limit:
            raise InputError(f"max_length {windows.max_length} is more than the teacher's context of {limit} "
                             f"positions (config {key})")
        return
    if limit is None:
        return
    bad = np.flatnonzero(lengths > limit)
    if bad.size:
        i = int(bad[0])
        raise _too_long(where, i, int(lengths[i]), spec, f"; {bad.size} sequence(s) longer")


def check_sequence_fits(index: int, length: int, spec: TeacherSpec, windows: WindowPolicy | None,
                        where: str) -> None:
    """:func:`check_context` for one sequence of a stream, as it is read."""
    if windows is None and spec.context is not None and length > spec.context:
        raise _too_long(where, index, length, spec, "")


def _too_long(where: str, index: int, length: int, spec: TeacherSpec, more: str) -> InputError:
    return InputError(
        f"tokens {where}: sequence {index} has {length} tokens, more than the teacher's context of {spec.context} "
        f"positions (config {spec.context_key}{more}); pass max_length (--max-length) to label long sequences in "
        "windows"
    )


def first_bad_token(src, seqs: range, input_size: int) -> tuple[int, int, int] | None:
    """(sequence, position, id) of the first token id outside ``0..input_size-1`` in sequences ``seqs``."""
    flat = src.concatenated(seqs.start, seqs.stop) if seqs else None
    if flat is None:
        for i in seqs:
            found = _first_bad(np.asarray(src[i]), input_size)
            if found is not None:
                return i, found, int(src[i][found])
        return None
    for lo in range(0, flat.shape[0], _SCAN_BLOCK):
        block = flat[lo : lo + _SCAN_BLOCK]
        found = _first_bad(block, input_size)
        if found is not None:
            lengths = np.asarray(src.lengths()[seqs.start : seqs.stop], dtype=np.int64)
            ends = np.cumsum(lengths)
            at = lo + found
            k = int(np.searchsorted(ends, at, side="right"))
            start = int(ends[k - 1]) if k else 0
            return seqs.start + k, at - start, int(flat[at])
    return None


def _first_bad(ids: np.ndarray, input_size: int) -> int | None:
    if not ids.size:
        return None
    if int(ids.min()) >= 0 and int(ids.max()) < input_size:
        return None
    return int(np.flatnonzero((ids < 0) | (ids >= input_size))[0])


def check_token_ids(src, seqs: range, input_size: int | None) -> None:
    """Every token id of sequences ``seqs`` is below the config's vocabulary (one pass, in blocks)."""
    if input_size is None:
        return
    found = first_bad_token(src, seqs, input_size)
    if found is not None:
        i, t, token = found
        raise InputError(f"tokens: sequence {i}, position {t}: token id {token} is outside the teacher's input "
                         f"vocabulary 0..{input_size - 1}")
