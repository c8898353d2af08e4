"""``layout.crc32`` is zlib's CRC-32 whichever implementation computes it (the polynomial is the on-disk format)."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from sparselabels.format.layout import crc32

REPO = Path(__file__).resolve().parents[1]


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


def test_without_isal_zlib_computes_it():
    """Where isal has no wheel the package still imports, and reads check the same CRC through zlib."""
    code = ("import sys; sys.modules['isal'] = None\n"
            "import zlib\n"
            "from sparselabels.format import layout\n"
            "assert layout.CRC32_IMPLEMENTATION == 'zlib', layout.CRC32_IMPLEMENTATION\n"
            "assert layout.crc32(b'123456789') == zlib.crc32(b'123456789') == 0xCBF43926\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
