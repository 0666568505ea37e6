"""`psma-stage inspect` and `psma-stage suv` through staging.cli.main (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.errors import DicomWarning
from staging.cli import main
from tests.imaging.dicom_builders import PetSpec, write_study

PUBLIC = Path(__file__).resolve().parents[2] / "fixtures" / "public"
DRO = PUBLIC / "suv-dro"
DRO_CASES = sorted(p.name for p in DRO.iterdir() if p.is_dir())


def test_dro_cases_present() -> None:
    assert DRO_CASES == ["DRO_0_0", "DRO_1_0", "DRO_2_0", "DRO_2_4", "DRO_3_0", "DRO_3_1",
                         "DRO_4_0", "DRO_4_1", "DRO_5_0"]


@pytest.mark.parametrize("case", DRO_CASES)
def test_suv_dro_acceptance(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                            ) -> None:
    out = tmp_path / f"{case}.nii.gz"
    assert main(["-q", "suv", str(DRO / case / "PT"), "-o", str(out)]) == 0
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    suv = np.asarray(img.dataobj)
    mask = np.asarray(nib.load(str(DRO / case / "mask" / "DRO_mask.nii.gz")).dataobj) > 0
    # the DRO mask NIfTI shares the PT stack's (i, j, k) array order
    values = suv[mask]
    assert values.min() == pytest.approx(0.20, rel=0.005)
    assert float(np.median(values)) == pytest.approx(1.00, rel=0.005)
    assert values.max() == pytest.approx(4.00, rel=0.005)
    record = json.loads((tmp_path / f"{case}.suv.json").read_text())
    prov = record["suv_provenance"]
    assert prov["suv_type"] == "bw"
    assert prov["factor"] > 0
    assert "branch" in prov
    if case == "DRO_3_0":
        assert prov["injected_dose_unit_detected"] == "MBq"
    # RAS affine: the DRO slices sit at LPS (0, 0, 4k) with 4 mm pixels
    np.testing.assert_allclose(img.affine[:3, :3], np.diag([-4.0, -4.0, 4.0]))
    assert "wrote" in capsys.readouterr().out


def test_suv_types_and_series_option(tmp_path: Path) -> None:
    write_study(tmp_path / "s", with_ct=False)
    rc = main(["-q", "suv", str(tmp_path / "s"), "-o", str(tmp_path / "lbm.nii"),
               "--suv-type", "lbm"])
    assert rc == 0
    record = json.loads((tmp_path / "lbm.suv.json").read_text())
    assert record["suv_provenance"]["suv_type"] == "lbm"
    assert record["suv_provenance"]["lean_body_mass_formula"] == "Janmahasatian 2005"
    assert main(["-q", "suv", str(tmp_path / "s"), "-o", str(tmp_path / "x.nii.gz"),
                 "--series", "1.2.3"]) == 1


def test_suv_bad_input_exit_1_with_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_study(tmp_path / "s", spec=PetSpec(weight_kg=None), with_ct=False)
    out = tmp_path / "o.nii.gz"
    assert main(["-q", "suv", str(tmp_path / "s"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PatientWeight (0010,1030) is absent" in err
    assert "--weight-kg" in err
    assert not out.exists()
    assert not (tmp_path / "o.suv.json").exists()
    # the documented override fixes it, and is recorded
    assert main(["-q", "suv", str(tmp_path / "s"), "-o", str(out), "--weight-kg", "80"]) == 0
    record = json.loads((tmp_path / "o.suv.json").read_text())
    assert record["suv_provenance"]["overrides_used"] == {"patient_weight_kg": 80.0}


def test_suv_empty_folder_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "suv", str(tmp_path), "-o", str(tmp_path / "o.nii.gz")]) == 1
    assert "no DICOM study found" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suv", str(tmp_path)]) == 2  # -o missing
    assert main(["suv", str(tmp_path), "-o", str(tmp_path / "o.nii.gz"), "--suv-type",
                 "lean"]) == 2
    assert main(["suv", str(tmp_path), "-o", str(tmp_path / "o.txt")]) == 2
    assert main(["suv", str(tmp_path), "-o", str(tmp_path / "o.nii"), "--injection-time",
                 "yesterday"]) == 2
    capsys.readouterr()


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suv", "--help"]) == 0
    assert "--injected-dose-mbq" in capsys.readouterr().out
    assert main(["inspect", "--help"]) == 0


def test_inspect_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_study(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    assert main(["-q", "inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "1 studies" in text
    assert "skipped: 1 not_dicom" in text
    assert "chosen as PET" in text
    assert "chosen as CT" in text
    assert "Synthetic" not in text  # never the patient name
    assert main(["-q", "inspect", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (study,) = data["studies"]
    assert study["pet_series_instance_uid"]
    assert study["ct_series_instance_uid"]
    assert {s["modality"] for s in study["series"]} == {"PT", "CT"}


def test_inspect_ibsi_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "inspect", str(PUBLIC / "ibsi-sts-petct"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["studies"]) == 2
    for st in data["studies"]:
        assert st["pet_series_instance_uid"]
        assert st["ct_series_instance_uid"]


def test_suv_strict_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_study(tmp_path, spec=PetSpec(image_type=("DERIVED",)), with_ct=False)
    assert main(["-q", "suv", str(tmp_path), "-o", str(tmp_path / "o.nii.gz"),
                 "--strict"]) == 1
    assert "not ORIGINAL" in capsys.readouterr().err
    with pytest.warns(DicomWarning):
        assert main(["-q", "suv", str(tmp_path), "-o", str(tmp_path / "o.nii.gz")]) == 0
