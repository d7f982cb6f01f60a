"""Molecules as SMILES strings: the regex tokenizer, datasets, and per-molecule sequences.

Sources:

- ``moses``: the MOSES benchmark splits (Polykovskiy et al. 2020; molecules from ZINC
  Clean Leads): train 1,584,663, test 176,074, test_scaffolds 176,226. Found at
  ``$GENFORGE_DATA/moses/*.csv.gz``, else inside an installed ``molsets`` package
  (``moses/dataset/data/``), else downloaded from the MOSES repository and checked
  against its sha256.
- any ``.smi`` file (the first whitespace-separated field of each line) or ``.csv`` /
  ``.csv.gz`` file (the column ``data.smiles_column``, else one named SMILES/smiles).

Every molecule becomes its own sequence ``<bos> tokens <eos>`` (see
:mod:`genforge.data.sequences`), stored packed: one flat uint8 array of token ids
plus offsets, so 1.58M molecules take ~60 MB instead of ~0.5 GB of Python lists.

User files are canonicalized with RDKit (``data.canonicalize``); rows RDKit cannot
parse, or that are empty, are counted and reported with examples, never silently
dropped. The MOSES files are already canonical RDKit SMILES, so their preset skips
that step and trains without RDKit.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.atomic import atomic_write
from genforge.data.locate import cache_dir, cache_write_error, locate
from genforge.data.sequences import pad_sequences
from genforge.data.smiles_tokenizer import SMILES_REGEX, SmilesTokenizer, tokenize
from genforge.data.spec import DataSpec

SMILES_SUFFIXES = {".smi", ".smiles", ".csv"}

MOSES_URL = "https://github.com/molecularsets/moses/raw/master/moses/dataset/data/"
MOSES_FILES = {
    "train": ("train.csv.gz", "786f0313aa6b9ba5514df685f885742a70ea8d86f1a4fa48115f7f80a634265c"),
    "test": ("test.csv.gz", "f896fbf3764f88d94670b9959e5872c600c12152a18233823e820761b7a791b2"),
    "test_scaffolds": ("test_scaffolds.csv.gz",
                       "adffb2192c1bfe31ab0e13154d4af19a37dc18bdbf3cd7b4491e04405128adde"),
}
MOLECULE_DATASETS = {
    "moses": "MOSES benchmark SMILES (ZINC Clean Leads): 1.58M train, 176k test, 176k test_scaffolds "
             "($GENFORGE_DATA/moses, the molsets package, or download)",
}
# -- reading files ----------------------------------------------------------------------
def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # -sig: Excel's "CSV UTF-8" starts with a BOM


def read_smiles_file(path: Path, column: str | None = None, column_flag: str = "data.smiles_column") -> list[str]:
    """The SMILES strings of a .smi/.smiles or .csv(.gz) file, in file order, unvalidated.
    ``column_flag`` is how the caller's user names the column (``--column`` on the command
    line), for the error messages."""
    path = Path(path).expanduser()
    name_it = f"{column_flag} NAME" if column_flag.startswith("--") else f"{column_flag}=NAME"
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        with _open_text(path) as f:
            if suffixes.startswith(".csv"):
                reader = csv.DictReader(f)
                names = reader.fieldnames or []
                col = column or next((c for c in ("SMILES", "smiles", "Smiles") if c in names), None)
                if col is None or col not in names:
                    want = f"column '{column}'" if column else "SMILES column"
                    raise GenforgeError(f"{path} has no {want} (its columns: {', '.join(names) or 'none'}); "
                                        f"name it with {name_it}")
                return [(row.get(col) or "").strip() for row in reader]
            if column is not None:
                raise GenforgeError(f"{column_flag} applies to CSV files, not {path.name}")
            # .smi: SMILES is the first field; a title may follow after whitespace. No line is
            # skipped, not even one starting with '#': a model's broken sample must still count.
            return [line.split()[0] if line.strip() else "" for line in f]
    except (OSError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as e:
        raise GenforgeError(f"cannot read SMILES file {path}: {e}") from None


def moses_file(split: str) -> Path:
    """One MOSES split: $GENFORGE_DATA/moses, the molsets wheel, the cache, or a download."""
    name, sha = MOSES_FILES[split]
    spec = importlib.util.find_spec("moses")
    system = ()
    if spec is not None and spec.submodule_search_locations:
        system = tuple(str(Path(p) / "dataset" / "data") for p in spec.submodule_search_locations)
    return locate(f"moses/{name}", MOSES_URL + name, sha, system_dirs=system)


@dataclass
class Cleaned:
    """Kept SMILES plus what was left out and why, for the load report."""

    smiles: list[str]
    rejected: dict[str, list[str]] = field(default_factory=dict)  # reason -> examples (first 5)
    counts: dict[str, int] = field(default_factory=dict)  # reason -> count
    notes: list[str] = field(default_factory=list)  # what was not done (e.g. no RDKit check)

    def reject(self, reason: str, row: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.rejected.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(row)

    def report(self, source: str) -> str | None:
        if not self.counts and not self.notes:
            return None
        parts = [f"{reason}: {n} (e.g. {', '.join(repr(x) for x in self.rejected[reason][:3])})"
                 for reason, n in self.counts.items()]
        left_out = f"kept {len(self.smiles)} molecules, left out " + "; ".join(parts) if parts else ""
        return f"{source}: " + "; ".join(x for x in (left_out, *self.notes) if x)


def clean_smiles(rows: Sequence[str], canonicalize: bool, check: bool | None = None) -> Cleaned:
    """Drop (and count) empty, unparsable and untokenizable rows; canonicalize with RDKit.

    ``check`` (default: ``canonicalize``) parses every row with RDKit and leaves out the ones
    it cannot parse, without rewriting the others: a user's file is checked whatever the
    preset says about canonicalizing. Without RDKit a checked-only file loads unchecked and
    its report says so; canonicalizing needs RDKit.
    """
    from genforge.metrics.molecules.chem import (
        INSTALL_HINT,
        MAX_SMILES_LENGTH,
        quiet_rdkit,
        require_rdkit,
        too_long,
    )

    out = Cleaned([])
    check = canonicalize if check is None else check
    Chem = None
    if canonicalize:
        Chem = require_rdkit()
    elif check:
        try:
            Chem = require_rdkit()
        except GenforgeError:
            out.notes.append(f"rows not checked with RDKit, which is not installed ({INSTALL_HINT})")
    with quiet_rdkit() if Chem is not None else contextlib.nullcontext():
        for row in rows:
            if not row:
                out.reject("empty rows", row)
                continue
            if Chem is not None:
                if too_long(row):  # as in the metrics: RDKit took seconds on 10,000 atoms, crashed on 20,000
                    out.reject(f"rows longer than {MAX_SMILES_LENGTH} characters (not parsed)", row[:40] + "...")
                    continue
                mol = Chem.MolFromSmiles(row)
                if mol is None:
                    out.reject("rows RDKit cannot parse", row)
                    continue
                if canonicalize:
                    row = Chem.MolToSmiles(mol)
            if sum(map(len, SMILES_REGEX.findall(row))) != len(row):
                out.reject("rows with characters outside the SMILES grammar", row)
                continue
            out.smiles.append(row)
    return out


# -- packed per-molecule sequences --------------------------------------------------------
class PackedSequences:
    """Token-id sequences framed ``<bos> s <eos>``, packed flat; batches like
    :class:`genforge.data.sequences.SequenceSplit` (``x``, ``y``, ``mask``, each (B, T-1))."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, bos_id: int, eos_id: int, pad_id: int,
                 max_len: int | None = None):
        self.flat, self.offsets = flat, offsets  # sequence i is flat[offsets[i]:offsets[i+1]]
        self.bos_id, self.eos_id, self.pad_id, self.max_len = bos_id, eos_id, pad_id, max_len

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets) + 2  # framed: BOS and EOS included

    def sequence(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = [[self.bos_id, *self.sequence(int(i)), self.eos_id] for i in indices]
        ids, mask = pad_sequences(rows, self.pad_id, self.max_len)
        return {"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask[:, 1:]}

    def subset(self, indices: np.ndarray) -> PackedSequences:
        seqs = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in indices]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=self.flat.dtype)
        return PackedSequences(flat, offsets, self.bos_id, self.eos_id, self.pad_id, self.max_len)


def pack(token_lists: Sequence[Sequence[str]], tokenizer: SmilesTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Tokenized molecules -> (flat ids, offsets) for :class:`PackedSequences`."""
    lengths = np.fromiter((len(r) for r in token_lists), dtype=np.int64, count=len(token_lists))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.int32
    stoi = tokenizer.stoi
    flat = np.fromiter((stoi[t] for r in token_lists for t in r), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


@dataclass
class MoleculeData:
    """A run's molecules. ``train``/``val``/``test`` are :class:`PackedSequences`;
    ``*_smiles`` keep the strings for the metrics: ``train_smiles`` is the whole cleaned
    training split (novelty is measured against it, as MOSES does), the others are the
    reference sets (None for a user file, which ships no test split)."""

    spec: DataSpec
    tokenizer: SmilesTokenizer
    train: PackedSequences
    val: PackedSequences
    test: PackedSequences | None
    train_smiles: list[str]
    test_smiles: list[str] | None
    test_scaffolds_smiles: list[str] | None = None
    report: str | None = None  # what was left out while loading, and why

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def prompt_ids(self) -> list[int]:
        return [self.tokenizer.bos_id]


SPLIT_SEED = 20200101  # fixed: the validation split never changes between runs


def _load_sources(data_cfg) -> tuple[list[str], list[str] | None, list[str] | None, str | None]:
    """(train rows, test rows or None, test_scaffolds rows or None, load report)."""
    if data_cfg.name == "moses":
        splits = {k: read_smiles_file(moses_file(k)) for k in MOSES_FILES}
        cleaned = {k: clean_smiles(v, data_cfg.canonicalize) for k, v in splits.items()}
        notes = [c.report(f"moses/{k}") for k, c in cleaned.items()]
        report = "; ".join(n for n in notes if n) or None
        return cleaned["train"].smiles, cleaned["test"].smiles, cleaned["test_scaffolds"].smiles, report
    # A user's file is checked with RDKit on every preset (gpt-moses sets canonicalize=false
    # for MOSES's own canonical files, not for this one): unparsable rows are left out and reported.
    path = Path(data_cfg.name).expanduser()
    cleaned = clean_smiles(read_smiles_file(path, data_cfg.smiles_column), data_cfg.canonicalize, check=True)
    if not cleaned.smiles:
        raise GenforgeError(f"{path} holds no valid molecules ({cleaned.report(str(path)) or 'it has no rows'})")
    return cleaned.smiles, None, None, cleaned.report(str(path))


def _cache_key(data_cfg) -> str:
    """Hash of the source files' identity (path, size, mtime), the cleaning options and the
    RDKit version (another RDKit writes some canonical SMILES differently)."""
    from genforge.metrics.molecules.chem import rdkit_version

    if data_cfg.name == "moses":
        files = [moses_file(k) for k in MOSES_FILES]
    else:
        files = [Path(data_cfg.name).expanduser()]
    h = hashlib.sha256(f"v2:{data_cfg.canonicalize}:{data_cfg.smiles_column}:{rdkit_version()}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _cleaned_sources(data_cfg):
    """_load_sources, cached as JSON: canonicalizing 1.9M SMILES takes minutes, reading back seconds."""
    if data_cfg.name == "moses" and not data_cfg.canonicalize:  # no RDKit pass: nothing slow to keep
        return _load_sources(data_cfg)
    path = cache_dir() / "smiles" / f"{_cache_key(data_cfg)}.json.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            raw = json.load(f)
        return raw["train"], raw["test"], raw["test_scaffolds"], raw["report"]
    train, test, scaffolds, report = _load_sources(data_cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_write_error(path.parent, e) from None

    def write(f):
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz, \
                io.TextIOWrapper(gz, encoding="utf-8") as text:
            json.dump({"train": train, "test": test, "test_scaffolds": scaffolds, "report": report}, text)

    atomic_write(path, write)
    return train, test, scaffolds, report


def load_molecules(data_cfg, max_len: int) -> MoleculeData:
    """The dataset ``data_cfg.name`` as packed sequences of at most ``max_len`` framed tokens.

    Molecules longer than ``max_len`` (``<bos>`` and ``<eos>`` included) are left out of
    training and counted in the report; the validation split is a fixed-seed
    ``data.val_fraction`` of the training molecules. The test split's held-out loss leaves
    out (and reports) the same overlong molecules and those with tokens training never saw;
    the metrics' reference set (``test_smiles``) keeps every test molecule, as MOSES does.
    """
    all_train, test_smiles, scaffold_smiles, report = _cleaned_sources(data_cfg)
    train_smiles = all_train
    if data_cfg.max_molecules is not None and len(train_smiles) > data_cfg.max_molecules:
        keep = np.random.default_rng(SPLIT_SEED).permutation(len(train_smiles))[: data_cfg.max_molecules]
        train_smiles = [train_smiles[i] for i in np.sort(keep)]
    token_lists = [tokenize(x) for x in train_smiles]  # once: vocabulary and ids both come from it
    tokenizer = SmilesTokenizer(sorted(set().union(*token_lists)))
    flat, offsets = pack(token_lists, tokenizer)
    ids = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    everything = PackedSequences(flat, offsets, *ids, max_len=None)
    fits = np.flatnonzero(everything.lengths() <= max_len)
    if len(fits) < len(everything):
        longest = int(everything.lengths().max())
        note = (f"{len(everything) - len(fits)} training molecules longer than {max_len} tokens "
                f"(longest {longest}; raise model.block_size to keep them)")
        report = f"{report}; {note}" if report else note
    order = np.random.default_rng(SPLIT_SEED).permutation(fits)
    n_val = max(1, int(len(order) * data_cfg.val_fraction))
    if len(order) - n_val < 1:
        raise GenforgeError(f"dataset '{data_cfg.name}' has {len(order)} usable molecules: too few to "
                            f"hold out a {data_cfg.val_fraction:.0%} validation split")
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train = everything.subset(train_idx)
    val = everything.subset(val_idx)
    test = None
    if test_smiles is not None:
        test, note = _heldout_test(test_smiles, tokenizer, max_len)
        report = f"{report}; {note}" if report and note else report or note
    spec = DataSpec(modality="molecule", vocab_size=tokenizer.vocab_size, name=data_cfg.name,
                    special_ids={"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id},
                    max_length=max_len)
    if report:
        print(f"note: {report}", file=sys.stderr)
    return MoleculeData(spec, tokenizer, train, val, test, all_train, test_smiles, scaffold_smiles, report)


def _heldout_test(test_smiles: Sequence[str], tokenizer: SmilesTokenizer,
                  max_len: int) -> tuple[PackedSequences, str | None]:
    """The test molecules a model can score (only training tokens, at most ``max_len`` framed
    tokens), packed, and the report of those left out: a token the model never saw has no
    embedding, and a molecule longer than the context has no position for its last tokens."""
    kept = Cleaned([])
    rows = []
    for smiles in test_smiles:
        tokens = tokenize(smiles)
        if any(t not in tokenizer.stoi for t in tokens):
            kept.reject("with tokens training never saw", smiles)
        elif len(tokens) + 2 > max_len:
            kept.reject(f"longer than {max_len} tokens", smiles)
        else:
            kept.smiles.append(smiles)
            rows.append(tokens)
    ids = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    return PackedSequences(*pack(rows, tokenizer), *ids), kept.report("test split (held-out loss)")
