"""`psma-stage run` with the real pipeline on a generated phantom cohort.

The cohort: a synthetic patient written as DICOM and copied under two identities (one with a
hostile PatientID), plus three broken studies derived from it (new identifiers): a truncated
PET file, a PET without RadionuclideTotalDose, and a PET without its CT. The reference run is
shared by the tests of this module (staging is the expensive part).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from staging import database as db
from staging.cli import main

REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = "Quixotefamily^Secretgiven"  # must never appear in any log line
HOSTILE_ID = "../PAT 002/../x"  # must never reach a path unsanitised

pytestmark = pytest.mark.slow


def _rewrite(src: Path, dst: Path, *, patient_id: str, patient_name: str, salt: str,
             modalities: tuple[str, ...] = ("CT", "PT"),
             change_pet: Callable[[pydicom.Dataset], None] | None = None) -> None:
    """Copy a DICOM study with new identifiers (a different study of a different patient)."""
    study_uid = generate_uid(entropy_srcs=[salt, "study"])
    frame_uid = generate_uid(entropy_srcs=[salt, "frame"])
    for modality in modalities:
        folder = src / modality
        series_uid = generate_uid(entropy_srcs=[salt, modality])
        (dst / modality).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir()):
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.PatientName = patient_id, patient_name
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[salt, path.name])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            if modality == "PT" and change_pet is not None:
                change_pet(ds)
            ds.save_as(dst / modality / path.name)


def _drop_dose(ds: pydicom.Dataset) -> None:
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.phantom import generate_patient
    from fixtures.phantom.writers import write_patient

    raw = tmp_path_factory.mktemp("raw")
    root = tmp_path_factory.mktemp("cohort")
    patient = generate_patient(11, size="small", stage="N1/M1a")
    first = write_patient(patient, raw, format="dicom") / "dicom"
    second = first  # same images, another patient and study: staging is what costs here
    _rewrite(first, root / "good-1", patient_id="PAT-001", patient_name=SECRET_NAME, salt="g1")
    _rewrite(second, root / "good-2", patient_id=HOSTILE_ID, patient_name=SECRET_NAME,
             salt="g2")
    _rewrite(first, root / "broken-truncated", patient_id="BAD-TRUNC",
             patient_name=SECRET_NAME, salt="b1")
    victim = sorted((root / "broken-truncated" / "PT").iterdir())[40]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _rewrite(first, root / "broken-nodose", patient_id="BAD-DOSE", patient_name=SECRET_NAME,
             salt="b2", change_pet=_drop_dose)
    _rewrite(first, root / "broken-noct", patient_id="BAD-NOCT", patient_name=SECRET_NAME,
             salt="b3", modalities=("PT",))
    shutil.rmtree(raw)
    return root


def _cli(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``psma-stage -vv ARGS`` in a fresh process, all output (workers' too) into ``log``.

    A file, not a pipe: a pipe nobody reads while the test waits would fill and block the run.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "staging.cli", "-vv", *args], cwd=REPO,
                                env=env, stdout=handle, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference") / "out"
    log = out.parent / "run.log"
    proc = _cli(log, "run", str(cohort), "-o", str(out), "--jobs", "2")
    proc.wait(timeout=900)
    return {"out": out, "code": proc.returncode, "log": log.read_text(errors="replace")}


def _study_state(out: Path) -> dict[str, Any]:
    """What must be identical between runs: per study its files, staging.json (without wall
    times), lesions.csv, lesion labels; the database rows."""
    studies = {}
    for staging_json in sorted(out.glob("*/*/staging.json")):
        folder = staging_json.parent
        record = json.loads(staging_json.read_text())
        record.pop("timings_s")
        labels = np.asarray(nib.load(folder / "lesions.nii.gz").dataobj)
        studies[f"{folder.parent.name}/{folder.name}"] = {
            "files": sorted(p.name for p in folder.iterdir()),
            "record": record,
            "lesions_csv": (folder / "lesions.csv").read_text(),
            "labels_sum": int(labels.astype(np.int64).sum()),
            "labels_max": int(labels.max()),
        }
    results = db.read_results(out / "results.db").drop(columns=["run_id", "staged_at"])
    lesions = db.read_lesions(out / "results.db")
    failures = db.read_failures(out / "results.db")
    return {
        "studies": studies,
        "results": results.astype(object).where(results.notna(), None).to_dict("records"),
        "lesions": lesions.astype(object).where(lesions.notna(), None).to_dict("records"),
        "failures": sorted(zip(failures["item_key"], failures["error_type"], strict=True)),
    }


def test_cohort_with_broken_studies(reference: dict[str, Any]) -> None:
    out: Path = reference["out"]
    assert reference["code"] == 1, reference["log"][-3000:]
    results = db.read_results(out / "results.db")
    assert sorted(results["patient_id"]) == sorted([HOSTILE_ID, "PAT-001"])
    for key in results["study_key"]:
        folder = out / key
        assert (folder / "staging.json").is_file()
        assert (folder / "report.html").is_file()
        assert folder.resolve().parent.parent == out.resolve()  # sanitised: inside OUTDIR
    assert set(results["group"]) <= {"T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c"}
    lesions = db.read_lesions(out / "results.db")
    per_study = results.set_index("study_key")
    expected = (per_study["lesion_count"] + per_study["count_equivocal"]).loc[lambda n: n > 0]
    assert lesions.groupby("study_key").size().to_dict() == expected.to_dict()

    failures = db.read_failures(out / "results.db").set_index("patient_id")
    assert sorted(failures.index) == ["BAD-DOSE", "BAD-NOCT", "BAD-TRUNC"]
    assert "RadionuclideTotalDose" in failures.loc["BAD-DOSE", "message"]
    assert "CT" in failures.loc["BAD-NOCT", "message"]
    assert failures.loc["BAD-NOCT", "error_type"] == "NoUsableSeriesError"
    truncated = failures.loc["BAD-TRUNC"]
    assert truncated["error_type"] != "WorkerDied"
    assert "internal error" not in truncated[
        "message"]
    assert "PT" in truncated["message"]  # names the file
    for broken in ("BAD-DOSE", "BAD-NOCT", "BAD-TRUNC"):
        assert not list(out.glob(f"{broken}*"))  # nothing half-written
    # the summary table and privacy
    assert "Patients per group" in reference["log"]
    assert "Failures: 3" in reference["log"]
    assert "Secretgiven" not in reference["log"]
    assert "Quixotefamily" not in reference["log"]


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(cohort: Path, reference: dict[str, Any],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(tmp_path / "killed.log", "run", str(cohort), "-o", str(out), "--jobs", "2")
    deadline = time.monotonic() + 900
    # kill -9 the moment the first study folder is renamed into place: the window between
    # the rename and the database commit, the most delicate instant of the run
    while not list(out.glob("*/*/staging.json")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(db.read_results(out / "results.db")) if (out / "results.db").exists() else 0
    assert committed < 2  # the kill did interrupt the work

    rerun = _cli(tmp_path / "rerun.log", "run", str(cohort), "-o", str(out), "--jobs", "2")
    rerun.wait(timeout=900)
    log = (tmp_path / "killed.log").read_text(errors="replace") + (
        tmp_path / "rerun.log").read_text(errors="replace")
    assert rerun.returncode == 1, log[-3000:]  # the broken studies still fail
    assert _study_state(out) == _study_state(reference["out"])
    assert not any((out / ".psma-stage").glob("staging/*"))
    runs = db.read_runs(out / "results.db")
    assert list(runs["status"]) == ["interrupted", "finished"]
    assert "Secretgiven" not in log


def test_validate_is_a_dry_run_with_header_checks(cohort: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["run", str(cohort), "-o", str(out), "--validate"])
    printed = capsys.readouterr().out
    assert code == 1  # some studies would fail
    assert not out.exists()  # nothing written
    rows = {line.split()[0].split("/")[0]: line for line in printed.splitlines()
            if line.startswith(("PAT", "BAD"))}
    assert " stage " in rows["PAT-001"]
    assert " fail " in rows["BAD-DOSE"]
    assert "RadionuclideTotalDose" in rows["BAD-DOSE"]
    assert " fail " in rows["BAD-NOCT"]
    # a truncated pixel block is only found when the pixels are read: validate checks headers
    assert " stage " in rows["BAD-TRUNC"]
    assert "would stage 3, skip 0 unchanged, and 2 would fail" in printed
