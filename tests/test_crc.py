"""``layout.crc32`` is zlib's CRC-32 whichever implementation computes it (the polynomial is the on-disk format)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from sparselabels.format.layout import crc32


@pytest.mark.parametrize("size", [0, 1, 7, 15, 16, 63, 64, 65, 255, 256, 1000, 4096, 65537, 1 << 20])
def test_crc32_equals_zlib(size):
    rng = np.random.default_rng(size)
    data = rng.integers(0, 256, size=size + 3, dtype=np.uint8)
    view = data[3:]  # an unaligned start, as records' views of a mapped file may have
    view.flags.writeable = False
    for start in (0, 1, 0x12345678, 0xFFFFFFFF):
        want = zlib.crc32(view.tobytes(), start) & 0xFFFFFFFF
        assert crc32(view, start) == want
        assert crc32(view.tobytes(), start) == want
        assert crc32(memoryview(view.tobytes()), start) == want


def test_crc32_continues_across_pieces():
    data = np.random.default_rng(0).integers(0, 256, size=10_000, dtype=np.uint8)
    assert crc32(data[4000:], crc32(data[:4000])) == zlib.crc32(data.tobytes())
