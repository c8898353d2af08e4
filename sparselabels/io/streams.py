"""Random streams of label files: inputs whose draws overlap are refused before they are merged.

``generate`` records ``random_stream = {"key": <16 hex>, "first_row": R, ...}``: the file's labels were drawn
with Philox key ``key`` at rows ``R .. R + positions - 1``. The shards of one run share a key and cover
disjoint rows; two parts of a corpus labeled separately get different keys. Two inputs with the same key and
overlapping rows reuse draws (the same part twice, say): their labels are not independent samples, and a
merge would hide it. Files without the key (other writers) are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable

from sparselabels.errors import CompatibilityError


def stream_rows(metadata: dict, num_positions: int) -> tuple[str, int, int] | None:
    """(key, first row, end row) of a file's draws, or None when it records no stream."""
    stream = metadata.get("random_stream")
    if not isinstance(stream, dict):
        return None
    key, first = stream.get("key"), stream.get("first_row")
    if not isinstance(key, str) or isinstance(first, bool) or not isinstance(first, int):
        return None
    return key, first, first + int(num_positions)


def check_distinct_streams(inputs: Iterable[tuple[str, dict, int]]) -> None:
    """CompatibilityError naming both inputs when two files drew the same rows of the same random stream;
    ``inputs``: each file's (name, metadata, number of positions)."""
    seen: dict[str, list[tuple[int, int, str]]] = {}
    for name, metadata, num_positions in inputs:
        rows = stream_rows(metadata, num_positions)
        if rows is None or rows[1] == rows[2]:
            continue
        key, lo, hi = rows
        for other_lo, other_hi, other in seen.get(key, []):
            if lo < other_hi and other_lo < hi:
                raise CompatibilityError(
                    f"inputs {other!r} and {name!r} drew the same random numbers (stream {key}, rows "
                    f"{max(lo, other_lo)}..{min(hi, other_hi) - 1} in both): the same tokens labeled twice with "
                    "one seed, or one file given twice; their labels are not independent samples. Merge one of "
                    "them, or label the part again with another seed"
                )
        seen.setdefault(key, []).append((lo, hi, name))
