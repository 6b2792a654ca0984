"""Text-conditioned dynamic convolution.

A bank of ``K`` 3-D kernels; a condition vector (from the pooled prompt
embedding and the numeric protocol features) gives per-sample mixing weights
``softmax(W c)`` over the bank. The per-sample kernels are applied in ONE
grouped convolution with the batch folded into the groups:
``(B, C, D, H, W) -> (1, B*C, D, H, W)``, ``groups = B * conv_groups``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthesis.blocks.common import check_positive_int

__all__ = ["DynamicConv3d"]


class DynamicConv3d(nn.Module):
    """``x (B, C, D, H, W), cond (B, cond_dim) -> (B, C, D, H, W)``.

    Args:
        channels: C (input and output).
        cond_dim: width of the condition vector.
        bank: K, number of kernels mixed per sample.
        groups: convolution groups inside one sample (C must be divisible by it).
        kernel: odd spatial kernel size.
    """

    def __init__(self, channels: int, cond_dim: int, *, bank: int = 4, groups: int = 4, kernel: int = 3) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("cond_dim", cond_dim), ("bank", bank),
                            ("groups", groups), ("kernel", kernel)):
            check_positive_int(name, value)
        if channels % groups:
            raise ValueError(f"channels must be divisible by groups. Found channels={channels}, groups={groups}.")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd. Found {kernel}.")
        self.channels, self.groups, self.kernel = channels, groups, kernel
        fan_in = channels // groups * kernel**3
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(
            torch.empty(bank, channels, channels // groups, kernel, kernel, kernel).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.zeros(bank, channels))
        self.route = nn.Linear(cond_dim, bank)

    def mixing(self, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample mixing weights over the bank, ``(B, cond_dim) -> (B, K)``, rows sum to 1."""
        return torch.softmax(self.route(cond).float(), dim=-1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if channels != self.channels:
            raise ValueError(f"DynamicConv3d expects {self.channels} channels. Found {channels}.")
        alpha = self.mixing(cond).to(x.dtype)                             # (B, K)
        weight = torch.einsum("bk,koi...->boi...", alpha, self.weight.to(x.dtype))  # (B, C, C/g, k, k, k)
        bias = alpha @ self.bias.to(x.dtype)                              # (B, C)
        folded = x.reshape(1, batch * channels, *x.shape[2:])
        out = F.conv3d(
            folded,
            weight.reshape(batch * channels, *weight.shape[2:]),
            bias.reshape(-1),
            padding=self.kernel // 2,
            groups=batch * self.groups,
        )
        return out.view_as(x)
