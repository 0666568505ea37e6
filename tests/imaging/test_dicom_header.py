"""The fast header reader gives exactly what ``pydicom.dcmread(stop_before_pixels=True)`` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

import imaging.dicom
from imaging.dicom import assemble_volume, discover, read_series_headers
from imaging.dicom_header import read_header_fast
from imaging.loading import load_study
from tests.imaging.dicom_builders import Geometry, write_ct_series, write_pet_series, write_study


def _elements(ds: Dataset) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for tag, elem in ds._dict.items():
        if type(elem).__name__ == "RawDataElement":
            out.append(("raw", tag, *elem))  # every field of the named tuple
        else:
            out.append(("element", tag, elem.VR, repr(elem.value), elem.is_undefined_length))
    return out


def _pydicom(path: Path) -> tuple[Dataset, int]:
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        return ds, fh.tell()


def _assert_same_as_pydicom(path: Path) -> None:
    with open(path, "rb") as fh:
        fast = read_header_fast(fh, path)
    assert fast is not None, f"{path} fell back to pydicom"
    ds, offset = fast
    ref, ref_offset = _pydicom(path)
    assert offset == ref_offset
    assert _elements(ds) == _elements(ref)
    assert ds == ref
    assert ds.preamble == ref.preamble
    assert ds.filename == ref.filename
    assert ds.original_encoding == ref.original_encoding
    assert [(t, ds.file_meta[t].value) for t in ds.file_meta.keys()] == [
        (t, ref.file_meta[t].value) for t in ref.file_meta.keys()]
    for kw in ("ImagePositionPatient", "RescaleSlope", "SeriesInstanceUID", "PatientWeight"):
        assert ds.get(kw) == ref.get(kw)
    item, ref_item = (d.get("RadiopharmaceuticalInformationSequence") for d in (ds, ref))
    assert (item is None) == (ref_item is None)
    if item is not None:
        assert item[0] == ref_item[0]


def _pet(tmp_path: Path, mutate=None) -> list[Path]:
    return write_pet_series(tmp_path / "pt", geom=Geometry(shape=(3, 8, 8)), mutate=mutate)


def test_explicit_little_endian_pet_and_ct(tmp_path: Path) -> None:
    paths = _pet(tmp_path) + write_ct_series(tmp_path / "ct", geom=Geometry(shape=(2, 8, 8)))
    for path in paths:
        _assert_same_as_pydicom(path)


def test_implicit_vr_undefined_length_sequence_charset_private_and_long_header(
        tmp_path: Path) -> None:
    def mutate(k: int, ds: Dataset) -> None:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"
        block = ds.private_block(0x0029, "PSMA TEST", create=True)
        block.add_new(0x10, "OB", bytes(range(256)) * 100)  # 25.6 kB: beyond the first read
        block.add_new(0x11, "LO", "private text")
        ds["RadiopharmaceuticalInformationSequence"].is_undefined_length = True
        for item in ds.RadiopharmaceuticalInformationSequence:
            item.is_undefined_length_sequence_item = True
        ds.ReferencedImageSequence = Sequence([Dataset()])  # an empty item
        if k == 1:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    for path in _pet(tmp_path, mutate):
        _assert_same_as_pydicom(path)


def test_compressed_syntax_and_no_pixel_data(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", geom=Geometry(shape=(2, 8, 8)))
    ds = pydicom.dcmread(paths[0])
    ds.compress(RLELossless)
    ds.save_as(paths[0], enforce_file_format=True)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1], enforce_file_format=True)
    for path in paths:
        _assert_same_as_pydicom(path)


def test_unhandled_encodings_and_damage_fall_back_to_pydicom(tmp_path: Path) -> None:
    path = _pet(tmp_path)[0]
    ds = pydicom.dcmread(path)
    big = tmp_path / "big"
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(big, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    assert pydicom.dcmread(big).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    raw = path.read_bytes()
    no_preamble = tmp_path / "no_preamble"
    no_preamble.write_bytes(raw[132:])
    truncated = tmp_path / "truncated"
    truncated.write_bytes(raw[:700])
    for p in (big, no_preamble, truncated):
        with open(p, "rb") as fh:
            assert read_header_fast(fh, p) is None, p


@pytest.mark.filterwarnings("ignore:Expected implicit VR:UserWarning")  # pydicom, either way
def test_discovery_of_damaged_files_is_unchanged(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _pet(tmp_path)
    raw = paths[0].read_bytes()
    for n, cut in enumerate((0, 133, 200, 400, 700, 1000, len(raw) - 10)):
        (tmp_path / "pt" / f"cut{n}").write_bytes(raw[:cut])
    (tmp_path / "notes.txt").write_text("not DICOM")
    fast = discover(tmp_path).to_dict()
    monkeypatch.setattr(imaging.dicom, "_read_header_fast", lambda fh, path: None)
    assert fast == discover(tmp_path).to_dict()
    assert sum(fast["skipped"].values()) >= 5


def test_read_series_headers_uses_the_same_reader(tmp_path: Path) -> None:
    paths = _pet(tmp_path)
    headers = read_series_headers(paths)
    for path, ds in zip(paths, headers, strict=True):
        assert ds == _pydicom(path)[0]


def test_loaded_study_keeps_the_pet_headers(tmp_path: Path) -> None:
    write_study(tmp_path)
    study = load_study(tmp_path)
    assert study.pet_headers is not None
    assert study.pet_files is not None
    assert len(study.pet_headers) == len(study.pet_files) == study.pet.shape[0]
    for ds, path in zip(study.pet_headers, study.pet_files, strict=True):
        assert "PixelData" not in ds
        assert ds.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
        assert ds.SeriesInstanceUID == study.meta.pet_series_instance_uid
    z = sorted(float(ds.ImagePositionPatient[2]) for ds in study.pet_headers)
    np.testing.assert_allclose(z, sorted(study.pet.axis_world_coordinates(0)[:, 2]), atol=1e-3)


@pytest.mark.parametrize(("signed", "intercept"), [(False, -1024), (False, -32768), (True, -1024),
                                                   (True, 2048)])
def test_int16_ct_rescale_matches_exact_arithmetic(tmp_path: Path, signed: bool,
                                                   intercept: int) -> None:
    """Unsigned stored values above 32767 and large intercepts land exactly in int16 HU."""
    geom = Geometry(shape=(3, 16, 20), spacing=(2.0, 2.0, 2.0))
    paths = write_ct_series(tmp_path / "ct", geom=geom)
    rng = np.random.default_rng(5)
    lo, hi = max(-32768 - intercept, -32768 if signed else 0), min(32767 - intercept,
                                                                   32767 if signed else 65535)
    expected = []
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelRepresentation = int(signed)
        stored = rng.integers(lo, hi + 1, size=(16, 20))
        stored[0, 0], stored[0, 1] = lo, hi
        ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
        ds.RescaleIntercept = str(intercept)
        ds.save_as(p, enforce_file_format=True)
        expected.append(stored + intercept)
    vol = assemble_volume(read_series_headers(paths), paths, unit="HU",
                          pixel_offsets=discover(tmp_path).studies[0].series[0].pixel_offsets)
    assert vol.array.dtype == (np.int16 if abs(intercept) <= 2048 else np.float32)
    np.testing.assert_array_equal(vol.array, np.asarray(expected))
