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
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Writes submitted items in batches through ``write``; each caller gets its own result.

    ``write`` takes the batch in arrival order and returns one result per item (in one
    transaction: all of them are durable when it returns). When it raises, every item of that
    batch raises the same error to its caller, and nothing of the batch was committed.
    """

    def __init__(self, write: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 256):
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
        while True:
            batch = self._take_turn(slot)
            if batch is None:
                break
            self._write_batch(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _take_turn(self, slot: _Slot[T, R]) -> list[_Slot[T, R]] | None:
        """None once ``slot`` is written; else the batch this thread must now write."""
        with self._changed:
            while self._writing and not slot.done:
                self._changed.wait()
            if slot.done:
                return None
            self._writing = True
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            return batch

    def _write_batch(self, batch: list[_Slot[T, R]]) -> None:
        try:
            results = list(self._write([s.item for s in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"write returned {len(results)} results for {len(batch)} items")
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as exc:  # every caller of the batch learns it failed
            for slot in batch:
                slot.error = exc
        finally:
            with self._changed:
                for slot in batch:
                    slot.done = True
                self._writing = False
                self._changed.notify_all()
