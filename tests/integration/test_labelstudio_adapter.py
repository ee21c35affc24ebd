"""The Label Studio adapter against a real Label Studio 1.23.2."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from backend.labelstudio.client import LabelStudio, LabelStudioError
from backend.labelstudio.config import parse_label_config
from backend.labelstudio.convert import (
    annotation_labels,
    parse_ls_datetime,
    prediction_item,
    task_image_ref,
)
from backend.labelstudio.images import ImageError, ImageResolver
from backend.loop.sync import reconcile
from backend.settings import ImageSettings, LabelStudioSettings
from backend.store import repo
from backend.store.db import Store
from tests.conftest import SINGLE_CONFIG
from tests.integration.lsserver import LabelStudioServer, PersonalTokenTaken

CFG = parse_label_config(SINGLE_CONFIG)
COLORS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]


def png(color: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def result(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def client(server: LabelStudioServer, token: str | None, page_size: int = 2) -> LabelStudio:
    return LabelStudio(
        LabelStudioSettings(
            url=server.url, token=SecretStr(token) if token else None, page_size=page_size
        )
    )


@pytest.fixture(scope="module")
def ls(label_studio: LabelStudioServer) -> Iterator[LabelStudio]:
    # page_size=2 so five tasks take three pages.
    with client(label_studio, label_studio.token) as adapter:
        yield adapter


@pytest.fixture
def project(ls: LabelStudio) -> tuple[int, list[int]]:
    project_id = ls.create_project("adapter test", SINGLE_CONFIG)
    ids = ls.upload_images(project_id, [(f"img{i}.png", png(c)) for i, c in enumerate(COLORS)])
    return project_id, ids


def test_server_answers(ls: LabelStudio) -> None:
    assert ls.health()["status"] == "UP"
    assert ls.version() == "1.23.2"


def test_uploaded_images_are_listed_with_their_references(
    ls: LabelStudio, project: tuple[int, list[int]]
) -> None:
    project_id, ids = project
    tasks = list(ls.iter_tasks(project_id))
    assert [t["id"] for t in tasks] == sorted(ids) and len(ids) == 5
    refs = [task_image_ref(t, CFG) for t in tasks]
    assert all(ref and ref.startswith(f"/data/upload/{project_id}/") for ref in refs)
    assert all(t["annotations"] == [] for t in tasks)
    info = ls.get_project(project_id)
    assert parse_label_config(info["label_config"]) == CFG
    assert project_id in [p["id"] for p in ls.list_projects()]


def test_image_resolver_fetches_uploads_through_label_studio(
    ls: LabelStudio, label_studio: LabelStudioServer, project: tuple[int, list[int]]
) -> None:
    ref = task_image_ref(ls.get_task(project[1][2]), CFG)
    assert ref is not None
    with ls.image_resolver(ImageSettings()) as shared_auth:
        image = shared_auth.load(ref)
    assert (image.size, image.getpixel((0, 0))) == ((12, 8), COLORS[2])
    settings = LabelStudioSettings(url=label_studio.url, token=SecretStr(label_studio.token))
    with ImageResolver(settings, ImageSettings()) as own_auth:
        assert own_auth.fetch(ref) == png(COLORS[2])
    anonymous = ImageResolver(LabelStudioSettings(url=label_studio.url), ImageSettings())
    with anonymous, pytest.raises(ImageError, match="HTTP 401"):
        anonymous.fetch(ref)


def test_annotations_show_up_in_listing_and_incremental_listing(
    ls: LabelStudio, project: tuple[int, list[int]]
) -> None:
    project_id, ids = project
    created = ls.create_annotation(ids[0], result("cat"))
    listed = {t["id"]: t for t in ls.iter_tasks(project_id)}
    [annotation] = listed[ids[0]]["annotations"]
    assert annotation["id"] == created["id"]
    assert annotation_labels(annotation, CFG) == ("cat",)
    assert annotation["was_cancelled"] is False and annotation["completed_by"]
    assert {"created_at", "updated_at"} <= set(annotation)

    mark = max(parse_ls_datetime(t["updated_at"]) for t in listed.values())
    assert mark is not None
    assert list(ls.iter_tasks(project_id, updated_since=mark)) == []
    ls.update_annotation(created["id"], result("dog"))
    [changed] = ls.iter_tasks(project_id, updated_since=mark)
    assert changed["id"] == ids[0]
    assert annotation_labels(changed["annotations"][0], CFG) == ("dog",)

    mark = parse_ls_datetime(changed["updated_at"])
    assert mark is not None
    ls.delete_annotation(created["id"])
    [emptied] = ls.iter_tasks(project_id, updated_since=mark)
    assert (emptied["id"], emptied["annotations"]) == (ids[0], [])


def test_incremental_reconcile_after_import_checks_stamps_and_lists_only_what_changed(
    ls: LabelStudio,
    project: tuple[int, list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("backend.labelstudio.client.STAMP_PAGE", 2)  # five tasks, three pages
    project_id, ids = project
    stamps = dict(ls.iter_task_stamps(project_id))
    assert sorted(stamps) == sorted(ids)
    listed = {t["id"]: t["updated_at"] for t in ls.iter_tasks(project_id)}
    assert stamps == listed  # the same stamps, character for character
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.upgrade()
    try:
        reconcile(store, ls, project_id)
        # Right after the upload every task lies inside the overlap: stamps only, nothing listed.
        quiet = reconcile(store, ls, project_id, incremental=True)
        assert (quiet.incremental, quiet.probed, quiet.tasks) == (True, 5, 0)
        created = ls.create_annotation(ids[3], result("cat"))
        labeled = reconcile(store, ls, project_id, incremental=True)
        assert labeled.tasks == 1 and labeled.annotations == 1
        with store.session() as session:
            [annotation] = repo.live_annotations(session, project_id)
        assert (annotation.id, annotation.task_id) == (created["id"], ids[3])
    finally:
        store.dispose()


def test_skipped_task_is_an_annotation_without_labels(
    ls: LabelStudio, project: tuple[int, list[int]]
) -> None:
    project_id, ids = project
    ls.create_annotation(ids[1], [], was_cancelled=True)
    task = next(t for t in ls.iter_tasks(project_id) if t["id"] == ids[1])
    [annotation] = task["annotations"]
    assert annotation["was_cancelled"] is True
    assert annotation_labels(annotation, CFG) == ()


def test_imported_predictions_steer_next_task(
    ls: LabelStudio, project: tuple[int, list[int]]
) -> None:
    project_id, ids = project
    scores = [0.9, 0.1, 0.5, 0.3, 0.7]
    labels = ["cat", "dog", "bird", "cat", "dog"]
    predictions = [
        {"task": t, **prediction_item([label], s, "al-1", CFG)}
        for t, s, label in zip(ids, scores, labels, strict=True)
    ]
    assert ls.import_predictions(project_id, predictions) == 5
    assert ls.model_versions(project_id) == {"al-1": 5}
    [stored] = ls.list_predictions(ids[2])
    assert (stored["score"], stored["model_version"]) == (0.5, "al-1")
    assert stored["result"] == result("bird")

    # Model version and sampling in one PATCH (the version must exist first).
    ls.update_project(project_id, model_version="al-1", sampling="Uncertainty sampling")
    info = ls.get_project(project_id)
    assert (info["model_version"], info["sampling"]) == ("al-1", "Uncertainty sampling")
    served = []
    for _ in ids:
        task = ls.next_task(project_id)
        assert task is not None
        served.append(task["id"])
        ls.create_annotation(task["id"], result("cat"))
    assert served == [ids[1], ids[3], ids[2], ids[4], ids[0]]
    assert ls.next_task(project_id) is None
    # Deleting a version answers how many predictions went (``deleted_predictions``).
    assert ls.delete_model_version(project_id, "al-1") == 5
    assert ls.model_versions(project_id) == {}


def test_model_version_must_exist(ls: LabelStudio, project: tuple[int, list[int]]) -> None:
    with pytest.raises(LabelStudioError) as err:
        ls.set_model_version(project[0], "never-imported")
    assert err.value.status == 400


def test_views_can_be_created(ls: LabelStudio, project: tuple[int, list[int]]) -> None:
    filters = {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:total_annotations",
                "operator": "greater",
                "type": "Number",
                "value": 0,
            }
        ],
    }
    view = ls.create_view(project[0], "review", filters, ["tasks:predictions_score"])
    [listed] = [v for v in ls.list_views(project[0]) if v["id"] == view]
    assert listed["data"]["title"] == "review"
    assert listed["data"]["ordering"] == ["tasks:predictions_score"]


# The SDK's token refresh calls pydantic's deprecated parse_obj (label-studio-sdk 2.1.2).
@pytest.mark.filterwarnings("ignore::DeprecationWarning:label_studio_sdk.*")
def test_personal_access_token_and_legacy_token_both_work(
    label_studio: LabelStudioServer, project: tuple[int, list[int]]
) -> None:
    project_id, ids = project
    try:
        pat = label_studio.personal_access_token()
    except PersonalTokenTaken:
        # Only with TEST_LABEL_STUDIO_URL: Label Studio issues one personal access token per
        # user and cannot show it again. The suite's own fresh server (CI) always runs this.
        pytest.skip(
            "the reused Label Studio (TEST_LABEL_STUDIO_URL) already issued this user's one "
            "personal access token; unset TEST_LABEL_STUDIO_URL to test it on a fresh server"
        )
    assert pat.count(".") == 2  # a JWT, not a legacy token
    with client(label_studio, pat) as by_pat:
        assert len(list(by_pat.iter_tasks(project_id))) == 5  # raw endpoint, Bearer header
        made = by_pat.create_annotation(ids[4], result("bird"))  # SDK endpoint
        task = by_pat.get_task(ids[4])
        assert task["annotations"][0]["id"] == made["id"]
        ref = task_image_ref(task, CFG)
        assert ref is not None
        with by_pat.image_resolver(ImageSettings()) as resolver:
            assert resolver.fetch(ref) == png(COLORS[4])


def test_bad_token_and_missing_project_raise_with_status(
    label_studio: LabelStudioServer, ls: LabelStudio
) -> None:
    with client(label_studio, "not-a-valid-token") as bad, pytest.raises(LabelStudioError) as err:
        bad.get_project(1)
    assert err.value.status == 401
    assert "not-a-valid-token" not in str(err.value)
    with pytest.raises(LabelStudioError) as missing:
        ls.get_project(987654)
    assert missing.value.status == 404
    assert "No Project matches" in missing.value.message
    unreachable = LabelStudio(LabelStudioSettings(url="http://127.0.0.1:9", token=SecretStr("t")))
    with unreachable, pytest.raises(LabelStudioError) as down:
        unreachable.health()
    assert down.value.status is None


# --------------------------------------------------------------- a throwaway ML backend


class FakeBackend(HTTPServer):
    """Answers /health, /setup and /webhook; /predict answers whatever ``reply`` says."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.reply: tuple[int, Any] = (200, {"results": []})
        self.calls: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(BaseHTTPRequestHandler):
    server: FakeBackend

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.calls.append(f"GET {self.path}")
        self._send(200, {"status": "UP"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.calls.append(f"POST {self.path}")
        if self.path == "/setup":
            self._send(200, {"model_version": "fake-v0"})
        elif self.path == "/predict":
            status, reply = self.server.reply
            tasks = body.get("tasks", [])
            self._send(status, reply(len(tasks)) if callable(reply) else reply)
        else:
            self._send(200, {})


@pytest.fixture
def fake_backend() -> Iterator[FakeBackend]:
    server = FakeBackend()
    thread = threading.Thread(target=server.serve_forever, name="fake-ml-backend")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_connect_ml_backend_is_idempotent(
    ls: LabelStudio, project: tuple[int, list[int]], fake_backend: FakeBackend
) -> None:
    project_id = project[0]
    first = ls.connect_ml_backend(project_id, fake_backend.url, "labelloop")
    assert first["state"] == "CO" and first["auth_method"] == "NONE"
    assert {"GET /health", "POST /setup"} <= set(fake_backend.calls)
    again = ls.connect_ml_backend(project_id, fake_backend.url, "labelloop", ("user", "pw"))
    assert again["id"] == first["id"] and again["auth_method"] == "BASIC_AUTH"
    assert [b["id"] for b in ls.list_ml_backends(project_id)] == [first["id"]]
    assert ls.get_project(project_id)["model_version"] == "labelloop"


def _empty(label: str) -> Any:
    return lambda n: {"results": [{"result": [], "score": 0, "model_version": label}] * n}


# What Label Studio stores for each /predict answer (measured; see the adapter report):
PREDICT_REPLIES = {
    # one empty-result item per task: STORED, as predictions with result [] and score 0.0
    "empty result per task": ((200, _empty("fake-v0")), [([], 0.0, "fake-v0")]),
    # an empty results list (length differs from the tasks): nothing stored
    "empty results list": ((200, {"results": []}), []),
    # items without "result": nothing stored (LS logs "incorrect prediction")
    "items without result": ((200, lambda n: {"results": [{}] * n}), []),
    # no "results" key: nothing stored
    "no results key": ((200, {}), []),
    # an error status: nothing stored, the backend stays "Connected"
    "503 error": ((503, {"error": "no model yet"}), []),
}


@pytest.mark.parametrize("case", list(PREDICT_REPLIES))
def test_what_label_studio_stores_for_each_predict_reply(
    ls: LabelStudio, project: tuple[int, list[int]], fake_backend: FakeBackend, case: str
) -> None:
    project_id, ids = project
    reply, expected = PREDICT_REPLIES[case]
    ls.connect_ml_backend(project_id, fake_backend.url, "fake")
    fake_backend.reply = reply
    answer = ls.retrieve_predictions(project_id, ids[:2])
    assert "POST /predict" in fake_backend.calls
    assert answer["processed_items"] == 2  # LS reports success whatever it stored
    for task in ids[:2]:
        stored = [(p["result"], p["score"], p["model_version"]) for p in ls.list_predictions(task)]
        assert stored == expected
    assert ls.list_ml_backends(project_id)[0]["state"] == "CO"
