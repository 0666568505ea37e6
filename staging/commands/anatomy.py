"""``psma-stage anatomy``: label a CT's anatomy and show what the labeller sees."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from imaging.anatomy import AnatomyConfig, label_anatomy, plot_anatomy_overlay
from imaging.errors import ConfigError
from imaging.nifti import read_nifti, write_nifti

__all__ = ["handler", "register"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Label the anatomy of one PET/CT study from its CT (and PET, which helps to find the bladder,
kidneys, liver, spleen and salivary glands): body, bone, lungs, organs, the prostate-fossa
region, the nodal regions (pelvic / extrapelvic under the chosen boundary) and the bony and
vascular landmarks, each with a confidence or the reason it was not found.

Writes into OUTDIR:
  anatomy.nii.gz        one label map (values: imaging.vocabulary.ANATOMY_LABEL_VALUES) on
                        the PET grid (or the CT grid without --pet)
  anatomy.json          landmarks (LPS mm), per-mask provider / confidence / reason, flags,
                        the pelvic boundary and its z, and the label values
  anatomy_overlay.png   coronal and sagittal CT with the regions and landmarks

Providers: 'rule' (default, CPU, no model weights), 'totalsegmentator:PATH' or 'moose:PATH'
where PATH is that tool's output for this CT (a multilabel NIfTI with its label names, or a
folder of per-class NIfTIs); the model's masks replace the rule-based ones they cover, and
its aorta / iliac-artery masks give the bifurcation levels. Labels are mapped by NAME.

Exit codes: 0 written; 1 the input could not be labelled (not a CT in HU, unreadable file,
--require-pelvis and no pelvis); 2 usage error."""

_EPILOG = """\
examples:
  psma-stage anatomy --ct CTres.nii.gz --pet SUV.nii.gz -o anatomy/
  psma-stage anatomy --ct CT.nii.gz --provider totalsegmentator:seg.nii.gz -o anatomy/
  psma-stage anatomy --ct CT.nii.gz --pelvic-boundary common_iliac_bifurcation -o out/"""


def register(subparsers: Any) -> None:
    """Add the ``anatomy`` subcommand."""
    p = subparsers.add_parser("anatomy", help="label organs, fossa, nodal regions and landmarks",
                              description=_DESCRIPTION, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", type=Path, required=True, help="CT NIfTI in HU")
    p.add_argument("--pet", type=Path, help="PET NIfTI in SUV (g/ml); results go on its grid")
    p.add_argument("--provider", default="rule", metavar="rule|totalsegmentator:PATH|moose:PATH",
                   help="who makes the organ masks (default: rule)")
    p.add_argument("--pelvic-boundary", default="aortic_bifurcation",
                   choices=("aortic_bifurcation", "common_iliac_bifurcation"),
                   help="PROMISE (aortic bifurcation, default) or AJCC (common-iliac "
                        "bifurcation) pelvic / extrapelvic boundary")
    p.add_argument("--require-pelvis", action="store_true",
                   help="fail (exit 1) when the pelvis cannot be located")
    p.add_argument("--no-overlay", action="store_true", help="skip the PNG")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (created; files replaced atomically)")
    p.set_defaults(func=handler)


def _config(args: argparse.Namespace) -> AnatomyConfig:
    spec = str(args.provider)
    kind, _, path = spec.partition(":")
    if kind not in ("rule", "totalsegmentator", "moose"):
        raise ConfigError(f"--provider {spec!r}: expected rule, totalsegmentator:PATH or "
                          "moose:PATH.")
    if kind != "rule" and not path:
        raise ConfigError(f"--provider {spec!r}: give the {kind} output after a colon, e.g. "
                          f"{kind}:seg.nii.gz")
    return AnatomyConfig(provider=kind,  # type: ignore[arg-type]
                         provider_path=Path(path) if path else None,
                         pelvic_boundary=args.pelvic_boundary,
                         require_pelvis=bool(args.require_pelvis))


def handler(args: argparse.Namespace) -> int:
    """Run the labeller and write the label map, landmarks JSON and overlay."""
    config = _config(args)
    ct = read_nifti(args.ct, unit="HU")
    pet = read_nifti(args.pet, unit="g/ml") if args.pet else None
    anatomy = label_anatomy(ct, pet=pet, config=config)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".anatomy-", dir=out.parent))
    try:
        write_nifti(anatomy.to_label_volume(), tmp / "anatomy.nii.gz")
        record = anatomy.landmarks_dict()
        from imaging.vocabulary import ANATOMY_LABEL_VALUES

        record["label_values"] = ANATOMY_LABEL_VALUES
        record["inputs"] = {"ct": args.ct.name, "pet": args.pet.name if args.pet else None}
        (tmp / "anatomy.json").write_text(json.dumps(record, indent=1))
        if not args.no_overlay:
            plot_anatomy_overlay(ct, anatomy, tmp / "anatomy_overlay.png")
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = sum(1 for f in anatomy.landmarks.values() if f.found)
    logger.info("anatomy: %d masks, %d nodal regions, %d/%d landmarks, flags %s -> %s",
                len(anatomy.masks), len(anatomy.nodal_regions), found, len(anatomy.landmarks),
                ",".join(anatomy.flags) or "none", out)
    return 0
