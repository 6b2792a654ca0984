"""Axis-aware visual refinement (AVR).

Directional context along each axis of a feature volume, used to gate the
features before they are fused with the text (suppressing redundant
responses). Per axis (D, H, W) and per dilation, a depthwise 1-D
convolution of length ``kernel`` gathers context along that axis only; the
``3 * len(dilations)`` directional maps are mixed by a pointwise convolution
into a gate, and the gated values are projected back as a residual update::

    v    = W_v · norm(x)
    ctx  = W_mix · [dw_D,d(v), dw_H,d(v), dw_W,d(v) for d in dilations]
    x'   = x + γ ⊙ W_o · (v ⊙ σ(ctx))

With kernel 7 and dilations (1, 3) each axis sees 25 voxels, i.e. 100 mm at
the 1/4 scale of a 1 mm volume. Only local operations are used, so tiled
inference stays consistent with whole-volume inference.
"""
from __future__ import annotations

import torch
from torch import nn

from synthesis.blocks.common import ChannelNorm, LayerScale, check_positive_int

__all__ = ["AxisRefinement"]


class AxisRefinement(nn.Module):
    """AVR block: ``(B, C, D, H, W) -> (B, C, D, H, W)``.

    Args:
        channels: C.
        kernel: odd length of each 1-D depthwise convolution.
        dilations: dilation of each directional branch (one branch per axis per dilation).
    """

    def __init__(self, channels: int, *, kernel: int = 7, dilations: tuple[int, ...] = (1, 3)) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("kernel", kernel)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd. Found {kernel}.")
        if not dilations:
            raise ValueError("dilations must name at least one dilation. Found ().")
        for d in dilations:
            check_positive_int("dilations[i]", d)
        self.norm = ChannelNorm(channels)
        self.value = nn.Conv3d(channels, channels, 1)
        self.directional = nn.ModuleList()
        for dilation in dilations:
            pad = dilation * (kernel - 1) // 2
            for axis in range(3):
                size = [1, 1, 1]
                size[axis] = kernel
                padding = [0, 0, 0]
                padding[axis] = pad
                dil = [1, 1, 1]
                dil[axis] = dilation
                self.directional.append(
                    nn.Conv3d(channels, channels, tuple(size), padding=tuple(padding),
                              dilation=tuple(dil), groups=channels)
                )
        self.mix = nn.Conv3d(channels * len(self.directional), channels, 1)
        self.out = nn.Conv3d(channels, channels, 1)
        self.scale = LayerScale(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value(self.norm(x))
        context = torch.cat([conv(v) for conv in self.directional], dim=1)  # (B, 3*n*C, D, H, W)
        gate = torch.sigmoid(self.mix(context))
        del context
        return x + self.scale(self.out(v * gate))
