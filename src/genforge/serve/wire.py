"""What crosses the wire: the server's one error type (a 4xx with the option it names) and the
encodings of binary answers, and the bounds of uploaded bytes. Its own module so every serve
module can raise and encode without importing engine.py or options.py."""

from __future__ import annotations

import base64
import binascii
import re
import struct

from genforge import GenforgeError


class RequestError(GenforgeError):
    """A request the server refuses: ``status`` (400 wrong request, 404 unknown model, 413/422
    a limit or a type) and ``param``, the option it names (or None)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind


def from_library(e: GenforgeError, status: int = 400) -> RequestError:
    """A library error in the API's words: the CLI's --flag-name becomes 'flag_name', the param."""
    names = re.findall(r"--([a-z][a-z0-9-]*)", str(e))
    message = re.sub(r"--([a-z][a-z0-9-]*)", lambda m: "'" + m.group(1).replace("-", "_") + "'", str(e))
    return RequestError(message, status, names[0].replace("-", "_") if names else None)


def png_bytes(image, record: dict | None = None) -> bytes:
    """A PIL image -> PNG bytes with the provenance ``record`` in its chunk (serve/records.py).
    Deterministic: same pixels and record, same bytes (no time in a served record)."""
    from genforge.provenance import png_bytes as stamped

    return stamped(image, record)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_base64(value: str, name: str, max_bytes: int, limit: str) -> bytes:
    """Strict base64 -> bytes, the size checked before decoding (from the text's length) and
    after; ``limit`` names the server limit in the 413 (e.g. "max_file_bytes")."""
    if len(value) > 4 * ((max_bytes + 2) // 3):  # base64 of max_bytes bytes, padded
        raise RequestError(f"'{name}' is about {len(value) * 3 // 4} bytes, above this server's limit "
                           f"{limit}={max_bytes}", 413, name)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"'{name}' is not valid base64: send the file's bytes base64-encoded (the server "
                           "never reads a path)", 422, name) from None
    if len(raw) > max_bytes:
        raise RequestError(f"'{name}' is {len(raw)} bytes, above this server's limit {limit}={max_bytes}",
                           413, name)
    return raw


def png_size(raw: bytes, name: str) -> tuple[int, int]:
    """(width, height) of PNG bytes from the IHDR chunk (the PNG spec: the first chunk), read
    before any decoder sees the pixels, so a size bomb is refused by our limit, not Pillow's."""
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        raise RequestError(f"'{name}' starts like a PNG but has no IHDR header chunk", 422, name)
    return struct.unpack(">II", raw[16:24])


def check_side(name: str, size: tuple[int, int], max_side: int, what: str, note: str = "") -> None:
    """The decompression-bomb guard: an image's (width, height), read from its header before any
    decoder sees the pixels, is 1 to ``max_side`` (the server's max_init_side) pixels a side."""
    width, height = size
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise RequestError(f"'{name}' is a {width}x{height} {what}, outside this server's limit max_init_side="
                           f"{max_side} (1 to {max_side} pixels a side{note})", 422, name)

