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
from genforge.cli_metrics import add_metrics_parser
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
        if args.preset and "=" not in args.preset:
            raise GenforgeError(f"--resume continues {run_dir} with the settings it was trained with; drop "
                                f"the preset '{args.preset}' (key.sub=value overrides may follow)")
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
            from genforge.data.music_roll import ROLL_DATASETS

            music = data.spec.modality == "music" or data.spec.name in ROLL_DATASETS  # pieces are files
            print(f"sample from it: genforge sample {run_dir}{' --out piece.mid' if music else ''}")
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
        help_text = _owned(owner, option.help) + ("" if "default" in option.help else default)
        if option.flag:
            parser.add_argument(option.cli, dest=option.name, action="store_true", default=None, help=help_text)
            continue
        parser.add_argument(option.cli, dest=option.name, type=option.type, default=None,
                            nargs=option.nargs, choices=option.choices, metavar=option.metavar,
                            const=option.const, action="append" if option.repeat else "store", help=help_text)


def _owned(owner: str, text: str) -> str:
    """``text`` led by the runs it applies to ("music runs: ..."), said once: a help that already
    names its owner ("music runs on chorale tokens: ...", "diffusion: ...") is not prefixed again."""
    names = owner.removesuffix(" runs").split(", ")
    if any(text.startswith(f"{name} runs") for name in names):
        return text
    return f"{owner}: {text.removeprefix(f'{names[0]}: ')}"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `genforge train`")
    parser.add_argument("--checkpoint", default="auto",
                        help="auto (default: best if kept, else latest), best, latest, or a checkpoint "
                             "folder name such as step_0000500")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")


def _plot(args) -> None:
    from genforge.plot import default_out, plot_runs

    runs = [Path(r) for r in args.runs]
    for path in plot_runs(runs, Path(args.out) if args.out else default_out(runs)):
        print(f"wrote {path}")


def _report(args) -> None:
    from genforge.atomic import atomic_write_text
    from genforge.outputs import check_out, unique_output
    from genforge.report_html import build_report

    out = None if args.out is None else check_out(args.out)  # before reading runs: a taken name fails fast
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

    add_metrics_parser(sub)

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


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed (a huge --max-new-tokens or model.*, a batch too big for the GPU)."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


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
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        import re

        size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ \w+)", str(e))
        tried = "" if size is None else \
            f" tried to allocate {int(size[1]) / 1e9:,.1f} GB" if size[1] else f" tried to allocate {size[2]}"
        print(f"genforge: error: out of memory:{tried or ' ' + type(e).__name__}; ask for less: fewer or "
              "shorter samples, a smaller --batch-size, train.batch_size or model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
