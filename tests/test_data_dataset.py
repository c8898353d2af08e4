"""SparseLabelDataset: alignment checks, pickling, multi-worker DataLoader, shard sets, every token source."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from labelgen import random_sequence, random_sequences
from torch.utils.data import DataLoader

import sparselabels as sl
from sparselabels.codecs import available
from sparselabels.data import (
    ResumableSampler,
    SparseLabelCollator,
    SparseLabelDataset,
    collate,
    collate_reference,
    write_megatron_tokens,
)
from sparselabels.errors import AlignmentError, InputError

VOCAB = 1000


def make_corpus(seed: int, n: int, *, value_kind: str = "count", max_positions: int = 24):
    seqs = random_sequences(seed, n, value_kind=value_kind, max_positions=max_positions, max_labels=16)
    rng = np.random.default_rng(seed + 100)
    tokens = [rng.integers(0, 60_000, size=len(s[2]) - 1).astype(np.int32) for s in seqs]
    return seqs, tokens


def write(path, seqs, tokens=None, *, codec="raw", value_kind="count", fingerprints=True):
    with sl.LabelWriter(path, vocab_size=VOCAB, rounds=50 if value_kind == "count" else None, value_kind=value_kind,
                        codec=codec, chunk_bytes=3000) as w:
        for i, (ids, values, indptr) in enumerate(seqs):
            fp = sl.input_fingerprint(tokens[i]) if fingerprints and tokens is not None else None
            w.write(ids, values, indptr, fingerprint=fp)
    return path


def object_array(arrays):
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def test_items_hold_labels_and_tokens(tmp_path):
    seqs, tokens = make_corpus(1, 12)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs, tokens), object_array(tokens))
    assert len(ds) == 12 and "sequences=12" in repr(ds)
    for i in (0, 5, 11, -1):
        item = ds[i]
        j = i % 12
        assert item.index == j
        assert np.array_equal(item.ids, seqs[j][0]) and np.array_equal(item.values, seqs[j][1])
        assert np.array_equal(item.indptr, seqs[j][2]) and np.array_equal(item.input_ids, tokens[j])
        assert item.rounds == 50 and item.vocab_size == VOCAB and item.num_positions == len(tokens[j])
    with pytest.raises(IndexError):
        ds[12]
    labels_only = SparseLabelDataset(tmp_path / "a.slbl")
    assert labels_only[3].input_ids is None
    assert "input_ids" not in collate([labels_only[0], labels_only[1]])


def test_alignment_counts_and_lengths(tmp_path):
    seqs, tokens = make_corpus(2, 10)
    path = write(tmp_path / "a.slbl", seqs, tokens)
    with pytest.raises(AlignmentError, match="10 label sequences but 9 token sequences"):
        SparseLabelDataset(path, object_array(tokens[:9]))
    shifted = list(tokens)
    shifted[6] = np.concatenate([shifted[6], [1]]).astype(np.int32)
    with pytest.raises(AlignmentError, match=rf"sequence 6 has {len(tokens[6])} label positions but "
                                             rf"{len(tokens[6]) + 1} tokens"):
        SparseLabelDataset(path, object_array(shifted))


@pytest.mark.parametrize("mode", ["lazy", "all"])
def test_fingerprint_mismatch_names_the_sequence(tmp_path, mode):
    seqs, tokens = make_corpus(3, 10)
    path = write(tmp_path / "a.slbl", seqs, tokens)
    changed = list(tokens)
    changed[7] = changed[7].copy()
    changed[7][0] += 1  # same length, different tokens
    if mode == "all":
        with pytest.raises(AlignmentError, match="sequence 7: the tokens' input fingerprint"):
            SparseLabelDataset(path, object_array(changed), verify_fingerprints="all")
        return
    ds = SparseLabelDataset(path, object_array(changed))
    ds[6]  # the others read fine
    with pytest.raises(AlignmentError, match="sequence 7"):
        ds[7]
    off = SparseLabelDataset(path, object_array(changed), verify_fingerprints="off")
    assert np.array_equal(off[7].input_ids, changed[7])


@pytest.mark.parametrize("bad", [-5, 2**40])
def test_token_ids_outside_the_format_are_named_by_sequence_and_position(tmp_path, bad):
    seqs, tokens = equal_length_corpus(4, 5, 8)
    path = write(tmp_path / "a.slbl", seqs, tokens)
    changed = [np.asarray(t, np.int64) for t in tokens]
    changed[1][3] = bad
    for mode in ("lazy", "all"):
        with pytest.raises(sl.InputError, match=rf"sequence 1, position 3: token id {bad} is outside 0..2"):
            SparseLabelDataset(path, object_array(changed), verify_fingerprints=mode)[1]


def equal_length_corpus(seed: int, n: int, length: int):
    rng = np.random.default_rng(seed)
    seqs = [random_sequence(rng, length, vocab_size=VOCAB) for _ in range(n)]
    tokens = rng.integers(0, 60_000, size=(n, length)).astype(np.uint16)
    return seqs, tokens


def test_swapped_sequences_of_equal_length_are_caught(tmp_path):
    seqs, tokens = equal_length_corpus(4, 6, 5)
    path = write(tmp_path / "a.slbl", seqs, list(tokens))
    swapped = tokens[[1, 0, 2, 3, 4, 5]]
    with pytest.raises(AlignmentError, match="sequence 0"):
        SparseLabelDataset(path, swapped, verify_fingerprints="all")
    ds = SparseLabelDataset(path, swapped)
    with pytest.raises(AlignmentError, match="sequence 1"):
        ds[1]


def test_fingerprint_options(tmp_path):
    seqs, tokens = make_corpus(5, 4)
    no_fp = write(tmp_path / "nofp.slbl", seqs, tokens, fingerprints=False)
    SparseLabelDataset(no_fp, object_array(tokens))  # lengths are still checked; nothing else to verify
    with pytest.raises(InputError, match="store no input fingerprints"):
        SparseLabelDataset(no_fp, object_array(tokens), verify_fingerprints="all")
    with pytest.raises(InputError, match="verify_fingerprints"):
        SparseLabelDataset(no_fp, object_array(tokens), verify_fingerprints="yes")
    with pytest.raises(InputError, match="labels must be"):
        SparseLabelDataset(42)


def test_token_sources_npy_megatron_hf(tmp_path):
    seqs, dense = equal_length_corpus(6, 8, 12)
    path = write(tmp_path / "a.slbl", seqs, list(dense))
    np.save(tmp_path / "t.npy", dense)
    prefix = write_megatron_tokens(tmp_path / "t", list(dense), dtype=np.uint16)
    sources = [tmp_path / "t.npy", prefix + ".bin", dense]
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"input_ids": dense.tolist()})
    hf.save_to_disk(tmp_path / "hf")
    sources += [hf, tmp_path / "hf"]
    reference = collate_reference([SparseLabelDataset(path, dense)[i] for i in range(8)])
    for source in sources:
        ds = SparseLabelDataset(path, source, verify_fingerprints="all")
        out = collate([ds[i] for i in range(8)])
        assert np.array_equal(out["input_ids"].numpy(), dense.astype(np.int64)), source
        assert np.array_equal(out["target_ids"].numpy(), reference["target_ids"])
        back = pickle.loads(pickle.dumps(ds))
        assert np.array_equal(back[3].input_ids, dense[3])
    wrong = dense.copy()
    wrong[2, 3] += 1
    prefix = write_megatron_tokens(tmp_path / "w", list(wrong), dtype=np.uint16)
    with pytest.raises(AlignmentError, match="sequence 2"):
        SparseLabelDataset(path, prefix)[2]


def test_pickles_by_path(tmp_path):
    seqs, _ = make_corpus(7, 30)
    np.save(tmp_path / "t.npy", np.zeros((30, 3), np.int32))
    path = write(tmp_path / "a.slbl", seqs)
    ds = SparseLabelDataset(path)
    blob = pickle.dumps(ds)
    assert len(blob) < 2000
    back = pickle.loads(blob)
    assert np.array_equal(back[4].ids, ds[4].ids)


def reference_batches(dataset, sampler, batch_size):
    order = list(sampler)
    return [collate_reference([dataset[i] for i in order[k : k + batch_size]])
            for k in range(0, len(order), batch_size)]


@pytest.mark.parametrize("value_kind", ["count", "prob"])
def test_multi_worker_dataloader_returns_the_reference_batches(tmp_path, value_kind):
    seqs, tokens = make_corpus(8, 37, value_kind=value_kind)
    np.save(tmp_path / "t.npy", np.zeros((1, 1), np.int32))
    prefix = write_megatron_tokens(tmp_path / "tok", tokens, dtype=np.int32)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs, tokens, value_kind=value_kind), prefix)
    sampler = ResumableSampler(len(ds), shuffle=True, seed=3)
    expected = reference_batches(ds, sampler, 5)
    # spawn: workers get the dataset pickled (by path) and reopen it; fork: inherited, as on Linux by default
    context = "spawn" if value_kind == "count" else "fork"
    loader = DataLoader(ds, batch_size=5, sampler=sampler, num_workers=2, collate_fn=SparseLabelCollator(),
                        multiprocessing_context=context)
    got = list(loader)
    assert len(got) == len(expected) == 8
    for out, ref in zip(got, expected, strict=True):
        for key, value in ref.items():
            assert np.array_equal(out[key].numpy(), value), key
        assert out["target_ids"].is_shared()  # allocated in shared memory by the worker, not copied there
        assert len({t.untyped_storage().data_ptr() for t in out.values()}) == 1  # one storage, one hand-over


@pytest.mark.parametrize("codec", available())
def test_shard_sets(tmp_path, codec):
    seqs, tokens = make_corpus(9, 25)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    bounds = [0, 7, 7, 16, 25]  # one empty shard
    for k in range(4):
        lo, hi = bounds[k], bounds[k + 1]
        write(shard_dir / f"part-{k}.slbl", seqs[lo:hi], tokens[lo:hi], codec=codec)
    sl.write_manifest(shard_dir / "manifest.json", sorted(shard_dir.glob("*.slbl")))
    # An empty shard stores no fingerprint flag, so the set as a whole reports none (see the report to io/);
    # the lazy check still verifies every item whose shard stores fingerprints.
    ds = SparseLabelDataset(shard_dir, object_array(tokens))
    assert len(ds) == 25
    changed = list(tokens)
    changed[20] = changed[20] + 1
    with pytest.raises(AlignmentError, match="sequence 20"):
        SparseLabelDataset(shard_dir, object_array(changed))[20]
    for i in (0, 6, 7, 15, 16, 24):
        assert ds[i].index == i and np.array_equal(ds[i].ids, seqs[i][0])
    loader = DataLoader(pickle.loads(pickle.dumps(ds)), batch_size=4, collate_fn=collate)
    indices = torch.cat([b["indices"] for b in loader]).tolist()
    assert indices == list(range(25))


def test_check_labels_off_reads_the_same_and_collate_still_guards_the_vocabulary(tmp_path):
    seqs, tokens = make_corpus(10, 9)
    path = write(tmp_path / "a.slbl", seqs, tokens)
    sl.write_manifest(tmp_path / "m.json", [path])
    for source in (path, tmp_path / "m.json"):
        checked, unchecked = SparseLabelDataset(source), SparseLabelDataset(source, check_labels=False)
        for i in (0, 4, 8, -1):
            a, b = checked[i], unchecked[i]
            assert a.index == b.index and np.array_equal(a.ids, b.ids) and np.array_equal(a.values, b.values)
        with pytest.raises(IndexError):
            unchecked[9]
    # corrupt one id in the raw record so that it leaves the vocabulary
    ids = np.array([777], np.uint32)
    bad_path = write(tmp_path / "bad.slbl", [(ids, np.array([50], np.uint8), np.array([0, 1]))])
    data = bytearray(bad_path.read_bytes())
    at = data.find(ids.tobytes())
    data[at : at + 4] = np.array([5000], np.uint32).tobytes()
    bad_path.write_bytes(bytes(data))
    with pytest.raises(sl.ChecksumError, match="sequence 0: record CRC-32 mismatch"):
        SparseLabelDataset(bad_path)[0]  # checked reads verify the record before decoding it
    item = SparseLabelDataset(bad_path, check_labels=False)[0]
    with pytest.raises(InputError, match="sequence 0, position 0: id 5000 is outside the vocabulary"):
        collate([item])
