"""The WSGI servers of ``labelloop serve``.

Embedded (the default, one process): waitress. Its event loop reads every request completely
before a worker thread sees it, so slow or half-open clients hold a connection slot (bounded by
``server.connection_limit``, closed after ``server.read_timeout_s`` of silence), never a thread;
the in-process scheduler and inbox worker run beside it.

Scale-out (``labelloop serve --workers N``, the scale-out layout's ``api``): gunicorn. Each worker
process builds its own app (store, model registry) after the fork and only serves
requests: with ``loop.run_scheduler: false`` it neither runs a scheduler nor applies the webhook
inbox (the one ``labelloop scheduler`` process does both). Workers are threaded (gthread), so a
slow ``/predict`` does not hold up webhooks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
from types import FrameType
from typing import Any

from gunicorn.app.base import BaseApplication

from backend.settings import ServerSettings, Settings

log = logging.getLogger(__name__)

#: Threads per worker process.
THREADS = 4
#: Seconds a request may take before gunicorn restarts its worker (a large /predict batch).
TIMEOUT_S = 300


class Refused(Exception):
    """The server would be reachable from other machines without credentials."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(server: ServerSettings) -> None:
    """Refuse to listen beyond loopback without Label Studio credentials (unless allowed).

    Raises:
        Refused: with what to set.
    """
    if is_loopback(server.host) or server.basic_auth is not None or server.allow_anonymous:
        return
    raise Refused(
        f"refusing to serve on {server.host} without credentials: anyone who reaches the port "
        "could send webhooks and predictions. Set server.basic_auth_user and "
        "server.basic_auth_password (labelloop connect registers them in Label Studio), and "
        "server.admin_tokens for the admin API and dashboard; or set server.allow_anonymous: "
        "true to serve without them"
    )


def _json_channel() -> type:
    """Waitress's HTTP channel answering its own errors (a body over the limit, a malformed
    request line or header, chunked framing it cannot parse) as the API answers every error:
    JSON ``{"error", "detail"}`` instead of waitress's plain text."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):  # type: ignore[misc]  # waitress ships no types
        def execute(self) -> None:
            error = self.request.error
            body = json.dumps(
                {
                    "error": str(error.reason).lower().replace(" ", "_"),
                    "detail": str(error.body),
                }
            ).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonChannel(HTTPChannel):  # type: ignore[misc]  # waitress ships no types
        error_task_class = JsonErrorTask

    return JsonChannel


def serve_embedded(settings: Settings, app: Any) -> int:
    """Serve ``app`` with waitress on ``server.host:port`` until SIGTERM / Ctrl-C."""
    from waitress.server import create_server

    server = settings.server
    httpd = create_server(
        app,
        host=server.host,
        port=server.port,
        threads=server.threads,
        connection_limit=server.connection_limit,
        channel_timeout=server.read_timeout_s,
        cleanup_interval=max(1, int(server.read_timeout_s // 2)),
        max_request_body_size=server.max_body_bytes,
        asyncore_use_poll=True,  # select() stops at 1,024 descriptors
        ident="labelloop",
    )
    # Read by each listening socket on every accept (a MultiSocketServer maps several).
    channel = _json_channel()
    listeners = [httpd] if hasattr(httpd, "channel_class") else list(httpd.map.values())
    for listener in listeners:
        if hasattr(listener, "channel_class"):
            listener.channel_class = channel

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    port = getattr(httpd, "effective_port", server.port)
    log.info("labelloop serving on http://%s:%s", server.host, port)
    try:
        httpd.run()  # returns on KeyboardInterrupt (which waitress catches itself)
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping")
        httpd.close()
    return 0


def _stop_app(_server: Any, worker: Any) -> None:
    from backend.api.app import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None:
        shutdown(app)


class _Api(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
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
            "worker_connections": server.connection_limit,
            "keepalive": 5,
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "graceful_timeout": 30,
            "loglevel": server.log_level.lower(),
            "proc_name": "labelloop-api",
            # gunicorn's runtime control socket (a file under the user's home) is not used.
            "control_socket_disable": True,
            "worker_exit": _stop_app,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from backend.api.app import create_app

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
