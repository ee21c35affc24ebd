"""Request schemas of every route: the one boundary where input is checked.

Bodies keep the keys we do not read (``extra="allow"``: Label Studio's payloads carry much more
than we need, and the webhook stores them as they came); the keys we do read are typed and
bounded. Ids are what the store holds: positive signed 64-bit integers, never booleans.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from backend.loop.inbox import MAX_ID, Id, WebhookEvent

__all__ = [
    "MAX_ID",
    "HistoryQuery",
    "Id",
    "LimitQuery",
    "PredictRequest",
    "PreviewRequest",
    "SettingsPatch",
    "SetupRequest",
    "WebhookEvent",
]

#: ``GET ...?limit=N`` pages.
Limit = Annotated[int, Field(ge=1, le=500)]


class _Open(BaseModel):
    """A JSON object of which only some keys are read; the rest pass through."""

    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- the ML backend protocol


class SetupRequest(_Open):
    """``POST /setup`` as Label Studio sends it when a backend is connected."""

    project: Annotated[str, Field(max_length=100)] | Id = Field(
        description="'<id>.<created unix timestamp>' (Label Studio) or the bare id"
    )
    schema_: str = Field(alias="schema", min_length=1, max_length=1_000_000)
    hostname: Annotated[str, Field(max_length=500)] | None = None


class PredictTask(_Open):
    id: Id
    data: dict[str, Any] | None = None


class PredictRequest(_Open):
    """``POST /predict``: full task JSON; exactly one result per task comes back, in order."""

    tasks: list[PredictTask]
    project: Annotated[str, Field(max_length=100)] | Id | None = None
    label_config: Annotated[str, Field(max_length=1_000_000)] | None = None


# ---------------------------------------------------------------- admin


class LimitQuery(_Closed):
    limit: Limit = 20


class HistoryQuery(_Closed):
    limit: Limit = 50


class SettingsPatch(_Open):
    """``PATCH .../settings``: nested changes by section, checked against the settings' types.

    Sections other than these three are refused with a 422 naming them (by the settings check).
    """

    strategy: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    loop: dict[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class PreviewRequest(SettingsPatch):
    """``POST .../preview``: proposed changes (as in a settings patch) and how many items."""

    top: int = Field(20, strict=True, ge=1, le=1000)

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"top"})
