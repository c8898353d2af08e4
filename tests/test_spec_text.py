"""The spec's statements about shard sets, empty files and metadata encodings hold for the library: each test
reads a rule from spec/*.md (so an edit to the text that the library does not follow fails here) and runs it."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import msgpack
import pytest

import sparselabels as sl
from sparselabels.errors import FormatError, IncompleteFileError

SPEC = Path(__file__).resolve().parent.parent / "spec"


def _table_keys(text: str, heading: str) -> list[str]:
    """The backticked first-column names of the Markdown table that follows ``heading``."""
    rest = text[text.index(heading):]
    table = re.search(r"\n(\|.*\|\n)+", rest).group(0)
    return re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.M)


def _shards(directory: Path, names: list[str]) -> list[Path]:
    paths = []
    for k, name in enumerate(names):
        with sl.LabelWriter(directory / name, vocab_size=100, rounds=2) as w:
            w.write([1 + k, 5], [1, 1], [0, 2])
        paths.append(directory / name)
    return paths


def test_manifest_holds_exactly_the_keys_the_spec_lists(tmp_path: Path) -> None:
    text = (SPEC / "MANIFEST.md").read_text()
    top = _table_keys(text, "## 1. Manifest, version 1")
    entry = _table_keys(text, "Each shard entry is an object")
    paths = _shards(tmp_path, ["shard-00000-of-00002.slbl", "shard-00001-of-00002.slbl"])
    body = json.loads(sl.merge(tmp_path / "manifest.json", paths).read_text())
    assert sorted(body) == sorted(top)
    assert body["format"] == "sparselabels-manifest" and body["manifest_version"] == 1
    assert all(sorted(e) == sorted(entry) for e in body["shards"])
    tail = paths[0].read_bytes()[-4:]
    assert body["shards"][0]["footer_crc32"] == struct.unpack("<I", tail)[0]  # the footer's last 4 bytes


def test_the_shard_naming_rule_refuses_an_incomplete_run(tmp_path: Path) -> None:
    text = (SPEC / "MANIFEST.md").read_text()
    pattern = re.search(r"the regular expression\n`(.+?)`", text).group(1)
    assert re.match(pattern, "shard-00003-of-00008.slbl") and not re.match(pattern, "shard-3-of-8.slbl")
    _shards(tmp_path, ["shard-00000-of-00002.slbl", "other.slbl"])
    with pytest.raises(FormatError, match="not as one complete run"):
        sl.open_labels(tmp_path)
    _shards(tmp_path, ["shard-00001-of-00002.slbl"])
    with sl.open_labels(tmp_path) as f:  # complete: the non-matching file is read with them, in name order
        assert [p.name for p in f.shard_paths()] == ["other.slbl", "shard-00000-of-00002.slbl",
                                                      "shard-00001-of-00002.slbl"]


def test_manifest_paths_are_confined(tmp_path: Path) -> None:
    assert "no `..` component" in (SPEC / "MANIFEST.md").read_text()
    paths = _shards(tmp_path, ["a.slbl"])
    manifest = sl.merge(tmp_path / "m.json", paths)
    for bad in ("../a.slbl", "/a.slbl", "c:/a.slbl", "x\\a.slbl"):
        body = json.loads(manifest.read_text())
        body["shards"][0]["path"] = bad
        manifest.write_text(json.dumps(body))
        with pytest.raises(FormatError, match="shard path"):
            sl.open_labels(manifest)


def test_an_empty_file_is_an_incomplete_file(tmp_path: Path) -> None:
    assert "An empty (0-byte)\nfile is such a prefix" in (SPEC / "FORMAT.md").read_text()
    (tmp_path / "e.slbl").write_bytes(b"")
    with pytest.raises(IncompleteFileError):
        sl.open_labels(tmp_path / "e.slbl")


def test_metadata_in_a_longer_msgpack_encoding_reads_the_same(tmp_path: Path) -> None:
    """FORMAT section 5: a reader accepts any valid msgpack encoding, not only the shortest."""
    from sparselabels.format import metadata

    meta = {"format_version": "1.0", "vocab_size": 100, "value_kind": "count", "rounds": 2, "codec": "raw",
            "library_version": "x", "temperature": 0.5}
    long = bytearray(b"\xdf" + struct.pack(">I", len(meta)))  # map32
    for key, value in meta.items():
        long += b"\xda" + struct.pack(">H", len(key)) + key.encode()  # str16 keys
        if isinstance(value, int):
            long += b"\xcf" + struct.pack(">Q", value)  # uint64
        elif isinstance(value, float):
            long += b"\xca" + struct.pack(">f", value)  # float32
        else:
            long += b"\xdb" + struct.pack(">I", len(value)) + value.encode()  # str32
    assert bytes(long) != msgpack.packb(meta)
    assert metadata.decode(bytes(long)) == meta
    with pytest.raises(FormatError, match="vocab_size"):  # an int-valued float is not an int
        metadata.decode(msgpack.packb({**meta, "vocab_size": 100.0}))
