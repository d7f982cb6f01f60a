"""Provenance of served answers: the record `genforge sample` writes (:mod:`genforge.provenance`),
made per request. Every PNG the server returns carries it in its ``genforge:provenance`` chunk
(so `genforge verify` reads a downloaded file as it reads the CLI's), and every JSON answer
carries it as ``provenance``.

Two fields differ from the CLI's record, on purpose:

- ``created`` is null. An answer is a pure function of (weights, seed, options), and the server
  promises byte-identical bytes for the same request and seed (issue 17): a wall-clock time in
  the PNG chunk would change the bytes every second, and one only in the JSON would make the JSON
  and the PNG disagree. When it was served is in the HTTP ``Date`` header.
- ``run_dir`` is the run's name, not the server's absolute path: a client learns nothing about
  the server's filesystem.

An uploaded input is recorded by its digest (``init_image: "sha256:..."``), never its bytes.
"""

from __future__ import annotations

from typing import Any


def base_record(run, name: str) -> dict[str, Any]:
    """The parts of a served record fixed at start-up (read once: the weights' sha256 comes from
    the manifest ``load_run`` verified, not from a file that may change while serving)."""
    import torch

    from genforge.provenance import sample_record

    record = sample_record(run, torch.Generator().manual_seed(0), {})
    record.update(created=None, run_dir=name)
    return record


def served_record(entry, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """The record of one answer: the run's fixed part, this request's seed and its resolved
    options (JSON values already; sorted, as the CLI's are)."""
    return {**entry.record, "seed": int(seed), "options": dict(sorted(options.items()))}
