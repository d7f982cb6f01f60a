"""Frechet ChemNet Distance (Preuer et al. 2018): ChemNet's activation moments, merged
chunk by chunk, and the Frechet distance between two sets of moments.

fcd-torch's port of ChemNet (as MOSES uses) is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Sequence

import numpy as np

from genforge import GenforgeError
from genforge.metrics.molecules.chem import process_pool, progress_bar, quiet_rdkit, require_rdkit


@functools.lru_cache(maxsize=4)
def _chemnet(device: str):
    from fcd_torch import FCD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FCD(device=device, n_jobs=1)


def _chemnet_moments(smiles: Sequence[str], device: str = "cpu", batch_size: int = 512,
                     loader_workers: int = 0) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (512,), centred scatter (512, 512)) of ChemNet activations of one chunk,
    in float64: the unit of work of :func:`fcd_stats`, in this process or a pool worker."""
    model = _chemnet(device)
    model.n_jobs, model.batch_size = loader_workers, batch_size
    with quiet_rdkit(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fcd-torch's np.row_stack
        act = np.asarray(model.get_predictions(list(smiles)), dtype=np.float64)  # (chunk, 512)
    mean = act.mean(0)
    centred = act - mean
    return len(act), mean, centred.T @ centred


def _merge_moments(a, b):
    """Combine two (count, mean, scatter) triples exactly (Chan, Golub & LeVeque 1979)."""
    (na, ma, sa_), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa_ + sb + np.outer(delta, delta) * (na * nb / n)


def fcd_stats(smiles: Sequence[str], n_jobs: int = 1, device: str = "cpu", batch_size: int = 512,
              progress: bool = False, pool=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean (512,) and covariance (512, 512) of ChemNet's penultimate activations over
    ``smiles`` (Preuer et al. 2018), through fcd-torch's port of ChemNet (as MOSES).

    Activations are reduced chunk by chunk to float64 means and centred scatter matrices,
    merged exactly, so memory stays at one chunk (all of 176,000 x 512 would be 360 MB) and
    the result equals ``np.cov`` of all activations. On the CPU with ``n_jobs`` > 1 the
    chunks go to ``n_jobs`` single-threaded processes (or ``pool``'s): ChemNet's LSTMs make
    88 small sequential steps per batch, and on a busy 2-core machine one thread ran them
    2.5x faster than two fighting over the cores. On CUDA the model runs here and
    ``n_jobs`` processes prepare its one-hot inputs (fcd-torch's DataLoader).
    """
    require_rdkit(fcd=True)
    smiles = list(smiles)
    if len(smiles) < 2:
        raise GenforgeError(f"FCD needs at least 2 valid molecules, got {len(smiles)}")
    device = str(device)
    parallel = device == "cpu" and (n_jobs > 1 or pool is not None)
    chunk = 1024 if parallel else 8192
    chunks = [smiles[i:i + chunk] for i in range(0, len(smiles), chunk)]
    bar = progress_bar(None, len(smiles), "ChemNet", progress)
    total = None
    with contextlib.ExitStack() as stack:
        if parallel:
            pool = pool or stack.enter_context(process_pool(n_jobs))
            parts = pool.imap_unordered(functools.partial(_chemnet_moments, batch_size=batch_size), chunks)
        else:
            loader_workers = n_jobs if n_jobs > 1 else 0
            parts = (_chemnet_moments(c, device, batch_size, loader_workers) for c in chunks)
        for part in parts:
            total = part if total is None else _merge_moments(total, part)
            bar.update(part[0])
    bar.close()
    n, mean, scatter = total
    return mean, scatter / (n - 1)


def frechet(mu1, sigma1, mu2, sigma2) -> float:
    """:func:`~genforge.metrics.frechet.frechet_from_stats` with BLAS held to one thread when
    threadpoolctl is there: ``scipy.linalg.sqrtm`` of 512 x 512 makes many small BLAS calls,
    and on a loaded 2-core machine two OpenBLAS threads took 16 s where one took 0.3 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limit = contextlib.nullcontext()
    else:
        limit = threadpool_limits(1, user_api="blas")
    from genforge.metrics.frechet import frechet_from_stats  # here: it imports scipy

    with limit:
        return frechet_from_stats(mu1, sigma1, mu2, sigma2)


def fcd(gen_smiles: Sequence[str], ref_stats, n_jobs: int = 1, device: str = "cpu",
        batch_size: int = 512, progress: bool = False) -> float:
    """Frechet ChemNet Distance (Preuer et al. 2018) of ``gen_smiles`` to a reference given
    as a :class:`ReferenceStats` or a ``(mu, sigma)`` pair; the Frechet distance itself is
    genforge's :func:`~genforge.metrics.frechet.frechet_from_stats`."""
    mu_ref, sigma_ref = (ref_stats if isinstance(ref_stats, tuple)
                         else (ref_stats.fcd_mu, ref_stats.fcd_sigma))
    mu, sigma = fcd_stats(gen_smiles, n_jobs=n_jobs, device=device, batch_size=batch_size,
                          progress=progress)
    return frechet(mu, sigma, mu_ref, sigma_ref)
