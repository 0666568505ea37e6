"""benchmarks/validate_anatomy.py: the 3 mm copy that bounds the real-CT bone Dice."""

from __future__ import annotations

import numpy as np

from benchmarks.validate_anatomy import as_drawn_at, dice
from imaging.volume import Volume


def _volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Volume:
    return Volume(np.zeros(shape, dtype=np.float32), spacing, (0.0, 0.0, 0.0), unit="HU")


def test_a_large_ball_survives_a_3mm_copy_and_a_thin_plate_does_not() -> None:
    # a 1 mm grid (z, y, x); a 24 mm ball is far above 3 mm, a 1 mm plate far below it
    vol = _volume((60, 60, 60), (1.0, 1.0, 1.0))
    z, y, x = np.mgrid[:60, :60, :60]
    ball = (z - 30) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 12**2
    plate = (z == 30) & (np.abs(y - 30) <= 20) & (np.abs(x - 30) <= 20)
    assert dice(ball, as_drawn_at(ball, vol)) > 0.9
    assert not as_drawn_at(plate, vol).any()


def test_the_copy_keeps_the_grid_and_the_position() -> None:
    # anisotropic grid like the real DICOM series (2 mm slices, 0.98 mm pixels)
    vol = _volume((30, 80, 80), (2.0, 0.9765625, 0.9765625))
    box = np.zeros(vol.shape, dtype=bool)
    box[10:20, 20:60, 30:70] = True
    copy = as_drawn_at(box, vol)
    assert copy.shape == box.shape
    centre = np.argwhere(box).mean(axis=0)
    moved = (np.argwhere(copy).mean(axis=0) - centre) * np.array(vol.spacing)
    assert np.all(np.abs(moved) <= 1.5)  # mm: half a 3 mm voxel at most
    assert dice(box, copy) > 0.85
