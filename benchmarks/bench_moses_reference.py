"""genforge's MOSES metrics against the published "Train" row: the training set scored as a model.

MOSES (Polykovskiy et al. 2020, Frontiers in Pharmacology 11:565644) publishes, beside its
baseline models, a row for the training set itself scored as if it were a model's samples.
That row needs no model, so it checks the metric code alone: this script draws a fixed-seed
sample of training SMILES (30,000, the sample size MOSES recommends), computes
``genforge.metrics.molecules.moses_metrics`` against the test and scaffold-test sets, and
writes genforge's value beside the published one for every metric, with the wall time of
each metric group.

Published values: the "Train" row of the metrics table in the MOSES README
(github.com/molecularsets/moses, README.md at commit ffbc4dbad1afddc38b0bcd0a68801b56524c3ca9),
the same table as the paper's. It gives no property distances (logP, SA, QED, weight) for
that row; genforge's are reported without a reference.

The reference statistics (ChemNet activations and RDKit features of 176k test and 176k
scaffold-test molecules) and the canonical training set for novelty are computed once and
cached under ``--cache-dir``; their one-time cost is recorded when this run computed them.

Two more modes, for what a fresh machine pays (issue #20):

- ``--build-shipped``: compute (or read from ``--cache-dir``) the statistics of both reference
  sets and the training rows whose canonical SMILES differ, and write the versioned,
  checksummed bundle ``src/genforge/weights/moses-reference-v1.{npz,json}`` the package ships
  (``genforge.metrics.molecules.shipped``); prints its size. Commit both files.
- ``--first-score N``: what ``genforge metrics molecules`` costs on a fresh machine: N
  (default 2,000) sampled training SMILES scored with an *empty* cache folder, so the
  references come from the shipped bundle (fingerprints recomputed) and novelty from its
  changed training rows; wall seconds of each part and in all, then the same N scored with the
  statistics computed from scratch (``--cache-dir``, filled once) and every number compared.
  Writes ``moses_first_score.{json,md}``.

Usage: GENFORGE_DATA=/path/with/moses nice -n 19 python benchmarks/bench_moses_reference.py
       [--samples 30000] [--seed 0] [--n-jobs 2] [--device cpu] [--cache-dir DIR]
       [--build-shipped | --first-score N]
(``$GENFORGE_DATA/moses/{train,test,test_scaffolds}.csv.gz``: CSV with a SMILES column.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS as RESULTS_DIR
from common import machine, peak_rss_mib, write

SOURCE = ("MOSES README, 'Train' row of the metrics table (github.com/molecularsets/moses, "
          "README.md at commit ffbc4dbad1afddc38b0bcd0a68801b56524c3ca9); Polykovskiy et al. 2020")
PUBLISHED = {
    "valid": 1.0, "unique@1000": 1.0, "unique@10000": 1.0,
    "FCD/Test": 0.008, "FCD/TestSF": 0.4755,
    "SNN/Test": 0.6419, "SNN/TestSF": 0.5859,
    "Frag/Test": 1.0, "Frag/TestSF": 0.9986,
    "Scaf/Test": 0.9907, "Scaf/TestSF": 0.0,
    "IntDiv": 0.8567, "IntDiv2": 0.8508, "Filters": 1.0, "Novelty": 1.0,
}
# Absolute differences allowed before a metric is flagged: the published row's own rounding
# plus the spread of a 30,000-molecule sample (FCD is biased upwards at finite sample size).
TOLERANCE = {
    "valid": 1e-3, "unique@1000": 1e-3, "unique@10000": 1e-3,
    "FCD/Test": 0.01, "FCD/TestSF": 0.05,
    "SNN/Test": 0.005, "SNN/TestSF": 0.005,
    "Frag/Test": 0.002, "Frag/TestSF": 0.002,
    "Scaf/Test": 0.01, "Scaf/TestSF": 0.005,
    "IntDiv": 0.002, "IntDiv2": 0.002, "Filters": 1e-3,
}
NOTES = {
    "Filters": ("no MCF patterns here (PAINS and structural rules only): an upper bound. In the seed-0 "
                "sample 4 of 30,000 training molecules fail: each matches RDKit's PAINS thiaz_ene_A, "
                "which the filtering that built MOSES did not flag"),
    "Novelty": ("training molecules scored against the training set are not novel by definition; "
                "the published 1.0 cannot be a novelty of training molecules against it"),
    "FCD/Test": "finite-sample bias: see the sample-size notes below",
    "FCD/TestSF": "finite-sample bias: see the sample-size notes below",
    "Scaf/Test": "depends on how many molecules are scored: see the sample-size notes below",
}
ORDER = ["valid", "unique@1000", "unique@10000", "FCD/Test", "FCD/TestSF", "SNN/Test", "SNN/TestSF",
         "Frag/Test", "Frag/TestSF", "Scaf/Test", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters",
         "Novelty", "logP", "SA", "QED", "weight"]
GROUPS = [("rdkit_pass_s", "RDKit pass: parse, canonical SMILES, fingerprints, BRICS, scaffolds, "
           "properties, filters (n_jobs processes)"),
          ("fcd_s", "FCD: ChemNet on the samples + 2 Frechet distances"),
          ("snn_s", "SNN: samples x {test_size} and x {test_scaffolds_size} Tanimoto"),
          ("frag_scaf_s", "Frag + Scaf: count vectors, cosine"),
          ("intdiv_s", "IntDiv + IntDiv2: samples x samples Tanimoto, twice"),
          ("properties_s", "logP, SA, QED, weight: Wasserstein-1"),
          ("novelty_s", "Novelty (canonical training set: {novelty_source})")]


def default_cache_dir() -> Path:
    root = os.environ.get("GENFORGE_CACHE") or Path.home() / ".cache" / "genforge"
    return Path(root) / "moses"


def _scaffold_of(smiles: str):
    from genforge.metrics import molecules as M

    mol = M.mol_from_smiles(smiles)
    return None if mol is None else M.scaffold(mol)


def sample_size_controls(train: list[str], test: list[str], ref, n_jobs: int, seed: int,
                         progress: bool) -> dict:
    """Scaf/Test and FCD/Test as functions of how many molecules are scored.

    Both are set-level statistics with a finite-sample bias (FCD: the sample mean and
    covariance; Scaf: the Poisson noise of many rare scaffold counts), unlike SNN, IntDiv
    or Frag, which barely move with the sample size. Scaf/Test of the first 100k, 300k and
    all training molecules (in a seeded random order), and FCD/Test and Scaf/Test of 30,000
    *test* molecules against the whole test set (the same distribution, so only the bias is
    left) show what the 30,000-molecule numbers can be compared with.
    """
    from genforge.metrics import molecules as M

    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(train))
    out: dict = {"scaf_test_by_train_size": {}}
    t = time.perf_counter()
    with M.process_pool(n_jobs) as pool:  # the module's process pool: one parse per molecule
        scaffolds = M.map_molecules(_scaffold_of, [train[i] for i in order], pool, "train scaffolds", progress, 2048)
        for n in (30_000, 100_000, 300_000, len(train)):
            counts = Counter(scaffolds[:n])
            counts.pop(None, None)
            out["scaf_test_by_train_size"][str(n)] = M.cosine_similarity_counts(ref.scaffolds, counts)
        sub = [test[i] for i in rng.choice(len(test), size=30_000, replace=False)]
        counts = Counter(M.map_molecules(_scaffold_of, sub, pool, "test scaffolds", progress, 1024))
        counts.pop(None, None)
        out["scaf_test_of_30k_test"] = M.cosine_similarity_counts(ref.scaffolds, counts)
        mu, sigma = M.fcd_stats(sub, n_jobs=n_jobs, pool=pool, progress=progress)
        out["fcd_test_of_30k_test"] = M.frechet(mu, sigma, ref.fcd_mu, ref.fcd_sigma)
    out["wall_s"] = time.perf_counter() - t
    return out


def render(result: dict) -> str:
    """The markdown table of one result (also rebuilt from a saved JSON: ``render(json.load(f))``)."""
    g, mc, t = result["genforge"], result["machine"], result["timings"]
    lines = [
        "# MOSES metrics: genforge against the published Train row",
        "",
        (f"{result['samples']:,} SMILES drawn from the MOSES training set (seed {result['seed']}), scored "
         f"by `genforge.metrics.molecules.moses_metrics` against test ({result['test_size']:,}) and scaffold "
         f"test ({result['test_scaffolds_size']:,}); RDKit {result['rdkit']}, fcd-torch {result['fcd_torch']}, "
         f"{result['n_jobs']} processes, device {result['device']} ({mc['cpu']}, torch {mc['torch']}). "
         f"Published: {SOURCE}."),
        "",
        "| metric | genforge | published | difference | within tolerance | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in ORDER:
        if key not in g:
            continue
        pub = PUBLISHED.get(key)
        ours = g[key]
        if pub is None:
            diff, ok = "", "no reference"
        else:
            d = ours - pub
            diff = f"{d:+.4f}"
            ok = ("n/a" if key not in TOLERANCE else
                  ("yes" if math.isfinite(d) and abs(d) <= TOLERANCE[key] else f"**no** (tol {TOLERANCE[key]})"))
        pub_s = "" if pub is None else f"{pub:.4f}"
        lines.append(f"| {key} | {ours:.4f} | {pub_s} | {diff} | {ok} | {NOTES.get(key, '')} |")
    lines += ["", f"Wall time for {result['samples']:,} molecules (seconds; load average "
              f"{result['loadavg_start'][0]:.1f} at start, {result['loadavg_end'][0]:.1f} at end, on a shared "
              f"2-core machine):", "", "| metric group | seconds |", "| --- | --- |"]
    for key, label in GROUPS:
        if key in t:
            sizes = {"test_size": f"{result['test_size']:,}",
                     "test_scaffolds_size": f"{result['test_scaffolds_size']:,}",
                     "novelty_source": result.get("novelty_source", "")}
            lines.append(f"| {label.format(**sizes)} | {t[key]:.1f} |")
    lines.append(f"| **all of moses_metrics** | **{result['metrics_wall_s']:.1f}** |")
    cpu = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("rdkit_cpu_s/")}
    if cpu:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        lines += ["", f"CPU seconds inside the RDKit pass, summed over processes: {parts}."]
    lines += ["", "One-time costs (cached under the cache folder afterwards):", ""]
    first = result.get("first_run", {})
    for name in ("test", "test_scaffolds"):
        r = result.get("reference_timings", {}).get(name, {})
        if r.get("cached") and name in first.get("reference_timings", {}):
            r = {**first["reference_timings"][name], "date": first.get("date", "")}
        if r.get("cached"):
            lines.append(f"- Reference `{name}`: read from the cache ({r['wall_s']:.1f} s).")
        elif r:
            lines.append(f"- Reference `{name}` ({result[name + '_size']:,} molecules) computed once: "
                         f"{r['wall_s']:.0f} s (RDKit pass {r.get('reference_rdkit_s', float('nan')):.0f} s, "
                         f"ChemNet {r.get('reference_chemnet_s', float('nan')):.0f} s)"
                         + (f", measured {r['date']}" if r.get("date") else "") + ".")
    if "novelty_s" in first.get("timings", {}) and "read from the cache" in result.get("novelty_source", ""):
        lines.append(f"- Canonical training set for Novelty ({result['train_size']:,} SMILES): "
                     f"{first['timings']['novelty_s']:.0f} s in the first run (an upper bound: that run "
                     "was paused by a SIGSTOP from outside for part of it).")
    lines.append(f"- Peak resident memory of the benchmark process: {result['peak_rss_mib']:.0f} MiB.")
    c = result.get("controls")
    if c:
        by_n = ", ".join(f"{int(n):,}: {v:.4f}" for n, v in c["scaf_test_by_train_size"].items())
        lines += ["", "## Why FCD and Scaf differ: sample size", "",
                  "FCD and Scaf are set-level statistics biased by the number of molecules scored; SNN, "
                  "IntDiv and Frag barely depend on it, and they agree with the published row to 1e-4.",
                  "",
                  f"- Scaf/Test of the training set, by how many training molecules are scored: {by_n} "
                  f"(published {PUBLISHED['Scaf/Test']}).",
                  f"- 30,000 *test* molecules against the whole test set (same distribution, so only the "
                  f"finite-sample bias is left): FCD/Test {c['fcd_test_of_30k_test']:.4f}, Scaf/Test "
                  f"{c['scaf_test_of_30k_test']:.4f}.",
                  "- So the published Train row matches scoring (nearly) the whole training set: at 30,000 "
                  "molecules FCD carries a bias of about the 30k-test value above, and Scaf sits near the "
                  "30k value. Compare a model's 30,000 samples with these 30,000-molecule floors, not with "
                  "the published Train row.",
                  f"- These controls took {c['wall_s']:.0f} s."]
    if result.get("remarks"):
        lines += ["", "## Remarks", "", *(f"- {r}" for r in result["remarks"])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-novelty", action="store_true", help="skip Novelty (canonicalizes 1.6M SMILES once)")
    p.add_argument("--no-controls", action="store_true", help="skip the sample-size controls")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--name", default="moses_reference")
    p.add_argument("--build-shipped", action="store_true",
                   help="write the shipped bundle src/genforge/weights/moses-reference-v1.* and stop")
    p.add_argument("--first-score", type=int, nargs="?", const=2000, default=None, metavar="N",
                   help="time N SMILES (default 2000) scored with an empty cache (shipped path) against the "
                        "computed path, and stop")
    args = p.parse_args()

    import fcd_torch  # noqa: F401
    import rdkit

    from genforge.metrics import molecules as M

    data = os.environ.get("GENFORGE_DATA")
    if not data:
        raise SystemExit("set GENFORGE_DATA to a folder holding moses/{train,test,test_scaffolds}.csv.gz")
    cache_dir = args.cache_dir or default_cache_dir()
    progress = not args.no_progress
    loadavg_start = os.getloadavg()

    from genforge.data.smiles import moses_file, read_smiles_file

    # The lists exactly as `genforge metrics molecules` reads them: the shipped bundle is keyed
    # by their sha256.
    train, test, test_sf = (read_smiles_file(moses_file(k)) for k in ("train", "test", "test_scaffolds"))
    if args.build_shipped:
        return build_shipped(test, test_sf, train, cache_dir, args.n_jobs, progress)
    if args.first_score is not None:
        return first_score(args.first_score, args.seed, test, test_sf, train, cache_dir, args.n_jobs, progress)
    rng = np.random.default_rng(args.seed)
    sample = [train[i] for i in rng.choice(len(train), size=args.samples, replace=False)]

    reference_timings, refs = {}, {}
    for name, smiles in (("test", test), ("test_scaffolds", test_sf)):
        timing: dict = {}
        cached = M.ReferenceStats.load(cache_dir, M.smiles_sha256(smiles)) is not None
        t = time.perf_counter()
        refs[name] = M.reference_stats(smiles, cache_dir=cache_dir, progress=progress, n_jobs=args.n_jobs,
                                       device=args.device, timings=timing)
        reference_timings[name] = {"cached": cached, "wall_s": time.perf_counter() - t, **timing}
        print(f"reference {name}: {reference_timings[name]}", file=sys.stderr)

    canonical_cached = (cache_dir / M.canonical_cache_name(train)).is_file()
    timings: dict = {}
    t = time.perf_counter()
    metrics = M.moses_metrics(sample, train=None if args.no_novelty else train, test=refs["test"],
                              test_scaffolds=refs["test_scaffolds"], k=(1000, 10000), n_jobs=args.n_jobs,
                              progress=progress, device=args.device, cache_dir=cache_dir, timings=timings)
    metrics_wall = time.perf_counter() - t

    controls = None if args.no_controls else sample_size_controls(
        train, test, refs["test"], args.n_jobs, args.seed, progress)

    # One-time costs of an earlier run that computed what this one read from the cache.
    previous = RESULTS_DIR / f"{args.name}.json"
    first_run = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        first_run = old.get("first_run") or {}
        if not first_run and not all(r.get("cached") for r in old.get("reference_timings", {}).values()):
            first_run = {k: old[k] for k in ("reference_timings", "timings", "date", "loadavg_start") if k in old}

    result = {
        "genforge": metrics, "controls": controls, "first_run": first_run, "published": PUBLISHED, "tolerance": TOLERANCE, "source": SOURCE,
        "samples": args.samples, "seed": args.seed, "n_jobs": args.n_jobs, "device": args.device,
        "test_size": len(test), "test_scaffolds_size": len(test_sf), "train_size": len(train),
        "timings": timings, "metrics_wall_s": metrics_wall,
        "novelty_source": ("read from the cache" if canonical_cached else
                           f"{len(train):,} SMILES canonicalized, then cached"), "reference_timings": reference_timings,
        "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(), "peak_rss_mib": peak_rss_mib(),
        "rdkit": rdkit.__version__, "fcd_torch": _version("fcd_torch"), "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    write(args.name, json.loads(json.dumps(result, default=float)), render(result))


def build_shipped(test, test_sf, train, cache_dir: Path, n_jobs: int, progress: bool) -> None:
    from genforge.metrics.molecules import reference, shipped, smiles_sha256

    folder = Path(reference.__file__).resolve().parents[2] / "weights"
    path = reference.build_shipped({"test": test, "test_scaffolds": test_sf}, train, folder,
                                   cache_dir=cache_dir, n_jobs=n_jobs, progress=progress)
    manifest = json.loads(path.with_suffix(".json").read_text())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; {manifest['train']['changed']:,} of "
          f"{manifest['train']['n']:,} training rows change under RDKit {manifest['versions']['rdkit']}); "
          f"commit it with {path.with_suffix('.json').name}", file=sys.stderr)
    if shipped.load_set(smiles_sha256(test), manifest["versions"], folder) is None:
        raise SystemExit(f"{path} does not read back")


def first_score(n: int, seed: int, test, test_sf, train, cache_dir: Path, n_jobs: int, progress: bool) -> None:
    """The fresh-machine path (empty cache, shipped bundle) timed, then checked number by number
    against the computed path (statistics computed from the reference files, in ``cache_dir``)."""
    import tempfile

    from genforge.metrics import molecules as M

    rng = np.random.default_rng(seed)
    sample = [train[i] for i in rng.choice(len(train), size=n, replace=False)]
    loadavg_start = os.getloadavg()
    parts: dict = {}
    with tempfile.TemporaryDirectory() as empty:
        t0 = time.perf_counter()
        refs = {}
        for name, smiles in (("test", test), ("test_scaffolds", test_sf)):
            t = time.perf_counter()
            refs[name] = M.reference_stats(smiles, cache_dir=empty, progress=progress, n_jobs=n_jobs)
            parts[f"reference {name} (shipped + fingerprints)"] = time.perf_counter() - t
        timings: dict = {}
        t = time.perf_counter()
        fresh = M.moses_metrics(sample, train, refs["test"], refs["test_scaffolds"], n_jobs=n_jobs,
                                progress=progress, cache_dir=empty, timings=timings)
        parts["moses_metrics (novelty from the shipped training rows)"] = time.perf_counter() - t
        total = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as nothing:  # no bundle here: the computed path
        os.environ["GENFORGE_SHIPPED_DIR"] = nothing
        computed_refs = [M.reference_stats(s, cache_dir=cache_dir, progress=progress, n_jobs=n_jobs)
                         for s in (test, test_sf)]
        computed = M.moses_metrics(sample, train, *computed_refs, n_jobs=n_jobs, progress=progress,
                                   cache_dir=cache_dir)
        del os.environ["GENFORGE_SHIPPED_DIR"]
    diffs = {k: abs(fresh[k] - computed[k]) for k in fresh if isinstance(fresh[k], float)
             and not (math.isnan(fresh[k]) and math.isnan(computed[k]))}
    result = {"samples": n, "seed": seed, "n_jobs": n_jobs, "parts_s": parts, "total_s": total,
              "metrics_timings": timings, "fresh": fresh, "computed": computed,
              "max_abs_difference": max(diffs.values()), "differences": diffs,
              "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(), "machine": machine(),
              "peak_rss_mib": peak_rss_mib(), "date": time.strftime("%Y-%m-%d")}
    lines = ["# `genforge metrics molecules` on a fresh machine", "",
             f"{n:,} MOSES training SMILES (seed {seed}) scored with an empty cache folder: reference "
             f"statistics from the shipped bundle (fingerprints recomputed), novelty from its changed training "
             f"rows; {n_jobs} processes, load average {loadavg_start[0]:.1f} at start; {result['machine']['cpu']}.",
             "", "| part | seconds |", "| --- | --- |",
             *(f"| {k} | {v:.1f} |" for k, v in parts.items()), f"| **first number, in all** | **{total:.1f}** |",
             "", f"Largest absolute difference from the computed path over all {len(diffs)} numbers: "
             f"{result['max_abs_difference']:.2e}."]
    write("moses_first_score", json.loads(json.dumps(result, default=float)), "\n".join(lines))


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
