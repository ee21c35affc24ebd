"""``labelloop`` command line: serve, connect, sync, status, train, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from backend.cli.common import (
    NEEDS_LABEL_STUDIO,
    CliError,
    connect_project,
    label_studio_client,
    require_label_studio,
)
from backend.logs import configure_logging
from backend.settings import Settings, SettingsError, load_settings, with_overrides

log = logging.getLogger("labelloop")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from backend.cli.serve import Refused, check_exposure, serve_embedded

    settings = with_overrides(settings, serve_overrides(args))
    try:
        check_exposure(settings.server)
    except Refused as exc:
        raise CliError(str(exc)) from None
    if args.workers != 1:
        return _serve_gunicorn(settings, args.workers)
    from backend.api.app import create_app, shutdown
    from backend.runtime.runner import make_runner
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    app = create_app(settings, store=store, start_worker=True, runner=make_runner(settings, store))
    try:
        return serve_embedded(settings, app)
    finally:
        shutdown(app)


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--host``/``--port`` of ``labelloop serve`` as settings overrides."""
    given = {"host": args.host, "port": args.port}
    return {"server": {k: v for k, v in given.items() if v is not None}}


def _serve_gunicorn(settings: Settings, workers: int) -> int:
    """``labelloop serve --workers N``: the API in N gunicorn worker processes (scale-out)."""
    if workers < 1:
        raise CliError(f"--workers must be at least 1, got {workers}")
    if settings.loop.run_scheduler:
        raise CliError(
            "--workers above 1 needs loop.run_scheduler: false and one `labelloop scheduler` "
            "process (every worker would otherwise run a scheduler of its own)"
        )
    from backend.cli.serve import serve_with_gunicorn
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()  # once, before the workers start
    store.dispose()
    return serve_with_gunicorn(settings, workers)


def cmd_connect(settings: Settings, args: argparse.Namespace) -> int:
    done = connect_project(settings, args.project)
    print(
        f"connected Label Studio project {done.project} to {settings.server.public_url} "
        f"(ML backend id {done.backend_id}, title {settings.server.title!r}); "
        f"sampling set to uncertainty; dashboard {done.dashboard}; synced {done.tasks} tasks, "
        f"{done.annotations} annotations; queued cycle {done.cycle_id}, which orders the queue "
        "(a running `labelloop serve` starts it within loop.poll_s)"
    )
    return 0


def cmd_sync(settings: Settings, args: argparse.Namespace) -> int:
    from backend.loop.sync import reconcile
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    ls = label_studio_client(settings)
    report = reconcile(store, ls, args.project, incremental=args.incremental)
    print(report.summary())
    return 0


def cmd_cycle(settings: Settings, args: argparse.Namespace) -> int:
    """Run one cycle now in this process (or only queue it for the running scheduler)."""
    from backend.runtime.lease import run_cycle_once
    from backend.runtime.runner import make_runner
    from backend.store import cycle_records
    from backend.store.db import Store
    from backend.store.models import utcnow

    store = Store(settings.store.url)
    store.upgrade()
    try:
        if args.queue:
            now = utcnow()
            with store.session() as session:
                cycle_id = cycle_records.request(
                    session, args.project, "manual", due_at=now, now=now
                ).id
            print(f"queued cycle {cycle_id} of project {args.project}")
            return 0
        run = run_cycle_once(
            store,
            make_runner(settings, store),
            args.project,
            trigger="manual",
            lease_s=settings.loop.lease_s,
        )
        if run is None:
            raise CliError(f"a cycle of project {args.project} is already running")
        with store.session() as session:
            record = cycle_records.history(session, args.project, 1)[0]
            print(json.dumps(cycle_records.to_dict(record), indent=2, default=str))
        return 0 if run.state == "succeeded" else 1
    finally:
        store.dispose()


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from backend.store import cycle_records, repo
    from backend.store.db import Store
    from backend.store.models import utcnow

    store = Store(settings.store.url)
    store.upgrade()
    with store.session() as session:
        projects = [p for p in repo.list_projects(session) if args.project in (None, p.id)]
        if args.project is not None and not projects:
            raise CliError(f"project {args.project} is not known to this backend; run connect")
        rows = []
        for p in projects:
            counts = repo.project_counts(session, p.id)
            rows.append(
                {
                    "project": p.id,
                    "title": p.title,
                    "labels": p.labels,
                    "config_error": p.config_error,
                    "model_version": p.model_version,
                    "last_synced_at": p.last_synced_at.isoformat() if p.last_synced_at else None,
                    **counts.__dict__,
                    "cycle": cycle_records.current_state(session, p.id, now=utcnow()).to_dict(),
                    "recent_cycles": [
                        cycle_records.to_dict(c) for c in cycle_records.history(session, p.id, 5)
                    ],
                }
            )
    store.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows or [{"project": None}]:
            print(
                "  ".join(f"{k}={v}" for k, v in row.items()) if row["project"] else "no projects"
            )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """``labelloop worker [--burst]``: take cycle jobs from ``loop.rq_queue``."""
    from redis.exceptions import RedisError

    from backend.runtime.workers import connect, run_worker

    if not settings.loop.redis_url:
        raise CliError("labelloop worker needs loop.redis_url (e.g. redis://127.0.0.1:6379/0)")
    try:
        with closing(connect(settings)) as redis:  # fail fast, before loading the model code
            redis.ping()
        from backend.runtime.runner import make_runner

        return run_worker(settings, make_runner, burst=args.burst)
    except RedisError as exc:
        raise CliError(f"Redis at loop.redis_url: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    from backend.cli.admin_cli import add_parsers as add_admin_parsers
    from backend.cli.inbox_cli import add_parser as add_inbox_parser
    from backend.cli.simulate_cli import add_arguments as simulate_arguments

    parser = argparse.ArgumentParser(prog="labelloop", description=__doc__)
    parser.add_argument("--config", type=Path, help="a YAML file overriding config/labelloop.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the ML backend server (embedded mode)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API worker processes under gunicorn (needs loop.run_scheduler: false); 1 = one "
        "threaded process that also runs the scheduler",
    )
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
    for name, text in (
        ("connect", "register this backend in a Label Studio project and sync it"),
        ("sync", "reconcile the store with Label Studio (tasks and annotations)"),
        ("train", "featurize what is missing, train a model version and print its metrics"),
        ("cycle", "run one retrain-and-requeue cycle now (reconcile, train, score, push)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    sub.choices["cycle"].add_argument(
        "--queue", action="store_true", help="only queue it for the running scheduler"
    )
    sub.add_parser(
        "scheduler",
        help="the one scheduler of a scale-out deployment: applies the inbox, runs cycles",
    )
    worker = sub.add_parser(
        "worker",
        help="run cycles the scheduler queued in Redis (loop.executor: rq); start any number",
    )
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    sub.choices["sync"].add_argument(
        "--incremental",
        action="store_true",
        help="only tasks changed since the last sync (deleted tasks need a full sync)",
    )
    add_admin_parsers(sub)
    add_inbox_parser(sub)
    status = sub.add_parser("status", help="what the store holds per project")
    status.add_argument("--project", type=int)
    status.add_argument("--json", action="store_true")
    demo = sub.add_parser("demo", help="local Label Studio + labelloop with a demo project")
    demo.add_argument("--port", type=int, default=8080, help="Label Studio port")
    demo.add_argument("--dir", type=Path, default=Path(".demo"), help="where demo data lives")
    demo.add_argument(
        "--ls-bin",
        default=".cache/ls-venv/bin/label-studio",
        help="the label-studio executable (make run installs it in .cache/ls-venv)",
    )
    simulate_arguments(
        sub.add_parser("simulate", help="compare strategies on a labeled dataset (learning curves)")
    )
    return parser


def _commands() -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    from backend.cli.admin_cli import cmd_preview, cmd_strategy
    from backend.cli.demo import cmd_demo
    from backend.cli.inbox_cli import cmd_inbox
    from backend.cli.simulate_cli import cmd_simulate
    from backend.cli.train_cli import cmd_train
    from backend.runtime.process import cmd_scheduler

    return {
        "serve": cmd_serve,
        "inbox": cmd_inbox,
        "connect": cmd_connect,
        "sync": cmd_sync,
        "status": cmd_status,
        "train": cmd_train,
        "cycle": cmd_cycle,
        "scheduler": cmd_scheduler,
        "worker": cmd_worker,
        "demo": cmd_demo,
        "simulate": cmd_simulate,
        "strategy": cmd_strategy,
        "preview": cmd_preview,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"labelloop: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    from backend.labelstudio.auth import LabelStudioError

    try:
        if args.command in NEEDS_LABEL_STUDIO and not getattr(args, "queue", False):
            require_label_studio(settings, f"labelloop {args.command}")
        return _commands()[args.command](settings, args)
    except (CliError, LabelStudioError) as exc:
        print(f"labelloop: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
