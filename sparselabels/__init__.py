"""sparselabels: store, read and train from Random-Sampling KD teacher labels.

The public API is small; see the README and docs/. Heavy parts (torch samplers, losses, the labeling pipeline)
are imported on first use so that reading and writing label files needs only numpy, numba and msgpack; a part
whose optional packages are missing raises MissingExtraError (an ImportError) naming the extra to install.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from sparselabels._extras import MissingExtraError, as_missing_extra
from sparselabels._version import __version__
from sparselabels.errors import (
    AlignmentError,
    ChecksumError,
    ClosedError,
    CompatibilityError,
    FormatError,
    IncompleteFileError,
    InputError,
    OutputExistsError,
    SparseLabelsError,
)
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.io.reader import LabelFile, Labels
from sparselabels.io.sequence import LabelSpan
from sparselabels.io.writer import LabelWriter

_LAZY = {
    "open_labels": "sparselabels.io.open",
    "LabelShards": "sparselabels.io.shards",
    "write_manifest": "sparselabels.io.manifest",
    "merge": "sparselabels.io.merge",
    "validate": "sparselabels.io.validate",
    "ValidationReport": "sparselabels.io.validate",
    "sample_counts": "sparselabels.sampling",
    "topk_labels": "sparselabels.sampling",
    "SampledLabels": "sparselabels.sampling",
    "generate": "sparselabels.pipeline",
    "convert": "sparselabels.pipeline",
    "export_hdf5": "sparselabels.pipeline",
}
_SUBMODULES = ("data", "loss", "sampling", "synthetic", "codecs", "format", "pipeline", "hf")
# modules that need an extra: their names are attributes, but not in __all__ (``import *`` must work in the core)
_EXTRA_MODULES = ("sparselabels.sampling", "sparselabels.pipeline")

__all__ = [
    "AlignmentError",
    "ChecksumError",
    "ClosedError",
    "CompatibilityError",
    "FormatError",
    "IncompleteFileError",
    "InputError",
    "LabelFile",
    "LabelSpan",
    "LabelWriter",
    "Labels",
    "MissingExtraError",
    "OutputExistsError",
    "SparseLabelsError",
    "__version__",
    "input_fingerprint",
    *(name for name, module in _LAZY.items() if module not in _EXTRA_MODULES),
]


def __getattr__(name: str) -> Any:
    if name == "Sequence":  # the name LabelSpan had in sparselabels 0.1
        warnings.warn("sparselabels.Sequence is deprecated; use sparselabels.LabelSpan", DeprecationWarning,
                      stacklevel=2)
        return LabelSpan
    module = _LAZY.get(name, f"sparselabels.{name}" if name in _SUBMODULES else None)
    if module is None:
        raise AttributeError(f"module 'sparselabels' has no attribute {name!r}")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:  # an optional package: say which extra installs it
        error = as_missing_extra(exc, f"sparselabels.{name}")
        if error is exc:
            raise
        raise error from exc
    return getattr(loaded, name) if name in _LAZY else loaded


def __dir__() -> list[str]:
    return sorted({*__all__, *_LAZY, *_SUBMODULES})
