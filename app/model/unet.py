"""The dual-output 3D U-Net of Zhong et al. (2021): haematoma segmentation + expansion classification.

Input: (N, 1, D, H, W) float32, the preprocessed tensor (z-y-x). Output: ``(seg_logits, cls_logits)`` with
shapes (N, 1, D, H, W) and (N, 1); ``forward(x, with_aux=True)`` also returns the auxiliary logits
(N, ``aux_outputs``) used in training (None without auxiliary outputs). The sigmoids are applied by :meth:`DualOutputUNet3D.predict` (and inside
the losses, for numerical stability), so the network itself returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from app.model.config import ModelConfig


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """3×3×3 convolution (padding 1) -> normalisation -> ReLU."""

    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1):
        super().__init__(
            nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=norm == "none"),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


def _stack(cin: int, cout: int, n: int, norm: str, first_stride: int = 1) -> nn.Sequential:
    layers = [ConvBlock(cin, cout, norm, stride=first_stride)]
    layers += [ConvBlock(cout, cout, norm) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class DualOutputUNet3D(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        if len(cfg.decoder_widths) != len(cfg.encoder_widths) - 1:
            raise ValueError("decoder_widths must have one entry fewer than encoder_widths")
        self.config = cfg
        n = cfg.convs_per_level
        enc = list(cfg.encoder_widths)
        self.encoder = nn.ModuleList()
        cin = cfg.in_channels
        for level, width in enumerate(enc):
            if level == 0:
                self.encoder.append(_stack(cin, width, n, cfg.norm))
            else:  # stride-2 3×3×3 convolution does the down-sampling, then n-1 more convolutions
                self.encoder.append(_stack(cin, width, n, cfg.norm, first_stride=2))
            cin = width
        self.bridge = _stack(cin, cfg.bridge_width, cfg.bridge_convs, cfg.norm)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        cin = cfg.bridge_width
        skips = enc[:-1][::-1]
        for width, skip in zip(cfg.decoder_widths, skips, strict=True):
            self.up.append(nn.ConvTranspose3d(cin, width, kernel_size=2, stride=2))
            self.decoder.append(_stack(width + skip, width, n, cfg.norm))
            cin = width
        self.seg_head = nn.Conv3d(cin, 1, kernel_size=1)
        self.cls_convs = _stack(cfg.bridge_width, cfg.cls_width, cfg.cls_convs, cfg.norm)
        self.cls_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        n_features = cfg.cls_width if cfg.cls_pooling == "global" else 3 * cfg.cls_width + 1
        self.cls_head = nn.Linear(n_features, 1)
        self.aux_head = nn.Linear(n_features, cfg.aux_outputs) if cfg.aux_outputs > 0 else None

    def _pooled(self, bridge: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Classification features (N, F): global mean, or with ``cls_pooling="haematoma"`` the global mean,
        the mean and max weighted by the (detached) haematoma probability on the bridge grid, and
        log(1 + predicted voxels / 1000) on the model grid."""
        f = self.cls_convs(bridge)
        g = f.mean(dim=(2, 3, 4))
        if self.config.cls_pooling == "global":
            return g
        p = torch.sigmoid(seg.detach().float()).to(f.dtype)
        w = F.adaptive_avg_pool3d(p, f.shape[2:])
        wsum = w.sum(dim=(2, 3, 4))
        mean = (f * w).sum(dim=(2, 3, 4)) / (wsum + 1e-3)
        peak = (f * w).amax(dim=(2, 3, 4))
        size = torch.log1p(p.sum(dim=(2, 3, 4)) / 1000.0)
        return torch.cat([g, mean, peak, size], dim=1)

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder, bridge and decoder: ``(bridge features (N, bridge_width, D/4, H/4, W/4), seg_logits)``."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        bridge = self.bridge(skips.pop())
        y = bridge
        for up, dec in zip(self.up, self.decoder, strict=True):
            y = up(y)
            y = dec(torch.cat([y, skips.pop()], dim=1))
        return bridge, self.seg_head(y)

    def classify(self, bridge: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The classification branch on the bridge: ``(cls_logits (N, 1), aux_logits (N, aux_outputs) or None)``."""
        c = self.cls_dropout(self._pooled(bridge, seg))
        return self.cls_head(c), self.aux_head(c) if self.aux_head is not None else None

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """``(seg_logits, cls_logits)``, or ``(seg_logits, cls_logits, aux_logits or None)`` with ``with_aux``."""
        bridge, seg = self.backbone(x)
        cls, aux = self.classify(bridge, seg)
        return (seg, cls, aux) if with_aux else (seg, cls)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities: (haematoma probability map (N,1,D,H,W), expansion probability (N,))."""
        seg, cls = self(x)
        return torch.sigmoid(seg), torch.sigmoid(cls).squeeze(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
