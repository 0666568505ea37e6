"""Discovery, series choice, volume assembly and every broken-series error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from imaging.dicom import (
    assemble_volume,
    discover,
    read_pixels,
    read_series_headers,
    safe_path_component,
)
from imaging.errors import (
    DicomError,
    DicomWarning,
    InconsistentSeriesError,
    MissingAttributeError,
    NoUsableSeriesError,
)
from tests.imaging.dicom_builders import (
    Geometry,
    PetSpec,
    ct_volume,
    uid,
    write_ct_series,
    write_pet_series,
    write_study,
)


def _ct(paths: list[Path], **kw):
    return assemble_volume(read_series_headers(paths), paths, unit="HU", **kw)


# -- safe_path_component ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected_prefix"),
    [("PSMA_001", "PSMA_001"), ("../../etc", "etc"), ("..", "empty"), (".hidden", "hidden"),
     ("Müller^Hans", "M_ller_Hans"), ("a/b\\c d", "a_b_c_d"), ("", "empty")],
)
def test_safe_path_component(text: str, expected_prefix: str) -> None:
    out = safe_path_component(text)
    assert out.startswith(expected_prefix)
    assert set(out) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
    assert not out.startswith(".")
    assert ".." not in out.split("-")[0].split("_")
    if text != expected_prefix:
        assert len(out) == len(expected_prefix) + 9  # altered: 8-char hash suffix
    assert safe_path_component("a b") != safe_path_component("a_b")  # stays distinct


# -- discovery and choice --------------------------------------------------------------------
def test_discover_groups_series_skips_junk_and_chooses_pair(tmp_path: Path) -> None:
    write_study(tmp_path / "study")
    (tmp_path / "study" / "notes.txt").write_text("not dicom")
    (tmp_path / "study" / "empty.dcm").write_bytes(b"")
    ct0 = sorted((tmp_path / "study" / "CT").iterdir())[0]
    (tmp_path / "study" / "truncated_header").write_bytes(ct0.read_bytes()[:200])
    dicomdir = Dataset()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = uid("dd")
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.SOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.save_as(tmp_path / "study" / "DICOMDIR", enforce_file_format=True)
    inv = discover(tmp_path)
    assert inv.n_files == 6 + 9 + 4
    assert inv.skipped == {"not_dicom": 2, "unreadable": 1, "dicomdir": 1}, inv.skipped
    (study,) = inv.studies
    assert {s.modality for s in study.series} == {"PT", "CT"}
    assert study.pet is not None
    assert study.pet.n_instances == 6
    assert study.ct is not None
    assert study.ct.n_instances == 9
    assert study.reasons[study.pet.series_instance_uid].startswith("chosen as PET")
    assert study.reasons[study.ct.series_instance_uid].startswith("chosen as CT")
    d = inv.to_dict()
    assert d["studies"][0]["pet_series_instance_uid"] == study.pet.series_instance_uid


def test_choice_rejects_nac_pet_localizer_other_frame_and_short_ct(tmp_path: Path) -> None:
    write_study(tmp_path)
    write_pet_series(tmp_path / "NAC", spec=PetSpec(corrected_image=("NORM", "DECY")),
                     series_uid=uid("nac"))
    write_ct_series(tmp_path / "SCOUT", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                    series_uid=uid("scout"))
    write_ct_series(tmp_path / "OTHERFOR", series_uid=uid("otherfor"), for_uid=uid("for2"))
    write_ct_series(tmp_path / "SHORT", series_uid=uid("short"),
                    geom=Geometry(shape=(3, 16, 20), spacing=(2, 2, 2), origin=(-22, -18, -101)))
    (study,) = discover(tmp_path).studies
    r = study.reasons
    assert "lacks ATTN" in r[uid("nac")]
    assert "localizer" in r[uid("scout")]
    assert "FrameOfReferenceUID" in r[uid("otherfor")]
    assert "covers" in r[uid("short")]
    assert study.ct is not None
    assert study.ct.series_instance_uid not in {
        uid("scout"), uid("otherfor"), uid("short")}


def test_several_pet_candidates_reported_and_original_preferred(tmp_path: Path) -> None:
    write_study(tmp_path)
    write_pet_series(tmp_path / "DER", spec=PetSpec(image_type=("DERIVED", "SECONDARY")),
                     series_uid=uid("derived"))
    (study,) = discover(tmp_path).studies
    assert study.pet is not None
    assert study.pet.series_instance_uid != uid("derived")
    assert "best of 2 candidates" in study.reasons[study.pet.series_instance_uid]
    assert "not chosen as PET" in study.reasons[uid("derived")]


# -- assembly --------------------------------------------------------------------------------
def test_slices_sorted_by_position_not_name_with_per_slice_slope(tmp_path: Path) -> None:
    geom = Geometry()
    act = np.random.default_rng(0).uniform(10, 5000, geom.shape)
    act *= np.arange(1, 7)[:, None, None]
    paths = write_pet_series(tmp_path, geom=geom, activity=act)
    headers = read_series_headers(paths)
    slopes = {float(h.RescaleSlope) for h in headers}
    assert len(slopes) == 6
    vol = assemble_volume(headers, paths, unit="Bq/ml")
    half_step = np.array([float(h.RescaleSlope) for h in headers]) / 2
    order = np.argsort([float(h.ImagePositionPatient[2]) for h in headers])
    err = np.abs(vol.array - act).max(axis=(1, 2))
    assert np.all(err <= half_step[order] * 1.001 + 1e-3)
    assert vol.array.dtype == np.float32
    assert vol.spacing == (3.0, 4.0, 4.0)
    np.testing.assert_allclose(vol.origin, geom.origin)


@pytest.mark.parametrize(
    ("row_dir", "col_dir", "name"),
    [((1, 0, 0), (0, 1, 0), "HFS"), ((-1, 0, 0), (0, -1, 0), "HFP"),
     ((-1, 0, 0), (0, 1, 0), "FFS"), ((1, 0, 0), (0, 0, -1), "coronal")],
)
def test_geometry_matches_image_position_for_any_orientation(
    tmp_path: Path, row_dir, col_dir, name: str
) -> None:
    geom = Geometry(row_dir=row_dir, col_dir=col_dir, origin=(10.0, -20.0, 30.0))
    paths = write_ct_series(tmp_path, geom=geom, hu=ct_volume(geom))
    vol = _ct(paths)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        k = round(float(vol.world_to_index(np.asarray(ds.ImagePositionPatient, float))[0]))
        # voxel (k, 0, 0) sits at the slice's ImagePositionPatient
        np.testing.assert_allclose(vol.index_to_world([k, 0, 0]), ds.ImagePositionPatient,
                                   atol=1e-3)
        # voxel (k, 1, 2) is 1 row down the column cosine and 2 columns along the row cosine
        expected = (np.asarray(ds.ImagePositionPatient, float)
                    + 1 * geom.spacing[1] * np.asarray(col_dir) + 2 * geom.spacing[2]
                    * np.asarray(row_dir))
        np.testing.assert_allclose(vol.index_to_world([k, 1, 2]), expected, atol=1e-3)
    assert np.linalg.det(vol.direction) != 0
    np.testing.assert_array_equal(vol.array, np.round(ct_volume(geom)).astype(np.int16))
    assert vol.array.dtype == np.int16


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_compressed_transfer_syntax_round_trip(tmp_path: Path, syntax) -> None:
    geom = Geometry(shape=(3, 32, 32), spacing=(2.0, 1.0, 1.0))
    plain = write_ct_series(tmp_path / "plain", geom=geom)
    packed_dir = tmp_path / "packed"
    packed_dir.mkdir()
    packed = []
    for p in plain:
        ds = pydicom.dcmread(p)
        ds.compress(syntax)
        ds.save_as(packed_dir / p.name, enforce_file_format=True)
        packed.append(packed_dir / p.name)
    assert pydicom.dcmread(packed[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(_ct(packed).array, _ct(plain).array)


# -- broken series ---------------------------------------------------------------------------
def test_duplicate_slice(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = uid("dup")
    ds.save_as(tmp_path / "dup.dcm", enforce_file_format=True)
    paths.append(tmp_path / "dup.dcm")
    with pytest.raises(InconsistentSeriesError,
                       match=r"duplicate slice position: ImagePositionPatient \(0020,0032\)"):
        _ct(paths)


def test_missing_slice(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    missing = paths.pop(4)
    with pytest.raises(InconsistentSeriesError, match=r"missing slice\(s\): gap of 4.000 mm") as e:
        _ct(paths)
    assert e.value.path is not None
    assert e.value.path.name == "CT0005.dcm"
    assert missing.name not in str(e.value)


def test_mixed_orientation(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    ds = pydicom.dcmread(paths[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, -0.0998334]
    ds.save_as(paths[3], enforce_file_format=True)
    with pytest.raises(InconsistentSeriesError, match=r"mixed orientations: "
                       r"ImageOrientationPatient \(0020,0037\) = \[1.0, 0.0, 0.0, 0.0, 0.995"):
        _ct(paths)


def test_mixed_matrix_size(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    ds = pydicom.dcmread(paths[2])
    ds.Rows = 8
    ds.PixelData = ds.PixelData[: 8 * 20 * 2]
    ds.save_as(paths[2], enforce_file_format=True)
    with pytest.raises(InconsistentSeriesError, match=r"mixed matrix sizes: Rows \(0028,0010\)"):
        _ct(paths)


def test_gantry_tilt(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.35 * k * 2.0, ipp[2]]
        ds.GantryDetectorTilt = "19.3"
        ds.save_as(p, enforce_file_format=True)
    with pytest.raises(InconsistentSeriesError, match=r"gantry tilt.*GantryDetectorTilt "
                       r"\(0018,1120\) = '19.3'"):
        _ct(paths)


def test_missing_position(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(MissingAttributeError, match=r"ImagePositionPatient \(0020,0032\) is "
                       "absent"):
        _ct(paths)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 300])
    with pytest.raises(DicomError, match=r"CT0005.dcm: cannot decode PixelData \(7FE0,0010\)"):
        _ct(paths)


def test_irregular_spacing_warns_and_strict_fails(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    ds = pydicom.dcmread(paths[4])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.5]
    ds.save_as(paths[4], enforce_file_format=True)
    with pytest.warns(DicomWarning, match="irregular slice spacing"):
        _ct(paths)
    with pytest.raises(InconsistentSeriesError, match="irregular slice spacing"):
        _ct(paths, strict=True)


def test_discover_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NoUsableSeriesError, match="does not exist"):
        discover(tmp_path / "nope")


def test_read_headers_of_corrupt_file(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path)
    paths[0].write_bytes(paths[0].read_bytes()[:150])
    with pytest.raises(DicomError, match=r"CT0000\.dcm: cannot read the DICOM header"):
        read_series_headers(paths)


def test_copy_of_series_in_two_folders_is_one_series_with_duplicates(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (study,) = discover(tmp_path).studies
    assert study.series[0].n_instances == 2 * len(paths)


@pytest.mark.parametrize(
    ("bits_stored", "signed", "implicit"),
    [(16, True, False), (12, False, False), (12, True, False), (16, False, True)],
    ids=["int16", "uint12-high-bits-masked", "int12-sign-extended", "implicit-vr"],
)
def test_direct_pixel_read_matches_pydicom(tmp_path: Path, bits_stored: int, signed: bool,
                                           implicit: bool) -> None:
    paths = write_ct_series(tmp_path / "src")
    rng = np.random.default_rng(9)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(
            signed)
        raw = rng.integers(0, 2**16, size=(16, 20), dtype=np.uint16)
        ds.PixelData = raw.tobytes()
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(p, implicit_vr=implicit, little_endian=True)
    (study,) = discover(tmp_path, keep_headers=True).studies
    series = study.series[0]
    assert series.headers is not None
    for path, header, offset in zip(series.files, series.headers, series.pixel_offsets,
                                    strict=True):
        direct = read_pixels(path, rows=16, columns=20, header=header, offset=offset)
        np.testing.assert_array_equal(direct, pydicom.dcmread(path).pixel_array)
    # a truncated file is caught on the direct path too
    data = series.files[0].read_bytes()
    series.files[0].write_bytes(data[:-100])
    with pytest.raises(DicomError, match=r"PixelData \(7FE0,0010\) is truncated"):
        read_pixels(series.files[0], rows=16, columns=20, header=series.headers[0],
                    offset=series.pixel_offsets[0])


def test_random_bytes_never_crash_discovery(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        n = int(rng.integers(0, 3000))
        data = rng.bytes(n)
        (tmp_path / f"g{i}").write_bytes(b"\0" * 128 + b"DICM" + data if i % 2 else data)
    inv = discover(tmp_path)
    assert inv.studies == ()
    assert inv.skipped == {"not_dicom": 30, "unreadable": 30}


def test_threaded_assembly_matches_and_reports_errors(tmp_path: Path) -> None:
    geom = Geometry(shape=(70, 8, 8), spacing=(2.0, 2.0, 2.0))
    hu = ct_volume(geom)
    paths = write_ct_series(tmp_path, geom=geom, hu=hu)
    (study,) = discover(tmp_path, keep_headers=True).studies
    series = study.series[0]
    assert series.headers is not None
    vol = assemble_volume(list(series.headers), list(series.files), unit="HU",
                          pixel_offsets=series.pixel_offsets)
    np.testing.assert_array_equal(vol.array, np.round(hu).astype(np.int16))
    victim = paths[60]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DicomError, match=r"CT0060\.dcm: PixelData \(7FE0,0010\) is truncated"):
        assemble_volume(list(series.headers), list(series.files), unit="HU",
                        pixel_offsets=series.pixel_offsets)
