"""``RTFSynConfig``: every hyper-parameter of the network, typed, defaulted, validated."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from synthesis.condition import PAIR_FEATURE_DIM, PHYSICS_DIM
from synthesis.text import TEXT_DIM

__all__ = ["RTFSynConfig", "Refinement", "Fusion", "Decoder", "Upsampler", "REFINEMENTS", "FUSIONS",
           "DECODERS", "UPSAMPLERS", "LEGACY_FIELDS"]


class Refinement(str, Enum):
    """Ablation switch: axis-aware visual refinement before fusion, or none."""

    AXIS = "axis"
    NONE = "none"


class Fusion(str, Enum):
    """Ablation switch: RTF cross-modal fusion, a TUMSyn-style global text gate, or no text."""

    RTF = "rtf"
    GLOBAL = "global"
    NONE = "none"


class Decoder(str, Enum):
    """Ablation switch: implicit (LIIF-style) decoder or a conv head."""

    IMPLICIT = "implicit"
    CONV = "conv"


class Upsampler(str, Enum):
    """Decoder upsampling: trilinear (no checkerboard) or a stride-2 transposed convolution."""

    TRILINEAR = "trilinear"
    TRANSPOSE = "transpose"


REFINEMENTS = tuple(m.value for m in Refinement)
FUSIONS = tuple(m.value for m in Fusion)
DECODERS = tuple(m.value for m in Decoder)
UPSAMPLERS = tuple(m.value for m in Upsampler)
#: Values of fields added after the first released checkpoints, as those checkpoints used them
#: (:func:`synthesis.checkpoint.load` fills them in when a stored config lacks them).
LEGACY_FIELDS = {"upsample": "transpose", "head_bases": 1, "stage_film": False, "physics_mix": False,
                 "second_source": False}


def _lesion_table(p: Any, f: Any) -> None:
    """ValueError unless ``p``/``f`` are both empty, or knots of one length >= 2 with ``p`` rising
    strictly from 0 to 1 and ``f`` non-decreasing in [0, 1]."""
    try:
        p, f = [float(v) for v in p], [float(v) for v in f]
    except (TypeError, ValueError):
        raise ValueError(f"lesion_fraction_p and lesion_fraction_f must be lists of numbers. Found {p!r}, {f!r}.") \
            from None
    if not p and not f:
        return
    if len(p) != len(f) or len(p) < 2:
        raise ValueError(f"lesion_fraction_p and lesion_fraction_f must hold the same number (>= 2) of knots. "
                         f"Found {len(p)} and {len(f)}.")
    if p[0] != 0.0 or p[-1] != 1.0 or any(b <= a for a, b in zip(p, p[1:])):
        raise ValueError(f"lesion_fraction_p must rise strictly from 0 to 1. Found {p!r}.")
    if any(not 0.0 <= v <= 1.0 for v in f) or any(b < a for a, b in zip(f, f[1:])):
        raise ValueError(f"lesion_fraction_f must be non-decreasing within [0, 1]. Found {f!r}.")


def _int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Found {value!r}.")


def _choice(name: str, value: Any, kind: type[Enum]) -> str:
    """``value`` (a str or a member of ``kind``) as the plain string of its member."""
    try:
        return kind(value).value
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValueError(f"{name} must be one of {allowed}. Found {value!r}.") from None


@dataclass(frozen=True)
class RTFSynConfig:
    """Hyper-parameters of :class:`~synthesis.nets.rtfsyn.RTFSyn`.

    channels: encoder width per scale; scale ``s`` has resolution ``1/2**s``.
    blocks: residual blocks per scale in the encoder and in the decoder.
    fusion_scales: scales where AVR then fusion run (low resolution: few tokens).
    refinement / fusion / decoder: the ablation switches.
    axis_kernel, axis_dilations: AVR directional convolutions.
    attn_dim, heads, pack: CAF cross-attention width, heads and pack factor r.
    kernel_bank, conv_groups: CAF dynamic convolution bank size K and groups; kernel_bank=0
    leaves the dynamic convolution out (the "no dynamic conv" ablation).
    cond_dim: condition vector width; head_hidden, head_layers: decoder MLP.
    head_bases: K outputs of the decoder MLP mixed by weights generated from the
    condition (a text-conditioned dynamic output layer; 1 = a plain output).
    stage_film: scale and shift each encoder stage's input per channel from the condition.
    physics_mix: the output mixing weights start from the target protocol's nominal tissue
    signals (:func:`synthesis.condition.physics_features`), so each of the ``head_bases`` =
    8 bases stands for one tissue class and the learned weights are corrections.
    second_source: a second stem branch (``stem_second``) also takes a second source of the
    same subject on the same grid (a T2-weighted series of the same study, where the lesions
    a T1 shows as grey-matter-like are bright) and its presence (a channel of 1s), and a
    1x1x1 branch (``late_second``) adds them to the full-resolution features the decoder head
    reads; without a second source both add nothing and the model works from the first alone.
    second_late: the ``late_second`` branch, ``linear`` (a 1x1x1 convolution of the second
    source and its presence) or ``mlp`` (a per-voxel MLP of the features, the second source
    and its 3x3x3 neighbourhood, times the presence: it can tell a lesion, bright on T2w and
    not dark on T1, from CSF, bright on T2w and dark on T1, which a linear branch cannot; with
    ``physics_mix`` also ``mix_second``, a shift of the bases' mixing weights when a second
    source is given).
    lesion_net: a white-matter lesion detector on the source (:class:`synthesis.nets.lesion.LesionNet`,
    trained apart with a detection loss, ``rtfsyn train --lesion-net``), whose probability
    enters the output as the lesion basis would (:func:`synthesis.nets.lesion.compose`);
    needs ``physics_mix``.
    lesion_gain: a calibration of the detector: ``min(1, lesion_gain * p)`` is the lesion
    fraction composed into the output; 1.0 composes ``p`` itself. Used at inference only.
    Gains of 1.2-1.6 were tried on validation subjects and did not bring the lesion contrast
    closer to the truth (docs/TRAINING.md, *Lesion contrast after the PDw fine-tune*).
    lesion_fraction_p, lesion_fraction_f: a monotone table from the detector's probability to
    the lesion fraction (``np.interp`` between the knots, applied before the gain; empty: ``p``
    itself). The detector is trained with its positives weighted up, so a voxel half lesion
    gets p near 1 and composing p makes the lesion's edge as bright as its core
    (``bench/lesion_calibration.py`` fits the table on training-split subjects).
    lesion_level: what a voxel that is all lesion gets relative to white matter: ``"weight"``,
    the signal ratio times the model's mixing weight of white matter; ``"output"``, the ratio
    times the model's own output where its white-matter basis dominates (median over central
    planes), so that lesion/WM is the ratio even where the bases do not sum to 1.
    upsample: decoder upsampling, ``trilinear`` (1x1x1 projection, then trilinear x2:
    no checkerboard) or ``transpose`` (2x2x2 stride-2 transposed convolution).
    query_chunk: queries per chunk; render_voxels: voxels per slab when rendering.
    text_dim, feature_dim: widths of the text tokens and numeric protocol features.
    """

    channels: tuple[int, ...] = (16, 32, 64, 96)
    blocks: int = 1
    fusion_scales: tuple[int, ...] = (2, 3)
    refinement: str = "axis"
    fusion: str = "rtf"
    decoder: str = "implicit"
    axis_kernel: int = 7
    axis_dilations: tuple[int, ...] = (1, 3)
    attn_dim: int = 128
    heads: int = 4
    pack: int = 2
    kernel_bank: int = 4
    conv_groups: int = 4
    cond_dim: int = 64
    head_hidden: int = 64
    head_layers: int = 2
    head_bases: int = 8
    upsample: str = "trilinear"
    stage_film: bool = True
    physics_mix: bool = True
    second_source: bool = False
    second_late: str = "linear"
    lesion_net: bool = False
    lesion_gain: float = 1.0
    lesion_fraction_p: tuple[float, ...] = ()
    lesion_fraction_f: tuple[float, ...] = ()
    lesion_level: str = "weight"
    query_chunk: int = 32768
    render_voxels: int = 1 << 20
    text_dim: int = TEXT_DIM
    feature_dim: int = PAIR_FEATURE_DIM

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "channels", tuple(self.channels))
        set_(self, "fusion_scales", tuple(sorted(set(self.fusion_scales))))
        set_(self, "axis_dilations", tuple(self.axis_dilations))
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 scales. Found {self.channels!r}.")
        for i, c in enumerate(self.channels):
            _int(f"channels[{i}]", c)
        _int("kernel_bank", self.kernel_bank, minimum=0)
        for name in ("blocks", "axis_kernel", "attn_dim", "heads", "pack", "conv_groups",
                     "cond_dim", "head_hidden", "head_layers", "head_bases", "query_chunk",
                     "render_voxels",
                     "text_dim", "feature_dim"):
            _int(name, getattr(self, name))
        if self.axis_kernel % 2 == 0:
            raise ValueError(f"axis_kernel must be odd. Found {self.axis_kernel}.")
        if not self.axis_dilations:
            raise ValueError("axis_dilations must hold at least one dilation. Found ().")
        for d in self.axis_dilations:
            _int("axis_dilations[i]", d)
        if not isinstance(self.second_source, bool):
            raise ValueError(f"second_source must be true or false. Found {self.second_source!r}.")
        if self.second_late not in ("linear", "mlp"):
            raise ValueError(f"second_late must be 'linear' or 'mlp'. Found {self.second_late!r}.")
        if not isinstance(self.lesion_net, bool):
            raise ValueError(f"lesion_net must be true or false. Found {self.lesion_net!r}.")
        if isinstance(self.lesion_gain, bool) or not isinstance(self.lesion_gain, (int, float)) \
                or not 0.0 < float(self.lesion_gain) <= 10.0:
            raise ValueError(f"lesion_gain must be a number in (0, 10]. Found {self.lesion_gain!r}.")
        set_(self, "lesion_gain", float(self.lesion_gain))
        _lesion_table(self.lesion_fraction_p, self.lesion_fraction_f)
        set_(self, "lesion_fraction_p", tuple(float(v) for v in self.lesion_fraction_p))
        set_(self, "lesion_fraction_f", tuple(float(v) for v in self.lesion_fraction_f))
        if self.lesion_level not in ("weight", "output"):
            raise ValueError(f"lesion_level must be 'weight' or 'output'. Found {self.lesion_level!r}.")
        if self.lesion_net and not (self.physics_mix and self.decoder == "implicit" and self.fusion != "none"):
            raise ValueError("lesion_net needs the physics mix (physics_mix, the implicit decoder and a fusion "
                             "other than 'none'): its map enters the output through the white-matter weight.")
        for name, kind in (("refinement", Refinement), ("fusion", Fusion), ("decoder", Decoder),
                           ("upsample", Upsampler)):
            set_(self, name, _choice(name, getattr(self, name), kind))
        if self.physics_mix and self.fusion != "none":
            if self.head_bases != PHYSICS_DIM - 1 or self.feature_dim != PAIR_FEATURE_DIM:
                raise ValueError(
                    f"physics_mix needs head_bases={PHYSICS_DIM - 1} (one per tissue class) and "
                    f"feature_dim={PAIR_FEATURE_DIM}. Found head_bases={self.head_bases}, "
                    f"feature_dim={self.feature_dim}.")
        for s in self.fusion_scales:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < len(self.channels):
                raise ValueError(
                    f"fusion_scales must be scale indices in [0, {len(self.channels) - 1}]. Found {s!r}."
                )
        if self.attn_dim % self.heads:
            raise ValueError(
                f"attn_dim must be divisible by heads. Found attn_dim={self.attn_dim}, heads={self.heads}."
            )
        for s in self.fusion_scales:
            if self.channels[s] % self.conv_groups:
                raise ValueError(
                    f"channels[{s}] must be divisible by conv_groups. "
                    f"Found channels[{s}]={self.channels[s]}, conv_groups={self.conv_groups}."
                )

    @property
    def size_multiple(self) -> int:
        """D, H, W are padded internally to a multiple of this."""
        deepest = 2 ** (len(self.channels) - 1)
        packed = max((2**s * self.pack for s in self.fusion_scales), default=1) if self.fusion == "rtf" else 1
        return max(deepest, packed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RTFSynConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown RTFSynConfig fields: {unknown}. Known: {sorted(known)}.")
        return cls(**dict(data))

    @classmethod
    def tiny(cls, **changes: Any) -> "RTFSynConfig":
        """A very small configuration for tests (16³-24³ volumes in well under a second)."""
        values: dict[str, Any] = dict(
            channels=(8, 12, 16), fusion_scales=(1, 2), axis_kernel=3, attn_dim=16, heads=2,
            kernel_bank=2, conv_groups=2, cond_dim=16, head_hidden=16, query_chunk=4096,
        )
        values.update(changes)
        return cls(**values)

    def replace(self, **changes: Any) -> "RTFSynConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
