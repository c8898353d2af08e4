"""What a resumed job checks of an output it finds already finished.

``LabelWriter(resume=True)`` continues a ``.partial`` file and checks its settings; a job killed after its
file was renamed into place has nothing left to write, and its rerun must only confirm that the finished
file is the one it would have written (same settings, same number of sequences) instead of failing or
silently accepting another job's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparselabels.errors import CompatibilityError
from sparselabels.format import metadata as meta_format
from sparselabels.io.reader import LabelFile


def check_finished(path: Path, *, vocab_size: int, value_kind: str, rounds: int | None, codec: str,
                   metadata: dict[str, Any], num_sequences: int | None, expected_from: str) -> None:
    """Raise CompatibilityError unless ``path`` holds ``num_sequences`` sequences written with these settings
    (``None``: any number, for a source whose length is not known in advance).

    ``expected_from`` names where ``num_sequences`` comes from, for the message ("this rank's slice", ...)."""
    expected = meta_format.build(vocab_size=vocab_size, value_kind=value_kind, rounds=rounds, codec=codec,
                                 extra=metadata)
    with LabelFile(path) as f:
        meta_format.check_same_settings(f.metadata, expected, where=str(path), stored_in="the finished file")
        if num_sequences is not None and len(f) != num_sequences:
            raise CompatibilityError(f"{path}: holds {len(f)} sequences but {expected_from} has {num_sequences}")
