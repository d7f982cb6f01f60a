"""What the domain classifier says about a set of samples: class balance and label agreement."""

from __future__ import annotations

import math

import torch

from genforge import GenforgeError


def class_histogram(probs: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned (argmax) to each class: (N, K) probabilities -> (K,)."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise GenforgeError(f"class probabilities must be (N, K) with N > 0, got {tuple(probs.shape)}")
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    return counts / counts.sum()


def histogram_entropy(hist: torch.Tensor) -> tuple[float, float]:
    """Entropy (nats) of a class histogram and its ratio to the maximum log K.

    A mode-collapsed generator concentrates on few classes: normalized entropy well
    below that of the real data (about 1 for balanced datasets) flags it.
    """
    p = hist[hist > 0].double()
    h = float(-(p * p.log()).sum())
    return h, h / math.log(hist.numel()) if hist.numel() > 1 else 0.0


def label_agreement(probs: torch.Tensor, requested: torch.Tensor) -> float:
    """Fraction of class-conditional samples the classifier assigns to the requested class
    (chance is 1 / K)."""
    if probs.shape[0] != requested.shape[0]:
        raise GenforgeError(f"{probs.shape[0]} samples but {requested.shape[0]} requested labels")
    return float((probs.argmax(1).cpu() == requested.cpu()).double().mean())
