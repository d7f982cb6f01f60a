"""Model cards: RUN_DIR/README.md with Hugging Face Hub metadata, from what the run recorded.

The card follows the Hub's model-card format (Mitchell et al. 2019, "Model Cards for Model
Reporting"; huggingface.co/docs/hub/model-cards): YAML front matter (``library_name``,
``license``, ``datasets``, ``tags``, ``base_model`` for RL runs, ``model-index`` with the held-out
metrics), then sections on the data, the training budget, evaluation, audits, intended use and
limitations, and provenance (the watermark key's fingerprint, never the key).

A generated card carries a marker comment holding the sha256 of its own text. Rewriting is
allowed only while the README is unchanged since genforge wrote it: a README written or edited
by hand is kept (training says so; `genforge card --force` replaces it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from genforge import GenforgeError, __version__

CARD = "README.md"
_MARK = "<!-- genforge model card, generated (sha256 {digest}): edit freely; genforge then keeps your version -->"
_MARK_RE = re.compile(r"^<!-- genforge model card, generated \(sha256 ([0-9a-f]{64})\).*-->$", re.M)
# Hub task types per modality (the Hub's fixed list has no molecule task: SMILES are text).
TASKS = {"text": "text-generation", "image": "unconditional-image-generation",
         "molecule": "text-generation", "music": "audio-generation"}
USES = {
    "text": "Research and teaching: sampling text in the style of the training corpus, studying how "
            "small language models learn. Not for factual answers, advice or anything published as "
            "written by a person.",
    "image": "Research and teaching: sampling images like the training set, studying generative models "
             "and their metrics. Not for depicting real people or events, or as evidence of anything.",
    "molecule": "Research: proposing candidate molecules (SMILES) for further computational screening. "
                "Samples are unverified hypotheses: not synthesis instructions, and never to be used "
                "without expert review of safety, toxicity and legality.",
    "music": "Research and teaching: sampling music in the style of the training pieces.",
}
LIMITS = (
    "A small model trained on one dataset: it reproduces that data's content, style and biases, "
    "and may reproduce training items verbatim (see the memorization audit, `genforge audit`).",
    "Held-out metrics measure closeness to the test split, not truth, safety or usefulness.",
    "Samples carry provenance metadata (and optionally C2PA credentials); metadata can be stripped, "
    "so its absence proves nothing.",
)


def _read_json(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (a card never fails on one file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def budget(run_dir: Path, cfg: dict, modality: str) -> dict[str, Any]:
    """Steps, examples (and tokens for token runs) and wall time, from config and metrics.jsonl.

    examples = steps x batch_size x grad_accum per process (a DDP run multiplies by its world size,
    which the run does not record); wall time sums each session's last ``elapsed_s``."""
    train = [r for r in _rows(run_dir / "metrics.jsonl") if "split" not in r and _number(r.get("step"))]
    steps = int(max((r["step"] for r in train), default=0))
    tc = cfg.get("train") or {}
    out: dict[str, Any] = {"steps": steps}
    if _number(tc.get("batch_size")):
        out["examples"] = steps * int(tc["batch_size"]) * int(tc.get("grad_accum") or 1)
        block = (cfg.get("model") or {}).get("block_size")
        if modality == "text" and _number(block):  # text windows are full; molecules are padded
            out["tokens"] = out["examples"] * int(block)
    wall, last = 0.0, None
    for r in train:
        e = r.get("elapsed_s")
        if not _number(e):
            continue
        if last is not None and e < last:  # a resumed session restarted its clock
            wall += last
        last = e
    if last is not None:
        out["wall_time_s"] = round(wall + last, 1)
    return out


def _eval_metrics(ev: Any) -> dict[str, float]:
    if not isinstance(ev, dict):
        return {}
    return {k: float(v) for k, v in ev.items() if _number(v) and k != "step"}


def _watermark_fingerprint(run_dir: Path) -> str | None:
    try:
        from genforge.watermark.keys import KEY_FILE, key_fingerprint, read_key_file
    except ImportError:
        return None
    if not (run_dir / KEY_FILE).is_file():
        return None
    try:
        return key_fingerprint(read_key_file(run_dir / KEY_FILE))
    except GenforgeError:
        return None


def _audit_lines(audit: Any, depth: int = 0) -> list[str]:
    """audit.json (written by `genforge audit`) as nested bullet lines, read defensively: numbers,
    strings and booleans shown, lists counted, anything else skipped."""
    if not isinstance(audit, dict) or depth > 2:
        return []
    lines = []
    for k, v in audit.items():
        pad = "  " * depth
        if isinstance(v, dict):
            inner = _audit_lines(v, depth + 1)
            if inner:
                lines += [f"{pad}- {k}:", *inner]
        elif _number(v) or isinstance(v, (str, bool)):
            lines.append(f"{pad}- {k}: {_fmt(v)}")
        elif isinstance(v, list):
            lines.append(f"{pad}- {k}: {len(v)} entries")
    return lines


def _source(name: str) -> str:
    try:
        from genforge.data import registry

        known = registry()
    except Exception:  # noqa: BLE001 - an optional data module failing to import must not stop the card
        known = {}
    if name in known:
        return f"the registered dataset '{name}': {known[name][1]}"
    return "a user's own file or folder (its origin and license are the user's to state)"


def _yaml(meta: dict) -> str:
    try:
        import yaml
    except ImportError:  # JSON is YAML 1.2: the front matter stays valid without pyyaml
        return json.dumps(meta, indent=2) + "\n"
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def build_card(run_dir: str | Path) -> str:
    """The model card text of ``run_dir`` (front matter, marker, body)."""
    run_dir = Path(run_dir)
    cfg = _read_json(run_dir / "config.json")
    if not isinstance(cfg, dict):
        raise GenforgeError(f"{run_dir} has no readable config.json; is it a genforge run directory?")
    spec = _read_json(run_dir / "spec.json") or {}
    modality = spec.get("modality", "unknown")
    family = cfg.get("family", "unknown")
    data_name = str((cfg.get("data") or {}).get("name", "unknown"))
    dataset = Path(data_name).name if "/" in data_name or "\\" in data_name else data_name
    rl = cfg.get("rl") if isinstance(cfg.get("rl"), dict) else None
    ev = _read_json(run_dir / "eval.json")
    metrics = _eval_metrics(ev)
    default_split = "val" if modality == "text" else "test"  # text corpora ship no test split
    split = (ev.get("heldout") or ("val" if "val_loss" in metrics else default_split)) if isinstance(ev, dict) \
        else default_split
    tags = ["genforge", str(family).split(":")[-1].lower(), modality] + (["rl", str(rl.get("algo") or "rl")] if rl else [])
    meta: dict[str, Any] = {"library_name": "genforge", "license": "other",
                            "license_name": "unknown", "datasets": [dataset],
                            "tags": list(dict.fromkeys(t for t in tags if t)),
                            "pipeline_tag": TASKS.get(modality, "other")}
    if rl:
        meta["base_model"] = Path(str(rl.get("base_run", ""))).name or "unknown"
    if metrics:
        meta["model-index"] = [{"name": run_dir.name, "results": [{
            "task": {"type": TASKS.get(modality, "other")},
            "dataset": {"name": dataset, "type": dataset, "split": split},
            "metrics": [{"type": k, "value": round(v, 6), "name": k} for k, v in metrics.items()]}]}]
    b = budget(run_dir, cfg, modality)
    fp = _watermark_fingerprint(run_dir)
    audit = _read_json(run_dir / "audit.json")
    body = [f"# {run_dir.name}", "",
            f"A {family} model of {modality} data, trained with genforge {__version__}.", "",
            "## Training data", "",
            f"- dataset: `{dataset}` ({modality}); source: {_source(data_name)}",
            f"- split: training on `train`, model selection on `val`, held-out metrics on `{split}`"]
    if (run_dir / "data.json").is_file():
        body.append("- the data's fingerprints are in `data.json` (`genforge eval` refuses changed data)")
    body += ["", "## Training", "", f"- steps: {b['steps']:,}"]
    if "examples" in b:
        body.append(f"- examples seen: {b['examples']:,} (steps x batch size x gradient accumulation, per process)")
    if "tokens" in b:
        body.append(f"- tokens seen: {b['tokens']:,} (examples x context length)")
    if "wall_time_s" in b:
        body.append(f"- wall time: {b['wall_time_s']:,} s")
    if rl:
        body.append(f"- RL fine-tuning of `{meta['base_model']}` ({rl.get('algo')}) for rewards "
                    f"{', '.join(map(str, rl.get('reward') or [])) or 'unknown'}")
    body += ["", "## Evaluation", ""]
    if metrics:
        body += [f"Held-out metrics on the `{split}` split (`eval.json`):", "", "| metric | value |",
                 "| --- | --- |", *(f"| {k} | {_fmt(v)} |" for k, v in metrics.items())]
    else:
        body.append(f"Not evaluated yet: run `genforge eval {run_dir}` and then `genforge card {run_dir}`.")
    body += ["", "## Audits", ""]
    lines = _audit_lines(audit)
    body += lines if lines else [f"No audit recorded: `genforge audit {run_dir}` measures memorization and bias."]
    body += ["", "## Intended use", "", USES.get(modality, "Research and teaching."), "",
             "## Limitations", "", *(f"- {x}" for x in LIMITS), "",
             "## Provenance", "",
             f"- watermark key fingerprint: `{fp}` (the key itself stays in the run directory)" if fp else
             "- watermark key: none made yet (one is made at the first watermarked sample)",
             "- every sample file carries a provenance record; `genforge verify FILE` reads and checks it",
             "- license: not recorded by the run; set `license` above (and respect the dataset's) before "
             "publishing", ""]
    text = "\n".join(body)
    front = f"---\n{_yaml(meta)}---\n"
    digest = hashlib.sha256((front + text).encode()).hexdigest()
    return f"{front}{_MARK.format(digest=digest)}\n\n{text}"


def is_generated(text: str) -> bool:
    """True when ``text`` is a card genforge wrote and nobody edited since (its marker's hash holds)."""
    m = _MARK_RE.search(text)
    if not m:
        return False
    rest = text[: m.start()] + text[m.end():].removeprefix("\n\n")
    return hashlib.sha256(rest.encode()).hexdigest() == m.group(1)


def write_card(run_dir: str | Path, force: bool = False) -> Path:
    """Write RUN_DIR/README.md atomically; a README written or edited by hand is refused unless ``force``."""
    from genforge.atomic import atomic_write_text

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenforgeError(f"{run_dir} is not a run directory")
    path = run_dir / CARD
    if path.exists() and not force:
        try:
            old = path.read_text(errors="replace")
        except OSError as e:
            raise GenforgeError(f"cannot read {path} ({e.strerror or e})") from None
        if not is_generated(old):
            raise GenforgeError(f"{path} was written or edited by hand; genforge keeps it. Pass --force to "
                                "replace it with a generated card")
    atomic_write_text(path, build_card(run_dir))
    return path


def refresh_card(run_dir: str | Path) -> None:
    """At the end of training: write the card, keeping a hand-edited README (and saying so). A card
    is a convenience: a problem writing it never fails a finished run."""
    try:
        write_card(run_dir)
    except (GenforgeError, OSError) as e:
        print(f"genforge: model card not written: {e}", flush=True)


def card_section(runs: list[tuple[str, Path]]) -> list[str]:
    """HTML for `genforge report`: each run's README.md as escaped text (no markup is rendered, so
    a card cannot inject anything into the page)."""
    from html import escape

    out = ["<h2>Model cards</h2>"]
    for name, run_dir in runs:
        path = Path(run_dir) / CARD
        out.append(f"<h3>{escape(name)}</h3>")
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            out.append(f'<p class="note">no model card: run genforge card {escape(str(run_dir))}</p>')
            continue
        except OSError as e:
            out.append(f'<p class="note">cannot read {escape(str(path))} ({escape(e.strerror or str(e))})</p>')
            continue
        out.append(f"<pre>{escape(text)}</pre>")
    return out
