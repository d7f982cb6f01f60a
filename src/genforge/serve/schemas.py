"""The API's JSON shapes for the generation routes (docs/serve_api): the request bodies with
strict types (a bool is not an integer, extra fields refused or checked against the run), the
one error body ``{"error": {"message", "type", "param"}}``, and the OpenAPI declarations of the
answers each route may give. /v1/detect and /v1/verify keep theirs in serve/checks.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictFloat | StrictInt
Seed = StrictInt | None


class SamplesRequest(BaseModel):
    """POST /v1/samples. Any declared sample option of the run may be added by its name
    (GET /v1/models lists them); it is checked against that run, never ignored."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: StrictStr
    seed: Seed = Field(None, ge=0, le=2**63 - 1, description="random (and returned) when absent")
    num_samples: StrictInt | None = Field(None, ge=1)
    prompt: StrictStr | list[StrictStr] | None = None
    class_label: StrictStr | StrictInt | None = None
    init_image: StrictStr | None = Field(None, description="diffusion runs: the image to edit (SDEdit), a PNG "
                                         "file's bytes in base64; never a path (limits: max_init_bytes, "
                                         "max_init_side)")
    stream: StrictBool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions (OpenAI's shape); ``seed`` makes it reproducible."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: StrictStr
    prompt: StrictStr | list[StrictStr] = "\n"
    max_tokens: StrictInt | None = Field(None, ge=0, description="16 when absent (OpenAI's default), "
                                         "at most the server's max_tokens")
    temperature: Number | None = Field(None, ge=0, description="0 is greedy")
    top_p: Number | None = Field(None, gt=0, le=1)
    n: StrictInt = Field(1, ge=1)
    seed: Seed = Field(None, ge=0, le=2**63 - 1)
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    user: StrictStr | None = None
    watermark: StrictBool | None = Field(None, description="genforge's extension: false turns the text "
                                         "watermark off (on by default, as `genforge sample`)")


class ImageRequest(BaseModel):
    """POST /v1/images/generations (OpenAI's shape); ``seed`` is genforge's extension."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: StrictStr
    prompt: StrictStr = ""
    n: StrictInt = Field(1, ge=1)
    size: StrictStr | None = None
    response_format: StrictStr = "b64_json"
    seed: Seed = Field(None, ge=0, le=2**63 - 1)
    user: StrictStr | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 411, 413, 422, 429)}
# OpenAPI 3.1 (FastAPI's) reads an event stream's `schema` as the shape of one event (3.2's
# itemSchema): a `data:` line holding a JSON object, or the closing "[DONE]".
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": "JSON, or [DONE] last"},
                            "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
STREAMS = {200: {"content": {"application/json": {}, "text/event-stream": {"schema": SSE_EVENT}},
                 "description": "JSON, or server-sent events with \"stream\": true (text runs)"}}
