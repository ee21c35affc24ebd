"""``labelloop strategy show|set|history`` and ``labelloop preview``: per-project settings."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

from backend.settings import Settings, SettingsError
from backend.store.db import Store


def _cli_error(message: str) -> Exception:
    from backend.cli.common import CliError

    return CliError(message)


def one_line(exc: SettingsError) -> str:
    """A SettingsError's message on one line (the field names stay in it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[1:] if len(lines) > 1 else lines)


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["strategy.weights.margin=1", "loop.retrain_after=10"]`` as nested changes.

    Values are read as YAML scalars (``true``, ``3``, ``0.5``, ``null``, ``{a: 1}``).
    """
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise _cli_error(f"{pair!r} is not SECTION.FIELD=VALUE (e.g. strategy.batch_size=50)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = changes
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _cli_error(f"{key!r} sets a field inside a value given earlier")
            node = child
        node[path[-1]] = value
    return changes


@contextmanager
def _store(settings: Settings) -> Iterator[Store]:
    store = Store(settings.store.url)
    store.upgrade()
    try:
        yield store
    finally:
        store.dispose()


def _show(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    from backend.loop.selection import describe_report, latest_report
    from backend.store.project_settings import describe

    try:
        info = describe(store, settings, args.project)
    except SettingsError as exc:
        raise _cli_error(one_line(exc)) from None
    report = latest_report(store, args.project)
    if args.json:
        print(json.dumps({**info, "selection": report}, indent=2))
        return 0
    for section, fields in info["effective"].items():
        overridden = info["overrides"].get(section, {})
        for name, value in fields.items():
            default = info["defaults"][section][name]
            note = f"   (project; default {json.dumps(default)})" if name in overridden else ""
            print(f"{section}.{name} = {json.dumps(value)}{note}")
    for line in describe_report(report) if report is not None else []:
        print(line)
    return 0


def _set(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    from backend.store.project_settings import diff, effective_settings, set_project_settings

    changes = parse_assignments(args.assignments)
    before = effective_settings(store, settings, args.project)
    try:
        after = set_project_settings(
            store, settings, args.project, changes, token_name=f"cli:{getpass.getuser()}"
        )
    except SettingsError as exc:
        raise _cli_error(one_line(exc)) from None
    changed = diff(before, after)
    for change in changed:
        print(f"{change['field']}: {json.dumps(change['before'])} -> {json.dumps(change['after'])}")
    print(f"project {args.project}: {len(changed)} setting(s) changed; used from the next cycle")
    return 0


def _history(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    from backend.store.project_settings import project_history

    rows = project_history(store, args.project, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    for row in [] if args.json else rows:
        for change in row["changes"]:
            print(
                f"{row['changed_at']}  {row['token_name']}  {change['field']}: "
                f"{json.dumps(change['before'])} -> {json.dumps(change['after'])}"
            )
    return 0


def cmd_strategy(settings: Settings, args: argparse.Namespace) -> int:
    """``labelloop strategy show|set|history --project ID``."""
    actions = {"show": _show, "set": _set, "history": _history}
    with _store(settings) as store:
        return actions[args.action](settings, store, args)


def _print_preview(result: dict[str, Any]) -> None:
    print(
        f"project {result['project']}, model {result['model_version'] or 'none'}, "
        f"phase {result['phase']['proposed']} (today {result['phase']['today']}); "
        f"overlap with today's top {result['top']}: {result['overlap']['count']}; "
        f"{result['left_out_without_embedding']} task(s) left out without a cached embedding"
    )
    weights = result["weights"]["proposed"]
    if weights:
        print("weights in use: " + ", ".join(f"{k} {v:.3g}" for k, v in weights.items()))
    if result["not_previewed"]:
        print(f"not previewed (take effect after retraining): {', '.join(result['not_previewed'])}")
    for item in result["items"]:
        signals = " ".join(f"{k}={v:.3f}" for k, v in item["breakdown"].items())
        today = item["today_rank"] if item["today_rank"] is not None else "-"
        labels = ",".join(item["suggested_labels"]) or "-"
        task = f"task {item['task_id']}"
        print(f"{item['rank']:>4}  {task:<13} today {today!s:>5}  {labels:<16} {signals}")


def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    """``labelloop preview --project ID [--top N] [KEY=VALUE ...]``: changes nothing."""
    from backend.loop.preview import preview
    from backend.loop.targets import NotEnoughLabels
    from backend.serving.registry import ModelRegistry

    if not 1 <= args.top <= 1000:
        raise _cli_error(f"--top must be from 1 to 1000, got {args.top}")
    changes = parse_assignments(args.assignments)
    with _store(settings) as store:
        served = ModelRegistry(store).get(args.project)
        try:
            result = preview(store, settings, args.project, changes, top=args.top, served=served)
        except SettingsError as exc:
            raise _cli_error(one_line(exc)) from None
        except NotEnoughLabels as exc:
            raise _cli_error(str(exc)) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_preview(result)
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``strategy`` and ``preview`` to the ``labelloop`` sub-command parsers."""
    strategy = sub.add_parser("strategy", help="show or change a project's sampling settings")
    actions = strategy.add_subparsers(dest="action", required=True)
    for name, text in (
        ("show", "effective settings; project overrides are marked"),
        ("set", "change settings: SECTION.FIELD=VALUE ... (used from the next cycle)"),
        ("history", "who changed which setting, and when"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    actions.choices["show"].add_argument("--json", action="store_true")
    actions.choices["history"].add_argument("--json", action="store_true")
    actions.choices["history"].add_argument("--limit", type=int, default=50)
    actions.choices["set"].add_argument(
        "assignments", nargs="+", metavar="KEY=VALUE", help="e.g. strategy.weights.margin=1.0"
    )
    preview = sub.add_parser("preview", help="the queue proposed settings would give; no changes")
    preview.add_argument("--project", type=int, required=True, help="Label Studio project id")
    preview.add_argument("--top", type=int, default=20, help="items to show (default 20)")
    preview.add_argument("--json", action="store_true")
    preview.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="proposed changes")
