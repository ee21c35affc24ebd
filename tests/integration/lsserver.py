"""A real Label Studio 1.23.2 for the integration tests.

The server runs from its own venv: ``$TEST_LABEL_STUDIO_BIN`` when set, else
``<repo>/.cache/ls-venv/bin/label-studio``, created with ``pip install label-studio==1.23.2`` on
first use (about a minute). It binds 127.0.0.1 on a free port, keeps its data in a temporary
directory, and is stopped with its whole process group. Starting and stopping are delegated to
:mod:`backend.cli.lsprocess`, which ``make run`` uses too.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import requests

from backend.cli.lsprocess import LabelStudioProcess, start_label_studio

LS_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".cache" / "ls-venv"


def label_studio_binary() -> Path:
    """The ``label-studio`` executable, installing it into ``.cache/ls-venv`` when missing."""
    configured = os.environ.get("TEST_LABEL_STUDIO_BIN")
    if configured:
        return Path(configured)
    binary = DEFAULT_VENV / "bin" / "label-studio"
    if not binary.exists():
        _install(DEFAULT_VENV)
    return binary


def _install(target: Path) -> None:
    print(f"\n[lsserver] installing label-studio=={LS_VERSION} into {target} (~1 min)...")
    sys.stdout.flush()
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    subprocess.run([*pip, f"label-studio=={LS_VERSION}"], check=True)
    print("[lsserver] label-studio installed")


class PersonalTokenTaken(RuntimeError):
    """Label Studio already issued this user's one personal access token (answers 409)."""


@dataclass(frozen=True)
class LabelStudioServer:
    """A running server: its URL, the admin login and its legacy API token.

    ``process`` is None for a server this session did not start (``TEST_LABEL_STUDIO_URL``).
    """

    url: str
    token: str
    username: str = ""
    password: str = ""
    process: LabelStudioProcess | None = None
    _cache: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def personal_access_token(self) -> str:
        """The admin's personal access token (a JWT refresh token), created on first call.

        Label Studio allows one live PAT per user and lists existing ones without their
        signature, so the token is kept here; a server that already issued one (a reused
        server) raises :class:`PersonalTokenTaken`.
        """
        if "pat" not in self._cache:
            headers = {"Authorization": f"Token {self.token}"}
            created = requests.post(f"{self.url}/api/token/", headers=headers, timeout=30)
            if created.status_code == 409:
                raise PersonalTokenTaken("this user already has a personal access token")
            created.raise_for_status()
            self._cache["pat"] = str(created.json()["token"])
        return self._cache["pat"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def start_server(data_dir: Path, *, timeout: float = 300.0) -> LabelStudioServer:
    """Start Label Studio with a fresh data dir and a random legacy token; wait for /health."""
    process = start_label_studio(
        label_studio_binary(),
        data_dir,
        username="admin@labelloop.test",
        password=secrets.token_urlsafe(12),
        token=secrets.token_hex(20),
        timeout=timeout,
    )
    return LabelStudioServer(
        process.url, process.token, process.username, process.password, process
    )


def running_server() -> LabelStudioServer | None:
    """An already running server, to skip the start-up while iterating on tests.

    Named by ``TEST_LABEL_STUDIO_URL`` and ``TEST_LABEL_STUDIO_TOKEN`` (a legacy token); None
    when not set.
    """
    url = os.environ.get("TEST_LABEL_STUDIO_URL")
    if not url:
        return None
    return LabelStudioServer(url.rstrip("/"), os.environ.get("TEST_LABEL_STUDIO_TOKEN", ""))
