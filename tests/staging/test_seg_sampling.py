"""The SEG's frame sampling: the exact integer path equals rounding the continuous indices."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from imaging.volume import Volume
from staging.outputs.seg import _images_through_lesions, _slice_index_grid, frame_masks


def _images(n: int, *, prone: bool = False) -> list[Dataset]:
    out = []
    for k in range(n):
        ds = Dataset()
        sign = -1.0 if prone else 1.0
        ds.ImageOrientationPatient = [sign, 0, 0, 0, sign, 0]
        ds.ImagePositionPatient = [-30.0 * sign, -26.0 * sign, 100.0 - 3.0 * k]
        ds.PixelSpacing = [4.0, 4.0]
        ds.Rows, ds.Columns = 14, 16
        out.append(ds)
    return out


def _grid(images: list[Dataset], rng: np.random.Generator, *, shift: float, angle: float,
          scale: float) -> Volume:
    """A label grid built from the images (as the loader does), then perturbed."""
    first = images[-1]  # lowest z
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    direction = np.column_stack([np.cross(iop[:3], iop[3:]), iop[3:], iop[:3]])
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    labels = rng.integers(0, 4, size=(len(images), 14, 16)).astype(np.uint16)
    return Volume(array=labels, spacing=(3.0 * scale, 4.0 * scale, 4.0 * scale),
                  origin=tuple(np.asarray(first.ImagePositionPatient, dtype=float) + shift),
                  direction=rot @ direction, unit="label")


def _reference(label_map: np.ndarray, grid: Volume, images: list[Dataset]) -> np.ndarray:
    """Rounding of the continuous index of every pixel (the definition)."""
    out = np.zeros((len(images), 14, 16), dtype=label_map.dtype)
    for n, ds in enumerate(images):
        idx = _slice_index_grid(ds, grid)
        inside = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=-1)
        k, j, i = (np.where(inside, idx[..., a], 0) for a in range(3))
        out[n] = np.where(inside, label_map[k, j, i], 0)
    return out


@pytest.mark.parametrize("prone", [False, True])
@pytest.mark.parametrize(("shift", "angle", "scale"),
                         [(0.0, 0.0, 1.0), (1.9, 0.0, 1.0), (2.1, 0.0, 1.0), (6.0, 0.0, 0.5),
                          (0.0, 0.0, 2.0), (0.7, 0.2, 1.0), (-5.0, -0.05, 1.0)])
def test_frame_masks_equal_the_rounded_continuous_index(prone: bool, shift: float, angle: float,
                                                        scale: float) -> None:
    rng = np.random.default_rng(abs(int(10 * shift + 100 * angle + scale)))
    images = _images(9, prone=prone)
    grid = _grid(images, rng, shift=shift, angle=angle, scale=scale)
    label_map = np.asarray(grid.array)
    np.testing.assert_array_equal(frame_masks(label_map, grid, images),
                                  _reference(label_map, grid, images))


def test_images_through_lesions_are_the_planes_within_half_a_voxel() -> None:
    images = _images(9)
    grid = _grid(images, np.random.default_rng(1), shift=0.0, angle=0.0, scale=1.0)
    label_map = np.zeros(grid.shape, dtype=np.uint16)
    label_map[2, 5, 5] = label_map[6, 1, 1] = 1
    # image n is the plane z = 100 - 3 n; the grid's k runs upwards from z = 76
    hit = _images_through_lesions(label_map, grid, images)
    assert hit == sorted(len(images) - 1 - k for k in (2, 6))
