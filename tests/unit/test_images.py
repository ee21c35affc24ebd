"""Image resolution: what is fetched, from where, with which credentials, and every refusal.

A real HTTP server on 127.0.0.1 stands in for Label Studio and for other hosts.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from backend.labelstudio.images import ImageError, ImageResolver, decode_image
from backend.settings import ImageSettings, LabelStudioSettings

TOKEN = "legacy-token-0123456789"


def png(size: tuple[int, int] = (4, 3), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        status, headers, body = route
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        for start in range(0, len(body), 65536):
            try:
                self.wfile.write(body[start : start + 65536])
            except (BrokenPipeError, ConnectionResetError):
                return


class Server(HTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, path: str, body: bytes = b"", status: int = 200, **headers: str) -> None:
        if status == 200 and "Content-Length" not in headers and "no_length" not in headers:
            headers["Content-Length"] = str(len(body))
        headers.pop("no_length", None)
        self.routes[path] = (status, headers, body)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, name="image-test-server")
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def resolver(server: Server, *, public: str | None = None, **images: Any) -> ImageResolver:
    ls = LabelStudioSettings(url=server.url, public_url=public, token=TOKEN)
    return ImageResolver(ls, ImageSettings(**images))


def test_label_studio_upload_is_fetched_with_the_token(server: Server) -> None:
    server.add("/data/upload/1/a.png", png())
    assert resolver(server).fetch("/data/upload/1/a.png") == png()
    assert server.seen == [("/data/upload/1/a.png", f"Token {TOKEN}")]


def test_local_files_url_keeps_its_query(server: Server) -> None:
    server.add("/data/local-files/", png())
    resolver(server).fetch("/data/local-files/?d=imgs/a.png")
    assert server.seen == [("/data/local-files/?d=imgs/a.png", f"Token {TOKEN}")]


def test_public_label_studio_url_is_fetched_from_the_internal_one(server: Server) -> None:
    server.add("/data/upload/1/a.png", png())
    res = resolver(server, public="https://ls.example.com")
    assert res.fetch("https://ls.example.com/data/upload/1/a.png") == png()
    assert server.seen == [("/data/upload/1/a.png", f"Token {TOKEN}")]


def test_allowed_host_gets_no_token(server: Server) -> None:
    server.add("/pic.png", png())
    other = server.url.replace("127.0.0.1", "localhost")
    assert resolver(server, allowed_hosts=("localhost",)).fetch(f"{other}/pic.png") == png()
    assert server.seen == [("/pic.png", None)]


def test_host_not_configured_is_refused_without_a_request(server: Server) -> None:
    server.add("/pic.png", png())
    other = server.url.replace("127.0.0.1", "localhost")
    with pytest.raises(ImageError, match=r"host localhost:.* is not in images.allowed_hosts"):
        resolver(server).fetch(f"{other}/pic.png")
    assert server.seen == []


def test_redirect_inside_allowed_hosts_is_followed(server: Server) -> None:
    server.add("/data/upload/old.png", status=302, Location="/data/upload/new.png")
    server.add("/data/upload/new.png", png())
    assert resolver(server).fetch("/data/upload/old.png") == png()
    assert [path for path, _ in server.seen] == ["/data/upload/old.png", "/data/upload/new.png"]


def test_redirect_elsewhere_is_refused(server: Server) -> None:
    server.add("/data/upload/a.png", status=302, Location="http://169.254.169.254/latest/")
    with pytest.raises(ImageError, match=r"169\.254\.169\.254 is not in images.allowed_hosts"):
        resolver(server).fetch("/data/upload/a.png")


def test_redirect_loop_ends(server: Server) -> None:
    server.add("/data/upload/a.png", status=302, Location="/data/upload/a.png")
    with pytest.raises(ImageError, match="redirects"):
        resolver(server).fetch("/data/upload/a.png")


def test_http_error_status_is_reported(server: Server) -> None:
    with pytest.raises(ImageError, match=r"HTTP 404 from 127.0.0.1"):
        resolver(server).fetch("/data/upload/missing.png")


def test_declared_oversize_is_refused(server: Server) -> None:
    server.add("/data/upload/big.png", b"x" * 4096)
    with pytest.raises(ImageError, match="too big"):
        resolver(server, max_bytes=1024).fetch("/data/upload/big.png")


def test_streamed_oversize_stops_reading(server: Server) -> None:
    server.add("/data/upload/endless.png", b"x" * (8 * 1024 * 1024), no_length="")
    with pytest.raises(ImageError, match=r"too big \(\d+ bytes > 1024\)"):
        resolver(server, max_bytes=1024).fetch("/data/upload/endless.png")


def test_unreachable_server_is_an_image_error() -> None:
    ls = LabelStudioSettings(url="http://127.0.0.1:9", token=TOKEN)
    with pytest.raises(ImageError, match=r"cannot fetch from 127.0.0.1:9"):
        ImageResolver(ls, ImageSettings(timeout_s=2)).fetch("/data/upload/a.png")


def test_data_url_is_decoded() -> None:
    ref = "data:image/png;base64," + base64.b64encode(png()).decode()
    res = ImageResolver(LabelStudioSettings(), ImageSettings())
    assert res.fetch(ref) == png()
    assert res.load(ref).size == (4, 3)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("data:image/png;base64," + "A" * 4000, "too big"),
        ("data:image/png;base64", "malformed"),
        ("data:image/png;base64,abc", "malformed"),
        ("s3://bucket/key.png", r"unsupported URL scheme s3://"),
        ("", "empty"),
    ],
)
def test_bad_references(ref: str, message: str) -> None:
    res = ImageResolver(LabelStudioSettings(), ImageSettings(max_bytes=1024))
    with pytest.raises(ImageError, match=message):
        res.fetch(ref)


def test_local_file_under_root(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    res = ImageResolver(LabelStudioSettings(), ImageSettings(local_root=tmp_path))
    assert res.fetch("imgs/a.png") == png()
    assert res.fetch(str(tmp_path / "imgs" / "a.png")) == png()
    assert res.fetch(f"file://{tmp_path}/imgs/a.png") == png()


def test_local_refusals(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret.png"
    root.mkdir()
    outside.write_bytes(png())
    (root / "link.png").symlink_to(outside)
    (root / "big.png").write_bytes(b"x" * 2048)
    res = ImageResolver(LabelStudioSettings(), ImageSettings(local_root=root, max_bytes=1024))
    for ref in ("../secret.png", str(outside), "link.png", f"file://{outside}"):
        with pytest.raises(ImageError, match=r"outside images.local_root"):
            res.fetch(ref)
    with pytest.raises(ImageError, match="not found"):
        res.fetch("nope.png")
    with pytest.raises(ImageError, match="too big"):
        res.fetch("big.png")


def test_local_files_need_a_root(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    with pytest.raises(ImageError, match="local_root is not set"):
        ImageResolver(LabelStudioSettings(), ImageSettings()).fetch(str(tmp_path / "a.png"))


def test_decode_gives_rgb() -> None:
    for mode in ("L", "RGBA", "P", "1"):
        image = decode_image(png((5, 2), mode), max_pixels=100)
        assert (image.mode, image.size) == ("RGB", (5, 2))


def test_too_many_pixels_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"too many pixels \(100x100 > 1000\)"):
        decode_image(png((100, 100)), max_pixels=1000)


def test_decompression_bomb_is_refused() -> None:
    bomb = png((10_000, 10_000), "1")  # 100 M pixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="too many pixels"):
        decode_image(bomb, max_pixels=40_000_000)
    with pytest.raises(ImageError, match="too many pixels"):
        decode_image(bomb, max_pixels=10**9)  # PIL's own bomb guard still holds


@pytest.mark.parametrize("data", [b"not an image", png()[:40], b""])
def test_corrupt_images(data: bytes) -> None:
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(data, max_pixels=100)


@pytest.mark.parametrize(
    "ref",
    [
        "/data/upload/../../api/current-user/token",
        "/data/upload/%2e%2e/%2e%2e/api/current-user/token",
        "/data/upload/..%2f..%2fapi/current-user/token",
        "/data/upload/1/..\\..\\..\\api/current-user/token",
        "/tasks/../api/current-user/token",
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/../../api/current-user/token?d=a.png",
        "/data/local-files?d=a.png&d=../b",
        "/api/current-user/token",
        "{ls}/api/current-user/token",
        "{ls}/data/upload/../../api/current-user/token",
        "{ls}/data/upload/%2E%2E/%2E%2E/api/projects",
        "/data/upload/%ff.png",
        "/data/upload/a%00.png",
    ],
)
def test_label_studio_paths_are_resolved_before_the_check(server: Server, ref: str) -> None:
    """A task image /data/upload/../../api/current-user/token made labelloop send an
    authenticated GET for Label Studio's API token endpoint."""
    server.add("/api/current-user/token", b'{"token": "secret"}')
    with pytest.raises(ImageError):
        resolver(server).fetch(ref.format(ls=server.url))
    assert server.seen == []


def test_a_path_that_resolves_inside_the_media_prefix_is_fetched_resolved(server: Server) -> None:
    server.add("/data/upload/1/a.png", png())
    assert resolver(server).fetch("/data/upload/2/../1/./a.png") == png()
    assert server.seen == [("/data/upload/1/a.png", f"Token {TOKEN}")]


def test_a_redirect_to_label_studios_api_is_refused(server: Server) -> None:
    server.add("/data/upload/r.png", status=302, Location="/data/upload/../api/current-user/token")
    server.add("/elsewhere", status=302, Location=f"{server.url}/api/current-user/token")
    with pytest.raises(ImageError, match="media path"):
        resolver(server).fetch("/data/upload/r.png")
    with pytest.raises(ImageError, match="media path"):
        resolver(server, allowed_hosts=("localhost",)).fetch(
            server.url.replace("127.0.0.1", "localhost") + "/elsewhere"
        )
    assert [path for path, _ in server.seen] == ["/data/upload/r.png", "/elsewhere"]


def test_label_studio_under_a_path_keeps_its_media_prefixes(server: Server) -> None:
    server.add("/ls/data/upload/1/a.png", png())
    ls = LabelStudioSettings(url=f"{server.url}/ls", token=TOKEN)
    with ImageResolver(ls, ImageSettings()) as under_path:
        assert under_path.fetch("/data/upload/1/a.png") == png()
        with pytest.raises(ImageError):
            under_path.fetch("/data/upload/../../api/current-user/token")
    assert [path for path, _ in server.seen] == ["/ls/data/upload/1/a.png"]


class Trickle(BaseHTTPRequestHandler):
    """Declares 400 bytes and sends one every 50 ms (20 s in all)."""

    sent: list[int]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "400")
        self.end_headers()
        for _ in range(400):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            self.sent.append(1)
            time.sleep(0.05)


def test_a_trickling_server_cannot_hold_a_fetch_past_its_deadline() -> None:
    """A byte every 0.5 s held a fetch 40 s with timeout_s: 2 (each read was bounded)."""
    sent: list[int] = []
    handler = type("Handler", (Trickle,), {"sent": sent})
    srv = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, name="trickle-server")
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        images = ImageSettings(allowed_hosts=("127.0.0.1",), timeout_s=2, deadline_s=0.5)
        fetcher = ImageResolver(LabelStudioSettings(url="http://ls.invalid"), images)
        with fetcher, pytest.raises(ImageError, match=r"took over 0\.5 s"):
            fetcher.fetch(f"{url}/slow.png")
        assert len(sent) < 100  # stopped long before the 400 bytes
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize(
    "ref", ["file:///%ff", "file:///a%00b.png", "a\x00b.png", "x" * 5000, "file:///" + "y" * 5000]
)
def test_malformed_local_references_are_image_errors(tmp_path: Path, ref: str) -> None:
    """file:///%ff was a UnicodeDecodeError (a 500 through the thumbnail); a NUL a ValueError;
    a 5,000-character name ENAMETOOLONG."""
    local = ImageResolver(LabelStudioSettings(), ImageSettings(local_root=tmp_path))
    with local, pytest.raises(ImageError):
        local.fetch(ref)


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + b"\xff" * 20,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        b"BM" + b"\xff" * 60,
        b"II*\x00" + b"\xff" * 40,
        b"\xff\xd8\xff\xe0" + b"\x00" * 10,
        b"P6\n-1 -1\n255\n",
        b"",
    ],
)
def test_hostile_bytes_decode_to_image_errors(data: bytes) -> None:
    with pytest.raises(ImageError):
        decode_image(data, max_pixels=10_000)
