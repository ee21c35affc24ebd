"""The fast PNG path gives PIL's pixels bit for bit, and leaves everything else to PIL."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.model.featurize import decode_image
from backend.model.png import decode_png

MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filtered(rows: np.ndarray, filters: list[int], bpp: int) -> bytes:
    """PNG's five row filters written out byte by byte (the specification's arithmetic)."""
    out = bytearray()
    height, stride = rows.shape
    for y in range(height):
        kind = filters[y]
        out.append(kind)
        for x in range(stride):
            a = int(rows[y, x - bpp]) if x >= bpp else 0
            b = int(rows[y - 1, x]) if y > 0 else 0
            c = int(rows[y - 1, x - bpp]) if x >= bpp and y > 0 else 0
            predicted = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((int(rows[y, x]) - predicted) & 0xFF)
    return bytes(out)


def encode(
    pixels: np.ndarray,
    colour: int,
    filters: list[int],
    *,
    depth: int = 8,
    interlace: int = 0,
    extra: bytes = b"",
    idat_parts: int = 1,
) -> bytes:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    bpp = rows.shape[1] // width
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    stream = zlib.compress(_filtered(rows, filters, bpp), 6)
    cut = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    idats = b"".join(_chunk(b"IDAT", stream[cut[i] : cut[i + 1]]) for i in range(idat_parts))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + idats
        + _chunk(b"tEXt", b"Comment\x00after the data")
        + _chunk(b"IEND", b"")
    )


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def _pixels(rng: np.random.Generator, height: int, width: int, colour: int) -> np.ndarray:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    smooth = np.cumsum(rng.integers(-12, 13, (height, width, channels)), axis=1)
    pixels = (smooth + rng.integers(0, 256, (1, 1, channels))) % 256
    pixels[rng.random((height, width, channels)) < 0.05] = 255  # saturated bytes wrap the sums
    pixels = pixels.astype(np.uint8)
    return pixels[:, :, 0] if channels == 1 else pixels


@pytest.mark.parametrize("colour", [0, 2, 4, 6])
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (9, 13)])
def test_every_filter_and_colour_type_gives_pils_pixels(colour: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(colour * 100 + size[0] * 10 + size[1])
    height, width = size
    pixels = _pixels(rng, height, width, colour)
    for filters in ([k] * height for k in range(5)):  # each filter on every row, the first too
        data = encode(pixels, colour, filters, idat_parts=min(3, height))
        got = decode_png(data)
        assert got is not None
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, pixels)
        np.testing.assert_array_equal(got, _pil(data))
    mixed = encode(pixels, colour, list(rng.integers(0, 5, height)))
    np.testing.assert_array_equal(decode_png(mixed), _pil(mixed))


def test_pils_own_files_decode_to_its_pixels() -> None:
    rng = np.random.default_rng(3)
    for mode in ("L", "LA", "RGB", "RGBA"):
        channels = len(mode)
        pixels = _pixels(rng, 48, 64, {1: 0, 2: 4, 3: 2, 4: 6}[channels])
        for options in ({}, {"optimize": True}, {"compress_level": 1}):
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode=mode).save(buffer, format="PNG", **options)
            data = buffer.getvalue()
            np.testing.assert_array_equal(decode_png(data), _pil(data))


def test_decode_image_returns_the_same_image_as_pil() -> None:
    pixels = _pixels(np.random.default_rng(4), 30, 40, 6)
    data = encode(pixels, 6, [4] * 30)
    image = decode_image(data)
    assert image.mode == "RGBA"
    assert image.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), _pil(data)[:, :, :3])


def _unsupported() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    rgb = _pixels(rng, 6, 8, 2)
    good = encode(rgb, 2, [1] * 6)
    palette = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(palette, format="PNG")
    deep = io.BytesIO()
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(deep, format="PNG")
    interlaced = bytearray(good)
    interlaced[8 + 8 + 12] = 1  # IHDR's interlace byte (its checksum now fails too)
    bad_crc = bytearray(good)
    bad_crc[8 + 8 + 13] ^= 0xFF
    stream = zlib.compress(_filtered(rgb.reshape(6, -1), [0] * 6, 3))
    header = struct.pack(">IIBBBBB", 8, 6, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    return {
        "palette": palette.getvalue(),
        "16 bits": deep.getvalue(),
        "interlace flag": bytes(interlaced),
        "header checksum": bytes(bad_crc),
        "truncated file": good[: len(good) // 2],
        "short image data": png + _chunk(b"IDAT", stream[:-8]) + _chunk(b"IEND", b""),
        "too much image data": png
        + _chunk(b"IDAT", zlib.compress(_filtered(rgb.reshape(6, -1), [0] * 6, 3) + b"\0" * 25))
        + _chunk(b"IEND", b""),
        "bad filter type": png
        + _chunk(b"IDAT", zlib.compress(b"\x07" + bytes(24) + bytes(25 * 5)))
        + _chunk(b"IEND", b""),
        "no header first": b"\x89PNG\r\n\x1a\n" + _chunk(b"IDAT", stream) + _chunk(b"IEND", b""),
        "jpeg": _jpeg(rgb),
        "not an image": b"hello",
    }


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", sorted(_unsupported()))
def test_anything_else_is_left_to_pil(case: str) -> None:
    data = _unsupported()[case]
    assert decode_png(data) is None
    try:  # decode_image gives exactly what PIL gives, an image or PIL's own error
        expected = _pil(data)
    except Exception as error:
        with pytest.raises(type(error)):
            np.asarray(decode_image(data))
    else:
        np.testing.assert_array_equal(np.asarray(decode_image(data)), expected)


def test_the_pixel_limit_is_pils(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(_pixels(np.random.default_rng(6), 10, 10, 0), 0, [2] * 10)
    assert decode_png(data) is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 99)
    assert decode_png(data) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode_png(data) is not None
