"""Families: how a model learns and generates. A plain dict maps names to classes."""

from __future__ import annotations

import importlib

from genforge import GenforgeError

# name -> "module:Class"; imported lazily so `genforge list` stays fast.
FAMILIES = {
    "gpt": "genforge.families.gpt:GPT",
    "vae": "genforge.families.vae:VAE",
}


def family_class(name: str):
    if name not in FAMILIES:
        raise GenforgeError(f"unknown family '{name}'; choose one of: {', '.join(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)
