"""The library's exceptions.

Every error sparselabels raises on purpose derives from :class:`SparseLabelsError`, so callers can catch
one type. Errors about files say which file and, where known, which section, chunk, sequence, position
and field; errors about inputs say which sequence, position and field. The message says it in words and the
attributes ``path``, ``chunk``, ``sequence``, ``position``, ``label`` and ``field`` say it to a program (None
where unknown or not applicable).
"""

from __future__ import annotations

import operator
from typing import Any

#: the attributes that say where an error is
LOCATION = ("path", "chunk", "sequence", "position", "label", "field")


class SparseLabelsError(Exception):
    """Base class of every error raised on purpose by sparselabels.

    ``path`` (the file), ``chunk``, ``sequence``, ``position`` (within the sequence), ``label`` (index within the
    position) and ``field`` (the field or array that breaks a rule): where the error is, None where unknown."""

    path: str | None = None
    chunk: int | None = None
    sequence: int | None = None
    position: int | None = None
    label: int | None = None
    field: str | None = None

    def __init__(self, *args: object, **where: Any) -> None:
        super().__init__(*args)
        self.at(**where)

    def at(self, **where: Any) -> SparseLabelsError:
        """Record where the error is (parts already known are kept; None adds nothing); returns the error, so
        ``raise FormatError(...).at(path=p, sequence=i)`` reads as one statement."""
        for key, value in where.items():
            if key not in LOCATION:
                raise TypeError(f"unknown location {key!r} (one of {LOCATION})")
            if value is not None and getattr(self, key) is None:
                setattr(self, key, value if key in ("path", "field") else int(value))
        return self

    @property
    def location(self) -> dict[str, Any]:
        """The known parts of where the error is."""
        return {key: getattr(self, key) for key in LOCATION if getattr(self, key) is not None}

    def __reduce__(self):  # pickles (DataLoader workers send errors home) with the location
        return _rebuild, (type(self), self.args, self.location)


def _rebuild(cls: type[SparseLabelsError], args: tuple, location: dict[str, Any]) -> SparseLabelsError:
    error = cls.__new__(cls, *args)
    Exception.__init__(error, *args)
    return error.at(**location)


def reworded(exc: SparseLabelsError, message: str, **where: Any) -> SparseLabelsError:
    """An error of ``exc``'s class with ``message``, ``exc``'s location and ``where`` (e.g. the file it is in)."""
    error = _rebuild(type(exc), (message,), exc.location)
    return error.at(**where)


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
