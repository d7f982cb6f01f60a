"""The serving engine: runs loaded once at start, and each request drawn by one library call
that returns data (never the CLI's printers or writers).

Which options a request may set, and how they are checked, is serve/options.py: options that
name files (``out``, ``init``, ``mask``, ...) or write companion files are never served, so a
request cannot make the server read or write a path. Each request draws from its own
``generator_for(device, seed)``, so the same request and seed give byte-identical output.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genforge import GenforgeError
from genforge.provenance import weights_sha256  # one definition: provenance records it too
from genforge.serve import responsible
from genforge.serve.options import DEFAULT_SAMPLES, INIT_IMAGE, NOT_SERVED, Limits, option_schema
from genforge.serve.records import base_record, served_record
from genforge.serve.wire import RequestError


@dataclass
class Entry:
    """One served run: the loaded model, its identity and the options a request may set."""

    id: str
    run: Any  # genforge.runs.LoadedRun
    weights_sha256: str
    options: dict[str, Any]  # name -> SampleOption, served ones only
    metrics: dict | None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one draw at a time per model
    record: dict[str, Any] = field(default_factory=dict)  # its answers' provenance, fixed part (serve/records.py)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)  # watermark key, filters (serve/responsible.py)

    @property
    def modality(self) -> str:
        return self.run.spec.modality

    @functools.cached_property
    def device(self) -> torch.device:
        # once: walking the model's parameters per request cost 8% of the event loop under load
        return next(self.run.model.parameters()).device


def load_entries(run_dirs: list[str], device: str = "auto") -> dict[str, Entry]:
    """Every run loaded and checked before a port opens; a broken run is a GenforgeError."""
    from genforge.families.base import LatentVariableModel
    from genforge.modalities import options_for
    from genforge.runs import load_run

    entries: dict[str, Entry] = {}
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise GenforgeError(f"run '{run_dir}' {what}; give run directories made by `genforge train`")
        run = load_run(path, device=device)
        if run.spec.modality not in DEFAULT_SAMPLES:
            raise GenforgeError(f"run '{run_dir}' is a {run.spec.modality} run, which genforge serve does not "
                                f"serve yet (it serves {', '.join(DEFAULT_SAMPLES)} runs)")
        if run.spec.modality == "music" and isinstance(run.model, LatentVariableModel):  # whole phrases
            raise GenforgeError(f"run '{run_dir}' is a {run.config.family} music run; genforge serve serves "
                                "music from GPT runs only (sample it with `genforge sample`)")
        name = path.resolve().name
        if name in entries:
            raise GenforgeError(f"two runs are named '{name}'; serve runs whose folder names differ")
        declared = options_for(run, "sample")
        served = {o.name: o for o in declared if o.name not in NOT_SERVED and o.nargs is None and o.name != "seed"}
        if any(o.name == "init" for o in declared):  # its path option, served as uploaded bytes
            served[INIT_IMAGE.name] = INIT_IMAGE
        served = responsible.served_options(run.spec.modality, served, declared)
        if run.spec.modality == "image" and not run.model.prompt_conditioned:
            served.pop("prompt", None)  # declared by the family, refused by this run (not text-to-image)
        if run.spec.modality == "image":
            served.pop("tempo", None)  # a piano-roll run's --tempo sets written MIDI; a server answers images
        metrics = None
        if (path / "eval.json").is_file():
            try:
                raw = json.loads((path / "eval.json").read_text())
                metrics = {k: v for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            except (OSError, ValueError):
                metrics = None
        entries[name] = Entry(name, run, weights_sha256(run), served, metrics, record=base_record(run, name))
        responsible.attach(entries[name])  # the watermark key, read or made before the port opens
    return entries


def describe(entry: Entry, limits: Limits) -> dict[str, Any]:
    """The MODEL object of GET /v1/models."""
    run = entry.run
    classes = list(run.spec.class_names) if getattr(run.model, "conditioning_classes", 0) else None
    return {"id": entry.id, "object": "model", "owned_by": "genforge", "family": run.config.family,
            "modality": entry.modality, "dataset": run.spec.name, "classes": classes,
            "accepts_prompt": "prompt" in entry.options, "weights_sha256": entry.weights_sha256,
            "step": run.step, "options": [option_schema(entry, o, limits) for o in entry.options.values()],
            "metrics": entry.metrics, "card": responsible.card_text(entry)}


def random_seed() -> int:
    """A fresh seed for a request that gave none (returned to the client, so it can repeat)."""
    import os

    return int.from_bytes(os.urandom(4), "little")


def identity(entry: Entry) -> dict[str, str]:
    return {"run": entry.id, "weights_sha256": entry.weights_sha256}


# -- one library call per request ---------------------------------------------------------
def generate(entry: Entry, options: dict[str, Any], seed: int, limits: Limits | None = None,
             cancelled: threading.Event | None = None) -> dict[str, Any]:
    """Samples as data for one request, drawn with ``generator_for(device, seed)``; every PNG in
    them carries the request's provenance record, returned as ``provenance``. An ``init_image``
    still in base64 is decoded here (``limits``: its bounds). ``cancelled`` set (the client went
    away) ends a molecule or music draw at its next token (a 499)."""
    from genforge.modalities import generator_for
    from genforge.serve.uploads import take_init

    if entry.modality == "text":  # the same decode a batch runs, with one job
        from genforge.serve.batching import run_alone

        job = run_alone(entry, text_job(entry, options, seed))
        text, screening = responsible.screen_text(entry, options, job.texts())
        return {"text": text, "prompts": job.prompts, "provenance": served_record(entry, seed, options),
                "watermark": responsible.watermark_status(entry, options)} | ({"screening": screening} if screening else {})
    init = take_init(entry, options, limits or Limits())
    record = served_record(entry, seed, options)
    generator, seed = generator_for(entry.device, seed)
    with entry.lock, torch.inference_mode():
        if entry.modality == "image":
            result = _images(entry, options, generator, init, record)
        elif entry.modality == "music":
            from genforge.serve import music

            result = music.draw(entry, options, generator, record, stop_hook(entry, cancelled))
        else:  # load_entries admits only the modalities served here
            result = _molecules(entry, options, generator, stop_hook(entry, cancelled))
    if entry.modality == "molecule":  # images are screened as they are encoded (serve/images.py)
        result = responsible.screen_molecules(entry, options, result)
    mark = result.pop("watermark", None) or responsible.watermark_status(entry, options)  # images: after the draw
    return {**result, "provenance": record, "watermark": mark}


def _images(entry: Entry, options: dict[str, Any], generator, init=(None, None), record=None) -> dict[str, Any]:
    """One image request drawn alone (serve/images.py batches compatible ones)."""
    from genforge.serve import images

    prep = images.prepare(entry, options, *init, record=record)
    return images.encode(entry, images.sample(entry, prep, generator), prep)


def text_job(entry: Entry, options: dict[str, Any], seed: int):
    """A text request as a batching Job: prompt x num_samples rows, its settings, its generator."""
    from genforge.modalities import generator_for
    from genforge.serve.batching import Job

    for prompt in set(options.get("prompt") or ()):  # now, as a 400: a stream's 200 is not sent yet
        if not entry.run.tokenizer.encode(prompt):  # characters outside the vocabulary raise here too
            raise RequestError("every prompt needs at least one token: send a non-empty 'prompt', or leave it "
                               "out to continue a newline", 400, "prompt")
    generator, _ = generator_for(entry.device, seed)
    prompts = [p for p in (options.get("prompt") or ["\n"]) for _ in range(options["num_samples"])]
    settings = dict(max_new_tokens=options["max_new_tokens"], temperature=options["temperature"],
                    top_k=options.get("top_k"), top_p=options.get("top_p"), stop=tuple(options.get("stop") or ()))
    return Job(prompts, settings, generator, logits_hook=responsible.text_hook(entry, options))


def stop_hook(entry: Entry, cancelled: threading.Event | None) -> dict[str, Any]:
    """``{"logits_hook": hook}`` for a token family's ``sample``: the logits unchanged (the same
    tokens), a 499 once ``cancelled`` is set; ``{}`` for a family whose sample takes no hook."""
    import inspect

    if cancelled is None or "logits_hook" not in inspect.signature(entry.run.model.sample).parameters:
        return {}

    def hook(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if cancelled.is_set():
            raise RequestError("the client went away", 499)
        return logits

    return {"logits_hook": hook}


def _molecules(entry: Entry, options: dict[str, Any], generator, hook: dict | None = None) -> dict[str, Any]:
    from genforge.modalities.molecule import draw

    run = entry.run
    ids = draw(run.model, options["num_samples"], generator, options["num_samples"], options["temperature"],
               progress=False, **(hook or {}))
    smiles = [run.tokenizer.decode(row) for row in ids]
    valid: list[bool | None] = [None] * len(smiles)
    svg: list[str | None] = [None] * len(smiles)
    try:
        from rdkit import Chem
        from rdkit.Chem.Draw import rdMolDraw2D

        from genforge.metrics.molecules import quiet_rdkit
    except ImportError:  # RDKit absent: SMILES only, validity unknown (null)
        return {"smiles": smiles, "valid": valid, "svg": svg}
    with quiet_rdkit():
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s) if s and len(s) <= 500 else None
            valid[i] = mol is not None
            if mol is not None:
                drawer = rdMolDraw2D.MolDraw2DSVG(200, 200)
                drawer.DrawMolecule(mol)
                drawer.FinishDrawing()
                svg[i] = drawer.GetDrawingText()
    return {"smiles": smiles, "valid": valid, "svg": svg}
