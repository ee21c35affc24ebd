"""One real Label Studio for the whole integration session (see ``lsserver.py``).

Set ``TEST_LABEL_STUDIO_URL`` and ``TEST_LABEL_STUDIO_TOKEN`` to reuse a server that is already
running (it is then left running). Every test in this directory is marked ``integration``;
``pytest -m "not integration"`` skips them and the server is then never started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from backend.labelstudio.client import LabelStudio
from backend.settings import LabelStudioSettings
from tests.integration.lsserver import LabelStudioServer, running_server, start_server
from tests.integration.support import Proxy, forwarding_proxy

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio 1.23.2 on 127.0.0.1 with a temporary data dir."""
    server = running_server() or start_server(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ls(label_studio: LabelStudioServer) -> Iterator[LabelStudio]:
    """Our client of the session's Label Studio, with default settings (one per module)."""
    settings = LabelStudioSettings(url=label_studio.url, token=SecretStr(label_studio.token))
    with LabelStudio(settings) as adapter:
        yield adapter


@pytest.fixture
def proxy(label_studio: LabelStudioServer) -> Iterator[Proxy]:
    """A proxy in front of the session's Label Studio that records every path it forwards."""
    with forwarding_proxy(label_studio.url) as server:
        yield server
