"""``Synthesizer``: the inference API the DICOM node calls.

Steps of one call (see ``docs/ARCHITECTURE.md``):

1. validate the volume ``(z, y, x)`` and spacing ``(dz, dy, dx)`` mm; N4 bias-field
   correction when asked for (:func:`synthesis.bias.n4_correct`);
2. normalize by the tissue peak (:mod:`synthesis.intensity`; independent of the field of view);
3. resample to the ~1 mm working grid (:func:`synthesis.grid.working_spacing`), anti-aliased;
4. encode the prompt (cached) and the numeric protocol features;
5. encode the volume whole, or in overlapping tiles blended smoothly in feature space;
6. decode the output grid (``render_grid`` when it equals the working grid, else chunked ``query``);
   a model with a lesion detector (``lesion_net``) composes its lesion map into the output
   (:mod:`synthesis.nets.lesion`);
7. clip to ``[0, OUTPUT_MAX]`` (brain-relative units) and return float32.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from synthesis import grid, intensity
from synthesis.nets.lesion import compose, lesion_fraction
from synthesis.nets.rtfsyn import Features, RTFSyn
from synthesis.protocol import MRProtocol
from synthesis.condition import pair_features, prompt
from synthesis.text import TextCondition

__all__ = ["Synthesizer", "SynthesisResult", "OUTPUT_MAX"]

logger = logging.getLogger(__name__)

OUTPUT_MAX = 2.0            # outputs are clipped to [0, OUTPUT_MAX] (brain's bright end ~1; fat may be brighter)
_CPU_TILE_VOXELS = 12_000_000   # whole-volume inference up to ~230^3 voxels on CPU (~4.3 GB peak RSS)
_BYTES_PER_VOXEL_CUDA = 400     # measured peak of the default model, with margin
_QUERY_BUDGET = 1 << 21         # output voxels decoded per slab on the query path
_TEXT_CACHE_SIZE = 256          # encoded prompts kept on the device


@dataclass(frozen=True)
class SynthesisResult:
    """One synthesized volume.

    volume: float32 (z, y, x) in brain-relative units: 0 is no signal and the bright end
    of the brain (its 99.5th percentile) is about 1 (see :mod:`synthesis.data`).
    spacing: (dz, dy, dx) mm of the output grid.
    origin_offset_mm: output voxel (0,0,0) centre minus input voxel (0,0,0) centre, mm per axis.
    prompt: the sentence that conditioned the synthesis.
    """

    volume: np.ndarray
    spacing: tuple[float, float, float]
    origin_offset_mm: tuple[float, float, float]
    prompt: str


def _output_axes(out_shape: Sequence[int], spacing: Sequence[float], work_spacing: Sequence[float],
                 out_spacing: Sequence[float]) -> list[np.ndarray]:
    """Per axis, the continuous working-grid coordinates (voxel indices) of the output centres."""
    axes = []
    for n, sp_in, sp_w, sp_o in zip(out_shape, spacing, work_spacing, out_spacing):
        mm = grid.axis_coords(n, sp_in, sp_o) * sp_in           # mm from input centre 0
        axes.append((mm - 0.5 * (sp_w - sp_in)) / sp_w)
    return axes


def _interpolate(volume: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """``volume`` at the outer product of per-axis coordinates ``axes`` (voxel indices),
    separable linear interpolation, clamped at the borders as the decoder's queries are."""
    out = volume.astype(np.float32, copy=False)
    for axis, coords in enumerate(axes):
        n = out.shape[axis]
        c = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
        low = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        high = np.minimum(low + 1, n - 1)
        frac = (c - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        a, b = np.take(out, low, axis=axis), np.take(out, high, axis=axis)
        out = a + (b - a) * frac
    return out


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'. Found {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} was requested but CUDA is not available here.")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'. Found {device!r}.")
    return resolved


def _resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    from synthesis.checkpoint import default_checkpoint_path

    if checkpoint is None or str(checkpoint) == "default":
        path = default_checkpoint_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"No default RTFSyn checkpoint at {path}. Train one with `rtfsyn train` "
                "(it writes synthesis/weights/default.pt) or pass checkpoint=<path to a .pt file>."
            )
        return path
    return Path(checkpoint)


def _check_values(array: np.ndarray, name: str) -> None:
    """``array`` holds finite real numbers, else ``ValueError`` naming it."""
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)) or array.dtype == bool:
        raise ValueError(f"{name} must hold real numbers. Found dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{name} must be finite. Found {bad} NaN or infinite voxels.")


def _validate(volume: np.ndarray, spacing: Sequence[float], source: MRProtocol, target: MRProtocol,
              output_spacing: Sequence[float] | None) -> np.ndarray:
    """Checks of one call; returns the volume as an array."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x). Found {volume.ndim} dimensions, shape {volume.shape}.")
    if min(volume.shape) < 2:
        raise ValueError(f"volume needs at least 2 voxels along every axis. Found shape {volume.shape}.")
    _check_values(volume, "volume")
    grid.working_spacing(spacing)  # validates spacing
    if output_spacing is not None:
        grid.output_shape(volume.shape, spacing, output_spacing)  # validates output_spacing
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, MRProtocol):
            raise TypeError(f"{name} must be an MRProtocol. Found {type(value).__name__}.")
    return volume


class Synthesizer:
    """A loaded RTFSyn model, kept resident; call it on volumes.

    ``checkpoint``: path, or ``"default"``/None for ``synthesis/weights/default.pt``.
    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
    ``max_tile_voxels``: the largest (padded) working-grid block encoded at once;
    larger volumes are split into overlapping tiles. ``tile_overlap``: voxels shared
    by neighbouring tiles. ``bias_correction``: N4-correct every source before
    normalizing it (:func:`synthesis.bias.n4_correct`; seconds per volume on a CPU).
    """

    def __init__(self, checkpoint: str | Path | None = "default", device: str = "auto", *,
                 max_tile_voxels: int | None = None, tile_overlap: int = 32,
                 bias_correction: bool = False) -> None:
        from synthesis.checkpoint import load

        from synthesis.lesion_check import load_checks

        path = _resolve_checkpoint(checkpoint)
        model, meta = load(path, map_location="cpu")
        self._setup(model, device, meta["model_version"], meta["sha256"], max_tile_voxels, tile_overlap,
                    bias_correction)
        self.lesion_checks = load_checks(path, meta["sha256"])
        logger.info("Loaded RTFSyn %s from %s on %s", self._model_version, path, self.device)

    @classmethod
    def from_model(cls, model: RTFSyn, device: str = "cpu", *, max_tile_voxels: int | None = None,
                   tile_overlap: int = 32, model_version: str = "unsaved",
                   bias_correction: bool = False) -> "Synthesizer":
        """Wrap an in-memory model (e.g. during training); ``info['checkpoint_sha256']`` is None.

        The model is moved to ``device`` and put in eval mode (in place).
        """
        if not isinstance(model, RTFSyn):
            raise TypeError(f"model must be an RTFSyn. Found {type(model).__name__}.")
        self = cls.__new__(cls)
        self._setup(model, device, model_version, None, max_tile_voxels, tile_overlap, bias_correction)
        return self

    def _setup(self, model: RTFSyn, device: str, version: str, digest: str | None,
               max_tile_voxels: int | None, tile_overlap: int, bias_correction: bool) -> None:
        if max_tile_voxels is not None and (isinstance(max_tile_voxels, bool) or int(max_tile_voxels) < 8):
            raise ValueError(f"max_tile_voxels must be an integer >= 8. Found {max_tile_voxels!r}.")
        if isinstance(tile_overlap, bool) or int(tile_overlap) < 0:
            raise ValueError(f"tile_overlap must be an integer >= 0. Found {tile_overlap!r}.")
        if not isinstance(bias_correction, bool):
            raise ValueError(f"bias_correction must be True or False. Found {bias_correction!r}.")
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self._model_version, self._sha256 = version, digest
        self.max_tile_voxels = int(max_tile_voxels) if max_tile_voxels is not None else self._default_budget()
        self.tile_overlap = int(tile_overlap)
        self.bias_correction = bias_correction
        self.lesion_checks: dict[str, dict[str, Any]] = {}  # synthesis.lesion_check, per target contrast
        self._lock = threading.Lock()
        self._text_cache: dict[str, TextCondition] = {}

    def target_refusal(self, contrast: str, second: str | None = None) -> str | None:
        """Why this model must not synthesize ``contrast`` (its lesion check failed), or None;
        ``second``: the contrast of a second source given with the first (its own check)."""
        from synthesis.lesion_check import refusal

        return refusal(self.lesion_checks, contrast, second)

    @property
    def takes_second_source(self) -> bool:
        """True when the model also takes a second source (a T2w of the same subject)."""
        return bool(self.model.config.second_source)

    def _default_budget(self) -> int:
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            return max(64**3, int(0.6 * total / _BYTES_PER_VOXEL_CUDA))
        return _CPU_TILE_VOXELS

    @property
    def info(self) -> dict[str, Any]:
        """Provenance: model_name, model_version, checkpoint_sha256, architecture, device,
        bias_correction (whether sources are N4-corrected)."""
        return {
            "model_name": "RTFSyn",
            "model_version": self._model_version,
            "checkpoint_sha256": self._sha256,
            "architecture": self.model.summary(),
            "device": str(self.device),
            "bias_correction": self.bias_correction,
        }

    # -- the call --------------------------------------------------------
    def __call__(self, volume: np.ndarray, spacing: Sequence[float], source: MRProtocol, target: MRProtocol,
                 output_spacing: Sequence[float] | None = None, *,
                 source_peak: float | None = None,
                 second: np.ndarray | None = None, second_peak: float | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> SynthesisResult:
        """Synthesize ``target`` from a ``source`` volume; see the module docstring.

        ``output_spacing``: the output grid (default :func:`synthesis.grid.default_output_spacing`).
        ``source_peak``: the source's tissue peak (:func:`synthesis.intensity.tissue_peak`,
        after bias correction when that is on) when it is known from a larger volume than
        the one given (evaluation on crops).
        ``second``: a second source of the same subject on the same grid as ``volume`` (models
        with :attr:`takes_second_source`; the caller resamples it), normalized by its own
        tissue peak (``second_peak`` when known from a larger volume).
        ``progress(phase, done, total)``: called after each encoded tile (phase
        ``"encode"``) and each decoded chunk of output planes (``"decode"``).
        Raises ``ValueError`` for a source with no usable signal (blank or constant).
        """
        volume = _validate(volume, spacing, source, target, output_spacing)
        spacing = tuple(float(s) for s in spacing)
        if second is not None:
            second = self._validate_second(second, volume.shape)
        start = time.perf_counter()
        if self.bias_correction:  # outside the lock: it does not use the model
            from synthesis.bias import n4_correct

            volume = n4_correct(volume, spacing)
            if second is not None:
                second = n4_correct(second, spacing)
        with self._lock, torch.inference_mode():
            work, work_spacing = self._working_source(volume, spacing, source_peak)  # 2, 3
            work_second = None
            if second is not None:
                peak2 = intensity.tissue_peak(second, spacing) if second_peak is None else second_peak
                work_second = grid.resample_antialiased(intensity.scale_source(second, peak2), spacing,
                                                        work_spacing)
            text_prompt = prompt(source, target)                                    # 4
            text, features = self.condition(text_prompt, source, target)
            tick = progress or (lambda _phase, _done, _total: None)
            feats = self._encode(work, text, features, tick, work_second)           # 5
            out_spacing = tuple(float(s) for s in (output_spacing or grid.default_output_spacing(spacing)))
            out = self._decode(feats, volume.shape, spacing, work_spacing, out_spacing, tick)  # 6
            if self.model.lesion is not None:
                out = self._with_lesions(out, work, feats, features, volume.shape, spacing, work_spacing,
                                         out_spacing)
            del feats, work, work_second
            np.clip(out, 0.0, OUTPUT_MAX, out=out)                                  # 7
            logger.info("Synthesized %s -> %s grid in %.1f s", volume.shape, out.shape, time.perf_counter() - start)
        return SynthesisResult(out, out_spacing, grid.origin_offset_mm(spacing, out_spacing), text_prompt)

    @staticmethod
    def _working_source(volume: np.ndarray, spacing: tuple[float, float, float], source_peak: float | None
                        ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The source normalized by its tissue peak (``source_peak`` when given) on the working
        grid, and that grid's spacing."""
        peak = intensity.tissue_peak(volume, spacing) if source_peak is None else source_peak
        work_spacing = grid.working_spacing(spacing)
        return grid.resample_antialiased(intensity.scale_source(volume, peak), spacing, work_spacing), work_spacing

    def lesion_probability(self, volume: np.ndarray, spacing: Sequence[float], *, source_peak: float | None = None
                           ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The lesion detector's probability on the working grid, found as :meth:`__call__`
        finds it (bias correction when it is on, the same normalization), and the working
        spacing. ValueError for a model without a detector."""
        if self.model.lesion is None:
            raise ValueError("This model has no lesion detector (lesion_net = false).")
        spacing = tuple(float(s) for s in spacing)
        if self.bias_correction:
            from synthesis.bias import n4_correct

            volume = n4_correct(volume, spacing)
        with self._lock, torch.inference_mode():
            work, work_spacing = self._working_source(volume, spacing, source_peak)
            p = self.model.lesion.probability(torch.from_numpy(work)[None, None].to(self.device))[0, 0]
        return p.cpu().numpy(), work_spacing

    def _validate_second(self, second: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if not self.takes_second_source:
            raise ValueError("this model takes one source; a second source was given.")
        second = np.asarray(second)
        if second.shape != tuple(shape):
            raise ValueError(f"the second source must be on the first's grid, shape {tuple(shape)}. "
                             f"Found {second.shape}.")
        _check_values(second, "the second source")
        return second

    def condition(self, text_prompt: str, source: MRProtocol,
                  target: MRProtocol) -> tuple[TextCondition | None, torch.Tensor]:
        """The model's condition inputs for ``text_prompt`` and the protocol pair: the encoded
        prompt (None for a model without text; the last prompts are cached) and the numeric
        protocol features, ``(1, feature_dim)``, on the synthesizer's device."""
        numeric = pair_features(source, target)[: self.model.config.feature_dim]  # older models: a prefix
        features = torch.from_numpy(numeric)[None].to(self.device)
        if not self.model.uses_text:
            return None, features
        text = self._text_cache.get(text_prompt)
        if text is None:
            from synthesis.text import get_text_encoder

            text = get_text_encoder().encode([text_prompt]).to(self.device)
            if len(self._text_cache) >= _TEXT_CACHE_SIZE:  # drop the oldest prompt
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[text_prompt] = text
        return text, features

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _encode(self, work: np.ndarray, text: TextCondition | None, features: torch.Tensor,
                tick: Callable[[str, int, int], None], second: np.ndarray | None = None) -> Features:
        """Features of the whole working volume, tiled when it exceeds the voxel budget."""
        m = self.model.config.size_multiple
        padded = [math.ceil(n / m) * m for n in work.shape]
        x = torch.from_numpy(work)[None, None]
        x2 = torch.from_numpy(np.ascontiguousarray(second, dtype=np.float32))[None, None] \
            if second is not None else None

        def run(region: tuple[slice, ...] | tuple[()] = ()) -> Features:
            part = x[(..., *region)].to(self.device)
            with self._autocast():
                if x2 is None:
                    return self.model.encode(part, text, features)
                return self.model.encode(part, text, features, x2[(..., *region)].to(self.device))

        if math.prod(padded) <= self.max_tile_voxels:
            feats = run()
            tick("encode", 1, 1)
            return feats.with_volume(feats.volume.float())
        tiles = grid.plan_tiles(work.shape, self.max_tile_voxels, m, self.tile_overlap)
        logger.info("Encoding %s in %d tiles of %s", work.shape, len(tiles), tiles[0][1])
        accum = weight_sum = last = None
        for done, (start, size) in enumerate(tiles, 1):
            region = tuple(slice(s, s + n) for s, n in zip(start, size))
            feats = run(region)
            weights = torch.from_numpy(grid.blend_weights(start, size, work.shape, self.tile_overlap)).to(self.device)
            if accum is None:
                accum = torch.zeros(feats.volume.shape[1], *work.shape, device=self.device)
                weight_sum = torch.zeros(work.shape, device=self.device)
            accum[(slice(None), *region)] += feats.volume[0].float() * weights
            weight_sum[region] += weights
            last = feats
            tick("encode", done, len(tiles))
        accum /= weight_sum
        return last.with_volume(accum[None])

    def _decode(self, feats: Features, in_shape: Sequence[int], spacing: tuple[float, float, float],
                work_spacing: tuple[float, float, float], out_spacing: tuple[float, ...],
                tick: Callable[[str, int, int], None]) -> np.ndarray:
        """Output grid ``(z, y, x)`` float32 from the working-grid features."""
        work_shape = tuple(feats.volume.shape[2:])
        out_shape = grid.output_shape(in_shape, spacing, out_spacing)
        if out_shape == work_shape and np.allclose(out_spacing, work_spacing):
            with self._autocast():
                out = self.model.render_grid(feats)
            tick("decode", 1, 1)
            return out[0, 0].float().cpu().numpy()
        axes = [torch.from_numpy(a).float() for a in _output_axes(out_shape, spacing, work_spacing, out_spacing)]
        cell = torch.tensor([[o / w for o, w in zip(out_spacing, work_spacing)]], device=self.device)
        out = np.empty(out_shape, dtype=np.float32)
        planes = max(1, _QUERY_BUDGET // (out_shape[1] * out_shape[2]))
        for j0 in range(0, out_shape[0], planes):
            zc = axes[0][j0: j0 + planes]
            # the working planes these queries touch, plus one halo plane each side (conv head)
            lo = max(0, int(math.floor(float(zc.min()))) - 1)
            hi = min(work_shape[0], int(math.floor(float(zc.max()))) + 3)
            sub = feats.with_volume(feats.volume[:, :, lo:hi])
            zz, yy, xx = torch.meshgrid(zc - lo, axes[1], axes[2], indexing="ij")
            coords = torch.stack([zz, yy, xx], dim=-1).reshape(1, -1, 3).to(self.device)
            with self._autocast():
                values = self.model.query(sub, coords, cell)
            out[j0: j0 + len(zc)] = values.float().reshape(len(zc), out_shape[1], out_shape[2]).cpu().numpy()
            tick("decode", j0 // planes + 1, math.ceil(out_shape[0] / planes))
        return out

    def _with_lesions(self, out: np.ndarray, work: np.ndarray, feats: Features, features: torch.Tensor,
                      in_shape: Sequence[int], spacing: tuple[float, float, float],
                      work_spacing: tuple[float, float, float], out_spacing: tuple[float, ...]) -> np.ndarray:
        """``out`` with the lesion detector's map composed in (:func:`synthesis.nets.lesion.compose`):
        the map is found on the working grid and brought to the output grid linearly, then
        calibrated to a lesion fraction (:func:`synthesis.nets.lesion.lesion_fraction`: the
        model's table ``lesion_fraction_p/_f``, then ``min(1, lesion_gain * f)``)."""
        p_work = self.model.lesion.probability(torch.from_numpy(work)[None, None].to(self.device))[0, 0]
        p = p_work.cpu().numpy()
        if p.shape != out.shape or not np.allclose(out_spacing, work_spacing):
            p = _interpolate(p, _output_axes(out.shape, spacing, work_spacing, out_spacing))
        config = self.model.config
        fraction = lesion_fraction(p, config.lesion_gain, (config.lesion_fraction_p, config.lesion_fraction_f))
        signal = self.model.lesion_signal(feats, features, p_work)
        logger.info("Lesion map: %.1f ml at a lesion fraction > 0.5 on the output grid (gain %.2f%s); a lesion "
                    "voxel gets %.3f (level: %s)", float((fraction > 0.5).sum() * np.prod(out_spacing)) / 1000.0,
                    config.lesion_gain, ", calibrated" if config.lesion_fraction_p else "", signal,
                    config.lesion_level)
        return compose(torch.from_numpy(out), torch.from_numpy(fraction), 1.0, signal).numpy()
