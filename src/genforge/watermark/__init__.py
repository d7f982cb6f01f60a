"""Watermarks and their keys.

``keys``  the run-local secret (RUN/watermark.key, 0600, made at first use, never printed) and its
          public fingerprint.
``text``  the soft red/green-list watermark of Kirchenbauer et al. 2023 (arXiv 2301.10226) as a pure
          logits hook, and its z-test detector.
``image`` image marks (another module; imported lazily by ``genforge detect``).

Nothing is imported here eagerly, so ``import genforge.watermark.keys`` stays cheap.
"""
