"""Image references against a REAL Label Studio: a traversal never reaches its API.

labelloop fetches task images from Label Studio with its API token. A task whose image is
``/data/upload/../../api/current-user/token`` once made it send an authenticated GET for Label
Studio's token endpoint (triggered by an anonymous webhook and a thumbnail request). Here every
request labelloop sends to Label Studio passes a recording proxy: the traversal is refused before
any request, while a real upload still comes through.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from backend.api.app import create_app, shutdown
from backend.labelstudio.client import LabelStudio
from backend.loop.sync import reconcile
from backend.store.db import Store
from backend.store.models import Task
from tests.conftest import ADMIN, SINGLE_CONFIG, make_settings
from tests.integration.support import Proxy

pytestmark = pytest.mark.integration
TRAVERSALS = [
    "/data/upload/../../api/current-user/token",
    "/data/upload/%2e%2e/%2e%2e/api/current-user/token",
    "/data/local-files/?d=../../../etc/passwd",
]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_traversal_image_reference_never_reaches_label_studio(
    label_studio: Any, ls: LabelStudio, proxy: Proxy, tmp_path: Path
) -> None:
    project = ls.create_project("traversal refs", SINGLE_CONFIG)
    [uploaded] = ls.upload_images(project, [("real.png", _png())])
    bad = ls.import_tasks(project, [{"data": {"image": ref}} for ref in TRAVERSALS])
    # The store learns the tasks from Label Studio directly; only image fetches use the proxy.
    settings = make_settings(tmp_path, label_studio={"url": proxy.url, "token": label_studio.token})
    store = Store(settings.store.url)
    store.upgrade()
    app = create_app(settings, store=store)
    try:
        assert reconcile(store, ls, project).tasks == 1 + len(TRAVERSALS)
        with store.session() as session:
            refs = {t: session.get(Task, t).image_ref for t in bad}  # type: ignore[union-attr]
        assert sorted(refs.values()) == sorted(TRAVERSALS)  # stored as Label Studio has them
        client = app.test_client()
        for task in bad:
            response = client.get(f"/dashboard/{project}/thumb/{task}.png", headers=ADMIN)
            assert response.status_code == 404
            assert response.get_json()["error"] == "image_unavailable"
        assert proxy.paths == []  # not one request reached Label Studio
        real = client.get(f"/dashboard/{project}/thumb/{uploaded}.png", headers=ADMIN)
        assert real.status_code == 200 and real.mimetype == "image/png"
        real.close()
        assert len(proxy.paths) == 1 and proxy.paths[0].startswith("/data/upload/")
    finally:
        shutdown(app)  # disposes the store too
