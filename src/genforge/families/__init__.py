"""Families: how a model learns and generates. A plain dict maps names to classes.

``family`` in a config is a registered name, or ``package.module:Class`` for a
family that lives in the user's own code (the test suite's toy family does this).
"""

from __future__ import annotations

import importlib

from genforge import GenforgeError

# name -> "module:Class"; imported lazily so `genforge list` stays fast.
FAMILIES = {
    "gpt": "genforge.families.gpt:GPT",
    "vae": "genforge.families.vae:VAE",
    "diffusion": "genforge.families.diffusion:Diffusion",
    "gan": "genforge.families.gan:GAN",
    "seqvae": "genforge.families.seqvae:SequenceVAE",
}


def family_class(name: str):
    from genforge.families.base import GenerativeModel

    target = FAMILIES.get(name, name)
    if ":" not in target:
        raise GenforgeError(f"unknown family '{name}'; choose one of: {', '.join(FAMILIES)} "
                            "(or package.module:Class)")
    module, cls = target.split(":", 1)
    try:
        found = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):  # the family's own module, not one it imports
            raise GenforgeError(f"family '{name}': no module '{module}' on the Python path") from None
        raise
    except AttributeError:
        raise GenforgeError(f"family '{name}': module '{module}' has no class '{cls}'") from None
    if not (isinstance(found, type) and issubclass(found, GenerativeModel)):
        raise GenforgeError(f"family '{name}' is not a genforge.families.base.GenerativeModel")
    return found


def build_model(family: str, model_cfg, spec):
    """The family's model for ``spec``, with frozen parts marked as such."""
    model = family_class(family)(model_cfg, spec)
    for part in model.frozen_parts().values():
        part.requires_grad_(False)
    return model.train()
