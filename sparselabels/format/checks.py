"""Semantic checks of one sequence's labels, shared by the writer (input) and the reader (file contents).

One numba pass over the CSR arrays finds the first violation; the caller turns it into an exception that
names the file or the writer's sequence, with the position, label and field reported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

MAX_PROB_LABELS = 65535
MAX_ROUNDS = 255  # counts are stored as uint8, so a position draws at most 255 times
# A position's probabilities may sum to slightly more than 1 after float16 rounding; beyond this is an error.
PROB_SUM_TOLERANCE = 1e-3

OK = 0


def too_many_labels(positions, labels, value_kind: str, rounds: int | None) -> np.ndarray:
    """Which sequences claim more labels than the label rules let their positions hold (bool mask): a count
    position holds at most ``rounds`` labels (counts >= 1 sum to rounds), a probability position
    MAX_PROB_LABELS. Checked on an index before anything is allocated for it (no product: nothing wraps)."""
    per_position = int(rounds) if value_kind == "count" else MAX_PROB_LABELS
    return -(-np.asarray(labels, dtype=np.int64) // per_position) > np.asarray(positions, dtype=np.int64)

_MESSAGES = {
    1: ("indptr", "indptr[0] is {a}, expected 0"),
    2: ("indptr", "indptr decreases ({a} after {b})"),
    3: ("indptr", "indptr[-1] is {a}, but there are {b} labels"),
    4: ("ids", "id {a} is outside the vocabulary (vocab_size {b})"),
    5: ("ids", "ids are not strictly ascending ({a} after {b})"),
    6: ("counts", "count is {a}; every stored label has count >= 1"),
    7: ("counts", "counts sum to {a}, expected rounds = {b}"),
    8: ("counts", "probability {a} is not in (0, 1]"),
    9: ("counts", "probabilities sum to {a}, more than 1"),
    10: ("indptr", "{a} labels in one position, more than the limit of {b}"),
    11: ("counts", "count {a} is larger than rounds = {b}"),
    12: ("indptr", "indptr has {a} entries; it needs num_positions + 1 >= 1"),
    13: ("counts", "counts has {a} entries but ids has {b}"),
}


@dataclass(frozen=True)
class LabelProblem:
    """The first rule a sequence's labels break: where (position, label index) and what (field, message)."""

    code: int
    position: int
    label: int
    field: str
    message: str

    def describe(self) -> str:
        parts = [f"position {self.position}"] if self.position >= 0 else []
        if self.label >= 0:
            parts.append(f"label {self.label}")
        parts.append(f"field '{self.field}'")
        return ", ".join(parts) + f": {self.message}"

    def location(self) -> dict[str, int | str | None]:
        """Where, as the keyword arguments of ``SparseLabelsError.at``."""
        return {"position": self.position if self.position >= 0 else None,
                "label": self.label if self.label >= 0 else None, "field": self.field}


@numba.njit(cache=True, nogil=True)
def _check_csr(ids, counts, indptr, vocab_size, rounds, is_prob, max_labels):
    """Return (code, position, label, a, b) for the first violation, code 0 when all is well."""
    num_pos = indptr.shape[0] - 1
    num_labels = ids.shape[0]
    if indptr[0] != 0:
        return 1, -1, -1, indptr[0], 0
    for p in range(num_pos):  # structure first, so that content checks can trust indptr
        lo = indptr[p]
        hi = indptr[p + 1]
        if hi < lo:
            return 2, p, -1, hi, lo
        if hi > num_labels:
            return 3, p, -1, hi, num_labels
        if hi - lo > max_labels:
            return 10, p, -1, hi - lo, max_labels
    if indptr[num_pos] != num_labels:
        return 3, num_pos, -1, indptr[num_pos], num_labels
    for p in range(num_pos):
        lo = indptr[p]
        hi = indptr[p + 1]
        total = 0
        ptotal = 0.0
        prev = -1
        for k in range(lo, hi):
            v = np.int64(ids[k])
            if v < 0 or v >= vocab_size:
                return 4, p, k, v, vocab_size
            if v <= prev:
                return 5, p, k, v, prev
            prev = v
            if is_prob:
                x = np.float64(counts[k])
                if not (x > 0.0 and x <= 1.0):
                    return 8, p, k, np.int64(0), 0
                ptotal += x
            else:
                c = np.int64(counts[k])
                if c <= 0:
                    return 6, p, k, c, 0
                if c > rounds:
                    return 11, p, k, c, rounds
                total += c
        if is_prob:
            if ptotal > 1.0 + PROB_SUM_TOLERANCE:
                return 9, p, -1, np.int64(0), 0
        elif hi > lo and total != rounds:
            return 7, p, -1, total, rounds
    return 0, -1, -1, 0, 0


@numba.njit(cache=True, nogil=True)
def _counts_hold(ids, counts, indptr, vocab_size, rounds, max_labels):
    """Whether count labels keep every rule that :func:`_check_csr` checks (True: it would find nothing), in
    flat passes over the labels: a loop per position costs a mispredicted branch per position, more than the
    position's labels. Sound for ``0 < rounds < 2**16`` (position sums then fit uint32); on False the caller runs
    ``_check_csr`` for the first violation. Nothing is indexed before the structure of ``indptr`` is known."""
    num_pos = indptr.shape[0] - 1
    num_labels = ids.shape[0]
    if indptr[0] != 0 or indptr[num_pos] != num_labels:
        return False
    bad = False
    for p in range(num_pos):  # with the two ends above: 0 <= indptr[p] <= indptr[p + 1] <= num_labels
        n = indptr[p + 1] - indptr[p]
        bad |= (n < 0) | (n > max_labels)
    if bad:
        return False
    if num_labels == 0:
        return True
    vocab = np.uint64(vocab_size)
    rounds_less_1 = np.uint64(rounds - 1)
    for k in range(num_labels):  # ids in [0, vocab_size), counts in [1, rounds]
        bad |= (np.uint64(np.int64(ids[k])) >= vocab) | (np.uint64(np.int64(counts[k]) - 1) > rounds_less_1)
    # ids strictly ascend within each position: every non-increase of the flat ids falls on a position's first label
    falls = 0
    for k in range(1, num_labels):
        falls += np.int64(ids[k]) <= np.int64(ids[k - 1])
    if bad:
        return False
    prefix = np.empty(num_labels + 1, dtype=np.uint32)  # count sums wrap, their differences per position do not
    total = np.uint32(0)
    prefix[0] = 0
    for k in range(num_labels):
        total += np.uint32(counts[k])
        prefix[k + 1] = total
    falls_at_starts = 0
    want = np.uint32(rounds)
    for p in range(num_pos):
        lo = indptr[p]
        hi = indptr[p + 1]
        used = hi > lo
        first = min(lo, num_labels - 1)  # clamped: an empty position's lo may be num_labels (nothing is counted)
        before = max(first - 1, 0)
        falls_at_starts += used & (lo >= 1) & (np.int64(ids[first]) <= np.int64(ids[before]))
        bad |= used & (np.uint32(prefix[hi] - prefix[lo]) != want)
    return not bad and falls == falls_at_starts


def check_labels(
    ids: np.ndarray,
    values: np.ndarray,
    indptr: np.ndarray,
    *,
    vocab_size: int,
    value_kind: str,
    rounds: int | None,
) -> LabelProblem | None:
    """The first violation of the label rules in one sequence (spec/FORMAT.md, "Label rules"), or None."""
    # The kernel indexes indptr[0] and counts[k] for k < len(ids) without bounds checks: the shapes it relies
    # on are checked here, so that no codec (or caller) can make it read past an array.
    if indptr.ndim != 1 or indptr.shape[0] == 0:
        return LabelProblem(12, -1, -1, "indptr", _MESSAGES[12][1].format(a=indptr.size, b=0))
    if ids.ndim != 1 or values.shape != ids.shape:
        return LabelProblem(13, -1, -1, "counts", _MESSAGES[13][1].format(a=values.size, b=ids.size))
    is_prob = value_kind == "prob"
    if is_prob:
        vals = values.astype(np.float32)  # numba has no float16 arithmetic
        max_labels = MAX_PROB_LABELS
        rounds_arg = 0
    else:
        vals = values
        max_labels = int(rounds)
        rounds_arg = int(rounds)
    if not is_prob and 0 < rounds_arg < 1 << 16 \
            and _counts_hold(ids, vals, indptr, int(vocab_size), rounds_arg, max_labels):
        return None
    code, pos, label, a, b = _check_csr(ids, vals, indptr, int(vocab_size), rounds_arg, is_prob, max_labels)
    if code == OK:
        return None
    field, template = _MESSAGES[int(code)]
    if code == 3 and pos == indptr.shape[0] - 1:
        pos = -1  # the last entry of indptr: not a position of its own
    if code == 4:
        a = int(ids[label])  # the kernel saw it as int64: a uint64 id >= 2**63 would print negative
    elif code in (6, 11):
        a = int(values[label])
    elif code == 8:
        a = float(values[label])
    elif code == 9:
        a = float(np.sum(values[indptr[pos] : indptr[pos + 1]].astype(np.float64)))
    return LabelProblem(int(code), int(pos), int(label), field, template.format(a=a, b=b))
