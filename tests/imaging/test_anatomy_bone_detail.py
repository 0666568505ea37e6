"""The bone edge and marrow placed again on a fine output grid, on analytic vertebrae."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.anatomy import AnatomyConfig
from imaging.anatomy.bone_detail import refine_bone_edge

SPACING = (2.0, 1.0, 1.0)  # mm along k, j, i: 2 mm slices, 1 mm pixels


def _refine(bone: np.ndarray, hu: np.ndarray) -> np.ndarray:
    config = AnatomyConfig()
    return refine_bone_edge(bone, hu.astype(np.float32), SPACING,
                            work_spacing_mm=config.working_spacing_mm,
                            bone_hu=config.fine_bone_hu, edge_soft_hu=config.bone_edge_soft_hu,
                            edge_fraction=config.fine_bone_edge_fraction,
                            marrow_bridge_mm=config.fine_marrow_bridge_mm,
                            marrow_min_hu=config.fine_marrow_min_hu,
                            marrow_window_mm=config.fine_marrow_window_mm,
                            fatty_marrow_max_hu=config.fatty_marrow_max_hu)


def _column(*, marrow_hu: float, disc_hu: float, gap_mm: float = 0.0,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A column of two vertebral bodies (radius 22 mm, as wide as a lower thoracic one; 2 mm
    cortex of 900 HU) with a 10 mm disc
    between them, in 40 HU soft tissue, on 2 x 1 x 1 mm voxels.

    The disc keeps a ring of cortex (the endplate rim cut by the slice), so each of its slices
    is a closed ring, as the coarse mask's marrow fill sees it. ``gap_mm`` opens the posterior
    cortex of the bodies (a basivertebral foramen). Returns the HU, the coarse mask (the whole
    column, disc filled, as a 3 mm marrow fill leaves it), the marrow of the bodies and the
    inside of the disc.
    """
    nz = 30
    z, y, x = np.meshgrid(np.arange(nz) * 2.0, np.arange(-48, 48) + 0.5,
                          np.arange(-48, 48) + 0.5, indexing="ij")
    r = np.hypot(x, y)
    disc = (z >= 26.0) & (z < 36.0)
    hu = np.full(z.shape, 40.0, dtype=np.float32)
    inside = r <= 20.0
    hu[(r <= 22.0) & ~inside] = 900.0
    foramen = (np.abs(x) < gap_mm / 2.0) & (y > 0) & ~inside & (r <= 22.0) & ~disc
    hu[foramen] = 40.0
    hu[inside & ~disc] = marrow_hu
    hu[inside & disc] = disc_hu
    coarse = r <= 23.5
    return hu, coarse, inside & ~disc, inside & disc


@pytest.mark.parametrize("disc_hu", [70.0, 90.0])
def test_a_disc_between_two_vertebral_bodies_is_not_bone(disc_hu: float) -> None:
    hu, coarse, marrow, disc = _column(marrow_hu=200.0, disc_hu=disc_hu)
    bone = _refine(coarse, hu)
    assert np.count_nonzero(bone & disc) <= 0.02 * disc.sum()
    assert np.count_nonzero(bone & marrow) >= 0.98 * marrow.sum()


def test_marrow_below_the_threshold_is_filled_through_a_foramen() -> None:
    # osteoporotic marrow (130 HU, below fine_bone_hu) behind a 2 mm gap in the cortex
    hu, coarse, marrow, _ = _column(marrow_hu=130.0, disc_hu=80.0, gap_mm=2.0)
    bone = _refine(coarse, hu)
    assert np.count_nonzero(bone & marrow) >= 0.98 * marrow.sum()
    # without bridging, the marrow joins the soft tissue through the gap and is lost
    config = AnatomyConfig()
    unbridged = refine_bone_edge(coarse, hu, SPACING, work_spacing_mm=3.0,
                                 bone_hu=config.fine_bone_hu,
                                 edge_soft_hu=config.bone_edge_soft_hu,
                                 edge_fraction=config.fine_bone_edge_fraction,
                                 marrow_bridge_mm=0.0, marrow_min_hu=config.fine_marrow_min_hu)
    assert np.count_nonzero(unbridged & marrow) <= 0.1 * marrow.sum()


def test_the_fatty_marrow_of_a_long_bone_is_filled() -> None:
    # a femoral shaft: 4 mm cortex of 1200 HU around a 24 mm medullary cavity of yellow marrow
    # (-60 HU); the coarse mask holds the whole shaft (the working grid's fatty-marrow fill)
    z, y, x = np.meshgrid(np.arange(10) * 2.0, np.arange(-30, 30) + 0.5,
                          np.arange(-30, 30) + 0.5, indexing="ij")
    r = np.hypot(x, y)
    hu = np.full(z.shape, 40.0, dtype=np.float32)
    cavity = r <= 12.0
    hu[(r <= 16.0) & ~cavity] = 1200.0
    hu[cavity] = -60.0
    bone = _refine(r <= 17.5, hu)
    assert bone[cavity].all()


def test_the_fine_edge_lies_at_the_half_maximum() -> None:
    # a slab of cortex (900 HU) whose edge voxel is just over half bone (480 HU; the half
    # maximum between 40 and 900 is 470) and whose next voxel is just under half of that
    # voxel's peak (250 HU; the half maximum between 40 and 480 is 260; 0.4 of the way, the
    # working grid's fraction, would keep it)
    hu = np.full((5, 20, 20), 40.0, dtype=np.float32)
    hu[:, :, :8] = 900.0
    hu[:, :, 8] = 480.0
    hu[:, :, 9] = 250.0
    coarse = np.zeros(hu.shape, dtype=bool)
    coarse[:, :, :12] = True
    bone = _refine(coarse, hu)
    assert bone[:, :, 8].all()
    assert not bone[:, :, 9:].any()
