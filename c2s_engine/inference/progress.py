"""Progress reporting and cancellation shared by every long model call.

A long call takes ``progress(done, total, cells_per_s)`` and ``cancel`` (a
:class:`threading.Event` or a zero-argument callable returning ``True`` once the user
asked to stop). Cancellation is cooperative: it is checked between batches, never inside
a model forward pass, so the work of a finished batch is never thrown away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ProgressFn = Callable[[int, int, float], None]
"""``progress(done, total, items_per_s)``; called after every finished batch."""

CancelLike = threading.Event | Callable[[], bool] | None
"""What the ``cancel`` argument of a long call accepts."""


def cancel_requested(cancel: CancelLike) -> bool:
    """Whether ``cancel`` (an Event, a callable, or None) asks to stop now."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class Throughput:
    """Items done and items per second since the call started.

    Parameters
    ----------
    total
        Items the call will process.
    progress
        Optional callback told about every :meth:`advance`.
    """

    def __init__(self, total: int, progress: ProgressFn | None = None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Wall time since the start."""
        return time.perf_counter() - self._start

    @property
    def per_second(self) -> float:
        """Items per second so far (0.0 before anything finished)."""
        elapsed = self.seconds
        return self.done / elapsed if self.done and elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        """Record ``n`` more finished items and tell the callback."""
        self.done += n
        if self._progress is not None:
            self._progress(self.done, self.total, self.per_second)
