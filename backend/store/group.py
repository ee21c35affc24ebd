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
    done: bool = False
    written: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Writes submitted items in batches through ``write``; each caller gets its own result.

    ``write`` takes the batch in arrival order and returns one result per item (in one
    transaction: all of them are durable when it returns). When it raises an ``Exception``,
    every item of that batch raises the same error to its caller, and nothing of the batch was
    committed. Anything else (``KeyboardInterrupt``, ``SystemExit``) stops only the thread that
    was writing; the other callers of its batch get a ``RuntimeError``.
    """

    def __init__(
        self, write: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 256
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._write = write
        self._max_batch = max_batch
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
        slot: _Slot[T, R] = _Slot(item)
        with self._changed:
            self._queue.append(slot)
        while self._write_turn(slot):
            pass
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _write_turn(self, slot: _Slot[T, R]) -> bool:
        """Wait until ``slot`` is written (False) or it is this thread's turn to write the
        oldest queued items, which may or may not hold ``slot`` (True once written)."""
        with self._changed:
            while self._writing and not slot.done:
                self._changed.wait()
            if slot.done:
                return False
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
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
        except Exception as exc:  # every caller of the batch learns it failed
            for slot in batch:
                slot.error = exc
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
