"""Cross-attention from packed visual tokens to the text token sequence.

1. Pack: 3-D pixel unshuffle by ``r`` turns ``(B, C, D, H, W)`` into
   ``N = D*H*W / r**3`` tokens of width ``C*r**3``.
2. Attend: queries are the visual tokens; keys and values are the prompt's
   token states ``(B, L, 384)`` (padding masked out) plus one token made from
   the numeric protocol features, so numbers the tokenizer splits badly are
   still seen. Multi-head, ``F.scaled_dot_product_attention`` with a boolean
   mask.
3. Recover: projection back to ``C*r**3``, pixel shuffle, residual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from synthesis.blocks.common import ChannelNorm, LayerScale, check_positive_int
from synthesis.blocks.packing import pixel_shuffle3d, pixel_unshuffle3d

__all__ = ["PackedCrossAttention"]


class PackedCrossAttention(nn.Module):
    """``x (B, C, D, H, W), tokens (B, L, text_dim), mask (B, L) bool, features (B, F)`` -> ``(B, C, D, H, W)``.

    D, H and W must be divisible by ``pack``.
    """

    def __init__(
        self,
        channels: int,
        *,
        text_dim: int,
        feature_dim: int,
        attn_dim: int = 128,
        heads: int = 4,
        pack: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("text_dim", text_dim), ("feature_dim", feature_dim),
                            ("attn_dim", attn_dim), ("heads", heads), ("pack", pack)):
            check_positive_int(name, value)
        if attn_dim % heads:
            raise ValueError(f"attn_dim must be divisible by heads. Found attn_dim={attn_dim}, heads={heads}.")
        self.pack = pack
        self.heads = heads
        token_dim = channels * pack**3
        self.norm = ChannelNorm(channels)
        self.query = nn.Linear(token_dim, attn_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_kv = nn.Linear(text_dim, 2 * attn_dim)
        self.feature_kv = nn.Linear(feature_dim, 2 * attn_dim)
        self.proj = nn.Linear(attn_dim, token_dim)
        self.scale = LayerScale(channels)

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        _, _, depth, height, width = x.shape
        r = self.pack
        packed = pixel_unshuffle3d(self.norm(x), r)                       # (B, C r^3, D/r, H/r, W/r)
        visual = rearrange(packed, "b c d h w -> b (d h w) c")
        q = rearrange(self.query(visual), "b n (h e) -> b h n e", h=self.heads)
        kv = torch.cat([self.text_kv(self.text_norm(tokens)), self.feature_kv(features)[:, None]], dim=1)
        k, v = rearrange(kv, "b l (two h e) -> two b h l e", two=2, h=self.heads)
        keep = torch.cat([mask.bool(), mask.new_ones(mask.shape[0], 1, dtype=torch.bool)], dim=1)
        attended = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=keep[:, None, None, :])
        out = self.proj(rearrange(attended, "b h n e -> b n (h e)"))
        out = rearrange(out, "b (d h w) c -> b c d h w", d=depth // r, h=height // r, w=width // r)
        return x + self.scale(pixel_shuffle3d(out, r))
