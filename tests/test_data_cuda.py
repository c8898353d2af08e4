"""Pinned-memory batches and their transfer to the GPU (run on a lent GPU; skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from labelgen import random_sequences
from torch.utils.data import DataLoader

import sparselabels as sl
from sparselabels.data import SparseLabelCollator, SparseLabelDataset, collate, collate_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def write(path, seqs):
    with sl.LabelWriter(path, vocab_size=1000, rounds=50) as w:
        for ids, counts, indptr in seqs:
            w.write(ids, counts, indptr)
    return path


def test_pinned_batches_transfer_exactly(tmp_path):
    seqs = random_sequences(1, 12, max_positions=40)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs))
    batch = [ds[i] for i in range(len(ds))]
    out = collate(batch, pin_memory=True)
    ref = collate_reference(batch)
    for key, value in ref.items():
        assert out[key].is_pinned(), key
        gpu = out[key].to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert np.array_equal(gpu.cpu().numpy(), value), key
    # the targets index a [B, T, V] logits tensor on the GPU without going out of range
    logits = torch.randn(*out["target_ids"].shape[:2], 1000, device="cuda")
    picked = logits.gather(-1, out["target_ids"].cuda())
    assert picked.shape == out["target_ids"].shape


def test_dataloader_pin_memory_with_workers(tmp_path):
    seqs = random_sequences(2, 20, max_positions=30)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs))
    loader = DataLoader(ds, batch_size=6, num_workers=2, pin_memory=True, collate_fn=SparseLabelCollator())
    seen = []
    for batch in loader:
        assert batch["target_ids"].is_pinned() and batch["target_weights"].is_pinned()
        ref = collate_reference([ds[i] for i in batch["indices"].tolist()])
        assert np.array_equal(batch["target_weights"].cuda().cpu().numpy(), ref["target_weights"])
        seen += batch["indices"].tolist()
    assert seen == list(range(20))


def test_csr_batches_pin_and_cross_in_one_buffer(tmp_path):
    """DataLoader(pin_memory=True) with workers: the CSR batch arrives pinned as one buffer, and its targets copy
    to the GPU exactly."""
    seqs = random_sequences(3, 20, max_positions=30)
    ds = SparseLabelDataset(write(tmp_path / "a.slbl", seqs))
    loader = DataLoader(ds, batch_size=6, num_workers=2, pin_memory=True,
                        collate_fn=SparseLabelCollator(layout="csr"))
    for batch in loader:
        targets = batch["targets"]
        assert targets.is_pinned() and batch["attention_mask"].is_pinned()
        assert len({t.untyped_storage().data_ptr() for t in (targets.offsets, targets.ids, targets.counts)}) == 1
        gpu = batch.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        ref = collate([ds[i] for i in batch["indices"].tolist()])
        ids, weights = gpu["targets"].to_padded()
        assert ids.is_cuda and torch.equal(ids.cpu(), ref["target_ids"])
        assert torch.equal(weights.cpu(), ref["target_weights"])
        assert torch.equal(gpu["attention_mask"].cpu(), ref["attention_mask"])
