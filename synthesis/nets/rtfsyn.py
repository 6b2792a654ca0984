"""RTFSyn: refine, then fuse, then decode anywhere.

``encode`` runs a multi-scale 3-D encoder-decoder (additive skips) whose low
resolution scales first refine the features along each axis (AVR) and then
fuse them with the prompt (CAF); it returns a feature volume on the input
grid plus the condition vector. ``query`` evaluates the implicit decoder at
any continuous coordinates; ``render_grid`` evaluates it at the voxel centres.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthesis.blocks import (
    AxisRefinement,
    ConditionEmbedding,
    ConvDecoder,
    CrossModalFusion,
    Features,
    GlobalFusion,
    ImplicitDecoder,
    ResBlock3d,
)
from synthesis.nets.config import RTFSynConfig
from synthesis.nets.lesion import WHITE_MATTER, LesionNet, lesion_ratio
from synthesis.condition import PHYSICS_DIM
from synthesis.text import TextCondition

__all__ = ["RTFSyn", "RTFSynConfig", "Features", "with_second_source", "SECOND_SOURCE_BRANCHES"]

#: Parameter-name prefixes of the parts a second source adds (they start at zero).
SECOND_SOURCE_BRANCHES = ("stem_second.", "late_second.", "mix_second.")

logger = logging.getLogger(__name__)


def _stage(channels: int, blocks: int, norm: bool) -> nn.Sequential:
    return nn.Sequential(*(ResBlock3d(channels, norm=norm) for _ in range(blocks)))


class Upsample2x(nn.Module):
    """``(B, C_in, D, H, W) -> (B, C_out, 2D, 2H, 2W)``: a 1x1x1 projection, then trilinear
    interpolation (projecting first is the same map on 8 times fewer voxels). Every output
    voxel is made the same way, so no checkerboard (unlike a stride-2 transposed conv)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(x), scale_factor=2, mode="trilinear", align_corners=False)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer that starts at zero (a modulation that starts as the identity)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class LateSecondSource(nn.Module):
    """What a second source adds to the full-resolution features ``h``:
    ``flag * out(act(mix([h, context(first, second), first, second])))``, a per-voxel MLP of
    the features, both sources and their 3x3x3 neighbourhoods (the first source's own value
    tells a lesion, grey-matter-like on T1, from CSF, dark on T1, where the second shows both
    bright). Its last layer starts at zero, and without a second source (``flag`` 0) it adds
    exactly nothing.

    Shapes: h (B, C, D, H, W), extra (B, 2, D, H, W) = second source, presence, first
    (B, 1, D, H, W) -> (B, C, D, H, W).
    """

    def __init__(self, channels: int, *, hidden: int = 32, context: int = 8, slope: float = 0.1) -> None:
        super().__init__()
        self.context = nn.Conv3d(2, context, 3, padding=1)
        self.mix = nn.Conv3d(channels + context + 2, hidden, 1)
        self.out = nn.Conv3d(hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.slope = slope

    def forward(self, h: torch.Tensor, extra: torch.Tensor, first: torch.Tensor, *,
                slab_voxels: int = 1 << 20) -> torch.Tensor:
        sources = torch.cat([first.to(h.dtype), extra[:, :1].to(h.dtype)], dim=1)
        flag = extra[:, 1:].to(h.dtype)
        context = self.context(sources)
        if torch.is_grad_enabled():
            return self._pointwise(h, context, sources) * flag
        # inference: the per-voxel layers a slab of slices at a time (a whole head's
        # hidden layer alone would take about 1 GB)
        out = torch.empty_like(h)
        step = max(1, slab_voxels // max(1, h.shape[0] * h.shape[3] * h.shape[4]))
        for d0 in range(0, h.shape[2], step):
            part = slice(d0, d0 + step)
            out[:, :, part] = self._pointwise(h[:, :, part], context[:, :, part], sources[:, :, part])
        return out.mul_(flag)

    def _pointwise(self, h: torch.Tensor, context: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        z = self.mix(torch.cat([h, context, sources], dim=1))
        return self.out(F.leaky_relu(z, self.slope, inplace=True))


def _upsampler(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    if kind == "trilinear":
        return Upsample2x(in_channels, out_channels)
    return nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)


class RTFSyn(nn.Module):
    """The RTFSyn network; see the module docstring and :class:`RTFSynConfig`."""

    def __init__(self, config: RTFSynConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config if config is not None else RTFSynConfig()
        if not isinstance(cfg, RTFSynConfig):
            raise TypeError(f"config must be an RTFSynConfig. Found {type(cfg).__name__}.")
        ch = cfg.channels
        self.stem = nn.Conv3d(1, ch[0], 3, padding=1)
        # the second source and its presence: a branch of its own, added to the stem's output
        # (no bias: without a second source it adds nothing, and it starts at zero)
        self.stem_second = nn.Conv3d(2, ch[0], 3, padding=1, bias=False) if cfg.second_source else None
        # ... and again into the full-resolution features the decoder head reads, so that its
        # per-voxel MLP can combine a voxel's second-source signal with the first's context
        self.late_second: nn.Module | None = None
        if cfg.second_source and cfg.second_late == "mlp":
            self.late_second = LateSecondSource(ch[0])
        elif cfg.second_source:
            self.late_second = nn.Conv3d(2, ch[0], 1, bias=False)
            nn.init.zeros_(self.late_second.weight)
        if self.stem_second is not None:
            nn.init.zeros_(self.stem_second.weight)
        self.encoder = nn.ModuleList(_stage(c, cfg.blocks, norm=s > 0) for s, c in enumerate(ch))
        self.down = nn.ModuleList(nn.Conv3d(ch[s], ch[s + 1], 2, stride=2) for s in range(len(ch) - 1))
        self.up = nn.ModuleList(_upsampler(cfg.upsample, ch[s + 1], ch[s]) for s in range(len(ch) - 1))
        self.decoder = nn.ModuleList(_stage(ch[s], cfg.blocks, norm=s > 0) for s in range(len(ch) - 1))
        self.refine = nn.ModuleDict()
        self.fuse = nn.ModuleDict()
        for s in cfg.fusion_scales:
            if cfg.refinement == "axis":
                self.refine[str(s)] = AxisRefinement(ch[s], kernel=cfg.axis_kernel, dilations=cfg.axis_dilations)
            if cfg.fusion == "rtf":
                self.fuse[str(s)] = CrossModalFusion(
                    ch[s], text_dim=cfg.text_dim, feature_dim=cfg.feature_dim, cond_dim=cfg.cond_dim,
                    attn_dim=cfg.attn_dim, heads=cfg.heads, pack=cfg.pack, bank=cfg.kernel_bank,
                    conv_groups=cfg.conv_groups,
                )
            elif cfg.fusion == "global":
                self.fuse[str(s)] = GlobalFusion(ch[s], cond_dim=cfg.cond_dim)
        uses_text = cfg.fusion != "none"
        self.condition = ConditionEmbedding(cfg.text_dim, cfg.feature_dim, cfg.cond_dim) if uses_text else None
        cond_dim = cfg.cond_dim if uses_text else None
        # per-channel scale and shift of each encoder stage's input, from the condition: the
        # full-resolution features learn what the source's intensities mean for this protocol
        self.stage_film = nn.ModuleList(_zero_linear(cfg.cond_dim, 2 * c) for c in ch) \
            if uses_text and cfg.stage_film else None
        if cfg.decoder == "implicit":
            self.head: ImplicitDecoder | ConvDecoder = ImplicitDecoder(
                ch[0], hidden=cfg.head_hidden, layers=cfg.head_layers, cond_dim=cond_dim,
                bases=cfg.head_bases, mix_prior=self.uses_physics_mix, chunk=cfg.query_chunk,
                render_voxels=cfg.render_voxels,
            )
        else:
            self.head = ConvDecoder(ch[0], hidden=cfg.head_hidden, cond_dim=cond_dim, render_voxels=cfg.render_voxels)
        # with an MLP late branch, the tissue bases' mixing weights may also shift when a second
        # source is given (from the condition; zero at the start and without one): the learnt
        # weights of a one-source model fit bases that never find a lesion
        self.mix_second = _zero_linear(cfg.cond_dim, cfg.head_bases) \
            if cfg.second_source and cfg.second_late == "mlp" and self.uses_physics_mix else None
        # the lesion detector (trained apart; see synthesis/nets/lesion.py)
        self.lesion = LesionNet() if cfg.lesion_net else None

    @property
    def uses_physics_mix(self) -> bool:
        """True when the output mixing starts from the target's nominal tissue signals."""
        return self.config.physics_mix and self.config.fusion != "none" and self.config.decoder == "implicit"

    @property
    def uses_text(self) -> bool:
        """False for the ``fusion="none"`` ablation (prompt and features ignored)."""
        return self.condition is not None

    def _check_inputs(self, x: torch.Tensor, text: TextCondition | None, features: torch.Tensor,
                      second: torch.Tensor | None, present: torch.Tensor | None) -> None:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (B, 1, D, H, W). Found {tuple(x.shape)}.")
        if second is not None:
            if not self.config.second_source:
                raise ValueError("this model takes one source (second_source=False); a second was given.")
            if tuple(second.shape) != tuple(x.shape):
                raise ValueError(f"second must have the shape of x, {tuple(x.shape)}. Found {tuple(second.shape)}.")
            if present is not None and tuple(present.shape) != (x.shape[0],):
                raise ValueError(f"present must have shape ({x.shape[0]},). Found {tuple(present.shape)}.")
        if not self.uses_text:
            return
        batch = x.shape[0]
        if text is None:
            raise ValueError(f"text is required when fusion={self.config.fusion!r}. Found None.")
        if text.tokens.shape[0] != batch or text.tokens.shape[2] != self.config.text_dim:
            raise ValueError(
                f"text.tokens must have shape ({batch}, L, {self.config.text_dim}). Found {tuple(text.tokens.shape)}."
            )
        if features is None or tuple(features.shape) != (batch, self.config.feature_dim):
            found = None if features is None else tuple(features.shape)
            raise ValueError(f"features must have shape ({batch}, {self.config.feature_dim}). Found {found}.")

    def _second_input(self, x: torch.Tensor, second: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """The second source where present (else 0) and the presence (1 or 0 per sample,
        constant over the volume): the two channels of ``stem_second``."""
        flag = torch.ones(x.shape[0], device=x.device, dtype=x.dtype) if present is None \
            else present.to(device=x.device, dtype=x.dtype)
        flag = flag[:, None, None, None, None]
        return torch.cat([second.to(device=x.device, dtype=x.dtype) * flag, flag.expand_as(x)], dim=1)

    def encode(self, x: torch.Tensor, text: TextCondition | None, features: torch.Tensor | None,
               second: torch.Tensor | None = None, present: torch.Tensor | None = None) -> Features:
        """Source volume + condition -> :class:`Features`.

        x: (B, 1, D, H, W) normalized intensities; text: encoded prompts (B rows);
        features: (B, PAIR_FEATURE_DIM) numeric protocol features; second (``second_source``
        models only): (B, 1, D, H, W), a second normalized source on the same grid, and
        present: (B,) which samples have one (default: all, when ``second`` is given).
        Returns features (B, channels[0], D, H, W) on the same grid and cond (B, cond_dim) or None.
        """
        self._check_inputs(x, text, features, second, present)
        extra = self._second_input(x, second, present) if second is not None else None
        depth, height, width = x.shape[2:]
        m = self.config.size_multiple
        pads = [(-n) % m for n in (depth, height, width)]
        if any(pads):  # replicate-pad the far side of each axis, cropped back below
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
            if extra is not None:
                extra = F.pad(extra, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
        cond = None
        if self.condition is not None:
            cond = self.condition(text.pooled.to(x.device), features.to(x.device))
        h = self.stem(x)
        if extra is not None:
            h = h + self.stem_second(extra)
        skips: list[torch.Tensor] = []
        for s, stage in enumerate(self.encoder):  # 1. encoder: refine then fuse at low resolution
            if s > 0:
                h = self.down[s - 1](h)
            if self.stage_film is not None:
                gamma, beta = self.stage_film[s](cond).to(h.dtype)[:, :, None, None, None].chunk(2, dim=1)
                h = h * (1.0 + gamma) + beta
            h = stage(h)
            if str(s) in self.refine:
                h = self.refine[str(s)](h)
            if str(s) in self.fuse:
                h = self._fuse(s, h, text, features, cond)
            skips.append(h)
        h = skips.pop()
        for s in reversed(range(len(self.decoder))):  # 2. decoder with additive skips
            h = self.up[s](h)
            h = h.add_(skips.pop())
            h = self.decoder[s](h)
        if extra is not None:
            late = self.late_second(h, extra, x) if isinstance(self.late_second, LateSecondSource) \
                else self.late_second(extra)
            h = h + late
        if any(pads):
            h = h[:, :, :depth, :height, :width].contiguous()
        prior = None
        if self.uses_physics_mix:  # the target's nominal tissue signals: the last PHYSICS_DIM
            prior = features[:, -PHYSICS_DIM:-1].to(device=h.device, dtype=torch.float32)  # (B, 8)
            if extra is not None and self.mix_second is not None:  # times the presence flag
                prior = prior + self.mix_second(cond).float() * extra[:, 1, 0, 0, 0, None].float()
        return Features(h, cond, prior)

    def _fuse(self, scale: int, h: torch.Tensor, text: TextCondition, features: torch.Tensor,
              cond: torch.Tensor) -> torch.Tensor:
        block = self.fuse[str(scale)]
        if isinstance(block, CrossModalFusion):
            device = h.device
            return block(h, text.tokens.to(device), text.mask.to(device), features.to(device), cond)
        return block(h, cond)

    def lesion_signal(self, feats: Features, features: torch.Tensor, p: torch.Tensor | None = None) -> float:
        """What a voxel that is all lesion gets in the output of ``feats`` (one sample): the
        target's lesion/white-matter ratio from the signal equation (the physics features of
        ``features``) times the model's white-matter level, per ``config.lesion_level``: its
        mixing weight of white matter (``"weight"``), or :meth:`white_matter_level`
        (``"output"``; ``p``, the detector's probability on the working grid ``(D, H, W)``,
        keeps lesions out of it). Models with a :attr:`lesion` detector only."""
        if self.lesion is None or not isinstance(self.head, ImplicitDecoder) or self.head.mix is None:
            raise ValueError("lesion_signal needs a model with a lesion detector (lesion_net).")
        physics = features[:, -PHYSICS_DIM:-1].to(device=feats.cond.device, dtype=torch.float32)
        weight = float(self.mixing_weights(feats)[0, WHITE_MATTER])
        level = weight
        if self.config.lesion_level == "output":
            level = self.white_matter_level(feats, p)
            if level is None:
                logger.warning("Too few voxels where white matter dominates the bases; the lesion signal uses the "
                            "white-matter weight (lesion_level = 'weight')")
                level = weight
        return float(lesion_ratio(physics)[0]) * level

    def white_matter_level(self, feats: Features, p: torch.Tensor | None = None, *, planes: int = 16,
                           share: float = 0.9, min_voxels: int = 100) -> float | None:
        """The model's own output where white matter dominates (one sample): the median over
        the voxels of ``planes`` central planes of the working grid whose white-matter basis is
        more than ``share`` of the bases' sum and, given the detector's probability ``p``
        ``(D, H, W)``, whose p is below 0.5. None where fewer than ``min_voxels`` qualify."""
        depth = feats.volume.shape[2]
        z0 = max(0, depth // 2 - planes // 2)
        out, bases = self.render_grid(feats.with_volume(feats.volume[:, :, z0:z0 + planes]), with_bases=True)
        out, bases = out[0, 0].float(), bases[0].float()
        total = bases.sum(0)
        white = (bases[WHITE_MATTER] > share * total) & (total > 0)
        if p is not None:
            white &= p[z0:z0 + planes].to(white.device) < 0.5
        if int(white.sum()) < min_voxels:
            return None
        return float(np.median(out[white].cpu().numpy()))

    def mixing_weights(self, feats: Features) -> torch.Tensor:
        """The weights that mix the output bases of ``feats``, ``(B, bases)`` in float32: the
        physics prior (the target's nominal tissue signals) plus the learned correction.
        Models with the physics mix (``physics_mix``, implicit decoder) only."""
        weights = None
        if self.uses_physics_mix and isinstance(self.head, ImplicitDecoder) and feats.mix_prior is not None:
            weights = self.head.mixing_weights(feats.cond, feats.mix_prior)
        if weights is None:
            raise ValueError("mixing_weights needs a model that mixes its bases over the physics prior "
                             "(physics_mix with the implicit decoder).")
        return weights.float()

    def query(self, feats: Features, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Intensities at continuous voxel coordinates ``(z, y, x)`` of the input grid.

        coords: (B, N, 3); cell: (B, 3) output voxel size in input voxels. Returns (B, N).
        """
        return self.head.query(feats, coords, cell)

    def render_grid(self, feats: Features, *, with_bases: bool = False
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Output at the input voxel centres, (B, 1, D, H, W); ``with_bases`` (implicit decoder
        only): also the unmixed output bases (B, head_bases, D, H, W)."""
        if with_bases:
            if not isinstance(self.head, ImplicitDecoder):
                raise ValueError("with_bases needs the implicit decoder. Found decoder='conv'.")
            return self.head.render_grid(feats, with_bases=True)
        return self.head.render_grid(feats)

    def forward(self, x: torch.Tensor, text: TextCondition | None, features: torch.Tensor | None,
                second: torch.Tensor | None = None, present: torch.Tensor | None = None) -> torch.Tensor:
        """``render_grid(encode(...))``: (B, 1, D, H, W) -> (B, 1, D, H, W)."""
        return self.render_grid(self.encode(x, text, features, second, present))

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters; the frozen text encoder is not part of this module."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def summary(self) -> dict[str, object]:
        """Architecture summary for provenance (``Synthesizer.info``)."""
        cfg = self.config
        return {
            "channels": list(cfg.channels), "refinement": cfg.refinement, "fusion": cfg.fusion,
            "decoder": cfg.decoder, "fusion_scales": list(cfg.fusion_scales), "second_source": cfg.second_source,
            "lesion_net": cfg.lesion_net, "trainable_parameters": self.num_parameters(),
        }


def with_second_source(model: RTFSyn, late: str = "linear") -> RTFSyn:
    """A copy of ``model`` that also takes a second source (``second_source=True``, its
    ``late_second`` branch of kind ``late``) and, until trained, ignores it: its second-source
    branches start at zero, so the copy's output equals the original's with or without a
    second source (a fine-tune starts from it)."""
    if model.config.second_source:
        raise ValueError("the model already takes a second source.")
    wide = RTFSyn(model.config.replace(second_source=True, second_late=late))
    missing, unexpected = wide.load_state_dict(model.state_dict(), strict=False)
    branches = {n for n in wide.state_dict() if n.startswith(SECOND_SOURCE_BRANCHES)}
    if unexpected or set(missing) != branches:
        raise ValueError(f"cannot widen this model: missing {missing}, unexpected {unexpected}")
    return wide
