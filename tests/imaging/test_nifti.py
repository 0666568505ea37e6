"""NIfTI RAS <-> LPS: round trips, independent checks with SimpleITK, autoPET-style studies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from imaging.errors import GeometryError, PipelineError
from imaging.nifti import load_nifti_study, read_nifti, write_nifti
from imaging.volume import Volume, same_geometry


def _volume(direction: np.ndarray, unit: str = "g/ml", dtype=np.float32) -> Volume:
    rng = np.random.default_rng(5)
    arr = rng.uniform(0, 20, size=(5, 6, 7)).astype(dtype)
    return Volume(arr, (3.0, 2.0, 4.0), (-12.5, 30.0, -600.0), direction, unit)


_DIRECTIONS = {
    "hfs-axial": np.eye(3)[:, ::-1],  # k = +z, j = +y, i = +x
    "ffs": np.array([[0, 0, -1], [0, 1, 0], [-1, 0, 0]], float),
    "hfp": np.array([[0, 0, -1], [0, -1, 0], [1, 0, 0]], float),
    "oblique": Rotation.from_euler("xyz", [12, -7, 25], degrees=True).as_matrix(),
}


@pytest.mark.parametrize("name", sorted(_DIRECTIONS))
def test_round_trip_preserves_values_and_geometry(tmp_path: Path, name: str) -> None:
    vol = _volume(_DIRECTIONS[name])
    path = write_nifti(vol, tmp_path / "x.nii.gz")
    back = read_nifti(path, unit="g/ml")
    assert same_geometry(vol, back, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)
    # independent reader: SimpleITK converts NIfTI to LPS itself
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), vol.spacing[::-1], atol=1e-5)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), vol.direction[:, ::-1],
                               atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.array)


def test_written_affine_is_ras_of_lps() -> None:
    vol = _volume(np.eye(3)[:, ::-1])
    from imaging.nifti import nifti_affine

    aff = nifti_affine(vol)
    # i along +x (left) -> RAS -x; j along +y (posterior) -> RAS -y; k along +z
    np.testing.assert_allclose(aff[:3, :3], np.diag([-4.0, -2.0, 3.0]))
    np.testing.assert_allclose(aff[:3, 3], [12.5, -30.0, -600.0])


def test_nibabel_world_point_matches_volume(tmp_path: Path) -> None:
    vol = _volume(_DIRECTIONS["oblique"])
    path = write_nifti(vol, tmp_path / "o.nii")
    img = nib.load(str(path))
    ras = nib.affines.apply_affine(img.affine, [3, 2, 1])  # (i, j, k)
    lps = vol.index_to_world([1, 2, 3])
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)


def test_labels_keep_integer_dtype(tmp_path: Path) -> None:
    vol = _volume(np.eye(3)[:, ::-1], unit="label", dtype=np.uint16)
    back = read_nifti(write_nifti(vol, tmp_path / "l.nii.gz"), unit="label")
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, vol.array)


def test_bool_mask_written_as_uint8(tmp_path: Path) -> None:
    vol = _volume(np.eye(3)[:, ::-1], unit="mask").with_array(np.ones((5, 6, 7), bool))
    back = read_nifti(write_nifti(vol, tmp_path / "m.nii.gz"), unit="mask")
    assert back.array.dtype == np.uint8
    assert back.array.all()


def test_4d_single_volume_accepted_and_true_4d_rejected(tmp_path: Path) -> None:
    arr = np.zeros((4, 3, 2, 1), np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "a.nii.gz")
    assert read_nifti(tmp_path / "a.nii.gz", unit="g/ml").shape == (2, 3, 4)
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "b.nii")
    with pytest.raises(PipelineError, match=r"shape \(4, 3, 2, 2\); a 3-D image is needed"):
        read_nifti(tmp_path / "b.nii", unit="g/ml")


def test_sheared_affine_and_bad_file(tmp_path: Path) -> None:
    aff = np.eye(4)
    aff[0, 1] = 0.5
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), aff), tmp_path / "s.nii.gz")
    with pytest.raises(GeometryError, match="shear"):
        read_nifti(tmp_path / "s.nii.gz", unit="g/ml")
    (tmp_path / "bad.nii.gz").write_bytes(b"nonsense")
    with pytest.raises(PipelineError, match=r"bad\.nii\.gz: cannot read NIfTI"):
        read_nifti(tmp_path / "bad.nii.gz", unit="g/ml")
    with pytest.raises(PipelineError, match="cannot read NIfTI"):
        read_nifti(tmp_path / "missing.nii.gz", unit="g/ml")


def test_load_nifti_study_autopet_style(tmp_path: Path) -> None:
    pet = _volume(_DIRECTIONS["hfs-axial"])
    ct = Volume(np.full((10, 12, 14), -1000, np.int16), (1.5, 1.0, 2.0), (-12.5, 30.0, -600.0),
                np.eye(3)[:, ::-1], "HU")
    case = tmp_path / "PETCT_0af7ffe12a"
    write_nifti(pet, case / "SUV.nii.gz")
    write_nifti(ct, case / "CTres.nii.gz")
    study = load_nifti_study(case / "SUV.nii.gz", case / "CTres.nii.gz")
    assert study.meta.patient_id == "PETCT_0af7ffe12a"
    assert study.meta.source == "nifti"
    assert study.pet.unit == "g/ml"
    assert study.ct is not None
    assert study.ct.unit == "HU"
    assert same_geometry(study.pet, pet)
    assert same_geometry(study.ct, ct)
    np.testing.assert_array_equal(study.ct.array, ct.array)
    assert study.suv_provenance["branch"] == "nifti"
    again = load_nifti_study(case / "SUV.nii.gz", None, patient_id="P1")
    assert again.ct is None
    assert again.meta.patient_id == "P1"
    assert again.meta.study_instance_uid == study.meta.study_instance_uid


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(_volume(np.eye(3)[:, ::-1]), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []
