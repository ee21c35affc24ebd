"""Flask app factory: ``create_app(settings)`` wires services, blueprints and error handling."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from backend.api.access import check_access
from backend.api.admin import bp as admin_bp
from backend.api.cycles import bp as cycles_bp
from backend.api.dashboard import bp as dashboard_bp
from backend.api.errors import error_response, register_error_handlers
from backend.api.ml import bp as ml_bp
from backend.api.openapi import bp as openapi_bp
from backend.api.prometheus import Metrics
from backend.api.requests import IdConverter
from backend.api.services import EXTENSION, Services, services
from backend.loop.contract import CycleRunner
from backend.loop.inbox import InboxWorker
from backend.runtime.scheduler import start_embedded_scheduler
from backend.serving.registry import ModelRegistry
from backend.settings import Settings
from backend.store.db import Store
from backend.store.project_settings import loop_settings_for

log = logging.getLogger(__name__)
__all__ = ["EXTENSION", "create_app", "error_response", "shutdown"]


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
