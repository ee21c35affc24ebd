"""Latency of /webhook and /health over real HTTP, as Label Studio calls them.

Runs `labelloop serve`'s server (werkzeug, threaded, SQLite in WAL mode with synchronous=FULL) on
127.0.0.1 and sends N sequential requests per endpoint from one client, like Label Studio's
synchronous webhook inside an annotation save. The baseline, measured in the same run, is an empty
Flask route on the same server: the cost of HTTP itself.

    python benchmarks/bench_endpoints.py            # 1,000 requests each
    python benchmarks/bench_endpoints.py --quick    # 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from backend.demo import serve_in_thread
from backend.lsprocess import free_port
from backend.settings import load_settings

CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="a"/><Choice value="b"/></Choices></View>'
)


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


def _measure(
    session: requests.Session, method: str, url: str, bodies: list[bytes | None]
) -> list[float]:
    times = []
    for body in bodies:
        t0 = time.perf_counter()
        response = session.request(
            method, url, data=body, headers={"Content-Type": "application/json"}
        )
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
    return times


def _row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"| {name:<34} | {len(ms):>6} | {p50:>8.2f} | {p99:>8.2f} | {ms[-1]:>8.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = load_settings(
            environ={
                "LABELLOOP_STORE__DATA_DIR": str(Path(tmp)),
                "LABELLOOP_SERVER__PORT": str(port),
                "LABELLOOP_SERVER__LOG_LEVEL": "WARNING",
            }
        )
        served = serve_in_thread(settings)
        served.app.add_url_rule("/baseline", "baseline", lambda: "ok")
        try:
            with requests.Session() as session:
                base = served.url
                _measure(session, "GET", f"{base}/health", [None] * 20)  # warm up
                rows = [
                    _row(
                        "baseline: empty Flask route",
                        _measure(session, "GET", f"{base}/baseline", [None] * n),
                    ),
                    _row("GET /health", _measure(session, "GET", f"{base}/health", [None] * n)),
                    _row(
                        "POST /webhook (new event, durable)",
                        _measure(session, "POST", f"{base}/webhook", [_event(i) for i in range(n)]),
                    ),
                    _row(
                        "POST /webhook (duplicate delivery)",
                        _measure(session, "POST", f"{base}/webhook", [_event(0)] * n),
                    ),
                ]
        finally:
            served.stop()
    print(f"Endpoint latency over HTTP on 127.0.0.1, {n} sequential requests each (ms)")
    print("| endpoint                           |      n |      p50 |      p99 |      max |")
    print("|------------------------------------|--------|----------|----------|----------|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
