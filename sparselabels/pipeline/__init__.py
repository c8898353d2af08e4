"""The labeling pipeline: teacher model → labels (``generate``), dumped teacher outputs → labels (``convert``),
labels → HDF5 (``export_hdf5``). Imported lazily: it needs torch and transformers."""

from __future__ import annotations

from sparselabels.pipeline.convert import convert
from sparselabels.pipeline.export import export_hdf5
from sparselabels.pipeline.generate import generate

__all__ = ["convert", "export_hdf5", "generate"]
