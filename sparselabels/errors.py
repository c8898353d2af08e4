"""The library's exceptions.

Every error sparselabels raises on purpose derives from :class:`SparseLabelsError`, so callers can catch
one type. Errors about files say which file and, where known, which section, chunk, sequence, position
and field; errors about inputs say which sequence, position and field.
"""

from __future__ import annotations

import operator


class SparseLabelsError(Exception):
    """Base class of every error raised on purpose by sparselabels."""


class FormatError(SparseLabelsError, ValueError):
    """A file is not a valid sparse-label file: corrupt, truncated, hostile or of an unknown version."""


class IncompleteFileError(FormatError):
    """A file was never finalised (its writer was interrupted); ``LabelWriter(..., resume=True)`` continues it."""


class ChecksumError(FormatError):
    """Stored bytes do not match their recorded CRC-32."""


class InputError(SparseLabelsError, ValueError):
    """Data handed to the library (labels, logits, tokens, options) breaks a documented rule."""


class CompatibilityError(SparseLabelsError):
    """Files or settings that must agree do not (vocabulary, rounds, value kind, teacher, codec, ...)."""


class AlignmentError(SparseLabelsError):
    """Labels and token sequences do not line up (length or input fingerprint differs)."""


class OutputExistsError(SparseLabelsError, FileExistsError):
    """The output of a writer, merge, export or labeling run already exists and neither overwriting nor resuming
    was asked for."""


class ClosedError(SparseLabelsError, ValueError):
    """A reader, shard set or writer was used after ``close()`` (a ValueError, as for Python's own files)."""


def where(**parts: object) -> str:
    """Format a location such as ``file 'a.slbl', sequence 3, position 17`` from the parts that are known."""
    out = []
    for key, value in parts.items():
        if value is None:
            continue
        label = key.replace("_", " ")
        out.append(f"{label} {value!r}" if isinstance(value, str) else f"{label} {value}")
    return ", ".join(out)


def check_int(name: str, value: object, low: int | None, *, optional: bool = False) -> int | None:
    """``value`` as an int when it is an integer >= ``low`` (Python or numpy, never bool); else InputError.

    One rule for every integer option, so that 2.5, "3" or True never become 2, 3 or 1 silently."""
    if optional and value is None:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or (low is not None and number < low):
        bound = "" if low is None else f" >= {low}"
        raise InputError(f"{name} must be an integer{bound}{' or None' if optional else ''}, got {value!r}")
    return number
