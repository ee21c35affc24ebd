"""Reading requests at the boundary: bodies, query strings and path ids, validated once.

A body is checked for size (``server.max_body_bytes``, by Flask) and nesting depth before it is
parsed, parsed without NaN/Infinity, then validated against a pydantic schema from
:mod:`backend.api.schemas`; every failure is an :class:`~backend.api.errors.ApiError` (400, or
413 for a body over the limit), so handlers only ever see valid, typed input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

import numpy as np
from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.routing import IntegerConverter

from backend.api.errors import ApiError, bad_request
from backend.api.schemas import MAX_ID

#: Deepest nesting of arrays/objects a body may have (Label Studio's payloads stay below 12).
MAX_DEPTH = 64

# A JSON string, possibly unterminated at the end of the body (so a scan never restarts inside
# one: linear time on any input).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)

M = TypeVar("M", bound=BaseModel)


class IdConverter(IntegerConverter):
    """``<id:name>`` path segments: 1 to 2^63-1 in ASCII digits; anything else is a 404."""

    def __init__(self, map: Any) -> None:
        super().__init__(map, min=1, max=MAX_ID)


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where(np.isin(codes, _OPENING), 1, -1)
    return int(np.cumsum(steps).max())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON body after checking its depth. Raises a 400 :class:`ApiError`."""
    if not raw:
        raise bad_request("request body is empty; a JSON object is required")
    # Nothing nests deeper than the brackets that open, counted at C speed: most bodies have
    # too few of them to need the full scan.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = json_depth(raw)
        if depth > max_depth:
            raise bad_request(
                f"request body nests {depth} levels deep; at most {max_depth} allowed"
            )
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise bad_request(f"request body is not valid JSON: {reason}") from None


def raw_body() -> bytes:
    """The request body, at most ``MAX_CONTENT_LENGTH`` bytes (a 413 beyond, chunked or not)."""
    limit = request.max_content_length
    if request.content_length is None and limit is not None:
        # A chunked body has no length to check up front: read one byte past the limit.
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "request_entity_too_large", f"request body is over {limit} bytes")
        return data
    return request.get_data(cache=True)


def json_body() -> Any:
    """The parsed JSON body of the current request."""
    return parse_json(cached_body())


def cached_body() -> bytes:
    """The raw body, read once per request (the webhook's delivery key hashes these bytes)."""
    body = g.get("raw_body")
    if not isinstance(body, bytes):
        body = g.raw_body = raw_body()
    return body


def validation_detail(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"'{where}': {first['msg']}"


def validated(model: type[M], data: Any) -> M:
    """``data`` as ``model``; the first problem found is a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(validation_detail(exc)) from None


def body(model: type[M]) -> M:
    """The current request's JSON body validated as ``model``."""
    return validated(model, json_body())


def query(model: type[M]) -> M:
    """The current request's query string validated as ``model`` (unknown keys refused)."""
    return validated(model, request.args.to_dict())
