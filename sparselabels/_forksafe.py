"""A lock that a process forked while another thread held it does not inherit held.

DataLoader workers are forked with the dataset (and the shard sets and codec caches inside it) as it is: if
a thread of the parent was inside a locked section at that moment, a plain ``threading.Lock`` stays held in
the child, where no thread will ever release it, and the worker's first read hangs. The data the locks guard
stays consistent across a fork (each guarded step is one operation under the GIL), so a fresh lock is safe.
"""

from __future__ import annotations

import os
import threading
import weakref

_LIVE: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A ``threading.Lock`` for ``with`` blocks, replaced by a released one in a forked child."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LIVE.add(self)

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __reduce__(self):  # a pickled owner gets a new lock, not a copy of this one's state
        return (ForkSafeLock, ())


def _renew_after_fork() -> None:
    for lock in list(_LIVE):
        lock._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)
