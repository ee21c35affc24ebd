"""Start and stop a local Label Studio server (its own venv) for the demo and the tests.

Facts this relies on (measured on 1.23.2, see shared/docs/label-studio.md): ``--internal-host`` is
the bind address; a busy port makes Label Studio silently move to the next one, so we pick a free
port and check it; the legacy token and the loopback ML backend need the environment set below,
applied when the data dir is new.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # prctl option: the signal a child gets when its parent dies


class LabelStudioStartError(RuntimeError):
    """Label Studio did not come up; the message holds the tail of its log."""


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, else a free port chosen by the OS."""
    if preferred and _bindable(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def next_free_port(preferred: int, *, tries: int = 20) -> int:
    """The first free port of ``preferred, preferred + 1, ...`` (``tries`` of them), else any."""
    for port in range(preferred, min(preferred + tries, 65536)):
        if _bindable(port):
            return port
    return free_port()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class LabelStudioProcess:
    url: str
    username: str
    password: str
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and everything it started."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def label_studio_env(data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data_dir),
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "DJANGO_DB": "sqlite",
            # No error reports to an outside service from a local server.
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    return env


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise LabelStudioStartError(f"Label Studio at {url} did not become healthy:\n{tail}")


def start_label_studio(
    binary: Path | str,
    data_dir: Path,
    *,
    port: int | None = None,
    username: str = "admin@labelloop.local",
    password: str = "labelloop-demo",
    token: str = "0123456789abcdef0123456789abcdef01234567",
    timeout: float = 240.0,
) -> LabelStudioProcess:
    """Start ``label-studio`` bound to 127.0.0.1 and wait until ``/health`` answers.

    ``port``: used when free, else the next free one above it (Label Studio itself would move
    to the next port silently; choosing here means the URL we print is the one it listens on).
    """
    exe = shutil.which(str(binary)) or str(binary)
    if not Path(exe).exists():
        raise LabelStudioStartError(f"no label-studio executable at {binary}; run `make ls`")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = next_free_port(port) if port else free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "label-studio.log"
    cmd = [exe, "start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser"]
    with log_path.open("ab") as sink:
        process = subprocess.Popen(
            cmd,
            env=label_studio_env(data_dir, username, password, token),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Even a parent killed with SIGKILL leaves no Label Studio behind.
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    running = LabelStudioProcess(url, username, password, token, data_dir, process, log_path)
    try:
        _wait_healthy(url, process, log_path, timeout)
    except BaseException:
        running.stop()
        raise
    log.info("Label Studio running at %s (data in %s)", url, data_dir)
    return running
