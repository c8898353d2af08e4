"""Golden vectors: every file in spec/vectors/<codec>/ decodes, with the library and with the independent spec
reader, to exactly the content in its JSON; every file in spec/vectors/invalid/<codec>/ is refused by both, the
library with the exception, at the stage and naming the place its JSON gives."""

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
INVALID = sorted((VECTORS / "invalid").glob("*/*.slbl"))
# Invalid vectors the library refuses, but not as its JSON says: the library disagrees with its documented contract
# (reported, not yet fixed). strict: once the library is fixed, the entry must go.
LIBRARY_DISAGREES: dict[str, str] = {}  # vector id -> why the library does not yet refuse it as stated


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


# ------------------------------------------------------------------------------------------------ invalid vectors

STAGES = ("open", "read", "validate")


def _vector_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _invalid_params():
    params = []
    for path in INVALID:
        reason = LIBRARY_DISAGREES.get(_vector_id(path))
        params.append(pytest.param(path, id=_vector_id(path),
                                   marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else []))
    return params


def test_invalid_vectors_are_complete_and_apart():
    assert len(INVALID) >= 15
    jsons = sorted((VECTORS / "invalid").glob("*/*.json"))
    assert [p.with_suffix("") for p in INVALID] == [p.with_suffix("") for p in jsons], "every .slbl has its .json"
    assert not list((VECTORS / "invalid").glob("*.*")), "invalid vectors live in invalid/<codec>/"
    assert all(p.parent.parent == VECTORS and p.parent.name != "invalid" for p in FILES)
    assert {p.parent.name for p in INVALID} <= {p.parent.name for p in FILES}
    for path in INVALID:
        spec = _expected(path)
        assert spec["stage"] in STAGES and spec["rule"], path
        assert isinstance(getattr(sl, spec["error"]), type) and issubclass(getattr(sl, spec["error"]), sl.FormatError)
        assert set(spec["where"]) <= {"section", "field", "chunk", "sequence", "position"}, path
    assert {_expected(p)["stage"] for p in INVALID} == set(STAGES)


def _assert_names(message: str, where: dict, *, names_fields: bool = True) -> None:
    for key, value in where.items():
        if key in ("chunk", "sequence", "position"):
            assert f"{key} {value}" in message, (key, value, message)
        elif names_fields or key == "section":
            assert value in message, (key, value, message)


def _read_all(f) -> None:
    for i in range(len(f)):
        f[i]


@pytest.mark.parametrize("path", _invalid_params())
def test_library_refuses_invalid_vector(path):
    spec = _expected(path)
    error, stage = getattr(sl, spec["error"]), spec["stage"]
    if stage == "open":
        with pytest.raises(sl.FormatError) as info:
            sl.open_labels(path).close()
    else:
        with sl.open_labels(path) as f:  # the earlier stages pass: the vector breaks no rule they check
            if stage == "read":
                with pytest.raises(sl.FormatError) as info:
                    _read_all(f)
            else:
                _read_all(f)
        if stage == "validate":
            with pytest.raises(sl.FormatError) as info:
                sl.open_labels(path, verify="full").close()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert str(path) in str(info.value)
    _assert_names(str(info.value), spec["where"])
    report = sl.validate(path)
    assert not report.ok and type(report.first_error) is error and str(path) in str(report.problems[0])
    with pytest.raises(error):  # a full check at open refuses every invalid vector, whatever its stage
        sl.open_labels(path, verify="full").close()


@pytest.mark.parametrize("path", INVALID, ids=_vector_id)
def test_independent_reader_refuses_invalid_vector(path):
    with pytest.raises(spec_reader.SpecError) as info:
        spec_reader.read(path)
    _assert_names(str(info.value), _expected(path)["where"], names_fields=False)


@pytest.mark.parametrize("size", [0, 5, 8, 40, 63])
def test_a_file_cut_inside_its_header_is_incomplete(tmp_path, size):
    """FORMAT.md section 11: a prefix of a header is an interrupted file; other short bytes are not a label file."""
    header = (VECTORS / "raw" / "empty_file.slbl").read_bytes()[:64]
    cut = tmp_path / "cut.slbl"
    cut.write_bytes(header[:size])
    with pytest.raises(sl.IncompleteFileError, match="shorter than the 64-byte header"):
        sl.open_labels(cut)
    with pytest.raises(spec_reader.SpecError, match="incomplete"):
        spec_reader.read(cut)
    other = tmp_path / "other.slbl"
    other.write_bytes(b"PK\x03\x04" + bytes(max(size - 4, 0)) if size else b"")
    if size:
        with pytest.raises(sl.FormatError, match="bad magic") as info:
            sl.open_labels(other)
        assert not isinstance(info.value, sl.IncompleteFileError)
        with pytest.raises(spec_reader.SpecError, match="magic"):
            spec_reader.read(other)
