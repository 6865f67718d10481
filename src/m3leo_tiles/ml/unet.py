"""The M3LEO paper's baseline: a UNet with half the usual channels and bilinear upsampling.

The usual UNet (Ronneberger et al.) has 64-128-256-512-1024 channels. With bilinear
upsampling instead of transposed convolutions the bottleneck is halved (as in the widely used
PyTorch implementation by milesial), and the paper halves every width again: 32-64-128-256-256
on the way down. ``width`` is that first width (32 for the paper; tests use 4 to stay fast).
Inputs of any size work: upsampled maps are padded to their skip connection's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAPER_WIDTH = 32


class DoubleConv(nn.Sequential):
    """(3x3 convolution without bias → batch norm → ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Bilinear ×2, pad to the skip's size, concatenate, double convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """UNet(in_channels, out_channels, width): 4 downs, 4 bilinear ups, 1x1 head."""

    def __init__(self, in_channels: int, out_channels: int, width: int = PAPER_WIDTH):
        super().__init__()
        w = width
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 8 * w)  # 16w // 2: bilinear upsampling halves the bottom
        self.up1 = Up(16 * w, 4 * w)
        self.up2 = Up(8 * w, 2 * w)
        self.up3 = Up(4 * w, w)
        self.up4 = Up(2 * w, w)
        self.outc = nn.Conv2d(w, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
