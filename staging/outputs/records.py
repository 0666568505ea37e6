"""``staging.json`` and ``lesions.csv``: the versioned per-study record and lesion table.

The schema is documented in ``docs/outputs.md``. ``SCHEMA_VERSION`` changes whenever a key is
removed, renamed or changes meaning; adding a key keeps the version.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imaging import __version__
from staging.models import PatientStaging

__all__ = [
    "LESION_COLUMNS",
    "SCHEMA_VERSION",
    "build_record",
    "lesion_rows",
    "reference_summary",
    "write_json",
    "write_lesions_csv",
]

SCHEMA_VERSION = "1"

LESION_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_instance_uid",
    "id",
    "category",
    "region",
    "provisional_category",
    "suv_max",
    "suv_mean",
    "suv_peak",
    "volume_ml",
    "tl_psma",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "mipsma_score",
    "equivocal",
    "equivocal_reason",
    "reason",
)
"""Columns of ``lesions.csv``, in order (schema :data:`SCHEMA_VERSION`)."""


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def reference_summary(reference: Any) -> tuple[dict[str, float | None], dict[str, Any]]:
    """``reference_suv`` ({blood_pool, liver, parotid, spleen}: SUVmean or None) and details.

    ``reference`` is an ``imaging.lesions.ReferenceValues`` (or None when not measured).
    A reference that could not be measured is ``null`` with its flag in the details, never a
    made-up number.
    """
    values: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    for name in ("blood_pool", "liver", "parotid", "spleen"):
        ref = None if reference is None else getattr(reference, name, None)
        if ref is None:
            values[name] = None
            details[name] = {"suv_mean": None, "flag": "not measured"}
            continue
        values[name] = _finite_or_none(ref.suv_mean)
        details[name] = {
            "suv_mean": values[name],
            "suv_sd": _finite_or_none(ref.suv_sd),
            "n_voxels": int(ref.n_voxels),
            "method": ref.method,
            "flag": ref.flag,
        }
    return values, details


def build_record(
    staging: PatientStaging,
    *,
    study_instance_uid: str,
    series: Mapping[str, str | None],
    suv_provenance: Mapping[str, Any],
    config: Mapping[str, Any],
    config_hash: str,
    reference: Any = None,
    anatomy_provider: str | None = None,
    anatomy_flags: Sequence[str] = (),
    lesion_method: str | None = None,
    source_kind: str = "dicom",
    timings_s: Mapping[str, float] | None = None,
    outputs: Sequence[str] = (),
    skipped_outputs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``staging.json`` content (schema :data:`SCHEMA_VERSION`).

    Parameters
    ----------
    staging : PatientStaging
        The patient stage with its classified lesions.
    study_instance_uid : str
        StudyInstanceUID (or the NIfTI pseudo-UID).
    series : mapping
        ``{"pet": uid, "ct": uid}`` of the series used.
    suv_provenance : mapping
        The loader's SUV record.
    config, config_hash :
        Resolved configuration (``PipelineConfig.to_dict()``) and its hash.
    reference : ReferenceValues, optional
        Reference-region SUVs of the lesion finder.

    Returns
    -------
    dict
        JSON-ready; key order is the documented order.
    """
    reference_suv, reference_detail = reference_summary(reference)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "software_version": __version__,
        "patient_id": staging.patient_id,
        "study_instance_uid": study_instance_uid,
        **{k: v for k, v in staging.summary().items() if k != "patient_id"},
        "reference_suv": reference_suv,
        "reference_suv_detail": reference_detail,
        "suv_provenance": dict(suv_provenance),
        "config": dict(config),
        "config_hash": config_hash,
        "series": {"pet": series.get("pet"), "ct": series.get("ct")},
        "source": source_kind,
        "anatomy_provider": anatomy_provider,
        "anatomy_flags": list(anatomy_flags),
        "lesion_method": lesion_method,
        "timings_s": {k: round(float(v), 4) for k, v in (timings_s or {}).items()},
        "outputs": list(outputs),
        "skipped_outputs": dict(skipped_outputs or {}),
        "lesions": [lesion.to_dict() for lesion in staging.lesions],
    }
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(record: Mapping[str, Any], path: Path) -> Path:
    """Write ``record`` as indented UTF-8 JSON (NaN is refused: it never stands in for a value)."""
    text = json.dumps(record, indent=2, default=_json_default, allow_nan=False, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def lesion_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``lesions.csv`` from a ``staging.json`` record (one per lesion)."""
    rows = []
    for lesion in record["lesions"]:
        x, y, z = lesion["centroid_mm"]
        row = {
            "patient_id": record["patient_id"],
            "study_instance_uid": record["study_instance_uid"],
            **{k: lesion[k] for k in ("id", "category", "region", "provisional_category",
                                      "suv_max", "suv_mean", "suv_peak", "volume_ml", "tl_psma")},
            "centroid_x_mm": x,
            "centroid_y_mm": y,
            "centroid_z_mm": z,
            "mipsma_score": lesion["mipsma_score"],
            "equivocal": lesion["equivocal"],
            "equivocal_reason": lesion["equivocal_reason"],
            "reason": lesion["reason"],
        }
        rows.append(row)
    return rows


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_lesions_csv(record: Mapping[str, Any], path: Path) -> Path:
    """Write ``lesions.csv`` (header always present, also for a patient with no lesions)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LESION_COLUMNS))
        writer.writeheader()
        for row in lesion_rows(record):
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path
