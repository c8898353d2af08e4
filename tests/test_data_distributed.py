"""A real 2-process torch.distributed (gloo) run: every sequence is read exactly once across ranks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from labelgen import random_sequences
from torch.utils.data import DataLoader, DistributedSampler

import sparselabels as sl
from sparselabels.data import ResumableSampler, SparseLabelDataset, collate, collate_reference

WORLD = 2
N = 30


def _worker(rank: int, label_path: str, tokens_path: str, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        dataset = SparseLabelDataset(label_path, tokens_path)
        result = {}
        for name, sampler in (
            ("distributed", DistributedSampler(dataset, num_replicas=WORLD, rank=rank, shuffle=True, seed=7)),
            ("resumable", ResumableSampler(len(dataset), shuffle=True, seed=7, rank=rank, world_size=WORLD)),
        ):
            sampler.set_epoch(1)
            loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=1)
            mine = []
            for batch in loader:
                idx = batch["indices"].tolist()
                ref = collate_reference([dataset[i] for i in idx])
                assert np.array_equal(batch["target_ids"].numpy(), ref["target_ids"])
                assert np.array_equal(batch["input_ids"].numpy(), ref["input_ids"])
                mine += idx
            gathered = [None] * WORLD
            dist.all_gather_object(gathered, mine)
            result[name] = gathered
        if rank == 0:
            with open(os.path.join(out_dir, "result.json"), "w") as f:
                json.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_run_covers_every_sequence_once(tmp_path):
    seqs = random_sequences(21, N, max_positions=20)
    rng = np.random.default_rng(0)
    lengths = [len(s[2]) - 1 for s in seqs]
    tokens = [rng.integers(0, 30_000, size=n) for n in lengths]
    label_path = tmp_path / "a.slbl"
    with sl.LabelWriter(label_path, vocab_size=1000, rounds=50) as w:
        for (ids, counts, indptr), tok in zip(seqs, tokens, strict=True):
            w.write(ids, counts, indptr, fingerprint=sl.input_fingerprint(tok))
    prefix = sl.data.write_megatron_tokens(tmp_path / "tokens", tokens, dtype=np.uint16)
    mp.spawn(_worker, args=(str(label_path), prefix, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD,
             join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    for name in ("distributed", "resumable"):
        per_rank = result[name]
        assert len(per_rank) == WORLD and all(len(r) == N // WORLD for r in per_rank)
        assert sorted(i for r in per_rank for i in r) == list(range(N)), name  # each sequence exactly once
    order = sl.data.epoch_order(N, 7, 1).tolist()
    assert [i for pair in zip(*result["resumable"], strict=True) for i in pair] == order
