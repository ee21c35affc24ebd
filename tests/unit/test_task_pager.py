"""The task listings' keyset pager over the pages a Label Studio server answers (the real server's
listings are tested in tests/integration/test_labelstudio_adapter.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from backend.labelstudio.client import STAMP_PAGE, LabelStudio
from backend.settings import LabelStudioSettings

TASKS = [{"id": i, "updated_at": f"2026-01-01T10:00:{i:02d}Z"} for i in range(1, 12)]


@pytest.fixture
def ls() -> Iterator[LabelStudio]:
    client = LabelStudio(LabelStudioSettings(url="http://127.0.0.1:9", token="t" * 20))
    yield client
    client.close()


def _serve(
    ls: LabelStudio, monkeypatch: pytest.MonkeyPatch, *, cap: int | None, total: bool
) -> list[int]:
    """Answer /api/tasks as Label Studio does: ids above the query's, at most ``cap`` a page
    (``TASK_API_PAGE_SIZE_MAX``), with ``total`` the count the filter matches. Returns the
    page sizes asked for."""
    asked: list[int] = []

    def call(method: str, path: str, ok: Any = (200, 201), **kw: Any) -> dict[str, Any]:
        assert (method, path) == ("GET", "/api/tasks")
        params = kw["params"]
        asked.append(int(params["page_size"]))
        after = json.loads(params["query"])["filters"]["items"][0]["value"]
        left = [t for t in TASKS if t["id"] > after]
        size = min(int(params["page_size"]), cap or len(TASKS))
        body: dict[str, Any] = {"tasks": left[:size]}
        if total:
            body["total"] = len(left)
        return body

    monkeypatch.setattr(ls, "_call", call)
    return asked


@pytest.mark.parametrize("total", [True, False])
def test_a_server_capping_its_pages_below_the_request_is_listed_to_the_end(
    ls: LabelStudio, monkeypatch: pytest.MonkeyPatch, total: bool
) -> None:
    asked = _serve(ls, monkeypatch, cap=4, total=total)
    stamps = list(ls.iter_task_stamps(1))
    assert [i for i, _ in stamps] == [t["id"] for t in TASKS]
    assert stamps[0] == (1, "2026-01-01T10:00:01Z")
    # Pages of 4, 4 and 3; without a total one more, empty page ends the listing.
    assert asked == [STAMP_PAGE] * (3 if total else 4)


def test_an_uncapped_listing_ends_on_the_page_that_holds_what_is_left(
    ls: LabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _serve(ls, monkeypatch, cap=None, total=True)
    assert [i for i, _ in ls.iter_task_stamps(1)] == [t["id"] for t in TASKS]
    assert asked == [STAMP_PAGE]  # one request: no empty page after it
    asked.clear()
    monkeypatch.setattr(ls, "settings", ls.settings.model_copy(update={"page_size": 5}))
    assert [t["id"] for t in ls.iter_tasks(1)] == [t["id"] for t in TASKS]
    assert asked == [5, 5, 5]
