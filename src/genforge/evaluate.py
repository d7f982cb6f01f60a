"""`genforge eval`: held-out metrics of a trained run, computed by its modality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genforge.checkpoint import atomic_write_text
from genforge.modalities import modality
from genforge.runs import LoadedRun


def evaluate_run(run: LoadedRun, **options: Any) -> dict[str, Any]:
    """The modality's report for ``run`` (text: validation loss; images: feature-space metrics)."""
    return modality(run.spec.modality).evaluate(run, **options)


def save_eval(run: LoadedRun, result: dict[str, Any]) -> Path:
    """Write RUN_DIR/eval.json atomically (a one-line GenforgeError on a read-only run)."""
    path = run.run_dir / "eval.json"
    atomic_write_text(path, json.dumps({"checkpoint": run.checkpoint.name, **result}, indent=2))
    return path
