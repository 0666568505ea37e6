"""Output writers on small synthetic inputs: JSON/CSV schema, NIfTI, DICOM SEG, MIP, report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from imaging.volume import Volume
from staging.classify import classify_lesion, stage_patient
from staging.config import load_config
from staging.outputs import (
    LESION_COLUMNS,
    SCHEMA_VERSION,
    build_record,
    render_mip,
    write_dicom_seg,
    write_json,
    write_lesions_csv,
    write_report,
)
from staging.outputs.mip import canonical_zyx, mip_images
from staging.outputs.seg import frame_masks

CONTRACT_KEYS = {
    "patient_id", "study_instance_uid", "mitnm", "group", "emmett_group", "lesion_count",
    "lesion_count_bin", "counts_by_category", "psma_tv_ml", "tl_psma", "max_mipsma_score",
    "bone_pattern", "needs_review", "reference_suv", "suv_provenance", "config", "config_hash",
    "software_version", "series", "anatomy_provider", "lesions", "schema_version",
}
LESION_KEYS = {"id", "category", "region", "suv_max", "suv_mean", "suv_peak", "volume_ml",
               "tl_psma", "centroid_mm", "mipsma_score", "equivocal"}


class _Lesion:
    def __init__(self, lesion_id: int, overlaps: dict[str, float], centroid: tuple[float, ...],
                 *, equivocal: bool = False) -> None:
        self.id = lesion_id
        self.overlaps = overlaps
        self.centroid_mm = centroid
        self.equivocal = equivocal
        self.equivocal_reason = "abuts the urinary bladder" if equivocal else None
        self.volume_ml, self.suv_max, self.suv_mean, self.suv_peak = 1.5, 12.0, 7.0, 9.0
        self.tl_psma, self.mipsma_score = 10.5, 2


# -- a small PET series whose slice order and orientation differ from the Volume's ------------
def _pet_series(tmp: Path, *, rows: int = 12, cols: int = 10, slices: int = 8,
                prone: bool = False) -> tuple[list[Path], Volume, str]:
    """Write a PET series, feet-first slice order; return files, the grid as a Volume, series UID.

    The Volume uses k increasing with z (cranial), j along the DICOM column direction, i along
    the DICOM row direction; the DICOM instances are numbered from the head down.
    """
    spacing = (3.0, 4.0, 4.0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    row_dir = np.array([-1.0, 0.0, 0.0]) if prone else np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, -1.0, 0.0]) if prone else np.array([0.0, 1.0, 0.0])
    origin0 = np.array([-20.0, -24.0, -10.0])  # LPS of pixel (0, 0) of the lowest slice
    files = []
    for n in range(slices):
        k = slices - 1 - n  # instance 1 is the most cranial slice
        ipp = origin0 + np.array([0.0, 0.0, k * spacing[0]])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = PositronEmissionTomographyImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "SYN-1", "", "", "M"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "PT", 3, n + 1
        ds.Manufacturer = "SYN"
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [*row_dir.tolist(), *col_dir.tolist()]
        ds.ImagePositionPatient = ipp.tolist()
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.zeros((rows, cols), dtype=np.uint16).tobytes()
        path = tmp / f"pt{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    # Volume axes: k = +z, j = DICOM column direction (down the rows), i = DICOM row direction
    direction = np.column_stack([[0.0, 0.0, 1.0], col_dir, row_dir])
    grid = Volume(np.zeros((slices, rows, cols), dtype=np.float32), spacing, tuple(origin0),
                  direction, "g/ml")
    return files, grid, series


def _labels(grid: Volume) -> Volume:
    lab = np.zeros(grid.shape, dtype=np.uint16)
    lab[1:3, 2:4, 2:4] = 1  # bone
    lab[5, 7:9, 6] = 2  # pelvic node
    lab[6, 1, 8] = 3  # equivocal
    return grid.with_array(lab, "label")


def _staged():
    lesions = [
        classify_lesion(_Lesion(1, {"bone": 1.0}, (0.0, 0.0, 0.0))),
        classify_lesion(_Lesion(2, {"obturator_left": 1.0}, (5.0, 5.0, 5.0))),
        classify_lesion(_Lesion(3, {"presacral": 1.0}, (1.0, 1.0, 1.0), equivocal=True)),
    ]
    return stage_patient(lesions, patient_id="SYN-1")


def _record(staging=None, **kw):  # type: ignore[no-untyped-def]
    config = load_config()
    return build_record(
        staging or _staged(), study_instance_uid="1.2.3", series={"pet": "1.2.3.4", "ct": "1.2.5"},
        suv_provenance={"suv_type": "bw", "branch": "qiba"}, config=config.to_dict(),
        config_hash=config.hash(), anatomy_provider="rule", lesion_method="fixed SUV 3", **kw)


# -- JSON and CSV -----------------------------------------------------------------------------
def test_record_has_every_contract_key_and_is_strict_json(tmp_path: Path) -> None:
    record = _record()
    assert CONTRACT_KEYS <= set(record)
    assert record["schema_version"] == SCHEMA_VERSION
    assert set(record["counts_by_category"]) == {"fossa", "node_pelvic", "node_extrapelvic",
                                                 "bone", "visceral", "equivocal"}
    assert set(record["reference_suv"]) >= {"blood_pool", "liver", "parotid"}
    for lesion in record["lesions"]:
        assert LESION_KEYS <= set(lesion)
    path = write_json(record, tmp_path / "staging.json")
    back = json.loads(path.read_text())
    assert back["mitnm"] == "miT0N1aM1b"
    assert back["group"] == "M1b-M1c"
    assert back["lesions"][2]["category"] == "equivocal"
    assert back["config_hash"] == load_config().hash()


def test_record_refuses_nan(tmp_path: Path) -> None:
    record = _record()
    record["psma_tv_ml"] = float("nan")
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(record, tmp_path / "staging.json")


def test_unmeasured_reference_is_null_with_flag() -> None:
    from imaging.lesions import ReferenceValue, ReferenceValues

    found = ReferenceValue(suv_mean=1.8, suv_sd=0.2, n_voxels=40, method="sphere")
    missing = ReferenceValue(suv_mean=None, suv_sd=None, n_voxels=0, method="sphere",
                             flag="liver not found")
    record = _record(reference=ReferenceValues(blood_pool=found, liver=missing, parotid=found,
                                               spleen=missing))
    assert record["reference_suv"]["liver"] is None
    assert record["reference_suv"]["blood_pool"] == pytest.approx(1.8)
    assert record["reference_suv_detail"]["liver"]["flag"] == "liver not found"


def test_lesions_csv_has_schema_columns_and_one_row_per_lesion(tmp_path: Path) -> None:
    record = _record()
    path = write_lesions_csv(record, tmp_path / "lesions.csv")
    with path.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == LESION_COLUMNS
        rows = list(reader)
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert [r["category"] for r in rows] == ["bone", "node_pelvic", "equivocal"]
    assert rows[2]["equivocal"] == "true"
    assert float(rows[1]["centroid_z_mm"]) == 5.0
    assert rows[0]["patient_id"] == "SYN-1"


def test_lesions_csv_header_only_without_lesions(tmp_path: Path) -> None:
    record = _record(stage_patient([], patient_id="SYN-2"))
    path = write_lesions_csv(record, tmp_path / "lesions.csv")
    assert path.read_text().strip().split(",") == list(LESION_COLUMNS)


# -- DICOM SEG --------------------------------------------------------------------------------
@pytest.mark.parametrize("prone", [False, True])
def test_seg_reads_back_references_the_pet_series_and_frames_land_on_lesions(
        tmp_path: Path, prone: bool) -> None:
    import highdicom as hd

    files, grid, series_uid = _pet_series(tmp_path, prone=prone)
    labels = _labels(grid)
    categories = {1: "bone", 2: "node_pelvic", 3: "equivocal"}
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    out = write_dicom_seg(labels, categories, headers, tmp_path / "lesions_seg.dcm")

    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    labels_by_number = {int(s.SegmentNumber): s.TrackingID for s in seg.SegmentSequence}
    assert labels_by_number == {1: "node_pelvic", 2: "bone", 3: "equivocal"}
    assert seg.SegmentSequence[1].SegmentLabel == "bone (miM1b)"

    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    lesion_of_category = {v: k for k, v in categories.items()}
    seen_voxels = {1: 0, 2: 0, 3: 0}
    pixel = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = by_uid[src_uid]
        # the frame's own plane position equals its source image's
        assert np.allclose([float(v) for v in
                            frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in src.ImagePositionPatient])
        r, c = np.nonzero(pixel[n])
        ipp = np.asarray(src.ImagePositionPatient, dtype=float)
        iop = np.asarray(src.ImageOrientationPatient, dtype=float)
        world = (ipp + c[:, None] * float(src.PixelSpacing[1]) * iop[:3]
                 + r[:, None] * float(src.PixelSpacing[0]) * iop[3:])
        idx = np.rint(grid.world_to_index(world)).astype(int)
        values = labels.array[idx[:, 0], idx[:, 1], idx[:, 2]]
        expected = lesion_of_category[labels_by_number[segment]]
        assert np.all(values == expected)
        seen_voxels[expected] += len(values)
    # every lesion voxel appears in exactly one frame
    for lesion_id, count in seen_voxels.items():
        assert count == int(np.count_nonzero(labels.array == lesion_id))


def test_seg_needs_a_lesion(tmp_path: Path) -> None:
    files, grid, _ = _pet_series(tmp_path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    with pytest.raises(ValueError, match="at least one segment"):
        write_dicom_seg(grid.with_array(np.zeros(grid.shape, np.uint16), "label"), {},
                        headers, tmp_path / "seg.dcm")


def test_frame_masks_outside_grid_are_empty(tmp_path: Path) -> None:
    files, grid, _ = _pet_series(tmp_path)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    shifted = grid.with_array(np.ones(grid.shape, np.uint8), "label")
    far = Volume(shifted.array, shifted.spacing, (500.0, 500.0, 500.0), shifted.direction,
                 "label")
    assert frame_masks(np.asarray(far.array), far, headers).sum() == 0
    assert frame_masks(np.asarray(shifted.array), shifted, headers).all()


# -- MIP and report ---------------------------------------------------------------------------
def _oriented(direction: np.ndarray) -> Volume:
    arr = np.zeros((6, 7, 8), dtype=np.float32)
    return Volume(arr, (2.0, 3.0, 4.0), (0.0, 0.0, 0.0), direction, "g/ml")


@pytest.mark.parametrize("direction", [
    np.eye(3)[:, ::-1],  # k = z, j = y, i = x (head-first supine, k cranial)
    np.column_stack([[0, 0, -1.0], [0, -1.0, 0], [-1.0, 0, 0]]),  # all flipped
    np.column_stack([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]),  # permuted
])
def test_canonical_zyx_puts_a_world_point_where_expected(direction: np.ndarray) -> None:
    vol = _oriented(direction)
    arr = np.zeros(vol.shape, dtype=np.float32)
    arr[1, 2, 3] = 5.0
    vol = vol.with_array(arr)
    zyx, spacing = canonical_zyx(vol)
    world = vol.index_to_world([1, 2, 3])
    corner = vol.index_to_world(np.argwhere(np.ones(vol.shape)))
    lowest = corner.min(axis=0)
    expected = tuple(round((world[w] - lowest[w]) / s)
                     for w, s in zip((2, 1, 0), spacing, strict=True))
    assert tuple(int(v) for v in np.argwhere(zyx == 5.0)[0]) == expected


def test_mip_lesion_projection_follows_the_hottest_lesion() -> None:
    grid = _oriented(np.eye(3)[:, ::-1])
    suv = np.ones(grid.shape, dtype=np.float32)
    lab = np.zeros(grid.shape, dtype=np.uint16)
    suv[2, 1, 4], lab[2, 1, 4] = 8.0, 1
    suv[2, 5, 4], lab[2, 5, 4] = 12.0, 2  # same anterior ray, hotter
    images = mip_images(grid.with_array(suv), grid.with_array(lab, "label"))
    mip, ids, pix = images["anterior"]
    assert mip.shape == (6, 8)
    assert ids[2, 4] == 2
    assert mip[2, 4] == 12.0
    assert pix == (2.0, 4.0)
    _lat_mip, lat_ids, _ = images["lateral"]
    assert lat_ids[2, 1] == 1
    assert lat_ids[2, 5] == 2


def test_mip_png_and_self_contained_report(tmp_path: Path) -> None:
    _, grid, _ = _pet_series(tmp_path)
    suv = np.random.default_rng(3).gamma(2.0, 0.5, grid.shape).astype(np.float32)
    labels = _labels(grid)
    suv[labels.array > 0] = 15.0
    png = render_mip(grid.with_array(suv), labels, {1: "bone", 2: "node_pelvic", 3: "equivocal"},
                     tmp_path / "mip.png", title="miT0N1aM1b")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    # the bone outline colour (#D55E00) is drawn
    target = np.array([0xD5, 0x5E, 0x00]) / 255
    assert np.any(np.all(np.abs(img[..., :3] - target) < 0.06, axis=-1))
    report = write_report(_record(), png, tmp_path / "report.html")
    text = report.read_text()
    assert "data:image/png;base64," in text
    assert "miT0N1aM1b" in text
    assert "M1b-M1c" in text
    assert "<script" not in text
    assert "http://" not in text
    assert "https://" not in text
    assert text.count("<tr>") >= 4  # the lesion rows
