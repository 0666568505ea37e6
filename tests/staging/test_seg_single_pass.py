"""Staging a DICOM study reads each file's header once: the SEG uses the loader's PET headers."""

from __future__ import annotations

from pathlib import Path

import pytest

import imaging.dicom
from fixtures.phantom import generate_patient, write_patient
from staging.cli import main


def test_stage_reads_every_header_once_and_writes_the_seg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    patient = generate_patient(20260612, size="small", stage="N1/M1a")
    folder = write_patient(patient, tmp_path / "data", format="dicom", vendor="siemens") / "dicom"
    reads: list[Path] = []
    read_header = imaging.dicom._read_header

    def counting(path: Path):  # type: ignore[no-untyped-def]
        reads.append(path)
        return read_header(path)

    monkeypatch.setattr(imaging.dicom, "_read_header", counting)
    series_reads: list[int] = []
    read_series = imaging.dicom.read_series_headers
    monkeypatch.setattr(imaging.dicom, "read_series_headers",
                        lambda files: series_reads.append(len(files)) or read_series(files))
    out = tmp_path / "out"
    assert main(["-q", "stage", str(folder), "-o", str(out)]) == 0, capsys.readouterr().err
    assert (out / "lesions_seg.dcm").is_file()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert sorted(reads) == files  # one discovery pass, each file once
    assert series_reads == []
