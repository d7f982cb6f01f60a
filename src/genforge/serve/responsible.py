"""Responsible generation in the server (issue 18): the watermark on by default, as `genforge
sample` applies it, its status in every answer, and output screening (the privacy filter as a
served option, the operator's `--filter` functions on every request), with blocked samples
returned as ``{"blocked": true, "reason": ...}`` items, counted, never dropped silently.

- Text runs are marked with the soft red/green-list watermark of Kirchenbauer et al. 2023
  (arXiv 2301.10226) with the run's key (RUN/watermark.key, made at first use when the server
  loads the run, never returned): the same hook, key and defaults as `genforge sample`, so a
  served text with a seed is the CLI's with the same seed and options. ``"watermark": false``
  turns it off (the CLI's ``--no-watermark``); ``watermark_gamma``/``_delta``/``_context`` are the
  CLI's options. Molecule runs are never marked (a SMILES string holds too little entropy).
- Image runs get `genforge sample`'s marks (watermark/image.py ``ImageMarker``, same key): Tree-Ring
  in a diffusion run's initial noise (Wen et al. 2023, arXiv 2305.20030) where the sampler is
  deterministic and no init image is given, and the keyed post-hoc mark on every image that can
  hold it; ``watermark_strength`` is the CLI's option. The answer's ``watermark`` block is made
  per request after the draw (serve/images.py): which marks, and how many images were too small.
- A request never names code: ``filter`` is in options.NOT_SERVED; only the operator gives
  filters (``genforge serve RUN --filter mod:fn``), applied to every request of every run.
- ``privacy_filter`` is ``true`` (the modality's default threshold) or a number (the threshold),
  ``audit.privacy.privacy_filter_for``; built once per run and threshold (it loads the training
  data) and applied first, as the CLI does.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

from genforge import GenforgeError
from genforge.families.base import SampleOption
from genforge.serve.wire import RequestError, from_library

TEXT_METHOD = "kirchenbauer-2023"  # as `genforge detect --json` names it
WATERMARK = SampleOption("watermark", "watermark the samples with the run's key (text: Kirchenbauer et al. "
                                      "2023; images: Tree-Ring and a post-hoc mark, as `genforge sample`; "
                                      "on by default, false turns it off; /v1/detect checks them)",
                         flag=True, default=True)
PRIVACY = SampleOption("privacy_filter", "block near-copies of training items: true uses the modality's "
                                         "threshold, a number sets it (images: RMS pixel distance, default "
                                         "0.025; text: characters verbatim, default 50; molecules: exact "
                                         "copies, true only); blocked samples come back as {blocked, reason}",
                       flag=True, default=False)
SERVER_ONLY = ("watermark", "privacy_filter")  # applied here, never passed to a family's sample()
MARK_OPTIONS = ("watermark_gamma", "watermark_delta", "watermark_context", "watermark_strength")
MARKED = ("text", "image")  # modalities this server watermarks (as `genforge sample` does)
IMAGE_ONLY = ("watermark_strength",)  # applied to the uint8 pixels here, never passed to a family's sample()
SCREENED = ("text", "molecule", "image")  # modalities whose answers the filters screen here
_build_lock = threading.Lock()  # one privacy filter built at a time (each loads training data)


# -- at start-up -------------------------------------------------------------------------------
def served_options(modality: str, served: dict[str, SampleOption], declared) -> dict[str, SampleOption]:
    """The run's served options with the CLI's ``no_watermark`` switch served as ``watermark``
    (default true) and ``privacy_filter`` (a CLI option with an optional value) as a boolean or number."""
    names = {o.name for o in declared}
    # Marks this server does not apply are not served at all: an option taken and ignored would
    # claim a mark the answer does not carry.
    out = {k: v for k, v in served.items()
           if k != "no_watermark" and (modality in MARKED or not k.startswith("watermark"))}
    if "no_watermark" in names and modality in MARKED:
        out[WATERMARK.name] = WATERMARK
    if "privacy_filter" in names and modality in SCREENED:
        out[PRIVACY.name] = PRIVACY
    return out


def attach(entry) -> None:
    """Read (or make, at first use, as `genforge sample` does) a text or image run's watermark key now,
    before the port opens: a run directory where no key can be made is an error at start."""
    entry.extras.setdefault("filters", [])
    entry.extras.setdefault("privacy", {})
    if WATERMARK.name not in entry.options:
        return
    from genforge.watermark.keys import key_fingerprint, run_key

    try:
        key = run_key(entry.run.run_dir)
    except GenforgeError as e:
        raise GenforgeError(f"run '{entry.id}': {e} (the server watermarks {entry.modality} with the run's key, made in "
                            "the run directory at first use; make the folder writable)") from None
    entry.extras.update(key=key, fingerprint=key_fingerprint(key))


def add_operator_filters(entries: dict, specs: list[str]) -> None:
    """`genforge serve --filter MOD:FN` (repeatable): loaded now (a bad name fails before the port
    opens) and applied to every answer of every run. A run whose answers are not screened here
    (music) is refused rather than served unscreened."""
    if not specs:
        return
    from genforge.filters import load_filter

    unscreened = [e.id for e in entries.values() if e.modality not in SCREENED]
    if unscreened:
        raise GenforgeError(f"--filter screens {', '.join(SCREENED)} runs; {', '.join(unscreened)} would be "
                            "served unscreened: serve them without --filter, in another server")
    filters = [load_filter(s) for s in specs]
    for entry in entries.values():
        entry.extras["filters"] = list(filters)


# -- per request -------------------------------------------------------------------------------
def take(entry, given: dict[str, Any]) -> dict[str, Any]:
    """Pop and check ``watermark`` and ``privacy_filter`` from ``given`` (a copy the caller owns);
    returns their resolved values (absent: watermark on where served, privacy filter off)."""
    out: dict[str, Any] = {}
    if WATERMARK.name in entry.options:
        value = given.pop(WATERMARK.name, None)
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"'watermark' must be a boolean, got {value!r}", 422, "watermark")
        out["watermark"] = value is not False
        typed = [k for k in MARK_OPTIONS if given.get(k) is not None]
        if not out["watermark"] and typed:
            raise RequestError(f"{', '.join(repr(k) for k in typed)} does not apply with \"watermark\": false; "
                               "remove one of them", 400, typed[0])
    if PRIVACY.name in entry.options:
        value = given.pop(PRIVACY.name, None)
        if value is not None and not isinstance(value, (bool, int, float)):
            raise RequestError(f"'privacy_filter' must be true, false or a threshold number, got {value!r}",
                               422, "privacy_filter")
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"'privacy_filter' must be a finite number, got {value!r}", 422, "privacy_filter")
        out["privacy_filter"] = bool(value) if value is None or isinstance(value, bool) else value
    return out


def text_hook(entry, options: dict[str, Any]):
    """The logits hook of a text request (None when unmarked): `genforge sample`'s, same key and defaults."""
    if not options.get("watermark"):
        return None
    from genforge.watermark.text import DEFAULT_CONTEXT, DEFAULT_DELTA, DEFAULT_GAMMA, TextWatermark

    def pick(name, default):
        return default if options.get(name) is None else options[name]

    try:
        return TextWatermark(entry.extras["key"], pick("watermark_gamma", DEFAULT_GAMMA),
                             pick("watermark_delta", DEFAULT_DELTA), pick("watermark_context", DEFAULT_CONTEXT))
    except GenforgeError as e:
        raise from_library(e, 422) from None


def watermark_status(entry, options: dict[str, Any]) -> dict[str, Any]:
    """What an answer says about its mark: applied or not (and why not), the method and the key's
    fingerprint (never the key)."""
    if WATERMARK.name not in entry.options:
        why = ("molecule runs are never marked: a SMILES string holds too little entropy"
               if entry.modality == "molecule" else f"{entry.modality} samples are not watermarked by this server")
        return {"applied": False, "method": None, "key_fingerprint": None, "reason": why}
    if not options.get("watermark"):
        return {"applied": False, "method": None, "key_fingerprint": None,
                "reason": "turned off by the request (\"watermark\": false)"}
    if entry.modality == "image":  # before the draw; the answer carries image_status's block
        return {"applied": True, "method": "image", "key_fingerprint": entry.extras["fingerprint"]}
    hook = text_hook(entry, options)
    return {"applied": True, "method": TEXT_METHOD, "key_fingerprint": entry.extras["fingerprint"],
            "gamma": hook.gamma, "delta": hook.delta, "context": hook.context}


def image_marker(entry, options: dict[str, Any]):
    """The marks of one image request: `genforge sample`'s ``ImageMarker`` with the run's key and
    the request's ``watermark_strength``; one with no key (marks nothing) when the request turned
    it off or the entry serves no watermark (a bare entry in tests and benchmarks)."""
    from genforge.watermark.image import ImageMarker

    extras = getattr(entry, "extras", {})
    if not options.get("watermark") or "key" not in extras:
        return ImageMarker(None)
    return ImageMarker(extras["key"], options.get("watermark_strength"), extras["fingerprint"])


def image_status(entry, options: dict[str, Any], marker) -> dict[str, Any]:
    """An image answer's ``watermark`` block after its draw: which marks went in (``tree_ring``:
    a diffusion run's initial noise; ``posthoc``: how many images hold the post-hoc mark and how
    many were too small for it at PSNR >= 30 dB, left unmarked and counted, never weakly marked)."""
    from genforge.watermark.posthoc import MIN_PSNR

    if marker.key is None:
        return watermark_status(entry, options)
    record = marker.record()
    counts = record["posthoc"]
    methods = (["tree_ring"] if record["tree_ring"] else []) + (["posthoc"] if counts["marked"] else [])
    out = {"applied": bool(methods), "method": "+".join(methods) or None,
           "key_fingerprint": record["key_fingerprint"], "tree_ring": record["tree_ring"], "posthoc": counts}
    if counts["unmarked"]:
        size = "x".join(map(str, marker.shape[1:]))
        out["reason"] = (f"{counts['unmarked']} of {counts['marked'] + counts['unmarked']} {size} images cannot "
                         f"hold the post-hoc mark at PSNR >= {MIN_PSNR:g} dB and were left without it")
    return out


def screens(entry, options: dict[str, Any]) -> list:
    """The filters for one request, privacy first (as the CLI orders them); built once per threshold."""
    out = []
    extras = getattr(entry, "extras", {})  # a bare entry (tests, benchmarks) has no filters
    value = options.get("privacy_filter")
    if value not in (None, False):
        threshold = "default" if value is True else repr(value)
        cache = extras.setdefault("privacy", {})
        with _build_lock:
            if threshold not in cache:
                from genforge.audit.privacy import privacy_filter_for

                try:
                    cache[threshold] = privacy_filter_for(entry.run, threshold)
                except GenforgeError as e:
                    raise from_library(e, 422) from None
        out.append(cache[threshold])
    return out + list(extras.get("filters", ()))


def screen(entry, options: dict[str, Any], samples) -> tuple[list[int], dict[str, Any] | None]:
    """(indices kept, the answer's ``screening`` summary or None when no filter ran). A filter
    that fails is a one-line error; nothing of the answer is returned then."""
    from genforge.filters import FilterError, apply_filters, summary

    active = screens(entry, options)
    n = int(samples.shape[0]) if hasattr(samples, "shape") else len(samples)
    if not active:
        return list(range(n)), None
    try:
        _, blocked = apply_filters(samples, active)
    except FilterError as e:  # the operator's --filter failed or broke its contract: not the client's doing
        print(f"genforge: error: {e}", file=sys.stderr, flush=True)  # the operator sees it too
        raise RequestError(f"{e}", 500, None, "server_error") from None
    except GenforgeError as e:
        raise from_library(e) from None
    gone = {i for i, _ in blocked}
    return [i for i in range(n) if i not in gone], summary(active, n, blocked)


def blocked_items(items: list, screening: dict[str, Any] | None) -> list:
    """``items`` with each blocked one replaced by {"blocked": true, "reason": ...} (same order)."""
    if not screening:
        return items
    out = list(items)
    for b in screening["blocked_samples"]:
        out[b["index"]] = {"blocked": True, "reason": b["reason"]}
    return out


def screen_text(entry, options: dict[str, Any], texts: list[str]) -> tuple[list, dict | None]:
    """A text answer's samples screened (the generated continuations, as the CLI screens them)."""
    _, screening = screen(entry, options, texts)
    return blocked_items(texts, screening), screening


def screen_molecules(entry, options: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A molecule answer with blocked SMILES (and their drawings and validity) replaced."""
    _, screening = screen(entry, options, result["smiles"])
    if screening is None:
        return result
    gone = {b["index"] for b in screening["blocked_samples"]}
    return {**result, "smiles": blocked_items(result["smiles"], screening),
            "valid": [None if i in gone else v for i, v in enumerate(result["valid"])],
            "svg": [None if i in gone else v for i, v in enumerate(result["svg"])], "screening": screening}


def screen_images(entry, record: dict | None, images) -> tuple[Any, dict[str, Any] | None]:
    """(n, C, H, W) uint8 images of one request (its options are in its provenance ``record``)
    screened as the CLI screens them (pixels / 255); blocked rows come back blanked (zeros), so the
    grid never shows them, with the ``screening`` summary (None when no filter ran)."""
    _, screening = screen(entry, (record or {}).get("options") or {}, images.float() / 255.0)
    if screening and screening["blocked"]:
        images = images.clone()
        images[[b["index"] for b in screening["blocked_samples"]]] = 0
    return images, screening


def with_screening(result: dict[str, Any], screening: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """``result`` with ``result[key]``'s blocked items replaced and the ``screening`` summary added."""
    if not screening:
        return result
    return {**result, key: blocked_items(result[key], screening), "screening": screening}


async def replay(items: list, make_event, closing: list[str]):
    """Server-sent events of a screened text answer: a stream whose samples pass through filters
    is judged whole before anything is sent (a blocked sample must never reach the client), then
    sent as one event per sample; a blocked one is {..., "blocked": true, "reason": ...}."""
    import json

    out = []
    for i, item in enumerate(items):
        event = make_event(i, item) if isinstance(item, str) else {**make_event(i, ""), **item}
        out.append(f"data: {json.dumps(event)}\n\n")
    yield "".join(out + [f"data: {line}\n\n" for line in closing])


def card_text(entry, limit: int = 64 * 1024) -> str | None:
    """The run's model card (RUN/README.md, `genforge card`) as text for GET /v1/models, read per
    call (a card rewritten since start-up shows), at most ``limit`` characters; None without one."""
    from genforge.card import CARD

    try:
        with open(entry.run.run_dir / CARD, encoding="utf-8", errors="replace") as f:
            text = f.read(limit + 1)
    except (OSError, TypeError):
        return None
    return text if len(text) <= limit else text[:limit] + "\n[... cut at 64 KiB]"
