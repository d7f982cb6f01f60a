"""Uploaded inputs: the image a diffusion request edits (``init_image``, SDEdit: Meng et al.,
"SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations", ICLR 2022).

It arrives as a PNG file's bytes in base64 (a ``data:image/png;base64,`` URL too), never as a
path: the server reads no file a request names. Checked in this order, each refusal a 4xx that
names what is wrong and the limit:

1. the base64 text's length against ``max_init_bytes`` (413), before decoding it;
2. strict base64 (422), then the decoded size (413);
3. the PNG signature (422): a path string, a JPEG or anything else is refused;
4. the width and height in the PNG's IHDR chunk against ``max_init_side`` (422), read from the
   bytes *before Pillow sees them*: this is the decompression-bomb guard (a few KiB of zlib can
   declare gigapixels); Pillow's own ``MAX_IMAGE_PIXELS`` check stays behind it, far above;
5. decoding by Pillow restricted to ``formats=["PNG"]`` (422 when truncated or corrupt).

The image is then converted to the run's channels and resized to its size (bilinear, as
``genforge sample --init`` does) and becomes a (C, H, W) tensor in the run's pixel range.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch

from genforge.serve.wire import PNG_SIGNATURE, RequestError, check_side, decode_base64, png_size

DATA_URL = "data:image/png;base64,"
NAME = "init_image"


def decode_png(value: str, shape: tuple[int, int, int], max_bytes: int, max_side: int) -> tuple[torch.Tensor, str]:
    """base64 PNG text -> ((C, H, W) uint8 at ``shape``, sha256 of the PNG bytes)."""
    from PIL import Image

    if value.startswith("data:"):
        if not value.startswith(DATA_URL):
            raise RequestError(f"'{NAME}' must be a PNG ({DATA_URL}...), got a {value[5:30].split(',')[0]!r} "
                               "data URL", 422, NAME)
        value = value[len(DATA_URL):]
    raw = decode_base64(value, NAME, max_bytes, "max_init_bytes")
    if raw[:8] != PNG_SIGNATURE:
        raise RequestError(f"'{NAME}' is not a PNG file (no PNG signature): send a PNG's bytes in base64 "
                           "(the server never reads a path)", 422, NAME)
    c, h, w = shape
    check_side(NAME, png_size(raw, NAME), max_side, "PNG", f"; images are resized to this run's {w}x{h}")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            im.load()  # only now are pixels decompressed: at most max_side^2 of them
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            # np.array copies: PIL's buffer is read-only and torch warns about wrapping it
            pixels = torch.from_numpy(np.array(im, dtype=np.uint8).reshape(h, w, c)).permute(2, 0, 1)
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f"'{NAME}' cannot be decoded as a PNG ({str(e)[:120]})", 422, NAME) from None
    return pixels, hashlib.sha256(raw).hexdigest()


def take_init(entry, options: dict[str, Any], limits) -> tuple[torch.Tensor | None, str | None]:
    """Pop a resolved request's ``init_image`` (base64 text), decode it and put its digest in its
    place (``"sha256:HEX"``: what the answer and the provenance record show). Returns the image
    in the run's pixel range, (C, H, W), and the digest; (None, None) without one."""
    value = options.get(NAME)
    if value is None:
        return None, None
    from genforge.modalities.image import from_uint8

    pixels, sha = decode_png(value, tuple(entry.run.spec.shape), limits.max_init_bytes, limits.max_init_side)
    options[NAME] = f"sha256:{sha}"
    return from_uint8(pixels, entry.run.spec), sha
