"""Golden vectors: every file in spec/vectors/ decodes, with the library and with the independent spec
reader, to exactly the content in its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import spec_reader

import sparselabels as sl
from sparselabels.codecs import available

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
FILES = sorted(VECTORS.glob("*/*.slbl"))


def _expected(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def test_vectors_exist_for_every_codec():
    codecs = {p.parent.name for p in FILES}
    assert "raw" in codecs
    assert set(available()) <= codecs, f"codecs without golden vectors: {set(available()) - codecs}"
    for path in FILES:
        assert path.with_suffix(".json").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_independent_reader_matches_json(path):
    got = spec_reader.read(path)
    want = _expected(path)
    assert got["sequences"] == want["sequences"]
    assert got["metadata"]["vocab_size"] == want["vocab_size"]
    assert got["metadata"]["value_kind"] == want["value_kind"]
    assert got["metadata"]["rounds"] == want["rounds"]
    for key, value in want["metadata"].items():
        assert got["metadata"][key] == value


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_library_matches_json(path, mmap):
    want = _expected(path)
    with sl.open_labels(path, mmap=mmap, verify="full") as f:
        assert len(f) == len(want["sequences"])
        assert f.vocab_size == want["vocab_size"] and f.rounds == want["rounds"]
        for i, seq in enumerate(want["sequences"]):
            s = f[i]
            assert s.fingerprint == seq["fingerprint"]
            assert s.num_positions == len(seq["positions"])
            for t, labels in enumerate(seq["positions"]):
                ids, values = s.position(t)
                assert ids.tolist() == [a for a, _ in labels]
                assert np.array_equal(values.astype(np.float64), np.array([b for _, b in labels], dtype=np.float64))
    assert sl.validate(path).ok


def test_vectors_cover_the_edge_cases():
    raw = {p.stem: _expected(p) for p in FILES if p.parent.name == "raw"}
    assert raw["empty_file"]["sequences"] == []
    positions = [pos for v in raw.values() for s in v["sequences"] for pos in s["positions"]]
    assert any(len(p) == 0 for p in positions), "an empty position"
    assert any(len(p) == 255 for p in positions), "a position with 255 labels"
    assert any(len(s["positions"]) == 0 for v in raw.values() for s in v["sequences"]), "an empty sequence"
    assert any(p[-1][0] == v["vocab_size"] - 1 for v in raw.values() for s in v["sequences"]
               for p in s["positions"] if p), "id = vocab_size - 1"
    assert any(v["value_kind"] == "prob" for v in raw.values())
    prob = [v for v in raw.values() if v["value_kind"] == "prob"]
    assert any(len(p) > 255 for v in prob for s in v["sequences"] for p in s["positions"]), "L > 255 (escape)"
    assert any(sum(len(p) for p in s["positions"]) % 4 for v in prob for s in v["sequences"]), "2M not a multiple of 8"
    headers = [p.read_bytes()[:64] for p in FILES if p.suffix == ".slbl"]
    assert any(int.from_bytes(h[10:12], "little") > 0 and int.from_bytes(h[40:44], "little") for h in headers), (
        "a newer minor version with optional feature bits, read as usual")
