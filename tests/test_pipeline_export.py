"""``export_hdf5``: labels (file, shards) → HDF5 with ids, counts/probs, indptr, sequence offsets, fingerprints
and metadata; read back with plain h5py and compared with the label reader."""

from __future__ import annotations

import json
import subprocess

import h5py
import numpy as np
import pytest
from pipeline_fixtures import cli, subprocess_env

import sparselabels as sl
from sparselabels.errors import SparseLabelsError
from sparselabels.pipeline.export import export_hdf5, read_hdf5


def write_labels(path, *, sequences=7, seed=0, value_kind="count", fingerprints=True, vocab=500):
    rng = np.random.default_rng(seed)
    written = []
    kw = {"rounds": 50} if value_kind == "count" else {}
    with sl.LabelWriter(path, vocab_size=vocab, value_kind=value_kind, metadata={"teacher": "t", "seed": seed},
                        chunk_bytes=600, **kw) as w:
        for i in range(sequences):
            n = int(rng.integers(0, 12))
            per = rng.integers(1, 5, size=n)
            indptr = np.concatenate(([0], np.cumsum(per))).astype(np.int64)
            ids = np.concatenate([np.sort(rng.choice(vocab, size=k, replace=False)) for k in per]).astype(np.uint32) \
                if n else np.zeros(0, np.uint32)
            if value_kind == "count":
                values = np.concatenate([np.full(k, 50 // k, np.uint8) + np.r_[50 % k, np.zeros(k - 1, np.uint8)]
                                         .astype(np.uint8) for k in per]) if n else np.zeros(0, np.uint8)
            else:
                values = rng.uniform(0.01, 0.3, size=ids.size).astype(np.float16)
            w.write(ids, values, indptr, fingerprint=i * 1000 + 7 if fingerprints else None)
            written.append((ids, values, indptr))
    return written


def check_export(h5_path, labels_path):
    with sl.open_labels(labels_path) as f, h5py.File(h5_path, "r") as h5:
        assert h5.attrs["format"] == "sparselabels-hdf5" and h5.attrs["format_version"] == 1
        assert json.loads(h5.attrs["metadata_json"]) == json.loads(json.dumps(f.metadata))
        assert int(h5.attrs["vocab_size"]) == f.vocab_size and h5.attrs["value_kind"] == f.value_kind
        assert h5["ids"].dtype == np.uint32 and h5["indptr"].dtype == np.int64
        assert h5["ids"].shape == (f.num_labels,) and h5["indptr"].shape == (f.num_positions + 1,)
        assert np.array_equal(h5["sequence_offsets"][:], np.concatenate(([0], np.cumsum(f.sequence_lengths))))
        if f.fingerprints is not None:
            assert np.array_equal(h5["fingerprints"][:], f.fingerprints)
        for i in range(len(f)):
            ids, values, indptr = read_hdf5(h5_path, i)
            s = f[i]
            assert np.array_equal(ids, s.ids) and np.array_equal(values, s.counts)
            assert np.array_equal(indptr, s.indptr)


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_export_counts(tmp_path, compression):
    write_labels(tmp_path / "a.slbl")
    out = export_hdf5(tmp_path / "a.slbl", tmp_path / "a.h5", compression=compression, chunk=16)
    check_export(out, tmp_path / "a.slbl")
    with h5py.File(out, "r") as h5:
        assert h5["counts"].dtype == np.uint8 and int(h5.attrs["rounds"]) == 50
        assert h5["ids"].compression == compression


def test_export_probs_without_fingerprints(tmp_path):
    write_labels(tmp_path / "p.slbl", value_kind="prob", fingerprints=False)
    out = export_hdf5(tmp_path / "p.slbl", tmp_path / "p.h5")
    check_export(out, tmp_path / "p.slbl")
    with h5py.File(out, "r") as h5:
        assert h5["probs"].dtype == np.float16 and "fingerprints" not in h5 and int(h5.attrs["rounds"]) == 0


def test_export_shards_in_order(tmp_path):
    first = write_labels(tmp_path / "s0.slbl", seed=1, sequences=4)
    second = write_labels(tmp_path / "s1.slbl", seed=1, sequences=3)
    sl.write_manifest(tmp_path / "manifest.json", [tmp_path / "s0.slbl", tmp_path / "s1.slbl"])
    out = export_hdf5(tmp_path / "manifest.json", tmp_path / "m.h5", chunk=7)
    check_export(out, tmp_path / "manifest.json")
    ids, _, _ = read_hdf5(out, 5)
    assert np.array_equal(ids, (first + second)[5][0])


def test_export_to_a_url_is_refused_up_front(tmp_path):
    """HDF5 is written locally: a URL output said "unable to open file: name = 's3:/b/x.h5.partial'" after
    opening the labels; it is an InputError before anything is read."""
    from sparselabels.errors import InputError

    path = write_labels(tmp_path / "a.slbl")
    with pytest.raises(InputError, match="URL"):
        export_hdf5(path, "s3://bucket/x.h5")


def test_export_empty_file(tmp_path):
    with sl.LabelWriter(tmp_path / "e.slbl", vocab_size=10, rounds=50):
        pass
    out = export_hdf5(tmp_path / "e.slbl", tmp_path / "e.h5", compression="gzip")
    with h5py.File(out, "r") as h5:
        assert h5["ids"].shape == (0,) and h5["indptr"][:].tolist() == [0] and h5["sequence_offsets"][:].tolist() == [0]


def test_export_refuses_to_overwrite_and_cleans_up(tmp_path):
    write_labels(tmp_path / "a.slbl")
    export_hdf5(tmp_path / "a.slbl", tmp_path / "a.h5")
    with pytest.raises(SparseLabelsError, match="exists"):
        export_hdf5(tmp_path / "a.slbl", tmp_path / "a.h5")
    export_hdf5(tmp_path / "a.slbl", tmp_path / "a.h5", overwrite=True)
    # a sequence that fails to decode half-way through: no output, no partial file left behind
    with sl.LabelFile(tmp_path / "a.slbl") as f:
        sizes = f.index_column("record_size").astype(int)
        last = int(np.flatnonzero(sizes)[-1])
        at, size = int(f.index_column("record_offset")[last]), int(sizes[last])
    data = bytearray((tmp_path / "a.slbl").read_bytes())
    data[at : at + size] = b"\xff" * size
    (tmp_path / "bad.slbl").write_bytes(bytes(data))
    with pytest.raises(sl.FormatError, match=f"sequence {last}"):
        export_hdf5(tmp_path / "bad.slbl", tmp_path / "b.h5")
    assert not (tmp_path / "b.h5.partial").exists() and not (tmp_path / "b.h5").exists()


def test_cli_export(tmp_path):
    write_labels(tmp_path / "a.slbl")
    done = subprocess.run([*cli(), "export", str(tmp_path / "a.slbl"), str(tmp_path / "a.h5"), "--compression",
                           "gzip", "--level", "6"], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check_export(tmp_path / "a.h5", tmp_path / "a.slbl")


def test_metadata_never_overrides_the_export_attributes(tmp_path):
    """The label file's own format_version and user keys named like the export's attributes used to replace
    them (and wipe metadata_json); a string with a NUL byte broke the export. All of it stays in metadata_json."""
    meta = {"format": "chatml", "metadata_json": "x", "note": "a\x00b", "": 1, "k" * 70_000: 2, "a\x00": 3, "ok": 4}
    with sl.LabelWriter(tmp_path / "m.slbl", vocab_size=10, rounds=50, metadata=meta) as w:
        w.write(np.array([3], np.uint32), np.array([50], np.uint8), np.array([0, 1]))
    out = export_hdf5(tmp_path / "m.slbl", tmp_path / "m.h5")
    with h5py.File(out, "r") as h5, sl.open_labels(tmp_path / "m.slbl") as f:
        assert h5.attrs["format"] == "sparselabels-hdf5" and h5.attrs["format_version"] == 1
        assert int(h5.attrs["rounds"]) == 50 and "note" not in h5.attrs and h5.attrs["ok"] == 4
        assert sorted(h5.attrs) == sorted(["format", "format_version", "metadata_json", "rounds", "ok", "vocab_size",
                                           "value_kind", "codec", "library_version"])  # odd names: JSON only
        assert json.loads(h5.attrs["metadata_json"]) == json.loads(json.dumps(f.metadata))
    with pytest.raises(sl.InputError, match="is the input"):
        export_hdf5(tmp_path / "m.slbl", tmp_path / "m.slbl", overwrite=True)
