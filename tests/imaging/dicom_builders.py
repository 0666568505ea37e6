"""Build PET/CT DICOM series with pydicom for tests (tmp_path), including broken variants.

The PET is written from a known activity volume (Bq/ml) with a per-slice RescaleSlope, so a
test knows the exact SUV every voxel must have: ``activity * weight_g / decayed_dose``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"

_ROOT = "1.2.826.0.1.3680043.8.498."


def uid(seed: str) -> str:
    """A deterministic UID from a seed text."""
    return generate_uid(prefix=_ROOT, entropy_srcs=[seed])


@dataclass
class Geometry:
    """Grid of a synthetic series: (K, J, I) shape, spacing (k, j, i) mm, origin, cosines."""

    shape: tuple[int, int, int] = (6, 8, 10)
    spacing: tuple[float, float, float] = (3.0, 4.0, 4.0)
    origin: tuple[float, float, float] = (-20.0, -16.0, -100.0)
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction of increasing i
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction of increasing j

    @property
    def normal(self) -> NDArray[np.float64]:
        return np.cross(self.row_dir, self.col_dir)

    def position(self, k: int) -> NDArray[np.float64]:
        return np.asarray(self.origin) + k * self.spacing[0] * self.normal


@dataclass
class PetSpec:
    """Everything a synthetic PET series header holds; tweak fields for broken variants."""

    weight_kg: float | None = 80.0
    size_m: float | None = 1.80
    sex: str | None = "M"
    dose_bq: float | str | None = 300e6
    half_life_s: float | None = 6586.2
    injection: datetime | None = datetime(2025, 3, 4, 9, 0, 0)
    injection_as: str = "datetime"  # "datetime", "time", "both"
    series_time: datetime = datetime(2025, 3, 4, 10, 0, 0)
    acquisition_time: datetime | None = None  # default = series_time
    units: str = "BQML"
    decay_correction: str = "START"
    corrected_image: tuple[str, ...] | None = ("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN")
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    manufacturer: str = "SIEMENS"
    radionuclide_code: str = "C-111A1"
    per_slice_slope: bool = True
    private: Mapping[tuple[int, int], tuple[str, Any]] = field(default_factory=dict)
    private_creators: Mapping[int, tuple[int, str]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


def decayed_dose(spec: PetSpec) -> float:
    """The dose decayed to the series time (the QIBA START reference)."""
    assert spec.injection is not None
    assert spec.half_life_s is not None
    dt = (spec.series_time - spec.injection).total_seconds()
    return float(spec.dose_bq) * 2.0 ** (-dt / spec.half_life_s)  # type: ignore[arg-type]


def expected_suvbw_factor(spec: PetSpec) -> float:
    assert spec.weight_kg is not None
    return spec.weight_kg * 1000.0 / decayed_dose(spec)


def activity_volume(geom: Geometry, *, seed: int = 7) -> NDArray[np.float64]:
    """A known activity (Bq/ml): smooth background + a hot block, varying by slice."""
    rng = np.random.default_rng(seed)
    k, j, i = geom.shape
    base = rng.uniform(1000.0, 8000.0, size=(k, j, i))
    base[:, j // 4: j // 2, i // 4: i // 2] *= 5.0
    base *= (1.0 + 0.3 * np.arange(k))[:, None, None]  # slopes differ per slice
    return base


def _fmt_date(d: datetime) -> str:
    return d.strftime("%Y%m%d")


def _fmt_time(d: datetime) -> str:
    return d.strftime("%H%M%S.%f")


def _base_dataset(sop_class: str, sop_uid: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = "SYN-001"
    ds.PatientName = "Synthetic^Patient"
    ds.StudyDate = "20250304"
    ds.StudyTime = "085500"
    return ds


def _set_geometry(ds: Dataset, geom: Geometry, k: int) -> None:
    ds.ImagePositionPatient = [f"{v:.4f}" for v in geom.position(k)]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*geom.row_dir, *geom.col_dir)]
    ds.PixelSpacing = [f"{geom.spacing[1]:g}", f"{geom.spacing[2]:g}"]
    ds.SliceThickness = f"{geom.spacing[0]:g}"
    ds.Rows, ds.Columns = geom.shape[1], geom.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.InstanceNumber = k + 1


def pet_dataset(spec: PetSpec, geom: Geometry, k: int, values: NDArray[np.float64], *,
                study_uid: str, series_uid: str, for_uid: str) -> Dataset:
    """One PET instance holding ``values`` (the modality values of slice ``k``)."""
    ds = _base_dataset(PET_SOP_CLASS, uid(f"{series_uid}-{k}"), "PT")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "PET AC"
    ds.Manufacturer = spec.manufacturer
    ds.ImageType = list(spec.image_type)
    ds.PatientSex = spec.sex if spec.sex is not None else ""
    if spec.weight_kg is not None:
        ds.PatientWeight = f"{spec.weight_kg:g}"
    if spec.size_m is not None:
        ds.PatientSize = f"{spec.size_m:g}"
    ds.SeriesDate = _fmt_date(spec.series_time)
    ds.SeriesTime = _fmt_time(spec.series_time)
    acq = spec.acquisition_time or spec.series_time
    ds.AcquisitionDate, ds.AcquisitionTime = _fmt_date(acq), _fmt_time(acq)
    ds.Units = spec.units
    ds.DecayCorrection = spec.decay_correction
    if spec.corrected_image is not None:
        ds.CorrectedImage = list(spec.corrected_image)
    item = Dataset()
    item.Radiopharmaceutical = "PSMA-11"
    if spec.dose_bq is not None:
        item.RadionuclideTotalDose = spec.dose_bq if isinstance(spec.dose_bq, str) else (
            f"{spec.dose_bq:.6g}")
    if spec.half_life_s is not None:
        item.RadionuclideHalfLife = f"{spec.half_life_s:g}"
    if spec.injection is not None:
        if spec.injection_as in ("datetime", "both"):
            item.RadiopharmaceuticalStartDateTime = (
                _fmt_date(spec.injection) + _fmt_time(spec.injection))
        if spec.injection_as in ("time", "both"):
            item.RadiopharmaceuticalStartTime = _fmt_time(spec.injection)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = spec.radionuclide_code, "SRT"
    code.CodeMeaning = "^18^Fluorine"
    item.RadionuclideCodeSequence = DicomSequence([code])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
    for group, (elem, creator) in spec.private_creators.items():
        ds.add_new((group, elem), "LO", creator)
    for tag, (vr, value) in spec.private.items():
        ds.add_new(tag, vr, value)
    for kw, value in spec.extra.items():
        setattr(ds, kw, value)
    _set_geometry(ds, geom, k)
    _set_pixels(ds, values, per_slice_slope=spec.per_slice_slope)
    return ds


def _set_pixels(ds: Dataset, values: NDArray[np.float64], *, per_slice_slope: bool) -> None:
    peak = float(np.max(np.abs(values))) or 1.0
    slope = peak / 32000.0 if per_slice_slope else 1.0
    stored = np.round(values / slope).astype(np.int16)
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = "0"
    ds.PixelData = stored.tobytes()


def write_pet_series(
    folder: Path,
    *,
    spec: PetSpec | None = None,
    geom: Geometry | None = None,
    activity: NDArray[np.float64] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    for_uid: str | None = None,
    mutate: Callable[[int, Dataset], None] | None = None,
    skip: Iterable[int] = (),
    file_names: Callable[[int], str] | None = None,
) -> list[Path]:
    """Write a PET series; ``mutate(k, ds)`` changes instance ``k`` to break it.

    Files are named in a shuffled order so a loader that sorts by name fails.
    """
    spec = spec or PetSpec()
    geom = geom or Geometry()
    activity = activity_volume(geom) if activity is None else activity
    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid(f"pet-{folder}")
    for_uid = for_uid or uid("for")
    folder.mkdir(parents=True, exist_ok=True)
    n = geom.shape[0]
    perm = np.random.default_rng(3).permutation(n)
    paths = []
    skip = set(skip)
    for k in range(n):
        if k in skip:
            continue
        ds = pet_dataset(spec, geom, k, activity[k], study_uid=study_uid, series_uid=series_uid,
                         for_uid=for_uid)
        if mutate is not None:
            mutate(k, ds)
        name = file_names(k) if file_names else f"IM{perm[k]:04d}"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct_dataset(geom: Geometry, k: int, hu: NDArray[np.float64], *, study_uid: str,
               series_uid: str, for_uid: str, image_type: Sequence[str]) -> Dataset:
    ds = _base_dataset(CT_SOP_CLASS, uid(f"{series_uid}-{k}"), "CT")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "CT AC"
    ds.Manufacturer = "SIEMENS"
    ds.ImageType = list(image_type)
    _set_geometry(ds, geom, k)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    return ds


def ct_volume(geom: Geometry, *, seed: int = 11) -> NDArray[np.float64]:
    """Known CT values in HU: air outside, water body, a bone block."""
    k, j, i = geom.shape
    hu = np.full((k, j, i), -1000.0)
    hu[:, j // 8: -max(j // 8, 1), i // 8: -max(i // 8, 1)] = 40.0
    hu[:, j // 2: j // 2 + max(j // 8, 1), i // 2: i // 2 + max(i // 8, 1)] = 700.0
    rng = np.random.default_rng(seed)
    return hu + rng.integers(-5, 6, size=hu.shape)


def write_ct_series(folder: Path, *, geom: Geometry | None = None, study_uid: str | None = None,
                    series_uid: str | None = None, for_uid: str | None = None,
                    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                    hu: NDArray[np.float64] | None = None) -> list[Path]:
    geom = geom or Geometry(shape=(9, 16, 20), spacing=(2.0, 2.0, 2.0),
                            origin=(-22.0, -18.0, -101.0))
    hu = ct_volume(geom) if hu is None else hu
    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid(f"ct-{folder}")
    for_uid = for_uid or uid("for")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(geom.shape[0]):
        ds = ct_dataset(geom, k, hu[k], study_uid=study_uid, series_uid=series_uid,
                        for_uid=for_uid, image_type=image_type)
        path = folder / f"CT{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(root: Path, *, spec: PetSpec | None = None, pet_geom: Geometry | None = None,
                ct_geom: Geometry | None = None, with_ct: bool = True,
                ct_for_uid: str | None = None, **pet_kwargs: Any) -> Path:
    """A PET/CT study under ``root`` (PT/ and CT/ subfolders); returns ``root``."""
    write_pet_series(root / "PT", spec=spec, geom=pet_geom, **pet_kwargs)
    if with_ct:
        write_ct_series(root / "CT", geom=ct_geom, for_uid=ct_for_uid)
    return root


# ------------------------------------------------------------------------------------------
# Vendor header JSON (suv-vendor-headers) -> pydicom datasets
# ------------------------------------------------------------------------------------------
_RP_KEYS = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
            "RadiopharmaceuticalStartDateTime")


def dataset_from_header_json(inst: Mapping[str, Any]) -> Dataset:
    """A PT header from one instance of the calculate-suv JSON form (keyword -> value)."""
    ds = Dataset()
    ds.Modality = "PT"
    item = Dataset()
    for key, value in inst.items():
        if key == "PhilipsPETPrivateGroup":
            if value:
                ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
                if "SUVScaleFactor" in value:
                    ds.add_new((0x7053, 0x1000), "DS", str(value["SUVScaleFactor"]).strip())
                if "ActivityConcentrationScaleFactor" in value:
                    ds.add_new((0x7053, 0x1009), "DS",
                               str(value["ActivityConcentrationScaleFactor"]).strip())
            continue
        if key in _RP_KEYS:
            setattr(item, key, value.strip() if isinstance(value, str) else value)
            continue
        if key in ("FrameReferenceTime", "ActualFrameDuration", "PatientWeight",
                   "PatientSize"):
            setattr(ds, key, f"{value:.10g}" if isinstance(value, float) else value)
            continue
        setattr(ds, key, value)
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
    return ds


def shifted(d: datetime, **kw: float) -> datetime:
    return d + timedelta(**kw)
