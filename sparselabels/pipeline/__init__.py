"""The labeling pipeline: teacher model → labels (``generate``), dumped teacher outputs → labels (``convert``),
labels → HDF5 (``export_hdf5``). Imported lazily: it needs the ``[hf]`` extra (torch, transformers, h5py, ...)."""

from __future__ import annotations

from sparselabels._extras import require

require("sparselabels.pipeline (generate, convert, export_hdf5)", "torch", extras="hf")

from sparselabels.pipeline.convert import convert
from sparselabels.pipeline.export import export_hdf5
from sparselabels.pipeline.generate import generate

__all__ = ["convert", "export_hdf5", "generate"]
