"""collate(layout="csr"): SparseTargets against a slow reference, against the padded layout, and through pickling
and DataLoader workers."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing
from labelgen import random_sequences
from torch.utils.data import DataLoader

import sparselabels as sl
from sparselabels.codecs import available
from sparselabels.data import SparseItem, SparseLabelCollator, SparseLabelDataset, SparseTargets, collate
from sparselabels.errors import InputError

CODECS = available()
VOCAB = 1000


def write(path, sequences, *, codec="raw", value_kind="count", rounds=50):
    with sl.LabelWriter(path, vocab_size=VOCAB, rounds=rounds if value_kind == "count" else None,
                        value_kind=value_kind, codec=codec, chunk_bytes=4000) as w:
        for ids, values, indptr in sequences:
            w.write(ids, values, indptr)
    return path


def csr_reference(batch, T):
    """Offsets/ids/values of the [B, T] grid, built position by position in Python."""
    offsets, ids, values = [0], [], []
    for item in batch:
        stored = getattr(item, "values", None)
        stored = item.counts if stored is None else stored
        n = item.indptr.shape[0] - 1
        for t in range(T):
            if t < n:
                lo, hi = int(item.indptr[t]), int(item.indptr[t + 1])
                ids += [int(i) for i in item.ids[lo:hi]]
                values += list(stored[lo:hi])
            offsets.append(len(ids))
    return np.array(offsets, np.int64), np.array(ids, np.int32), np.array(values)


def dataset_and_tokens(tmp_path, codec, value_kind, seed=0):
    seqs = random_sequences(seed, 30, value_kind=value_kind, max_positions=30, max_labels=20, empty_prob=0.2)
    seqs[3] = (np.zeros(0, np.uint32), seqs[3][1][:0], np.zeros(1, np.int64))  # an empty sequence
    path = write(tmp_path / "a.slbl", seqs, codec=codec, value_kind=value_kind)
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, 50_000, size=len(s[2]) - 1) for s in seqs]
    return SparseLabelDataset(path, np.array([*tokens, None], dtype=object)[:-1])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value_kind", ["count", "prob"])
def test_csr_collate_matches_reference_and_the_padded_layout(tmp_path, codec, value_kind):
    dataset = dataset_and_tokens(tmp_path, codec, value_kind)
    rng = np.random.default_rng(1)
    for trial in range(12):
        picks = rng.integers(0, len(dataset), size=int(rng.integers(1, 9)))
        if trial == 0:
            picks = np.array([3, 3])  # empty sequences only
        if trial == 1:
            picks = np.array([3, 0, 5])  # an empty one among others
        batch = [dataset[int(i)] for i in picks]
        out = collate(batch, layout="csr")
        padded = collate(batch)
        targets = out["targets"]
        B, T = padded["attention_mask"].shape
        assert isinstance(targets, SparseTargets) and targets.shape == (B, T)
        offsets, ids, values = csr_reference(batch, T)
        assert targets.offsets.dtype == torch.int64 and np.array_equal(targets.offsets.numpy(), offsets)
        assert targets.ids.dtype == torch.int32 and np.array_equal(targets.ids.numpy(), ids)
        if value_kind == "count":
            assert targets.probs is None and targets.rounds == 50
            assert targets.counts.dtype == torch.uint8 and np.array_equal(targets.counts.numpy(), values)
        else:
            assert targets.counts is None and targets.rounds is None
            assert targets.probs.dtype == torch.float32
            assert np.array_equal(targets.probs.numpy(), values.astype(np.float32))
        # to_padded() is exactly the padded layout, the other keys are the same tensors
        target_ids, target_weights = targets.to_padded()
        assert target_ids.dtype == torch.int64 and torch.equal(target_ids, padded["target_ids"])
        assert target_weights.dtype == torch.float32 and torch.equal(target_weights, padded["target_weights"])
        assert torch.equal(targets.labels_per_position().to(torch.int32), padded["num_labels"])
        for key in ("attention_mask", "lengths", "indices", "input_ids"):
            assert torch.equal(out[key], padded[key]), key
        assert "target_ids" not in out and "num_labels" not in out


@pytest.mark.parametrize("policy", ["drop_smallest", "truncate"])
@pytest.mark.parametrize("value_kind", ["count", "prob"])
def test_csr_overflow_policies_match_the_padded_layout(tmp_path, policy, value_kind):
    seqs = random_sequences(5, 20, value_kind=value_kind, max_positions=25, max_labels=30, empty_prob=0.1)
    dataset = SparseLabelDataset(write(tmp_path / "a.slbl", seqs, value_kind=value_kind))
    batch = [dataset[i] for i in range(len(dataset))]
    for cap in (1, 3, 8, 64):
        out = collate(batch, max_labels=cap, on_overflow=policy, layout="csr", pad_to_multiple_of=8)
        padded = collate(batch, max_labels=cap, on_overflow=policy, pad_to_multiple_of=8)
        ids, weights = out["targets"].to_padded()
        assert torch.equal(ids, padded["target_ids"]) and torch.equal(weights, padded["target_weights"])
        assert torch.equal(out["dropped_labels"], padded["dropped_labels"])
        assert torch.equal(out["dropped_mass"], padded["dropped_mass"])
        assert out["targets"].num_labels == int(padded["num_labels"].sum())
    with pytest.raises(InputError, match="more than max_labels=2"):
        collate(batch, max_labels=2, layout="csr")


def test_csr_checks_ids_and_indptr_like_the_padded_layout():
    good = SparseItem(4, np.array([1, 7], np.uint32), np.array([30, 20], np.uint8), np.array([0, 1, 2]), None, 50,
                      VOCAB)
    bad_id = SparseItem(9, np.array([2, 3, 5000], np.uint32), np.array([10, 20, 20], np.uint8),
                        np.array([0, 2, 2, 3]), None, 50, VOCAB)
    with pytest.raises(InputError, match=r"sequence 9, position 2: id 5000 is outside the vocabulary"):
        collate([good, bad_id], layout="csr")
    with pytest.raises(InputError, match=r"sequence 9, position 2: id 5000"):
        collate([good, bad_id], layout="csr", max_labels=1, on_overflow="truncate")
    bad_ptr = SparseItem(5, np.array([1, 7], np.uint32), np.array([30, 20], np.uint8), np.array([0, 2, 1]), None,
                         50, VOCAB)
    with pytest.raises(InputError, match=r"sequence 5 .* inconsistent indptr"):
        collate([good, bad_ptr], layout="csr")
    with pytest.raises(InputError, match="layout must be one of"):
        SparseLabelCollator(layout="coo")
    with pytest.raises(InputError, match="int32"):
        collate([good], layout="csr", vocab_size=(1 << 31) + 1)
    int64_ids = SparseItem(0, np.array([1, 7], np.int64), np.array([30, 20], np.uint8), np.array([0, 1, 2]), None,
                           50, VOCAB)
    assert collate([int64_ids], layout="csr")["targets"].ids.tolist() == [1, 7]


def test_csr_batch_is_one_buffer_and_pickles_as_one_block(tmp_path):
    dataset = dataset_and_tokens(tmp_path, "raw", "count")
    out = collate([dataset[i] for i in range(6)], layout="csr")
    targets = out["targets"]
    tensors = [*out.values(), targets.offsets, targets.ids, targets.counts]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    # the worker queue's pickler (shared memory): the batch crosses as one storage
    back = pickle.loads(ForkingPickler.dumps(out))
    back_targets = back["targets"]
    parts = [back_targets.offsets, back_targets.ids, back_targets.counts]
    storages = {t.untyped_storage().data_ptr() for t in [*parts, back["attention_mask"], back["input_ids"]]}
    assert len(storages) == 1
    for a, b in zip(parts, [targets.offsets, targets.ids, targets.counts], strict=True):
        assert torch.equal(a, b)
    # plain pickle, and a SparseTargets on its own
    for again in (pickle.loads(pickle.dumps(out))["targets"], pickle.loads(pickle.dumps(targets))):
        assert torch.equal(again.offsets, targets.offsets) and torch.equal(again.ids, targets.ids)
        assert torch.equal(again.counts, targets.counts) and again.rounds == 50 and again.width == targets.width


def test_moving_targets_copies_one_buffer(tmp_path):
    dataset = dataset_and_tokens(tmp_path, "rans", "prob")
    targets = collate([dataset[i] for i in range(5)], layout="csr")["targets"]
    assert targets.to("cpu") is targets
    meta = targets.to("meta")  # a real device move without a GPU: shapes, dtypes, one storage
    assert meta.device.type == "meta" and meta.shape == targets.shape and meta.width == targets.width
    assert meta.offsets.shape == targets.offsets.shape and meta.probs.dtype == torch.float32
    assert len({t.untyped_storage().data_ptr() for t in (meta.offsets, meta.ids, meta.probs)}) == 1
    batch = collate([dataset[i] for i in range(5)], layout="csr")
    moved = batch.to("meta")  # the whole batch: its one buffer crosses once, targets included
    assert moved.keys() == batch.keys() and moved["targets"].device.type == "meta"
    assert moved["input_ids"].device.type == "meta" and moved["input_ids"].shape == batch["input_ids"].shape
    copied = batch._moved(torch.clone)  # the path of .to()/.pin_memory(), with a host copy standing for the move
    parts = [copied["input_ids"], copied["attention_mask"], copied["targets"].ids, copied["targets"].values]
    assert len({t.untyped_storage().data_ptr() for t in parts}) == 1
    assert parts[0].untyped_storage().data_ptr() != batch["input_ids"].untyped_storage().data_ptr()
    assert torch.equal(copied["targets"].ids, batch["targets"].ids) and torch.equal(parts[0], batch["input_ids"])
    from sparselabels.data.targets import _move_together

    copied = _move_together(targets._parts(), torch.clone)  # the path .to()/.pin_memory() take, with a copy
    assert len({t.untyped_storage().data_ptr() for t in copied.values()}) == 1
    for name, tensor in copied.items():
        assert torch.equal(tensor, getattr(targets, name)), name
        assert tensor.untyped_storage().data_ptr() != getattr(targets, name).untyped_storage().data_ptr()


def test_sparse_targets_refuse_inconsistent_parts():
    offsets = torch.tensor([0, 1, 3])
    ids = torch.tensor([4, 5, 6], dtype=torch.int32)
    counts = torch.tensor([50, 25, 25], dtype=torch.uint8)
    with pytest.raises(InputError, match="exactly one of counts"):
        SparseTargets(offsets, ids, shape=(2,))
    with pytest.raises(InputError, match="3 offsets for shape \\[3\\]"):
        SparseTargets(offsets, ids, counts=counts, rounds=50, shape=(3,))
    with pytest.raises(InputError, match=r"ids must be 1-D torch\.int32"):
        SparseTargets(offsets, ids.long(), counts=counts, rounds=50, shape=(2,))
    with pytest.raises(InputError, match="rounds must be an integer >= 1"):
        SparseTargets(offsets, ids, counts=counts, shape=(2,))
    with pytest.raises(InputError, match="3 ids but 2 counts"):
        SparseTargets(offsets, ids, counts=counts[:2], rounds=50, shape=(2,))
    for bad, message in ((torch.tensor([0, 2, 1]), "decrease at position 1: 2 -> 1"),
                         (torch.tensor([0, 1, 4]), "end at 4 but there are 3 labels"),
                         (torch.tensor([1, 1, 3]), r"offsets\[0\] must be 0")):
        targets = SparseTargets(bad, ids, counts=counts, rounds=50, shape=(2,), width=2)
        with pytest.raises(InputError, match=message):
            targets.check(10)
    targets = SparseTargets(offsets, ids, counts=counts, rounds=50, shape=(1, 2))
    targets.check(7)
    with pytest.raises(InputError, match=r"label 2 \(position \(0, 1\)\): id 6 is outside the vocabulary \[0, 6\)"):
        targets.check(6)
    probs = SparseTargets(offsets, ids, probs=torch.tensor([0.5, float("nan"), 0.1]), shape=(2,))
    with pytest.raises(InputError, match="label 1: probability nan"):
        probs.check(10)


def _loader_batches(dataset, collator, **kwargs):
    return list(DataLoader(dataset, batch_size=5, collate_fn=collator, **kwargs))


def test_dataloader_workers_and_pin_memory_return_the_single_process_batches(tmp_path):
    """On a CPU-only machine DataLoader(pin_memory=True) leaves pinning off (torch checks for an accelerator);
    test_data_cuda.py pins for real. The batches from 2 workers (shared memory) equal the in-process ones."""
    dataset = dataset_and_tokens(tmp_path, "rans", "count")
    collator = SparseLabelCollator(layout="csr")
    single = _loader_batches(dataset, collator)
    workers = _loader_batches(dataset, collator, num_workers=2, pin_memory=True)
    assert len(single) == len(workers) == 6
    for a, b in zip(single, workers, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "targets":
                ta, tb = a[key], b[key]
                assert ta.shape == tb.shape and ta.rounds == tb.rounds and ta.width == tb.width
                for part in ("offsets", "ids", "counts"):
                    assert torch.equal(getattr(ta, part), getattr(tb, part)), part
                assert tb.offsets.is_shared()
            else:
                assert torch.equal(a[key], b[key]), key


def test_to_padded_refuses_unbounded_padding_as_the_padded_collate_does():
    """One position of 60,000 labels among 4,000 positions: CSR holds it in its labels; padding it is refused."""
    wide = SparseItem(0, np.arange(60_000, dtype=np.uint32), np.full(60_000, 1e-5, np.float16),
                      np.concatenate([[0, 60_000], np.full(3_999, 60_000)]), None, None, 100_000)
    with pytest.raises(InputError, match="bound K with max_labels"):
        collate([wide])
    targets = collate([wide], layout="csr")["targets"]
    assert targets.width == 60_000 and targets.num_labels == 60_000
    with pytest.raises(InputError, match="to_padded: padding 60,000 labels"):
        targets.to_padded()
