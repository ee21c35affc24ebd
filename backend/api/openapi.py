"""``GET /openapi.json``: the API as OpenAPI 3.1, generated from the routes' operations.

Paths and methods come from the URL map, parameters from the path converters and the query
schemas, bodies from the pydantic request schemas, and security from each operation's access
rule: the same objects that validate and authorize requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel

from backend.api.operations import Operation, operation, operation_of
from backend.api.schemas import MAX_ID

bp = Blueprint("openapi", __name__)

_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_REF = "#/components/schemas/{model}"
#: Each access rule's accepted credentials, any one of them (security scheme names).
_SECURITY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "labelstudio": ("labelStudioBasic",),
        "admin": ("adminBearer",),
        "dashboard": ("adminBearer", "dashboardBasic"),
        "metrics": ("metricsBearer", "adminBearer"),
        "public": (),
    }
)
_SCHEMES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "labelStudioBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "server.basic_auth_user/basic_auth_password, when both are set",
        },
        "adminBearer": {"type": "http", "scheme": "bearer", "description": "server.admin_tokens"},
        "dashboardBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "an admin token's name as user and the token as password (browsers)",
        },
        "metricsBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "server.metrics_token",
        },
    }
)
_ERRORS: Mapping[str, str] = MappingProxyType(
    {
        "400": "malformed JSON, a body or parameter that does not match its schema",
        "401": "missing or wrong credentials",
        "403": "the credential this route needs is not configured",
        "404": "unknown route, id out of range, or nothing there",
        "405": "method not allowed",
        "413": "body over server.max_body_bytes",
        "422": "well-formed but not acceptable (unsupported label config, invalid settings)",
    }
)


def _error_schema() -> dict[str, Any]:
    """The body of every error answer."""
    return {
        "type": "object",
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        "required": ["error", "detail"],
    }


def _path_parameter(converter: str | None, name: str) -> dict[str, Any]:
    if converter == "id":
        schema: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    elif converter == "int":
        schema = {"type": "integer", "minimum": 0}
    else:
        schema = {"type": "string"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF, by_alias=True)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": text, "content": {op.content_type: {}}}
        for status, text in (op.responses or {200: "OK"}).items()
    }
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    for status, text in _ERRORS.items():
        responses.setdefault(status, {"description": text, **error})
    return responses


def _operation(
    op: Operation, endpoint: str, parameters: list[dict[str, Any]], components: dict[str, Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": endpoint,
        "summary": op.summary,
        "security": [{scheme: []} for scheme in _SECURITY[op.access]],
        "responses": _responses(op),
    }
    if op.query is not None:
        parameters = [*parameters, *_query_parameters(op.query)]
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(op.body, components)}},
        }
    return spec


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every route of ``app`` that declares an operation."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Error": _error_schema()}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        op = operation_of(app.view_functions.get(rule.endpoint))
        if op is None:
            continue
        parameters = [
            _path_parameter(m["converter"], m["name"]) for m in _ARGUMENT.finditer(rule.rule)
        ]
        path = _ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                op, rule.endpoint, parameters, components
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": "labelloop", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {k: dict(v) for k, v in _SCHEMES.items()},
        },
    }


@bp.get("/openapi.json")
@operation("This document.", access="public")
def openapi() -> Response:
    return jsonify(build_document(current_app))
