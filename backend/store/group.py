"""Group commit: the small writes of many request threads in one transaction.

A webhook is one small insert, but its durable commit (SQLite with ``synchronous=FULL`` waits
for an fsync) costs more than the insert, and SQLite lets one writer in at a time, so concurrent
senders queue behind each other's commits. With :class:`GroupCommit` the first thread to arrive
writes everything queued so far in one transaction, and the threads that arrive while it commits
are written together by the next one. Nobody waits on a timer: a lone request commits at once,
and under load each commit carries as many writes as arrived during the previous one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    size: int
    done: bool = False
    written: bool = False
    result: R | None = None
    error: BaseException | None = None


def _never(_exc: BaseException) -> bool:
    return False


class GroupCommit(Generic[T, R]):
    """Writes submitted items in batches through ``write``; each caller gets its own result.

    ``write`` takes a batch in arrival order and returns one result per item, in one
    transaction: all of them are durable when it returns, none when it raises. A batch holds at
    most ``max_batch`` items and ``max_bytes`` of their ``size`` (a single larger item is
    written alone).

    When ``write`` raises an ``Exception`` that ``transient`` says may pass when tried again
    (the database busy or unreachable), every caller of that batch gets it: writing the items
    apart would only wait longer for the same failure. Any other error is an item's own (a bad
    value, a constraint), so the batch is split in halves and each half written again until the
    item that fails is alone; every other caller gets its result as if it had come alone.
    ``KeyboardInterrupt`` or ``SystemExit`` stops only the thread that was writing; the callers
    of its batch not yet written get a ``RuntimeError``.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int = 256,
        max_bytes: int = 8 << 20,
        size: Callable[[T], int] | None = None,
        transient: Callable[[BaseException], bool] = _never,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self._write = write
        self._max_batch, self._max_bytes = max_batch, max_bytes
        self._size = size
        self._transient = transient
        self._queue: list[_Slot[T, R]] = []
        self._writing = False
        self._changed = threading.Condition()

    @property
    def waiting(self) -> int:
        """Items queued for a batch not yet begun."""
        with self._changed:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """Queue ``item``, wait until a batch holding it is written, return its result."""
        slot: _Slot[T, R] = _Slot(item, self._size(item) if self._size else 0)
        with self._changed:
            self._queue.append(slot)
        while self._write_turn(slot):
            pass
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _take(self) -> list[_Slot[T, R]]:
        """The oldest queued items that fit one batch (at least one); the caller holds the lock."""
        count, total = 0, 0
        for slot in self._queue[: self._max_batch]:
            if count and total + slot.size > self._max_bytes:
                break
            count, total = count + 1, total + slot.size
        batch = self._queue[:count]
        del self._queue[:count]
        return batch

    def _write_turn(self, slot: _Slot[T, R]) -> bool:
        """Wait until ``slot`` is written (False) or it is this thread's turn to write the
        oldest queued items, which may or may not hold ``slot`` (True once written)."""
        with self._changed:
            while self._writing and not slot.done:
                self._changed.wait()
            if slot.done:
                return False
            batch = self._take()
            self._writing = True
        try:
            self._fill(batch)
        finally:
            self._finish(batch)
        return True

    def _fill(self, batch: list[_Slot[T, R]]) -> None:
        try:
            results = list(self._write([s.item for s in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"write returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            if len(batch) == 1 or self._transient(exc):
                for slot in batch:
                    slot.error = exc
                return
            half = len(batch) // 2
            self._fill(batch[:half])
            self._fill(batch[half:])
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.written = result, True

    def _finish(self, batch: list[_Slot[T, R]]) -> None:
        with self._changed:
            for slot in batch:
                if not slot.written and slot.error is None:  # the writer was interrupted
                    slot.error = RuntimeError("the thread writing this batch was interrupted")
                slot.done = True
            self._writing = False
            self._changed.notify_all()
