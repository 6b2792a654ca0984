"""A white-matter lesion detector on the source, and how its map enters the synthesis.

The synthesis network's bases stand for tissue fractions (CSF, GM, WM, lesion, ...), mixed
by weights from the target protocol. Trained with L1 losses, its *lesion* basis stays near
zero even inside lesions: on a T1 a white-matter lesion looks like grey matter, and a voxel
that is more likely not a lesion gets no lesion (the median). :class:`LesionNet` is a small
3-D U-Net trained apart, with a detection loss (binary cross-entropy with the positives
weighted up, plus a soft Dice per crop; ``synthesis/lesion_train.py``), that returns the
probability ``p`` that a voxel is lesion. :func:`compose` puts it into the output the way the
bases would, had the lesion basis been ``p``::

    out' = (1 - p) * out + p * rho * w_wm

with ``w_wm`` the model's white-matter level for this target and ``rho`` the target protocol's
lesion/white-matter signal ratio from the signal equation with nominal relaxation times
(``physics_features``). Where ``p`` is 0 the output is the network's, unchanged. The level is
the model's mixing weight of white matter (``lesion_level = "weight"``: its output in pure white
matter were the bases there to sum to 1; for the shipped weights they sum to 1.02-1.10, so
lesions come out 4-12 % short of ``rho``; the shipped model), or its own output where white
matter dominates its bases (``"output"``). Inference composes :func:`lesion_fraction` of ``p``:
the model's probability-to-fraction table (``lesion_fraction_p/_f``, empty for the shipped
model: ``p`` itself; the detector, trained with its positives weighted up, puts a voxel half
lesion near p = 0.97), times ``lesion_gain``, capped at 1 (docs/TRAINING.md, *The detector's
probability as a lesion fraction*).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LesionNet", "compose", "lesion_ratio", "lesion_fraction"]

#: The detector's initial logit: p = 1%.
PRIOR_LOGIT = -4.6
#: Index of the lesion class in the physics prior / the tissue bases (synthesis.physics.TISSUES).
LESION, WHITE_MATTER = 3, 2


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout),
                         nn.LeakyReLU(0.1, inplace=True), nn.Conv3d(cout, cout, 3, padding=1),
                         nn.BatchNorm3d(cout), nn.LeakyReLU(0.1, inplace=True))


class LesionNet(nn.Module):
    """``(B, 1, D, H, W)`` normalized source -> ``(B, 1, D, H, W)`` lesion logit.

    A U-Net of ``len(channels)`` scales (max-pooling down, 1x1x1 projection and trilinear
    interpolation up, concatenated skips); D, H, W multiples of ``2 ** (scales - 1)`` (see
    :meth:`probability` for any shape)."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        if len(channels) < 2 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be two or more positive widths. Found {channels!r}.")
        self.channels = tuple(int(c) for c in channels)
        self.enc = nn.ModuleList(_block(1 if i == 0 else channels[i - 1], c) for i, c in enumerate(channels))
        self.up = nn.ModuleList(nn.Conv3d(channels[i + 1], channels[i], 1) for i in range(len(channels) - 1))
        self.dec = nn.ModuleList(_block(2 * channels[i], channels[i]) for i in range(len(channels) - 1))
        self.out = nn.Conv3d(channels[0], 1, 1)
        # start at p = 1% everywhere (a lesion's share of a lesion-centred crop): from 0.5 the
        # false positives' mass swamps the Dice term, and a batch took 120 steps to learn
        # what it learns in 80 from here (p 0.97 inside lesions, 0.007 outside)
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.dec))):
            x = F.interpolate(self.up[i](x), scale_factor=2, mode="trilinear", align_corners=False)
            x = self.dec[i](torch.cat([x, skips.pop()], dim=1))
        return self.out(x)

    @torch.no_grad()
    def probability(self, x: torch.Tensor, *, slab: int = 96, halo: int = 24) -> torch.Tensor:
        """Lesion probability of a whole volume ``(B, 1, D, H, W)`` of any shape: replicate-padded
        to the U-Net's multiple, run in slabs of ``slab`` planes along D with ``halo`` planes of
        context each side (the memory of a whole head's full-resolution layers stays bounded)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (B, 1, D, H, W). Found {tuple(x.shape)}.")
        m = self.multiple
        depth, height, width = x.shape[2:]
        pads = [(-n) % m for n in (depth, height, width)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
        slab, halo = max(m, slab // m * m), max(0, -(-halo // m) * m)
        total = x.shape[2]
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for z0 in range(0, total, slab):
            z1 = min(total, z0 + slab)
            lo, hi = max(0, z0 - halo), min(total, z1 + halo)  # multiples of m, as total is
            out[:, :, z0:z1] = torch.sigmoid(self(x[:, :, lo:hi]).float())[:, :, z0 - lo:z1 - lo]
        return out[:, :, :depth, :height, :width]


def lesion_ratio(physics: torch.Tensor) -> torch.Tensor:
    """The target's lesion/white-matter signal ratio from its physics features ``(B, >= 4)``
    (nominal tissue signals; CSF, GM, WM, lesion first). 1 where the white-matter signal is 0
    (a protocol the signal equation cannot compute: no lesion contrast is claimed)."""
    wm, lesion = physics[:, WHITE_MATTER], physics[:, LESION]
    return torch.where(wm > 0, lesion / wm.clamp_min(1e-6), torch.ones_like(wm))


def compose(out: torch.Tensor, p: torch.Tensor, rho: float, w_wm: float) -> torch.Tensor:
    """``(1 - p) * out + p * rho * w_wm`` (see the module docstring); ``out`` and ``p`` of one
    shape, ``p`` in [0, 1]."""
    if out.shape != p.shape:
        raise ValueError(f"out and p must have one shape. Found {tuple(out.shape)} and {tuple(p.shape)}.")
    return torch.lerp(out, torch.full_like(out, float(rho) * float(w_wm)), p.to(out.dtype))


def lesion_fraction(p: np.ndarray, gain: float = 1.0, knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
                    ) -> np.ndarray:
    """The lesion fraction composed for the detector's probability ``p``: through the monotone
    table ``knots = (p knots, fraction knots)`` (``np.interp``; empty: ``p`` itself), times
    ``gain``, capped at 1 (``RTFSynConfig.lesion_fraction_p/_f`` and ``lesion_gain``)."""
    p = np.asarray(p, dtype=np.float32)
    table_p, table_f = knots
    fraction = np.interp(p, table_p, table_f).astype(np.float32) if len(table_p) else p
    return np.minimum(np.float32(1.0), np.float32(gain) * fraction)
