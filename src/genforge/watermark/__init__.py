"""Watermarks and their keys.

``keys``  the run-local secret (RUN/watermark.key, 0600, made at first use, never printed) and its
          public fingerprint.
``text``  the soft red/green-list watermark of Kirchenbauer et al. 2023 (arXiv 2301.10226) as a pure
          logits hook, and its z-test detector.
``image`` image marks (another module; imported lazily by ``genforge detect``).

Nothing is imported here eagerly, so ``import genforge.watermark.keys`` stays cheap.
"""

from genforge.families.base import SampleOption

# One `--no-watermark` for every modality that marks its samples (text, images), declared once so
# the CLI has one definition. Molecule runs declare none: a SMILES string is too short and too
# constrained (little entropy per token) to hold a statistical mark, so they are never marked.
NO_WATERMARK = SampleOption("no_watermark", "do not watermark these samples (marked by default with the "
                                            "run's key, RUN_DIR/watermark.key; molecule runs are never "
                                            "marked: a SMILES string holds too little entropy)", flag=True)
