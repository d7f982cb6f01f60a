"""`genforge detect FILE... --run RUN_DIR | --key-file K`: is this text or image watermarked?

Text files go through the red/green-list z-test (genforge.watermark.text, Kirchenbauer et al.
2023); .png/.jpg files through genforge.watermark.image.detect_image_file (imported only when an
image is given). The key is read, never printed: only its fingerprint is shown. Kept apart from
``cli.py`` (which registers it); nothing here imports torch until a file is checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genforge import GenforgeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
TEXT_METHOD = "kirchenbauer-2023"  # the soft red/green list, exact test over distinct (context, token) pairs
FEW_TOKENS = 25  # below this a test has little power: the paper uses T >= 50


def _key_and_tokenizer(args, need_tokenizer: bool):
    from genforge.watermark.keys import read_key_file, run_key

    if args.run is not None and args.key_file is not None:
        raise GenforgeError("give either --run RUN_DIR or --key-file K, not both (a run's key is "
                            "RUN_DIR/watermark.key)")
    if args.run is None and args.key_file is None:
        raise GenforgeError("detection needs the key that marked the files: pass --run RUN_DIR (the run "
                            "that sampled them) or --key-file K")
    if args.run is not None and args.tokenizer is not None:
        raise GenforgeError("--tokenizer does not apply with --run (the run's own tokenizer.json is used); "
                            "remove it")
    if args.run is not None:
        run = Path(args.run)
        if not run.is_dir():
            raise GenforgeError(f"run directory {run} does not exist; pass the run that sampled the files")
        key, tok_path = run_key(run, create=False), run / "tokenizer.json"
        if need_tokenizer and not tok_path.is_file():
            raise GenforgeError(f"{run} has no tokenizer.json (not a text run); text files need the text "
                                "run that wrote them")
    else:
        key, tok_path = read_key_file(args.key_file), args.tokenizer and Path(args.tokenizer)
        if need_tokenizer and tok_path is None:
            raise GenforgeError("text files need the tokenizer that wrote them: pass --tokenizer "
                                "RUN_DIR/tokenizer.json, or --run RUN_DIR instead of --key-file")
    tokenizer = None
    if need_tokenizer:
        from genforge.data.tokenizers import load_tokenizer

        if not Path(tok_path).is_file():
            raise GenforgeError(f"tokenizer {tok_path} does not exist; pass the run's tokenizer.json")
        tokenizer = load_tokenizer(Path(tok_path))
    return key, tokenizer


def read_text(path: Path) -> str:
    """A file's text; a .jsonl of samples (`genforge sample --out x.jsonl`) is its prompts and texts."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GenforgeError(f"{path} is not UTF-8 text; detect checks text files and .png/.jpg images") from None
    if path.suffix != ".jsonl":
        return raw
    parts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            parts.append(str(row.get("prompt", "")) + str(row["text"]))
        except (ValueError, KeyError, AttributeError):
            raise GenforgeError(f"{path} line {n} is not a sample row {{\"prompt\": ..., \"text\": ...}}; "
                                "rename the file to .txt to check it as plain text") from None
    return "\n\n".join(parts)


def _detect_image(path: Path, key: bytes, run_dir) -> dict:
    try:
        from genforge.watermark.image import detect_image_file, verdict
    except ImportError:
        raise GenforgeError(f"{path}: image watermark detection is not available in this genforge "
                            "(genforge.watermark.image is missing); check text files only") from None
    return verdict(detect_image_file(path, key, run_dir=run_dir))


def _reference(args, tokenizer, context: int):
    """The human-text reference the test is conditioned on (genforge.watermark.text_null): --reference
    FILE, else the run's training split; None (an exact binomial test, valid only averaged over
    keys) when neither is at hand, said on stderr."""
    from genforge.watermark.text import encode_lenient
    from genforge.watermark.text_null import Reference, run_reference

    if args.reference is not None:
        if not Path(args.reference).is_file():
            raise GenforgeError(f"reference text {args.reference} does not exist or is not a file")
        ids = encode_lenient(tokenizer, read_text(Path(args.reference)))
        return Reference.from_ids(ids, tokenizer.vocab_size, context)
    why = "no --reference FILE given with --key-file"
    if args.run is not None:
        ref, why = run_reference(args.run, context)
        if ref is not None:
            return ref
    print(f"note: {why}; testing against the key-averaged binomial null, whose false-positive rate "
          "can be far above the p-value for one key (pass --reference FILE: human text of the domain)",
          file=sys.stderr)
    return None


def detect_files(args) -> tuple[list[dict], str]:
    """(one result per file, the key's fingerprint) for the parsed `detect` arguments."""
    from genforge.watermark.text import (
        DEFAULT_CONTEXT,
        DEFAULT_GAMMA,
        DEFAULT_THRESHOLD,
        check_params,
    )

    paths = [Path(f) for f in args.files]
    for p in paths:
        if not p.is_file():
            raise GenforgeError(f"{p} does not exist or is not a file")
    texts = [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not texts and (args.gamma is not None or args.context is not None or args.threshold is not None
                      or args.reference is not None):
        raise GenforgeError("--gamma, --context, --threshold and --reference apply to text files only; "
                            "remove them for images")
    gamma = DEFAULT_GAMMA if args.gamma is None else args.gamma
    context = DEFAULT_CONTEXT if args.context is None else args.context
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    check_params(gamma, 0.0, context)
    key, tokenizer = _key_and_tokenizer(args, need_tokenizer=bool(texts))
    from genforge.watermark.keys import key_fingerprint
    from genforge.watermark.text import detect_text

    reference = _reference(args, tokenizer, context) if texts else None
    results = []
    for p in paths:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            r = _detect_image(p, key, args.run)
        else:
            d = detect_text(read_text(p), tokenizer, key, gamma, context, threshold, reference)
            r = {k: d[k] for k in ("watermarked", "z", "p_value", "tokens")} | {"method": TEXT_METHOD,
                                                                                "null": d["null"]}
        results.append({"file": str(p), **r})
    return results, key_fingerprint(key)


def _detect(args) -> None:
    results, fingerprint = detect_files(args)
    print(f"key fingerprint {fingerprint}", file=sys.stderr)  # names the key; the key itself is never shown
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        verdict = "watermarked" if r["watermarked"] else "not watermarked"
        z = "" if r["z"] is None else f"z {r['z']:.2f}, "
        scored = "" if r["tokens"] is None else f", {r['tokens']} tokens scored"
        few = " (too few tokens to tell)" if r["tokens"] is not None and r["tokens"] < FEW_TOKENS else ""
        null = f", {r['null']} null" if r.get("null") else ""
        print(f"{r['file']}: {verdict} ({z}p-value {r['p_value']:.3g}{scored}, {r['method']}{null}){few}")


def add_detect_parser(sub) -> None:
    """Register `genforge detect` on the subcommand parsers ``sub``."""
    d = sub.add_parser("detect", help="check text or image files for a genforge watermark",
                       description=(
        "Check whether files carry the watermark of a key. Text: the red/green list of Kirchenbauer "
        "et al. 2023, each distinct (context, token) pair counted once, with an exact p-value whose "
        "null is conditioned on the key by human text (the run's training split, or --reference "
        "FILE): watermarked when the p-value is below the normal tail of --threshold (default z 4: "
        "3.2e-5). Without a reference the test is binomial, valid only averaged over keys; one key "
        "can fire far more often on human text (benchmarks/results/watermark_text.md). Images "
        "(.png, .jpg): the image marks. Prints the verdict, the z-score and the p-value per file; "
        "exit status 2 on bad input."))
    d.add_argument("files", nargs="+", metavar="FILE",
                   help="text files (.txt; .jsonl from `genforge sample --out`) and .png/.jpg images")
    d.add_argument("--run", metavar="RUN_DIR", default=None,
                   help="the run that sampled the files: its watermark.key and tokenizer.json are used")
    d.add_argument("--key-file", metavar="K", default=None,
                   help="a watermark key file (32+ raw bytes or 64+ hex digits) instead of --run")
    d.add_argument("--tokenizer", metavar="FILE", default=None,
                   help="with --key-file: the tokenizer.json of the run that wrote the text files")
    d.add_argument("--gamma", type=float, default=None, metavar="G",
                   help="green-list share used when sampling (default 0.25, as `--watermark-gamma`)")
    d.add_argument("--context", type=int, default=None, metavar="N",
                   help="context width used when sampling (default 1, as `--watermark-context`)")
    d.add_argument("--threshold", type=float, default=None, metavar="Z",
                   help="a text file counts as watermarked when its exact p-value is below the normal "
                        "tail of this z (default 4: p < 3.2e-5)")
    d.add_argument("--reference", metavar="FILE", default=None,
                   help="human text of the domain checked (a few pages or more) to condition the text "
                        "test's null on the key (default with --run: the run's training split)")
    d.add_argument("--json", action="store_true",
                   help="print a JSON list of {file, watermarked, z, p_value, tokens, method, null}")
    d.set_defaults(func=_detect)
