"""`genforge keys init`, `genforge verify FILE...` and `genforge card RUN_DIR`: argparse -> library -> print.

`verify` exit status (documented in its help): 0 every file checked out; 1 a file was changed
after genforge wrote it (provenance hash or C2PA signature fails) or carries no provenance at
all; 3 nothing was changed but a signer is not trusted (or, with --trust-anchor, a PNG is
unsigned); 2 bad input (a missing file, an unreadable anchor). Tampering outranks trust.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genforge import GenforgeError

EXIT_OK, EXIT_TAMPERED, EXIT_UNTRUSTED = 0, 1, 3


def _keys_init(args) -> None:
    from genforge.credentials import ROOT_CERT, SIGNER_CERT, SIGNER_KEY, init_keys

    paths = init_keys(args.dir, force=args.force)
    folder = paths[ROOT_CERT].parent
    print(f"made a local TEST chain in {folder} (keys are owner-only, 0600; never share *.key)")
    print(f"  signing certificate chain: {paths[SIGNER_CERT]}")
    print(f"  signing key:               {paths[SIGNER_KEY]}")
    print(f"  trust anchor (share this): {paths[ROOT_CERT]}")
    print(f"sign: genforge sample RUN --sign{'' if args.dir is None else f' --sign-cert {paths[SIGNER_CERT]} --sign-key {paths[SIGNER_KEY]}'}")
    print(f"verify: genforge verify FILE.png --trust-anchor {paths[ROOT_CERT]}")


def verify_file(path: Path, anchors: str | None) -> dict:
    """One file's verdict: provenance (integrity) and, for PNGs, C2PA credentials (authenticity)."""
    from genforge.provenance import check_provenance, is_png

    prov = check_provenance(path)
    cred = None
    target = Path(str(path).removesuffix(".provenance.json"))
    if is_png(target):
        from genforge.credentials import verify_png

        cred = verify_png(target, anchors)
    if prov.status == "changed" or (cred is not None and cred.status == "tampered"):
        verdict = "tampered"
    elif prov.status == "missing" and (cred is None or cred.status == "unsigned"):
        verdict = "no provenance"
    elif cred is not None and (cred.status == "untrusted" or (anchors and cred.status == "unsigned")):
        verdict = "untrusted"
    else:
        verdict = "valid"
    return {"file": str(path), "verdict": verdict, "provenance": prov, "credentials": cred}


def _verify(args) -> int:
    from genforge.credentials import credential_json, load_anchors
    from genforge.provenance import describe

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:  # bad input before any check: exit 2
        raise GenforgeError(f"no such file: {', '.join(missing)}")
    anchors = load_anchors(args.trust_anchor) if args.trust_anchor else None
    results = [verify_file(Path(f), anchors) for f in args.files]
    if args.json:
        print(json.dumps([{"file": r["file"], "verdict": r["verdict"],
                           "provenance": {"status": r["provenance"].status, "detail": r["provenance"].detail,
                                          "record": r["provenance"].record},
                           "credentials": credential_json(r["credentials"]) if r["credentials"] else None}
                          for r in results], indent=2))
    else:
        for r in results:
            prov, cred = r["provenance"], r["credentials"]
            print(f"{r['file']}: {r['verdict'].upper()}")
            print(f"  provenance: {prov.status}: {prov.detail}")
            for line in describe(prov.record) if prov.record else ():
                print(f"    {line}")
            if cred is not None:
                hint = "" if anchors or cred.status != "untrusted" else " (pass --trust-anchor ROOT.pem to trust a CA)"
                print(f"  content credentials (C2PA): {cred.message()}{hint}")
            elif prov.status != "missing":
                print("  content credentials: not applicable (only PNGs are signed); the provenance is "
                      "unsigned: it shows integrity, not who made the file")
    verdicts = {r["verdict"] for r in results}
    if verdicts & {"tampered", "no provenance"}:
        return EXIT_TAMPERED
    return EXIT_UNTRUSTED if "untrusted" in verdicts else EXIT_OK


def _card(args) -> None:
    from genforge.card import write_card

    path = write_card(Path(args.run_dir), force=args.force)
    print(f"wrote {path}")


def add_provenance_parser(sub) -> None:
    k = sub.add_parser("keys", help="signing keys for content credentials (C2PA)")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    ki = ksub.add_parser("init", help="make a local test chain (root CA + signing certificate, ES256)",
                         description="Make a root CA and a signing certificate it issued (ES256 on P-256, "
                                     "with the key usages C2PA requires), for testing `genforge sample "
                                     "--sign`. Keys are written owner-only (0600). Verifiers trust files "
                                     "signed with it only when given root-ca.pem with --trust-anchor.")
    ki.add_argument("--dir", default=None, metavar="D",
                    help="where to write the chain (default: $GENFORGE_KEYS, else "
                         "~/.config/genforge/credentials, where `sample --sign` looks)")
    ki.add_argument("--force", action="store_true", help="replace an existing chain in that folder")
    ki.set_defaults(func=_keys_init)

    v = sub.add_parser("verify", help="read and check the provenance and content credentials of files",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
                           "Print each file's provenance (model, weights sha256, run, checkpoint, seed, "
                           "options, version, time) and check it: the PNG chunk's pixel hash or the "
                           "sidecar's file hash, and a PNG's C2PA signature.\n\nexit status: 0 every file "
                           "checked out; 1 a file was changed after it was written, or has no provenance; "
                           "3 unchanged, but a signer is not trusted (with --trust-anchor: also an unsigned "
                           "PNG); 2 bad input."))
    v.add_argument("files", nargs="+", metavar="FILE",
                   help="files genforge wrote: a PNG, or a text/SMILES/CSV/.npz file with its "
                        "FILE.provenance.json beside it (naming the sidecar works too)")
    v.add_argument("--trust-anchor", metavar="PEM", default=None,
                   help="trust signers that chain to these root certificates (e.g. the root-ca.pem of "
                        "`genforge keys init`); without it a valid signature is reported as untrusted")
    v.add_argument("--json", action="store_true", help="print the results as JSON (one object per file)")
    v.set_defaults(func=_verify)

    c = sub.add_parser("card", help="write the run's model card (RUN_DIR/README.md)",
                       description="Write RUN_DIR/README.md, a model card with Hugging Face Hub metadata "
                                   "(YAML front matter), from what the run recorded: data, training budget, "
                                   "held-out metrics (eval.json), audit results (audit.json), intended use "
                                   "and limitations, the watermark key's fingerprint. Training writes it at "
                                   "the end; a README you edited is never replaced unless --force.")
    c.add_argument("run_dir", help="a run directory written by `genforge train` or `genforge rl`")
    c.add_argument("--force", action="store_true",
                   help="replace RUN_DIR/README.md even when it was written or edited by hand")
    c.set_defaults(func=_card)
