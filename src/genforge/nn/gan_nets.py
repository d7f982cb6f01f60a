"""The GAN's networks: a DCGAN-style (Radford et al. 2016) or residual (SNGAN, Miyato et al.
2018; BigGAN, Brock et al. 2019) generator and discriminator, sized from the image shape (8x8 to
64x64, any channel count). Conditional models use conditional batch norm in the generator and a
projection discriminator (Miyato & Koyama 2018). ``c`` is the family's GANConfig (g_width,
d_width, z_dim, arch, spectral_norm); the training game lives in families/gan.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resolution_stages(h: int, w: int) -> tuple[int, int, int]:
    """(k, h0, w0): the generator starts at h0 x w0 (4 to 7) and doubles k times."""
    k = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= 4:
        h, w, k = h // 2, w // 2, k + 1
    return k, h, w


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift come from the class (de Vries et al. 2017); plain affine
    BatchNorm without classes. (B, C, H, W), labels (B,) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.num_classes = num_classes
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        return h * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


class GBlock(nn.Module):
    """Upsampling block: DCGAN (transposed conv 4x4/2, norm, ReLU) or residual
    (norm, ReLU, up, conv, norm, ReLU, conv, plus up + 1x1 conv skip)."""

    def __init__(self, cin: int, cout: int, num_classes: int, residual: bool):
        super().__init__()
        self.residual = residual
        if residual:
            self.n1, self.n2 = ConditionalBatchNorm(cin, num_classes), ConditionalBatchNorm(cout, num_classes)
            self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
            self.skip = nn.Conv2d(cin, cout, 1)
        else:
            self.up = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
            self.n1 = ConditionalBatchNorm(cout, num_classes)

    def forward(self, x, y):
        if not self.residual:
            return F.relu(self.n1(self.up(x), y))
        h = F.interpolate(F.relu(self.n1(x, y)), scale_factor=2.0)
        h = self.c2(F.relu(self.n2(self.c1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0))


class Generator(nn.Module):
    """z (B, z_dim), labels (B,) or None -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, c, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, h, w = shape
        k, self.h0, self.w0 = resolution_stages(h, w)
        widths = [c.g_width * 2 ** (k - i) for i in range(k + 1)]  # widest at the start
        self.fc = nn.Linear(c.z_dim, widths[0] * self.h0 * self.w0)
        self.norm0 = ConditionalBatchNorm(widths[0], num_classes)
        self.blocks = nn.ModuleList(GBlock(a, b, num_classes, c.arch == "resnet")
                                    for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norm_out = nn.BatchNorm2d(widths[-1]) if c.arch == "resnet" else nn.Identity()
        self.out = nn.Conv2d(widths[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, self.h0, self.w0)
        h = F.relu(self.norm0(h, y))
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(F.relu(self.norm_out(h))))


class Discriminator(nn.Module):
    """images (B, C, H, W), labels (B,) or None -> logits (B,). Features are summed over
    positions; a conditional D adds the projection <embed(y), features> (Miyato & Koyama 2018)."""

    def __init__(self, c, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, h, w = shape
        k, _, _ = resolution_stages(h, w)
        sn = nn.utils.parametrizations.spectral_norm if c.spectral_norm else (lambda m: m)
        widths = [c.d_width * 2**i for i in range(k + 1)]
        self.residual = c.arch == "resnet"
        self.first = sn(nn.Conv2d(channels, widths[0], 3, 1, 1))
        self.convs = nn.ModuleList()
        self.skips = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            if self.residual:
                self.convs.append(nn.ModuleList([sn(nn.Conv2d(a, b, 3, 1, 1)), sn(nn.Conv2d(b, b, 3, 1, 1))]))
                self.skips.append(sn(nn.Conv2d(a, b, 1)))
            else:
                self.convs.append(sn(nn.Conv2d(a, b, 4, 2, 1)))
        self.linear = sn(nn.Linear(widths[-1], 1))
        self.embed = sn(nn.Embedding(num_classes, widths[-1])) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.leaky_relu(self.first(x), 0.2) if not self.residual else self.first(x)
        for i, conv in enumerate(self.convs):
            if self.residual:
                r = conv[1](F.relu(conv[0](F.relu(h))))
                h = F.avg_pool2d(r, 2) + F.avg_pool2d(self.skips[i](h), 2)
            else:
                h = F.leaky_relu(conv(h), 0.2)
        feats = F.relu(h).sum((2, 3)) if self.residual else h.sum((2, 3))  # (B, D)
        out = self.linear(feats).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * feats).sum(1)
        return out
