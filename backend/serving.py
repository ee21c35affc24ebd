"""The API under gunicorn: ``labelloop serve --workers N`` (the scale-out layout's ``api``).

Each worker process builds its own app (store, model registry) after the fork and only serves
requests: with ``loop.run_scheduler: false`` it neither runs a scheduler nor applies the webhook
inbox (the one ``labelloop scheduler`` process does both). Workers are threaded (gthread), so a
slow ``/predict`` does not hold up webhooks.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from backend.settings import Settings

log = logging.getLogger(__name__)

#: Threads per worker process.
THREADS = 4
#: Seconds a request may take before gunicorn restarts its worker (a large /predict batch).
TIMEOUT_S = 300


def _stop_app(_server: Any, worker: Any) -> None:
    from backend.app import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None:
        shutdown(app)


class _Api(BaseApplication):
    def __init__(self, settings: Settings, workers: int) -> None:
        self._settings, self._workers = settings, workers
        super().__init__()

    def load_config(self) -> None:
        server = self._settings.server
        for key, value in {
            "bind": f"{server.host}:{server.port}",
            "workers": self._workers,
            "worker_class": "gthread",
            "threads": THREADS,
            "timeout": TIMEOUT_S,
            "graceful_timeout": 30,
            "loglevel": server.log_level.lower(),
            "proc_name": "labelloop-api",
            "worker_exit": _stop_app,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from backend.app import create_app

        return create_app(self._settings, start_worker=True, upgrade=False)


def serve_with_gunicorn(settings: Settings, workers: int) -> int:
    """Serve the API in ``workers`` gunicorn processes until SIGTERM / Ctrl-C."""
    log.info(
        "labelloop API on http://%s:%d in %d worker processes",
        settings.server.host,
        settings.server.port,
        workers,
    )
    _Api(settings, workers).run()
    return 0
