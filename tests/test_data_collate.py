"""collate (numba kernel) against its slow twin collate_reference, on random data, every codec and value kind."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from labelgen import random_sequence, random_sequences

import sparselabels as sl
from sparselabels.codecs import available
from sparselabels.data import SparseItem, SparseLabelCollator, SparseLabelDataset, collate, collate_reference
from sparselabels.errors import InputError

CODECS = available()
VOCAB = 1000


def write(path, sequences, *, codec="raw", value_kind="count", rounds=50, vocab_size=VOCAB, fingerprints=None):
    with sl.LabelWriter(path, vocab_size=vocab_size, rounds=rounds if value_kind == "count" else None,
                        value_kind=value_kind, codec=codec, chunk_bytes=4000) as w:
        for i, (ids, values, indptr) in enumerate(sequences):
            w.write(ids, values, indptr, fingerprint=None if fingerprints is None else fingerprints[i])
    return path


def assert_matches_reference(out: dict, ref: dict) -> None:
    for key, expected in ref.items():
        got = out[key].numpy()
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        if key == "dropped_mass":
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
        else:
            assert np.array_equal(got, expected), key


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value_kind", ["count", "prob"])
def test_collate_matches_reference_on_random_batches(tmp_path, codec, value_kind):
    seqs = random_sequences(11, 40, value_kind=value_kind, max_positions=30, max_labels=20, empty_prob=0.2)
    path = write(tmp_path / "a.slbl", seqs, codec=codec, value_kind=value_kind)
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 50_000, size=len(s[2]) - 1) for s in seqs]
    dataset = SparseLabelDataset(path, np.array([*tokens, None], dtype=object)[:-1])
    for trial in range(15):
        batch = [dataset[int(i)] for i in rng.integers(0, len(dataset), size=int(rng.integers(1, 9)))]
        out = collate(batch)
        ref = collate_reference(batch)
        assert_matches_reference(out, ref)
        assert out["target_ids"].dtype == torch.int64 and out["target_weights"].dtype == torch.float32
        assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.bool
        assert out["indices"].tolist() == [item.index for item in batch]
        widest = max((int(np.diff(item.indptr).max(initial=0)) for item in batch), default=0)
        assert out["target_ids"].shape[2] == max(widest, 1)
        if trial == 0 and value_kind == "count":  # weights are count / rounds, exactly as Sequence.weights
            s = dataset.labels[batch[0].index]
            w = s.weights(50)
            n0 = int(s.indptr[1] - s.indptr[0]) if s.num_positions else 0
            assert np.array_equal(out["target_weights"][0, 0, :n0].numpy(), w[:n0])


@pytest.mark.parametrize("value_kind", ["count", "prob"])
@pytest.mark.parametrize("policy", ["drop_smallest", "truncate"])
def test_overflow_policies_report_what_they_drop(tmp_path, value_kind, policy):
    seqs = random_sequences(5, 20, value_kind=value_kind, max_positions=25, max_labels=30, empty_prob=0.1)
    dataset = SparseLabelDataset(write(tmp_path / "a.slbl", seqs, value_kind=value_kind))
    batch = [dataset[i] for i in range(len(dataset))]
    for cap in (1, 3, 8):
        out = collate(batch, max_labels=cap, on_overflow=policy)
        assert_matches_reference(out, collate_reference(batch, max_labels=cap, on_overflow=policy))
        assert out["target_ids"].shape[2] == cap
        full = collate(batch)
        kept = out["target_weights"].sum(-1) + out["dropped_mass"]
        torch.testing.assert_close(kept, full["target_weights"].sum(-1), rtol=1e-5, atol=1e-6)
        assert torch.equal(out["num_labels"] + out["dropped_labels"], full["num_labels"])
        assert out["dropped_labels"].sum() > 0


def test_drop_smallest_keeps_the_largest_and_breaks_ties_by_lower_id():
    ids = np.array([3, 5, 7, 9, 11], dtype=np.uint32)
    counts = np.array([10, 20, 10, 5, 5], dtype=np.uint8)
    item = SparseItem(0, ids, counts, np.array([0, 5], np.int64), None, 50, 100)
    out = collate([item], max_labels=3, on_overflow="drop_smallest")
    assert out["target_ids"][0, 0].tolist() == [3, 5, 7]  # 20, then the two 10s; ascending id order kept
    assert out["dropped_labels"][0, 0] == 2
    assert out["dropped_mass"][0, 0].item() == pytest.approx(10 / 50)
    out = collate([item], max_labels=2, on_overflow="drop_smallest")
    assert out["target_ids"][0, 0].tolist() == [3, 5]  # tie between ids 3 and 7: the lower id stays
    out = collate([item], max_labels=2, on_overflow="truncate")
    assert out["target_ids"][0, 0].tolist() == [3, 5]
    assert out["dropped_mass"][0, 0].item() == pytest.approx(20 / 50)


def test_overflow_is_an_error_by_default():
    item = SparseItem(7, np.array([1, 2, 3], np.uint32), np.array([1, 1, 48], np.uint8), np.array([0, 0, 3]),
                      None, 50, 10)
    with pytest.raises(InputError, match=r"sequence 7, position 1: 3 labels, more than max_labels=2"):
        collate([item], max_labels=2)
    out = collate([item], max_labels=3)  # at the cap: nothing dropped, nothing to report
    assert out["dropped_labels"].sum() == 0 and out["dropped_mass"].sum() == 0
    with pytest.raises(InputError, match="on_overflow"):
        collate([item], max_labels=2, on_overflow="renormalize")
    with pytest.raises(InputError, match="max_labels"):
        collate([item], max_labels=0)


def test_ids_are_checked_against_the_vocabulary():
    item = SparseItem(4, np.array([1, 99], np.uint32), np.array([25, 25], np.uint8), np.array([0, 0, 2]),
                      None, 50, 100)
    assert collate([item])["target_ids"][0, 1].tolist() == [1, 99]
    with pytest.raises(InputError, match=r"sequence 4, position 1: id 99 is outside the vocabulary \(vocab_size 64"):
        collate([item], vocab_size=64)  # e.g. a student with a smaller vocabulary
    wide = SparseItem(1, np.array([2**33], np.int64), np.array([50], np.uint8), np.array([0, 1]), None, 50, 100)
    with pytest.raises(InputError, match="outside the vocabulary"):
        collate([wide])  # never wrapped to 32 bits
    neg = SparseItem(1, np.array([-1], np.int64), np.array([50], np.uint8), np.array([0, 1]), None, 50, 100)
    with pytest.raises(InputError, match="outside the vocabulary"):
        collate([neg])


def test_padding_options_and_tokens():
    rng = np.random.default_rng(3)
    items = []
    for i, n in enumerate([5, 0, 3]):
        ids, counts, indptr = random_sequence(rng, n, vocab_size=VOCAB)
        items.append(SparseItem(i, ids, counts, indptr, rng.integers(1, 500, size=n).astype(np.uint16), 50, VOCAB))
    out = collate(items, pad_to=8, pad_token_id=-100)
    assert out["target_ids"].shape[:2] == (3, 8)
    assert out["input_ids"][0, 5:].tolist() == [-100] * 3 and out["input_ids"][1].tolist() == [-100] * 8
    assert out["input_ids"][2, :3].tolist() == items[2].input_ids.tolist()
    assert out["attention_mask"].sum(1).tolist() == [5, 0, 3]
    assert out["lengths"].tolist() == [5, 0, 3]
    assert (out["target_weights"][:, 5:] == 0).all() and (out["target_ids"][~out["attention_mask"]] == 0).all()
    assert collate(items, pad_to_multiple_of=4)["target_ids"].shape[1] == 8
    assert collate(items)["target_ids"].shape[1] == 5
    assert collate(items, pad_to_multiple_of=0)["target_ids"].shape[1] == 5  # 0: no rounding, as None
    with pytest.raises(InputError, match="pad_token_id is needed"):  # a tokenizer without a pad token
        collate(items, pad_token_id=None)
    label_only = [SparseItem(i.index, i.ids, i.values, i.indptr, None, 50, VOCAB) for i in items]
    assert "input_ids" not in collate(label_only, pad_token_id=None)
    with pytest.raises(InputError, match="longer than pad_to"):
        collate(items, pad_to=4)
    bad = SparseItem(0, items[0].ids, items[0].counts, items[0].indptr, np.array([1, 2], np.int64), 50, VOCAB)
    with pytest.raises(InputError, match="input ids"):
        collate([bad])
    negative = SparseItem(0, items[0].ids, items[0].counts, items[0].indptr, -np.ones(5, np.int64), 50, VOCAB)
    with pytest.raises(InputError, match=r"sequence 0, position 0: input id -1 is outside 0\.\.2\*\*32-1"):
        collate([negative])
    huge = SparseItem(0, items[0].ids, items[0].counts, items[0].indptr, np.full(5, 2**40, np.int64), 50, VOCAB)
    with pytest.raises(InputError, match=r"input id 1099511627776 is outside"):
        collate([huge])
    with pytest.raises(InputError, match="some items carry input ids"):
        collate([items[0], SparseItem(1, items[1].ids, items[1].counts, items[1].indptr, None, 50, VOCAB)])


def test_inconsistent_batches_are_errors():
    ids, counts, indptr = np.array([1], np.uint32), np.array([50], np.uint8), np.array([0, 1])
    a = SparseItem(0, ids, counts, indptr, None, 50, VOCAB)
    with pytest.raises(InputError, match="rounds"):
        collate([a, SparseItem(1, ids, counts, indptr, None, 40, VOCAB)])
    with pytest.raises(InputError, match="vocab_size"):
        collate([a, SparseItem(1, ids, counts, indptr, None, 50, 2000)])
    with pytest.raises(InputError, match="value dtypes"):
        collate([a, SparseItem(1, ids, np.array([1.0], np.float16), indptr, None, None, VOCAB)])
    with pytest.raises(InputError, match="inconsistent indptr"):
        collate([SparseItem(3, ids, counts, np.array([0, 2]), None, 50, VOCAB)])
    with pytest.raises(InputError, match="inconsistent indptr"):
        collate([SparseItem(3, np.array([1, 2], np.uint32), np.array([25, 25], np.uint8), np.array([0, 2, 1, 2]),
                            None, 50, VOCAB)])
    with pytest.raises(InputError, match="uint8"):
        collate([SparseItem(3, ids, np.array([50], np.int64), indptr, None, 50, VOCAB)])
    with pytest.raises(InputError, match="empty"):
        collate([])
    with pytest.raises(InputError, match="rounds"):
        collate([sl.LabelSpan(ids, counts, indptr)], vocab_size=VOCAB)  # plain Sequences carry no rounds
    with pytest.raises(InputError, match="rounds=40 given"):
        collate([a], rounds=40)


def test_plain_sequences_and_the_collator_class(tmp_path):
    seqs = random_sequences(8, 6)
    path = write(tmp_path / "a.slbl", seqs)
    with sl.open_labels(path) as f:
        batch = [f[i] for i in range(len(f))]
        out = collate(batch, vocab_size=VOCAB, rounds=50)
        ref = collate_reference(batch, vocab_size=VOCAB, rounds=50)
        assert_matches_reference(out, ref)
        assert out["indices"].tolist() == list(range(len(f)))
    dataset = SparseLabelDataset(path)
    items = [dataset[i] for i in range(len(dataset))]
    collator = SparseLabelCollator(max_labels=4, on_overflow="truncate", pad_to_multiple_of=8)
    assert "max_labels=4" in repr(collator)
    a = collator(items)
    b = functools.partial(collate, max_labels=4, on_overflow="truncate", pad_to_multiple_of=8)(items)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError):
        SparseLabelCollator(on_overflow="nope")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error; the CUDA test pins for real")
def test_pin_memory_without_cuda_is_an_explicit_error():
    item = SparseItem(0, np.array([1], np.uint32), np.array([50], np.uint8), np.array([0, 1]), None, 50, VOCAB)
    with pytest.raises(InputError, match="CUDA"):
        collate([item], pin_memory=True)


def test_empty_sequences_only():
    item = SparseItem(0, np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(1, np.int64), None, 50, VOCAB)
    out = collate([item, item])
    assert out["target_ids"].shape == (2, 0, 1) and out["attention_mask"].shape == (2, 0)


def test_batch_is_a_dict_of_views_of_one_storage_and_pickles_whole(tmp_path):
    import copy
    import pickle

    seqs = random_sequences(9, 5)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs))
    out = collate([ds[i] for i in range(5)], max_labels=3, on_overflow="truncate")
    assert isinstance(out, dict)
    assert len({t.untyped_storage().data_ptr() for t in out.values()}) == 1
    out["extra"] = torch.arange(3)  # a tensor added by the user travels too
    for back in (pickle.loads(pickle.dumps(out)), copy.copy(out)):
        assert back.keys() == out.keys()
        for key, value in out.items():
            assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


@pytest.mark.parametrize(("option", "value"), [
    ("pad_to_multiple_of", -8), ("pad_to_multiple_of", 2.5), ("pad_to", 3.5),
    ("pad_to", -1), ("max_labels", 2.5), ("max_labels", "3"), ("max_labels", True), ("pad_token_id", 2.7),
    ("pad_token_id", 1 << 63), ("vocab_size", 64.0), ("rounds", 0), ("pin_memory", 1),
])
def test_bad_options_are_named_never_rounded(option, value):
    """A wrong option raises InputError naming it, at collate and when a collator is built; none is rounded
    (a negative multiple used to shrink T below the longest sequence, and the kernels wrote past the buffers)."""
    ids, counts = np.tile(np.arange(10, 14, dtype=np.uint32), 20), np.tile(np.array([47, 1, 1, 1], np.uint8), 20)
    item = SparseItem(0, ids, counts, np.arange(0, 81, 4), np.full(20, 7), 50, 100)
    with pytest.raises(InputError, match=option):
        collate([item, item], **{option: value})
    with pytest.raises(InputError, match=option):
        SparseLabelCollator(**{option: value})


def test_input_ids_as_lists_and_tensors():
    rng = np.random.default_rng(5)
    ids, counts, indptr = random_sequence(rng, 4, vocab_size=VOCAB)
    tokens = [3, 1, 4, 1]
    expected = collate([SparseItem(0, ids, counts, indptr, np.array(tokens), 50, VOCAB)])["input_ids"]
    for given in (tokens, torch.tensor(tokens), np.array(tokens, np.uint16)):
        out = collate([SparseItem(0, ids, counts, indptr, given, 50, VOCAB)])
        assert torch.equal(out["input_ids"], expected)
    with pytest.raises(InputError, match="not integers"):
        collate([SparseItem(0, ids, counts, indptr, [0.5, 1, 2, 3], 50, VOCAB)])


def test_padding_to_one_very_wide_position_is_refused_unless_bounded():
    """A valid probability file may hold a position of 65,535 labels: padding a 4,000-position batch to it
    would take 3 GB for 69 K labels. Refused with the way out named; max_labels bounds it."""
    T, wide = 4000, 65535
    ids = np.concatenate([np.arange(wide), np.arange(T - 1)]).astype(np.uint32)
    probs = np.full(ids.size, 1e-5, np.float16)
    indptr = np.concatenate([[0, wide], wide + np.arange(1, T)]).astype(np.int64)
    item = SparseItem(7, ids, probs, indptr, None, None, 70_000)
    with pytest.raises(InputError, match=r"sequences \[7\].*\[1, 4000, 65535\].*bound K with max_labels"):
        collate([item])
    out = collate([item], max_labels=64, on_overflow="drop_smallest")
    assert out["target_ids"].shape == (1, T, 64) and out["dropped_labels"][0, 0] == wide - 64
    narrow = SparseItem(8, ids[wide:], probs[wide:], indptr[1:] - wide, None, None, 70_000)
    assert collate([narrow] * 16)["target_ids"].shape == (16, T - 1, 1)  # ordinary batches are untouched
