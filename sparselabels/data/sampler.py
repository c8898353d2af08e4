"""A distributed sampler whose state is a point in one global order, so resuming repeats and skips nothing,
also when the number of ranks changes between saving and resuming.

The order of epoch ``e`` is a permutation of ``range(num_sequences)`` that depends only on ``(seed, e)``: a
Fisher-Yates shuffle driven by a counter-based splitmix64 stream (no numpy Generator, whose streams are not
promised to stay the same across versions), so every rank, every run and every machine agrees on it.

Ranks split the global order the way ``torch.utils.data.DistributedSampler`` does: rank ``r`` of ``W`` takes
global places ``s + r, s + r + W, s + r + 2W, ...`` from the place ``s`` where the pass starts (0 at the start
of an epoch). When the remaining ``n - s`` places do not divide evenly, ``drop_last=False`` pads the tail by
wrapping around to the start of the epoch's order (a few sequences are seen twice, as with DistributedSampler)
and ``drop_last=True`` leaves the last ``(n - s) % W`` places out of this epoch.

State is ``{"epoch", "consumed", ...}``: ``consumed`` global places of epoch ``epoch`` are done. After every
rank has taken ``c`` samples of a pass that started at ``s``, the places ``s .. s + c*W - 1`` are done — all of
them, whatever ``W`` is — so a resumed sampler with any world size continues at ``s + c*W`` of the same order.
Ranks must consume in step (data-parallel training does: every rank takes one batch per step).

With ``DataLoader(num_workers>0)`` the loader draws indices ahead of the training loop (prefetching), so what
the sampler has *yielded* is more than what was *trained on*: pass the count you trained on,
``sampler.state_dict(consumed=samples_this_rank_trained_on_since_the_pass_began)``. Without the argument,
``state_dict`` records what was yielded, which is exact for ``num_workers=0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numba as nb
import numpy as np
import torch.utils.data

from sparselabels.errors import InputError, check_int

STATE_VERSION = 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


# ------------------------------------------------------------------------------------------- permutation


@nb.njit(cache=True, inline="always")
def _splitmix(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _shuffle(n, key):
    """Fisher-Yates over range(n); draw i is splitmix64(key + (i+1)·golden), rejection-sampled to be uniform."""
    out = np.arange(n, dtype=np.int64)
    counter = np.uint64(0)
    for i in range(n - 1, 0, -1):
        m = np.uint64(i + 1)
        threshold = (np.uint64(0) - m) % m  # 2**64 mod m: draws below it would bias the modulo
        while True:
            counter += np.uint64(1)
            x = _splitmix(key + counter * _GOLDEN)
            if x >= threshold:
                break
        j = np.int64(x % m)
        tmp = out[i]
        out[i] = out[j]
        out[j] = tmp
    return out


_MASK = (1 << 64) - 1


def _splitmix_py(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def epoch_key(seed: int, epoch: int) -> int:
    """The 64-bit stream key of one (seed, epoch)."""
    return _splitmix_py((_splitmix_py(seed & _MASK) ^ ((epoch * 0xD1B54A32D192ED03) & _MASK)) & _MASK)


def epoch_order(num_sequences: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """int64[num_sequences]: the global order of one epoch."""
    if not shuffle:
        return np.arange(num_sequences, dtype=np.int64)
    return _shuffle(num_sequences, np.uint64(epoch_key(seed, epoch)))


def epoch_order_reference(num_sequences: int, seed: int, epoch: int) -> list[int]:
    """The slow twin of :func:`epoch_order` (plain Python integers), for tests."""
    out = list(range(num_sequences))
    key, counter = epoch_key(seed, epoch), 0
    for i in range(num_sequences - 1, 0, -1):
        m = i + 1
        threshold = (1 << 64) % m
        while True:
            counter += 1
            x = _splitmix_py((key + counter * 0x9E3779B97F4A7C15) & _MASK)
            if x >= threshold:
                break
        j = x % m
        out[i], out[j] = out[j], out[i]
    return out


# ---------------------------------------------------------------------------------------------- sampler


def _nonneg_int(value: Any, name: str) -> int:
    value = check_int(name, value, None)
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {value}")
    return value


def per_rank(num_sequences: int, start: int, world_size: int, drop_last: bool) -> int:
    """How many places each rank takes from ``start`` (the tail is padded unless ``drop_last``)."""
    remaining = max(num_sequences - start, 0)
    return remaining // world_size if drop_last else -(-remaining // world_size)


def rank_places(num_sequences: int, start: int, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """Global places (may exceed ``num_sequences`` in the padded tail) that ``rank`` takes, from ``start``."""
    count = per_rank(num_sequences, start, world_size, drop_last)
    return start + rank + world_size * np.arange(count, dtype=np.int64)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Deterministic, distributed, exactly resumable order over ``num_sequences`` items (see module docstring).

    Use as ``DataLoader(dataset, sampler=ResumableSampler(len(dataset), rank=r, world_size=W), ...)``, call
    ``set_epoch(e)`` before each epoch like DistributedSampler, save ``state_dict()`` with your checkpoint and
    ``load_state_dict()`` it on resume (any world size); then iterate epochs from ``sampler.epoch``.
    """

    def __init__(self, num_sequences: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, *, drop_last: bool = False) -> None:
        self.num_sequences = _nonneg_int(num_sequences, "num_sequences")
        self.shuffle = bool(shuffle)
        self.seed = _nonneg_int(seed, "seed")
        self.world_size = _nonneg_int(world_size, "world_size")
        self.rank = _nonneg_int(rank, "rank")
        if self.world_size < 1 or self.rank >= self.world_size:
            raise InputError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._resume_at = 0  # where the next pass starts (global place)
        self._pass: tuple[int, int] | None = None  # (epoch, start) of the latest pass, once one began
        self._running: int | None = None  # the start of the latest pass, until another begins
        self._yielded = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    # -- order -------------------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.num_sequences, self.seed, epoch, self.shuffle))
        return self._order_cache[1]

    def indices(self, epoch: int | None = None, start: int | None = None) -> np.ndarray:
        """The indices this rank yields in a pass of ``epoch`` starting at global place ``start``."""
        epoch = self.epoch if epoch is None else epoch
        start = self._resume_at if start is None else start
        n = self.num_sequences
        places = rank_places(n, start, self.rank, self.world_size, self.drop_last)
        if n == 0:
            return places
        return self._order(epoch)[places % n]

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self._resume_at
        self._pass, self._yielded, self._resume_at, self._running = (epoch, start), 0, 0, start
        for index in self.indices(epoch, start).tolist():
            self._yielded += 1
            yield index
        # _running stays until the next pass, set_epoch or load_state_dict: DataLoader workers exhaust this
        # iterator batches before the training loop ends, and len() must not change under the loop

    def __len__(self) -> int:
        """Samples of the latest pass (a resumed pass is shorter) until the next one begins or ``set_epoch``
        moves on, else of the next pass. DataLoader and progress bars call it both before and inside the loop;
        both must agree (call ``set_epoch`` between passes, as with DistributedSampler)."""
        start = self._running if self._running is not None else self._resume_at
        return per_rank(self.num_sequences, start, self.world_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass. A new epoch starts at its beginning; the epoch just loaded from a
        state dict keeps its resume point."""
        epoch = _nonneg_int(epoch, "epoch")
        if epoch != self.epoch:
            self.epoch, self._resume_at, self._pass, self._running = epoch, 0, None, None

    # -- state -------------------------------------------------------------------------------------------
    def _epoch_done(self, place: int, world_size: int) -> bool:
        remaining = self.num_sequences - place
        return remaining <= 0 or (self.drop_last and remaining < world_size)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where to resume. ``consumed``: samples this rank trained on since the current pass began (default: the
        number yielded). A finished epoch is saved as the start of the next one."""
        if self._pass is None:
            if consumed is not None:
                raise InputError("state_dict(consumed=...) before any pass began; nothing was consumed yet")
            epoch, place = self.epoch, self._resume_at
        else:
            epoch, start = self._pass
            local = self._yielded if consumed is None else _nonneg_int(consumed, "consumed")
            available = per_rank(self.num_sequences, start, self.world_size, self.drop_last)
            if local > available:
                raise InputError(f"consumed={local}, but this rank's pass holds only {available} samples")
            place = start + local * self.world_size
        if self._epoch_done(place, self.world_size):
            epoch, place = epoch + 1, 0
        return {"version": STATE_VERSION, "epoch": epoch, "consumed": place, "seed": self.seed,
                "shuffle": self.shuffle, "num_sequences": self.num_sequences, "drop_last": self.drop_last,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (saved with any world size): the next pass starts where it left off."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InputError(f"not a ResumableSampler state (version {STATE_VERSION}): {state!r}")
        for key in ("seed", "shuffle", "num_sequences"):
            if state.get(key) != getattr(self, key):
                raise InputError(
                    f"sampler state has {key}={state.get(key)!r}, this sampler has {getattr(self, key)!r}; the order "
                    "would differ, so resuming would repeat and skip samples"
                )
        epoch = _nonneg_int(state["epoch"], "epoch")
        place = _nonneg_int(state["consumed"], "consumed")
        if place > self.num_sequences:
            raise InputError(f"sampler state consumed={place} is beyond num_sequences={self.num_sequences}")
        if place == self.num_sequences:  # a finished epoch (the saving world size's dropped tail stays dropped)
            epoch, place = epoch + 1, 0
        self.epoch, self._resume_at, self._pass, self._yielded, self._running = epoch, place, None, 0, None

    def __repr__(self) -> str:
        return (f"ResumableSampler(num_sequences={self.num_sequences}, shuffle={self.shuffle}, seed={self.seed}, "
                f"rank={self.rank}, world_size={self.world_size}, drop_last={self.drop_last}, epoch={self.epoch})")
