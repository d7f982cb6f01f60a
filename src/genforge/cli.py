"""genforge's command line: parse, load config, call the library, print. Nothing else lives here.

`sample` and `eval` options are declared by modalities and families
(``genforge.modalities``); the parser exposes all of them and a run refuses any that
does not apply to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from genforge import GenforgeError, Interrupted, __version__
from genforge.cli_audit import add_audit_parser
from genforge.cli_detect import add_detect_parser
from genforge.cli_music import add_music_metrics_parser
from genforge.cli_provenance import add_provenance_parser
from genforge.cli_rl import add_rl_parser
from genforge.serve.cli import add_serve_parser


def _train(args) -> None:
    from genforge import checkpoint as ckpt
    from genforge.config import apply_overrides, config_from_dict, load_config
    from genforge.train import distributed
    from genforge.train.trainer import Trainer, build

    if args.resume:
        run_dir = Path(args.resume)
        if args.preset:
            args.overrides.insert(0, args.preset)  # `train --resume RUN key=value`: no preset
        if args.run_dir or args.overwrite:
            raise GenforgeError("--resume continues RUN_DIR in place; --run-dir and --overwrite do not apply")
        # The latest checkpoint's own config, not config.json: they agree unless a crash came between.
        raw = ckpt.checkpoint_config(ckpt.require_checkpoint(run_dir, "latest"))
        if raw.get("rl"):  # its batches are rollouts of a reward: only `genforge rl` rebuilds them
            raise GenforgeError(f"'{run_dir}' is an RL fine-tuning run; continue it with "
                                f"`genforge rl --resume {run_dir}`")
        raw = apply_overrides(raw, args.overrides)
        cfg, model_cfg = config_from_dict(raw)
    else:
        if not args.preset:
            raise GenforgeError("name a preset (see `genforge list`) or pass --resume RUN_DIR")
        cfg, model_cfg = load_config(args.preset, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
    if args.stop_after is not None and args.stop_after < 1:
        raise GenforgeError("--stop-after must be at least 1")
    info, _ = distributed.setup(cfg.train.device)
    try:
        if run_dir is None:
            run_dir = _new_run_dir(Path(cfg.out_dir), Path(args.preset).stem, info)
        model, data = build(cfg, model_cfg)
        trainer = Trainer(cfg, model, data, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                          stop_after=args.stop_after, progress=not args.no_progress)
        result = trainer.fit()
        if info.is_main:
            print(json.dumps(result))
            print(f"run directory: {run_dir}")
            print(f"sample from it: genforge sample {run_dir}")
    finally:
        distributed.teardown()


def _new_run_dir(out_dir: Path, preset: str, info) -> Path:
    """A fresh, unique run folder; under torchrun rank 0 picks it (suffix included) for everyone."""
    base = out_dir / f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    name = [str(path)]
    if info.world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def _declared_options(args, kind: str) -> dict:
    from genforge.modalities import all_options

    return {name: getattr(args, name) for name in all_options(kind)}


def _sample(args) -> None:
    from genforge.modalities import check_options, generator_for, modality
    from genforge.outputs import check_out
    from genforge.runs import load_run

    if getattr(args, "out", None) is not None:
        check_out(args.out)  # before loading and sampling: a refused path costs nothing
    run = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device, checkpoint=args.checkpoint)
    options = check_options(run, _declared_options(args, "sample"), "sample")
    generator, seed = generator_for(next(run.model.parameters()).device, options["seed"])
    modality(run.spec.modality).sample_command(run, generator, **options)
    if options["seed"] is None:
        print(f"seed {seed} (pass --seed {seed} to repeat these samples)", file=sys.stderr)


def _eval(args) -> None:
    from genforge.evaluate import evaluate_run, save_eval
    from genforge.modalities import check_options
    from genforge.report import format_report
    from genforge.runs import load_run

    run = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device, checkpoint=args.checkpoint)
    given = _declared_options(args, "eval")
    check_options(run, given, "eval")
    result = evaluate_run(run, **{k: v for k, v in given.items() if v is not None})
    print(format_report(result))  # first: a read-only run still shows its numbers
    print(f"saved to {save_eval(run, result)}")


def _fit_extractor(args) -> None:
    from genforge.metrics.extractor import fit_extractor

    entry = fit_extractor(args.dataset, out_dir=args.out, epochs=args.epochs, seed=args.seed,
                          val_fraction=args.val_fraction)
    print(f"test accuracy {entry['test_accuracy']:.4f} on {entry['test_images']} held-out images")
    print(f"wrote {entry['path']} (sha256 {entry['sha256'][:12]}...)")


def _list(args) -> None:
    from genforge.config import list_presets
    from genforge.data import registry
    from genforge.families import FAMILIES

    print("presets (genforge train PRESET):")
    for name, desc in list_presets().items():
        print(f"  {name:<24} {desc}")
    print("datasets (data.name=...; or a path to your own files):")
    for name, (modality, desc) in registry().items():
        print(f"  {name:<24} [{modality}] {desc}")
    print("families (family=...):")
    print("  " + ", ".join(FAMILIES))


def _add_declared(parser: argparse.ArgumentParser, kind: str) -> None:
    """Every declared option, with default None so that a run can tell what was given."""
    from genforge.modalities import all_options

    for option, owner in all_options(kind).values():
        default = f" (default {option.default})" if option.default is not None and not option.flag else ""
        help_text = f"{owner}: {option.help}" if "default" in option.help else f"{owner}: {option.help}{default}"
        if option.flag:
            parser.add_argument(option.cli, dest=option.name, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(option.cli, dest=option.name, type=option.type, default=None,
                            nargs=option.nargs, choices=option.choices, metavar=option.metavar,
                            const=option.const, action="append" if option.repeat else "store", help=help_text)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `genforge train`")
    parser.add_argument("--checkpoint", default="auto",
                        help="auto (default: best if kept, else latest), best, latest, or a checkpoint "
                             "folder name such as step_0000500")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")


def _metrics_images(args) -> None:
    from genforge.metrics.evaluate_images import load_reference, load_samples, score_images
    from genforge.report import format_report

    _check_json(args.json)
    data = load_reference(args.against)
    samples = load_samples(args.samples, tuple(data.spec.shape))
    result = score_images(samples, data, num_samples=args.num_samples, seed=args.seed,
                          inception_weights=args.inception_weights)
    print(f"{args.samples} ({len(samples)} images) against the test split of '{args.against}'")
    print(format_report(result))  # first: an unwritable --json path still shows the numbers
    _write_json(args.json, result)


def _metrics_molecules(args) -> None:
    from genforge.modalities.molecule import score_smiles_file
    from genforge.report import format_report

    _check_json(args.json)
    result = score_smiles_file(args.samples, against=args.against, train=args.train, column=args.column,
                               num_samples=args.num_samples, workers=args.workers,
                               progress=not args.no_progress)
    print(f"{args.samples} ({result['samples']} molecules) against '{args.against}'")
    print(format_report(result))
    _write_json(args.json, result)


def _check_json(path: str | None) -> None:
    """Before scoring (minutes): --json must name a new file, never a folder or an existing file."""
    if path:
        from genforge.outputs import check_out

        check_out(path, "--json")


def _write_json(path: str | None, result: dict) -> None:
    if path:
        from genforge.atomic import atomic_write_text

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"saved to {out}")


def _plot(args) -> None:
    from genforge.plot import default_out, plot_runs

    runs = [Path(r) for r in args.runs]
    for path in plot_runs(runs, Path(args.out) if args.out else default_out(runs)):
        print(f"wrote {path}")


def _report(args) -> None:
    from genforge.atomic import atomic_write_text
    from genforge.outputs import check_out, unique_output
    from genforge.report_html import build_report

    out = check_out(args.out) if args.out else None  # before reading runs: a taken name fails fast
    page = build_report(args.runs)
    if out is None:
        out = unique_output(Path("."), "report", ".html")  # report.html, else report-2.html, ...
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    print(f"wrote {out}")


def build_parser(declared: bool = True) -> argparse.ArgumentParser:
    """``declared=False`` skips the options that modalities and families declare (they import
    torch); `genforge list` and `train` do not need them."""
    p = argparse.ArgumentParser(prog="genforge", description="Train, sample and evaluate generative models.")
    p.add_argument("--version", action="version", version=f"genforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a preset", description=(
        "Train from a preset with key.sub=value overrides (before or after options), e.g. "
        "`genforge train gpt-shakespeare-char model.n_layer=6 train.max_steps=5000`. "
        "Under torchrun the same command trains with DDP. Ctrl-C or SIGTERM checkpoints and stops."))
    t.add_argument("preset", nargs="?", help="preset name from `genforge list`, or a path to a .toml file")
    t.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--run-dir", help="where to write the run (default: OUT_DIR/PRESET-TIMESTAMP); "
                                     "must be empty unless --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the genforge run in --run-dir and train anew (a folder holding "
                        "anything a run does not write is refused, nothing deleted)")
    t.add_argument("--stop-after", type=int, metavar="N",
                   help="checkpoint and stop after N steps of this session (resume later)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (one line per evaluation is still printed)")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate from a trained run", description=(
        "Generate from the run directory alone. Options name the runs they apply to; any other "
        "is refused."))
    _add_run_options(s)
    if declared:
        _add_declared(s, "sample")
    s.set_defaults(func=_sample)

    add_rl_parser(sub)
    add_serve_parser(sub)
    add_provenance_parser(sub)
    add_detect_parser(sub)
    add_audit_parser(sub)

    e = sub.add_parser("eval", help="held-out metrics of a trained run",
                       description="Text: validation loss, bits per character and perplexity. Images: "
                                   "FD, KID, precision/recall, density/coverage in the dataset's fixed "
                                   "feature space, reference floors, memorization, and the family's "
                                   "likelihood bound, on the test split.")
    _add_run_options(e)
    if declared:
        _add_declared(e, "eval")
    e.set_defaults(func=_eval)

    m = sub.add_parser("metrics", help="score samples made anywhere (images, molecules); fit extractors")
    msub = m.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    fe = msub.add_parser("fit-extractor", help="train the fixed domain classifier for a dataset",
                         description="Train the small classifier whose features FD, KID and "
                                     "precision/recall use, with a fixed seed, and record its "
                                     "test accuracy and sha256.")
    fe.add_argument("dataset", help="dataset name from `genforge list`, a folder of images or an .npz")
    fe.add_argument("--epochs", type=int, default=None, help="training epochs (default: per-dataset recipe)")
    fe.add_argument("--seed", type=int, default=0, help="random seed (default 0, as shipped)")
    fe.add_argument("--val-fraction", type=float, default=None, metavar="F",
                    help="the data.val_fraction of the runs to score (it decides the test split of "
                         "datasets that ship none; default: the default split)")
    fe.add_argument("--out", metavar="DIR", default=None,
                    help="folder for weights + manifest (default: $GENFORGE_CACHE/extractors)")
    fe.set_defaults(func=_fit_extractor)

    mi = msub.add_parser("images", help="score images made anywhere against a dataset",
                         description="The report of `genforge eval` for images (FD, KID, precision/"
                                     "recall, density/coverage, floors, class histogram, memorization) "
                                     "for samples genforge did not make.")
    mi.add_argument("samples", help="an .npz (array 'images', 'x' or its only array; uint8 0..255 or "
                                    "floats in [0, 1]; NCHW or NHWC) or a folder of PNG images")
    mi.add_argument("--against", required=True, metavar="DATASET",
                    help="reference dataset: a name from `genforge list`, a folder of images or an .npz")
    mi.add_argument("--num-samples", type=int, default=None, metavar="N",
                    help="compare at most N samples (default: all, up to the number of test images)")
    mi.add_argument("--seed", type=int, default=0, help="seed of the subsets and noise floor (default 0)")
    mi.add_argument("--json", metavar="OUT", default=None, help="also write the results to this JSON file")
    mi.add_argument("--inception-weights", metavar="PATH", default=None,
                    help="also compute standard Inception FID from this weights file (needs genforge[inception])")
    mi.set_defaults(func=_metrics_images)

    mm = msub.add_parser("molecules", help="score a SMILES file made anywhere with the MOSES metrics",
                         description="Validity, unique@1k/10k, novelty, FCD, SNN, Frag, Scaf, IntDiv, "
                                     "filters and property distances (logP, SA, QED, weight) of any "
                                     "SMILES file, computed by genforge with RDKit and fcd-torch "
                                     "(needs genforge[molecules]). Invalid rows count against validity.")
    mm.add_argument("samples", help="a .smi/.txt file (one SMILES per line, first field) or a .csv "
                                    "with a SMILES column")
    mm.add_argument("--against", default="moses", metavar="REF",
                    help="reference: 'moses' (its test and test_scaffolds splits; default) or a SMILES "
                         "file (scored as Test)")
    mm.add_argument("--train", metavar="FILE", default=None,
                    help="training molecules for novelty (default: MOSES train with --against moses, "
                         "else novelty is not reported)")
    mm.add_argument("--column", metavar="NAME", default=None, help="the SMILES column of CSV files")
    mm.add_argument("--num-samples", type=int, default=None, metavar="N",
                    help="score only the first N rows (default: all)")
    mm.add_argument("--workers", type=int, default=2, metavar="N", help="processes for RDKit (default 2)")
    mm.add_argument("--json", metavar="OUT", default=None, help="also write the results to this JSON file")
    mm.add_argument("--no-progress", action="store_true", help="no progress bars")
    mm.set_defaults(func=_metrics_molecules)
    add_music_metrics_parser(msub)

    pl = sub.add_parser("plot", help="PNG curves of runs' losses and logged metrics",
                        description="Training and validation loss, and one panel per other logged "
                                    "metric, one line per run, from each run's metrics.jsonl.")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `genforge train`")
    pl.add_argument("--out", metavar="DIR", default=None,
                    help="where to write the PNGs (default: RUN/plots for one run, else plots/ "
                         "beside the runs)")
    pl.set_defaults(func=_plot)

    rp = sub.add_parser("report", help="one self-contained HTML page comparing runs",
                        description="Held-out metrics side by side, loss and metric curves, sample "
                                    "grids, nearest-neighbour grids and config differences of the runs, "
                                    "in one HTML file with images inlined (opens from disk, offline).")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by `genforge train`")
    rp.add_argument("--out", metavar="FILE", default=None,
                    help="a new .html file (default: report.html in the current folder, report-2.html, ...)")
    rp.set_defaults(func=_report)

    ls = sub.add_parser("list", help="list presets, datasets and families")
    ls.set_defaults(func=_list)
    return p


def _parse(argv: list[str]) -> argparse.Namespace:
    command = argv[0] if argv else ""
    parser = build_parser(declared=command in ("sample", "eval"))
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("train", "rl"):
        # key=value overrides after an option (`train P --no-progress train.lr=1e-3`).
        overrides = [x for x in extra if "=" in x and not x.startswith("-")]
        if len(overrides) == len(extra):
            args.overrides += overrides
            return args
    if extra:
        parser.parse_args(argv)  # argparse's own message and exit status 2
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning as one line, without the source path and code line Python adds."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"genforge: warning: {text}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        code = args.func(args)  # None, or an exit status a command chose (`verify`: 1 tampered, 3 untrusted)
    except Interrupted as e:
        print(f"genforge: {e}", file=sys.stderr)
        return e.exit_code
    except GenforgeError as e:
        print(f"genforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder or a full disk the library did not anticipate
        import errno

        where = f": {e.filename}" if e.filename else ""
        # The hint only where it is the cause, not for every OSError (it misled before).
        hint = {errno.EACCES: "; check the folder is writable", errno.EPERM: "; check the folder is writable",
                errno.EROFS: "; the filesystem is read-only", errno.ENOSPC: "; the disk is full",
                errno.EDQUOT: "; the disk quota is exceeded"}.get(e.errno, "")
        print(f"genforge: error: {e.strerror or e}{where}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
