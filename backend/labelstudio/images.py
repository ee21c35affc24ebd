"""Turn a task's image reference into bytes or a decoded image, refusing what we were not told
to fetch.

Rules:

- Label Studio relative URLs (``/data/upload/...``, ``/data/local-files/?d=...``, ``/tasks/...``,
  ``/storage-data/...``) and absolute URLs on Label Studio's own address are fetched from the
  configured ``label_studio.url`` with the API token. The token goes to Label Studio only, and
  only to its media paths: the path is percent-decoded and ``..`` resolved first, and what
  remains must still be under one of those prefixes (``/data/upload/../../api/...`` is refused
  without any request). The same holds for every redirect hop.
- ``data:`` URLs are decoded in memory.
- Other ``http(s)`` URLs only from ``images.allowed_hosts``; redirects are followed one hop at a
  time and each hop is checked again, so an allowed host cannot bounce us elsewhere.
- Local paths (absolute, relative or ``file://``) only under ``images.local_root``, symlinks
  resolved first.
- At most ``images.max_bytes`` are read (the body is streamed, never slurped) and at most
  ``images.max_pixels`` decoded; the size is checked from the header before decoding.
- One fetch, redirects and every read included, ends within ``images.deadline_s`` (plus at most
  one read timeout): a server trickling a byte at a time cannot hold it.
- Every failure, a malformed reference included, is an :class:`ImageError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import posixpath
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, unquote_to_bytes, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from backend.labelstudio.auth import SdkAuth, token_auth
from backend.settings import ImageSettings, LabelStudioSettings

LS_PREFIXES = ("/data/upload/", "/data/local-files/", "/tasks/", "/storage-data/")
#: How a Label Studio relative reference starts (before its path is resolved and checked).
LS_RELATIVE = (*LS_PREFIXES, "/data/local-files?")
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = (500, 502, 503, 504)


def pooled_session(images: ImageSettings) -> requests.Session:
    """A keep-alive session for image fetches: ``images.fetch_workers`` connections per host,
    GETs retried ``images.retries`` times on timeouts, dropped connections and 5xx answers with
    exponential backoff (``images.backoff_s``, doubling; a ``Retry-After`` is honoured)."""
    retry = Retry(
        total=images.retries,
        connect=images.retries,
        read=images.retries,
        status=images.retries,
        redirect=0,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=images.backoff_s,
        raise_on_status=False,
        raise_on_redirect=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(
        pool_connections=4, pool_maxsize=images.fetch_workers, pool_block=True, max_retries=retry
    )
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class ImageError(Exception):
    """An image reference could not be turned into an image; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class ImageResolver:
    """Fetch and decode task images under the configured limits.

    Args:
        ls: where Label Studio is and the token to send it.
        images: allowed hosts, local root and limits.
        session: reused for connection pooling; a private :func:`pooled_session` when None.
        auth: adds Label Studio's ``Authorization`` header; built from ``ls.token`` when None
            (a personal access token is exchanged for access tokens as needed).
    """

    def __init__(
        self,
        ls: LabelStudioSettings,
        images: ImageSettings,
        session: requests.Session | None = None,
        *,
        auth: requests.auth.AuthBase | None = None,
    ) -> None:
        self._ls = ls
        self._images = images
        self._owned_session = session is None
        self._session = session or pooled_session(images)
        self._auth = auth
        self._owned_auth: SdkAuth | None = None
        self._ls_origins = {_origin(u) for u in (ls.url, ls.public_url) if u}

    def close(self) -> None:
        """Release the connections this resolver opened itself."""
        if self._owned_session:
            self._session.close()
        if self._owned_auth is not None:
            self._owned_auth.close()

    def __enter__(self) -> ImageResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ls_auth(self) -> requests.auth.AuthBase | None:
        if self._auth is None and self._ls.token is not None:
            self._auth = self._owned_auth = token_auth(self._ls)
        return self._auth

    def fetch(self, ref: str) -> bytes:
        """The raw bytes behind ``ref``. Raises :class:`ImageError` (and nothing else)."""
        try:
            return self._fetch((ref or "").strip())
        except (ValueError, OSError, RuntimeError) as exc:  # a malformed reference or path
            raise ImageError(f"bad image reference ({type(exc).__name__})") from None

    def _fetch(self, ref: str) -> bytes:
        if not ref:
            raise ImageError("empty image reference")
        if ref.startswith("data:"):
            return self._data_url(ref)
        if ref.startswith(LS_RELATIVE):
            return self._http(self._ls.url + ref)
        scheme = urlsplit(ref).scheme.lower()
        if scheme in ("http", "https"):
            return self._http(ref)
        if scheme == "file":
            return self._local(unquote_to_bytes(urlsplit(ref).path).decode())
        if scheme and len(scheme) > 1:
            raise ImageError(f"unsupported URL scheme {scheme}://")
        return self._local(ref)

    def load(self, ref: str) -> Image.Image:
        """The decoded RGB image behind ``ref``. Raises :class:`ImageError`."""
        return decode_image(self.fetch(ref), max_pixels=self._images.max_pixels)

    # ------------------------------------------------------------------ sources

    def _check_size(self, size: int) -> None:
        if size > self._images.max_bytes:
            raise ImageError(f"image too big ({size} bytes > {self._images.max_bytes})")

    def _data_url(self, ref: str) -> bytes:
        header, sep, payload = ref.partition(",")
        if not sep:
            raise ImageError("malformed data: URL")
        base64_encoded = header.endswith(";base64")
        self._check_size(len(payload) * 3 // 4 if base64_encoded else len(payload) // 3)
        try:
            raw = (
                base64.b64decode(payload, validate=False)
                if base64_encoded
                else unquote_to_bytes(payload)
            )
        except (binascii.Error, ValueError):
            raise ImageError("malformed data: URL") from None
        self._check_size(len(raw))
        return raw

    def _local(self, ref: str) -> bytes:
        root = self._images.local_root
        if root is None:
            raise ImageError("local files are not allowed (images.local_root is not set)")
        base = root.resolve()
        try:
            path = (base / ref).resolve()
        except (OSError, RuntimeError):
            raise ImageError("local path cannot be resolved") from None
        if not path.is_relative_to(base):
            raise ImageError("local path is outside images.local_root")
        if not path.is_file():
            raise ImageError("local file not found")
        return self._read_file(path)

    def _read_file(self, path: Path) -> bytes:
        self._check_size(path.stat().st_size)
        with path.open("rb") as handle:
            data = handle.read(self._images.max_bytes + 1)
        self._check_size(len(data))
        return data

    # ------------------------------------------------------------------ http

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if _origin(url) in self._ls_origins:
            return True
        allowed = {h.lower() for h in self._images.allowed_hosts}
        return parts.hostname.lower() in allowed or parts.netloc.lower() in allowed

    def _checked(self, url: str) -> str:
        """``url`` with its path resolved; on Label Studio only its media paths pass.

        Raises:
            ImageError: a host not allowed, or a Label Studio path outside the media prefixes.
        """
        url = self._to_internal(url)
        if not self._allowed(url):
            raise ImageError(f"host {urlsplit(url).netloc or '?'} is not in images.allowed_hosts")
        parts = urlsplit(url)
        path = resolved_path(parts.path)
        if _origin(url) in self._ls_origins and not is_media_path(
            self._below_ls_base(path), parts.query
        ):
            raise ImageError("not a Label Studio media path (/data/upload/, /data/local-files/..)")
        return urlunsplit(
            (parts.scheme, parts.netloc, quote(path, safe="/:@!$&'()*+,;=~"), parts.query, "")
        )

    def _below_ls_base(self, path: str) -> str:
        """``path`` without the path Label Studio is served under (``http://host/ls``)."""
        for base in {
            urlsplit(u).path.rstrip("/") for u in (self._ls.url, self._ls.public_url) if u
        }:
            if base and path.startswith(base + "/"):
                return path[len(base) :]
        return path

    def _to_internal(self, url: str) -> str:
        """A URL on Label Studio's public address, rewritten to the address we reach it on."""
        public = self._ls.public_url
        if public and _origin(url) == _origin(public):
            return _origin(self._ls.url) + url[len(_origin(public)) :]
        return url

    def _http(self, url: str) -> bytes:
        deadline = time.monotonic() + self._images.deadline_s
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise ImageError(f"download took over {self._images.deadline_s:g} s")
            url = self._checked(url)
            response = self._get(url, deadline)
            with response:
                if response.status_code in REDIRECTS and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise ImageError(f"HTTP {response.status_code} from {urlsplit(url).netloc}")
                return self._read_body(response, deadline)
        raise ImageError(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, deadline: float) -> requests.Response:
        auth = self._ls_auth() if _origin(url) in self._ls_origins else None
        # No single connect or read may outlast the fetch's deadline.
        timeout = max(0.05, min(self._images.timeout_s, deadline - time.monotonic()))
        try:
            return self._session.get(
                url,
                auth=auth,
                stream=True,
                allow_redirects=False,
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise ImageError(
                f"cannot fetch from {urlsplit(url).netloc}: {type(exc).__name__}"
            ) from None

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit():
            self._check_size(int(declared))
        body = bytearray()
        try:
            # read1 returns what one receive brought (iter_content waits for a whole chunk, so
            # a byte every half second would pass every check between chunks for hours).
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                body.extend(chunk)
                self._check_size(len(body))
                if time.monotonic() > deadline:
                    raise ImageError(f"download took over {self._images.deadline_s:g} s")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ImageError(f"download failed: {type(exc).__name__}") from None
        return bytes(body)


def resolved_path(path: str) -> str:
    """A URL path percent-decoded with ``.`` and ``..`` resolved (what a server will serve)."""
    decoded = unquote(path, errors="strict")
    if "\\" in decoded or "\x00" in decoded:
        raise ImageError("image path holds a backslash or NUL")
    resolved = posixpath.normpath("/" + decoded.lstrip("/"))
    resolved = "/" + resolved.lstrip("/")  # normpath keeps a leading '//'
    return resolved + "/" if decoded.endswith("/") and resolved != "/" else resolved


def is_media_path(path: str, query: str) -> bool:
    """Whether a resolved path on Label Studio is one of its media routes."""
    if path.rstrip("/") == "/data/local-files":
        targets = parse_qs(query).get("d", [])
        return len(targets) == 1 and ".." not in targets[0].replace("\\", "/").split("/")
    return path.startswith(LS_PREFIXES)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an RGB image, checking the pixel count before decoding.

    Raises:
        ImageError: not an image, corrupt, or more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            _check_pixels(probe, max_pixels)
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"too many pixels (> {max_pixels})") from None
    except ImageError:
        raise
    except Exception as exc:  # PIL's format plugins raise many types on hostile input
        raise ImageError(f"corrupt or unsupported image ({type(exc).__name__})") from None


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"too many pixels ({width}x{height} > {max_pixels})")
