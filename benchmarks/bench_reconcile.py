"""Reconcile time for a project of N tasks (half annotated) against a real Label Studio 1.23.2.

Starts Label Studio on 127.0.0.1 with a temporary data dir, imports N tasks (every other one with
an annotation) in one request, then times:

- baseline: listing the same tasks through the SDK's default pager (pages of 100);
- labelloop's listing alone (raw /api/tasks, pages of ``label_studio.page_size``);
- a full reconcile into an empty store (first sync);
- a reconcile with nothing changed (the steady state of every cycle);
- an incremental reconcile right after the import, when every task lies inside the overlap
  before the cursor: by stamps (what labelloop does), beside listing that window in full (what it
  did before);
- a reconcile after 1 % of the annotations were deleted while the backend was down.

    python benchmarks/bench_reconcile.py              # 5,000 tasks
    python benchmarks/bench_reconcile.py --quick      # 1,000 tasks
    python benchmarks/bench_reconcile.py --ls-bin PATH
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.cli.lsprocess import start_label_studio
from backend.labelstudio.client import LabelStudio
from backend.loop.sync import OVERLAP, reconcile
from backend.settings import load_settings
from backend.store import repo
from backend.store.db import Store

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>'
)


def _tasks(n: int) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        task: dict[str, Any] = {"data": {"image": f"/data/upload/1/img_{i:05d}.png"}}
        if i % 2 == 0:
            task["annotations"] = [
                {
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["abc"[i % 3]]},
                        }
                    ]
                }
            ]
        tasks.append(task)
    return tasks


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ls-bin", default=".cache/ls-venv/bin/label-studio")
    args = parser.parse_args()
    n = 1000 if args.quick else args.tasks
    with tempfile.TemporaryDirectory() as tmp:
        ls_proc = start_label_studio(args.ls_bin, Path(tmp) / "ls")
        try:
            rows = _run(ls_proc.url, ls_proc.token, Path(tmp), n)
        finally:
            ls_proc.stop()
    print(f"Reconcile against a real Label Studio 1.23.2, {n} tasks, {n // 2} annotations")
    print("| step                                            | seconds | tasks/s |")
    print("|-------------------------------------------------|---------|---------|")
    for name, seconds in rows:
        print(f"| {name:<47} | {seconds:>7.2f} | {n / seconds:>7.0f} |")


def _run(url: str, token: str, tmp: Path, n: int) -> list[tuple[str, float]]:
    settings = load_settings(
        environ={
            "LABELLOOP_LABEL_STUDIO__URL": url,
            "LABELLOOP_LABEL_STUDIO__TOKEN": token,
            "LABELLOOP_STORE__DATA_DIR": str(tmp / "data"),
        }
    )
    ls = LabelStudio(settings.label_studio)
    project = ls.create_project("bench reconcile", CONFIG)
    ls.import_tasks(project, _tasks(n))
    store = Store(settings.store.url)
    store.upgrade()
    rows = []
    seconds, listed = _timed(lambda: ls.sdk_default_listing_count(project))
    rows.append(("baseline: SDK default pager (pages of 100)", seconds))
    seconds, listed = _timed(lambda: sum(1 for _ in ls.iter_tasks(project)))
    if listed != n:
        raise SystemExit(f"listed {listed} tasks, expected {n}")
    rows.append((f"labelloop listing (pages of {settings.label_studio.page_size})", seconds))
    rows.append(("reconcile, empty store", _timed(lambda: reconcile(store, ls, project))[0]))
    rows.append(("reconcile, nothing changed", _timed(lambda: reconcile(store, ls, project))[0]))
    with store.session() as session:
        cursor = repo.ensure_project(session, project).ls_synced_until
    assert cursor is not None
    seconds, listed = _timed(
        lambda: sum(1 for _ in ls.iter_tasks(project, updated_since=cursor - OVERLAP))
    )
    if listed != n:
        raise SystemExit(f"the overlap window holds {listed} tasks, expected {n}")
    rows.append(("baseline: the overlap window listed in full", seconds))
    seconds, report = _timed(lambda: reconcile(store, ls, project, incremental=True))
    if (report.probed, report.tasks) != (n, 0):
        raise SystemExit(f"incremental reconcile listed {report.tasks} of {report.probed}")
    rows.append(("reconcile, incremental, right after the import", seconds))
    annotated = [t for t in ls.iter_tasks(project) if t.get("annotations")]
    for task in annotated[: max(1, len(annotated) // 100)]:
        ls.delete_annotation(task["annotations"][0]["id"])
    seconds, report = _timed(lambda: reconcile(store, ls, project))
    if report.annotations_deleted != max(1, len(annotated) // 100):
        raise SystemExit(f"reconcile found {report.annotations_deleted} deletions")
    rows.append(("reconcile, 1 % of annotations deleted", seconds))
    store.dispose()
    return rows


if __name__ == "__main__":
    main()
