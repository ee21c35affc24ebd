"""Authentication against Label Studio and its one error type, shared by the client and images.

The SDK handles tokens: a legacy token is sent as ``Token <t>``; a personal access token (a JWT
refresh token) is exchanged for 5-minute access tokens sent as ``Bearer <a>``, refreshed when
they expire. :class:`SdkAuth` puts the same header on raw ``requests`` calls. Nothing here logs
tokens.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import requests
from label_studio_sdk.client import LabelStudio as SdkClient
from label_studio_sdk.core.api_error import ApiError

from backend.settings import LabelStudioSettings


class LabelStudioError(Exception):
    """A Label Studio call failed. ``status`` is None when no HTTP answer came back."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"Label Studio {status or 'unreachable'}: {message}")
        self.status = status
        self.message = message


def error_text(body: Any) -> str:
    if not isinstance(body, dict):
        return (
            str(body)[:300] if isinstance(body, str) and not body.lstrip().startswith("<") else ""
        )
    detail = str(body.get("detail") or body.get("error") or "")
    errors = body.get("validation_errors")
    if errors:
        detail = f"{detail}: {json.dumps(errors)}" if detail else json.dumps(errors)
    return detail[:500]


def response_error(response: requests.Response) -> LabelStudioError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return LabelStudioError(response.status_code, error_text(body) or response.reason or "")


def make_sdk(ls: LabelStudioSettings, http: httpx.Client | None = None) -> SdkClient:
    """The SDK client for ``ls``; no request is made until it is used."""
    if ls.token is None:
        raise LabelStudioError(None, "no API token configured (label_studio.token)")
    try:
        return SdkClient(  # type: ignore[no-untyped-call]  # the SDK's constructor is untyped
            base_url=ls.url,
            api_key=ls.token.get_secret_value(),
            timeout=ls.timeout_s,
            max_retries=0,  # the SDK would retry POSTs on 5xx and create duplicates
            httpx_client=http or httpx.Client(timeout=ls.timeout_s, follow_redirects=True),
        )
    except ApiError as exc:  # an expired personal access token is refused up front
        raise LabelStudioError(exc.status_code, error_text(exc.body)) from None


class SdkAuth(requests.auth.AuthBase):
    """Puts the SDK's current ``Authorization`` header (legacy or refreshed JWT) on a request."""

    def __init__(self, sdk: SdkClient, owned: httpx.Client | None = None) -> None:
        # The SDK keeps its token logic on the client wrapper; sharing it means one access
        # token cache for SDK and raw calls.
        self._wrapper = sdk._client_wrapper
        self._owned = owned

    def close(self) -> None:
        """Close the HTTP client used for token refreshes, when this auth owns it."""
        if self._owned is not None:
            self._owned.close()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        try:
            request.headers["Authorization"] = self._wrapper.get_headers()["Authorization"]
        except ApiError as exc:
            raise LabelStudioError(exc.status_code, error_text(exc.body)) from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(None, f"token refresh failed: {type(exc).__name__}") from None
        return request


def token_auth(ls: LabelStudioSettings) -> SdkAuth:
    """A ``requests`` auth for Label Studio built from the configured token; close it after use."""
    http = httpx.Client(timeout=ls.timeout_s)
    try:
        return SdkAuth(make_sdk(ls, http), owned=http)
    except LabelStudioError:
        http.close()
        raise
