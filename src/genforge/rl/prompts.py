"""Prompts of token policies: ``--prompt`` texts or a ``--prompt-file`` (.jsonl/.csv) whose
other fields reach rewards as columns."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from genforge import GenforgeError
from genforge.config import RLConfig
from genforge.rl.policy import Prompts
from genforge.rl.specs import rl_spec


def load_prompts(settings: RLConfig, data, modality: str) -> Prompts | None:
    """Token prompts from ``prompts`` or ``prompt_file`` (their other fields become reward
    columns); None for images. Molecule prompts are SMILES prefixes after <bos>."""
    if not rl_spec(modality).prompts:
        if settings.prompts or settings.prompt_file:
            raise GenforgeError(f"prompts apply to text and molecule runs; this {modality} run is "
                                "unconditional")
        return None
    texts, columns = list(settings.prompts), {}
    if settings.prompt_file:
        if texts:
            raise GenforgeError("give prompts inline or with a prompt file, not both")
        texts, columns = _read_prompt_file(Path(settings.prompt_file))
    bos = data.spec.special_ids.get("bos")
    if not texts:
        return Prompts([data.prompt_ids()], [data.decode(data.prompt_ids()) if bos is None else ""])
    encode = rl_spec(modality).encode_prompt or (lambda t, _: data.tokenizer.encode(t))
    try:
        ids = [([bos] if bos is not None else []) + encode(t, data) for t in texts]
    except GenforgeError as e:
        raise GenforgeError(f"a prompt cannot be encoded with the run's tokenizer: {e}") from None
    if any(not i for i in ids):
        raise GenforgeError("a prompt is empty; give text to continue")
    return Prompts(ids, texts, {"prompt": texts, **columns})  # rewards may read the prompt too


def _read_prompt_file(path: Path) -> tuple[list[str], dict[str, list]]:
    if not path.is_file():
        raise GenforgeError(f"prompt file {path} does not exist")
    rows: list[dict] = []
    if path.suffix not in (".jsonl", ".csv"):
        raise GenforgeError(f"prompt file {path}: use .jsonl (one object per line) or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel's "CSV UTF-8" starts with a BOM
    except (OSError, UnicodeDecodeError) as e:  # was a traceback
        raise GenforgeError(f"cannot read prompt file {path} ({e}); give a UTF-8 .jsonl or .csv file") from None
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GenforgeError(f"{path}:{n} is not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise GenforgeError(f"{path}:{n}: each line must be a JSON object with a 'prompt'")
                rows.append(row)
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise GenforgeError(f"prompt file {path} is not a readable CSV file ({e})") from None
    if not rows or any("prompt" not in r or not isinstance(r["prompt"], str) for r in rows):
        raise GenforgeError(f"prompt file {path}: every row needs a text field 'prompt'")
    keys = sorted({k for r in rows for k in r} - {"prompt"})
    return [r["prompt"] for r in rows], {k: [r.get(k) for r in rows] for k in keys}
