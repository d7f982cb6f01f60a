"""`genforge serve`: every route and every refusal through FastAPI's test client, byte-identical
repeats, the API key, the CLI, and the real `openai` client against a live uvicorn server on
loopback. Admission, batching and cancellation are in test_serve_queue.py; both serve the runs
of the ``serve_runs`` fixture (conftest.py, serve_helpers.py)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import capture_uvicorn, free_port, png_size, post  # noqa: E402

from genforge.cli import main  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.engine import load_entries  # noqa: E402
from genforge.serve.options import Limits  # noqa: E402


@pytest.fixture(scope="module")
def client(serve_runs):
    with TestClient(create_app(serve_runs)) as c:
        yield c


def test_health_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": len(client.app.state.entries)}
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    gpt, vae = data["gpt"], data["vae"]
    assert (gpt["modality"], gpt["family"], gpt["accepts_prompt"], gpt["classes"]) == ("text", "gpt", True, None)
    assert vae["classes"] == [str(k) for k in range(10)] and vae["accepts_prompt"] is False
    assert len(gpt["weights_sha256"]) == 64 and gpt["step"] == 3
    names = {o["name"]: o for o in gpt["options"]}
    assert {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "num_samples"} <= set(names)
    assert names["max_new_tokens"]["type"] == "integer" and names["max_new_tokens"]["maximum"] == Limits().max_tokens
    assert names["temperature"]["type"] == "number" and names["temperature"]["default"] == 0.8
    served = {o["name"] for m in data.values() for o in m["options"]}
    assert not served & {"out", "init", "mask", "batch_size", "nearest", "interpolate"}  # no paths
    assert client.get("/v1/models/vae").json()["id"] == "vae"
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_text_sample_is_reproducible_and_streams_the_same(client):
    body = {"model": "gpt", "prompt": "to", "max_new_tokens": 12, "seed": 5, "num_samples": 2}
    first = post(client, body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["seed"] == 5 and out["identity"]["run"] == "gpt" and len(out["text"]) == 2
    assert out["prompts"] == ["to", "to"]  # the row each text continues
    assert out["options"]["max_new_tokens"] == 12 and out["options"]["temperature"] == 0.8
    assert post(client, body).content == first.content  # byte-identical repeat
    assert post(client, {**body, "seed": 6}).json()["text"] != out["text"]
    streamed = post(client, {**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["done"] is True
    pieces = ["", ""]
    for e in events[:-2]:
        event = json.loads(e)
        pieces[event["index"]] += event["token"]
    assert pieces == out["text"]  # the stream is the same draw as the JSON answer
    unseeded = post(client, {"model": "gpt", "max_new_tokens": 3}).json()
    assert isinstance(unseeded["seed"], int)
    assert post(client, {"model": "gpt", "max_new_tokens": 3, "seed": unseeded["seed"]}).json()["text"] == unseeded["text"]


def test_image_sample_is_reproducible(client):
    body = {"model": "vae", "seed": 1, "num_samples": 4, "class_label": 3}
    first = post(client, body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert len(out["images"]) == 4 and png_size(out["images"][0]) == (8, 8)  # sklearn digits
    png_size(out["grid_png"])
    assert out["options"]["class_label"] == "3"
    assert post(client, body).content == first.content
    assert post(client, {**body, "seed": 2}).json()["images"] != out["images"]
    assert post(client, {**body, "class_label": "7"}).json()["images"] != out["images"]


def test_molecule_sample(client):
    if "mol" not in client.app.state.entries:
        pytest.skip("RDKit is not installed (genforge[molecules]); no molecule run to serve")
    out = post(client, {"model": "mol", "seed": 0, "num_samples": 5}).json()
    assert len(out["smiles"]) == len(out["valid"]) == len(out["svg"]) == 5
    for valid, svg in zip(out["valid"], out["svg"], strict=True):
        assert (svg is not None) == valid and (svg is None or svg.lstrip().startswith("<?xml"))
    assert post(client, {"model": "mol", "seed": 0, "num_samples": 5}).json()["smiles"] == out["smiles"]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt", "max_new_tokens": True}, 422, "max_new_tokens"),  # a bool is not an integer
    ({"model": "gpt", "max_new_tokens": 2.5}, 422, "max_new_tokens"),
    ({"model": "gpt", "temperature": "hot"}, 422, "temperature"),
    ({"model": "gpt", "seed": True}, 422, "seed"),
    ({"model": "gpt", "seed": -1}, 422, "seed"),
    ({"model": "gpt", "num_samples": 0}, 422, "num_samples"),
    ({"model": "gpt", "stream": 1}, 422, "stream"),
    ({"model": 3}, 422, "model"),
    ({}, 422, "model"),
    ({"model": "gpt", "temperature": -1}, 422, "temperature"),
    ({"model": "gpt", "top_p": 1.5}, 422, None),
    ({"model": "gpt", "top_k": 0}, 422, "top_k"),
    ({"model": "nope"}, 404, "model"),
    ({"model": "gpt", "latent_temperature": 0.5}, 400, "latent_temperature"),  # a VAE's option
    ({"model": "vae", "prompt": "a cat"}, 400, "prompt"),
    ({"model": "vae", "stream": True}, 400, "stream"),
    ({"model": "vae", "class_label": "12"}, 400, None),
    ({"model": "gpt", "out": "/etc/passwd"}, 400, "out"),  # never a path from a request
    ({"model": "vae", "init": "/etc/passwd"}, 400, "init"),
    ({"model": "gpt", "num_samples": 65}, 422, "num_samples"),
    ({"model": "gpt", "prompt": ["a"] * 33, "num_samples": 2}, 422, "num_samples"),
    ({"model": "gpt", "max_new_tokens": 5000}, 422, "max_new_tokens"),
    ({"model": "gpt", "prompt": "x" * 2001}, 422, "prompt"),
    ({"model": "gpt", "stop": [f"~{i}" for i in range(17)]}, 422, "stop"),  # each is checked per row per token
    ({"model": "gpt", "watermark_context": 2**31}, 422, None),  # was a MemoryError, or the server killed
    ({"model": "gpt", "watermark_delta": 1e308}, 422, None),  # was inf logits: a 500
])
def test_refusals_are_json_naming_the_option(client, body, status, param):
    r = post(client, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and "Traceback" not in r.text
    if param in body:
        assert param in error["message"]


def test_nan_bad_json_and_limits_named(client):
    r = client.post("/v1/samples", content=b'{"model": "gpt", "temperature": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "temperature"
    r = client.post("/v1/samples", content=b'{"model": "gpt",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(client, {"model": "gpt", "prompt": "x" * 70_000})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]
    r = post(client, {"model": "gpt", "max_new_tokens": 5000})
    assert "max_tokens=1024" in r.json()["error"]["message"]
    r = post(client, {"model": "vae", "num_samples": 100})
    assert "max_samples=64" in r.json()["error"]["message"]


def test_openai_routes_refuse_what_they_do_not_serve(client):
    assert post(client, {"model": "vae", "prompt": "x"}, "/v1/completions").status_code == 400
    assert post(client, {"model": "gpt", "prompt": "x"}, "/v1/images/generations").status_code == 400
    r = post(client, {"model": "gpt", "prompt": "x", "logprobs": 2}, "/v1/completions")
    assert r.status_code == 422 and r.json()["error"]["param"] == "logprobs"  # refused, not ignored
    r = post(client, {"model": "vae", "prompt": "", "response_format": "url"}, "/v1/images/generations")
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = post(client, {"model": "vae", "prompt": "", "size": "1024x1024"}, "/v1/images/generations")
    assert r.status_code == 400 and "8x8" in r.json()["error"]["message"]
    r = post(client, {"model": "vae", "prompt": "not a class"}, "/v1/images/generations")
    assert r.status_code == 400


def test_api_key(serve_runs):
    with TestClient(create_app(serve_runs, api_key="s3cret")) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert post(c, {"model": "gpt"}, headers=headers).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_broken_run_fails_before_serving(tmp_path, capsys):
    from genforge import GenforgeError

    with pytest.raises(GenforgeError, match="does not exist"):
        load_entries([str(tmp_path / "missing")])
    (tmp_path / "config.json").write_text("{}")  # a run's file given for its folder
    with pytest.raises(GenforgeError, match="is a file, not a folder"):
        load_entries([str(tmp_path / "config.json")])
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error:") and "Traceback" not in err


def test_openai_client_against_a_live_server(serve_runs):
    openai = pytest.importorskip("openai")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(serve_runs, api_key="k"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        done = client.completions.create(model="gpt", prompt="to", max_tokens=8, seed=3, temperature=0.8)
        assert done.object == "text_completion" and done.choices[0].text
        pieces = [c.choices[0].text for c in client.completions.create(
            model="gpt", prompt="to", max_tokens=8, seed=3, temperature=0.8, stream=True)]
        assert "".join(pieces) == done.choices[0].text and len(pieces) > 1
        images = client.images.generate(model="vae", prompt="7", n=2, response_format="b64_json",
                                        extra_body={"seed": 1})
        assert len(images.data) == 2 and png_size(images.data[0].b64_json) == (8, 8)  # sklearn digits
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong",
                          max_retries=0).models.list()
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_binds_loopback_and_warns_without_a_key_elsewhere(serve_runs, monkeypatch, capsys):
    calls = capture_uvicorn(monkeypatch)
    monkeypatch.delenv("GENFORGE_API_KEY", raising=False)
    run_dir, port = str(serve_runs["gpt"].run.run_dir), free_port()
    assert main(["serve", run_dir, "--port", str(port)]) == 0
    out, err = capsys.readouterr()
    assert calls[-1][1] == ("127.0.0.1", port) and f"http://127.0.0.1:{port}" in out and "warning" not in err
    assert main(["serve", run_dir, "--host", "0.0.0.0", "--port", str(free_port())]) == 0
    assert "without an API key" in capsys.readouterr().err
    monkeypatch.setenv("GENFORGE_API_KEY", "k")
    assert main(["serve", run_dir, "--host", "0.0.0.0", "--port", str(free_port())]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and "API key required" in out
    assert calls[-1][0].timeout_graceful_shutdown  # SIGTERM/Ctrl-C cancels long streams, never waits them out
    port = free_port()
    assert main(["serve", run_dir, "--host", "::1", "--port", str(port)]) == 0  # IPv6 loopback
    assert calls[-1][1] == ("::1", port) and f"http://[::1]:{port}/" in capsys.readouterr().out


def test_every_serve_argument_has_help():
    import argparse

    from genforge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert all(a.help for a in sub.choices["serve"]._actions), "RUN_DIR and every option say what they take"


def test_cli_refuses_an_address_it_cannot_serve_on_and_options_that_do_not_fit(serve_runs, monkeypatch, capsys):
    """A port in use, a host that is not this machine's, an empty key, an unknown device: one
    line, exit 2, uvicorn never started (it logged the bind error and exited 3, after saying
    'serving')."""
    calls = capture_uvicorn(monkeypatch)
    run_dir = str(serve_runs["gpt"].run.run_dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for args in (["--port", str(taken.getsockname()[1])], ["--host", "999.1.1.1", "--port", "8000"],
                     ["--api-key", ""]):
            assert main(["serve", run_dir, *args]) == 2, args
            out, err = capsys.readouterr()
            assert "serving" not in out and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as refused:  # argparse's choices
        main(["serve", run_dir, "--device", "tpu"])
    assert refused.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err and calls == []


def test_a_prompt_the_model_cannot_read_is_refused_before_a_stream_starts(client):
    """A 400 as the unstreamed answer gets, not a 200 whose first event is a 'server_error'."""
    for path, body in (("/v1/samples", {"model": "gpt", "max_new_tokens": 2}),
                       ("/v1/completions", {"model": "gpt", "max_tokens": 2})):
        for prompt in ("", "\u20ac", ["to", ""]):  # no token; outside the vocabulary; one of several empty
            r = post(client, {**body, "prompt": prompt, "stream": True}, path)
            assert r.status_code == 400 and r.headers["content-type"] == "application/json", (path, prompt, r.text)
        r = post(client, {**body, "prompt": []}, path)  # not silently the default prompt
        assert r.status_code == 422 and r.json()["error"]["param"] == "prompt"
    assert client.app.state.active == 0  # each refusal gave its queue slot back


def test_a_route_this_server_lacks_names_the_ones_it_has(client):
    """The OpenAI client's chat call (a text run is no chat model) gets more than 'Not Found'."""
    r = post(client, {"model": "gpt", "messages": [{"role": "user", "content": "to"}]}, "/v1/chat/completions")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert "/v1/chat/completions" in r.json()["error"]["message"] and "/v1/completions" in r.json()["error"]["message"]
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "GET /v1/completions" in r.json()["error"]["message"]


def test_a_body_not_sent_as_json_says_to_send_the_header(client):
    body = json.dumps({"model": "gpt", "max_tokens": 2})
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}):
        r = client.post("/v1/completions", content=body, headers=headers)  # `curl -d` sends the first
        assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]["message"], r.text


def test_missing_fastapi_is_one_line_with_the_install_command(monkeypatch):
    import sys

    from genforge import GenforgeError
    from genforge.serve import require_fastapi

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    with pytest.raises(GenforgeError, match=r"pip install 'genforge\[serve\]'"):
        require_fastapi()


def test_diffusion_options_and_library_errors_in_the_api_words(client):
    model = client.get("/v1/models/diffusion").json()
    options = {o["name"]: o for o in model["options"]}
    assert options["sampler"]["choices"] == ["ddpm", "ddim", "euler", "heun", "heun-churn", "dpmpp-2m",
                                           "dpmpp-2m-sde"]
    assert options["sampling_steps"]["maximum"] == Limits().max_steps
    assert "prompt" not in options and model["accepts_prompt"] is False  # class-, not text-conditional
    body = {"model": "diffusion", "seed": 0, "num_samples": 3, "sampler": "heun", "sampling_steps": 2,
            "class_label": "4", "guidance": 2.0}
    first = post(client, body)
    assert first.status_code == 200, first.text
    assert len(first.json()["images"]) == 3 and post(client, body).content == first.content
    r = post(client, {"model": "diffusion", "eta": 0.5, "sampler": "heun", "sampling_steps": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "eta" and "--" not in r.json()["error"]["message"]
    r = post(client, {"model": "diffusion", "guidance": 1e308, "sampler": "heun", "sampling_steps": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guidance"  # was 200 with NaN images
    r = post(client, {"model": "diffusion", "sampling_steps": 201})
    assert r.status_code == 422 and "max_steps=200" in r.json()["error"]["message"]
    r = post(client, {"model": "diffusion", "prompt": "a four"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post(client, {"model": "diffusion", "prompt": "4", "n": 2, "seed": 0, "size": "8x8"}, "/v1/images/generations")
    assert r.status_code == 200 and len(r.json()["data"]) == 2  # a class name as the prompt
