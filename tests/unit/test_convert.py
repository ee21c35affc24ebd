"""Task/annotation JSON (as Label Studio 1.23 lists it) to labels and back to predictions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from backend.labelstudio.config import parse_label_config
from backend.labelstudio.convert import (
    annotation_labels,
    ls_datetime,
    parse_ls_datetime,
    prediction_item,
    task_image_ref,
)
from tests.conftest import MULTI_CONFIG, SINGLE_CONFIG

SINGLE = parse_label_config(SINGLE_CONFIG)
MULTI = parse_label_config(MULTI_CONFIG)


def choice(labels: list[str], from_name: str = "label") -> dict[str, Any]:
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": labels},
    }


def test_task_image_ref() -> None:
    assert task_image_ref({"data": {"image": "/data/upload/1/a.png"}}, SINGLE) == (
        "/data/upload/1/a.png"
    )
    assert task_image_ref({"data": {"photo": "http://x/y.png"}}, MULTI) == "http://x/y.png"
    for task in ({}, {"data": None}, {"data": {"image": ""}}, {"data": {"image": 3}}):
        assert task_image_ref(task, SINGLE) is None


def test_annotation_labels_pick_our_control_only() -> None:
    annotation = {
        "id": 7,
        "result": [choice(["yes"], "other"), choice(["dog"]), {"from_name": "label"}],
        "was_cancelled": False,
    }
    assert annotation_labels(annotation, SINGLE) == ("dog",)


def test_multi_labels_keep_order_and_drop_repeats() -> None:
    annotation = {"result": [choice(["person", "indoor", "person"], "tags")]}
    assert annotation_labels(annotation, MULTI) == ("person", "indoor")


@pytest.mark.parametrize(
    "annotation",
    [
        {"result": [choice(["cat"])], "was_cancelled": True},
        {"result": []},
        {"result": None},
        {},
        {"result": ["junk", {"from_name": "label", "value": None}]},
    ],
)
def test_annotations_without_labels(annotation: dict[str, Any]) -> None:
    assert annotation_labels(annotation, SINGLE) == ()


def test_unknown_stored_labels_are_kept_for_the_caller() -> None:
    assert annotation_labels({"result": [choice(["wolf"])]}, SINGLE) == ("wolf",)


def test_prediction_item_shape() -> None:
    assert prediction_item(["dog"], 0.25, "v3", SINGLE) == {
        "result": [choice(["dog"])],
        "score": 0.25,
        "model_version": "v3",
    }
    multi = prediction_item(("indoor", "person"), -1.5, "v1", MULTI, cluster=4)
    assert multi["result"][0]["value"] == {"choices": ["indoor", "person"]}
    assert (multi["result"][0]["from_name"], multi["result"][0]["to_name"]) == ("tags", "img")
    assert multi["cluster"] == 4
    assert prediction_item([], 0.0, "v1", SINGLE)["result"] == []


@pytest.mark.parametrize(
    ("labels", "score", "message"),
    [
        (["cat", "dog"], 0.5, "single choice"),
        (["wolf"], 0.5, "not choices"),
        (["cat"], float("nan"), "finite"),
        (["cat"], float("inf"), "finite"),
    ],
)
def test_prediction_item_refuses(labels: list[str], score: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prediction_item(labels, score, "v", SINGLE)


def test_datetimes_round_trip() -> None:
    parsed = parse_ls_datetime("2026-11-29T07:14:12.955499Z")
    assert parsed == datetime(2026, 11, 29, 7, 14, 12, 955499, tzinfo=UTC)
    assert ls_datetime(parsed) == "2026-11-29T07:14:12.955499Z"
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert ls_datetime(plus_two) == "2026-01-01T10:00:00.000000Z"
    assert parse_ls_datetime("garbage") is None
    assert parse_ls_datetime(None) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        ls_datetime(datetime(2026, 1, 1))
