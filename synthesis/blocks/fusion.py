"""Text fusion blocks: cross-modal adaptive fusion (CAF) and the global-gate ablation.

CAF = packed cross-attention to the prompt tokens, then a text-conditioned
dynamic convolution, each a residual branch (``bank=0`` leaves the dynamic
convolution out: the "no dynamic conv" ablation). ``GlobalFusion`` is the
TUMSyn-style ablation: one condition vector gates the channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthesis.blocks.attention import PackedCrossAttention
from synthesis.blocks.common import ChannelNorm, LayerScale, check_positive_int
from synthesis.blocks.dynconv import DynamicConv3d

__all__ = ["CrossModalFusion", "GlobalFusion", "ConditionEmbedding"]


class ConditionEmbedding(nn.Module):
    """Condition vector from the pooled prompt and the numeric features.

    ``pooled (B, text_dim), features (B, feature_dim) -> (B, cond_dim)``.
    """

    def __init__(self, text_dim: int, feature_dim: int, cond_dim: int) -> None:
        super().__init__()
        for name, value in (("text_dim", text_dim), ("feature_dim", feature_dim), ("cond_dim", cond_dim)):
            check_positive_int(name, value)
        self.net = nn.Sequential(
            nn.Linear(text_dim + feature_dim, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, pooled: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([pooled, features.to(pooled.dtype)], dim=-1))


class CrossModalFusion(nn.Module):
    """CAF: ``x (B, C, D, H, W)`` + text tokens/mask + features + condition -> ``(B, C, D, H, W)``.

    D, H, W must be divisible by ``pack``. ``bank``: kernels in the dynamic convolution's
    bank; 0 leaves the dynamic convolution out (ablation: cross-attention only).
    """

    def __init__(
        self,
        channels: int,
        *,
        text_dim: int,
        feature_dim: int,
        cond_dim: int,
        attn_dim: int = 128,
        heads: int = 4,
        pack: int = 2,
        bank: int = 4,
        conv_groups: int = 4,
    ) -> None:
        super().__init__()
        self.attention = PackedCrossAttention(
            channels, text_dim=text_dim, feature_dim=feature_dim, attn_dim=attn_dim, heads=heads, pack=pack
        )
        if isinstance(bank, bool) or not isinstance(bank, int) or bank < 0:
            raise ValueError(f"bank must be an integer >= 0 (0: no dynamic convolution). Found {bank!r}.")
        self.dynamic = DynamicConv3d(channels, cond_dim, bank=bank, groups=conv_groups) if bank else None
        self.conv_norm = ChannelNorm(channels) if bank else None
        self.conv_scale = LayerScale(channels) if bank else None

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        features: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        x = self.attention(x, tokens, mask, features)                              # 1. attend to the prompt
        if self.dynamic is None:
            return x
        update = self.dynamic(F.gelu(self.conv_norm(x)), cond)                   # 2. prompt-specific kernels
        return x + self.conv_scale(update)


class GlobalFusion(nn.Module):
    """Ablation: channel gate from one condition vector, ``x * 2σ(W c)``; shapes as :class:`CrossModalFusion`."""

    def __init__(self, channels: int, *, cond_dim: int) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        self.gate = nn.Linear(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gate = 2.0 * torch.sigmoid(self.gate(cond)).to(x.dtype)
        return x * gate[:, :, None, None, None]
