"""Lesion finder on a synthetic patient with known truth (fixtures.phantom)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.lesions import LesionConfig, find_lesions
from imaging.vocabulary import AnatomyLabel

phantom = pytest.importorskip("fixtures.phantom")


@pytest.fixture(scope="module")
def patient() -> object:
    specs = [
        phantom.LesionSpec(site="node_external_iliac", radius_mm=7.0, suv_max=15.0, side="left"),
        phantom.LesionSpec(site="bone_vertebra", radius_mm=8.0, suv_max=12.0),
        phantom.LesionSpec(site="fossa", radius_mm=7.0, suv_max=15.0, abut="urinary_bladder"),
        phantom.LesionSpec(site="visceral_lung", radius_mm=7.0, suv_max=12.0, side="right"),
    ]
    return phantom.generate_patient(11, size="small", lesions=specs)


@pytest.mark.slow
def test_synthetic_patient_lesions_found_and_organs_left_out(patient: object) -> None:
    p = patient
    masks = {}
    for label in AnatomyLabel:
        try:
            m = p.canonical_mask(label, grid="pet")  # type: ignore[attr-defined]
        except (KeyError, ValueError):
            continue
        if m.any():
            masks[label] = m
    truth = np.asarray(p.lesions_pet.array)  # type: ignore[attr-defined]
    result = find_lesions(p.pet_suv, anatomy=masks,  # type: ignore[attr-defined]
                          config=LesionConfig(isocontour_fraction=0.41))
    found = result.labels.array
    by_id = {les.id: les for les in result.lesions}
    for t in p.truth["lesions"]:  # type: ignore[attr-defined]
        hit = np.unique(found[truth == t["id"]])
        hit = hit[hit > 0]
        assert hit.size, f"truth lesion {t['id']} ({t['site']}) not found"
        les = by_id[int(hit[0])]
        assert les.suv_max == pytest.approx(t["suv_max"], rel=0.05)
        if t["site"] == "fossa":
            assert les.equivocal  # abuts the bladder
    # Every found lesion is a truth lesion: no physiological organ reported.
    for les in result.lesions:
        assert np.any(truth[found == les.id] > 0), les
    # Reference regions measured where the phantom put them (PSMA-11 organ SUVs).
    assert result.reference.liver.suv_mean == pytest.approx(5.2, rel=0.15)
    assert result.reference.parotid.suv_mean is not None
    assert result.reference.blood_pool.suv_mean == pytest.approx(1.7, rel=0.3)
