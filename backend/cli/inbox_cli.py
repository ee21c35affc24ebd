"""``labelloop inbox retry [--project ID]``: apply set-aside webhook events again."""

from __future__ import annotations

import argparse
from typing import Any

from backend.settings import Settings


def add_parser(sub: Any) -> None:
    inbox = sub.add_parser("inbox", help="the webhook inbox: events set aside after failing")
    actions = inbox.add_subparsers(dest="inbox_command", required=True)
    retry = actions.add_parser(
        "retry", help="put set-aside events back in the queue and apply them now"
    )
    retry.add_argument("--project", type=int, help="only this project's events")


def cmd_inbox(settings: Settings, args: argparse.Namespace) -> int:
    """Requeue the set-aside events and apply the inbox; exit 1 when some fail again."""
    from backend.loop.inbox import apply_pending, retry_set_aside
    from backend.store.db import Store

    store = Store(settings.store.url)
    store.upgrade()
    try:
        requeued = retry_set_aside(store, project_id=args.project)
        report = apply_pending(store, project_id=args.project)
    finally:
        store.dispose()
    print(
        f"requeued {requeued} set-aside events; applied {report.total}, "
        f"set aside again {report.set_aside}"
        + (
            "; a transient database error persists, the rest stay pending"
            if report.deferred
            else ""
        )
    )
    return 1 if report.set_aside or report.deferred else 0
