"""Processes that start together on a fresh database migrate it one at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from backend.store.db import Store

UPGRADE = "import sys; from backend.store.db import Store; Store(sys.argv[1]).upgrade()"


def test_processes_starting_together_on_a_fresh_database_all_migrate_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [e[-500:] for e in errors]
    store = Store(url)
    try:
        assert "loop_state" in inspect(store.engine).get_table_names()
    finally:
        store.dispose()
