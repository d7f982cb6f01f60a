"""What a request may set: the sample options a served run takes, their JSON schema (GET
/v1/models), and one request's options checked and resolved against them. Every refusal is a
RequestError that names the option (or the limit) it breaks, never a silently ignored value.

Options come from the same declarations as `genforge sample` (``modalities.options_for``), so a
new family's options appear in the API with no server code. Per-request bounds: :class:`Limits`.
``entry`` everywhere is a served run, serve/engine.py's ``Entry`` (not imported: engine.py
imports this module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from genforge import GenforgeError
from genforge.families.base import SampleOption
from genforge.serve import responsible
from genforge.serve.wire import RequestError, from_library

# Declared sample options a server never takes from a request: file paths (read or written),
# companion files, latent-path tools (several references each), and CLI-only switches.
NOT_SERVED = frozenset({"out", "batch_size", "no_stream", "nearest", "init", "mask", "prompt_midi", "melody",
                        "trajectory", "interpolate", "interp_points", "interp_method", "attribute",
                        "interpolate_seeds", "around", "radius", "inception_weights",
                        "sign", "sign_cert", "sign_key", "filter",  # filter: a request never names code
                        "key"})  # music --key: not built in the server yet (its pieces start at <bos>)
# What `num_samples` means when absent, per modality (the CLI's 64 images is too many per request).
DEFAULT_SAMPLES = {"text": 1, "image": 16, "molecule": 10, "music": 1}
DEFAULT_TEMPERATURE = {"text": 0.8, "molecule": 1.0, "music": 1.0}
# Served in place of a run's `init` (a path): the image to edit, uploaded (serve/uploads.py).
INIT_IMAGE = SampleOption("init_image", "diffusion: start from this image and re-noise it (SDEdit): a PNG "
                          "file's bytes in base64 (or a data:image/png;base64, URL), at most max_init_bytes "
                          "and max_init_side pixels a side; resized to the run's size. Never a path", str)
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; each refusal names the limit and its value."""

    max_samples: int = 64  # samples (images, texts, molecules) per request
    max_steps: int = 200  # diffusion sampling steps
    max_tokens: int = 1024  # new tokens per text sample
    max_prompt_chars: int = 2000  # characters of each prompt
    max_stops: int = 16  # stop strings per request (each is checked against every row at every token)
    max_body_bytes: int = 64 * 1024  # request body (Content-Length)
    max_queue: int = 8  # requests admitted at once (running + waiting); more get 429
    max_init_bytes: int = 48 * 1024  # an uploaded init_image's PNG bytes (its base64 fits max_body_bytes)
    max_init_side: int = 1024  # its width and height, read from the PNG header before decoding
    retry_after_s: int = 1
    max_file_bytes: int = 4 * 1024 * 1024  # a file given to /v1/verify or /v1/detect, decoded
    max_detect_chars: int = 20_000  # text given to /v1/detect

    def body_limit(self, path: str) -> int:
        """The body a route may receive: /v1/verify and /v1/detect carry a whole file in base64."""
        if path in ("/v1/verify", "/v1/detect"):
            return max(self.max_body_bytes, 4 * ((self.max_file_bytes + 2) // 3) + 4096)
        return self.max_body_bytes


def option_schema(entry, option, limits: Limits) -> dict[str, Any]:
    """One served option as GET /v1/models lists it: its JSON type, and the default and bounds
    this server applies (which may be tighter than the run's own)."""
    kind = "boolean" if option.flag else JSON_TYPES.get(option.type, "string")
    default = option.default
    if option.name == "num_samples":
        default = default_samples(entry, limits)
    elif option.name == "temperature":
        default = DEFAULT_TEMPERATURE.get(entry.modality, default)
    maximum = {"num_samples": limits.max_samples, "sampling_steps": limits.max_steps,
               "max_new_tokens": limits.max_tokens}.get(option.name)
    if option.name == "steps" and entry.modality == "music":
        from genforge.serve.music import steps_limit

        maximum = steps_limit(entry, limits.max_tokens)
    elif option.name == "strength":
        maximum = 1
    if maximum is not None and isinstance(default, int) and default > maximum:
        default = maximum  # what resolve() gives a request that names no value
    minimum = option.minimum
    if option.name in ("temperature", "guidance", "eta", "latent_temperature", "truncation"):
        minimum = 0
    return {"name": option.name, "type": kind, "default": default, "minimum": minimum,
            "maximum": maximum, "choices": list(option.choices) if option.choices else None,
            "repeat": option.repeat, "help": option.help}


def default_samples(entry, limits: Limits) -> int:
    """``num_samples`` when a request gives none: the modality's default, never above the
    server's max_samples (a request that sets nothing must not be refused)."""
    return min(DEFAULT_SAMPLES[entry.modality], limits.max_samples)


def _check_value(option, value: Any, limits: Limits) -> Any:
    """Strict JSON types (a bool is not an integer), finite numbers, bounds and choices."""
    name = option.name
    if option.flag:
        if not isinstance(value, bool):
            raise RequestError(f"'{name}' must be a boolean, got {value!r}", 422, name)
        return value
    if option.repeat and isinstance(value, list):
        return [_check_value(_single(option), v, limits) for v in value]
    if option.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"'{name}' must be an integer, got {value!r}", 422, name)
    elif option.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"'{name}' must be a number, got {value!r}", 422, name)
        if not math.isfinite(value):
            raise RequestError(f"'{name}' must be a finite number, got {value!r}", 422, name)
        value = float(value)
    elif not isinstance(value, str):
        raise RequestError(f"'{name}' must be a string, got {value!r}", 422, name)
    if option.choices and value not in option.choices:
        raise RequestError(f"'{name}' must be one of {', '.join(map(str, option.choices))}, got {value!r}",
                           422, name)
    if option.minimum is not None and value < option.minimum:
        raise RequestError(f"'{name}' must be at least {option.minimum}, got {value}", 422, name)
    if isinstance(value, float) and value < 0 and name in ("temperature", "guidance", "eta",
                                                           "latent_temperature", "truncation"):
        raise RequestError(f"'{name}' must be >= 0, got {value}", 422, name)
    caps = {"num_samples": ("max_samples", limits.max_samples), "sampling_steps": ("max_steps", limits.max_steps),
            "max_new_tokens": ("max_tokens", limits.max_tokens)}
    if name in caps and value > caps[name][1]:
        limit, cap = caps[name]
        raise RequestError(f"'{name}' is {value}, above this server's limit {limit}={cap}", 422, name)
    if name in ("prompt", "stop") and len(value) > limits.max_prompt_chars:
        raise RequestError(f"'{name}' has {len(value)} characters, above this server's limit "
                           f"max_prompt_chars={limits.max_prompt_chars}", 422, name)
    return value


def _check_edit(options: dict[str, Any]) -> None:
    """``strength`` says how much of ``init_image`` to re-noise: in [0, 1], and only with one."""
    strength = options.get("strength")
    if strength is None:
        return
    if options.get("init_image") is None:
        raise RequestError("'strength' says how much to re-noise 'init_image': give an init_image or drop "
                           "'strength'", 400, "strength")
    if not 0 <= strength <= 1:
        raise RequestError(f"'strength' must be in [0, 1] (0 keeps the image, 1 ignores it), got {strength}",
                           422, "strength")


def _check_music(entry, options: dict[str, Any], limits: Limits) -> None:
    """A ``tempo`` a MIDI file can carry (TEMPO_RANGE); a piece's ``steps`` (16th steps) within
    max_tokens (absent: what fits the context, capped too)."""
    from genforge.data.music import TEMPO_RANGE
    from genforge.serve.music import steps_limit

    tempo = options.get("tempo")
    if tempo is not None and not TEMPO_RANGE[0] <= tempo <= TEMPO_RANGE[1]:  # what a MIDI file can carry
        raise RequestError(f"'tempo' must be between {TEMPO_RANGE[0]:g} and {TEMPO_RANGE[1]:g} quarter notes "
                           f"per minute, got {tempo}", 422, "tempo")

    cap = steps_limit(entry, limits.max_tokens)
    steps = options.get("steps")
    if steps is not None and steps > cap:
        raise RequestError(f"'steps' is {steps}, above this server's limit max_tokens={limits.max_tokens} "
                           f"(at most {cap} steps of this run's tokens)", 422, "steps")
    if steps is None and getattr(entry.run.model_config, "block_size", 0) > limits.max_tokens:
        options["steps"] = cap


def _single(option):
    return replace(option, repeat=False)


def resolve(entry, given: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """A request's options (None = absent) checked against what the run serves; every served
    option resolved (defaults filled). Refused, never ignored: an option this run does not take
    is a 400 that names it and lists the run's options."""
    from genforge.modalities import check_options

    given = dict(given)
    kept = responsible.take(entry, given)  # watermark, privacy_filter: served forms of CLI options
    for name, value in given.items():
        if value is None:
            continue
        if name in NOT_SERVED:
            raise RequestError(f"'{name}' is not served over HTTP (it names a file or writes one); "
                               "use `genforge sample` for it", 400, name)
        if name not in entry.options:
            valid = ", ".join(entry.options)
            raise RequestError(f"'{name}' does not apply to this {entry.run.config.family} run "
                               f"({entry.modality}); its options are: {valid}", 400, name)
    checked = {k: _check_value(entry.options[k], v, limits) for k, v in given.items() if v is not None}
    if checked.get("prompt") == []:  # not absent: an empty list would silently become the default prompt
        raise RequestError("'prompt' is an empty list: give at least one prompt, or leave 'prompt' out", 422, "prompt")
    upload = checked.pop("init_image", None)  # not a declared option: check_options would refuse it
    if isinstance(checked.get("prompt"), str):
        checked["prompt"] = [checked["prompt"]]
    if isinstance(checked.get("stop"), str):
        checked["stop"] = [checked["stop"]]
    if len(checked.get("stop") or ()) > limits.max_stops:
        raise RequestError(f"'stop' has {len(checked['stop'])} strings, above this server's limit "
                           f"max_stops={limits.max_stops}", 422, "stop")
    try:
        options = check_options(entry.run, checked, "sample")
    except RequestError:
        raise
    except GenforgeError as e:
        raise from_library(e) from None
    options = {k: v for k, v in options.items() if k in entry.options} | kept
    if upload is not None:
        options["init_image"] = upload  # base64 text; decoded by uploads.take_init
    _check_edit(options)
    if entry.modality == "music":
        _check_music(entry, options, limits)
    if options.get("num_samples") is None:
        options["num_samples"] = default_samples(entry, limits)
    # A default (the run's own, e.g. 500 tokens or its configured sampler steps) is held to the
    # server's limit too: a request that names no value must not bypass max_tokens/max_steps.
    for name, cap in (("max_new_tokens", limits.max_tokens), ("sampling_steps", limits.max_steps)):
        if name in entry.options and given.get(name) is None:
            own = options.get(name) or getattr(entry.run.model_config, name, None)
            if isinstance(own, int) and own > cap:
                options[name] = cap
    if options.get("temperature") is None and entry.modality in DEFAULT_TEMPERATURE:
        options["temperature"] = DEFAULT_TEMPERATURE[entry.modality]
    prompts = options.get("prompt") or [None]
    total = options["num_samples"] * len(prompts)
    if total > limits.max_samples:
        raise RequestError(f"{total} samples requested ({len(prompts)} prompts x "
                           f"num_samples {options['num_samples']}), above this server's limit max_samples="
                           f"{limits.max_samples}", 422, "num_samples")
    if entry.modality == "text":
        from genforge.sampling.text import check_settings

        try:
            check_settings(options["temperature"], options.get("top_k"), options.get("top_p"),
                           options["max_new_tokens"])
        except GenforgeError as e:
            raise from_library(e, 422) from None
    return options
