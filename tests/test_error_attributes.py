"""Errors a program can read: where an error is, as attributes as well as words; validate's problems as records.

Also the names that say what they are: LabelSpan (``values``, with ``counts`` and the old name ``Sequence``
kept), one class for an output that exists and one for use after close.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import file_surgery as fs
import numpy as np
import pytest

import sparselabels as sl
from sparselabels.errors import LOCATION, ChecksumError, ClosedError, FormatError, InputError, OutputExistsError
from sparselabels.io.validate import Problem


def _valid_file(tmp_path: Path, name: str = "f.slbl") -> Path:
    path = tmp_path / name  # raw codec, one sequence per chunk: the edits below follow its documented layout
    with sl.LabelWriter(path, vocab_size=100, rounds=50, chunk_bytes=64, codec="raw") as w:
        for k in range(4):
            w.write(np.array([3, 7 + k, 50 + k]), [48, 1, 1], [0, 0, 3])
    return path


def _edit_record(path: Path, sequence: int, offset: int, value: bytes, *, fix_crcs: bool) -> Path:
    buf = bytearray(path.read_bytes())
    lay = fs.parse_layout(bytes(buf))
    at = lay.records[sequence].start + offset
    buf[at : at + len(value)] = value
    if fix_crcs:  # so that the label rules, behind every CRC, are what finds it
        fs.reseal_records_at(buf, lay, at)
    path.write_bytes(bytes(buf))
    return path


def test_a_label_rule_broken_in_a_file_is_located_by_attributes(tmp_path):
    path = _edit_record(_valid_file(tmp_path), 2, 4, b"\xff\xff\xff\xff", fix_crcs=True)
    with sl.open_labels(path) as f, pytest.raises(FormatError) as info:
        f[2]
    exc = info.value
    assert (exc.path, exc.sequence, exc.position, exc.label, exc.field) == (str(path), 2, 1, 0, "ids")
    assert exc.location == {"path": str(path), "sequence": 2, "position": 1, "label": 0, "field": "ids"}
    # the words say the same
    assert f"file {str(path)!r}, sequence 2, position 1, label 0, field 'ids'" in str(exc)


def test_a_damaged_record_names_file_sequence_and_field(tmp_path):
    path = _edit_record(_valid_file(tmp_path), 1, 4, b"\x00\x00\x00\x01", fix_crcs=False)
    with sl.open_labels(path) as f, pytest.raises(ChecksumError) as info:
        f[1]
    assert (info.value.path, info.value.sequence, info.value.field) == (str(path), 1, "record_crc32")
    assert info.value.position is None and info.value.label is None


def test_full_verification_names_the_chunk(tmp_path):
    path = _edit_record(_valid_file(tmp_path), 3, 4, b"\x00\x00\x00\x01", fix_crcs=False)
    with pytest.raises(ChecksumError) as info:
        sl.LabelFile(path, verify="full")
    exc = info.value
    assert (exc.path, exc.field) == (str(path), "payload_crc32") and exc.chunk is not None
    assert f"file {str(path)!r}, chunk {exc.chunk}: payload CRC-32 mismatch" in str(exc)


def test_errors_of_the_index_and_of_a_manifest_carry_their_place(tmp_path):
    path = _valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[fs.parse_layout(bytes(data)).index.start] ^= 0xFF  # the index, under the footer's index CRC-32
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        sl.open_labels(path)
    assert info.value.path == str(path) and info.value.field == "index_crc32"

    for offset, error, field in ((-20, ChecksumError, "footer_crc32"), (0, FormatError, "magic"),
                                 (12, ChecksumError, "header_crc32")):
        path = _valid_file(tmp_path, "structure.slbl")
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(error) as info:
            sl.open_labels(path)
        assert (info.value.path, info.value.field) == (str(path), field), str(info.value)
        path.unlink()

    good = _valid_file(tmp_path, "good.slbl")
    manifest = sl.write_manifest(tmp_path / "m.json", [good])
    body = json.loads(manifest.read_text())
    body["shards"][0]["num_labels"] = -1
    manifest.write_text(json.dumps(body))
    with pytest.raises(FormatError) as info:
        sl.open_labels(manifest)
    assert info.value.path == str(manifest) and info.value.field == "num_labels"


def test_writer_input_errors_carry_the_sequence_and_place(tmp_path):
    with sl.LabelWriter(tmp_path / "w.slbl", vocab_size=100, rounds=50) as w:
        w.write([1], [50], [0, 1])
        with pytest.raises(InputError) as info:
            w.write([1, 2], [25, 26], [0, 2])  # counts sum to 51
    exc = info.value
    assert (exc.path, exc.sequence, exc.position, exc.field) == (str(tmp_path / "w.slbl"), 1, 0, "counts")


def test_location_survives_pickling_and_unknown_parts_are_none(tmp_path):
    exc = FormatError("file 'a': sequence 3: bad", path="a", sequence=3)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is FormatError and str(again) == str(exc) and again.location == exc.location
    assert all(getattr(FormatError("x"), key) is None for key in LOCATION)
    with pytest.raises(TypeError, match="unknown location"):
        FormatError("x", offset=3)


def test_validate_problems_are_records_whose_text_is_the_message(tmp_path):
    path = _edit_record(_valid_file(tmp_path), 2, 4, b"\xff\xff\xff\xff", fix_crcs=True)
    report = sl.validate(path)
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert isinstance(problem, Problem) and dataclasses.is_dataclass(problem)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.sequence = 0  # type: ignore[misc]
    assert (problem.error, problem.path, problem.sequence, problem.position, problem.label, problem.field) == (
        "FormatError", str(path), 2, 1, 0, "ids")
    with sl.open_labels(path) as f, pytest.raises(FormatError) as info:
        f[2]
    assert str(problem) == str(info.value) == problem.message  # exactly the exception's text

    missing = sl.validate(tmp_path / "nothing.slbl")
    assert missing.problems[0].error == "FileNotFoundError"
    assert missing.problems[0].path == str(tmp_path / "nothing.slbl")
    assert "No such file or directory" in str(missing.problems[0])


def test_validate_json_gives_the_records(tmp_path):
    path = _edit_record(_valid_file(tmp_path), 2, 4, b"\xff\xff\xff\xff", fix_crcs=True)
    result = subprocess.run([sys.executable, "-m", "sparselabels.cli.main", "validate", "--json", str(path)],
                            capture_output=True, text=True, timeout=120)
    body = json.loads(result.stdout)
    assert result.returncode == 1 and not body["ok"]
    assert body["problems"] == [body["problem_details"][0]["message"]]
    assert body["problem_details"][0]["sequence"] == 2 and body["problem_details"][0]["field"] == "ids"


def test_label_span_says_values_and_keeps_counts(tmp_path):
    with sl.open_labels(_valid_file(tmp_path)) as f:
        span = f[1]
        block = f.positions(0, 3)
    assert isinstance(span, sl.LabelSpan) and isinstance(block, sl.LabelSpan)
    assert span.values.tolist() == [48, 1, 1] and span.counts is span.values
    assert [field.name for field in dataclasses.fields(sl.LabelSpan)][:3] == ["ids", "values", "indptr"]
    assert span.position(1)[1].tolist() == [48, 1, 1] and block.num_positions == 3


def test_the_old_sequence_name_still_works_and_warns():
    with pytest.warns(DeprecationWarning, match="LabelSpan"):
        from sparselabels.io.sequence import Sequence
    assert Sequence is sl.LabelSpan
    with pytest.warns(DeprecationWarning, match="LabelSpan"):
        assert sl.Sequence is sl.LabelSpan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "Sequence" not in sl.__all__ and "LabelSpan" in sl.__all__


def test_one_class_for_an_output_that_exists(tmp_path):
    path = _valid_file(tmp_path)
    with pytest.raises(OutputExistsError) as info:
        sl.LabelWriter(path, vocab_size=100, rounds=50)
    assert isinstance(info.value, FileExistsError) and info.value.path == str(path)
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    with pytest.raises(FileExistsError):  # an except clause for the built-in still catches it
        sl.merge(manifest, [path])
    with pytest.raises(OutputExistsError):
        sl.merge(tmp_path / "f.slbl", [_valid_file(tmp_path, "g.slbl")], copy=True)


def test_export_refuses_an_existing_output_with_the_same_class(tmp_path):
    pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    out.write_bytes(b"")
    with pytest.raises(OutputExistsError, match="exists; pass overwrite=True"):
        sl.export_hdf5(_valid_file(tmp_path), out)


def test_one_class_for_use_after_close(tmp_path):
    path = _valid_file(tmp_path)
    f = sl.open_labels(path)
    f.close()
    with pytest.raises(ClosedError):
        f[0]
    shards = sl.open_labels(sl.write_manifest(tmp_path / "m.json", [path]))
    shards.close()
    with pytest.raises(ClosedError):
        shards[0]
    w = sl.LabelWriter(tmp_path / "w.slbl", vocab_size=100, rounds=50)
    w.close()
    with pytest.raises(ValueError):  # as before, and as Python's own closed files
        w.write([1], [50], [0, 1])
