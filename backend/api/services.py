"""What every request handler reaches: the app's services, looked up per request.

The blueprints import this module, never the app factory (:mod:`backend.api.app`), so the factory
can import every blueprint at module level.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from flask import current_app

from backend.api.prometheus import Metrics
from backend.diagnosis.page import Pages
from backend.labelstudio.images import ImageResolver
from backend.loop.inbox import ApplyReport, InboxWorker
from backend.runtime.scheduler import LoopScheduler
from backend.serving.registry import ModelRegistry
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store, is_transient
from backend.store.group import GroupCommit

EXTENSION = "labelloop"


@dataclass
class Services:
    """Everything a request handler needs, built once per app and kept in ``app.extensions``."""

    settings: Settings
    store: Store
    metrics: Metrics
    models: ModelRegistry
    worker: InboxWorker | None = None
    loop: LoopScheduler | None = None
    pages: Pages = field(default_factory=Pages)
    started_at: float = field(default_factory=time.time)
    _resolver: ImageResolver | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _deliveries: GroupCommit[repo.Delivery, bool | None] | None = None
    #: Projects a delivery was stored for (or found a duplicate of): set up, so a later batch
    #: naming only these reads no project row. Projects are never removed; an event of one
    #: removed behind the server's back would be stored and then skipped when applied.
    _known_projects: set[int] = field(default_factory=set)

    def record_delivery(self, delivery: repo.Delivery) -> bool | None:
        """Store a webhook delivery durably: True stored, False a duplicate, None a project this
        backend was never set up for. Concurrent deliveries share one transaction (one commit
        and fsync for all of them) instead of queueing for SQLite's one writer; a delivery that
        cannot be stored fails alone, and a busy database fails the batch (the caller answers
        503 so the sender may retry)."""
        with self._lock:
            if self._deliveries is None:
                self._deliveries = GroupCommit(
                    self._write_deliveries, size=lambda d: d.size, transient=is_transient
                )
        return self._deliveries.submit(delivery)

    def _write_deliveries(self, batch: Sequence[repo.Delivery]) -> list[bool | None]:
        # One short write transaction holding SQLite's write lock from its start: it waits its
        # turn (busy timeout) instead of failing when the inbox worker committed since it read.
        with self.store.write_connection() as connection:
            outcomes = repo.record_deliveries(
                connection, batch, known_projects=self._known_projects
            )
        self._known_projects.update(
            d.project_id for d, outcome in zip(batch, outcomes, strict=True) if outcome is not None
        )
        return outcomes

    def image_resolver(self) -> ImageResolver:
        """One image resolver per process (it holds Label Studio auth and a connection pool)."""
        with self._lock:
            if self._resolver is None:
                self._resolver = ImageResolver(self.settings.label_studio, self.settings.images)
            return self._resolver

    def events_applied(self, report: ApplyReport) -> None:
        for (project, action), count in report.applied.items():
            self.metrics.events_applied.labels(str(project), action).inc(count)
        self.metrics.inbox_retries.inc(report.retries)
        if self.loop is not None:
            self.loop.on_applied(report)


def services() -> Services:
    """The services of the app handling the current request."""
    return cast(Services, current_app.extensions[EXTENSION])
