"""Long documents in windows: which window of the teacher labels which position.

Policy (``generate(max_length=L, window_overlap=O)``): a sequence of ``n <= L`` tokens is one window. A longer
one is cut into windows of ``L`` tokens whose starts step by ``S = L - O`` (0, S, 2S, ...), the last one
moved back to end exactly at ``n``; each window is a separate forward, so the teacher never sees more than
``L`` positions. Every position is labeled exactly once, from the window that gives it the most left
context: the earliest window holding it. So window 0 labels positions ``[0, L)`` and every later window
labels the positions after the previous window's end, each with at least ``O`` tokens of left context.

Example, ``n = 23, L = 8, O = 3``: windows ``[0, 8) [5, 13) [10, 18) [15, 23)`` label ``[0, 8) [8, 13)
[13, 18) [18, 23)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparselabels.errors import InputError, check_int


@dataclass(frozen=True)
class Window:
    """Tokens ``[start, stop)`` go to the teacher; positions ``[first, stop)`` are labeled from its logits."""

    start: int
    stop: int
    first: int


@dataclass(frozen=True)
class WindowPolicy:
    max_length: int
    overlap: int

    @classmethod
    def make(cls, max_length, overlap) -> WindowPolicy:
        """Checked options; ``overlap=None`` means half the window (each labeled position sees at least
        ``max_length // 2`` tokens of left context, at twice the forward cost of disjoint windows)."""
        length = check_int("max_length", max_length, 1)
        if overlap is None:
            overlap = length // 2
        overlap = check_int("window_overlap", overlap, 0)
        if overlap >= length:
            raise InputError(f"window_overlap must be below max_length ({length}), got {overlap}")
        return cls(length, overlap)

    def plan(self, length: int) -> list[Window]:
        """The windows of a sequence of ``length`` tokens, in order (one, ``[0, length)``, when it fits)."""
        if length <= self.max_length:
            return [Window(0, length, 0)]
        stride = self.max_length - self.overlap
        windows: list[Window] = []
        labeled, step = 0, 0
        while labeled < length:
            start = min(step, length - self.max_length)
            stop = start + self.max_length
            windows.append(Window(start, stop, labeled))
            labeled, step = stop, step + stride
        return windows

    def describe(self) -> dict:
        """What the metadata records of the policy."""
        return {"max_length": self.max_length, "window_overlap": self.overlap,
                "policy": "windows of max_length stepping by max_length - window_overlap, the last ending at the "
                          "sequence's end; each position labeled from the earliest window holding it"}
