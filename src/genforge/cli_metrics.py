"""`genforge metrics images|molecules|music|fit-extractor`: score samples made anywhere.
argparse -> library -> print, nothing else."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genforge.cli_music import add_music_metrics_parser


def add_metrics_parser(sub: argparse._SubParsersAction) -> None:
    """Adds `metrics` and its actions to genforge's subcommands."""
    m = sub.add_parser("metrics", help="score samples made anywhere (images, molecules, music); fit extractors")
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


def _fit_extractor(args) -> None:
    from genforge.metrics.extractor import fit_extractor

    entry = fit_extractor(args.dataset, out_dir=args.out, epochs=args.epochs, seed=args.seed,
                          val_fraction=args.val_fraction)
    print(f"test accuracy {entry['test_accuracy']:.4f} on {entry['test_images']} held-out images")
    print(f"wrote {entry['path']} (sha256 {entry['sha256'][:12]}...)")


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
