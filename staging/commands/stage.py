"""``psma-stage stage``: stage one study (DICOM folder or NIfTI pair) into an output folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from imaging.errors import ConfigError

__all__ = ["register"]

_DESCRIPTION = """\
Stage one PET/CT study end to end: load (DICOM with QIBA SUV, or a NIfTI PET already in SUV
plus its CT), label the anatomy on the PET grid, find and measure the PSMA-avid lesions,
classify each (fossa, pelvic node, extrapelvic node, bone, visceral, equivocal) and stage the
patient (miTNM, study groups, counts, PSMA-TV, TL-PSMA).

OUTDIR receives staging.json, lesions.csv, lesions.nii.gz, anatomy.nii.gz, suv.nii.gz,
lesions_seg.dcm (DICOM input), mip.png, report.html and config.toml. It is written atomically:
on any error nothing is left in OUTDIR (an earlier result there stays as it was).

Exit codes: 0 staged; 1 the input could not be staged (one line on stderr says what and where);
2 usage or configuration error.
"""

_EPILOG = """\
examples:
  psma-stage stage patient01/ -o results/patient01
  psma-stage stage --pet SUV.nii.gz --ct CTres.nii.gz --patient-id P01 -o results/P01
  psma-stage stage patient01/ -o out --config fixtures/configs/ajcc-boundary.toml
  psma-stage stage patient01/ -o out --set lesion.threshold_suv=4 --anatomy moose:moose_out/
"""


def _anatomy_override(text: str) -> dict[str, Any]:
    kind, sep, path = text.partition(":")
    if kind == "rule" and not sep:
        return {"provider": "rule"}
    if kind in ("totalsegmentator", "moose") and sep and path:
        return {"provider": kind, "provider_path": path}
    raise ConfigError(
        f"--anatomy {text!r}: expected 'rule', 'totalsegmentator:PATH' or 'moose:PATH' (PATH = "
        "the provider's output NIfTI or folder)."
    )


def register(subparsers: Any) -> None:
    """Add the ``stage`` subcommand."""
    parser = subparsers.add_parser(
        "stage",
        help="stage one PET/CT study (DICOM folder or NIfTI pair) into an output folder",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", type=Path, metavar="INPUT",
                        help="folder holding one patient's PET/CT DICOM (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, metavar="OUTDIR",
                        help="output folder (created; an earlier result there is replaced)")
    parser.add_argument("--pet", type=Path, metavar="SUV.nii.gz",
                        help="NIfTI input: PET already in SUVbw (g/ml), instead of INPUT")
    parser.add_argument("--ct", type=Path, metavar="CT.nii.gz",
                        help="NIfTI input: the CT in HU (any grid, same frame of reference)")
    parser.add_argument("--patient-id", metavar="ID",
                        help="NIfTI input: patient identifier (default: the PET file's folder)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML configuration (sections suv, anatomy, lesion, staging)")
    parser.add_argument("--pet-series", metavar="UID",
                        help="SeriesInstanceUID of the PET series to use (default: automatic)")
    parser.add_argument("--anatomy", metavar="PROVIDER",
                        help="anatomy provider: rule (default), totalsegmentator:PATH, "
                             "moose:PATH")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        dest="settings",
                        help="override one configuration key (repeatable), e.g. "
                             "staging.pelvic_boundary=common_iliac_bifurcation")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved configuration (TOML) and exit without staging")
    parser.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    from staging.config import load_config, parse_assignments
    from staging.models import StudySource
    from staging.pipeline import stage_study

    if getattr(args, "verbose", 0) < 2:  # highdicom narrates every copied module at INFO
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    overrides = parse_assignments(args.settings)
    if args.anatomy:
        overrides.setdefault("anatomy", {}).update(_anatomy_override(args.anatomy))
    config = load_config(args.config, **overrides)
    if args.show_config:
        sys.stdout.write(config.to_toml())
        return 0
    if args.output is None:
        raise ConfigError("the output folder is required: add -o OUTDIR.")
    if args.pet is not None or args.ct is not None:
        if args.input is not None:
            raise ConfigError("give either INPUT (a DICOM folder) or --pet/--ct (NIfTI), "
                              "not both.")
        if args.pet is None:
            raise ConfigError("--ct given without --pet; NIfTI input needs --pet SUV.nii.gz.")
        if args.pet_series:
            raise ConfigError("--pet-series selects a DICOM series; it does not apply to "
                              "NIfTI input.")
        source = StudySource.from_nifti(args.pet, args.ct, patient_id=args.patient_id)
    elif args.input is None:
        raise ConfigError("no input: give a DICOM folder (INPUT) or --pet SUV.nii.gz "
                          "--ct CT.nii.gz.")
    else:
        source = StudySource.from_dicom(args.input, pet_series_uid=args.pet_series)
    result = stage_study(source, args.output, config=config)
    s = result.staging
    review = "; needs review" if s.needs_review else ""
    print(f"{s.patient_id}: {s.mitnm} ({s.group}, {s.emmett_group}), {s.lesion_count} "
          f"lesion(s), {s.counts_by_category.get('equivocal', 0)} equivocal{review} -> "
          f"{result.out_dir}")
    return 0
