"""Input fingerprints: a 64-bit identity of a sequence's input token ids, to join labels to tokens.

fingerprint = BLAKE2b with an 8-byte digest over the token ids written as little-endian uint32, read as a
little-endian unsigned integer. Any language's BLAKE2b reproduces it (spec/FORMAT.md, "Fingerprints").
"""

from __future__ import annotations

import hashlib

import numpy as np

from sparselabels.errors import InputError


def input_fingerprint(token_ids, *, where: str = "input_fingerprint") -> int:
    """The 64-bit fingerprint of one sequence of input token ids (any integer array-like, values < 2**32).
    ``where`` names the sequence in errors (e.g. ``"tokens 'a.npy', sequence 3"``)."""
    arr = np.asarray(token_ids)
    if hasattr(token_ids, "detach"):  # a torch tensor
        arr = token_ids.detach().cpu().numpy()
    if arr.ndim != 1:
        raise InputError(f"{where}: token ids must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":  # issubdtype(..., np.integer) admits timedelta64
        raise InputError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << 32):
        bad = int(np.flatnonzero((arr < 0) | (arr > (1 << 32) - 1))[0])
        raise InputError(f"{where}, position {bad}: token id {int(arr[bad])} is outside 0..2**32-1")
    data = np.ascontiguousarray(arr, dtype="<u4").tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
