"""ResumableSampler: deterministic order, DistributedSampler-style split, exact resume across world sizes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from sparselabels.data import ResumableSampler
from sparselabels.data.sampler import epoch_order, epoch_order_reference
from sparselabels.errors import InputError


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 257])
@pytest.mark.parametrize("seed", [0, 1, 2**40 + 3])
def test_order_matches_the_slow_twin_and_is_a_permutation(n, seed):
    for epoch in (0, 1, 5):
        order = epoch_order(n, seed, epoch)
        assert order.dtype == np.int64
        assert order.tolist() == epoch_order_reference(n, seed, epoch)
        assert sorted(order.tolist()) == list(range(n))
    assert epoch_order(5, seed, 0, shuffle=False).tolist() == list(range(5))


def test_order_depends_on_seed_and_epoch_only():
    a = epoch_order(1000, 7, 3)
    assert np.array_equal(a, epoch_order(1000, 7, 3))
    assert not np.array_equal(a, epoch_order(1000, 7, 4))
    assert not np.array_equal(a, epoch_order(1000, 8, 3))
    assert epoch_order(1000, 7, 3)[:10].tolist() == a[:10].tolist()


def test_order_is_roughly_uniform():
    # where item 0 lands over many epochs: a chi-square-style sanity bound, not a proof
    n, trials = 8, 4000
    hits = np.zeros(n, dtype=np.int64)
    for e in range(trials):
        hits[int(np.flatnonzero(epoch_order(n, 123, e) == 0)[0])] += 1
    expected = trials / n
    assert ((hits - expected) ** 2 / expected).sum() < 30  # 7 degrees of freedom; p < 1e-4 beyond this


def ranks(n, world_size, **kwargs):
    return [ResumableSampler(n, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


@pytest.mark.parametrize("n", [10, 11, 12, 1, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_split_like_distributed_sampler(n, world_size, drop_last):
    samplers = ranks(n, world_size, seed=5, drop_last=drop_last)
    order = epoch_order(n, 5, 0).tolist()
    per_rank = [list(s) for s in samplers]
    lengths = {len(p) for p in per_rank}
    assert len(lengths) == 1 and lengths.pop() == len(samplers[0])
    if drop_last:
        covered = [i for p in zip(*per_rank, strict=True) for i in p]
        assert covered == order[: n - n % world_size]
    else:
        padded = order + order * (world_size)  # DistributedSampler wraps the order to pad the tail
        total = -(-n // world_size) * world_size
        for r, p in enumerate(per_rank):
            assert p == padded[r:total:world_size]
        assert set(i for p in per_rank for i in p) == set(range(n))
    # the same split as torch's DistributedSampler, given the same global order
    if not drop_last:
        torch_split = []
        for r in range(world_size):
            ds = DistributedSampler(list(range(n)), num_replicas=world_size, rank=r, shuffle=False)
            torch_split.append([order[i] for i in ds])
        assert torch_split == per_rank


def run_ranks(samplers, steps, batch):
    """Each rank takes ``steps`` batches of ``batch`` samples in lockstep; returns the global stream seen."""
    iters = [iter(s) for s in samplers]
    seen = []
    for _ in range(steps):
        batches = [[next(it) for _ in range(batch)] for it in iters]
        seen += [i for place in zip(*batches, strict=True) for i in place]  # rank r holds places r, r+W, ...
    return seen


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 3), (4, 1), (1, 4), (3, 2), (2, 5)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_with_a_different_world_size_repeats_and_skips_nothing(before, after, shuffle):
    n, batch = 103, 3
    old = ranks(n, before, shuffle=shuffle, seed=11)
    for s in old:
        s.set_epoch(2)
    steps = 5
    first = run_ranks(old, steps, batch)
    states = [s.state_dict() for s in old]
    assert all(st == states[0] | {"world_size": before} for st in states)
    assert states[0]["consumed"] == steps * batch * before and states[0]["epoch"] == 2
    new = ranks(n, after, shuffle=shuffle, seed=11)
    for s in new:
        s.load_state_dict(states[0])
        s.set_epoch(s.epoch)  # what a training loop does: epochs continue from the sampler's
    rest = [list(s) for s in new]
    flat_rest = [i for step in zip(*rest, strict=True) for i in step]
    order = epoch_order(n, 11, 2, shuffle=shuffle).tolist()
    counts = collections.Counter(first + flat_rest)
    assert set(counts) == set(range(n))  # nothing skipped
    seen_once = first + flat_rest[: n - len(first)]
    assert seen_once == order  # the same global order, continued exactly where it stopped
    repeats = sum(c - 1 for c in counts.values())
    assert repeats == -(n - len(first)) % after  # only the padding of the last step, as DistributedSampler


def test_state_is_the_next_epoch_after_a_full_pass_and_set_epoch_restarts():
    s = ResumableSampler(10, seed=1, world_size=2, rank=1)
    s.set_epoch(4)
    assert len(list(s)) == 5
    state = s.state_dict()
    assert state["epoch"] == 5 and state["consumed"] == 0
    t = ResumableSampler(10, seed=1, world_size=2, rank=1)
    t.load_state_dict(state)
    assert t.epoch == 5 and len(t) == 5
    # a second pass over the same epoch, without set_epoch, is the same order (as DistributedSampler)
    assert list(s) == list(s)
    s.set_epoch(5)
    assert list(s) == list(t)


def test_resume_mid_epoch_with_prefetching_dataloader():
    """A DataLoader with workers draws indices ahead; the state uses what was trained on."""
    n, batch = 50, 4
    sampler = ResumableSampler(n, seed=2)
    loader = DataLoader(list(range(n)), batch_size=batch, sampler=sampler, num_workers=2, prefetch_factor=2)
    trained = []
    for step, b in enumerate(loader):
        trained += b.tolist()
        if step == 2:
            break
    assert sampler.state_dict()["consumed"] > len(trained)  # the loader ran ahead
    state = sampler.state_dict(consumed=len(trained))
    assert state["consumed"] == 12
    resumed = ResumableSampler(n, seed=2)
    resumed.load_state_dict(state)
    rest = [i for b in DataLoader(list(range(n)), batch_size=batch, sampler=resumed) for i in b.tolist()]
    assert trained + rest == epoch_order(n, 2, 0).tolist()
    with pytest.raises(InputError, match="holds only"):
        resumed.state_dict(consumed=n)


def test_drop_last_resume_and_epoch_end():
    old = ranks(10, 4, seed=3, drop_last=True)
    seen = run_ranks(old, 1, 1)
    state = old[0].state_dict()
    assert state["consumed"] == 4
    new = ranks(10, 3, seed=3, drop_last=True)
    for s in new:
        s.load_state_dict(state)
    rest = [i for step in zip(*[list(s) for s in new], strict=True) for i in step]
    assert seen + rest == epoch_order(10, 3, 0).tolist()[:10]  # 6 left: two full steps of 3
    run = ranks(10, 4, seed=3, drop_last=True)
    run_ranks(run, 2, 1)  # 8 of 10; the last 2 do not fill a step of 4 and are dropped
    assert run[0].state_dict()["epoch"] == 1 and run[0].state_dict()["consumed"] == 0


def test_state_checks():
    s = ResumableSampler(10, seed=1)
    assert s.state_dict()["consumed"] == 0
    with pytest.raises(InputError, match="before any pass"):
        s.state_dict(consumed=3)
    state = s.state_dict()
    for key, value in (("seed", 2), ("shuffle", False), ("num_sequences", 11)):
        with pytest.raises(InputError, match=key):
            s.load_state_dict(state | {key: value})
    with pytest.raises(InputError, match="beyond"):
        s.load_state_dict(state | {"consumed": 11})
    with pytest.raises(InputError, match="not a ResumableSampler state"):
        s.load_state_dict({"epoch": 0})
    with pytest.raises(InputError, match="rank"):
        ResumableSampler(10, rank=2, world_size=2)
    with pytest.raises(InputError, match="seed"):
        ResumableSampler(10, seed=-1)
    s.load_state_dict(state | {"consumed": 10, "epoch": 3})
    assert s.epoch == 4 and len(s) == 10
    assert "ResumableSampler(" in repr(s)


def test_dataloader_without_workers_state_is_exact_and_resumes_on_more_ranks():
    n, batch = 41, 3
    data = list(range(n))
    old = ranks(n, 2, seed=9)
    loaders = [iter(DataLoader(data, batch_size=batch, sampler=s)) for s in old]
    first = []
    for _ in range(4):  # four steps in lockstep
        step = [next(it).tolist() for it in loaders]
        first += [i for place in zip(*step, strict=True) for i in place]
    state = old[1].state_dict()  # no argument: with num_workers=0 the loader never runs ahead
    assert state == old[0].state_dict() | {"world_size": 2} and state["consumed"] == 24
    new = ranks(n, 3, seed=9)
    for s in new:
        s.load_state_dict(state)
    per_rank = [[i for b in DataLoader(data, batch_size=batch, sampler=s) for i in b.tolist()] for s in new]
    rest = [i for place in zip(*per_rank, strict=True) for i in place]
    order = epoch_order(n, 9, 0).tolist()
    assert (first + rest)[:n] == order  # 24 + 17 in order, then one padding sample wrapping to the start
    assert (first + rest)[n:] == order[: len(first) + len(rest) - n]


def test_len_of_a_resumed_pass_is_the_same_inside_the_loop():
    """DataLoader's len() inside the loop used to report a full pass while only the rest was yielded."""
    first = ResumableSampler(100, seed=0)
    it = iter(first)
    for _ in range(60):
        next(it)
    resumed = ResumableSampler(100, seed=0)
    resumed.load_state_dict(first.state_dict())
    loader = DataLoader(list(range(100)), batch_size=10, sampler=resumed)
    before = len(loader)
    lengths = [len(loader) for _ in loader]
    assert before == 4 and lengths == [4] * 4
    assert [len(loader) for _ in loader] == [10] * 10  # the next pass is whole
    # workers prefetch: the sampler is exhausted batches before the loop ends, and len() must hold still
    resumed.load_state_dict(first.state_dict())
    loader = DataLoader(list(range(100)), batch_size=10, sampler=resumed, num_workers=2, prefetch_factor=2)
    assert [len(loader) for _ in loader] == [4] * 4 and len(loader) == 4
    resumed.set_epoch(1)
    assert len(loader) == 10
