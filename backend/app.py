"""Flask app factory: ``create_app(settings)`` wires services, blueprints and error handling."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Flask, Response, current_app, g, request

from backend.api.access import check_access
from backend.api.errors import error_response, register_error_handlers
from backend.api.requests import IdConverter
from backend.inbox import ApplyReport, InboxWorker
from backend.metrics import Metrics
from backend.models_registry import ModelRegistry
from backend.project_settings import loop_settings_for
from backend.scheduler import CycleRunner, LoopScheduler, start_embedded_scheduler
from backend.settings import Settings
from backend.store.db import Store

log = logging.getLogger(__name__)
EXTENSION = "labelloop"
__all__ = ["EXTENSION", "Services", "create_app", "error_response", "services", "shutdown"]


@dataclass
class Services:
    """Everything a request handler needs, built once per app and kept in ``app.extensions``."""

    settings: Settings
    store: Store
    metrics: Metrics
    models: ModelRegistry
    worker: InboxWorker | None = None
    loop: LoopScheduler | None = None
    started_at: float = field(default_factory=time.time)
    _resolver: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def image_resolver(self) -> Any:
        """One image resolver per process (it holds Label Studio auth and a connection pool)."""
        with self._lock:
            if self._resolver is None:
                from backend.labelstudio.images import ImageResolver

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


def _start_timer() -> None:
    g.started = time.perf_counter()
    check_access(services().settings.server)


def _observe(response: Response) -> Response:
    svc = services()
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    svc.metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    svc.metrics.latency.labels(endpoint).observe(elapsed)
    return response


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    start_worker: bool = False,
    upgrade: bool = True,
    runner: CycleRunner | None = None,
) -> Flask:
    """Build the Flask app.

    Args:
        settings: the one settings object.
        store: an open store to use (tests share one); a new one from settings otherwise.
        start_worker: run the inbox worker thread (``labelloop serve`` does; tests apply inline),
            only where this process runs the scheduler (``loop.run_scheduler``): the process
            that applies a webhook feeds its annotation changes to the triggers, so with a
            separate ``labelloop scheduler`` that process applies the inbox, and API processes
            only store events.
        upgrade: migrate the schema to the newest version first.
        runner: the cycle; with it (and ``loop.run_scheduler``) this process runs the one
            scheduler of the deployment (``labelloop serve``).
    """
    from backend.api.admin import bp as admin_bp
    from backend.api.cycles import bp as cycles_bp
    from backend.api.dashboard import bp as dashboard_bp
    from backend.api.ml import bp as ml_bp
    from backend.api.openapi import bp as openapi_bp

    app = Flask(__name__)
    app.url_map.converters["id"] = IdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = store or Store(settings.store.url)
    if upgrade:
        store.upgrade()
    svc = Services(settings, store, Metrics(), ModelRegistry(store))
    if runner is not None:
        svc.loop = start_embedded_scheduler(
            settings, store, runner, settings_for=loop_settings_for(store, settings)
        )
    if start_worker and settings.loop.run_scheduler:
        svc.worker = InboxWorker(store, on_applied=svc.events_applied)
        svc.worker.start()
    app.extensions[EXTENSION] = svc
    app.before_request(_start_timer)
    app.after_request(_observe)
    register_error_handlers(app)
    app.register_blueprint(ml_bp)
    app.register_blueprint(cycles_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(openapi_bp)
    return app


def shutdown(app: Flask) -> None:
    """Stop background threads and release the database."""
    svc: Any = app.extensions.get(EXTENSION)
    if svc is None:
        return
    if svc.worker is not None:
        svc.worker.stop()
    if svc.loop is not None:
        svc.loop.shutdown()
    svc.store.dispose()
