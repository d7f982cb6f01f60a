"""`genforge serve` on a music run: listed in /v1/models, each sample a MIDI file, a piano-roll PNG
(with the provenance record) and, where FluidSynth is installed, a WAV; byte-identical repeats."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pretty_midi")
mido = pytest.importorskip("mido")  # an independent MIDI reader (genforge writes with pretty_midi)

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import capture_uvicorn, free_port  # noqa: E402
from test_music import TINY, jsb_json  # noqa: E402

from genforge.cli import main  # noqa: E402
from genforge.provenance import CHUNK  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.engine import load_entries  # noqa: E402
from genforge.serve.options import Limits  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-music")
    data = jsb_json(tmp / "tiny.json")
    assert main(["train", "gpt-jsb", "--run-dir", str(tmp / "chorales"), "--no-progress", f"data.name={data}",
                 *TINY]) == 0
    return load_entries([str(tmp / "chorales")], device="cpu")


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs)) as c:
        yield c


def post(client, body):
    return client.post("/v1/samples", content=json.dumps(body), headers={"content-type": "application/json"})


def notes(midi_b64: str) -> int:
    midi = mido.MidiFile(file=io.BytesIO(base64.b64decode(midi_b64)))
    return sum(1 for track in midi.tracks for m in track if m.type == "note_on" and m.velocity > 0)


def test_a_music_run_is_listed_with_its_served_options(client):
    (model,) = client.get("/v1/models").json()["data"]
    assert (model["id"], model["family"], model["modality"]) == ("chorales", "gpt", "music")
    options = {o["name"]: o for o in model["options"]}
    assert set(options) == {"num_samples", "temperature", "tempo", "steps"}  # no file options
    assert options["steps"]["maximum"] == Limits().max_tokens // 4  # four voices per 16th step
    assert options["num_samples"]["default"] == 1 and options["temperature"]["default"] == 1.0


def test_music_samples_are_midi_piano_rolls_and_audio(client):
    body = {"model": "chorales", "seed": 4, "num_samples": 2, "steps": 6, "tempo": 120.0}
    first = post(client, body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert len(out["midi"]) == len(out["piano_roll_png"]) == len(out["wav"]) == len(out["steps"]) == 2
    assert all(notes(m) > 0 for m in out["midi"]) and all(s <= 6 + 1 for s in out["steps"])
    from PIL import Image

    roll = Image.open(io.BytesIO(base64.b64decode(out["piano_roll_png"][0])), formats=["PNG"])
    record = json.loads(roll.info[CHUNK])
    record.pop("content")
    assert record == out["provenance"] and record["model"]["modality"] == "music" and record["seed"] == 4
    if shutil.which("fluidsynth"):
        wav = base64.b64decode(out["wav"][0])
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and out["audio_note"] is None
    else:
        assert out["wav"] == [None, None] and "fluidsynth" in out["audio_note"]
    assert post(client, body).content == first.content  # same request and seed: the same bytes
    assert post(client, {**body, "seed": 5}).json()["midi"] != out["midi"]


def test_without_fluidsynth_midi_and_png_still_come(client, monkeypatch):
    import genforge.data.music_render as render

    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    out = post(client, {"model": "chorales", "seed": 0, "steps": 4}).json()
    assert out["wav"] == [None] and "fluidsynth" in out["audio_note"] and notes(out["midi"][0]) >= 0
    assert len(out["piano_roll_png"]) == 1


@pytest.mark.parametrize("body, status, param", [
    ({"prompt_midi": "/etc/passwd"}, 400, "prompt_midi"),  # a path: never read
    ({"melody": "soprano.mid"}, 400, "melody"),
    ({"out": "piece.mid"}, 400, "out"),
    ({"steps": 257}, 422, "steps"),
    ({"steps": 0}, 422, "steps"),
    ({"tempo": "fast"}, 422, "tempo"),
    ({"tempo": 0}, 422, "tempo"),
    ({"tempo": 1e9}, 422, "tempo"),  # rounds to 0 microseconds per quarter: an unreadable MIDI file
    ({"stream": True}, 400, "stream"),
    ({"prompt": "a chorale"}, 400, "prompt"),
])
def test_music_refusals_name_the_option(client, body, status, param):
    r = post(client, {"model": "chorales", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and "Traceback" not in r.text


def test_genforge_serve_loads_a_music_run_on_uvicorns_fastest_loop(runs, monkeypatch, capsys):
    """The CLI serves a music run; uvicorn is left to pick httptools and uvloop (genforge[serve]
    installs uvicorn[standard]) rather than pinned to h11 and asyncio."""
    import importlib.util

    calls = capture_uvicorn(monkeypatch)
    assert main(["serve", str(runs["chorales"].run.run_dir), "--port", str(free_port())]) == 0
    assert "serving chorales" in capsys.readouterr().out
    config = calls[-1][0]
    assert config.http == "auto" and config.loop == "auto"
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        config.load()
        assert config.http_protocol_class is HttpToolsProtocol
