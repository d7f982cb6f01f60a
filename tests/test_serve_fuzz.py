"""`genforge serve` fuzzed from its own OpenAPI schema with schemathesis, in-process (ASGI),
and GET /report.

Every generated request (valid and invalid bodies, every operation) must get a response the
schema declares: a declared status code, a declared content type (text/event-stream included),
a body that matches the declared shape, and never a 5xx. Bounded and derandomized (a fixed
hypothesis seed) so CI sees the same cases every run."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install 'genforge[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed: pip install 'genforge[dev]'")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from genforge.cli import main  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.engine import load_entries  # noqa: E402
from genforge.serve.options import Limits  # noqa: E402

KEY = "fuzz-key"
# Small limits keep each generated request cheap (a few tokens, a few images, a few steps).
LIMITS = Limits(max_samples=4, max_steps=3, max_tokens=8, max_prompt_chars=64)
EXAMPLES = 25  # per operation, positive and negative bodies
DEADLINE = timedelta(seconds=10)  # per request: generous on two shared cores, yet a hang fails
MODEL_SCHEMA_PATHS = ("/v1/samples", "/v1/completions", "/v1/images/generations")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A text GPT, a class-conditional image VAE, a class-conditional diffusion model and, with
    RDKit, a molecule GPT, each trained for a few steps. Module-scoped, so it isolates the data
    cache itself (conftest's per-test cache is not set up yet)."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(root / "cache"))
        mp.delenv("GENFORGE_DATA", raising=False)
        return load_entries([str(d) for d in _train(root)], device="cpu")


def _train(root: Path) -> list[Path]:
    tiny = ["train.eval_every=0", "train.plot=false", "--no-progress"]
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    gpt = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "train.batch_size=4", "train.max_steps=2"]
    assert main(["train", "gpt-demo", f"data.name={corpus}", *gpt, "model.block_size=16",
                 "--run-dir", str(root / "gpt"), *tiny]) == 0
    assert main(["train", "vae-digits", "model.latent_dim=4", "model.channels=[8, 8]", "model.hidden=32",
                 "model.conditional=true", "train.batch_size=8", "train.max_steps=2",
                 "--run-dir", str(root / "vae"), *tiny]) == 0
    assert main(["train", "diffusion-digits", "model.channels=[8, 16]", "model.heads=2", "model.sampling_steps=3",
                 "model.conditioning=class", "train.batch_size=8", "train.max_steps=2",
                 "--run-dir", str(root / "diffusion"), *tiny]) == 0
    dirs = [root / "gpt", root / "vae", root / "diffusion"]
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return dirs
    mols = root / "m.smi"
    mols.write_text("\n".join(["CCO", "CCC", "CCCC", "CCN", "CCCO", "CCCCO"] * 6) + "\n")
    assert main(["train", "gpt-demo", f"data.name={mols}", "data.val_fraction=0.1", *gpt, "model.block_size=12",
                 "--run-dir", str(root / "mol"), *tiny]) == 0
    return [*dirs, root / "mol"]


@pytest.fixture(scope="module")
def app(runs):
    return create_app(runs, api_key=KEY, limits=LIMITS)


@pytest.fixture(scope="module")
def api_schema(app):
    """The app's own schema, with ``model`` narrowed to the served ids plus one unknown id, so most
    generated requests reach a model instead of stopping at 404."""
    with TestClient(app) as client:
        raw = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    ids = [*app.state.entries, "no-such-model"]
    for component in raw["components"]["schemas"].values():
        if "model" in component.get("properties", {}):
            component["properties"]["model"] = {"type": "string", "enum": ids, "title": "Model"}
    raw["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]["schema"] = {"type": "string", "enum": ids}
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = app
    return schema


def test_every_response_conforms_to_the_schema(api_schema):
    """Every operation, valid and invalid inputs: declared status, content type and body; no 5xx.
    (positive_data_acceptance is off: a schema-valid body may still be refused by the run, e.g. an
    option this run does not take is a declared 400.) One hypothesis loop per operation, so a
    failure names the operation; derandomized, bounded, no example database."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/healthz", "/report", *MODEL_SCHEMA_PATHS}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        statuses = seen.setdefault(operation.path, set())
        try:
            if operation.path in MODEL_SCHEMA_PATHS:  # anchors: the smallest body for each model
                for run_id in [*api_schema.app.state.entries, "no-such-model"]:
                    for extra in ({}, {"stream": True}):  # JSON, and server-sent events (text runs)
                        if extra and "images" in operation.path:
                            continue
                        case = operation.Case(body={"model": run_id, "seed": 0, **extra}, media_type="application/json")
                        statuses.add(case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                                                            checks=checks).status_code)
            _fuzz(operation, checks, statuses)()
        except Exception as e:
            raise AssertionError(f"{operation.method.upper()} {operation.path}: {e}") from e
    # Real draws were made, and refusals too (else the run tested little).
    for path in MODEL_SCHEMA_PATHS:
        assert 200 in seen[path] and seen[path] & {400, 404, 422}, (path, seen[path])


def test_a_wrong_key_gets_a_declared_401_on_every_guarded_route(api_schema):
    """Every route but /healthz answers a wrong key with 401, and the schema declares it there."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

    for result in api_schema.get_all_operations():
        operation = result.ok()
        statuses: set[int] = set()
        try:
            _fuzz(operation, [not_a_server_error, status_code_conformance, content_type_conformance], statuses,
                  key="wrong", examples=3)()
        except Exception as e:
            raise AssertionError(f"{operation.method.upper()} {operation.path}: {e}") from e
        assert statuses == ({200} if operation.path == "/healthz" else {401}), (operation.path, statuses)


def _fuzz(operation, checks, statuses: set[int], key: str = KEY, examples: int | None = None):
    """A hypothesis test of one operation: valid and invalid requests, each response checked."""
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    both = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=both)
    @settings(max_examples=examples or EXAMPLES, deadline=DEADLINE, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def conforms(case):
        response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=checks)
        statuses.add(response.status_code)

    return conforms


def test_report_is_the_html_report_of_the_loaded_runs(app, runs):
    with TestClient(app) as client:
        assert client.get("/report").status_code == 401  # the key guards it like the API
        page = client.get("/report", headers={"Authorization": f"Bearer {KEY}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!DOCTYPE html>")
    for run_id in app.state.entries:
        assert run_id in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained
    declared = app.openapi()["paths"]["/report"]["get"]["responses"]["200"]["content"]
    assert list(declared) == ["text/html"]
    with TestClient(create_app(runs)) as open_client:  # no key set: no key needed
        assert open_client.get("/report").status_code == 200


def test_schema_declares_event_streams(app):
    paths = app.openapi()["paths"]
    for path in ("/v1/samples", "/v1/completions"):
        event = paths[path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        # OpenAPI 3.1: the schema of one event (its data line), not of the whole body as a string
        assert event["type"] == "object" and event["properties"]["data"]["type"] == "string"
    assert "text/event-stream" not in paths["/v1/images/generations"]["post"]["responses"]["200"].get("content", {})


def test_a_request_that_sets_nothing_is_served_under_small_limits(app):
    """Found by the fuzzer: with max_samples below a modality's default num_samples, a body of only
    ``{"model": ...}`` was a 500 (KeyError building the refusal). The default now stays within
    max_samples, and /v1/models says so."""
    auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with TestClient(app) as client:
        for run_id in app.state.entries:
            answer = client.post("/v1/samples", content=json.dumps({"model": run_id, "seed": 0}), headers=auth)
            assert answer.status_code == 200, answer.text
            assert answer.json()["options"]["num_samples"] <= LIMITS.max_samples
            described = client.get(f"/v1/models/{run_id}", headers=auth).json()
            default = {o["name"]: o["default"] for o in described["options"]}["num_samples"]
            assert default == answer.json()["options"]["num_samples"]
        too_many = client.post("/v1/samples", content=json.dumps(
            {"model": "gpt", "prompt": ["a", "b", "c"], "num_samples": 2}), headers=auth)
    assert too_many.status_code == 422 and "3 prompts x num_samples 2" in too_many.json()["error"]["message"]


def test_defaults_are_held_to_the_server_limits(app, runs):
    """Found by the fuzzer: {"model": "gpt"} on /v1/completions was refused (OpenAI's default 16
    tokens above max_tokens=8), while on /v1/samples the run's default 500 tokens bypassed the limit.
    Absent values now resolve within max_tokens / max_steps; given ones above them are still 422."""
    from genforge.serve.options import resolve

    auth = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with TestClient(app) as client:
        completion = client.post("/v1/completions", content=json.dumps({"model": "gpt", "seed": 1}), headers=auth)
        assert completion.status_code == 200, completion.text
        assert completion.json()["usage"]["completion_tokens"] <= LIMITS.max_tokens
        sample = client.post("/v1/samples", content=json.dumps({"model": "gpt", "seed": 1}), headers=auth)
        assert sample.json()["options"]["max_new_tokens"] == LIMITS.max_tokens
        over = client.post("/v1/samples", content=json.dumps({"model": "gpt", "max_new_tokens": 9}), headers=auth)
        assert over.status_code == 422 and "max_tokens=8" in over.json()["error"]["message"]
    assert resolve(runs["diffusion"], {}, Limits(max_steps=2))["sampling_steps"] == 2  # the run's own is 3
    assert resolve(runs["diffusion"], {"sampling_steps": 2}, Limits(max_steps=2))["sampling_steps"] == 2
