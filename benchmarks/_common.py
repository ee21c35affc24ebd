"""Shared helpers for the strategy benchmarks: argument parsing, thread pinning, tables."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

# Benchmarks run as scripts (python benchmarks/bench_X.py): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEEDS = (0, 1, 2, 3, 4)


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The common flags (``--quick``, ``--seeds``, ``--threads``); ``extra`` adds more."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true", help="smaller run, under ~2 minutes")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="number of seeds (5)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads per process")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    return parser.parse_args(argv)


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str) -> None:
    """Print a GitHub-flavoured markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def process_cpu_s(process: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds of a process and its children so far (gunicorn's workers)."""
    if process is None:
        return 0.0
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in tree:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
