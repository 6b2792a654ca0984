"""Decoders from a feature volume to intensities: implicit (LIIF-style) and conv (ablation).

Coordinates are continuous voxel indices ``(z, y, x)`` of the feature
volume's grid (voxel centre ``i`` has coordinate ``i``); ``cell`` is the output
voxel size in those units, ``(B, 3)``.

Implicit decoder, for a query ``q`` and each of its 8 surrounding voxel
centres ``n`` (border-clamped)::

    y_n = a(condition) · MLP(W_f f_n + W_δ (q - n) + W_c cell, FiLM(condition))
    y(q) = Σ_n w_n y_n,   w_n = Π_axes (1 - |q_c - n|)   (trilinear = LIIF area weights)

The MLP returns ``bases`` values per point that are mixed by weights ``a``
generated from the condition: a text-conditioned dynamic output layer. It
mirrors how MR contrast arises (a voxel's signal is a protocol-dependent
weighting of what the voxel holds), so the features can describe the tissue
once and the prompt chooses the contrast.

with ``q_c`` the query clamped into the volume (outside it the border voxels
extrapolate through ``q - n``). At a voxel centre ``w = (1, 0, ..., 0)``, so
the regular-grid output is the MLP applied pointwise: :meth:`render_grid` runs
it as 1x1x1 convolutions, slab by slab.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from synthesis.blocks.common import check_positive_int

__all__ = ["Features", "ImplicitDecoder", "ConvDecoder", "slabs"]

OUTPUT_INIT = 0.5  # initial output bias: mid-range of the normalized [0, 1] intensities
_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # (8, 3)


@dataclass
class Features:
    """What :meth:`RTFSyn.encode` returns.

    volume: (B, C, D, H, W) feature volume on the input grid.
    cond: (B, cond_dim) condition vector, or None when the model uses no text.
    mix_prior: (B, bases) output mixing weights known before learning (the target
    protocol's nominal tissue signals; for a two-source model given a second source, plus
    its learnt shift ``mix_second``), added to the learned ones; or None.
    """

    volume: torch.Tensor
    cond: torch.Tensor | None
    mix_prior: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Features":
        kw = {"dtype": dtype} if dtype is not None else {}
        move = lambda t: None if t is None else t.to(device, **kw)  # noqa: E731
        return Features(self.volume.to(device, **kw), move(self.cond), move(self.mix_prior))

    def with_volume(self, volume: torch.Tensor) -> "Features":
        """The same condition with another feature volume (a crop, a tile, a cast)."""
        return Features(volume, self.cond, self.mix_prior)


def slabs(depth: int, plane_voxels: int, budget_voxels: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges along D holding at most ``budget_voxels`` voxels (at least one plane)."""
    step = max(1, budget_voxels // max(1, plane_voxels))
    for start in range(0, depth, step):
        yield start, min(depth, start + step)


def _check_query(volume: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> None:
    batch = volume.shape[0]
    if coords.ndim != 3 or coords.shape[0] != batch or coords.shape[2] != 3:
        raise ValueError(f"coords must have shape ({batch}, N, 3). Found {tuple(coords.shape)}.")
    if cell.shape != (batch, 3):
        raise ValueError(f"cell must have shape ({batch}, 3). Found {tuple(cell.shape)}.")


class ImplicitDecoder(nn.Module):
    """LIIF-style local-ensemble decoder with a factored first layer and FiLM conditioning.

    Args:
        in_channels: C of the feature volume.
        hidden: width of the MLP.
        layers: number of hidden layers (>= 1).
        cond_dim: width of the condition vector, or None for an unconditioned head.
        bases: outputs of the MLP mixed by condition-generated weights (1 without a condition).
        mix_prior: the mixing weights are learned corrections to ``Features.mix_prior``.
        chunk: queries evaluated at once in :meth:`query`.
        render_voxels: voxels per slab in :meth:`render_grid`.
    """

    def __init__(self, in_channels: int, *, hidden: int = 64, layers: int = 2, cond_dim: int | None = None,
                 bases: int = 1, mix_prior: bool = False, chunk: int = 32768,
                 render_voxels: int = 1 << 20) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("layers", layers),
                            ("bases", bases), ("chunk", chunk), ("render_voxels", render_voxels)):
            check_positive_int(name, value)
        bases = bases if cond_dim else 1
        self.chunk, self.render_voxels, self.slope = chunk, render_voxels, 0.1
        self.feature = nn.Linear(in_channels, hidden)          # W_f f + b
        self.offset = nn.Linear(3, hidden, bias=False)         # W_δ (q - n)
        self.cell = nn.Linear(3, hidden, bias=False)           # W_c cell
        self.film = nn.Linear(cond_dim, 2 * hidden) if cond_dim else None
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, bases)
        self.mix = nn.Linear(cond_dim, bases) if bases > 1 else None
        if self.mix is not None:
            nn.init.zeros_(self.mix.weight)
        if self.mix is not None and mix_prior:  # start as the prior's mix of equal bases
            nn.init.zeros_(self.mix.bias)
            nn.init.constant_(self.out.bias, 1.0 / bases)
        elif self.mix is not None:  # start as Σ_k out_k / sqrt(K): the spread at initialization
            nn.init.constant_(self.mix.bias, 1.0 / bases**0.5)  # does not depend on K, the
            nn.init.constant_(self.out.bias, OUTPUT_INIT / bases**0.5)  # mean is OUTPUT_INIT
        else:
            nn.init.constant_(self.out.bias, OUTPUT_INIT)

    # -- per-sample terms ---------------------------------------------------
    def _sample_terms(self, feats: Features, cell: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(bias, scale, shift, mix)``: ``act((z + bias) * scale + shift)``, each ``(B, hidden)``,
        and the output mixing weights ``(B, bases)`` (None for a single output)."""
        bias = self.cell(cell.to(self.cell.weight.dtype))
        if self.film is None or feats.cond is None:
            return bias, torch.ones_like(bias), torch.zeros_like(bias), None
        gamma, beta = self.film(feats.cond).chunk(2, dim=-1)
        return bias, 1.0 + gamma, beta, self.mixing_weights(feats.cond, feats.mix_prior)

    def mixing_weights(self, cond: torch.Tensor | None, prior: torch.Tensor | None = None) -> torch.Tensor | None:
        """The output mixing weights ``(B, bases)``: the learned ones from ``cond``, plus
        ``prior`` when given; None for a single output or without a condition."""
        if self.mix is None or cond is None:
            return None
        mix = self.mix(cond)
        return mix if prior is None else mix + prior.to(mix.dtype)

    def _tail(self, z: torch.Tensor, mix: torch.Tensor | None, linear: bool) -> torch.Tensor:
        """Hidden layers, output and mixing: ``(B, n, 8, hidden) -> (B, n, 8)`` (linear) or
        ``(B, hidden, d, h, w) -> (B, 1, d, h, w)`` (conv)."""
        z = self._bases(z, linear)
        if linear:
            return z.squeeze(-1) if mix is None else (z * mix[:, None, None, :].to(z.dtype)).sum(-1)
        return z if mix is None else (z * mix[:, :, None, None, None].to(z.dtype)).sum(1, keepdim=True)

    def _bases(self, z: torch.Tensor, linear: bool) -> torch.Tensor:
        """The MLP's ``bases`` outputs before mixing (last axis when ``linear``, else channels)."""
        for layer in [*self.hidden, self.out]:
            z = F.leaky_relu(z, self.slope, inplace=True)
            if linear:
                z = layer(z)
            else:
                z = F.conv3d(z, layer.weight[:, :, None, None, None], layer.bias)
        return z

    def render_grid(self, feats: Features, *, with_bases: bool = False
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Output at the feature voxel centres: ``(B, C, D, H, W) -> (B, 1, D, H, W)``;
        ``with_bases``: also the unmixed bases ``(B, bases, D, H, W)`` (with the physics
        prior these stand for the tissue fractions, which training can supervise)."""
        volume = feats.volume
        batch, _, depth, height, width = volume.shape
        ones = volume.new_ones(batch, 3)
        *first, mix = self._sample_terms(feats, ones)
        bias, scale, shift = (t[:, :, None, None, None] for t in first)
        weight = self.feature.weight[:, :, None, None, None]
        out = volume.new_empty(batch, 1, depth, height, width)
        bases = volume.new_empty(batch, self.out.out_features, depth, height, width) if with_bases else None
        for start, stop in slabs(depth, height * width * batch, self.render_voxels):
            z = F.conv3d(volume[:, :, start:stop], weight, self.feature.bias)
            z = (z + bias) * scale + shift
            b = self._bases(z, linear=False)
            if bases is not None:
                bases[:, :, start:stop] = b
            out[:, :, start:stop] = b if mix is None else (b * mix[:, :, None, None, None].to(b.dtype)).sum(
                1, keepdim=True)
        return (out, bases) if with_bases else out

    def query(self, feats: Features, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Intensities at continuous coordinates: ``coords (B, N, 3), cell (B, 3) -> (B, N)``."""
        volume = feats.volume
        _check_query(volume, coords, cell)
        batch, channels, depth, height, width = volume.shape
        table = volume.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)  # (B, M, C)
        projected = channels > self.feature.out_features
        if projected:  # project once per voxel when that is the smaller table
            table = self.feature(table)
        terms = self._sample_terms(feats, cell)
        sizes = torch.tensor([depth, height, width], device=coords.device)
        parts = [self._query_chunk(table, projected, terms, chunk, sizes) for chunk in coords.split(self.chunk, 1)]
        return torch.cat(parts, dim=1)

    def _query_chunk(self, table: torch.Tensor, projected: bool, terms: tuple[torch.Tensor, ...],
                     q: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """One chunk: ``q (B, n, 3) -> (B, n)``."""
        q = q.float()
        top = (sizes - 1).to(q.dtype)
        clamped = torch.minimum(q.clamp(min=0), top)
        low = torch.minimum(clamped.floor(), (top - 1).clamp(min=0))     # lower corner, (B, n, 3)
        frac = clamped - low
        corners = _CORNERS.to(q.device)
        index = torch.minimum(low[:, :, None, :] + corners, top)         # (B, n, 8, 3)
        weights = torch.where(corners.bool(), frac[:, :, None, :], 1.0 - frac[:, :, None, :]).prod(-1)
        delta = q[:, :, None, :] - index                                 # (B, n, 8, 3)
        lin = index.long()
        lin = (lin[..., 0] * sizes[1] + lin[..., 1]) * sizes[2] + lin[..., 2]
        rows = torch.arange(table.shape[0], device=q.device)[:, None, None]
        gathered = table[rows, lin]                                      # (B, n, 8, C or hidden)
        z = gathered if projected else self.feature(gathered)
        *first, mix = terms
        bias, scale, shift = (t[:, None, None, :] for t in first)
        z = (z + self.offset(delta.to(z.dtype)) + bias) * scale + shift
        values = self._tail(z, mix, linear=True)                          # (B, n, 8)
        return (weights.to(values.dtype) * values).sum(-1)


class ConvDecoder(nn.Module):
    """Ablation: a 3x3x3 conv head on the grid; queries interpolate its output trilinearly."""

    def __init__(self, in_channels: int, *, hidden: int = 64, cond_dim: int | None = None,
                 render_voxels: int = 1 << 20) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("render_voxels", render_voxels)):
            check_positive_int(name, value)
        self.render_voxels = render_voxels
        self.conv = nn.Conv3d(in_channels, hidden, 3, padding=(0, 1, 1))  # D padded per slab
        self.film = nn.Linear(cond_dim, 2 * hidden) if cond_dim else None
        self.out = nn.Conv3d(hidden, 1, 1)
        nn.init.constant_(self.out.bias, OUTPUT_INIT)

    def render_grid(self, feats: Features) -> torch.Tensor:
        """``(B, C, D, H, W) -> (B, 1, D, H, W)``, computed slab by slab with a one-plane halo."""
        volume = feats.volume
        batch, _, depth, height, width = volume.shape
        scale = shift = None
        if self.film is not None and feats.cond is not None:
            gamma, beta = self.film(feats.cond).chunk(2, dim=-1)
            scale, shift = 1.0 + gamma[:, :, None, None, None], beta[:, :, None, None, None]
        out = volume.new_empty(batch, 1, depth, height, width)
        for start, stop in slabs(depth, height * width * batch, self.render_voxels):
            piece = volume[:, :, max(start - 1, 0): min(stop + 1, depth)]
            piece = F.pad(piece, (0, 0, 0, 0, int(start == 0), int(stop == depth)))
            z = self.conv(piece)
            if scale is not None:
                z = z * scale + shift
            out[:, :, start:stop] = self.out(F.leaky_relu(z, 0.1, inplace=True))
        return out

    def query(self, feats: Features, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation of :meth:`render_grid`: ``coords (B, N, 3) -> (B, N)``."""
        _check_query(feats.volume, coords, cell)
        grid_values = self.render_grid(feats)                           # (B, 1, D, H, W)
        sizes = torch.tensor(grid_values.shape[2:], device=coords.device, dtype=coords.dtype)
        normalized = 2.0 * coords / (sizes - 1).clamp(min=1) - 1.0     # align_corners=True
        grid = normalized.flip(-1)[:, None, None].to(grid_values.dtype)  # (B, 1, 1, N, 3) as (x, y, z)
        sampled = F.grid_sample(grid_values, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled[:, 0, 0, 0]
