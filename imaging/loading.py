"""Load one PET/CT study from a DICOM folder into a :class:`~imaging.volume.PetCtStudy` in SUV.

Headers first (discovery reads a few attributes of every file, then the full headers of the
chosen PET series), pixels once (each file of the chosen series is decoded exactly once).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

from imaging.dicom import (
    Inventory,
    SeriesInfo,
    StudyInventory,
    assemble_volume,
    choose_pair,
    discover,
    read_series_headers,
)
from imaging.errors import DicomError, DicomWarning, NoUsableSeriesError
from imaging.suv import SuvOverrides, compute_suv_factors, parse_da, parse_tm
from imaging.volume import PetCtStudy, StudyMetadata

__all__ = ["load_study", "select_study"]

logger = logging.getLogger(__name__)


def select_study(inventory: Inventory, *, pet_series_uid: str | None = None) -> StudyInventory:
    """The study to load from an inventory: the one holding ``pet_series_uid``, or the only one.

    Raises
    ------
    NoUsableSeriesError
        Empty folder, no DICOM study, several studies and none chosen, unknown series UID,
        or no usable PET.
    """
    root = inventory.root
    if not inventory.studies:
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(inventory.skipped.items())) or "none"
        raise NoUsableSeriesError(
            f"no DICOM study found ({inventory.n_files} files; skipped: {skipped}). Point to "
            "the folder that holds the PET/CT DICOM files.",
            path=root,
        )
    if pet_series_uid is not None:
        found = inventory.find_series(pet_series_uid)
        if found is None:
            raise NoUsableSeriesError(
                f"SeriesInstanceUID {pet_series_uid} is not in this folder; run "
                "`psma-stage inspect` to list the series.",
                path=root,
            )
        study, series = found
        if series.modality != "PT":
            raise NoUsableSeriesError(
                f"series {pet_series_uid} has Modality (0008,0060) {series.modality!r}, not PT; "
                "choose a PET series.",
                path=root,
            )
        if series.unusable_reason:
            raise NoUsableSeriesError(
                f"series {pet_series_uid} cannot be used: {series.unusable_reason}.", path=root
            )
        return choose_pair(study, pet_series_uid=pet_series_uid)
    if len(inventory.studies) > 1:
        listing = "; ".join(
            f"{s.study_instance_uid} (PET {s.pet.series_instance_uid if s.pet else 'none'})"
            for s in inventory.studies
        )
        raise NoUsableSeriesError(
            f"{len(inventory.studies)} studies found ({listing}); load one folder per study or "
            "choose the PET by SeriesInstanceUID (--series).",
            path=root,
        )
    study = inventory.studies[0]
    if study.pet is None:
        rejected = "; ".join(
            f"{s.series_instance_uid} ({s.modality}): {study.reasons.get(s.series_instance_uid)}"
            for s in study.series
        )
        raise NoUsableSeriesError(
            f"no usable PET series in study {study.study_instance_uid}: {rejected}", path=root
        )
    return study


def load_study(
    path: Path | str,
    *,
    pet_series_uid: str | None = None,
    suv_type: str = "bw",
    strict: bool = False,
    overrides: SuvOverrides | None = None,
    ct: Literal["required", "optional", "skip"] = "required",
) -> PetCtStudy:
    """Load the PET (in SUV) and CT (in HU) of the one study under a DICOM folder.

    Parameters
    ----------
    path : Path
        Folder holding one study (searched recursively), or several studies when
        ``pet_series_uid`` selects one.
    pet_series_uid : str, optional
        SeriesInstanceUID of the PET series to use instead of the automatic choice.
    suv_type : {"bw", "lbm", "lbm-james", "bsa", "ibw"}
        SUV normalisation (see :func:`imaging.suv.compute_suv_factors`).
    strict : bool
        Turn tolerated deviations (:class:`~imaging.errors.DicomWarning`) into errors.
    overrides : SuvOverrides, optional
        Documented replacements for missing or wrong SUV inputs.
    ct : {"required", "optional", "skip"}
        Whether a CT for the PET must exist (default), may be absent, or is not loaded.

    Returns
    -------
    PetCtStudy
        ``pet`` in g/ml (cm2/ml for bsa) on the PET grid, float32; ``ct`` in HU on its own grid
        (int16 when the stored values map exactly, else float32) or None; ``suv_provenance``
        the JSON-ready SUV record plus the series choice.

    Raises
    ------
    NoUsableSeriesError
        Empty folder, several studies and none chosen, no usable PET, or no CT for the PET
        when ``ct="required"``.
    DicomError
        Under ``strict=True``, for any tolerated deviation (DERIVED PET, irregular spacing).
    InconsistentSeriesError, MissingAttributeError, DicomError, SuvError
        From volume assembly or SUV computation; the message names file, attribute and value.
    """
    root = Path(path)
    try:
        return _load_study(root, pet_series_uid=pet_series_uid, suv_type=suv_type,
                           strict=strict, overrides=overrides, ct=ct)
    except DicomWarning as warning:  # raised as an error under strict=True
        raise DicomError(f"strict mode: {warning}") from warning


def _load_study(
    root: Path, *, pet_series_uid: str | None, suv_type: str, strict: bool,
    overrides: SuvOverrides | None, ct: str,
) -> PetCtStudy:
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", DicomWarning)
        inventory = discover(root, keep_headers=True)
        study = select_study(inventory, pet_series_uid=pet_series_uid)
        pet_info = study.pet
        assert pet_info is not None
        if "ORIGINAL" not in pet_info.image_type:
            warnings.warn(
                f"{root}: PET series {pet_info.series_instance_uid} has ImageType "
                f"{'/'.join(pet_info.image_type) or '?'} (not ORIGINAL); used as the only or "
                "requested PET.",
                DicomWarning,
                stacklevel=3,
            )
        if study.ct is None and ct == "required":
            reasons = "; ".join(
                f"{s.series_instance_uid}: {study.reasons.get(s.series_instance_uid)}"
                for s in study.series if s.modality == "CT"
            ) or "no CT series in the study"
            raise NoUsableSeriesError(
                f"no CT for PET series {pet_info.series_instance_uid} (needs Modality CT, same "
                f"FrameOfReferenceUID {pet_info.frame_of_reference_uid}, axial, covering the "
                f"PET): {reasons}. Add the CT series to the folder.",
                path=root,
            )
        pet_paths = list(pet_info.files)
        pet_headers = _headers(pet_info)
        conversion = compute_suv_factors(
            pet_headers, suv_type=suv_type, overrides=overrides, paths=pet_paths
        )
        pet = assemble_volume(
            pet_headers, pet_paths, unit=conversion.unit, scale=conversion.factors,
            strict=strict, pixel_offsets=pet_info.pixel_offsets,
        )
        ct_vol = None
        if study.ct is not None and ct != "skip":
            ct_paths = list(study.ct.files)
            ct_vol = assemble_volume(_headers(study.ct), ct_paths, unit="HU", strict=strict,
                                     pixel_offsets=study.ct.pixel_offsets)
    meta = _metadata(pet_headers[0], study, pet_info, None if ct_vol is None else study.ct)
    provenance: dict[str, Any] = dict(conversion.provenance)
    provenance["series_choice"] = {
        "pet": pet_info.series_instance_uid,
        "pet_reason": study.reasons.get(pet_info.series_instance_uid),
        "ct": None if ct_vol is None or study.ct is None else study.ct.series_instance_uid,
        "ct_reason": None if study.ct is None else study.reasons.get(study.ct.series_instance_uid),
    }
    logger.info(
        "loaded study %s: PET %s slices, CT %s, SUV factor %.6g",
        meta.study_instance_uid, pet.shape, None if ct_vol is None else ct_vol.shape,
        conversion.factor,
    )
    return PetCtStudy(pet=pet, ct=ct_vol, meta=meta, suv_provenance=provenance,
                      pet_headers=tuple(pet_headers), pet_files=tuple(pet_paths))


def _headers(series: SeriesInfo) -> list[Any]:
    """The series' headers kept by discovery, else read again (no pixels)."""
    if series.headers is not None:
        return list(series.headers)
    return read_series_headers(list(series.files))


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _age_years(value: Any) -> float | None:
    text = "" if value is None else str(value).strip()
    if len(text) != 4 or not text[:3].isdigit():
        return None
    n, unit = int(text[:3]), text[3].upper()
    return {"Y": n, "M": n / 12, "W": n / 52.1775, "D": n / 365.25}.get(unit)


def _metadata(ds: Any, study: StudyInventory, pet: SeriesInfo, ct: SeriesInfo | None
              ) -> StudyMetadata:
    study_dt = None
    try:
        if ds.get("StudyDate", None):
            study_dt = parse_da(ds.StudyDate) + (
                parse_tm(ds.StudyTime) if ds.get("StudyTime", None) else parse_da("19000101")
                - parse_da("19000101")
            )
    except ValueError:
        study_dt = None
    item = ds.RadiopharmaceuticalInformationSequence[0] if ds.get(
        "RadiopharmaceuticalInformationSequence", None) else None
    nuclide = None
    if item is not None and item.get("RadionuclideCodeSequence", None):
        nuclide = str(item.RadionuclideCodeSequence[0].get("CodeMeaning", "")) or None
    sex = str(ds.get("PatientSex", "") or "").strip().upper() or None
    return StudyMetadata(
        patient_id=str(ds.get("PatientID", "") or study.patient_id),
        study_instance_uid=study.study_instance_uid,
        pet_series_instance_uid=pet.series_instance_uid,
        ct_series_instance_uid=None if ct is None else ct.series_instance_uid,
        frame_of_reference_uid=pet.frame_of_reference_uid,
        study_datetime=study_dt,
        patient_sex=sex,
        patient_age_years=_age_years(ds.get("PatientAge", None)),
        patient_weight_kg=_float_or_none(ds.get("PatientWeight", None)),
        patient_size_m=_float_or_none(ds.get("PatientSize", None)),
        radiopharmaceutical=None if item is None else (
            str(item.get("Radiopharmaceutical", "") or "") or None),
        radionuclide=nuclide,
        manufacturer=pet.manufacturer,
        source="dicom",
        extra={"pet_series_description": pet.series_description,
               "ct_series_description": None if ct is None else ct.series_description},
    )
