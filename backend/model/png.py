"""The common PNGs decoded in about 60 % of PIL's time, to the same pixels.

PIL inflates a PNG with zlib and undoes each row's filter one byte at a time in C; on a 640x480
photograph that is 7-9 ms on one core, close to the backbone's forward pass (about 9.5 CPU ms per
image). This path (about 4.4 ms) reads the chunks itself, inflates all image data in one call to
libdeflate (into a buffer of the exact size the header implies, so a hostile stream cannot grow
it) and undoes the filters in a compiled kernel that releases the GIL, so the featurize pool's
threads decode in parallel.

It reads what photographs and screenshots are saved as: 8 bits per channel, grey, grey + alpha,
RGB or RGBA, not interlaced. Anything else (palettes, 16 bits, Adam7, a damaged header, an image
over PIL's pixel limit, a stream that does not inflate to exactly the image's size) returns
``None`` and is left to PIL, which decodes it or raises its own error. Chunk checksums are checked
where PIL checks them (every chunk before the image data), and the image data's own (Adler-32) by
libdeflate.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from types import MappingProxyType

import deflate
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from strategies.kernels import compiled

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> channels, for the types this path reads (grey, RGB, grey + alpha, RGBA).
CHANNELS: Mapping[int, int] = MappingProxyType({0: 1, 2: 3, 4: 2, 6: 4})
_CHUNK = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")


def decode_png(data: bytes) -> NDArray[np.uint8] | None:
    """(height, width) or (height, width, channels) pixels of a PNG this path reads, else None.

    The pixels are those PIL's decoder gives (``np.asarray(Image.open(...))``), bit for bit.
    """
    header = _header(data)
    if header is None:
        return None
    width, height, channels, image_data = header
    stride = width * channels
    expected = height * (stride + 1)
    try:
        raw = deflate.zlib_decompress(image_data, expected)
    except deflate.DeflateError:  # corrupt, or more data than the image holds
        return None
    if len(raw) != expected:  # truncated
        return None
    out = np.empty((height, stride), dtype=np.uint8)
    if not unfilter(np.frombuffer(raw, dtype=np.uint8), height, stride, channels, out):
        return None  # a row's filter type is not one of PNG's five
    if channels == 1:
        return out
    return out.reshape(height, width, channels)


def _header(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(width, height, channels, concatenated image data) of a PNG this path reads, else None."""
    if not data.startswith(SIGNATURE):
        return None
    pos, end = len(SIGNATURE), len(data)
    size: tuple[int, int, int] | None = None
    parts: list[bytes] = []
    while pos + 12 <= end:
        length, kind = _CHUNK.unpack_from(data, pos)
        body = pos + 8
        checked = not parts and kind != b"IDAT"  # PIL checks the chunks before the image data
        if body + length + 4 > end or (checked and not _checksum_holds(data, pos, length)):
            return None
        if pos == len(SIGNATURE):
            size = _image_size(data, body, length) if kind == b"IHDR" else None
            if size is None:
                return None
        elif kind == b"IDAT":
            parts.append(data[body : body + length])
        elif kind == b"IEND":
            return (*size, b"".join(parts)) if size is not None and parts else None
        pos = body + length + 4
    return None  # no IEND: truncated; PIL decides what to make of it


def _checksum_holds(data: bytes, pos: int, length: int) -> bool:
    crc: int = struct.unpack_from(">I", data, pos + 8 + length)[0]
    return zlib.crc32(data[pos + 4 : pos + 8 + length]) == crc


def _image_size(data: bytes, body: int, length: int) -> tuple[int, int, int] | None:
    """(width, height, channels) from the IHDR chunk, None for a kind this path leaves to PIL."""
    if length != _IHDR.size:
        return None
    width, height, depth, colour, method, filtering, interlace = _IHDR.unpack_from(data, body)
    if depth != 8 or colour not in CHANNELS or (method, filtering, interlace) != (0, 0, 0):
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if width == 0 or height == 0 or (limit is not None and width * height > limit):
        return None
    return width, height, CHANNELS[colour]


@compiled(nogil=True)
def unfilter(
    raw: NDArray[np.uint8], height: int, stride: int, bpp: int, out: NDArray[np.uint8]
) -> bool:
    """Undo PNG's per-row filters: ``raw`` holds ``height`` rows of one filter byte and
    ``stride`` filtered bytes; ``out`` (height, stride) receives the pixels' bytes, ``bpp`` bytes
    per pixel. False at a filter type other than 0-4 (None, Sub, Up, Average, Paeth)."""
    for y in range(height):
        src = y * (stride + 1) + 1
        kind = raw[src - 1]
        if kind > 4:
            return False
        if kind == 0:
            out[y, :] = raw[src : src + stride]
        else:
            _unfilter_row(raw[src : src + stride], out, y, bpp, kind)
    return True


@compiled(nogil=True)
def _unfilter_row(
    row: NDArray[np.uint8], out: NDArray[np.uint8], y: int, bpp: int, kind: int
) -> None:
    """One row of Sub (1), Up (2), Average (3) or Paeth (4); the row above row 0 is zeros.

    One loop per filter: a test of ``kind`` inside a shared loop costs a third more time."""
    cur = out[y]
    if kind == 1 or (y == 0 and kind == 4):  # Paeth with no row above predicts the left byte
        for x in range(row.shape[0]):
            left = np.int32(cur[x - bpp]) if x >= bpp else np.int32(0)
            cur[x] = (np.int32(row[x]) + left) & 0xFF
    elif kind == 2:
        if y == 0:
            cur[:] = row
        else:
            cur[:] = row + out[y - 1]  # uint8 arithmetic wraps modulo 256, as PNG's does
    elif kind == 3:
        for x in range(row.shape[0]):
            left = np.int32(cur[x - bpp]) if x >= bpp else np.int32(0)
            up = np.int32(out[y - 1, x]) if y > 0 else np.int32(0)
            cur[x] = (np.int32(row[x]) + ((left + up) >> 1)) & 0xFF
    else:
        above = out[y - 1]
        for x in range(bpp):  # no left neighbour: Paeth predicts the byte above
            cur[x] = (np.int32(row[x]) + np.int32(above[x])) & 0xFF
        for x in range(bpp, row.shape[0]):
            predicted = _paeth(np.int32(cur[x - bpp]), np.int32(above[x]), np.int32(above[x - bpp]))
            cur[x] = (np.int32(row[x]) + predicted) & 0xFF


@compiled(nogil=True)
def _paeth(a: np.int32, b: np.int32, c: np.int32) -> np.int32:
    """The neighbour (left, up, up-left) closest to ``a + b - c``, ties in that order."""
    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c
