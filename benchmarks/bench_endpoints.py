"""Latency of /health, /webhook and /predict over real HTTP, as Label Studio calls them.

Starts ``labelloop serve`` as a subprocess (the embedded mode: waitress, the inbox worker applying
every stored event; with ``--separate-scheduler`` the layout meant for load instead: ``labelloop
serve --workers N``, gunicorn, with ``loop.run_scheduler: false``, and one ``labelloop
scheduler`` process applying the inbox every ``loop.poll_s``), SQLite in WAL mode with
``synchronous=FULL`` (``--postgres`` or ``--database-url`` for PostgreSQL), and, as the baseline
in the same run, an empty Flask route under waitress. Tables:

0. CPU per request and per event, in this process (Flask's test client, the same store): an
   empty Flask route (the baseline), ``POST /webhook`` (a new event, stored), and applying
   annotation events from the inbox in passes of 10 (the embedded worker at 200/s) and of 1,000
   (the separate scheduler at 200/s);
1. closed loop: 1, 8 and 32 concurrent senders, each sending its requests back to back: p50/p99
   for the baseline, ``GET /health``, ``POST /webhook`` (new events and duplicate deliveries) and
   ``POST /predict`` with 100 tasks (no model yet: the instant empty answer);
2. /predict with a current model (the default backbone, trained in the bench on 40 labeled
   generated images of a second project): 100 tasks whose images the server has never seen
   (each embedded on the request) and the same 100 again (embeddings from the cache);
3. open loop: new webhooks at a fixed rate (200 req/s by default) for 60 s while the inbox is
   applied; latency counts from each request's scheduled time, so a stall is not hidden by
   senders waiting (coordinated omission); the CPU the server processes spent per request, the
   machine's load average, and how long until every stored event was applied.

    python benchmarks/bench_endpoints.py                  # 400 requests per sender count, 60 s
    python benchmarks/bench_endpoints.py --quick          # 100 requests, 10 s
    python benchmarks/bench_endpoints.py --postgres       # a throwaway PostgreSQL, fsync on
    python benchmarks/bench_endpoints.py --database-url postgresql+psycopg://...
    python benchmarks/bench_endpoints.py --open-loop-only --separate-scheduler
    python benchmarks/bench_endpoints.py --cpu-only       # table 0 alone, no server
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml
from _common import process_cpu_s
from PIL import Image
from sqlalchemy.engine import make_url

from backend.cli.lsprocess import free_port
from backend.logs import quiet_third_party
from backend.store.db import Store

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="a"/><Choice value="b"/></Choices></View>'
)
BASELINE = """
import sys
from flask import Flask
from waitress import serve
app = Flask("baseline")
app.add_url_rule("/baseline", "baseline", lambda: "ok")
serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=16, asyncore_use_poll=True)
"""
HEADERS = {"Content-Type": "application/json"}
_IDS = itertools.count(1)


def _event(i: int) -> bytes:
    annotation = {
        "id": i,
        "task": i,
        "completed_by": 1,
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": ["a" if i % 2 else "b"]},
            }
        ],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": f"2026-01-01T00:00:{i % 60:02d}Z",
    }
    body = {
        "action": "ANNOTATION_CREATED",
        "annotation": annotation,
        "task": {"id": i, "data": {"image": f"/data/upload/1/{i}.png"}},
        "project": {"id": 1, "label_config": CONFIG},
    }
    return json.dumps(body).encode()


PREDICT = json.dumps(
    {
        "project": "1.1",
        "tasks": [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(1, 101)],
    }
).encode()


MODEL_PROJECT = 2


def _image_url(label: int, seed: int) -> str:
    """A 96 px PNG data URL: class 0 horizontal stripes, class 1 vertical, random colours."""
    rng = np.random.default_rng(seed)
    stripes = (np.arange(96) // 8 % 2).astype(bool)
    mask = np.broadcast_to(stripes[:, None] if label == 0 else stripes[None, :], (96, 96))
    pixels = np.where(mask[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def train_model_project(config: Path, labeled: int = 40) -> str:
    """Label ``labeled`` generated images of project MODEL_PROJECT in the server's store and
    train its current model (as a cycle would); returns the model version."""
    from backend.labelstudio.images import ImageResolver
    from backend.loop import ingest
    from backend.loop.fit import train_project
    from backend.settings import load_settings
    from backend.store import repo
    from backend.store.db import Store

    settings = load_settings(config)
    store = Store(settings.store.url)
    store.upgrade()  # the server did already; a no-op then
    with store.session() as session:
        project = repo.ensure_project(session, MODEL_PROJECT)
        ingest.set_label_config(session, project, CONFIG)
        for t in range(1, labeled + 1):
            task = {"id": 10_000 + t, "data": {"image": _image_url(t % 2, t)}}
            ingest.upsert_task(session, project, task)
            annotation = json.loads(_event(10_000 + t))["annotation"]
            annotation["result"][0]["value"]["choices"] = ["ab"[t % 2]]
            ingest.upsert_annotation(session, project, 10_000 + t, annotation)
    resolver = ImageResolver(settings.label_studio, settings.images)
    outcome = train_project(settings, store, MODEL_PROJECT, resolver.fetch)
    store.dispose()
    return outcome.version


def predict_body(first_task: int, n: int = 100) -> bytes:
    tasks = [
        {"id": t, "data": {"image": _image_url(t % 2, t)}}
        for t in range(first_task, first_task + n)
    ]
    return json.dumps({"project": f"{MODEL_PROJECT}.1", "tasks": tasks}).encode()


def _wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Deployment:
    """The servers of one run: the API's and the baseline's URLs, the config file, and the
    processes whose CPU counts as the server's (the API; the separate scheduler apart)."""

    url: str
    base: str
    config: Path
    mode: str
    api: subprocess.Popen[bytes]
    scheduler: subprocess.Popen[bytes] | None


@contextmanager
def servers(
    tmp: Path, database_url: str | None, *, separate: bool, workers: int
) -> Iterator[Deployment]:
    port, base_port = free_port(), free_port()
    config = tmp / "bench.yaml"
    store: dict[str, object] = {"data_dir": str(tmp / "data")}
    if database_url:
        store["database_url"] = database_url
    loop: dict[str, object] = {"retrain_after": 10**9, "schedule_interval_minutes": None}
    if separate:
        loop["run_scheduler"] = False
    config.write_text(
        yaml.safe_dump(
            {"server": {"port": port, "log_level": "WARNING"}, "store": store, "loop": loop}
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    labelloop = [str(Path(sys.executable).with_name("labelloop")), "--config", str(config)]
    log = (tmp / "server.log").open("wb")
    if separate:
        mode = f"separate scheduler: gunicorn, {workers} workers x 4 threads + labelloop scheduler"
        api_command = [*labelloop, "serve", "--workers", str(workers)]
    else:
        mode = "embedded: waitress + in-process inbox worker and scheduler"
        api_command = [*labelloop, "serve"]
    api = subprocess.Popen(api_command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    baseline = subprocess.Popen(
        [sys.executable, "-c", BASELINE, str(base_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    processes: list[subprocess.Popen[bytes]] = [api, baseline]
    scheduler = None
    try:
        url, base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{base_port}"
        _wait_up(f"{url}/health", api)
        _wait_up(f"{base}/baseline", baseline)
        if separate:  # once the API has migrated the schema (both processes would otherwise)
            scheduler = subprocess.Popen(
                [*labelloop, "scheduler"], stdout=subprocess.DEVNULL, stderr=log, env=env
            )
            processes.append(scheduler)
        yield Deployment(url, base, config, mode, api, scheduler)
    except BaseException:
        log.flush()
        print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        log.close()
        for process in processes:
            process.terminate()
            process.wait(30)
            if process.stderr is not None:
                process.stderr.close()


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def closed_loop(send: Callable[[requests.Session], None], senders: int, each: int) -> list[float]:
    """Latencies (ms) of ``senders`` threads each sending ``each`` requests back to back."""

    def run(_: int) -> list[float]:
        times = []
        with requests.Session() as session:
            for _ in range(each):
                t0 = time.perf_counter()
                send(session)
                times.append((time.perf_counter() - t0) * 1000)
        return times

    with ThreadPoolExecutor(senders) as pool:
        return [t for part in pool.map(run, range(senders)) for t in part]


def _post(url: str, body: Callable[[], bytes]) -> Callable[[requests.Session], None]:
    def send(session: requests.Session) -> None:
        session.post(url, data=body(), headers=HEADERS, timeout=30).raise_for_status()

    return send


def _get(url: str) -> Callable[[requests.Session], None]:
    def send(session: requests.Session) -> None:
        session.get(url, timeout=30).raise_for_status()

    return send


def open_loop(url: str, rate: float, seconds: float) -> tuple[list[float], float]:
    """New webhooks at ``rate``/s for ``seconds``; latency (ms) from each scheduled send time."""
    local = threading.local()
    total = int(rate * seconds)
    bodies = [_event(next(_IDS)) for _ in range(total)]  # made before the clock starts
    latencies: list[float] = []
    start = time.perf_counter() + 0.2

    def one(k: int) -> None:
        due = start + k / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        if not hasattr(local, "session"):
            local.session = requests.Session()
        local.session.post(url, data=bodies[k], headers=HEADERS, timeout=30).raise_for_status()
        latencies.append((time.perf_counter() - due) * 1000)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(one, range(total)))
    achieved = total / (time.perf_counter() - start)
    return latencies, achieved


def wait_applying(url: str, timeout_s: float = 300) -> None:
    """Send one event and wait until it is applied: whatever applies the inbox (the embedded
    worker, or the separate scheduler, which imports the model stack first) is running."""
    requests.post(f"{url}/webhook", data=_event(next(_IDS)), headers=HEADERS, timeout=30)
    deadline = time.monotonic() + timeout_s
    while _pending(url)[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no event applied within {timeout_s:g} s")
        time.sleep(0.5)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def open_loop_table(deployment: Deployment, rate: float, seconds: float) -> None:
    """Table 3: new webhooks at ``rate``/s for ``seconds`` while the inbox is applied."""
    url = deployment.url
    load_before = _load()
    api_cpu, scheduler_cpu = process_cpu_s(deployment.api), process_cpu_s(deployment.scheduler)
    latencies, achieved = open_loop(f"{url}/webhook", rate, seconds)
    api_cpu = process_cpu_s(deployment.api) - api_cpu
    load_after = _load()
    sent = time.perf_counter()
    pending, set_aside = _pending(url)
    while pending and time.perf_counter() - sent < 120:
        time.sleep(0.5)
        pending, set_aside = _pending(url)
    drained = time.perf_counter() - sent
    scheduler_cpu = process_cpu_s(deployment.scheduler) - scheduler_cpu
    p50, p99 = _percentiles(latencies)
    over = sum(ms > 50 for ms in latencies)
    print(f"\nOpen loop: new webhooks at {rate:g}/s for {seconds:g} s ({deployment.mode})")
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    if deployment.scheduler is None:
        cpu = f"server CPU {api_cpu / len(latencies) * 1000:.2f} ms/request, applying included"
    else:
        cpu = (
            f"API CPU {api_cpu / len(latencies) * 1000:.2f} ms/request; scheduler CPU "
            f"{scheduler_cpu / len(latencies) * 1000:.2f} ms/event (applying, until drained)"
        )
    print(cpu)
    print(
        "| target/s | achieved/s | requests |   p50 |    p99 |    max | > 50 ms | "
        "all applied after | pending | set aside |"
    )
    print(
        "|----------|------------|----------|-------|--------|--------|---------|"
        "-------------------|---------|-----------|"
    )
    print(
        f"| {rate:>8g} | {achieved:>10.1f} | {len(latencies):>8} | {p50:>5.1f} | "
        f"{p99:>6.1f} | {max(latencies):>6.1f} | {over:>7} | {drained:>15.1f} s | "
        f"{pending:>7} | {set_aside:>9} |"
    )


def _cpu_ms(work: Callable[[], object], times: int) -> float:
    started = time.process_time()
    for _ in range(times):
        work()
    return (time.process_time() - started) / times * 1000


def apply_cpu_ms(store: Store, per_pass: int, passes: int, ids: Iterator[int]) -> float:
    """CPU ms per annotation event applied from the inbox, ``per_pass`` stored at a time."""
    from backend.loop.inbox import apply_pending
    from backend.store import repo

    spent, applied = 0.0, 0
    for _ in range(passes):
        with store.session() as session:
            for body in (_event(next(ids)) for _ in range(per_pass)):
                repo.record_delivery(
                    session,
                    key=repo.delivery_key(body),
                    action="ANNOTATION_CREATED",
                    project_id=1,
                    payload=json.loads(body),
                )
        started = time.process_time()
        applied += apply_pending(store).total
        spent += time.process_time() - started
    return spent / applied * 1000


def cpu_table(database_url: str, n: int) -> None:
    """Table 0: CPU per webhook and per applied event in this process (no HTTP, no server).

    The app is built as ``labelloop serve`` builds it, without its background threads, on its
    own store; the baseline is an empty Flask route of the same app through the same client.
    """
    from backend.api.app import create_app, shutdown
    from backend.api.operations import operation
    from backend.loop.inbox import apply_pending
    from backend.settings import load_settings

    settings = load_settings(environ={"LABELLOOP_STORE__DATABASE_URL": database_url})
    store = Store(database_url)
    store.upgrade()
    app = create_app(settings, store=store, upgrade=False)
    # Declared as Label Studio's routes are, so it passes the same access check.
    empty_view = operation("Benchmark baseline.", access="labelstudio")(lambda: "ok")
    app.add_url_rule("/bench-empty", "bench_empty", empty_view, methods=["POST"])
    client = app.test_client()
    setup = client.post("/setup", json={"project": "1.1", "schema": CONFIG})
    if setup.status_code != 200:
        raise RuntimeError(f"/setup answered {setup.status_code}: {setup.data!r}")
    ids = itertools.count(10**9)
    empty_body = _event(0)

    def webhook() -> None:
        response = client.post("/webhook", data=_event(next(ids)), headers=HEADERS)
        if response.status_code != 200:
            raise RuntimeError(f"/webhook answered {response.status_code}: {response.data!r}")

    def empty() -> None:
        client.post("/bench-empty", data=empty_body, headers=HEADERS)

    for _ in range(50):  # warm up: compiled statements, first connections
        webhook()
        empty()
    apply_pending(store)
    rows = [
        ("baseline: empty Flask route, POST (test client)", _cpu_ms(empty, n)),
        ("POST /webhook, a new event stored (test client)", _cpu_ms(webhook, n)),
    ]
    apply_pending(store)
    for per_pass in (10, 1000):
        ms = apply_cpu_ms(store, per_pass, max(1, n // per_pass), ids)
        rows.append((f"apply an annotation event, passes of {per_pass}", ms))
    shutdown(app)
    print(f"CPU per request or event in this process (load {_load()}), ms")
    print("| measured                                          |  CPU ms |")
    print("|---------------------------------------------------|---------|")
    for name, ms in rows:
        print(f"| {name:<49} | {ms:>7.3f} |")


def predict_rows(url: str, config: Path, repeats: int) -> None:
    """p50/p99 of /predict (100 tasks) with a current model: new images, then cached ones."""
    quiet_third_party()  # Lightning's per-fit chatter
    started = time.perf_counter()
    version = train_model_project(config)
    print(f"\n/predict with model {version} (trained in {time.perf_counter() - started:.0f} s), ms")
    print("| request                                  | senders |     p50 |     p99 |")
    print("|------------------------------------------|---------|---------|---------|")
    check = requests.post(
        f"{url}/predict", data=predict_body(100_000), headers=HEADERS, timeout=300
    )
    results = check.json()["results"]
    labels = [r["result"][0]["value"]["choices"][0] for r in results if r["result"]]
    right = sum(
        label == "ab"[t % 2] for t, label in zip(range(100_000, 100_100), labels, strict=True)
    )
    if len(labels) != 100 or results[0]["model_version"] != version:
        raise RuntimeError(f"/predict answered without the model: {results[:2]}")
    print(f"(the model labels {right} of the 100 new tasks right)")
    fresh = itertools.count(100_100, 100)
    rows = [
        ("100 tasks, images never seen", 1, lambda: predict_body(next(fresh))),
        ("the same 100 tasks again (cached)", 1, lambda: predict_body(100_000)),
        ("the same 100 tasks again (cached)", 8, lambda: predict_body(100_000)),
    ]
    for name, senders, body in rows:
        send = _post(f"{url}/predict", body)
        p50, p99 = _percentiles(closed_loop(send, senders, repeats))
        print(f"| {name:<40} | {senders:>7} | {p50:>7.1f} | {p99:>7.1f} |", flush=True)


def _pending(url: str) -> tuple[int, int]:
    """(pending, set aside) events of project 1, from the cycles API."""
    body = requests.get(f"{url}/api/projects/1/cycles", headers=ADMIN, timeout=10).json()
    return body["inbox"]["pending"], body["inbox"]["set_aside"]


def closed_loop_table(url: str, base: str, n: int) -> None:
    """Table 1: p50/p99 per endpoint for 1, 8 and 32 concurrent senders, ``n`` requests each."""
    cases = [
        ("baseline: empty Flask route (waitress)", _get(f"{base}/baseline")),
        ("GET /health", _get(f"{url}/health")),
        ("POST /webhook (new event)", _post(f"{url}/webhook", lambda: _event(next(_IDS)))),
        ("POST /webhook (duplicate delivery)", _post(f"{url}/webhook", lambda: _event(1))),
        ("POST /predict (100 tasks, no model yet)", _post(f"{url}/predict", lambda: PREDICT)),
    ]
    print(f"Closed loop: concurrent senders, {n} requests per row in all (ms)")
    print("| endpoint                                 | senders |   p50 |    p99 |")
    print("|------------------------------------------|---------|-------|--------|")
    for senders in (1, 8, 32):
        for name, send in cases:
            p50, p99 = _percentiles(closed_loop(send, senders, max(1, n // senders)))
            print(f"| {name:<40} | {senders:>7} | {p50:>5.1f} | {p99:>6.1f} |", flush=True)


ADMIN: dict[str, str] = {}


@contextmanager
def _databases(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str | None, str]]:
    """The server's store URL (``--database-url``, a throwaway PostgreSQL for ``--postgres``, or
    None: SQLite in the run's temporary folder) and the store of the in-process CPU table (a
    database of its own, or ``--database-url`` itself, which it leaves with nothing pending)."""
    if not args.postgres:
        yield args.database_url, args.database_url or f"sqlite:///{tmp / 'cpu' / 'state.db'}"
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's tests package
    from tests.postgres import fresh_database, postgres_server

    with postgres_server(fsync=True) as server:
        yield fresh_database(server), fresh_database(server)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="per sender count, in all")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL server (fsync on) and store there",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--open-loop-only",
        action="store_true",
        help="only the CPU table and the open-loop webhook table",
    )
    parser.add_argument(
        "--cpu-only", action="store_true", help="only the in-process CPU table (no server)"
    )
    parser.add_argument(
        "--separate-scheduler",
        action="store_true",
        help="serve with gunicorn (loop.run_scheduler: false) beside a labelloop scheduler "
        "process that applies the inbox, instead of the embedded mode",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers with --separate-scheduler"
    )
    args = parser.parse_args()
    n, seconds = (100, 10.0) if args.quick else (args.requests, args.seconds)
    os.environ["LABELLOOP_SERVER__ADMIN_TOKENS"] = "{bench: bench-token}"
    ADMIN["Authorization"] = "Bearer bench-token"
    with tempfile.TemporaryDirectory() as folder, _databases(args, Path(folder)) as urls:
        tmp, (database_url, cpu_url) = Path(folder), urls
        print(f"store: {make_url(database_url).get_backend_name() if database_url else 'sqlite'}")
        print(f"machine: {os.cpu_count()} CPUs, load average {_load()}\n")
        cpu_table(cpu_url, 300 if args.quick else 2000)
        if args.cpu_only:
            return
        with servers(
            tmp, database_url, separate=args.separate_scheduler, workers=args.workers
        ) as deployment:
            url = deployment.url
            setup = {"project": "1.1", "schema": CONFIG}
            requests.post(f"{url}/setup", json=setup, timeout=10).raise_for_status()
            closed_loop(_get(f"{url}/health"), 2, 20)  # warm up
            wait_applying(url)
            print(f"\nserver: {deployment.mode}")
            if not args.open_loop_only:
                closed_loop_table(url, deployment.base, n)
                predict_rows(url, deployment.config, 2 if args.quick else 5)
            open_loop_table(deployment, args.rate, seconds)


if __name__ == "__main__":
    main()
