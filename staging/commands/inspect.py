"""``psma-stage inspect`` (series inventory, PET/CT choice) and ``psma-stage suv`` (SUV NIfTI)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from imaging.dicom import Inventory, discover
from imaging.errors import ConfigError, SuvError
from imaging.loading import load_study
from imaging.nifti import write_nifti
from imaging.suv import SUV_TYPES, SuvOverrides

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``inspect`` and ``suv`` subcommands."""
    p = subparsers.add_parser(
        "inspect",
        help="list the DICOM series under a folder and the PET/CT pair chosen per study",
        description="Scan PATH recursively for DICOM files, group them by study and series, "
        "and show each series (modality, instances, size, orientation, frame of reference), "
        "the PET and CT chosen for every study, and why every other series was rejected. "
        "Non-DICOM files, DICOMDIR and unreadable files are skipped and counted.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="folder (or file) to scan")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.set_defaults(func=_inspect)

    s = subparsers.add_parser(
        "suv",
        help="convert the PET series under a folder to an SUV NIfTI with a provenance record",
        description="Find the PET series under PATH, convert it to SUV with the QIBA "
        "vendor-neutral algorithm (vendor branches for GE, Philips, Siemens), and write "
        "OUT.nii.gz (float32, RAS affine) and OUT.suv.json beside it (every input value, "
        "the branch taken, the factor, warnings). Missing header values are errors; supply "
        "them with the override options below.",
    )
    s.add_argument("path", type=Path, metavar="PATH", help="folder holding the PET DICOM files")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.nii.gz",
                   help="SUV NIfTI to write (.nii or .nii.gz)")
    s.add_argument("--suv-type", choices=SUV_TYPES, default="bw",
                   help="bw (default), lbm (Janmahasatian), lbm-james, bsa, ibw")
    s.add_argument("--series", metavar="UID", default=None,
                   help="SeriesInstanceUID of the PET series (see `psma-stage inspect`)")
    s.add_argument("--strict", action="store_true",
                   help="treat tolerated DICOM deviations as errors")
    g = s.add_argument_group(
        "overrides (each replaces the header value; recorded in OUT.suv.json)")
    g.add_argument("--injected-dose-mbq", type=float, metavar="MBQ", help="injected activity")
    g.add_argument("--dose-unit", choices=("auto", "Bq", "MBq"), default="auto",
                   help="unit of the stored RadionuclideTotalDose (auto: < 1e5 read as MBq)")
    g.add_argument("--weight-kg", type=float, metavar="KG", help="patient weight")
    g.add_argument("--height-m", type=float, metavar="M", help="patient height")
    g.add_argument("--sex", choices=("M", "F"), help="patient sex (lbm, ibw)")
    g.add_argument("--half-life-s", type=float, metavar="S", help="radionuclide half-life")
    g.add_argument("--nominal-half-life", action="store_true",
                   help="if the half-life is absent, use the radionuclide's nominal value")
    g.add_argument("--injection-time", metavar="ISO", help="injection date-time, e.g. "
                   "2025-01-01T10:00:00")
    g.add_argument("--scan-time", metavar="ISO", help="decay reference (scan) date-time")
    g.add_argument("--decay-none-at-acquisition", action="store_true",
                   help="DecayCorrection NONE: decay the dose to each image's acquisition time")
    s.set_defaults(func=_suv)


def _inventory_text(inv: Inventory) -> str:
    lines = [f"{inv.root}: {inv.n_files} files, {len(inv.studies)} studies"]
    if inv.skipped:
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(inv.skipped.items()))
        lines.append(f"  skipped: {skipped}")
    for st in inv.studies:
        lines.append(f"study {st.study_instance_uid} (patient {st.patient_id})")
        lines.append(
            f"  PET: {st.pet.series_instance_uid if st.pet else 'none'}   "
            f"CT: {st.ct.series_instance_uid if st.ct else 'none'}"
        )
        for se in st.series:
            size = f"{se.rows}x{se.columns}" if se.rows else "-"
            z = "" if se.z_range_mm is None else (
                f" z {se.z_range_mm[0]:.1f}..{se.z_range_mm[1]:.1f}")
            number = "-" if se.series_number is None else str(se.series_number)
            lines.append(
                f"  {se.modality or '?':<8} #{number:<4}"
                f" {se.n_instances:>5} inst {size:>9} {se.orientation:<8}"
                f" {se.size_bytes / 1e6:7.1f} MB{z}  {se.series_description[:30]!r}"
            )
            reason = st.reasons.get(se.series_instance_uid)
            lines.append(f"      {se.series_instance_uid}: {reason}")
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    inv = discover(args.path)
    if args.json:
        sys.stdout.write(json.dumps(inv.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_inventory_text(inv) + "\n")
    return 0


def _iso(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{option} {value!r} is not an ISO date-time "
                          "(e.g. 2025-01-01T10:00:00).") from err


def _overrides(args: argparse.Namespace) -> SuvOverrides:
    return SuvOverrides(
        injected_dose_bq=None if args.injected_dose_mbq is None else args.injected_dose_mbq * 1e6,
        patient_weight_kg=args.weight_kg,
        patient_size_m=args.height_m,
        patient_sex=args.sex,
        half_life_s=args.half_life_s,
        use_nominal_half_life=args.nominal_half_life,
        injection_datetime=_iso(args.injection_time, "--injection-time"),
        scan_datetime=_iso(args.scan_time, "--scan-time"),
        dose_unit=args.dose_unit,
        decay_correction_none="acquisition" if args.decay_none_at_acquisition else "error",
    )


def provenance_path(output: Path) -> Path:
    """``OUT.suv.json`` for ``OUT.nii.gz`` / ``OUT.nii``."""
    name = output.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return output.with_name(name[: -len(ext)] + ".suv.json")
    return output.with_name(name + ".suv.json")


def _suv(args: argparse.Namespace) -> int:
    out: Path = args.output
    if not out.name.endswith((".nii", ".nii.gz")):
        raise ConfigError(f"output {out} must end in .nii.gz or .nii.")
    study = load_study(
        args.path, pet_series_uid=args.series, suv_type=args.suv_type, strict=args.strict,
        overrides=_overrides(args), ct="skip",
    )
    if study.pet.array.dtype.kind != "f":
        raise SuvError(f"internal: SUV array has dtype {study.pet.array.dtype}, expected float.")
    record = {
        "patient_id": study.meta.patient_id,
        "study_instance_uid": study.meta.study_instance_uid,
        "pet_series_instance_uid": study.meta.pet_series_instance_uid,
        "unit": study.pet.unit,
        "shape_kji": list(study.pet.shape),
        "spacing_mm_kji": list(study.pet.spacing),
        "origin_lps_mm": list(study.pet.origin),
        "suv_provenance": dict(study.suv_provenance),
    }
    prov = provenance_path(out)
    prov.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=prov.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, default=str)
        # both files appear only once both are complete
        write_nifti(study.pet.with_array(study.pet.array.astype("float32", copy=False)), out)
        os.replace(tmp, prov)
    finally:
        Path(tmp).unlink(missing_ok=True)
    pv = study.suv_provenance
    sys.stdout.write(
        f"wrote {out} ({study.pet.shape[0]} slices, SUV{args.suv_type} factor "
        f"{pv.get('factor', float('nan')):.6g}, branch {pv.get('branch')}) and {prov}\n"
    )
    for w in pv.get("warnings", []):
        sys.stdout.write(f"warning: {w}\n")
    return 0
