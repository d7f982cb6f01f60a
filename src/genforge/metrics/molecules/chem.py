"""RDKit access shared by every molecule path: one :func:`require_rdkit`, quiet parsing with
a length limit, canonical SMILES, and the process pool the metrics share.

RDKit and tqdm are imported inside the functions that need them, so importing this module
never fails; :func:`require_rdkit` turns RDKit's absence into one line.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Callable, Sequence

import torch

from genforge import GenforgeError

INSTALL_HINT = "pip install 'genforge[molecules]'"
# Longer SMILES are not parsed and count as invalid. Bemis-Murcko scaffolds grow steeply with
# size: a 2,000-atom chain took 9 s and a 10,000-character SMILES hung `metrics molecules`.
# The longest MOSES molecule is 57 tokens (about 80 characters), GuacaMol's limit is 100.
MAX_SMILES_LENGTH = 500


def require_rdkit(fcd: bool = False):
    """RDKit's ``Chem`` module, or a one-line :class:`GenforgeError` naming the extra that
    installs it (with ``fcd``, fcd-torch must be there too), instead of an ImportError from
    deep inside a metric."""
    try:
        from rdkit import Chem
    except ImportError:
        need = "RDKit and fcd-torch" if fcd else "RDKit"
        raise GenforgeError(f"this needs {need}, which is not installed: {INSTALL_HINT}") from None
    if fcd:
        try:
            import fcd_torch  # noqa: F401
        except ImportError:
            raise GenforgeError(f"this needs fcd-torch, which is not installed: {INSTALL_HINT}") from None
    return Chem


@contextlib.contextmanager
def quiet_rdkit():
    """RDKit prints one line per unparsable SMILES; a model's invalid samples are expected,
    so they are counted, not printed."""
    from rdkit import rdBase

    blocker = rdBase.BlockLogs()
    try:
        yield
    finally:
        del blocker


def too_long(smiles) -> bool:
    """True for a string over :data:`MAX_SMILES_LENGTH` characters (never parsed)."""
    return isinstance(smiles, str) and len(smiles) > MAX_SMILES_LENGTH


def mol_from_smiles(smiles):
    """RDKit molecule of a SMILES string, or None when it does not parse or sanitize (as
    MOSES's ``get_mol``: the empty string is invalid, although RDKit parses it), or is longer
    than :data:`MAX_SMILES_LENGTH` characters."""
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles or too_long(smiles):
        return None
    mol = Chem.MolFromSmiles(smiles)  # sanitizes; None on failure
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonicalize(smiles: str) -> str | None:
    """RDKit canonical (isomeric) SMILES, or None when RDKit cannot parse ``smiles``."""
    Chem = require_rdkit()
    mol = mol_from_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def rdkit_version() -> str | None:
    """The installed RDKit's version, or None without RDKit (a key of every cache of its output)."""
    try:
        import rdkit
    except ImportError:
        return None
    return rdkit.__version__


def canonical_smiles(smiles: str) -> str | None:
    """:func:`canonicalize` without RDKit's log line for an invalid string: the key under which
    two spellings of one molecule (``OCC``, ``CCO``, ``C(O)C``) are the same molecule."""
    require_rdkit()
    with quiet_rdkit():
        return canonicalize(smiles)


# --------------------------------------------------------------------------- the pool


def _worker_init() -> None:
    import signal

    from rdkit import RDLogger

    # Ctrl-C is the parent's to handle (it terminates the pool); a worker that took it too
    # would print its own KeyboardInterrupt traceback after genforge's one-line message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)


def progress_bar(iterable, total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, file=sys.stderr,
                unit="mol", dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def process_pool(n_jobs: int):
    """A process pool of ``n_jobs`` workers, or None to run in this process.

    Workers receive SMILES strings, never RDKit molecules: pickling a Mol costs about as
    much as parsing it again, so each worker parses and computes everything it needs.
    """
    if n_jobs <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ctx.Pool(n_jobs, initializer=_worker_init)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def map_molecules(fn: Callable, items: Sequence, pool, desc: str = "", progress: bool = False,
                  chunksize: int = 256) -> list:
    """``[fn(x) for x in items]`` in order, across ``pool`` when there is one. Chunks shrink
    for small sets (at least 16 chunks), so the bar moves as molecules finish."""
    if pool is None:
        with quiet_rdkit():
            return [fn(x) for x in progress_bar(items, len(items), desc, progress)]
    chunksize = max(1, min(chunksize, len(items) // 16))
    it = pool.imap(fn, items, chunksize=chunksize)
    return list(progress_bar(it, len(items), desc, progress))
