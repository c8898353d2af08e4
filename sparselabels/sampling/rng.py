"""Counter-based random numbers for the samplers: Philox4x32-10, keyed by the seed, counted by (row id, draw).

Why counter-based: the draws of a row must depend only on ``(seed, row_id, that row's logits)`` — not on which
other rows share the call, on the batch size, on the device's scheduling or on how a labeling run was split
across ranks and resumed. Philox (Salmon et al., SC'11, "Parallel random numbers: as easy as 1, 2, 3") turns a
128-bit counter and a 64-bit key into 128 random bits with no state, so any row's uniforms can be recomputed
anywhere. The Triton kernel implements the same function, so the kernel and the PyTorch reference see
bit-identical uniforms.

The stream layout (a contract shared with ``triton_kernel.py``; changing it changes every label):

- key = (seed mod 2^32, seed >> 32);
- counter = (pair index k, row_id mod 2^32, row_id >> 32, ``STREAM_SORTED_UNIFORMS``);
- draw 2k takes output words (0, 1), draw 2k+1 takes words (2, 3); the uniform is the 53-bit integer
  ``(hi << 21) | (lo >> 11)`` times 2^-53, exactly representable in float64, in [0, 1);
- a row's ``rounds`` uniforms are then sorted ascending (inverse-CDF sampling with sorted uniforms emits the ids
  in ascending order, i.e. directly as (id, count) runs).

All arithmetic here is on int64 tensors holding uint32 values, so it runs on any torch device.

Streams of a labeling run (:func:`stream_key`): ``generate`` does not key Philox with the user's seed itself but
with a key derived from the seed *and* the token source's fingerprint, so two parts of a corpus labeled
separately with one seed (whose row ids both start at 0) draw from different streams, while a rerun, a resume
or another number of ranks over the same tokens draws from the same one.
"""

from __future__ import annotations

import hashlib
import operator

import torch

from sparselabels.errors import InputError

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
# Fourth counter word: names the purpose of the stream so that other uses of (seed, row id) never collide with it.
STREAM_SORTED_UNIFORMS = 0x534C5531  # "SLU1"
UNIFORM_BITS = 53
_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for uint32 values held in int64 (no product may overflow int64)."""
    lo_part = a * (b & _MASK16)  # < 2^48
    hi_part = a * (b >> 16)  # < 2^48; the full product is lo_part + hi_part * 2^16
    t = lo_part + ((hi_part & _MASK16) << 16)  # < 2^49
    return (hi_part >> 16) + (t >> 32), t & _MASK32


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with 10 rounds (Random123's ``philox4x32_10``) on int64 tensors of uint32 values."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _MASK32 for c in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def check_seed(seed: int | None) -> int:
    """A seed in [0, 2^64); ``None`` draws a fresh one from torch's default generator (so ``torch.manual_seed``
    makes a ``seed=None`` run repeatable)."""
    if seed is None:
        lo, hi = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
        return lo | (hi << 32)
    if isinstance(seed, bool):
        raise InputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise InputError(f"seed must be an integer in [0, 2**64), got {seed!r}") from None
    if not 0 <= value < 1 << 64:
        raise InputError(f"seed must be in [0, 2**64), got {value}")
    return value


def stream_key(seed: int, source: str) -> int:
    """The Philox key (in [0, 2^64)) of a labeling run: BLAKE2b-64, personalised ``sl-stream-v1``, over the seed
    (8 bytes, little-endian) and the UTF-8 bytes of ``source`` (the run's source fingerprint)."""
    h = hashlib.blake2b(digest_size=8, person=b"sl-stream-v1")
    h.update(check_seed(seed).to_bytes(8, "little"))
    h.update(source.encode())
    return int.from_bytes(h.digest(), "little")


def sorted_uniforms(seed: int, row_ids: torch.Tensor, rounds: int) -> torch.Tensor:
    """The ``rounds`` sorted uniforms of each row, float64 ``[R, rounds]`` in [0, 1), on ``row_ids.device``."""
    row_ids = row_ids.to(torch.int64)
    pairs = (rounds + 1) // 2
    k = torch.arange(pairs, dtype=torch.int64, device=row_ids.device)[None, :]
    shape = (row_ids.shape[0], pairs)
    counter = (
        k.expand(shape),
        (row_ids & _MASK32)[:, None].expand(shape),
        (row_ids >> 32)[:, None].expand(shape),
        torch.full(shape, STREAM_SORTED_UNIFORMS, dtype=torch.int64, device=row_ids.device),
    )
    w0, w1, w2, w3 = philox4x32_10(counter, (seed & _MASK32, seed >> 32))
    even = (w0 << 21) | (w1 >> 11)
    odd = (w2 << 21) | (w3 >> 11)
    keys = torch.stack((even, odd), dim=-1).reshape(shape[0], 2 * pairs)[:, :rounds]
    keys, _ = torch.sort(keys, dim=-1)
    return keys.to(torch.float64) * 2.0**-UNIFORM_BITS
