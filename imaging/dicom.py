"""DICOM series discovery, PET/CT series choice and volume assembly.

* :func:`discover` scans a folder tree (any file name, with or without ``.dcm``), reads only the
  header attributes it needs, skips and counts what is not a usable DICOM image, groups by
  StudyInstanceUID / SeriesInstanceUID and chooses, per study, the PET series and its CT.
* :func:`read_series_headers` reads the full headers (no pixels) of one series.
* :func:`assemble_volume` sorts slices by the projection of ImagePositionPatient on the slice
  normal, checks the geometry (duplicates, gaps, tilt, mixed orientation or matrix size),
  reads each file's pixels once and applies RescaleSlope/Intercept per slice.
* :func:`safe_path_component` turns any identifier into a safe file-name component.

See ``docs/loading.md``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.tag import BaseTag

from imaging.dicom_header import read_header_fast
from imaging.errors import (
    DicomError,
    DicomWarning,
    InconsistentSeriesError,
    MissingAttributeError,
    NoUsableSeriesError,
)
from imaging.volume import Unit, Volume

__all__ = [
    "Inventory",
    "SeriesInfo",
    "StudyInventory",
    "assemble_volume",
    "discover",
    "median",
    "raw_floats",
    "raw_text",
    "raw_value",
    "read_series_headers",
    "safe_path_component",
]

logger = logging.getLogger(__name__)

# Errors a corrupt or non-DICOM file can raise inside pydicom; caught only around file reads.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError, OSError, EOFError, ValueError, struct.error, KeyError, IndexError,
    TypeError, AttributeError, NotImplementedError, OverflowError, RuntimeError,
)

_ENHANCED_PET = {"1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1"}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# (keyword, tag) for messages.
_TAG = {
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "PixelSpacing": "(0028,0030)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "RescaleSlope": "(0028,1053)",
    "RescaleIntercept": "(0028,1052)",
    "PixelData": "(7FE0,0010)",
    "GantryDetectorTilt": "(0018,1120)",
    "FrameOfReferenceUID": "(0020,0052)",
    "NumberOfFrames": "(0028,0008)",
}


def median(values: Any) -> float:
    """The median of numbers, as ``numpy.median`` gives it.

    ``numpy.median`` imports ``numpy.ma`` on first use (tens of milliseconds of a load).
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = ordered.size
    if n == 0:
        raise ValueError("median of no values")
    if np.isnan(ordered[-1]):  # NaN sorts last; numpy.median returns NaN then too
        return float("nan")
    half = n // 2
    return float(ordered[half]) if n % 2 else float(np.mean(ordered[half - 1:half + 1]))


def _t(keyword: str) -> str:
    return f"{keyword} {_TAG.get(keyword, '')}".rstrip()


# ------------------------------------------------------------------------------------------
# Fast attribute access
# ------------------------------------------------------------------------------------------
# pydicom converts an element on first access (DS/IS values become validated number objects);
# for the few attributes read from every file of a series, decoding the raw ASCII value here is
# several times faster. Values already converted are used as they are.
_NUMBER_TEXT_VRS = frozenset({"DS", "IS"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})


_BINARY_INT = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}


@functools.lru_cache(maxsize=256)
def _tag_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword!r}")
    return BaseTag(tag), dictionary_VR(tag)


def _raw_element_value(ds: Dataset, keyword: str, vrs: frozenset[str]) -> Any:
    tag, vr = _tag_vr(keyword)
    if tag not in ds._dict:
        return None
    elem = ds._dict[tag]
    value = elem.value
    if isinstance(value, bytes) and vr not in vrs:
        fmt = _BINARY_INT.get(vr)
        little = getattr(elem, "is_little_endian", None)
        if fmt is not None and little is not None and len(value) == struct.calcsize(fmt):
            return struct.unpack(("<" if little else ">") + fmt, value)[0]
        value = ds[tag].value  # other binary VRs (FD, multi-valued US, ...): pydicom decodes
    return value


def raw_value(ds: Dataset, keyword: str) -> Any:
    """An element's value as held: undecoded bytes until pydicom converts it; None if absent.

    Cheap enough to compare every instance of a series element by element.
    """
    elem = ds._dict.get(_tag_vr(keyword)[0])
    return None if elem is None else elem.value


def raw_text(ds: Dataset, keyword: str) -> str | None:
    """The value of a text-like attribute (UI, CS, DA, TM, DT, DS, IS) as a stripped string.

    Multi-valued attributes keep DICOM's backslash separator. ``None`` if absent or empty.
    """
    value = _raw_element_value(ds, keyword, _TEXT_VRS)
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    return text or None


def raw_floats(ds: Dataset, keyword: str) -> NDArray[np.float64] | None:
    """A numeric (DS/IS/FD) attribute as a float array, or ``None`` if absent or empty.

    Raises
    ------
    ValueError
        If the value is not numeric.
    """
    value = _raw_element_value(ds, keyword, _NUMBER_TEXT_VRS)
    if value is None:
        return None
    if isinstance(value, bytes | str):
        text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
        parts = [p.strip(" \x00") for p in text.split("\\")]
        if not any(parts):
            return None
        return np.array([float(p) for p in parts], dtype=np.float64)
    if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        return np.array([float(v) for v in value], dtype=np.float64)
    return np.array([float(value)], dtype=np.float64)


# ------------------------------------------------------------------------------------------
# Safe path components
# ------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_path_component(text: str) -> str:
    """A file-name component made from any identifier (patient ID, UID, description).

    Keeps ``[A-Za-z0-9._-]``, replaces runs of anything else by ``_``, strips leading dots
    (so ``.``/``..`` and hidden names are impossible), truncates to 64 characters, and appends
    an 8-character hash of the original text whenever the text had to be altered, so distinct
    identifiers stay distinct.

    Examples
    --------
    >>> safe_path_component("PSMA-001")
    'PSMA-001'
    >>> safe_path_component("../etc/passwd")[:11]
    'etc_passwd-'
    >>> safe_path_component("")
    'empty-e3b0c442'
    """
    text = str(text)
    cleaned = re.sub(r"\.{2,}", "_", _UNSAFE.sub("_", text)).lstrip("._").rstrip("_")
    cleaned = cleaned[:64]
    if cleaned == text and cleaned:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
    return f"{cleaned or 'empty'}-{digest}"


# ------------------------------------------------------------------------------------------
# Inventory objects
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One DICOM series as found on disk (headers only).

    ``z_range_mm`` is the (min, max) LPS z of the slice positions; ``orientation`` is
    ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"`` from ImageOrientationPatient;
    ``unusable_reason`` says why the series cannot serve as PET or CT (``None`` if it can).
    ``pixel_offsets`` holds the byte offset of each file's PixelData element (for a direct read
    of uncompressed data) and ``headers`` the full headers when discovered with
    ``keep_headers=True``.
    """

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    series_number: int | None
    series_description: str
    n_instances: int
    size_bytes: int
    rows: int | None
    columns: int | None
    orientation: str
    frame_of_reference_uid: str | None
    image_type: tuple[str, ...]
    corrected_image: tuple[str, ...]
    units: str | None
    manufacturer: str | None
    sop_class_uid: str | None
    z_range_mm: tuple[float, float] | None
    files: tuple[Path, ...] = field(repr=False)
    unusable_reason: str | None = None
    pixel_offsets: tuple[int | None, ...] = field(default=(), repr=False)
    headers: tuple[Dataset, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no file list)."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "series_number": self.series_number,
            "series_description": self.series_description,
            "n_instances": self.n_instances,
            "size_bytes": self.size_bytes,
            "rows": self.rows,
            "columns": self.columns,
            "orientation": self.orientation,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "image_type": list(self.image_type),
            "corrected_image": list(self.corrected_image),
            "units": self.units,
            "manufacturer": self.manufacturer,
            "z_range_mm": None if self.z_range_mm is None else list(self.z_range_mm),
            "unusable_reason": self.unusable_reason,
        }


@dataclass(frozen=True, slots=True)
class StudyInventory:
    """The series of one study and the PET/CT pair chosen from them, with reasons.

    ``reasons`` maps every SeriesInstanceUID to why it was chosen or rejected.
    """

    study_instance_uid: str
    patient_id: str
    series: tuple[SeriesInfo, ...]
    pet: SeriesInfo | None
    ct: SeriesInfo | None
    reasons: Mapping[str, str]

    def series_by_uid(self, uid: str) -> SeriesInfo | None:
        """The series with this SeriesInstanceUID, if any."""
        return next((s for s in self.series if s.series_instance_uid == uid), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "pet_series_instance_uid": None if self.pet is None else self.pet.series_instance_uid,
            "ct_series_instance_uid": None if self.ct is None else self.ct.series_instance_uid,
            "series": [dict(s.to_dict(), reason=self.reasons.get(s.series_instance_uid))
                       for s in self.series],
        }


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything :func:`discover` found under a folder.

    ``skipped`` counts files that are not usable DICOM images by reason (``not_dicom``,
    ``dicomdir``, ``unreadable`` (corrupt, truncated or without Study/SeriesInstanceUID)).
    """

    root: Path
    n_files: int
    studies: tuple[StudyInventory, ...]
    skipped: Mapping[str, int]

    def study(self, study_instance_uid: str) -> StudyInventory | None:
        """The study with this StudyInstanceUID, if any."""
        return next((s for s in self.studies if s.study_instance_uid == study_instance_uid),
                    None)

    def find_series(self, series_instance_uid: str) -> tuple[StudyInventory, SeriesInfo] | None:
        """The study and series holding this SeriesInstanceUID, if any."""
        for st in self.studies:
            s = st.series_by_uid(series_instance_uid)
            if s is not None:
                return st, s
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "root": str(self.root),
            "n_files": self.n_files,
            "skipped": dict(self.skipped),
            "studies": [s.to_dict() for s in self.studies],
        }


# ------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------
def _iter_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _read_header(path: Path) -> tuple[Dataset, int | None] | str:
    """The header of one file and the byte offset of its pixel data element, or why skipped."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                # Files without a preamble are legal but rare; accept only if pydicom can parse
                # them and they carry image UIDs.
                if len(head) < 8:
                    return "not_dicom"
                fh.seek(0)
                try:
                    ds = dcmread(fh, stop_before_pixels=True, force=True)
                except _READ_ERRORS:
                    return "not_dicom"
                if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                    return "not_dicom"
            else:
                fast = _read_header_fast(fh, path)
                if fast is not None:
                    return fast
                fh.seek(0)
                try:
                    ds = dcmread(fh, stop_before_pixels=True)
                except _READ_ERRORS:
                    return "unreadable"
            offset = fh.tell()
    except OSError:
        return "unreadable"
    return ds, offset


def _read_header_fast(fh: BinaryIO, path: Path) -> tuple[Dataset, int] | None:
    """:func:`imaging.dicom_header.read_header_fast`, or None to let pydicom read the file."""
    try:
        return read_header_fast(fh, path)
    except _READ_ERRORS:
        return None  # corrupt in a way pydicom reports: read again by dcmread


def _str(ds: Dataset, kw: str) -> str | None:
    v = ds.get(kw, None)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _multi(ds: Dataset, kw: str) -> tuple[str, ...]:
    v = ds.get(kw, None)
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(p.strip().upper() for p in v.split("\\") if p.strip())
    return tuple(str(p).strip().upper() for p in v)


def _orientation_label(iop: Sequence[float] | None) -> str:
    if iop is None or len(iop) != 6:
        return "unknown"
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _slice_z(ds: Dataset) -> float | None:
    try:
        ipp = raw_floats(ds, "ImagePositionPatient")
    except ValueError:
        return None
    return None if ipp is None or ipp.shape != (3,) else float(ipp[2])


def discover(root: Path | str, *, keep_headers: bool = False) -> Inventory:
    """Scan a folder tree for DICOM series and choose each study's PET and CT.

    Parameters
    ----------
    root : Path
        Folder (searched recursively) or a single file.
    keep_headers : bool
        Keep every file's full header (no pixels) in :attr:`SeriesInfo.headers`, so loading
        does not parse them again. Leave False when scanning many studies.

    Returns
    -------
    Inventory
        Studies with their series, the chosen PET/CT pair, reasons, and skipped-file counts.

    Raises
    ------
    NoUsableSeriesError
        If ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise NoUsableSeriesError(
            "path does not exist; give the folder that holds the DICOM files.", path=root
        )
    skipped: Counter[str] = Counter()
    groups: dict[tuple[str, str], list[_Member]] = defaultdict(list)
    n_files = 0
    for path in _iter_files(root):
        n_files += 1
        read = _read_header(path)
        if isinstance(read, str):
            skipped[read] += 1
            continue
        ds, offset = read
        sop_class = raw_text(ds, "SOPClassUID") or str(
            getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or ""
        )
        if sop_class == _DICOMDIR_CLASS or path.name.upper() == "DICOMDIR":
            skipped["dicomdir"] += 1
            continue
        study_uid = raw_text(ds, "StudyInstanceUID")
        series_uid = raw_text(ds, "SeriesInstanceUID")
        if not study_uid or not series_uid:
            skipped["unreadable"] += 1  # truncated or incomplete header
            continue
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        groups[(study_uid, series_uid)].append((path, ds, size, offset))
    if skipped:
        logger.info("discover %s: skipped %s", root, dict(skipped))

    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for (study_uid, series_uid), members in groups.items():
        by_study[study_uid].append(
            _series_info(study_uid, series_uid, members, keep_headers=keep_headers))
    studies = tuple(
        _choose_pair(uid, tuple(sorted(series, key=_series_sort_key)))
        for uid, series in sorted(by_study.items())
    )
    return Inventory(root=root, n_files=n_files, studies=studies, skipped=dict(skipped))


def _series_sort_key(s: SeriesInfo) -> tuple[str, int, str]:
    return (s.modality, s.series_number if s.series_number is not None else 0,
            s.series_instance_uid)


_Member = tuple[Path, Dataset, int, int | None]


def _frames(ds: Dataset) -> int:
    try:
        frames = raw_floats(ds, "NumberOfFrames")
    except ValueError:
        return 1
    return 1 if frames is None else int(frames[0])


def _series_info(study_uid: str, series_uid: str, members: list[_Member], *,
                 keep_headers: bool) -> SeriesInfo:
    first = members[0][1]
    modality = (_str(first, "Modality") or "").upper()
    sop_class = _str(first, "SOPClassUID")
    rows, cols = first.get("Rows", None), first.get("Columns", None)
    iop = first.get("ImageOrientationPatient", None)
    zs = [z for _, ds, _, _ in members if (z := _slice_z(ds)) is not None]
    reason = None
    if rows is None or cols is None:
        reason = f"not an image series (Modality {modality or '?'})"
    elif sop_class in _ENHANCED_PET:
        reason = "Enhanced / Legacy Converted Enhanced PET (multi-frame) is not supported"
    elif any(_frames(ds) > 1 for _, ds, _, _ in members):
        reason = f"multi-frame images ({_t('NumberOfFrames')} > 1) are not supported"
    elif modality in ("PT", "CT") and iop is None:
        reason = f"{_t('ImageOrientationPatient')} absent"
    sn = first.get("SeriesNumber", None)
    try:
        series_number = int(sn) if sn is not None and str(sn).strip() != "" else None
    except (TypeError, ValueError):
        series_number = None
    return SeriesInfo(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        patient_id=_str(first, "PatientID") or "",
        modality=modality,
        series_number=series_number,
        series_description=_str(first, "SeriesDescription") or "",
        n_instances=len(members),
        size_bytes=sum(m[2] for m in members),
        rows=None if rows is None else int(rows),
        columns=None if cols is None else int(cols),
        orientation=_orientation_label(None if iop is None else [float(v) for v in iop]),
        frame_of_reference_uid=_str(first, "FrameOfReferenceUID"),
        image_type=_multi(first, "ImageType"),
        corrected_image=_multi(first, "CorrectedImage"),
        units=_str(first, "Units"),
        manufacturer=_str(first, "Manufacturer"),
        sop_class_uid=sop_class,
        z_range_mm=(min(zs), max(zs)) if zs else None,
        files=tuple(m[0] for m in members),
        unusable_reason=reason,
        pixel_offsets=tuple(m[3] for m in members),
        headers=tuple(m[1] for m in members) if keep_headers else None,
    )


def _pet_rank(s: SeriesInfo) -> tuple[int, int, int]:
    return (1 if "ORIGINAL" in s.image_type else 0, 1 if s.units in ("BQML", "CNTS") else 0,
            s.n_instances)


def _choose_pair(study_uid: str, series: tuple[SeriesInfo, ...],
                 pet_series_uid: str | None = None) -> StudyInventory:
    reasons: dict[str, str] = {}
    pets: list[SeriesInfo] = []
    for s in series:
        if s.modality != "PT":
            continue
        if s.unusable_reason:
            reasons[s.series_instance_uid] = f"rejected as PET: {s.unusable_reason}"
        elif s.corrected_image and not {"ATTN", "DECY"} <= set(s.corrected_image):
            reasons[s.series_instance_uid] = (
                "rejected as PET: CorrectedImage (0028,0051) = "
                f"{list(s.corrected_image)} lacks ATTN and/or DECY (not attenuation/decay "
                "corrected)"
            )
        else:
            pets.append(s)
    pet: SeriesInfo | None = None
    if pet_series_uid is not None:
        pet = next((s for s in series if s.series_instance_uid == pet_series_uid), None)
        if pet is not None:
            reasons[pet.series_instance_uid] = "chosen as PET: requested by SeriesInstanceUID"
    elif pets:
        pets.sort(key=_pet_rank, reverse=True)
        pet = pets[0]
        why = ["Modality PT", f"ImageType {'/'.join(pet.image_type) or '?'}",
               f"Units {pet.units}", f"{pet.n_instances} instances"]
        if pet.corrected_image:
            why.insert(1, "CorrectedImage has ATTN+DECY")
        if len(pets) > 1:
            why.append(f"best of {len(pets)} candidates (pick another with --series UID)")
        reasons[pet.series_instance_uid] = "chosen as PET: " + ", ".join(why)
        for other in pets[1:]:
            reasons[other.series_instance_uid] = (
                "not chosen as PET: ranked below the chosen series "
                "(ORIGINAL before DERIVED, BQML/CNTS before others, then more instances)"
            )
    ct = _choose_ct(series, pet, reasons)
    for s in series:
        if s.series_instance_uid not in reasons:
            reasons[s.series_instance_uid] = (
                f"ignored: {s.unusable_reason}" if s.unusable_reason
                else f"ignored: Modality {s.modality or '?'} is neither PET nor its CT"
            )
    patient = series[0].patient_id if series else ""
    return StudyInventory(study_uid, patient, series, pet, ct, reasons)


def _choose_ct(series: tuple[SeriesInfo, ...], pet: SeriesInfo | None,
               reasons: dict[str, str]) -> SeriesInfo | None:
    cts: list[SeriesInfo] = []
    for s in series:
        if s.modality != "CT":
            continue
        uid = s.series_instance_uid
        if s.unusable_reason:
            reasons[uid] = f"rejected as CT: {s.unusable_reason}"
        elif "LOCALIZER" in s.image_type or s.n_instances < 2:
            reasons[uid] = "rejected as CT: localizer/scout (ImageType LOCALIZER or 1 image)"
        elif s.orientation != "axial":
            reasons[uid] = f"rejected as CT: {s.orientation} slices, not axial"
        elif pet is None:
            reasons[uid] = "not used: no usable PET in this study"
        elif s.frame_of_reference_uid != pet.frame_of_reference_uid:
            reasons[uid] = (
                f"rejected as CT: FrameOfReferenceUID {s.frame_of_reference_uid} differs from "
                f"the PET's {pet.frame_of_reference_uid}"
            )
        else:
            cover = _coverage(s, pet)
            if cover < 0.95:
                reasons[uid] = (
                    f"rejected as CT: covers {100 * cover:.0f}% of the PET axial range "
                    f"(CT z {_fmt_range(s.z_range_mm)} mm, PET z {_fmt_range(pet.z_range_mm)} mm)"
                )
            else:
                cts.append(s)
    if not cts:
        return None
    cts.sort(key=lambda s: (1 if "ORIGINAL" in s.image_type else 0, s.n_instances),
             reverse=True)
    ct = cts[0]
    why = "same FrameOfReferenceUID, axial, covers the PET axial range"
    if len(cts) > 1:
        why += f", best of {len(cts)} candidates (ORIGINAL first, then more slices)"
    reasons[ct.series_instance_uid] = "chosen as CT: " + why
    for other in cts[1:]:
        reasons[other.series_instance_uid] = "not chosen as CT: ranked below the chosen CT"
    return ct


def _fmt_range(r: tuple[float, float] | None) -> str:
    return "?" if r is None else f"{r[0]:.1f}..{r[1]:.1f}"


def _coverage(ct: SeriesInfo, pet: SeriesInfo) -> float:
    if ct.z_range_mm is None or pet.z_range_mm is None:
        return 0.0
    lo, hi = pet.z_range_mm
    if hi - lo < 1e-6:
        return 1.0 if ct.z_range_mm[0] - 5 <= lo <= ct.z_range_mm[1] + 5 else 0.0
    tol = 5.0  # mm: CT and PET slice centres need not coincide at the ends
    overlap = min(hi, ct.z_range_mm[1] + tol) - max(lo, ct.z_range_mm[0] - tol)
    return max(0.0, min(1.0, overlap / (hi - lo)))


def choose_pair(study: StudyInventory, *, pet_series_uid: str | None = None) -> StudyInventory:
    """Re-choose the pair of a study, e.g. with a PET series requested by SeriesInstanceUID."""
    return _choose_pair(study.study_instance_uid, study.series, pet_series_uid)


# ------------------------------------------------------------------------------------------
# Headers and volume assembly
# ------------------------------------------------------------------------------------------
def read_series_headers(files: Sequence[Path]) -> list[Dataset]:
    """Full headers (no pixel data) of the files of one series, in the order given.

    Raises
    ------
    DicomError
        If a file cannot be read.
    """
    out: list[Dataset] = []
    for path in files:
        ds: Dataset
        try:
            with open(path, "rb") as fh:
                fast = _read_header_fast(fh, path)
                if fast is None:
                    fh.seek(0)
                    ds = dcmread(fh, stop_before_pixels=True)
                else:
                    ds = fast[0]
        except _READ_ERRORS as err:
            raise DicomError(
                f"cannot read the DICOM header ({type(err).__name__}: {err}); the file is "
                "corrupt or truncated. Remove it or re-export the series.",
                path=path,
            ) from err
        if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
            raise DicomError(
                "cannot read the DICOM header: SOPInstanceUID (0008,0018) / SeriesInstanceUID "
                "(0020,000E) absent, the file is truncated or not an image. Remove it or "
                "re-export the series.",
                path=path,
            )
        out.append(ds)
    return out


def _floats(ds: Dataset, kw: str, n: int, path: Path) -> NDArray[np.float64]:
    try:
        arr = raw_floats(ds, kw)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{_t(kw)} = {ds.get_item(kw).value!r} is not numeric.",
                         path=path) from err
    if arr is None:
        raise MissingAttributeError(
            f"{_t(kw)} is absent; the slice cannot be placed in space. Re-export the series.",
            path=path,
        )
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomError(f"{_t(kw)} = {arr.tolist()} must hold {n} finite numbers.", path=path)
    return arr


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    """The sorted order and geometry of a series, checked (no pixels read)."""

    order: NDArray[np.intp]
    origin: NDArray[np.float64]
    spacing: tuple[float, float, float]
    direction: NDArray[np.float64]
    rows: int
    columns: int


def slice_geometry(headers: Sequence[Dataset], paths: Sequence[Path], *,
                   strict: bool = False) -> SliceGeometry:
    """Sort slices along their normal and check the series forms one regular volume.

    Raises
    ------
    InconsistentSeriesError
        Mixed orientation, matrix size or pixel spacing; duplicate positions; missing slices
        (gap > 1.5x the median spacing); gantry tilt; irregular spacing when ``strict``.
    MissingAttributeError
        ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows or Columns absent.
    """
    n = len(headers)
    if n == 0:
        raise NoUsableSeriesError("no instances to assemble.")
    iop0 = _floats(headers[0], "ImageOrientationPatient", 6, paths[0])
    ps0 = _floats(headers[0], "PixelSpacing", 2, paths[0])
    rows0, cols0 = _int(headers[0], "Rows", paths[0]), _int(headers[0], "Columns", paths[0])
    positions = np.empty((n, 3))
    # a slice whose undecoded values equal those of a slice already checked needs no check
    same_keys = ("ImageOrientationPatient", "Rows", "Columns", "PixelSpacing")
    checked_raw: list[Any] | None = None
    for idx, (ds, path) in enumerate(zip(headers, paths, strict=True)):
        raw = [raw_value(ds, kw) for kw in same_keys] if idx else None
        if checked_raw is not None and raw == checked_raw:
            positions[idx] = _floats(ds, "ImagePositionPatient", 3, path)
            continue
        if raw is not None and checked_raw is None and all(isinstance(r, bytes) for r in raw):
            checked_raw = raw  # checked below (an error stops the loop)
        iop = _floats(ds, "ImageOrientationPatient", 6, path) if idx else iop0
        if idx and not np.allclose(iop, iop0, atol=1e-4):
            raise InconsistentSeriesError(
                f"mixed orientations: {_t('ImageOrientationPatient')} = "
                f"{np.round(iop, 5).tolist()} here but {np.round(iop0, 5).tolist()} in "
                f"{paths[0]}; split the series or remove the reformatted images.",
                path=path,
            )
        if idx:
            r, c = _int(ds, "Rows", path), _int(ds, "Columns", path)
            if (r, c) != (rows0, cols0):
                raise InconsistentSeriesError(
                    f"mixed matrix sizes: {_t('Rows')} x {_t('Columns')} = {r} x {c} here but "
                    f"{rows0} x {cols0} in {paths[0]}; remove the odd images.",
                    path=path,
                )
            ps = _floats(ds, "PixelSpacing", 2, path)
            if not np.allclose(ps, ps0, rtol=1e-4, atol=1e-5):
                raise InconsistentSeriesError(
                    f"mixed pixel spacing: {_t('PixelSpacing')} = {ps.tolist()} here but "
                    f"{ps0.tolist()} in {paths[0]}.",
                    path=path,
                )
        positions[idx] = _floats(ds, "ImagePositionPatient", 3, path)
    row_dir, col_dir = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(
            float(row_dir @ col_dir)) > 1e-3:
        raise DicomError(
            f"{_t('ImageOrientationPatient')} = {iop0.tolist()} is not two orthonormal vectors.",
            path=paths[0],
        )
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    sorted_proj = proj[order]
    if n == 1:
        thick = headers[0].get("SpacingBetweenSlices", None) or headers[0].get(
            "SliceThickness", None)
        slice_spacing = float(thick) if thick not in (None, "") and float(thick) > 0 else 1.0
    else:
        diffs = np.diff(sorted_proj)
        dup = np.flatnonzero(diffs < 1e-3)
        if dup.size:
            a, b = order[dup[0]], order[dup[0] + 1]
            raise InconsistentSeriesError(
                f"duplicate slice position: {_t('ImagePositionPatient')} = "
                f"{positions[b].round(3).tolist()} also in {paths[a]}; the folder holds "
                "repeated images or several acquisitions of one series. Remove the duplicates "
                "or pick the series by SeriesInstanceUID.",
                path=paths[b],
            )
        median_mm = median(diffs)
        gap = np.flatnonzero(diffs > 1.5 * median_mm)
        if gap.size:
            g = gap[0]
            raise InconsistentSeriesError(
                f"missing slice(s): gap of {diffs[g]:.3f} mm along the slice normal between "
                f"{_t('ImagePositionPatient')} {positions[order[g]].round(3).tolist()} in "
                f"{paths[order[g]]} and {positions[order[g + 1]].round(3).tolist()} here, "
                f"> 1.5 x the median spacing {median_mm:.3f} mm. Re-export the complete series.",
                path=paths[order[g + 1]],
            )
        # gantry tilt: the slice stack must advance along the normal
        span = positions[order[-1]] - positions[order[0]]
        lateral = span - (span @ normal) * normal
        if np.linalg.norm(lateral) > max(0.01 * abs(span @ normal), 0.05):
            tilt = headers[0].get("GantryDetectorTilt", None)
            angle = np.degrees(np.arctan2(np.linalg.norm(lateral), abs(span @ normal)))
            raise InconsistentSeriesError(
                f"gantry tilt / sheared stack: slice positions drift {np.linalg.norm(lateral):.2f}"
                f" mm sideways over the stack ({angle:.2f} deg; {_t('GantryDetectorTilt')} = "
                f"{tilt!r}). Resample the series to an untilted grid before staging.",
                path=paths[order[-1]],
            )
        slice_spacing = float((sorted_proj[-1] - sorted_proj[0]) / (n - 1))
        irregular = np.abs(diffs - slice_spacing) > max(0.01 * slice_spacing, 1e-3)
        if irregular.any():
            msg = (
                f"{paths[0].parent}: irregular slice spacing ({diffs.min():.3f}..{diffs.max():.3f}"
                f" mm, mean {slice_spacing:.3f} mm); the mean is used."
            )
            if strict:
                raise InconsistentSeriesError(msg)
            warnings.warn(msg, DicomWarning, stacklevel=3)
    direction = np.column_stack([normal, col_dir, row_dir])
    return SliceGeometry(
        order=order, origin=positions[order[0]], spacing=(slice_spacing, float(ps0[0]),
                                                          float(ps0[1])),
        direction=direction, rows=rows0, columns=cols0,
    )


def _int(ds: Dataset, kw: str, path: Path) -> int:
    try:
        v = raw_floats(ds, kw)
    except ValueError as err:
        raise DicomError(f"{_t(kw)} = {raw_text(ds, kw)!r} is not an integer.", path=path
                         ) from err
    if v is None:
        raise MissingAttributeError(f"{_t(kw)} is absent.", path=path)
    return int(v[0])


def _rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    try:
        slope_a = raw_floats(ds, "RescaleSlope")
        inter_a = raw_floats(ds, "RescaleIntercept")
    except (TypeError, ValueError) as err:
        raise DicomError(
            f"{_t('RescaleSlope')} / {_t('RescaleIntercept')} = "
            f"{raw_text(ds, 'RescaleSlope')!r} / {raw_text(ds, 'RescaleIntercept')!r} are not "
            "numeric.", path=path) from err
    s = 1.0 if slope_a is None else float(slope_a[0])
    b = 0.0 if inter_a is None else float(inter_a[0])
    if not (np.isfinite(s) and np.isfinite(b)) or s == 0:
        raise DicomError(
            f"{_t('RescaleSlope')} = {s!r} is zero or not finite; pixel values cannot be "
            "recovered.", path=path)
    return s, b


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # Implicit / Explicit VR Little Endian
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


_FORMAT_KEYWORDS = ("SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")
# (transfer syntax, undecoded bytes of the format attributes) -> parsed format
_FORMAT_CACHE: dict[tuple[str, tuple[Any, ...]], tuple[int, int, bool] | None] = {}


@functools.lru_cache(maxsize=64)
def _pixel_format(ts: str, samples: int | None, bits_a: int | None, stored_a: int | None,
                  rep: int | None) -> tuple[int, int, bool] | None:
    """(BitsAllocated, BitsStored, signed) if the direct read applies, else None."""
    if ts not in _NATIVE_LE or (samples or 1) != 1 or bits_a is None:
        return None
    stored_bits = stored_a or bits_a
    if bits_a not in (8, 16, 32) or not 0 < stored_bits <= bits_a:
        return None
    return bits_a, stored_bits, rep == 1


def _read_native(path: Path, header: Dataset, offset: int, rows: int, columns: int
                 ) -> NDArray[Any] | None:
    """Read uncompressed little-endian pixels directly at ``offset``; None if not applicable."""
    meta = getattr(header, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    raw = tuple(raw_value(header, kw) for kw in _FORMAT_KEYWORDS)
    key = (ts, raw)
    try:
        pixel_format = _FORMAT_CACHE[key]
    except (KeyError, TypeError):
        try:
            fmt = [raw_floats(header, kw) for kw in _FORMAT_KEYWORDS]
        except ValueError:
            return None
        pixel_format = _pixel_format(ts, *(None if f is None else int(f[0]) for f in fmt))
        if all(isinstance(v, bytes | type(None)) for v in raw) and len(_FORMAT_CACHE) < 64:
            _FORMAT_CACHE[key] = pixel_format
    if pixel_format is None:
        return None
    bits, stored_bits, signed = pixel_format
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = rows * columns
    with open(path, "rb") as fh:
        fh.seek(offset)
        head = fh.read(12)
        if head[:4] != _PIXEL_TAG:
            return None
        explicit = ts == "1.2.840.10008.1.2.1"
        if explicit and head[4:6] in (b"OB", b"OW"):
            length = int.from_bytes(head[8:12], "little")
            fh.seek(offset + 12)
        elif not explicit:
            length = int.from_bytes(head[4:8], "little")
            fh.seek(offset + 8)
        else:
            return None
        if length == 0xFFFFFFFF:
            return None
        arr = np.fromfile(fh, dtype=dtype, count=count)
    if arr.size != count or length < count * dtype.itemsize:
        raise DicomError(
            f"{_t('PixelData')} is truncated: {arr.size * dtype.itemsize} of "
            f"{count * dtype.itemsize} bytes present (Rows x Columns = {rows} x {columns}, "
            f"BitsAllocated {bits}). Re-export or re-copy the file.",
            path=path,
        )
    if stored_bits < bits:
        if signed:
            shift = bits - stored_bits
            arr = (arr << shift) >> shift
        else:
            arr &= (1 << stored_bits) - 1
    return arr.reshape(rows, columns)


def read_pixels(path: Path, *, rows: int, columns: int, header: Dataset | None = None,
                offset: int | None = None) -> NDArray[Any]:
    """Stored pixel values of one single-frame file (any supported transfer syntax).

    With the file's ``header`` and the byte ``offset`` of its PixelData element (from
    :func:`discover`), uncompressed little-endian data are read directly; anything else goes
    through pydicom's pixel-data plugins (JPEG Lossless, JPEG-LS, JPEG 2000, RLE, ...).

    Raises
    ------
    DicomError
        If the pixel data are absent, truncated or cannot be decoded.
    """
    arr: NDArray[Any] | None = None
    if header is not None and offset is not None:
        try:
            arr = _read_native(path, header, offset, rows, columns)
        except OSError as err:
            raise DicomError(f"cannot read {_t('PixelData')}: {err}.", path=path) from err
    if arr is None:
        try:
            arr = pixel_array(path)
        except AttributeError as err:
            raise DicomError(
                f"{_t('PixelData')} is absent or unreadable ({err}); the file holds no image "
                "or is truncated. Remove it or re-export the series.",
                path=path,
            ) from err
        except _READ_ERRORS as err:
            raise DicomError(
                f"cannot decode {_t('PixelData')}: {type(err).__name__}: {err}. The file is "
                "truncated or corrupt, or its transfer syntax needs a decoder that is not "
                "installed; re-export it uncompressed.",
                path=path,
            ) from err
    if arr.shape != (rows, columns):
        raise InconsistentSeriesError(
            f"pixel array shape {arr.shape} differs from {_t('Rows')} x {_t('Columns')} = "
            f"{rows} x {columns} (multi-frame or colour images are not supported).",
            path=path,
        )
    return arr


def _stored_range(header: Dataset, stored: NDArray[Any]) -> tuple[int, int]:
    """Bounds of the stored values allowed by BitsStored (no pass over the data)."""
    try:
        bits = raw_floats(header, "BitsStored")
    except ValueError:
        bits = None
    info = np.iinfo(stored.dtype)
    if bits is None or not 0 < int(bits[0]) <= info.bits:
        return int(info.min), int(info.max)
    n = int(bits[0])
    if info.min < 0:
        return -(2 ** (n - 1)), 2 ** (n - 1) - 1
    return 0, 2**n - 1


_MIN_SLICES_PER_THREAD = 32


def _fill_slice(out: NDArray[Any], k: int, path: Path, header: Dataset, s: float, b: float,
                is_int: bool, *, rows: int, columns: int, offset: int | None) -> None:
    """Decode one file into ``out[k]`` with its rescale (and SUV) factors applied."""
    stored = read_pixels(path, rows=rows, columns=columns, header=header, offset=offset)
    if is_int:
        info = np.iinfo(out.dtype)
        lo, hi = _stored_range(header, stored)
        lo, hi = sorted((lo * int(s) + int(b), hi * int(s) + int(b)))
        if lo < info.min or hi > info.max:
            lo, hi = sorted((int(stored.min()) * int(s) + int(b),
                             int(stored.max()) * int(s) + int(b)))
        if lo < info.min or hi > info.max:
            raise DicomError(
                f"rescaled values {lo}..{hi} overflow {out.dtype}; pass dtype=numpy.float32.",
                path=path)
        if s == 1 and out.dtype == np.int16 and stored.dtype.itemsize == 2:
            # The range check above makes stored + b exact in int16, so 16-bit modular
            # arithmetic (any 16-bit stored type viewed as int16) gives the same values as
            # int32, in an int16 loop (a third faster on a whole-body CT).
            np.add(stored.view(np.int16), np.int16(b), out=out[k])
        elif s == 1:
            np.add(stored, np.int32(b), out=out[k], casting="unsafe")
        else:
            np.multiply(stored, np.int32(s), out=out[k], casting="unsafe")
            out[k] += int(b)
    else:
        np.multiply(stored, s, out=out[k], casting="unsafe")
        if b != 0:
            out[k] += np.float32(b)


def _bits_allocated(ds: Dataset) -> int:
    try:
        bits = raw_floats(ds, "BitsAllocated")
    except ValueError:
        bits = None
    return 16 if bits is None or not bits[0] else int(bits[0])


def assemble_volume(
    headers: Sequence[Dataset],
    paths: Sequence[Path],
    *,
    unit: Unit,
    scale: Sequence[float] | NDArray[np.float64] | None = None,
    dtype: Any = None,
    strict: bool = False,
    pixel_offsets: Sequence[int | None] | None = None,
) -> Volume:
    """Build a :class:`~imaging.volume.Volume` from the files of one series.

    Pixels are read once per file; each slice gets its own RescaleSlope/Intercept and the
    optional per-instance ``scale`` (e.g. SUV factors): ``value = (stored * slope +
    intercept) * scale``.

    Parameters
    ----------
    headers, paths : sequences of equal length
        Headers (from :func:`read_series_headers`) and files of one series, any order.
    unit : str
        Unit of the resulting values.
    scale : sequence of float, optional
        Per-instance factor in the order of ``headers``.
    dtype : numpy dtype, optional
        Output dtype. Default: ``int16`` when every slice maps exactly into int16 with
        ``scale`` None (CT in HU), else ``float32``.
    strict : bool
        Turn tolerated deviations (irregular spacing) into errors.
    pixel_offsets : sequence of int, optional
        Byte offset of each file's PixelData element (``SeriesInfo.pixel_offsets``); enables
        the direct read of uncompressed data.

    Returns
    -------
    Volume
        Array (K, J, I) with k along the slice normal, j down the rows, i along the columns.

    Raises
    ------
    InconsistentSeriesError, MissingAttributeError, DicomError
        See :func:`slice_geometry` and :func:`read_pixels`.
    """
    geom = slice_geometry(headers, paths, strict=strict)
    n = len(headers)
    rescale = np.array([_rescale(ds, p) for ds, p in zip(headers, paths, strict=True)])
    factors = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    if factors.shape != (n,):
        raise ValueError(f"scale has shape {factors.shape}, expected ({n},)")
    slopes = rescale[:, 0] * factors
    inters = rescale[:, 1] * factors
    if dtype is None:
        integral = (
            scale is None and np.all(rescale[:, 0] == np.round(rescale[:, 0]))
            and np.all(rescale[:, 1] == np.round(rescale[:, 1]))
            and all(_bits_allocated(ds) <= 16 for ds in headers)
            and np.all(np.abs(rescale[:, 0]) == 1)
            and np.all(np.abs(rescale[:, 1]) <= 2048)
        )
        dtype = np.int16 if integral else np.float32
    out = np.empty((n, geom.rows, geom.columns), dtype=dtype)
    is_int = np.issubdtype(out.dtype, np.integer)

    def fill(ks: range) -> None:
        for k in ks:
            idx = int(geom.order[k])
            _fill_slice(out, k, paths[idx], headers[idx], slopes[idx], inters[idx], is_int,
                        rows=geom.rows, columns=geom.columns,
                        offset=None if pixel_offsets is None else pixel_offsets[idx])

    if n >= 2 * _MIN_SLICES_PER_THREAD:
        # File reads and numpy work release the GIL: two threads overlap them.
        half = n // 2
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(fill, range(0, half)), pool.submit(fill, range(half, n))]
            for future in futures:
                future.result()  # re-raises the first error of either half
    else:
        fill(range(n))
    return Volume(array=out, spacing=geom.spacing, origin=tuple(geom.origin),
                  direction=geom.direction, unit=unit)
