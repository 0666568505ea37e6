"""Bony landmarks with known answers: where the femoral-head search looks, and what it finds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from imaging.anatomy import AnatomyConfig, label_anatomy
from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.landmarks import _kink, find_landmarks
from imaging.anatomy.tissues import Tissues
from imaging.resample import resample_to
from imaging.vocabulary import Landmark
from imaging.volume import Volume

HEADS = ((Landmark.FEMORAL_HEAD_LEFT, 1.0), (Landmark.FEMORAL_HEAD_RIGHT, -1.0))


def _pelvis_with_couch_air(
) -> tuple[Tissues, WorkGrid, dict[Landmark, tuple[float, float, float]]]:
    """Working-grid masks of a trunk whose lung mask holds a sheet of air trapped by a couch.

    3 mm grid, z 0-900 mm: lungs 600-850 mm, femoral heads (radius 24 mm) at z = 250 mm,
    90 mm either side of the midline, on femoral shafts down to the scan's end. A 6 mm sheet
    of air between the back and the couch is in the lung mask from z = 30 mm up to the lungs,
    as the lung rule takes it on a coarse CT of a heavy patient on a curved couch.
    """
    s = 3.0
    grid = WorkGrid(shape=(300, 90, 130), spacing_mm=s, origin_mm=(-195.0, -135.0, 0.0))
    z, y, x = np.meshgrid(grid.z_mm(), grid.y_mm(), grid.x_mm(), indexing="ij")
    body = (x / 180.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    lungs = np.zeros(grid.shape, dtype=bool)
    for cx in (-70.0, 70.0):
        lungs |= ((x - cx) / 55.0) ** 2 + (y / 70.0) ** 2 + ((z - 725.0) / 125.0) ** 2 <= 1.0
    sheet = (np.abs(x) <= 90.0) & (y >= 105.0) & (y < 111.0) & (z >= 30.0) & (z <= 650.0)
    lungs |= sheet
    bone = (x**2 + (y - 60.0) ** 2 <= 18.0**2) & (z >= 200.0)  # spine and sacrum
    truth: dict[Landmark, tuple[float, float, float]] = {}
    for lm, sign in HEADS:
        cx = sign * 90.0
        bone |= (x - cx) ** 2 + y**2 + (z - 250.0) ** 2 <= 24.0**2
        bone |= ((x - sign * 100.0) ** 2 + y**2 <= 13.0**2) & (z <= 250.0)
        truth[lm] = (cx, 0.0, 250.0)
    tissues = Tissues(body=body, lungs=lungs & body, bone=bone, metal=np.zeros_like(body),
                      notes={})
    return tissues, grid, truth


def test_femoral_heads_are_found_below_the_diaphragm_not_below_trapped_air() -> None:
    tissues, grid, truth = _pelvis_with_couch_air()
    config = AnatomyConfig()
    frame = find_landmarks(tissues, grid, config=config)
    for lm, sign in HEADS:
        finding = frame.landmarks[lm]
        assert finding.position_mm is not None, finding.reason
        # an isolated head's deepest point is its centre; the rule then moves it laterally
        expected = np.add(truth[lm], (sign * config.femoral_head_lateral_correction_mm, 0, 0))
        assert np.linalg.norm(np.subtract(finding.position_mm, expected)) <= 4.0


@pytest.fixture(scope="module")
def couch_patient_on_pet_grid() -> tuple[Volume, dict[str, Any]]:
    """Seed 6015 (BMI 30, couch) with its CT resampled onto the 4 mm PET grid (CTres)."""
    from fixtures.phantom import generate_patient

    patient = generate_patient(6015, size="small", stage="N1/M1a", orientation="HFS",
                               tracer="psma1007")
    ct = patient.ct.with_array(np.asarray(patient.ct.array, dtype=np.float32))
    ctres = resample_to(ct, patient.pet_suv, interpolation="linear", fill=-1024.0)
    return ctres, patient.truth["landmarks"]


def test_both_femoral_heads_on_a_4_mm_ct_with_a_couch_are_within_10_mm(
        couch_patient_on_pet_grid: tuple[Volume, dict[str, Any]]) -> None:
    ctres, truth = couch_patient_on_pet_grid
    anatomy = label_anatomy(ctres)
    for lm, _ in HEADS:
        finding = anatomy.landmarks[lm]
        assert finding.position_mm is not None, finding.reason
        assert np.linalg.norm(np.subtract(finding.position_mm, truth[lm.value])) <= 10.0
    assert anatomy.landmarks[Landmark.PUBIC_SYMPHYSIS_SUPERIOR].found


def test_spine_kink_ignores_slices_without_spine_quietly() -> None:
    # no spine in the lowest 30 mm, a sacrum sloping forward 2 mm a slice, then upright;
    # warnings are errors in the tests, so inf - inf in the spineless windows would fail
    front = np.full(40, np.nan)
    front[10:20] = 30.0 - 2.0 * np.arange(10)
    front[20:] = 10.0
    assert _kink(front, 3.0) == 17
