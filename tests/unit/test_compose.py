"""docker/compose.yml, checked without a Docker engine: every labelloop service's command is one
our CLI accepts and its environment builds valid settings that point at the compose services."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from backend.cli.main import _parser
from backend.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?::\?[^}]*)?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved by PyYAML
    assert isinstance(data, dict)
    return data


def _resolve(value: Any, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: variables[m.group(1)], str(value))


VARIABLES = {"LABEL_STUDIO_TOKEN": "a" * 40, "LABEL_STUDIO_PASSWORD": "pw"}
SERVICES = _compose()["services"]
OURS = {name: s for name, s in SERVICES.items() if s.get("command", [""])[0] == "labelloop"}


def _settings(service: dict[str, Any]) -> Settings:
    environ = {k: _resolve(v, VARIABLES) for k, v in service["environment"].items()}
    return load_settings(environ=environ)


def test_the_layout_has_every_part_and_one_scheduler() -> None:
    assert set(SERVICES) == {"postgres", "redis", "label-studio", "api", "scheduler", "worker"}
    commands = sorted(s["command"][1] for s in OURS.values())
    assert commands == ["scheduler", "serve", "worker"]  # one scheduler service, never scaled
    assert "deploy" not in OURS["scheduler"]


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_service_runs_a_real_command_with_valid_settings(name: str) -> None:
    service = OURS[name]
    args = _parser().parse_args(service["command"][1:])
    assert args.command == service["command"][1]
    if args.command == "serve":
        assert args.workers > 1  # the API under gunicorn
    settings = _settings(service)
    assert settings.loop.executor == "rq"
    assert not settings.loop.run_scheduler  # only the scheduler service schedules
    for url in (settings.loop.redis_url, settings.store.url, settings.label_studio.url):
        host = urlsplit(str(url)).hostname
        assert host in SERVICES, f"{name}: {url} names no compose service"
    assert f"labelloop-data:{settings.store.data_dir}" in service["volumes"]
    for needed in ("postgres", "redis"):
        assert service["depends_on"][needed]["condition"] == "service_healthy"


def test_label_studio_and_labelloop_share_the_token_and_the_network_rules() -> None:
    studio = SERVICES["label-studio"]["environment"]
    assert (
        studio["LABEL_STUDIO_USER_TOKEN"]
        == OURS["api"]["environment"]["LABELLOOP_LABEL_STUDIO__TOKEN"]
    )
    assert studio["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert studio["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    public = urlsplit(_settings(OURS["api"]).server.public_url)
    assert public.hostname == "api" and f"{public.port}:{public.port}" in OURS["api"]["ports"]


def test_the_image_can_reach_postgresql() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    installs = re.findall(r"pip install '\.\[([a-z,]+)\]'", dockerfile)
    assert installs and "postgres" in installs[0].split(",")  # psycopg for store.database_url
