"""`genforge audit RUN_DIR`: memorization and bias audit of a trained run (``genforge.audit``)."""

from __future__ import annotations

import json


def _audit(args) -> None:
    from genforge.audit.report import format_audit
    from genforge.audit.runs import audit_run, save_audit
    from genforge.outputs import check_out
    from genforge.runs import load_run

    if args.out is not None:
        check_out(args.out)  # before minutes of sampling
    run = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device, checkpoint=args.checkpoint)
    report, extras = audit_run(run, num_samples=args.num_samples, seed=args.seed)
    if not args.json:
        print(format_audit(report))  # first: a read-only run still shows its numbers
    written = save_audit(run.run_dir, report, extras, args.out)
    if args.json:
        from genforge.audit.runs import finite_json

        print(json.dumps(finite_json(report), indent=2))
    else:
        print("wrote " + ", ".join(str(p) for p in written))


def add_audit_parser(sub) -> None:
    a = sub.add_parser("audit", help="memorization and bias audit of a trained run",
                       description="Draw samples and measure how close they come to the training data "
                                   "(images: nearest training image in pixel space and near-copies; text: "
                                   "longest verbatim overlap and shared character 8-grams; molecules: exact "
                                   "training molecules and novelty; music: longest run of 16th steps copied from a training "
                                   "piece, beside held-out pieces' own) and, for runs with classes, the class "
                                   "balance (chi-square) or per-class quality. Writes RUN_DIR/audit.json "
                                   "(read by the model card) and, for images, RUN_DIR/audit-pairs.png.")
    a.add_argument("run_dir", help="a run directory written by `genforge train`")
    a.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="samples to draw (default: images 1000, text 16 of 500 tokens, molecules 1000, music 32 pieces)")
    a.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0: the audit repeats exactly)")
    a.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    a.add_argument("--out", metavar="FILE", default=None,
                   help="also write the JSON report to this new file (RUN_DIR/audit.json is always written)")
    a.add_argument("--checkpoint", default="auto",
                   help="auto (default: best if kept, else latest), best, latest, or a checkpoint folder name")
    a.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    a.set_defaults(func=_audit)
