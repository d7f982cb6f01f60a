"""``POST /v1/detect`` and ``POST /v1/verify``: `genforge detect` and `genforge verify` over HTTP.

- detect: is this text (or image) marked with a served run's watermark? The run's key is used on
  the server and never returned (only its fingerprint); text goes through the exact test of
  Kirchenbauer et al. 2023 (``watermark.text.detect_text``), images (one image or a served grid)
  through ``watermark.image.detect_images`` with the served model: the post-hoc mark's z-test,
  and for diffusion runs Tree-Ring by DDIM inversion (as `genforge detect FILE --run RUN`).
- verify: a file's provenance record and C2PA content credentials, through the CLI's own
  ``cli_provenance.verify_file``. The file arrives as base64 bytes and is written into a private
  temporary folder under a fixed name (only the request's suffix is kept), so no path ever comes
  from a request; the folder is removed after the check.

Bounds: the decoded file at most ``Limits.max_file_bytes`` (413), text at most
``Limits.max_detect_chars`` characters (422), a PNG's declared size at most ``max_init_side``
pixels a side, read from its header before any decoder sees it (the decompression-bomb guard).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from genforge import GenforgeError
from genforge.serve.wire import (
    PNG_SIGNATURE,
    RequestError,
    check_side,
    decode_base64,
    from_library,
    png_size,
)

VERDICTS = {"valid": "valid", "untrusted": "untrusted", "tampered": "tampered", "no provenance": "none"}


class DetectRequest(BaseModel):
    """POST /v1/detect: ``text`` for a text run, or ``image_b64`` (a PNG's bytes) for an image run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: StrictStr
    text: StrictStr | None = Field(None, description="text to check (a text run's samples)")
    image_b64: StrictStr | None = Field(None, description="an image file's bytes in base64 (image runs)")
    gamma: StrictFloat | StrictInt | None = Field(None, description="green-list share used when sampling "
                                                  "(default 0.25, as watermark_gamma)")
    context: StrictInt | None = Field(None, description="context width used when sampling (default 1)")
    threshold: StrictFloat | StrictInt | None = Field(None, description="z above which text counts as "
                                                      "watermarked (default 4)")


class DetectResponse(BaseModel):
    watermarked: bool
    z: float | None
    p_value: float
    tokens: int | None
    method: str
    key_fingerprint: str


class VerifyRequest(BaseModel):
    """POST /v1/verify: a file genforge wrote, as base64 bytes (never a path)."""

    model_config = ConfigDict(extra="forbid")
    file_b64: StrictStr = Field(description="the file's bytes in base64")
    filename: StrictStr | None = Field(None, max_length=255, description="its name; only the suffix is used "
                                       "(.png is checked for C2PA credentials)")
    provenance: StrictStr | None = Field(None, description="for a non-PNG file: the text of its "
                                         "FILE.provenance.json sidecar")


class VerifyResponse(BaseModel):
    verdict: str = Field(description="valid, untrusted (a valid signature by an untrusted signer), "
                                     "tampered, or none (no provenance)")
    message: str
    provenance: dict[str, Any]
    credentials: dict[str, Any] | None


def decode_file(value: str, name: str, max_bytes: int) -> bytes:
    return decode_base64(value, name, max_bytes, "max_file_bytes")


def check_png_size(raw: bytes, name: str, max_side: int) -> None:
    """A PNG's width and height from its IHDR chunk, before any decoder sees the pixels."""
    if raw[:8] == PNG_SIGNATURE:
        check_side(name, png_size(raw, name), max_side, "PNG")


def detect(entry, body: DetectRequest, limits) -> dict[str, Any]:
    """The verdict for ``body`` under ``entry``'s key (never returned: only its fingerprint)."""
    from genforge.watermark.keys import key_fingerprint, run_key

    if (body.text is None) == (body.image_b64 is None):
        raise RequestError("give exactly one of 'text' (text runs) or 'image_b64' (image runs)", 400, "text")
    want = "text" if body.text is not None else "image"
    if entry.modality != want:
        raise RequestError(f"model '{entry.id}' is a {entry.modality} run; '{'text' if want == 'text' else 'image_b64'}'"
                           f" is checked against {want} runs", 400, "text" if want == "text" else "image_b64")
    try:
        key = entry.extras.get("key") or run_key(entry.run.run_dir, create=False)
    except GenforgeError:
        raise RequestError(f"run '{entry.id}' has no watermark key: nothing sampled from it was watermarked",
                           400, "model") from None
    if want == "text":
        return {**_detect_text(entry, body, key, limits), "key_fingerprint": key_fingerprint(key)}
    if any(v is not None for v in (body.gamma, body.context, body.threshold)):
        raise RequestError("'gamma', 'context' and 'threshold' apply to text only; remove them for images",
                           400, "gamma")
    return {**_detect_image(entry, body.image_b64, key, limits), "key_fingerprint": key_fingerprint(key)}


def _detect_text(entry, body: DetectRequest, key: bytes, limits) -> dict[str, Any]:
    from genforge.cli_detect import TEXT_METHOD
    from genforge.watermark.text import (
        DEFAULT_CONTEXT,
        DEFAULT_GAMMA,
        DEFAULT_THRESHOLD,
        MAX_CONTEXT,
        detect_text,
    )
    from genforge.watermark.text_null import run_reference

    if len(body.text) > limits.max_detect_chars:
        raise RequestError(f"'text' has {len(body.text)} characters, above this server's limit "
                           f"max_detect_chars={limits.max_detect_chars}", 422, "text")
    gamma = DEFAULT_GAMMA if body.gamma is None else float(body.gamma)
    context = DEFAULT_CONTEXT if body.context is None else body.context
    threshold = DEFAULT_THRESHOLD if body.threshold is None else float(body.threshold)
    if not 1 <= context <= MAX_CONTEXT:  # before the reference null is built with it (-5 was a 500 there)
        raise RequestError(f"'context' is {context}; a watermark context is a few tokens (1 to {MAX_CONTEXT})",
                           422, "context")
    try:
        text = body.text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates are not text
        reference = run_reference(entry.run.run_dir, context)[0]  # None: the binomial null, said in "null"
        d = detect_text(text, entry.run.tokenizer, key, gamma, context, threshold, reference)
    except GenforgeError as e:
        raise from_library(e, 422) from None
    return {k: d[k] for k in ("watermarked", "z", "p_value", "tokens", "null")} | {"method": TEXT_METHOD}


def _detect_image(entry, value: str, key: bytes, limits) -> dict[str, Any]:
    """`genforge detect FILE --run RUN` on an uploaded PNG/JPEG (one image of the run or a served
    grid): the post-hoc test, and Tree-Ring by DDIM inversion with the served model for diffusion
    runs. The model already loaded is used (detect_image_file would load the run again per call),
    under the run's lock: inversion runs its denoiser, as a draw does."""
    import torch

    from genforge.watermark.image import detect_images, read_image, split_grid, verdict

    raw = decode_file(value, "image_b64", limits.max_file_bytes)
    if raw[:8] != PNG_SIGNATURE and raw[:3] != b"\xff\xd8\xff":
        raise RequestError("'image_b64' is not a PNG or JPEG file", 422, "image_b64")
    check_png_size(raw, "image_b64", limits.max_init_side)
    with tempfile.TemporaryDirectory(prefix="genforge-detect-") as tmp:
        path = Path(tmp) / ("image.png" if raw[:8] == PNG_SIGNATURE else "image.jpg")
        path.write_bytes(raw)
        _check_jpeg_size(path, limits.max_init_side)
        try:
            images = split_grid(read_image(path, entry.run.spec.shape[0]), tuple(entry.run.spec.shape))
            with entry.lock, torch.inference_mode():
                r = detect_images(images, key, entry.run.model)
        except GenforgeError as e:
            raise from_library(e, 422) from None
    return verdict(r)


def _check_jpeg_size(path: Path, max_side: int) -> None:
    """A JPEG's size from its header (PIL reads no pixels on open): the decompression-bomb guard
    that check_png_size is for PNGs."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        raise RequestError("'image_b64' cannot be read as an image", 422, "image_b64") from None
    check_side("image_b64", size, max_side, "image")


def verify(body: VerifyRequest, limits) -> dict[str, Any]:
    """`genforge verify` of the uploaded bytes: provenance (integrity) and, for PNGs, C2PA credentials."""
    from genforge.cli_provenance import verify_file
    from genforge.credentials import credential_json

    raw = decode_file(body.file_b64, "file_b64", limits.max_file_bytes)
    check_png_size(raw, "file_b64", limits.max_init_side)
    suffix = Path(body.filename or "").suffix.lower()
    if raw[:8] == PNG_SIGNATURE:
        suffix = ".png"
    elif not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
        suffix = ".bin"
    if body.provenance is not None and raw[:8] == PNG_SIGNATURE:
        raise RequestError("'provenance' is a sidecar's text, for files other than PNGs (a PNG carries its "
                           "record inside); remove it", 400, "provenance")
    with tempfile.TemporaryDirectory(prefix="genforge-verify-") as tmp:
        path = Path(tmp) / f"file{suffix}"
        path.write_bytes(raw)
        if body.provenance is not None:
            # lone surrogates (valid JSON, not UTF-8) become U+FFFD: the check then says "edited"
            Path(f"{path}.provenance.json").write_bytes(body.provenance.encode("utf-8", "replace"))
        try:
            r = verify_file(path, None)
        except GenforgeError as e:
            raise from_library(e, 422) from None
    prov, cred = r["provenance"], r["credentials"]
    message = f"provenance {prov.status}: {prov.detail}" + (f"; content credentials: {cred.message()}" if cred else "")
    return {"verdict": VERDICTS[r["verdict"]], "message": message,
            "provenance": {"status": prov.status, "detail": prov.detail, "record": prov.record},
            "credentials": credential_json(cred) if cred is not None else None}
