"""The on-disk format: fixed structures, the metadata block, label rules and fingerprints (spec/FORMAT.md)."""

from sparselabels.format.checks import LabelProblem, check_labels
from sparselabels.format.fingerprint import input_fingerprint
from sparselabels.format.layout import (
    ALIGNMENT,
    CHUNK_HEADER_SIZE,
    FLAG_FINGERPRINTS,
    FOOTER_SIZE,
    HEADER_SIZE,
    MAGIC,
    VERSION_MAJOR,
    VERSION_MINOR,
    ChunkHeader,
    Footer,
    Header,
)

__all__ = [
    "ALIGNMENT",
    "CHUNK_HEADER_SIZE",
    "FLAG_FINGERPRINTS",
    "FOOTER_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "ChunkHeader",
    "Footer",
    "Header",
    "LabelProblem",
    "check_labels",
    "input_fingerprint",
]
