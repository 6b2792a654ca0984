"""Smooth random fields on a voxel grid (deformations, shell thickness, bias fields)."""
from __future__ import annotations

import numpy as np

__all__ = ["smooth_field"]


def _interp_matrix(n: int, n_ctrl: int) -> np.ndarray:
    """``(n, n_ctrl)`` Gaussian-kernel weights from control points spread over ``0 .. n-1``."""
    ctrl = np.linspace(0.0, max(n - 1, 1), n_ctrl)
    width = max((n - 1) / max(n_ctrl - 1, 1), 1.0)
    pos = np.arange(n, dtype=np.float64)[:, None]
    weights = np.exp(-0.5 * ((pos - ctrl[None, :]) / (0.6 * width)) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, *, n_fields: int = 1,
                 n_ctrl: int | tuple[int, int, int] = 5) -> np.ndarray:
    """Random smooth fields of unit peak magnitude, shape ``(n_fields, D, H, W)``, float32.

    Standard-normal values on an ``n_ctrl``-per-axis control grid, interpolated
    separably with Gaussian weights, then scaled so ``max |field| = 1`` per field.
    """
    ctrl = (n_ctrl,) * 3 if isinstance(n_ctrl, int) else tuple(n_ctrl)
    if len(shape) != 3 or min(shape) < 1 or min(ctrl) < 1:
        raise ValueError(f"smooth_field needs a 3-D shape and >= 1 control point per axis. "
                         f"Found shape {shape}, n_ctrl {n_ctrl}.")
    coarse = rng.standard_normal((n_fields, *ctrl))
    mz, my, mx = (_interp_matrix(n, c) for n, c in zip(shape, ctrl))
    field = np.einsum("zi,nijk->nzjk", mz, coarse)
    field = np.einsum("yj,nzjk->nzyk", my, field).astype(np.float32)
    field = field @ mx.T.astype(np.float32)  # (n, D, H, W) by one BLAS product
    peak = np.abs(field).reshape(n_fields, -1).max(axis=1)
    field /= np.maximum(peak, 1e-12)[:, None, None, None]
    return field
