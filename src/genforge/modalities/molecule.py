"""Molecules: SMILES sequences per molecule; samples are SMILES strings; eval is the MOSES table.

Any family that models token sequences works here: the GPT (``data_needs`` gives a
``block_size``) and the sequence VAE (a ``max_length``). Samples are written one SMILES
per line (``.smi``/``.txt``), as a CSV, or drawn as a molecule grid with RDKit (``.png``).
``genforge eval`` samples ``--num-samples`` molecules (30,000 as in MOSES) and scores them
with :mod:`genforge.metrics.molecules` against the dataset's test split (MOSES: test and
test_scaffolds; a user file: its validation molecules), plus the held-out token loss.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.atomic import atomic_write_text
from genforge.families.base import TEMPERATURE, LatentVariableModel, SampleOption
from genforge.modalities import EVAL_NUM_SAMPLES, FILTER, PRIVACY_FILTER, Modality
from genforge.provenance import SIGN_KEYS, SIGN_OPTIONS, sample_stamp

MAX_DRAWN = 100  # molecules in one PNG grid


class MoleculeModality(Modality):
    name = "molecule"
    unit = "molecules"
    data_fields = frozenset({"smiles_column", "canonicalize", "max_molecules"})
    sample_options = (
        TEMPERATURE,  # seqvae runs add --around SMILES and --radius (declared by the family)
        *SIGN_OPTIONS,  # a .png grid can be signed
        FILTER,
        PRIVACY_FILTER,
    )
    eval_options = (
        EVAL_NUM_SAMPLES,
        SampleOption("workers", "processes for the RDKit metrics (default 2)", int, 2, metavar="N",
                     minimum=1),
    )

    def load(self, data_cfg, needs: dict[str, Any]):
        from genforge.data.smiles import load_molecules

        if "block_size" in needs:
            max_len = needs["block_size"] + 1  # inputs are the framed sequence minus its last token
        elif "max_length" in needs:
            max_len = needs["max_length"]
        else:
            raise GenforgeError(f"dataset '{data_cfg.name}' holds molecules (SMILES); this family does not "
                                "model token sequences (use gpt or seqvae)")
        return load_molecules(data_cfg, max_len)

    def count(self, batch) -> int:
        return batch["x"].shape[0]

    def write_preview(self, sample: str, path_stem: Path, data) -> Path:
        path = path_stem.with_suffix(".smi")
        atomic_write_text(path, sample if sample.endswith("\n") else sample + "\n")
        return path

    # -- sample ------------------------------------------------------------------------
    def sample_command(self, run, generator, *, num_samples, out, batch_size, seed, temperature,
                       interpolate=None, interp_points=8, interp_method="slerp", filter=None, privacy_filter=None,
                       **family_options) -> None:
        if interpolate and not isinstance(run.model, LatentVariableModel):
            raise GenforgeError(f"--interpolate needs a latent-variable run (seqvae); this is a "
                                f"{run.config.family} run")
        signing = {k: family_options.pop(k, None) for k in SIGN_KEYS}
        stamp = sample_stamp(run, generator, dict(num_samples=num_samples, out=out, batch_size=batch_size,
                                                  seed=seed, temperature=temperature, interpolate=interpolate,
                                                  interp_points=interp_points, interp_method=interp_method,
                                                  **family_options, **signing),
                             png=out is not None and Path(out).suffix.lower() == ".png")
        temperature = 1.0 if temperature is None else temperature
        if not math.isfinite(temperature) or temperature < 0:
            raise GenforgeError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
        # the family resolves its own options (seqvae: --around SMILES, --radius)
        plan = run.model.plan_sampling(family_options, num_samples, SmilesRefs(run))
        if interpolate and plan.options:
            given = " ".join(f"--{k.replace('_', '-')}" for k in plan.options)
            raise GenforgeError(f"give either --interpolate or {given}, not both")
        from genforge.audit.privacy import sample_filters

        screens = sample_filters(run, filter, privacy_filter)  # loaded before sampling: fails fast
        suffix = Path(out).suffix.lower() if out else None
        if suffix not in (None, ".smi", ".txt", ".csv", ".png"):
            raise GenforgeError(f"--out {out}: molecules are written as .smi, .txt, .csv or a .png grid")
        if interpolate:
            if num_samples is not None:
                raise GenforgeError("--interpolate draws --interp-points molecules; drop --num-samples")
            a, b = (_encode_one(run, s) for s in interpolate)
            ids = run.model.interpolate(*a, *b, interp_points, interp_method)
        else:
            n = 10 if num_samples is None else num_samples
            if suffix == ".png" and n > MAX_DRAWN:
                raise GenforgeError(f"{n} molecules do not fit one PNG grid (at most {MAX_DRAWN}); "
                                    "write them with --out FILE.smi")
            ids = draw(run.model, n, generator, batch_size, temperature, progress=True, **plan.options)
        smiles = [run.tokenizer.decode(row) for row in ids]
        if screens:  # before anything is printed or written; counted on stderr and in provenance
            from genforge.filters import screen, summary

            kept, blocked = screen(smiles, screens, "molecules")
            stamp.record["screening"] = summary(screens, len(smiles), blocked)
            smiles = [smiles[i] for i in kept]
        if out is None:
            print("\n".join(smiles))
            return
        path = Path(out)
        if suffix == ".png":
            invalid = draw_grid(smiles, path, stamp=stamp)
            print(f"wrote {len(smiles)} molecules to {path}: {len(smiles) - invalid} drawn, "
                  f"{invalid} invalid SMILES shown as empty cells with their string")
            return
        if suffix == ".csv":
            atomic_write_text(path, "SMILES\n" + "".join(f'"{s}"\n' for s in smiles))
        else:
            atomic_write_text(path, "".join(s + "\n" for s in smiles))
        stamp.sidecar(path)  # provenance beside the file: a comment line would break SMILES readers
        print(f"wrote {len(smiles)} molecules to {path}")

    # -- eval --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, run, num_samples: int | None = None, workers: int = 2, max_batches: int | None = None,
                 batch_size: int = 500, seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """The MOSES metrics of ``num_samples`` molecules drawn at temperature 1, and the token
        loss on held-out molecules (MOSES test, else the validation split)."""
        from genforge.metrics.molecules import moses_metrics, reference_stats, require_rdkit

        require_rdkit(fcd=True)
        data = self.load(run.config.data, type(run.model).data_needs(run.model_config))
        if data.tokenizer.itos != run.tokenizer.itos:
            raise GenforgeError(f"dataset '{run.config.data.name}' changed since this run was trained "
                                "(its SMILES vocabulary differs); evaluate on the original data")
        # The test split's loss covers the molecules the model can score (load_molecules reports
        # the rest); should none be left, the validation split stands in, and "heldout" says so.
        use_test = data.test is not None and len(data.test) > 0
        heldout = data.test if use_test else data.val
        scores = heldout_scores(run.model, heldout, max_batches or 40, batch_size)
        n = 30000 if num_samples is None else num_samples
        device = next(run.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        ids = draw(run.model, n, generator, batch_size, 1.0, progress)
        samples = [run.tokenizer.decode(row) for row in ids]
        if data.test_smiles is not None:
            refs = {"Test": data.test_smiles, "TestSF": data.test_scaffolds_smiles}
        else:  # a user file: its validation molecules are the only held-out set
            refs = {"Test": [data.decode(data.val.sequence(i)) for i in range(len(data.val))]}
        cache = metrics_cache()
        stats = {k: reference_stats(v, cache, progress=progress, n_jobs=workers) for k, v in refs.items() if v}
        report = moses_metrics(samples, data.train_smiles, stats["Test"], stats.get("TestSF"),
                               n_jobs=workers, progress=progress, cache_dir=cache)
        report.update({**scores, "heldout": "test" if use_test else "val", "step": run.step})
        return report


def score_smiles_file(path: str, against: str = "moses", train: str | None = None, column: str | None = None,
                      num_samples: int | None = None, workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """`genforge metrics molecules`: the MOSES metrics of any SMILES file. Every row counts,
    unparsable and empty ones included (they lower validity); references are cleaned."""
    from genforge.data.smiles import MOSES_FILES, clean_smiles, moses_file, read_smiles_file
    from genforge.metrics.molecules import moses_metrics, reference_stats, require_rdkit

    require_rdkit(fcd=True)
    if workers < 1:
        raise GenforgeError(f"--workers must be at least 1, got {workers}")
    if num_samples is not None and num_samples < 1:
        raise GenforgeError(f"--num-samples must be at least 1, got {num_samples}")
    if not Path(path).is_file():
        raise GenforgeError(f"no such SMILES file: {path}")
    samples = read_smiles_file(Path(path), column, "--column")[:num_samples]
    if not samples:
        raise GenforgeError(f"{path} holds no rows to score")
    if against == "moses":
        refs = {k: read_smiles_file(moses_file(k)) for k in MOSES_FILES}
        train_smiles = refs.pop("train") if train is None else None
        refs = {"Test": refs["test"], "TestSF": refs["test_scaffolds"]}
    else:
        if not Path(against).is_file():
            raise GenforgeError(f"--against {against}: neither 'moses' nor an existing SMILES file")
        refs = {"Test": clean_smiles(read_smiles_file(Path(against), column, "--column"), True).smiles}
        train_smiles = None
    if train is not None:
        train_smiles = clean_smiles(read_smiles_file(Path(train), column, "--column"), True).smiles
        if not train_smiles:  # novelty against nothing is 1.0 whatever the samples are
            raise GenforgeError(f"--train {train} holds no valid molecules, so novelty would mean nothing; "
                                "name the file the model was trained on")
    cache = metrics_cache()
    stats = {k: reference_stats(v, cache, progress=progress, n_jobs=workers) for k, v in refs.items()}
    return moses_metrics(samples, train_smiles, stats["Test"], stats.get("TestSF"), n_jobs=workers,
                         progress=progress, cache_dir=cache)


def metrics_cache() -> Path:
    """Where reference statistics (ChemNet moments, fingerprints of 176k test molecules: minutes
    to compute) and canonical training sets are kept, keyed by the sha256 of their SMILES and
    the versions of RDKit, fcd-torch, torch and numpy that computed them."""
    from genforge.data.locate import cache_dir

    return cache_dir() / "moses"


def draw(model, n: int, generator: torch.Generator, batch_size: int, temperature: float,
         progress: bool, **options) -> list[list[int]]:
    """``n`` token-id samples in batches of ``batch_size`` (a progress bar when there are several);
    ``options`` are the family's own, resolved by its ``plan_sampling``."""
    out: list[list[int]] = []
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc="sample", unit="batch", disable=not progress or len(starts) < 2,
                  file=sys.stderr):
        out += model.sample(min(batch_size, n - s), generator, temperature=temperature, **options)
    return out


@torch.no_grad()
def heldout_scores(model, split, max_batches: int, batch_size: int) -> dict[str, float]:
    """The family's own validation numbers (``model.evaluate``) on at most ``max_batches``
    batches of ``split``, prefixed ``heldout_``: a GPT's per-token cross-entropy, a sequence
    VAE's per-molecule bound and its parts. Each family says what its numbers mean."""
    device = next(model.parameters()).device
    n = len(split)
    starts = list(range(0, n, batch_size))[:max_batches]
    batches = ({k: v.to(device) for k, v in split.get(torch.arange(s, min(s + batch_size, n))).items()}
               for s in starts)
    was_training = model.training
    model.eval()
    try:
        return {f"heldout_{k}": v for k, v in model.evaluate(batches).items()}
    finally:
        model.train(was_training)


class SmilesRefs:
    """What a family's ``plan_sampling`` may turn into tensors on a molecule run: a SMILES
    string, framed and canonicalized as the training data was (``encode``)."""

    what = "SMILES string"  # what --around takes here, for the family's messages

    def __init__(self, run):
        self.run = run

    def encode(self, smiles: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _encode_one(self.run, smiles)


def _encode_one(run, smiles: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One SMILES -> framed ids (1, T) and mask, canonicalized as the training data was."""
    from genforge.data.sequences import pad_sequences
    from genforge.metrics.molecules import quiet_rdkit, require_rdkit
    from genforge.metrics.molecules.chem import MAX_SMILES_LENGTH, too_long

    Chem = require_rdkit()
    if too_long(smiles):  # RDKit crashed (segfault) writing a 20,000-atom chain back out
        raise GenforgeError(f"SMILES {smiles[:40]!r}... has {len(smiles)} characters; genforge parses at most "
                            f"{MAX_SMILES_LENGTH}")
    with quiet_rdkit():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise GenforgeError(f"RDKit cannot parse SMILES {smiles!r}")
    tok = run.tokenizer
    row = [tok.bos_id, *tok.encode(Chem.MolToSmiles(mol)), tok.eos_id]
    max_len = run.spec.max_length
    if max_len is not None and len(row) > max_len:
        raise GenforgeError(f"SMILES {smiles!r} has {len(row)} tokens with <bos>/<eos>; this model takes "
                            f"at most {max_len}")
    ids, mask = pad_sequences([row], tok.pad_id)
    device = next(run.model.parameters()).device
    return ids.to(device), mask.to(device)


def draw_grid(smiles: list[str], path: Path, per_row: int = 8, stamp=None) -> int:
    """An RDKit drawing of the molecules, legend = SMILES; unparsable ones are drawn empty with
    their string as the legend, so the grid shows failures too. Returns how many were invalid."""
    from genforge.metrics.molecules import mol_from_smiles, quiet_rdkit, require_rdkit

    Chem = require_rdkit()
    from rdkit.Chem import Draw

    with quiet_rdkit():
        parsed = [mol_from_smiles(s) for s in smiles]
    mols = [m or Chem.Mol() for m in parsed]
    legends = [s if len(s) <= 40 else s[:37] + "..." for s in smiles]
    image = Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=(200, 200), legends=legends)
    from genforge.provenance import write_png

    write_png(image, path, stamp)  # with provenance (and a signature) when stamped
    return sum(m is None for m in parsed)


MOLECULE = MoleculeModality()
