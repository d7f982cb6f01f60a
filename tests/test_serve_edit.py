"""`genforge serve`: an image to edit uploaded as PNG bytes (``init_image``, SDEdit) and the
provenance record in every answer and every PNG the server returns."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib

import pytest

pytest.importorskip("fastapi")
Image = pytest.importorskip("PIL.Image")

from fastapi.testclient import TestClient  # noqa: E402

from genforge.cli import main  # noqa: E402
from genforge.provenance import CHUNK, check_provenance, pixels_sha256  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.engine import load_entries  # noqa: E402
from genforge.serve.options import Limits  # noqa: E402

DIFFUSION = ["model.channels=[8, 16]", "model.heads=2", "model.sampling_steps=3", "model.conditioning=class",
             "train.batch_size=8", "train.max_steps=2", "train.eval_every=0", "train.plot=false"]
GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
       "train.batch_size=4", "train.max_steps=2", "train.eval_every=0", "train.plot=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-edit")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    assert main(["train", "diffusion-digits", *DIFFUSION, "--run-dir", str(root / "diffusion"), "--no-progress"]) == 0
    assert main(["train", "gpt-demo", f"data.name={corpus}", *GPT, "--run-dir", str(root / "gpt"),
                 "--no-progress"]) == 0
    return load_entries([str(root / "diffusion"), str(root / "gpt")], device="cpu")


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def post(client, body, path="/v1/samples"):
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def png(width=8, height=8, seed=0, mode="L") -> bytes:
    """A small PNG of a gradient (its bytes)."""
    image = Image.new(mode, (width, height))
    image.putdata([((x * 31 + y * 17 + seed * 50) % 256) if mode == "L" else ((x * 31) % 256, y * 20 % 256, seed)
                   for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded(data: str):
    image = Image.open(io.BytesIO(base64.b64decode(data)), formats=["PNG"])
    image.load()
    return image


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with almost no data: decoding it would need
    width*height bytes, so the server must refuse it from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# -- init_image -----------------------------------------------------------------------------
def test_init_image_is_served_only_where_the_run_edits_images(client):
    models = {m["id"]: {o["name"]: o for o in m["options"]} for m in client.get("/v1/models").json()["data"]}
    assert models["diffusion"]["init_image"]["type"] == "string"
    assert models["diffusion"]["strength"]["maximum"] == 1 and "init" not in models["diffusion"]
    assert "init_image" not in models["gpt"] and "strength" not in models["gpt"]
    r = post(client, {"model": "gpt", "init_image": b64(png())})
    assert r.status_code == 400 and r.json()["error"]["param"] == "init_image"


def test_an_edit_is_reproducible_and_uses_the_upload(client):
    upload = png(seed=1)
    body = {"model": "diffusion", "seed": 3, "num_samples": 2, "init_image": b64(upload), "strength": 0.6}
    first = post(client, body)
    assert first.status_code == 200, first.text
    out = first.json()
    digest = "sha256:" + hashlib.sha256(upload).hexdigest()
    assert out["options"]["init_image"] == digest and out["options"]["strength"] == 0.6
    assert out["provenance"]["options"]["init_image"] == digest  # recorded by digest, not bytes
    assert post(client, body).content == first.content  # same request, seed and image: same bytes
    other = post(client, {**body, "init_image": b64(png(seed=2))}).json()
    assert other["images"] != out["images"]
    plain = post(client, {k: v for k, v in body.items() if k not in ("init_image", "strength")}).json()
    assert plain["images"] != out["images"]
    # strength 0 re-noises nothing: the uploaded pixels come back (a data: URL is accepted too)
    kept = post(client, {**body, "strength": 0.0, "init_image": "data:image/png;base64," + b64(upload)}).json()
    assert decoded(kept["images"][0]).tobytes() == Image.open(io.BytesIO(upload)).tobytes()


def test_an_upload_of_another_size_is_resized_like_the_cli(client):
    r = post(client, {"model": "diffusion", "seed": 0, "num_samples": 1, "strength": 0.0,
                      "init_image": b64(png(32, 24, mode="RGB"))})
    assert r.status_code == 200, r.text
    assert decoded(r.json()["images"][0]).size == (8, 8)


@pytest.mark.parametrize("value, status, words", [
    ("not base64 at all!", 422, "not valid base64"),
    ("/etc/passwd", 422, "never reads a path"),  # a path string is never opened
    (b64(b"GIF89a" + b"\0" * 40), 422, "not a PNG"),
    ("data:image/jpeg;base64," + b64(b"\xff\xd8\xff"), 422, "must be a PNG"),
    (b64(bomb_png(100_000, 100_000)), 422, "max_init_side=1024"),  # refused from the header
    (b64(png()[:45]), 422, "cannot be decoded"),  # truncated in its image data
])
def test_bad_uploads_are_a_4xx_naming_the_problem(client, value, status, words):
    r = post(client, {"model": "diffusion", "init_image": value})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == "init_image" and words in error["message"] and "Traceback" not in r.text


def test_a_path_to_a_real_png_is_refused_not_read(client, tmp_path):
    path = tmp_path / "real.png"
    path.write_bytes(png())
    for value in (str(path), f"file://{path}"):
        r = post(client, {"model": "diffusion", "init_image": value})
        assert r.status_code == 422 and r.json()["error"]["param"] == "init_image"
    assert post(client, {"model": "diffusion", "init": str(path)}).status_code == 400  # the CLI's path option


def test_upload_limits_are_named(runs):
    with TestClient(create_app(runs, limits=Limits(max_init_bytes=200, max_init_side=16))) as c:
        r = post(c, {"model": "diffusion", "init_image": b64(png(16, 16) + b"\0" * 300)})
        assert r.status_code == 413 and "max_init_bytes=200" in r.json()["error"]["message"]
        r = post(c, {"model": "diffusion", "init_image": b64(png(17, 4))})
        assert r.status_code == 422 and "max_init_side=16" in r.json()["error"]["message"]
        r = post(c, {"model": "diffusion", "init_image": "A" * 70_000})  # the whole body first
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]


def test_strength_needs_an_init_image_and_a_value_in_range(client):
    r = post(client, {"model": "diffusion", "strength": 0.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "strength"
    r = post(client, {"model": "diffusion", "strength": 1.5, "init_image": b64(png())})
    assert r.status_code == 422 and "[0, 1]" in r.json()["error"]["message"]


# -- provenance -----------------------------------------------------------------------------
def chunk_record(data: str) -> dict:
    image = decoded(data)
    record = json.loads(image.info[CHUNK])
    assert record.pop("content") == {"kind": "pixels", "sha256": pixels_sha256(image)}
    return record


def test_every_png_carries_the_answers_record(client, runs, tmp_path, capsys):
    body = {"model": "diffusion", "seed": 9, "num_samples": 2, "class_label": "4"}
    out = post(client, body).json()
    record = out["provenance"]
    entry = runs["diffusion"]
    assert record["schema"] == "genforge.provenance/v1" and record["seed"] == 9
    assert record["model"]["weights_sha256"] == out["identity"]["weights_sha256"] == entry.weights_sha256
    assert record["options"] == out["options"] and record["step"] == entry.run.step
    # no wall-clock time (so the same request gives the same bytes) and no server path
    assert record["created"] is None and record["run_dir"] == "diffusion"
    assert str(entry.run.run_dir) not in json.dumps(out)
    for data in (out["grid_png"], *out["images"]):
        assert chunk_record(data) == record
    saved = tmp_path / "download.png"  # a downloaded file passes `genforge verify`'s check
    saved.write_bytes(base64.b64decode(out["images"][0]))
    assert check_provenance(saved).status == "intact"
    capsys.readouterr()
    assert main(["verify", str(saved)]) == 0
    assert "by `genforge serve` (no time recorded)" in capsys.readouterr().out
    openai = post(client, {"model": "diffusion", "prompt": "4", "n": 1, "seed": 9}, "/v1/images/generations").json()
    assert chunk_record(openai["data"][0]["b64_json"]) == openai["provenance"]


def test_text_answers_carry_the_record(client):
    body = {"model": "gpt", "prompt": "to", "max_new_tokens": 4, "seed": 2}
    out = post(client, body).json()
    assert out["provenance"]["seed"] == 2 and out["provenance"]["options"] == out["options"]
    assert out["provenance"]["model"]["modality"] == "text"
    events = [line[6:] for line in post(client, {**body, "stream": True}).text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["provenance"] == out["provenance"]  # the stream's closing event
    completion = post(client, {"model": "gpt", "prompt": "to", "max_tokens": 3, "seed": 2}, "/v1/completions").json()
    assert completion["provenance"]["seed"] == 2 and completion["provenance"]["created"] is None
