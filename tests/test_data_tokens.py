"""Token sources: arrays, .npy, Megatron .bin/.idx (including hostile indexes) and Hugging Face datasets."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from sparselabels.data.tokens import (
    MEGATRON_MAGIC,
    ArrayTokens,
    HFTokens,
    MegatronTokens,
    NpyTokens,
    TokenSource,
    open_tokens,
    write_megatron_tokens,
)
from sparselabels.errors import FormatError, InputError


def ragged(seed: int = 0, n: int = 7, vocab: int = 50_000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(0, 20))) for _ in range(n)]


def assert_source_equals(src: TokenSource, sequences: list[np.ndarray]) -> None:
    assert len(src) == len(sequences)
    assert src.lengths().dtype == np.int64
    assert src.lengths().tolist() == [len(s) for s in sequences]
    for i, s in enumerate(sequences):
        got = src[i]
        assert got.ndim == 1 and np.issubdtype(got.dtype, np.integer)
        assert np.array_equal(got.astype(np.int64), np.asarray(s, dtype=np.int64))
    assert np.array_equal(src[-1].astype(np.int64), np.asarray(sequences[-1], dtype=np.int64))
    with pytest.raises(IndexError):
        src[len(sequences)]


def test_array_sources():
    dense = np.arange(12, dtype=np.int32).reshape(3, 4)
    src = open_tokens(dense)
    assert isinstance(src, ArrayTokens)
    assert_source_equals(src, list(dense))
    seqs = ragged()
    obj = np.empty(len(seqs), dtype=object)
    obj[:] = seqs
    assert_source_equals(open_tokens(obj), seqs)
    assert_source_equals(open_tokens(seqs), seqs)  # a list of arrays
    back = pickle.loads(pickle.dumps(open_tokens(obj)))  # in-memory arrays pickle as data
    assert_source_equals(back, seqs)


def test_array_sources_reject_bad_input():
    with pytest.raises(InputError, match="integers"):
        open_tokens(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InputError, match="2-D"):
        open_tokens(np.zeros(5, dtype=np.int64))
    bad = np.empty(2, dtype=object)
    bad[:] = [np.arange(3), np.zeros((2, 2), np.int64)]
    with pytest.raises(InputError, match="sequence 1"):
        open_tokens(bad)
    with pytest.raises(InputError):
        open_tokens(3.5)


def test_npy_is_memory_mapped_and_pickles_by_path(tmp_path):
    data = np.random.default_rng(1).integers(0, 2**31 - 1, size=(5, 9)).astype(np.int32)
    path = tmp_path / "t.npy"
    np.save(path, data)
    src = open_tokens(str(path))
    assert isinstance(src, NpyTokens) and src.describe() == f"npy:{path}"
    assert isinstance(src.array, np.memmap)
    assert src[2].dtype == np.int32  # stored dtype, no conversion
    assert_source_equals(src, list(data))
    blob = pickle.dumps(src)
    assert len(blob) < 500  # the path, not the data
    assert_source_equals(pickle.loads(blob), list(data))


def test_npy_rejects_non_token_files(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 2), np.float64))
    with pytest.raises(FormatError, match="integers"):
        open_tokens(tmp_path / "f.npy")
    np.save(tmp_path / "v.npy", np.zeros(4, np.int64))
    with pytest.raises(FormatError, match="2-D"):
        open_tokens(tmp_path / "v.npy")
    obj = np.empty(2, dtype=object)
    obj[:] = [np.arange(2), np.arange(3)]
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    with pytest.raises(FormatError, match="memory-map"):
        open_tokens(tmp_path / "o.npy")  # object arrays would need pickle: refused


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8, np.int16, np.int8])
def test_megatron_roundtrip(tmp_path, dtype):
    seqs = [s % np.iinfo(dtype).max for s in ragged(2)]
    prefix = write_megatron_tokens(tmp_path / "corpus", seqs, dtype=dtype)
    for path in (prefix, prefix + ".bin", prefix + ".idx"):
        src = open_tokens(path)
        assert isinstance(src, MegatronTokens)
        assert src.dtype == np.dtype(dtype) and src[0].dtype == np.dtype(dtype)
        assert_source_equals(src, seqs)
        assert src.document_indices.tolist() == list(range(len(seqs) + 1))
    back = pickle.loads(pickle.dumps(src))
    assert_source_equals(back, seqs)
    assert len(pickle.dumps(src)) < 500


def test_megatron_layout_matches_the_published_format(tmp_path):
    """Bytes as megatron/core/datasets/indexed_dataset.py writes them: header, int32 lengths, int64 byte
    pointers, int64 document indices; .bin holds the tokens back to back."""
    seqs = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.array([9])]
    prefix = write_megatron_tokens(tmp_path / "x", seqs, dtype=np.uint16, document_indices=[0, 2, 3])
    idx = (tmp_path / "x.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<QBQQ", idx, 9) == (1, 8, 3, 3)  # version, dtype uint16, sequences, documents
    assert struct.unpack_from("<3i", idx, 34) == (3, 0, 1)
    assert struct.unpack_from("<3q", idx, 46) == (0, 6, 6)
    assert struct.unpack_from("<3q", idx, 70) == (0, 2, 3)
    assert len(idx) == 94
    assert (tmp_path / "x.bin").read_bytes() == np.array([5, 6, 7, 9], "<u2").tobytes()
    assert open_tokens(prefix).document_indices.tolist() == [0, 2, 3]


def _corrupt(tmp_path, mutate):
    prefix = write_megatron_tokens(tmp_path / "c", [np.arange(4), np.arange(3)], dtype=np.int32)
    idx = bytearray((tmp_path / "c.idx").read_bytes())
    binary = bytearray((tmp_path / "c.bin").read_bytes())
    idx, binary = mutate(idx, binary)
    (tmp_path / "c.idx").write_bytes(bytes(idx))
    (tmp_path / "c.bin").write_bytes(bytes(binary))
    return prefix


def _set(fmt, offset, value):
    def mutate(idx, binary):
        struct.pack_into(fmt, idx, offset, value)
        return idx, binary
    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda i, b: (i[:20], b), "shorter than"),
        (lambda i, b: (b"XXIDIDX\x00\x00" + i[9:], b), "bad magic"),
        (_set("<Q", 9, 2), "version 2"),
        (_set("<B", 17, 6), "not an integer type"),
        (_set("<B", 17, 99), "unknown dtype code"),
        (_set("<Q", 18, 2**62), "need exactly"),  # a hostile count is caught by the size check, never allocated
        (_set("<Q", 26, 7), "need exactly"),
        (lambda i, b: (i + b"\x00", b), "need exactly"),
        (lambda i, b: (i + b"\x00\x00", b), "multimodal"),
        (_set("<i", 34, -4), "negative length"),
        (_set("<q", 50, 12), "byte pointer"),
        (_set("<q", 58, 1), "document indices"),
        (_set("<q", 66, 3), "document indices"),
        (lambda i, b: (i, b[:-4]), "truncated"),
        (lambda i, b: (i, b + b"\x00" * 4), "truncated"),
    ],
)
def test_megatron_hostile_index(tmp_path, mutate, message):
    prefix = _corrupt(tmp_path, mutate)
    with pytest.raises(FormatError, match=message):
        MegatronTokens(prefix)


def test_megatron_missing_files(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        MegatronTokens(tmp_path / "nothing")
    write_megatron_tokens(tmp_path / "a", [np.arange(3)])
    (tmp_path / "a.bin").unlink()
    with pytest.raises(InputError, match="cannot open"):
        open_tokens(tmp_path / "a.idx")
    assert MEGATRON_MAGIC == b"MMIDIDX\x00\x00"


def test_megatron_empty_corpus(tmp_path):
    prefix = write_megatron_tokens(tmp_path / "e", [])
    src = open_tokens(prefix)
    assert len(src) == 0 and src.lengths().tolist() == []


def test_hf_dataset_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    seqs = ragged(3, n=9)
    ds = datasets.Dataset.from_dict({"input_ids": [s.tolist() for s in seqs], "other": list(range(9))})
    src = open_tokens(ds)
    assert isinstance(src, HFTokens)
    assert_source_equals(src, seqs)
    # a select/shuffle leaves a row mapping; the source follows it
    order = [4, 0, 8, 8, 2]
    assert_source_equals(open_tokens(ds.select(order)), [seqs[i] for i in order])
    # several Arrow chunks
    multi = datasets.concatenate_datasets([ds.select(range(4)), ds.select(range(4, 9))])
    assert_source_equals(open_tokens(multi), seqs)
    # saved to disk: opened by path, pickled by path, memory-mapped
    ds.save_to_disk(tmp_path / "saved")
    on_disk = open_tokens(tmp_path / "saved")
    assert on_disk.describe() == f"hf:{tmp_path / 'saved'}[input_ids]"
    assert_source_equals(on_disk, seqs)
    blob = pickle.dumps(on_disk)
    assert len(blob) < 1000
    assert_source_equals(pickle.loads(blob), seqs)
    assert_source_equals(pickle.loads(pickle.dumps(src)), seqs)
    assert_source_equals(open_tokens(ds.rename_column("input_ids", "tok"), column="tok"), seqs)


def test_hf_dataset_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]]})
    with pytest.raises(InputError, match="no column"):
        open_tokens(ds, column="ids")
    with pytest.raises(InputError, match="not integer lists"):
        open_tokens(datasets.Dataset.from_dict({"input_ids": [[1.5], [2.0]]}))
    with pytest.raises(InputError, match="missing values"):
        open_tokens(datasets.Dataset.from_dict({"input_ids": [[1, None], [3]]}))
    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "dd")
    with pytest.raises(InputError, match="several splits"):
        open_tokens(tmp_path / "dd")
    with pytest.raises(InputError, match=r"not a \.npy"):
        open_tokens(tmp_path / "nope.txt")


def test_megatron_checks_in_blocks(tmp_path, monkeypatch):
    import sparselabels.data.tokens as tokens_module

    monkeypatch.setattr(tokens_module, "_CHECK_BLOCK", 2)  # many blocks: the running offset must carry over
    seqs = ragged(5, n=9)
    prefix = write_megatron_tokens(tmp_path / "b", seqs)
    assert_source_equals(MegatronTokens(prefix), seqs)
    idx = bytearray((tmp_path / "b.idx").read_bytes())
    struct.pack_into("<q", idx, 34 + 4 * 9 + 8 * 7, 4 * (sum(len(s) for s in seqs[:7]) + 1))
    (tmp_path / "b.idx").write_bytes(bytes(idx))
    with pytest.raises(FormatError, match="sequence 7: byte pointer"):
        MegatronTokens(prefix)
