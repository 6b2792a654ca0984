"""3-D pixel packing and recovery (pixel unshuffle / shuffle).

``pixel_unshuffle3d`` folds each ``r x r x r`` block of voxels into channels so
attention runs on ``r**3`` times fewer tokens; ``pixel_shuffle3d`` is its exact
inverse.
"""
from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["pixel_unshuffle3d", "pixel_shuffle3d"]


def _check_factor(r: int) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"pack factor r must be a positive integer. Found {r!r}.")


def pixel_unshuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(B, C, D*r, H*r, W*r) -> (B, C*r**3, D, H, W)``.

    Channel index ``c*r**3 + (i*r + j)*r + k`` holds voxel offset ``(i, j, k)``.
    """
    _check_factor(r)
    if x.ndim != 5:
        raise ValueError(f"pixel_unshuffle3d expects (B, C, D, H, W). Found shape {tuple(x.shape)}.")
    if any(s % r for s in x.shape[2:]):
        raise ValueError(
            f"pixel_unshuffle3d needs D, H, W divisible by r={r}. Found {tuple(x.shape[2:])}."
        )
    return rearrange(x, "b c (d i) (h j) (w k) -> b (c i j k) d h w", i=r, j=r, k=r)


def pixel_shuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(B, C*r**3, D, H, W) -> (B, C, D*r, H*r, W*r)``, the inverse of :func:`pixel_unshuffle3d`."""
    _check_factor(r)
    if x.ndim != 5:
        raise ValueError(f"pixel_shuffle3d expects (B, C, D, H, W). Found shape {tuple(x.shape)}.")
    if x.shape[1] % (r**3):
        raise ValueError(
            f"pixel_shuffle3d needs channels divisible by r**3={r**3}. Found {x.shape[1]}."
        )
    return rearrange(x, "b (c i j k) d h w -> b c (d i) (h j) (w k)", i=r, j=r, k=r)
