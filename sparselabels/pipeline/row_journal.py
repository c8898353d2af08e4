"""A record of the input rows a conversion has labeled, so that a resumed conversion cannot mix two inputs.

``convert(..., resume=True)`` keeps the sequences of the partial file and labels the rest from the input it is
given. The settings and the input's shape are in the partial file's metadata, but not its values: an input
replaced between the crash and the resume (same name, shape and dtype, other values) would give a file that
validates and holds labels of two inputs. The journal ``<out>.partial.rows`` holds one SHA-256 digest (16
bytes kept) of each sequence's source rows, appended before the sequence is handed to the writer, so it always
covers every sequence the partial file can hold. A resume hashes the kept sequences' rows again and refuses
other contents; the journal is removed when the label file is finished.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sparselabels.errors import CompatibilityError

DIGEST_BYTES = 16
SUFFIX = ".rows"


def journal_path(partial: Path) -> Path:
    """Where the journal of the partial file ``partial`` lives."""
    return partial.with_name(partial.name + SUFFIX)


def row_digest() -> hashlib._Hash:
    """A fresh digest for one sequence's rows (update it with each block's bytes, in order)."""
    return hashlib.sha256()


class RowJournal:
    """Digests of the source rows of sequences ``0..n-1``, appended one by one (see the module docstring)."""

    def __init__(self, partial: Path, *, kept: int) -> None:
        """Open the journal of ``partial`` for a writer that kept ``kept`` sequences (0: a new file)."""
        self.path = journal_path(partial)
        self._stored: list[bytes] = []
        if kept:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            if len(data) < kept * DIGEST_BYTES:
                raise CompatibilityError(
                    f"{partial}: cannot resume: {self.path.name} records the input rows of "
                    f"{len(data) // DIGEST_BYTES} sequences, the partial file holds {kept}, so the input cannot be "
                    "checked to be the one they were converted from; start again with overwrite=True")
            self._stored = [data[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] for i in range(kept)]
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.ftruncate(self._fd, kept * DIGEST_BYTES)
        self._at = kept * DIGEST_BYTES

    def check(self, sequence: int, digest: bytes, where: str) -> None:
        """Refuse a kept sequence whose rows differ from those it was converted from."""
        if digest[:DIGEST_BYTES] != self._stored[sequence]:
            raise CompatibilityError(
                f"{where}: cannot resume: the rows of sequence {sequence} differ from those the partial file's "
                "labels were converted from (the input was replaced or changed); start again with overwrite=True")

    def append(self, digest: bytes) -> None:
        """Record the next sequence's digest (before the sequence is written)."""
        entry = digest[:DIGEST_BYTES]
        done = 0
        while done < len(entry):
            done += os.pwrite(self._fd, entry[done:], self._at + done)
        self._at += len(entry)

    def close(self, *, remove: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove:
            self.path.unlink(missing_ok=True)
