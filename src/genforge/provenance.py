"""Provenance: which model, run, checkpoint, seed and options made a file genforge wrote.

One record (a JSON object, :func:`sample_record`) travels with every sample file:

- **PNG**: an iTXt chunk ``genforge:provenance`` (Pillow's ``PngInfo``) holding the record plus
  the sha256 of the decoded pixels, so `genforge verify` can tell whether the picture changed
  after genforge wrote it. Readers that know nothing of genforge ignore ancillary chunks.
- **Text, SMILES, CSV, .npz**: a sidecar ``FILE.provenance.json`` beside the data file, with the
  sha256 of the file's bytes. Not an in-file header: a ``#`` line in a .smi file is a molecule
  RDKit cannot parse, a header row changes a CSV's columns, and a .txt/.jsonl sample file is
  read by other tools as it is. So the data file stays exactly what the user asked for, and the
  sidecar is written atomically after it.

The record is *integrity*, not *authenticity*: anyone can rewrite it. Signed content credentials
(C2PA, :mod:`genforge.credentials`) add authenticity to PNGs; :class:`Stamp` applies both,
signing after the last encode so the signature covers the exact bytes written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genforge import GenforgeError, __version__
from genforge.families.base import SampleOption

CHUNK = "genforge:provenance"  # the PNG iTXt keyword
SIDECAR_SUFFIX = ".provenance.json"
SCHEMA = "genforge.provenance/v1"
# Options that say how a file is written or signed, not how samples were made: kept out of the record.
_NOT_RECORDED = frozenset({"sign", "sign_cert", "sign_key"})


def weights_sha256(run) -> str:
    """The sha256 of the weights file actually loaded (EMA weights when used), read from the
    checkpoint manifest that ``load_run`` has just verified against the file."""
    from genforge import checkpoint as ckpt

    manifest = json.loads((run.checkpoint / ckpt.MANIFEST).read_text())
    return manifest["sha256"][ckpt.EMA_WEIGHTS if run.used_ema else ckpt.WEIGHTS]


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)  # a Path, a tensor option: its text form


def sample_record(run, generator, options: dict[str, Any]) -> dict[str, Any]:
    """The provenance of samples drawn from ``run`` (a ``LoadedRun``) with ``generator`` and the
    resolved sample ``options``. The seed is the generator's own (``initial_seed``), so a random
    seed is recorded too, and ``genforge sample RUN --seed S`` with these options repeats the file."""
    return {
        "schema": SCHEMA,
        "genforge_version": __version__,
        "created": utc_now(),
        "model": {"run": run.run_dir.name, "family": run.config.family, "modality": run.spec.modality,
                  "weights_sha256": weights_sha256(run), "ema": bool(run.used_ema)},
        "run_dir": str(run.run_dir),
        "checkpoint": run.checkpoint.name,
        "step": int(run.step),
        "seed": int(generator.initial_seed()),
        "options": {k: _json_safe(v) for k, v in sorted(options.items()) if k not in _NOT_RECORDED},
    }


def pixels_sha256(image) -> str:
    """sha256 over a PIL image's mode, size and decoded pixel bytes: unchanged by re-chunking or
    metadata edits, changed by any pixel edit (a flipped bit in the image data)."""
    head = f"{image.mode} {image.width}x{image.height}\n".encode()
    return hashlib.sha256(head + image.tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def png_bytes(image, record: dict | None) -> bytes:
    """``image`` (PIL) encoded as PNG, with the record (plus its pixel hash) in an iTXt chunk."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = None
    if record is not None:
        info = PngInfo()
        content = {"kind": "pixels", "sha256": pixels_sha256(image)}
        info.add_itxt(CHUNK, json.dumps({**record, "content": content}, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass(frozen=True)
class Stamp:
    """What every writer of one `genforge sample` call adds to its files: the provenance record,
    and for PNGs optionally a C2PA signature (``signer``: a :class:`genforge.credentials.SigningKey`)."""

    record: dict[str, Any]
    signer: Any = None

    def png(self, image, title: str) -> bytes:
        """The final bytes of a PNG: encoded once with the record, then signed (the last step:
        C2PA hashes these exact bytes, so nothing may re-encode them afterwards)."""
        data = png_bytes(image, self.record)
        if self.signer is not None:
            from genforge.credentials import sign_png

            data = sign_png(data, self.record, self.signer, title)
        return data

    def sidecar(self, path: str | Path) -> Path:
        """Write ``FILE.provenance.json`` for the data file at ``path`` (already written)."""
        from genforge.atomic import atomic_write_text

        path = Path(path)
        body = {**self.record, "content": {"kind": "file", "name": path.name, "sha256": file_sha256(path)}}
        out = sidecar_path(path)
        atomic_write_text(out, json.dumps(body, indent=2, sort_keys=True) + "\n")
        return out


def write_png(image, path: str | Path, stamp: Stamp | None) -> Path:
    """Write a PIL image as PNG atomically, stamped when ``stamp`` is given."""
    from genforge.atomic import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = stamp.png(image, path.name) if stamp is not None else png_bytes(image, None)
    atomic_write_bytes(path, data)
    return path


# Declared by the modalities that write PNGs (image, molecule): the CLI exposes them and refuses
# them elsewhere (text runs write no PNG); the server never takes them (they name files).
SIGN_OPTIONS = (
    SampleOption("sign", "sign PNG outputs as C2PA content credentials (key: --sign-cert/--sign-key, "
                         "else $GENFORGE_SIGN_CERT/$GENFORGE_SIGN_KEY, else the chain `genforge keys init` "
                         "made)", flag=True),
    SampleOption("sign_cert", "with --sign: your certificate chain (PEM, signer first)", str, metavar="PEM"),
    SampleOption("sign_key", "with --sign: the private key of --sign-cert (PEM, unencrypted)", str,
                 metavar="PEM"),
)
SIGN_KEYS = tuple(o.name for o in SIGN_OPTIONS)


def sample_stamp(run, generator, options: dict[str, Any], png: bool) -> Stamp:
    """The :class:`Stamp` of one `genforge sample` call. ``options`` are the resolved sample options
    (the sign options included); ``png`` says whether this call writes PNG files. Signing is
    refused where it cannot apply, and the key is loaded (and checked) before any sampling."""
    sign, cert, key = (options.get(k) for k in SIGN_KEYS)
    if (cert or key) and not sign:
        raise GenforgeError("--sign-cert and --sign-key apply with --sign; add --sign or drop them")
    signer = None
    if sign:
        if not png:
            raise GenforgeError("--sign signs PNG files (C2PA); this call writes no PNG (text, SMILES, CSV "
                                "and .npz files carry a provenance sidecar instead)")
        from genforge.credentials import load_signing_key

        signer = load_signing_key(cert, key)
    out = options.get("out")
    if out is not None and Path(out).suffix.lower() != ".png":  # its sidecar follows --out's rule
        from genforge.outputs import check_out

        check_out(sidecar_path(out), "--out's provenance sidecar")
    return Stamp(sample_record(run, generator, options), signer)


# -- reading -------------------------------------------------------------------------------------
@dataclass
class ProvenanceCheck:
    """What a file says about its origin. ``status``: "intact" (the record's hash matches the
    content), "changed" (it does not: edited after genforge wrote it), "missing" (no record)."""

    record: dict[str, Any] | None
    status: str
    detail: str


def is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def check_provenance(path: str | Path) -> ProvenanceCheck:
    """Read and check the provenance of ``path``: a PNG's chunk, else the sidecar beside it.
    ``path`` may also name the sidecar itself. An unreadable file is a GenforgeError."""
    path = Path(path)
    if path.name.endswith(SIDECAR_SUFFIX):
        path = path.with_name(path.name[: -len(SIDECAR_SUFFIX)])
    if not path.is_file():
        raise GenforgeError(f"{path} does not exist or is not a file")
    try:
        if is_png(path):
            return _check_png(path)
        return _check_sidecar(path)
    except OSError as e:
        raise GenforgeError(f"cannot read {path} ({e.strerror or e})") from None


def _check_png(path: Path) -> ProvenanceCheck:
    from PIL import Image

    text, actual, damage = None, None, None
    try:
        with Image.open(path) as im:
            text = im.info.get(CHUNK)  # chunks before the image data, read before decoding it
            im.load()
            actual = pixels_sha256(im)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for corrupt image data
        damage = f"the PNG's image data cannot be decoded ({e}): it was damaged or edited"
    if text is None:
        return ProvenanceCheck(None, "changed" if damage else "missing",
                               damage or f"no {CHUNK} chunk: not written by genforge, or stripped")
    record = _parse(text, path)
    if record is None:
        return ProvenanceCheck(None, "changed", f"the {CHUNK} chunk is not valid JSON: it was edited")
    if damage:
        return ProvenanceCheck(record, "changed", damage)
    expected = (record.get("content") or {}).get("sha256")
    if expected != actual:
        return ProvenanceCheck(record, "changed", "the pixels differ from those genforge wrote "
                                                  "(their sha256 does not match the provenance record)")
    return ProvenanceCheck(record, "intact", "the pixels match the provenance record")


def _check_sidecar(path: Path) -> ProvenanceCheck:
    side = sidecar_path(path)
    if not side.is_file():
        return ProvenanceCheck(None, "missing", f"no {side.name} beside it: not written by genforge, "
                                                "or the sidecar was not kept with the file")
    record = _parse(side.read_text(errors="replace"), side)
    if record is None:
        return ProvenanceCheck(None, "changed", f"{side.name} is not valid JSON: it was edited")
    content = record.get("content") or {}
    if content.get("sha256") != file_sha256(path):
        return ProvenanceCheck(record, "changed", f"{path.name} differs from the file genforge wrote "
                                                  f"(its sha256 does not match {side.name})")
    return ProvenanceCheck(record, "intact", f"the file matches {side.name}")


def _parse(text: str, where: Path) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe(record: dict[str, Any]) -> list[str]:
    """The record as short lines for `genforge verify`."""
    model = record.get("model") or {}
    options = record.get("options") or {}
    shown = ", ".join(f"{k}={v}" for k, v in options.items() if v not in (None, False, [], ""))
    return [
        f"model: run {model.get('run')} ({model.get('family')}, {model.get('modality')}), weights sha256 "
        f"{str(model.get('weights_sha256'))[:16]}...{' (EMA)' if model.get('ema') else ''}",
        f"run: {record.get('run_dir')}, checkpoint {record.get('checkpoint')} (step {record.get('step')})",
        f"seed: {record.get('seed')}; options: {shown or 'defaults'}",
        f"made by genforge {record.get('genforge_version')} "
        + (f"at {record['created']}" if record.get("created") else "by `genforge serve` (no time recorded)"),
    ]
