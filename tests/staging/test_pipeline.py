"""stage_study and `psma-stage stage` end to end on a small synthetic patient, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from fixtures.phantom import generate_patient, write_patient
from imaging.errors import AnatomyError, NoUsableSeriesError
from imaging.nifti import write_nifti
from staging.cli import main
from staging.config import load_config
from staging.models import StudySource
from staging.pipeline import OUTPUT_FILES, OutputFolderError, _publish, stage_study

SEED = 20260611


@pytest.fixture(scope="module")
def patient_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small N1/M1a patient written as DICOM (Siemens flavour) and NIfTI."""
    patient = generate_patient(SEED, size="small", stage="N1/M1a")
    root = tmp_path_factory.mktemp("phantom")
    return write_patient(patient, root, format="both", vendor="siemens")


@pytest.fixture(scope="module")
def dicom_run(patient_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[int, Path, str]:
    out = tmp_path_factory.mktemp("dicom-run") / "result"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["stage", str(patient_dir / "dicom"), "-o", str(out)])
    return code, out, buf.getvalue()


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_stage_command_on_dicom_writes_every_output(dicom_run: tuple[int, Path, str],
                                                    patient_dir: Path) -> None:
    code, out, stdout = dicom_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert _siblings(out) == []  # no temporary folder left behind
    record = json.loads((out / "staging.json").read_text())
    truth = json.loads((patient_dir / "truth.json").read_text())
    assert record["patient_id"] == truth["patient_id"]
    assert record["mitnm"] in stdout
    assert record["source"] == "dicom"
    # lesion.tracer "auto" is resolved from the DICOM Radiopharmaceutical and saved resolved
    tracer = truth["acquisition"]["tracer"]
    assert record["config"]["lesion"]["tracer"] == tracer
    assert record["config_hash"] == load_config(lesion={"tracer": tracer}).hash()
    assert set(record["timings_s"]) == {"load", "suv", "anatomy", "lesions", "staging",
                                        "outputs"}
    assert load_config(out / "config.toml").hash() == record["config_hash"]
    # label maps are on the PET grid and carry the record's lesion ids
    suv = nib.load(out / "suv.nii.gz")
    lesions = nib.load(out / "lesions.nii.gz")
    anatomy = nib.load(out / "anatomy.nii.gz")
    for img in (lesions, anatomy):
        assert img.shape == suv.shape
        assert np.allclose(img.affine, suv.affine)
    ids = set(np.unique(np.asarray(lesions.dataobj)).tolist()) - {0}
    assert ids == {lesion["id"] for lesion in record["lesions"]}
    assert np.asarray(anatomy.dataobj).max() > 0


@pytest.mark.slow
def test_dicom_seg_references_the_pet_series(dicom_run: tuple[int, Path, str],
                                             patient_dir: Path) -> None:
    import highdicom as hd
    import pydicom

    _, out, _ = dicom_run
    record = json.loads((out / "staging.json").read_text())
    seg = hd.seg.segread(out / "lesions_seg.dcm")
    pet_files = sorted((patient_dir / "dicom" / "PT").rglob("*"))
    pet = pydicom.dcmread(next(p for p in pet_files if p.is_file()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == record["series"]["pet"]
    assert record["series"]["pet"] == pet.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == pet.FrameOfReferenceUID
    categories = {lesion["category"] for lesion in record["lesions"]}
    assert {s.TrackingID for s in seg.SegmentSequence} == categories

    # every segmented pixel of every frame lies on a lesion of that segment's category
    from imaging.nifti import read_nifti

    labels = read_nifti(out / "lesions.nii.gz", unit="label")
    category_of = {lesion["id"]: lesion["category"] for lesion in record["lesions"]}
    segment_category = {int(s.SegmentNumber): s.TrackingID for s in seg.SegmentSequence}
    headers = {}
    for path in pet_files:
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            headers[ds.SOPInstanceUID] = ds
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    covered = 0
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = headers[frame.DerivationImageSequence[0].SourceImageSequence[0]
                      .ReferencedSOPInstanceUID]
        wanted = segment_category[int(
            frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        r, c = np.nonzero(pixels[n])
        ipp = np.asarray(src.ImagePositionPatient, dtype=float)
        iop = np.asarray(src.ImageOrientationPatient, dtype=float)
        world = (ipp + c[:, None] * float(src.PixelSpacing[1]) * iop[:3]
                 + r[:, None] * float(src.PixelSpacing[0]) * iop[3:])
        idx = np.rint(labels.world_to_index(world)).astype(int)
        ids = np.asarray(labels.array)[idx[:, 0], idx[:, 1], idx[:, 2]]
        assert all(category_of[int(i)] == wanted for i in ids)
        covered += len(ids)
    assert covered == int(np.count_nonzero(np.asarray(labels.array)))


@pytest.mark.slow
def test_stage_study_on_nifti_and_failed_rerun_keeps_the_result(
        patient_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import staging.pipeline as pipeline

    nifti = patient_dir / "nifti"
    source = StudySource.from_nifti(nifti / "SUV.nii.gz", nifti / "CTres.nii.gz",
                                    patient_id="SYN-NIFTI")
    out = tmp_path / "result"
    cache: dict[str, Any] = {}
    real_label_anatomy = pipeline.label_anatomy

    def cached_label_anatomy(*args: Any, **kwargs: Any) -> Any:
        if "map" not in cache:
            cache["map"] = real_label_anatomy(*args, **kwargs)
        return cache["map"]

    monkeypatch.setattr(pipeline, "label_anatomy", cached_label_anatomy)
    config = load_config(staging={"pelvic_boundary": "common_iliac_bifurcation"})
    result = stage_study(source, out, config=config)
    assert result.record["patient_id"] == "SYN-NIFTI"
    assert result.record["source"] == "nifti"
    assert result.record["pelvic_boundary"] == "common_iliac_bifurcation"
    assert result.record["config"]["anatomy"]["pelvic_boundary"] == "common_iliac_bifurcation"
    assert "lesions_seg.dcm" in result.skipped_outputs
    assert not (out / "lesions_seg.dcm").exists()
    assert set(result.outputs) == set(OUTPUT_FILES) - {"lesions_seg.dcm"}
    assert all(path.parent == out and path.is_file() for path in result.outputs.values())
    saved = (out / "staging.json").read_text()
    assert json.loads(saved) == json.loads(json.dumps(result.record))
    assert _siblings(out) == []

    # a rerun that fails while writing its outputs leaves the earlier result untouched
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AnatomyError("simulated failure while writing outputs")

    monkeypatch.setattr(pipeline, "_write_outputs", fail)
    with pytest.raises(AnatomyError, match="simulated"):
        stage_study(source, out, config=load_config())
    assert (out / "staging.json").read_text() == saved
    assert _siblings(out) == []
    # and with no earlier result, nothing at all is left
    fresh = tmp_path / "fresh"
    with pytest.raises(AnatomyError, match="simulated"):
        stage_study(source, fresh, config=load_config())
    assert not fresh.exists()
    assert _siblings(fresh) == []


# -- bad input: exit 1, one line, nothing in OUTDIR -------------------------------------------
def _assert_failed_cleanly(code: int, out: Path, lines: list[str], *must: str) -> None:
    assert code == 1
    assert len(lines) == 1, lines
    for text in must:
        assert text in lines[0], lines[0]
    assert not out.exists()
    assert _siblings(out) == []


def test_folder_without_pet(tmp_path: Path, patient_dir: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ct-only"
    shutil.copytree(patient_dir / "dicom" / "CT", folder / "CT")
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", str(folder), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), str(folder), "PET")


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", str(folder), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), str(folder))


def test_pet_without_ct(tmp_path: Path, patient_dir: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pet-only"
    shutil.copytree(patient_dir / "dicom" / "PT", folder / "PT")
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", str(folder), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), str(folder), "CT")


def test_nifti_pet_without_ct(tmp_path: Path, patient_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", "--pet", str(patient_dir / "nifti" / "SUV.nii.gz"), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), "SUV.nii.gz", "--ct")


def test_corrupt_series(tmp_path: Path, patient_dir: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "corrupt"
    shutil.copytree(patient_dir / "dicom", folder)
    victim = sorted(p for p in (folder / "PT").rglob("*") if p.is_file())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # truncated mid-file
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", str(folder), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), str(folder))


@pytest.mark.slow
def test_ct_not_covering_the_pelvis(tmp_path: Path, patient_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from imaging.nifti import read_nifti

    nifti = patient_dir / "nifti"
    ct = read_nifti(nifti / "CTres.nii.gz", unit="HU")
    truth = json.loads((patient_dir / "truth.json").read_text())
    crest_z = max(truth["landmarks"]["iliac_crest_left"][2],
                  truth["landmarks"]["iliac_crest_right"][2])
    z = ct.index_to_world(np.stack([np.arange(ct.shape[0]), np.zeros(ct.shape[0]),
                                    np.zeros(ct.shape[0])], axis=1))[:, 2]
    keep = np.flatnonzero(z > crest_z + 60.0)  # chest and upper abdomen only
    k0, k1 = int(keep.min()), int(keep.max()) + 1
    cropped = type(ct)(np.asarray(ct.array)[k0:k1], ct.spacing,
                       tuple(ct.index_to_world([k0, 0, 0])), ct.direction, "HU")
    write_nifti(cropped, tmp_path / "chest_ct.nii.gz")
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    code = main(["stage", "--pet", str(nifti / "SUV.nii.gz"), "--ct",
                 str(tmp_path / "chest_ct.nii.gz"), "-o", str(out)])
    _assert_failed_cleanly(code, out, _stderr_lines(capsys), "pelvis", "SUV.nii.gz")


def test_outdir_that_is_not_a_result_is_left_alone(tmp_path: Path, patient_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.docx").write_text("do not delete")
    code = main(["stage", str(patient_dir / "dicom"), "-o", str(out)])
    lines = _stderr_lines(capsys)
    assert code == 1
    assert len(lines) == 1
    assert "not a psma-stage result" in lines[0]
    assert (out / "thesis.docx").read_text() == "do not delete"
    with pytest.raises(OutputFolderError, match="is a file"):
        stage_study(StudySource.from_dicom(patient_dir / "dicom"), out / "thesis.docx")


def test_publish_replaces_an_earlier_result_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "result"
    out.mkdir()
    (out / "staging.json").write_text("old")
    new = tmp_path / ".result.tmp-1"
    new.mkdir()
    (new / "staging.json").write_text("new")
    _publish(new, out)
    assert (out / "staging.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_missing_input_is_a_usage_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stage", "-o", str(tmp_path / "x")]) == 2
    assert "no input" in capsys.readouterr().err
    assert main(["stage", str(tmp_path), "--pet", "a.nii.gz", "-o", str(tmp_path / "x")]) == 2
    assert main(["stage", str(tmp_path)]) == 2
    assert main(["stage", str(tmp_path), "-o", str(tmp_path / "x"), "--anatomy", "moose"]) == 2
    assert main(["stage", str(tmp_path), "-o", str(tmp_path / "x"),
                 "--set", "lesion.nope=1"]) == 2


def test_show_config_prints_the_resolved_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["stage", "--show-config", "--set", "lesion.threshold_suv=4",
                 "--anatomy", "totalsegmentator:/data/ts"])
    text = capsys.readouterr().out
    assert code == 0
    saved = tmp_path / "c.toml"
    saved.write_text(text)
    config = load_config(saved)
    assert config.lesion.threshold_suv == 4.0
    assert config.anatomy.provider == "totalsegmentator"
    assert str(config.anatomy.provider_path) == "/data/ts"


def test_missing_nifti_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(NoUsableSeriesError, match="not found"):
        stage_study(StudySource.from_nifti(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"),
                    tmp_path / "out")
    with pytest.raises(NoUsableSeriesError, match="does not exist"):
        stage_study(StudySource.from_dicom(tmp_path / "absent"), tmp_path / "out")
