"""Small building blocks shared by the RTFSyn network.

All tensors are channel-first volumes ``(B, C, D, H, W)`` unless stated.
Nothing here normalizes over space, so a block's output at a voxel depends
only on a bounded neighbourhood: tiled inference then matches whole-volume
inference away from tile borders.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelNorm", "LayerScale", "ResBlock3d", "check_positive_int"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Found {value!r}.")
    return value


class ChannelNorm(nn.Module):
    """Layer normalization over channels at every voxel, ``(B, C, ...) -> (B, C, ...)``.

    Unlike GroupNorm/InstanceNorm it uses no spatial statistics, so results
    do not depend on the size of the volume or tile.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # statistics in float32, also under bf16 autocast
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(1, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = centred * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)
        return out.to(dtype)


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch, ``(B, C, ...)``; starts small."""

    def __init__(self, channels: int, init: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view((1, -1) + (1,) * (x.ndim - 2))


class ResBlock3d(nn.Module):
    """Residual block ``x + conv(act(conv(norm(x))))`` with 3x3x3 convolutions.

    Shapes: ``(B, C, D, H, W) -> (B, C, D, H, W)``. ``norm=False`` drops the
    channel norm (used at full resolution, where every pass over memory
    counts).
    """

    def __init__(self, channels: int, *, norm: bool = True, slope: float = 0.1) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        self.norm = ChannelNorm(channels) if norm else nn.Identity()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(self.norm(x)), self.slope, inplace=True)
        y = self.conv2(y)
        return y.add_(x)
