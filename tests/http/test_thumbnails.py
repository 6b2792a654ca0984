"""Thumbnails: the middle slice along the slice normal, whatever the file order (classic
series) or frame order (Enhanced MR), with the modality rescale applied."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.dicom_factory import SAGITTAL, make_enhanced, make_series
from dicom_node.http.thumbnails import middle_slice, thumbnail_png


def _layered(n: int = 7) -> np.ndarray:
    """Slice k has the value 100 * (k + 1) everywhere: the slice tells its index."""
    return np.stack([np.full((10, 12), 100.0 * (k + 1)) for k in range(n)])


@pytest.mark.parametrize("orientation", [None, SAGITTAL])
def test_classic_series_middle_slice(tmp_path: Path, orientation: tuple | None) -> None:
    kwargs = {"orientation": orientation} if orientation else {}
    files = make_series(tmp_path / "s", _layered(), shuffle=True, **kwargs)
    image, aspect = middle_slice(list(reversed(files)))
    assert image.shape == (10, 12)
    assert np.allclose(image, 400.0, atol=1.0), "slice 3 of 0..6, rescaled"
    assert aspect == pytest.approx(1.0 / 1.5)  # rows 1 mm, columns 1.5 mm


def test_enhanced_mr_middle_frame(tmp_path: Path) -> None:
    path = make_enhanced(tmp_path / "e", _layered(6), reverse_frames=True)
    image, _aspect = middle_slice([path])
    # frames stored in reverse order: the middle along the normal is slice 3 (value 400)
    assert np.allclose(image, 400.0, atol=1.0)


def test_thumbnail_png_fits_the_box(tmp_path: Path) -> None:
    from PIL import Image

    volume = np.zeros((5, 40, 20))
    volume[:, 10:30, 5:15] = 1000.0
    png = thumbnail_png(make_series(tmp_path / "s", volume, spacing=(2.0, 1.0, 1.0)), size=64)
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and picture.mode == "L"
        assert picture.size == (32, 64), "longer side 64 px, aspect kept"
        pixels = np.asarray(picture)
    assert pixels.max() == 255 and pixels.min() == 0
    with pytest.raises(ValueError, match="at least one file"):
        middle_slice([])
