"""load_study end to end: synthetic studies with known SUV, IBSI real PET/CT, failure cases."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.dicom import discover
from imaging.errors import DicomError, DicomWarning, NoUsableSeriesError, PipelineError
from imaging.loading import load_study
from imaging.resample import resample_to
from tests.imaging.dicom_builders import (
    Geometry,
    PetSpec,
    activity_volume,
    expected_suvbw_factor,
    uid,
    write_ct_series,
    write_pet_series,
    write_study,
)

IBSI = Path(__file__).resolve().parents[2] / "fixtures" / "public" / "ibsi-sts-petct" / "dicom"


def _assert_suv(study, act: np.ndarray, factor: float) -> None:
    expected = act * factor
    # int16 storage with a per-slice slope: error up to half a slope step
    np.testing.assert_allclose(study.pet.array, expected, rtol=2e-3)
    assert study.pet.array.dtype == np.float32
    assert study.pet.unit == "g/ml"


def test_load_study_known_suv_and_metadata(tmp_path: Path) -> None:
    spec = PetSpec()
    geom = Geometry()
    act = activity_volume(geom)
    write_study(tmp_path, spec=spec, pet_geom=geom, activity=act)
    study = load_study(tmp_path)
    _assert_suv(study, act, expected_suvbw_factor(spec))
    assert study.ct is not None
    assert study.ct.unit == "HU"
    assert study.meta.patient_weight_kg == 80.0
    assert study.meta.patient_sex == "M"
    assert study.meta.source == "dicom"
    assert study.meta.frame_of_reference_uid == uid("for")
    prov = study.suv_provenance
    assert prov["factor"] == pytest.approx(expected_suvbw_factor(spec), rel=1e-12)
    assert prov["series_choice"]["pet"] == study.meta.pet_series_instance_uid
    assert "Synthetic" not in repr(study.meta)  # no patient name anywhere in the metadata


@pytest.mark.parametrize(
    ("row_dir", "col_dir", "stack"),
    [((1, 0, 0), (0, 1, 0), 1), ((-1, 0, 0), (0, -1, 0), 1), ((1, 0, 0), (0, 1, 0), -1)],
    ids=["HFS", "HFP", "FFS-descending-z"],
)
def test_hot_spot_lands_at_the_same_world_position_in_any_orientation(
    tmp_path: Path, row_dir, col_dir, stack: int
) -> None:
    geom = Geometry(shape=(6, 8, 10), row_dir=row_dir, col_dir=col_dir)
    if stack == -1:  # feet first: slices written from head to feet, normal pointing down
        geom = Geometry(shape=(6, 8, 10), row_dir=(-1, 0, 0), col_dir=(0, 1, 0),
                        origin=(20.0, -16.0, -85.0))
    act = np.full(geom.shape, 1000.0)
    act[2, 3, 4] = 50000.0
    write_study(tmp_path, pet_geom=geom, activity=act, spec=PetSpec(per_slice_slope=True))
    study = load_study(tmp_path)
    hot = np.unravel_index(np.argmax(study.pet.array), study.pet.shape)
    expected = (np.asarray(geom.origin) + 2 * geom.spacing[0] * geom.normal
                + 3 * geom.spacing[1] * np.asarray(col_dir if stack == 1 else (0, 1, 0))
                + 4 * geom.spacing[2] * np.asarray(row_dir if stack == 1 else (-1, 0, 0)))
    np.testing.assert_allclose(study.pet.index_to_world(hot), expected, atol=1e-3)
    # the CT on the PET grid lines up in physical space
    ct_on_pet = resample_to(study.ct, study.pet)
    assert ct_on_pet.shape == study.pet.shape


def test_pick_pet_by_series_uid_among_several_studies(tmp_path: Path) -> None:
    write_study(tmp_path / "a")
    other = PetSpec(weight_kg=60.0)
    write_pet_series(tmp_path / "b" / "PT", spec=other, study_uid=uid("study-b"),
                     series_uid=uid("pet-b"), for_uid=uid("for-b"))
    write_ct_series(tmp_path / "b" / "CT", study_uid=uid("study-b"), for_uid=uid("for-b"))
    with pytest.raises(NoUsableSeriesError, match="2 studies found"):
        load_study(tmp_path)
    study = load_study(tmp_path, pet_series_uid=uid("pet-b"))
    assert study.meta.study_instance_uid == uid("study-b")
    assert study.meta.patient_weight_kg == 60.0
    with pytest.raises(NoUsableSeriesError, match="is not in this folder"):
        load_study(tmp_path, pet_series_uid="1.2.3.4")


def test_no_ct_for_the_pet(tmp_path: Path) -> None:
    write_study(tmp_path, ct_for_uid=uid("another-frame"))
    with pytest.raises(NoUsableSeriesError, match=r"no CT for PET series .*FrameOfReferenceUID"):
        load_study(tmp_path)
    study = load_study(tmp_path, ct="optional")
    assert study.ct is None


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(NoUsableSeriesError, match=r"no DICOM study found \(0 files"):
        load_study(tmp_path)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(NoUsableSeriesError, match=r"\(1 files; skipped: 1 not_dicom\)"):
        load_study(tmp_path)


def test_only_ct(tmp_path: Path) -> None:
    write_ct_series(tmp_path)
    with pytest.raises(NoUsableSeriesError, match="no usable PET series"):
        load_study(tmp_path)


def test_truncated_pet_file_is_a_typed_error(tmp_path: Path) -> None:
    write_study(tmp_path)
    victim = sorted((tmp_path / "PT").iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 40])
    with pytest.raises(PipelineError) as e:
        load_study(tmp_path)
    assert type(e.value).__module__ == "imaging.errors"
    assert victim.name in str(e.value)
    assert "PixelData (7FE0,0010)" in str(e.value)


def test_strict_turns_derived_pet_warning_into_error(tmp_path: Path) -> None:
    write_study(tmp_path, spec=PetSpec(image_type=("DERIVED", "SECONDARY")))
    with pytest.warns(DicomWarning, match="not ORIGINAL"):
        load_study(tmp_path)
    with pytest.raises(DicomError, match=r"strict mode: .*not ORIGINAL"):
        load_study(tmp_path, strict=True)


def test_midnight_study_loads(tmp_path: Path) -> None:
    spec = PetSpec(injection=datetime(2025, 3, 4, 23, 10), injection_as="time",
                   series_time=datetime(2025, 3, 5, 0, 20))
    geom = Geometry()
    act = activity_volume(geom)
    write_study(tmp_path, spec=spec, pet_geom=geom, activity=act)
    _assert_suv(load_study(tmp_path), act, expected_suvbw_factor(spec))


# -- IBSI real PET/CT ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["STS_001", "STS_002"])
def test_ibsi_studies_pair_by_frame_of_reference_and_keep_gml(case: str) -> None:
    (inv_study,) = discover(IBSI / case).studies
    assert inv_study.pet is not None
    assert inv_study.ct is not None
    assert inv_study.pet.frame_of_reference_uid == inv_study.ct.frame_of_reference_uid
    with pytest.warns(DicomWarning, match="DERIVED"):
        study = load_study(IBSI / case)
    assert study.suv_provenance["branch"].startswith("GML")
    for vol, folder in ((study.pet, "PET"), (study.ct, "CT")):
        assert vol is not None
        files = sorted((IBSI / case / folder / "image").iterdir())
        dss = [pydicom.dcmread(f) for f in files]
        dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        assert vol.shape == (len(dss), int(dss[0].Rows), int(dss[0].Columns))
        np.testing.assert_allclose(vol.origin, [float(v) for v in dss[0].ImagePositionPatient],
                                   atol=1e-4)
        np.testing.assert_allclose(vol.spacing[1:], [float(v) for v in dss[0].PixelSpacing])
        z = [float(d.ImagePositionPatient[2]) for d in dss]
        assert vol.spacing[0] == pytest.approx((z[-1] - z[0]) / (len(z) - 1), abs=1e-6)
        np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-9)
        stored = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                           for d in dss])
        # GML: the stored SUV comes back unchanged; CT: HU as stored
        np.testing.assert_allclose(vol.array, stored, rtol=1e-6, atol=1e-6)
    assert study.pet.array.max() > 1.0  # a tumour with uptake above background


def test_ibsi_copy_with_both_studies_needs_a_choice(tmp_path: Path) -> None:
    shutil.copytree(IBSI / "STS_002", tmp_path / "STS_002")
    shutil.copytree(IBSI / "STS_001" / "PET", tmp_path / "STS_001" / "PET")
    inv = discover(tmp_path)
    assert len(inv.studies) == 2
    no_ct = next(s for s in inv.studies if s.patient_id == "STS_001")
    assert no_ct.pet is not None
    assert no_ct.ct is None
    with pytest.raises(NoUsableSeriesError, match="no CT for PET"), pytest.warns(DicomWarning):
        load_study(tmp_path, pet_series_uid=no_ct.pet.series_instance_uid)
