"""What each route is: who may call it, what it reads, what it answers.

Every view carries an :class:`Operation` (``@operation(...)`` under the route decorator). The
access check (:mod:`backend.api.access`) and the OpenAPI document (:mod:`backend.api.openapi`)
both read it, so the published API and the enforced one cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

#: ``labelstudio``: Label Studio's calls (basic auth when configured); ``admin``: an admin bearer
#: token; ``dashboard``: an admin token as bearer or as basic auth (browsers); ``metrics``: the
#: metrics token or an admin token; ``public``: anyone.
Access = Literal["labelstudio", "admin", "dashboard", "metrics", "public"]
F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "labelloop_operation"


@dataclass(frozen=True)
class Operation:
    summary: str
    access: Access
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, str] = field(default_factory=dict)
    content_type: str = "application/json"


def operation(
    summary: str,
    *,
    access: Access,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: Mapping[int, str] | None = None,
    content_type: str = "application/json",
) -> Callable[[F], F]:
    """Describe a view; put it under ``@bp.get(...)``/``@bp.post(...)``."""

    def mark(view: F) -> F:
        setattr(
            view,
            ATTRIBUTE,
            Operation(summary, access, body, query, dict(responses or {}), content_type),
        )
        return view

    return mark


def operation_of(view: Callable[..., Any] | None) -> Operation | None:
    return getattr(view, ATTRIBUTE, None) if view is not None else None
