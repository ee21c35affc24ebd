"""Cycle time per stage against a real Label Studio 1.23.2 serving images from local-files storage.

For each size N: write N JPEG images (640x480 digits with noise, distinct bytes) into a folder
under Label Studio's document root, connect it as a Local Files import storage, bulk-import N
tasks referring to them (``/data/local-files/?d=...``, as users' projects do) with ``--labeled``
of them annotated inline, then run a cold cycle (empty embedding cache), a warm one, label 20
tasks through "Label All Tasks" (with their true digit) and run another warm one. Per stage:
seconds (the cycle record, as ``GET /api/projects/<id>/cycles`` shows them; ``after`` is the
diagnosis and the pruning of old versions, run once the cycle is recorded) and the requests the
cycle sent to Label Studio: API calls, task PATCHes (review and diagnosis views) and image
fetches (``/data/...``), counted on this process's HTTP sessions. ``total`` is the cycle until
recorded, without ``after``.

Sizes from ``--seed-above`` on (default 50,000) do not run the cold cycle through Label Studio:
Label Studio serves ~40-70 local-files images a second on 2 cores, so 100,000 would take most of
an hour. Their embeddings are computed first by the cycle's own embedding step
(:func:`backend.loop.embed.embed_tasks`) reading the same files from disk, which records each
task's image reference and content hash as a cold cycle does; the first cycle through Label
Studio then fetches nothing (its row says so) and the warm rows measure what they measure at
10,000.

Baselines from the same run: Label Studio's bulk import of a prediction for every unlabeled
task (what "push all" costs each cycle) and the deletion of that version (what its pruning
costs; up to 20,000 tasks: Label Studio deletes row by row, ~85 s per 10,000), beside our top-K
push; and Label Studio serving the images alone (up to 10,000 of them), fetched as a cold cycle
fetches them (its CPU per image caps what featurization can reach on the same machine).
``--push-all-max`` leaves out the push-all baseline above a size: Label Studio's import of 5,000
predictions slows as the project's predictions accumulate (21 s for the first batch of 100,000,
over 100 s for the last), so at 100,000 that baseline alone takes about 25 minutes.

    python benchmarks/bench_cycle.py                  # 10,000 tasks
    python benchmarks/bench_cycle.py --quick          # 1,000 tasks
    python benchmarks/bench_cycle.py --sizes 10000,100000 --threads 2
    python benchmarks/bench_cycle.py --sizes 10000,100000 --push-all-max 20000
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from _common import machine, process_cpu_s
from numpy.typing import NDArray
from PIL import Image

from backend.cli.demo import DEMO_CONFIG
from backend.cli.lsprocess import start_label_studio
from backend.labelstudio.client import LabelStudio
from backend.labelstudio.images import ImageResolver
from backend.logs import quiet_third_party
from backend.loop.embed import embed_tasks
from backend.loop.sync import load_snapshot, reconcile
from backend.runtime.lease import run_cycle_once
from backend.runtime.runner import make_runner
from backend.settings import Settings, load_settings
from backend.simulate.sets import digit_images
from backend.store import cycle_records
from backend.store.db import Store

#: Sizes up to this one time the deletion of a pushed-all version (Label Studio: ~85 s per 10,000).
PRUNE_BASELINE_MAX = 20_000
#: At most this many images are served for the serving baseline.
SERVE_BASELINE_MAX = 10_000
STAGES = ("reconcile", "featurize", "train", "score", "push", "record", "after")
REQUESTS: Counter[str] = Counter()


@contextmanager
def counting_requests() -> Iterator[Counter[str]]:
    """Count every request this process sends through ``requests`` (API and image fetches)."""
    original = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> Any:
        path = (request.path_url or "").split("?")[0]
        REQUESTS["images" if path.startswith("/data/") else "api"] += 1
        if request.method == "PATCH" and path.startswith("/api/tasks/"):
            REQUESTS["task_writes"] += 1  # one task's data rewritten (review and diagnosis views)
        return original(self, request, **kw)

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield REQUESTS
    finally:
        requests.Session.send = original  # type: ignore[method-assign]


#: Noise added to every image: one shared field, read at a different offset per image (drawing
#: 640 x 480 x 3 fresh values took most of the 15 ms an image cost to write).
_NOISE = np.random.default_rng(0).integers(-12, 12, size=(480 * 2, 640, 3), dtype=np.int16)


def _jpeg(digit: NDArray[np.int16], i: int) -> bytes:
    """Image ``i``: its digit at 640x480 with noise, and the bits of ``i`` as a row of dark or
    bright 8x8 blocks along the top edge (JPEG keeps them), so every image's bytes differ."""
    offset = (i * 7919) % 480
    pixels = digit + _NOISE[offset : offset + 480]
    for bit in range(20):
        pixels[:8, 8 * bit : 8 * bit + 8] = 255 * ((i >> bit) & 1)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def _write_chunk(folder: Path, start: int, stop: int) -> None:
    base = [
        np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((640, 480)), dtype=np.int16)
        for _, png, _ in digit_images(1797, size=32)
    ]
    for i in range(start, stop):
        (folder / f"img_{i:06d}.jpg").write_bytes(_jpeg(base[i % len(base)], i))


def _write_images(folder: Path, n: int, workers: int) -> list[int]:
    """N JPEGs ``folder/img_<i>.jpg`` written by ``workers`` processes; their digits."""
    digits = [int(d) for _, _, d in digit_images(1797, size=32)]
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-n // workers)
    with ProcessPoolExecutor(workers) as pool:
        for done in [
            pool.submit(_write_chunk, folder, a, min(n, a + step)) for a in range(0, n, step)
        ]:
            done.result()
    return [digits[i % len(digits)] for i in range(n)]


def _annotation(digit: int) -> dict[str, Any]:
    value = {"choices": [str(digit)]}
    return {
        "result": [{"from_name": "digit", "to_name": "image", "type": "choices", "value": value}]
    }


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


def _cycle(settings: Settings, store: Store, project: int) -> tuple[dict[str, Any], Counter[str]]:
    before = Counter(REQUESTS)
    run = run_cycle_once(
        store, make_runner(settings, store), project, trigger="manual", lease_s=600
    )
    with store.session() as session:
        record = cycle_records.to_dict(cycle_records.history(session, project, 1)[0])
    if run is None or run.state != "succeeded":
        raise SystemExit(f"cycle failed: {record.get('error')}")
    return record, REQUESTS - before


def _import_project(
    ls: LabelStudio, root: Path, n: int, labeled: float, workers: int
) -> tuple[int, list[int], list[int]]:
    """The project, its task ids and each task's digit."""
    folder = root / f"images-{n}"
    digits = _write_images(folder, n, workers)
    project = ls.create_project(f"bench cycle {n}", DEMO_CONFIG)
    ls._call(  # a Local Files import storage over the folder (no sync: tasks are imported)
        "POST",
        "/api/storages/localfiles",
        json={"project": project, "path": str(folder), "title": "images", "use_blob_urls": True},
    )
    every = max(1, round(1 / labeled))
    tasks = []
    for i, digit in enumerate(digits):
        task: dict[str, Any] = {
            "data": {"image": f"/data/local-files/?d={folder.relative_to(root)}/img_{i:06d}.jpg"}
        }
        if i % every == 0:
            task["annotations"] = [_annotation(digit)]
        tasks.append(task)
    ids: list[int] = []
    for start in range(0, n, 5000):
        ids.extend(ls.import_tasks(project, tasks[start : start + 5000]))
    return project, ids, digits


def _serve_only(
    settings: Settings, refs: list[str], server: subprocess.Popen[bytes]
) -> tuple[float, float]:
    """Label Studio serving the images alone, fetched as a cold cycle fetches them (the same
    resolver, ``images.fetch_workers`` at a time): images per second, and Label Studio's CPU
    milliseconds per image (what its share of 2 cores caps featurization at)."""
    cpu = process_cpu_s(server)
    t0 = time.perf_counter()
    with (
        ImageResolver(settings.label_studio, settings.images) as images,
        ThreadPoolExecutor(settings.images.fetch_workers) as pool,
    ):
        for _ in pool.map(images.fetch, refs):
            pass
    seconds = time.perf_counter() - t0
    return len(refs) / seconds, 1000 * (process_cpu_s(server) - cpu) / len(refs)


def _seed_embeddings(settings: Settings, store: Store, project: int, root: Path) -> float:
    """Embed every task from the image files on disk through the cycle's embedding step (see the
    module docstring); seconds taken."""
    t0 = time.perf_counter()
    reconcile(store, LabelStudio(settings.label_studio), project)
    tasks = load_snapshot(store, project).tasks

    def from_disk(ref: str) -> bytes:
        return (root / ref.split("?d=", 1)[1]).read_bytes()

    result, _ = embed_tasks(settings, store, tasks, from_disk)
    if result.failures or len(result.embeddings) != len(tasks):
        raise SystemExit(f"seeding embedded {len(result.embeddings)} of {len(tasks)} tasks")
    return time.perf_counter() - t0


def _baseline(
    ls: LabelStudio, project: int, task_ids: list[int], prune: bool
) -> tuple[float, float | None]:
    """Seconds to import one prediction per task (push all) and to delete them (its pruning;
    None when not asked for: the version is left in place, the project is dropped after)."""
    predictions = [
        {"task": t, "model_version": "bench-push-all", "score": i / len(task_ids), "result": []}
        for i, t in enumerate(task_ids)
    ]
    t0 = time.perf_counter()
    ls.import_predictions(project, predictions)
    t1 = time.perf_counter()
    if not prune:
        return t1 - t0, None
    ls.delete_model_version(project, "bench-push-all")
    return t1 - t0, time.perf_counter() - t1


def _row(n: int, label: str, record: dict[str, Any], sent: Counter[str]) -> list[str]:
    timings = record["stage_timings"]
    cells = [f"{timings.get(s, 0.0):.2f}" for s in STAGES]
    total = sum(timings.get(s, 0.0) for s in STAGES if s != "after")
    pushed = record["counts"].get("push", {}).get("predictions", 0)
    return [f"{n:,}", label, *cells, f"{total:.2f}", str(pushed), str(sent["api"]),
            str(sent["task_writes"]), str(sent["images"])]  # fmt: skip


def run_size(
    url: str,
    token: str,
    root: Path,
    n: int,
    args: argparse.Namespace,
    server: subprocess.Popen[bytes],
) -> list[list[str]]:
    settings = _settings(url, token, root / f"labelloop-{n}", args.image_size)
    ls = LabelStudio(settings.label_studio)
    project, ids, digits = _import_project(ls, root, n, args.labeled, args.threads)
    truth = dict(zip(ids, digits, strict=True))
    store = Store(settings.store.url)
    store.upgrade()
    rows = []
    seeded = n >= args.seed_above
    if seeded:
        seconds = _seed_embeddings(settings, store, project, root)
        rows.append([f"{n:,}", f"embeddings seeded from disk ({n / seconds:.0f} img/s)",
                     "-", f"{seconds:.2f}", *["-"] * 10])  # fmt: skip
    record, sent = _cycle(settings, store, project)
    first = "first (embeddings seeded)" if seeded else "cold (empty embedding cache)"
    rows.append(_row(n, first, record, sent))
    record, sent = _cycle(settings, store, project)
    rows.append(_row(n, "warm (nothing changed)", record, sent))
    for _ in range(20):  # annotators label what Label All Tasks serves, correctly
        task = ls.next_task(project)
        if task is not None:
            ls.create_annotation(task["id"], _annotation(truth[task["id"]])["result"])
    record, sent = _cycle(settings, store, project)
    rows.append(_row(n, "warm (20 new labels)", record, sent))
    every = max(1, round(1 / args.labeled))
    unlabeled = [t for i, t in enumerate(ids) if i % every != 0]
    empty = ["-"] * 4
    prune_all = None
    if args.push_all_max is None or n <= args.push_all_max:
        push_all, prune_all = _baseline(ls, project, unlabeled, prune=n <= PRUNE_BASELINE_MAX)
        rows.append([f"{n:,}", "baseline: push all (LS import)", *empty, f"{push_all:.2f}",
                     "-", "-", "-", str(len(unlabeled)), "-", "-", "-"])  # fmt: skip
    refs = [t["data"]["image"] for t in ls.iter_tasks(project)][:SERVE_BASELINE_MAX]
    served, cpu_ms = _serve_only(settings, refs, server)
    if prune_all is not None:
        rows.append([f"{n:,}", "baseline: prune all (LS delete)", *empty, "-", "-",
                     f"{prune_all:.2f}", "-", "-", "-", "-", "-"])  # fmt: skip
    rows.append([f"{n:,}", f"baseline: LS serves {len(refs):,} images ({served:.0f} img/s, "
                 f"{cpu_ms:.1f} CPU ms each)", "-", f"{len(refs) / served:.2f}", *["-"] * 9,
                 str(len(refs))])  # fmt: skip
    store.dispose()
    ls.close()
    return rows


def main() -> None:
    quiet_third_party()  # Lightning's per-fit chatter around the tables
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks")
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--labeled", type=float, default=0.03, help="share annotated at import")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ls-bin", default=".cache/ls-venv/bin/label-studio")
    parser.add_argument(
        "--push-all-max",
        type=int,
        default=None,
        help="no push-all baseline above this size (Label Studio's import slows as predictions "
        "accumulate: ~25 min at 100,000)",
    )
    parser.add_argument(
        "--seed-above", type=int, default=50_000, help="seed embeddings from disk from this size"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp, counting_requests():
        root = Path(tmp) / "ls"
        proc = start_label_studio(args.ls_bin, root)
        try:
            rows = []
            for n in sizes:
                rows += run_size(proc.url, proc.token, root, n, args, proc.process)
                print("\n".join("| " + " | ".join(row) + " |" for row in rows), flush=True)
        finally:
            proc.stop()
    print(
        f"\nCycle per stage (s), real Label Studio 1.23.2, images from its local-files storage "
        f"(JPEG 640x480), default settings at {args.image_size} px, {args.threads} torch threads, "
        f"{args.labeled:.0%} labeled ({machine()})\n"
    )
    headers = ["tasks", "cycle", *STAGES, "total", "pushed", "API req", "task PATCH", "image req"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
