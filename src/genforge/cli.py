"""genforge's command line: parse, load config, call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from genforge import GenforgeError, Interrupted, __version__


def _train(args) -> None:
    from genforge.config import apply_overrides, config_from_dict, load_config
    from genforge.train import distributed
    from genforge.train.trainer import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        if args.preset:
            args.overrides.insert(0, args.preset)  # `train --resume RUN key=value`: no preset
        if not (run_dir / "config.json").is_file():
            raise GenforgeError(f"cannot resume: '{run_dir}' is not a run directory (no config.json)")
        raw = apply_overrides(json.loads((run_dir / "config.json").read_text()), args.overrides)
        cfg, model_cfg = config_from_dict(raw)
    else:
        if not args.preset:
            raise GenforgeError("name a preset (see `genforge list`) or pass --resume RUN_DIR")
        cfg, model_cfg = load_config(args.preset, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
    info, _ = distributed.setup(cfg.train.device)
    if run_dir is None:
        run_dir = _new_run_dir(Path(cfg.out_dir), Path(args.preset).stem, info)
    trainer = Trainer(cfg, model_cfg, run_dir, resume=bool(args.resume), stop_after=args.stop_after,
                      progress=not args.no_progress)
    result = trainer.fit()
    if info.is_main:
        print(json.dumps(result))
        print(f"run directory: {run_dir}")
        print(f"sample from it: genforge sample {run_dir}")
    distributed.teardown()


def _new_run_dir(out_dir: Path, preset: str, info) -> Path:
    """A fresh, unique run folder name; under torchrun rank 0 picks it for everyone."""
    name = [f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"]
    if info.world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(name, src=0)
    path, i = out_dir / name[0], 2
    while info.is_main and path.exists():
        path, i = out_dir / f"{name[0]}-{i}", i + 1
    return path


def _sample(args) -> None:
    from genforge.runs import load_run

    run = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device, checkpoint=args.checkpoint)
    if run.spec.modality == "text":
        if args.num_samples is None:
            args.num_samples = 1
        _sample_text(run, args)
    else:
        from genforge.sampling.images import sample_images_cli

        sample_images_cli(run, args)


def _sample_text(run, args) -> None:
    from genforge.sampling.text import check_settings, generate_text, stream_text

    check_settings(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    prompts = args.prompt or ["\n"]
    if args.num_samples < 1:
        raise GenforgeError("--num-samples must be at least 1")
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, stop=args.stop or (), seed=args.seed)
    if len(prompts) == 1 and not args.no_stream:
        sys.stdout.write(prompts[0])
        for piece in stream_text(run.model, run.tokenizer, prompts[0], **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    outs = generate_text(run.model, run.tokenizer, prompts, **kwargs)
    for i, (prompt, text) in enumerate(zip(prompts, outs, strict=True)):
        print(f"--- sample {i + 1} ---")
        print(prompt + text)


def _eval(args) -> None:
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run

    run = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device, checkpoint=args.checkpoint)
    kwargs = {"max_batches": args.max_batches} if args.max_batches else {}
    if run.spec.modality == "image":
        image_options = {"num_samples": args.num_samples, "iwae_k": args.iwae_k,
                         "inception_weights": args.inception_weights}
        kwargs.update({k: v for k, v in image_options.items() if v is not None})
    result = evaluate_run(run, **kwargs)
    for k, v in result.items():
        print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    print(f"saved to {Path(args.run_dir) / 'eval.json'}")


def _fit_extractor(args) -> None:
    from genforge.metrics.extractor import fit_extractor

    entry = fit_extractor(args.dataset, out_dir=args.out, epochs=args.epochs, seed=args.seed)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genforge", description="Train, sample and evaluate generative models.")
    p.add_argument("--version", action="version", version=f"genforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a preset", description=(
        "Train from a preset with key.sub=value overrides, e.g. "
        "`genforge train gpt-shakespeare-char model.n_layer=6 train.max_steps=5000`. "
        "Under torchrun the same command trains with DDP."))
    t.add_argument("preset", nargs="?", help="preset name from `genforge list`, or a path to a .toml file")
    t.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--run-dir", help="where to write the run (default: OUT_DIR/PRESET-TIMESTAMP)")
    t.add_argument("--stop-after", type=int, metavar="N",
                   help="checkpoint and stop after N steps of this session (resume later)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate from a trained run", description=(
        "Generate from the run directory alone; text continues --prompt (repeat it for a batch)."))
    s.add_argument("run_dir", help="a run directory written by `genforge train`")
    s.add_argument("--prompt", action="append", help="text to continue; repeat for several prompts")
    s.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate per sample (default 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default 0.8)")
    s.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    s.add_argument("--stop", action="append", help="stop a sample at this string; repeatable")
    s.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    s.add_argument("--num-samples", type=int, default=None,
                   help="text: samples per prompt (default 1); images: images in the grid (default 64)")
    s.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    s.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    s.add_argument("--checkpoint", default="auto", choices=["auto", "best", "latest"],
                   help="best validation loss, latest, or auto: best if kept, else latest (default)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    s.add_argument("--out", metavar="PNG", help="images: where to write the grid (default RUN_DIR/samples/)")
    s.add_argument("--class-label", metavar="CLASS",
                   help="images, conditional models: sample this class (index or name)")
    s.add_argument("--latent-temperature", type=float, default=1.0,
                   help="images: scale of the prior's standard deviation (default 1.0)")
    s.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                   help="images: decode the latent path between two images (PNG/JPEG files or "
                        "test:INDEX of the held-out split)")
    s.add_argument("--steps", type=int, default=8, help="images: points on the --interpolate path (default 8)")
    s.add_argument("--interp-method", choices=["slerp", "lerp"], default="slerp",
                   help="images: spherical (default) or linear interpolation")
    s.add_argument("--attribute", nargs=2, metavar=("FROM", "TO"),
                   help="images: add the latent vector mean(TO) - mean(FROM) to held-out FROM images")
    s.add_argument("--nearest", action="store_true",
                   help="images: also write each sample beside its nearest training image")
    s.set_defaults(func=_sample)

    e = sub.add_parser("eval", help="held-out metrics of a trained run",
                       description="Text: validation loss, bits per character and perplexity. Images: "
                                   "FD, KID, precision/recall, density/coverage in the dataset's fixed "
                                   "feature space, reference floors, memorization, and the family's "
                                   "likelihood bound.")
    e.add_argument("run_dir", help="a run directory written by `genforge train`")
    e.add_argument("--max-batches", type=int, default=None, help="evaluate on at most this many batches")
    e.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    e.add_argument("--checkpoint", default="auto", choices=["auto", "best", "latest"],
                   help="best validation loss, latest, or auto: best if kept, else latest (default)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    e.add_argument("--num-samples", type=int, default=None,
                   help="images: generated images compared with as many test images (default 10000)")
    e.add_argument("--iwae-k", type=int, default=None,
                   help="images, likelihood families: importance samples of the NLL bound (default 100)")
    e.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="images: also compute standard Inception FID from this weights file "
                        "(needs genforge[inception])")
    e.set_defaults(func=_eval)

    m = sub.add_parser("metrics", help="feature extractors behind the image metrics")
    msub = m.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    fe = msub.add_parser("fit-extractor", help="train the fixed domain classifier for a dataset",
                         description="Train the small classifier whose features FD, KID and "
                                     "precision/recall use, with a fixed seed, and record its "
                                     "test accuracy and sha256.")
    fe.add_argument("dataset", help="dataset name from `genforge list`, a folder of images or an .npz")
    fe.add_argument("--epochs", type=int, default=None, help="training epochs (default: per-dataset recipe)")
    fe.add_argument("--seed", type=int, default=0, help="random seed (default 0, as shipped)")
    fe.add_argument("--out", metavar="DIR", default=None,
                    help="folder for weights + manifest (default: $GENFORGE_CACHE/extractors)")
    fe.set_defaults(func=_fit_extractor)

    ls = sub.add_parser("list", help="list presets, datasets and families")
    ls.set_defaults(func=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Interrupted as e:
        print(f"genforge: {e}", file=sys.stderr)
        return 130
    except GenforgeError as e:
        print(f"genforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
