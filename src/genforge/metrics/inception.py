"""Standard Inception FID (Heusel et al. 2017) through torchmetrics, for users who have the weights.

genforge cannot download the Inception network offline and does not ship it, so
this is opt-in: pass the path of torch-fidelity's ``pt_inception-2015-12-05`` weights
file. Images go in as [0, 1]; grayscale is repeated to 3 channels and torchmetrics
resizes to 299x299. The number is comparable with published FIDs only for the
same dataset, resolution and sample count.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genforge import GenforgeError


def inception_fid(real01: torch.Tensor, fake01: torch.Tensor, weights_path: str | Path,
                  batch_size: int = 100) -> float:
    """FID between two image sets (N, C, H, W) in [0, 1] with Inception-v3 pool3 features."""
    path = Path(weights_path)
    if not path.is_file():
        raise GenforgeError(f"Inception weights '{path}' not found; pass the path of torch-fidelity's "
                            "pt_inception-2015-12-05 .pth file")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise GenforgeError("Inception FID needs torchmetrics and torch-fidelity: "
                            "pip install 'genforge[inception]'") from None
    try:
        metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                          feature_extractor_weights_path=str(path))
    except (ModuleNotFoundError, RuntimeError, OSError) as e:
        raise GenforgeError(f"could not build the Inception network ({str(e).splitlines()[0]}); "
                            "pip install 'genforge[inception]' and check the weights file") from None
    for images, real in ((real01, True), (fake01, False)):
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size].float().cpu()
            metric.update(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, real=real)
    return float(metric.compute())
