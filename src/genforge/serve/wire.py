"""What crosses the wire: the server's one error type (a 4xx with the option it names) and the
encodings of binary answers. Its own module so every serve module can raise and encode without
importing engine.py (which imports them)."""

from __future__ import annotations

import base64
import re

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
