"""The CLI's front door: commands that need Label Studio say so before touching anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["cycle", "--project", "1"],
        ["connect", "--project", "1"],
        ["sync", "--project", "1"],
        ["train", "--project", "1"],
    ],
)
def test_without_a_token_one_line_exit_2_and_no_files(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("LABELLOOP_")]:
        monkeypatch.delenv(key)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"`labelloop {argv[0]}` needs a Label Studio API token" in err
    assert "unreachable" not in err
    assert list(tmp_path.iterdir()) == []  # no stray data/ folder


def test_queueing_a_cycle_needs_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("LABELLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LABELLOOP_STORE__DATA_DIR", str(tmp_path / "state"))
    assert main(["cycle", "--project", "3", "--queue"]) == 0
    assert "queued cycle 1 of project 3" in capsys.readouterr().out
