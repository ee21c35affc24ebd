"""Cycle time per stage against a real Label Studio 1.23.2, for 1,000 and 10,000 tasks.

For each size: import N tasks (digit images as data: URLs, every 10th one annotated) into a fresh
project, run a cycle with an empty embedding cache, then a second cycle with the cache warm. The
table gives every stage's seconds (from the cycle record, as ``GET /api/projects/<id>/cycles``
shows them) and the push cost per 1,000 tasks. The baseline row, measured in the same run, is
Label Studio's bulk prediction import alone for the same N (the floor of the push stage).

    python benchmarks/bench_cycle.py                  # 1,000 and 10,000 tasks
    python benchmarks/bench_cycle.py --quick          # 1,000 tasks
    python benchmarks/bench_cycle.py --image-size 224 --threads 2
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.cycle import make_runner
from backend.demo import DEMO_CONFIG, digit_images
from backend.labelstudio.client import LabelStudio
from backend.lsprocess import start_label_studio
from backend.scheduler import run_cycle_once
from backend.settings import Settings, load_settings
from backend.store import cycles
from backend.store.db import Store

STAGES = ("reconcile", "featurize", "train", "score", "push", "record")


def _tasks(n: int) -> list[dict[str, Any]]:
    base = list(digit_images(1797, size=64))
    rng = np.random.default_rng(0)
    tasks = []
    for i in range(n):
        _, png, digit = base[i % len(base)]
        # Append a few random bytes after the PNG end so every task has distinct content
        # (decoders ignore trailing bytes; the embedding cache keys on the bytes).
        data = png + rng.bytes(8)
        task: dict[str, Any] = {
            "data": {"image": "data:image/png;base64," + base64.b64encode(data).decode()}
        }
        if i % 10 == 0:
            task["annotations"] = [
                {
                    "result": [
                        {
                            "from_name": "digit",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [str(digit)]},
                        }
                    ]
                }
            ]
        tasks.append(task)
    return tasks


def _settings(url: str, token: str, data_dir: Path, image_size: int) -> Settings:
    return load_settings(
        environ={
            "LABELLOOP_LABEL_STUDIO__URL": url,
            "LABELLOOP_LABEL_STUDIO__TOKEN": token,
            "LABELLOOP_STORE__DATA_DIR": str(data_dir),
            "LABELLOOP_MODEL__IMAGE_SIZE": str(image_size),
            "LABELLOOP_SERVER__LOG_LEVEL": "WARNING",
        }
    )


def _cycle(settings: Settings, store: Store, project: int) -> dict[str, Any]:
    run = run_cycle_once(
        store, make_runner(settings, store), project, trigger="manual", lease_s=600
    )
    with store.session() as session:
        record = cycles.to_dict(cycles.history(session, project, 1)[0])
    if run is None or run.state != "succeeded":
        raise SystemExit(f"cycle failed: {record.get('error')}")
    return record


def _baseline_import(ls: LabelStudio, project: int, task_ids: list[int]) -> float:
    predictions = [
        {"task": t, "model_version": "bench-baseline", "score": i / len(task_ids), "result": []}
        for i, t in enumerate(task_ids)
    ]
    t0 = time.perf_counter()
    ls.import_predictions(project, predictions)
    seconds = time.perf_counter() - t0
    ls.delete_model_version(project, "bench-baseline")
    return seconds


def run_size(url: str, token: str, root: Path, n: int, image_size: int) -> list[str]:
    settings = _settings(url, token, root / f"data-{n}", image_size)
    ls = LabelStudio(settings.label_studio)
    project = ls.create_project(f"bench cycle {n}", DEMO_CONFIG)
    task_ids = ls.import_tasks(project, _tasks(n))
    store = Store(settings.store.url)
    store.upgrade()
    rows = []
    for label in ("cold cache", "warm cache"):
        record = _cycle(settings, store, project)
        timings = record["stage_timings"]
        total = sum(timings.get(s, 0.0) for s in STAGES)
        per_1000 = timings.get("push", 0.0) / (n / 1000)
        cells = " | ".join(f"{timings.get(s, 0.0):>7.2f}" for s in STAGES)
        rows.append(f"| {n:>6} | {label:<18} | {cells} | {total:>7.2f} | {per_1000:>10.2f} |")
    baseline = _baseline_import(ls, project, task_ids[: n - n // 10])
    empty = " | ".join(f"{'':>7}" for _ in STAGES[:4])
    rows.append(
        f"| {n:>6} | {'baseline: LS import':<18} | {empty} | {baseline:>7.2f} | "
        f"{'':>7} | {baseline:>7.2f} | {baseline / (n / 1000):>10.2f} |"
    )
    store.dispose()
    ls.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ls-bin", default=".cache/ls-venv/bin/label-studio")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_label_studio(args.ls_bin, Path(tmp) / "ls")
        try:
            rows = [
                row
                for n in sizes
                for row in run_size(proc.url, proc.token, Path(tmp), n, args.image_size)
            ]
        finally:
            proc.stop()
    print(
        f"Cycle time per stage (s), real Label Studio 1.23.2, EfficientNet-Lite0 at "
        f"{args.image_size} px, {args.threads} torch threads, 10 % of tasks labeled"
    )
    head = " | ".join(f"{s:>7}" for s in STAGES)
    print(f"| tasks  | embeddings         | {head} |   total | push/1000 |")
    print("|--------|--------------------|" + "---------|" * (len(STAGES) + 1) + "-----------|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
