"""Validate the rule-based anatomy labeller against synthetic patients and the real CT.

Run: ``.venv/bin/python benchmarks/validate_anatomy.py [--quick] [--json out.json]``

For each synthetic patient (sizes, HFS/FFS, arms up/down, hip prosthesis, couch) it reports the
Dice of body, bone, lungs and bladder against the phantom's organ map on the CT grid (and,
for comparison, on the PET grid with the ceiling nearest-neighbour transfer allows there), the
distance of each landmark from truth, and the fraction of truth lesions whose region
(fossa / nodal region / bone / organ) the labeller recovers. On the public TotalSegmentator
example CTs it reports body/bone/lung Dice against the TotalSegmentator label map.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.anatomy import AnatomyMap, label_anatomy, map_label_name
from imaging.vocabulary import AnatomyLabel, Landmark, LesionCategory

DICE_LABELS = (AnatomyLabel.BODY, AnatomyLabel.BONE, AnatomyLabel.LUNGS,
               AnatomyLabel.URINARY_BLADDER)
CHECKED_LANDMARKS = (Landmark.PUBIC_SYMPHYSIS_SUPERIOR, Landmark.PUBIC_SYMPHYSIS_INFERIOR,
                     Landmark.FEMORAL_HEAD_LEFT, Landmark.FEMORAL_HEAD_RIGHT,
                     Landmark.SACRAL_PROMONTORY, Landmark.AORTIC_BIFURCATION)
_VISCERAL = {"lung": AnatomyLabel.LUNGS, "liver": AnatomyLabel.LIVER,
             "adrenal": AnatomyLabel.ADRENALS}

SCENARIOS: tuple[dict[str, Any], ...] = (
    {"seed": 11, "orientation": "HFS", "arms": "down", "couch": True},
    {"seed": 12, "orientation": "FFS", "arms": "down", "couch": True},
    {"seed": 13, "orientation": "HFS", "arms": "up", "couch": True},
    {"seed": 14, "orientation": "FFS", "arms": "up", "couch": False},
    {"seed": 15, "orientation": "HFS", "arms": "down", "couch": True, "hip_prosthesis": "left"},
    {"seed": 16, "orientation": "FFS", "arms": "down", "couch": True,
     "hip_prosthesis": "right"},
    {"seed": 17, "orientation": "HFS", "arms": "down", "couch": True, "stage": "N1/M1a"},
    {"seed": 18, "orientation": "HFS", "arms": "up", "couch": True, "stage": "M1b-M1c"},
    {"seed": 19, "orientation": "HFP", "arms": "down", "couch": True, "stage": "N1/M1a"},
    {"seed": 20, "orientation": "FFS", "arms": "down", "couch": True, "stage": "TrN0M0"},
    {"seed": 21, "orientation": "HFS", "arms": "down", "couch": True, "lesions": "all_sites"},
    {"seed": 21, "orientation": "FFS", "arms": "down", "couch": True, "lesions": "all_sites"},
    {"seed": 23, "orientation": "HFS", "arms": "down", "couch": True, "lesions": "all_sites"},
)

_ALL_SITES = (
    ("fossa", "left"), ("node_common_iliac", "left"), ("node_common_iliac", "right"),
    ("node_external_iliac", "left"), ("node_external_iliac", "right"),
    ("node_internal_iliac", "left"), ("node_internal_iliac", "right"),
    ("node_obturator", "left"), ("node_obturator", "right"), ("node_presacral", "left"),
    ("node_perirectal", "left"), ("node_retroperitoneal", "left"),
    ("node_mediastinal", "left"), ("node_supraclavicular", "right"), ("node_inguinal", "left"),
    ("node_inguinal", "right"), ("bone_vertebra", "left"), ("bone_pelvis", "right"),
    ("bone_sacrum", "left"), ("bone_rib", "left"), ("bone_femur", "right"),
    ("visceral_lung", "left"), ("visceral_lung", "right"), ("visceral_liver", "left"),
    ("visceral_adrenal", "left"),
)
"""One lesion per site (radius 4 mm): every region the labeller must recover."""


def _lesion_specs() -> list[Any]:
    from fixtures.phantom.lesions import LesionSpec

    return [LesionSpec(site=site, side=side, radius_mm=4.0) for site, side in _ALL_SITES]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.count_nonzero(a & b)) / total


def _nearest(mask: np.ndarray, grid: Any, reference: Any) -> np.ndarray:
    """``mask`` on ``grid``'s voxels, copied onto ``reference``'s grid by nearest neighbour."""
    import SimpleITK as sitk

    img = grid.with_array(mask.astype(np.uint8), unit="mask").to_sitk()
    ref = reference.with_array(np.zeros(reference.shape, dtype=np.uint8), unit="mask").to_sitk()
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return np.asarray(sitk.GetArrayFromImage(out)) > 0


def as_drawn_at(mask: np.ndarray, volume: Any, step_mm: float = 3.0) -> np.ndarray:
    """``mask`` as a segmentation drawn on an isotropic ``step_mm`` grid would show it.

    The mask (on ``volume``'s grid) is blurred to that resolution (Gaussian, FWHM
    ``sqrt(step^2 - spacing^2)`` per axis), sampled onto the coarse grid (same origin and
    direction), kept where it is at least one half, and copied back by nearest neighbour: what
    a 3 mm model (TotalSegmentator ``--fast``) resampled to the CT grid can represent at best.
    """
    import SimpleITK as sitk

    img = volume.with_array(mask.astype(np.float32), unit="mask").to_sitk()
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    sigma = np.sqrt(np.maximum(step_mm**2 - spacing**2, 0.0)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    if (sigma > 0).any():
        img = sitk.SmoothingRecursiveGaussian(img, [float(max(v, 1e-3)) for v in sigma])
    size = [int(np.ceil(n * sp / step_mm)) for n, sp in zip(img.GetSize(), spacing, strict=True)]
    coarse = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                           (step_mm,) * 3, img.GetDirection(), 0.0)
    back = sitk.Resample(sitk.Cast(coarse >= 0.5, sitk.sitkUInt8), img, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0)
    return np.asarray(sitk.GetArrayFromImage(back)) > 0


def lesion_region_recovered(anatomy: AnatomyMap, lesion: dict[str, Any]) -> tuple[bool, str]:
    """Whether the labeller puts a truth lesion's centre in its truth region; and what it saw."""
    centre = lesion["centre_mm"]
    cat = lesion["category"]
    at = anatomy.labels_at_point(centre)
    if cat == LesionCategory.FOSSA.value:
        return AnatomyLabel.PROSTATE_FOSSA in at.labels, ",".join(x.value for x in at.labels)
    if cat == LesionCategory.BONE.value:
        return AnatomyLabel.BONE in at.labels, ",".join(x.value for x in at.labels)
    if cat == LesionCategory.VISCERAL.value:
        want = next((lab for key, lab in _VISCERAL.items() if key in lesion["region"]), None)
        return want in at.labels, ",".join(x.value for x in at.labels)
    got = anatomy.region_of_point(centre)
    return (got is not None and got.value == lesion["region"]), str(got and got.value)


def evaluate_patient(patient: Any, **label_kw: Any) -> dict[str, Any]:
    """Dice, landmark errors and lesion-region recovery of one synthetic patient."""
    t0 = time.perf_counter()
    anatomy = label_anatomy(patient.ct, pet=patient.pet_suv, reference=patient.ct, **label_kw)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": round(seconds, 2), "flags": list(anatomy.flags)}
    # the CT is what the labeller segments: its masks are scored on the CT grid against the
    # organ map painted on that grid
    out["dice"] = {lab.value: round(dice(anatomy.mask(lab),
                                         patient.canonical_mask(lab, grid="ct")), 4)
                   for lab in DICE_LABELS}
    # also on the PET grid (the default output grid), with the ceiling that grid allows: the
    # phantom paints its PET-grid organ map independently at the PET voxel centres, so even the
    # exact CT-grid truth, put on the PET grid by nearest neighbour, does not reach Dice 1
    on_pet = label_anatomy(patient.ct, pet=patient.pet_suv, **label_kw)
    out["dice_pet_grid"] = {lab.value: round(dice(on_pet.mask(lab),
                                                  patient.canonical_mask(lab, grid="pet")), 4)
                            for lab in DICE_LABELS}
    out["dice_pet_grid_ceiling"] = {
        lab.value: round(dice(_nearest(patient.canonical_mask(lab, grid="ct"), patient.ct,
                                       patient.pet_suv),
                              patient.canonical_mask(lab, grid="pet")), 4)
        for lab in DICE_LABELS}
    errors = {}
    for lm in CHECKED_LANDMARKS:
        found = anatomy.landmarks[lm]
        truth = np.asarray(patient.truth["landmarks"][lm.value], dtype=float)
        errors[lm.value] = (None if found.position_mm is None else
                            round(float(np.linalg.norm(np.asarray(found.position_mm) - truth)), 1))
    out["landmark_error_mm"] = errors
    lesions = []
    for les in patient.truth["lesions"]:
        ok, seen = lesion_region_recovered(anatomy, les)
        lesions.append({"id": les["id"], "category": les["category"], "region": les["region"],
                        "recovered": ok, "seen": seen})
    out["lesions"] = lesions
    return out


def evaluate_totalsegmentator(folder: Path) -> dict[str, Any]:
    """Body/bone/lung Dice of the rule-based masks against TotalSegmentator's label maps."""
    import SimpleITK as sitk

    from imaging.anatomy.providers import label_names_from_nifti
    from imaging.nifti import read_nifti
    from imaging.volume import Volume

    results: dict[str, Any] = {}
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder / "example_ct_dicom"))
    reader.SetFileNames(files)
    dicom_ct = Volume.from_sitk(reader.Execute(), unit="HU")
    for name, ct, seg_path in (
        ("dicom_20_slices", dicom_ct, folder / "example_seg_dicom.nii.gz"),
        ("nifti_3mm_crop", read_nifti(folder / "example_ct_sm.nii.gz", unit="HU"),
         folder / "example_seg.nii.gz"),
    ):
        seg = read_nifti(seg_path, unit="label")
        names = label_names_from_nifti(seg_path)
        labels = np.asarray(seg.array)
        anatomy = label_anatomy(ct, reference=seg)
        ref = {lab: np.isin(labels, [v for v, n in names.items()
                                     if map_label_name(n).label is lab])
               for lab in (AnatomyLabel.BONE, AnatomyLabel.LUNGS)}
        # TotalSegmentator's total task has no body class: the reference body is the union of
        # its labels with in-plane holes filled, which omits only subcutaneous fat and skin
        from imaging.anatomy.tissues import fill_holes_per_slice

        any_label, _ = fill_holes_per_slice(labels > 0)
        body_cover = float(np.count_nonzero(anatomy.mask(AnatomyLabel.BODY) & any_label)
                           / max(int(any_label.sum()), 1))
        present = sorted(set(np.unique(labels).tolist()) - {0})
        unmapped = [names[v] for v in present if not map_label_name(names[v]).known]
        bone = anatomy.mask(AnatomyLabel.BONE)
        bone_3mm = as_drawn_at(bone, ct)
        results[name] = {
            "shape": list(ct.shape), "spacing_mm": [round(s, 3) for s in ct.spacing],
            "dice_bone": round(dice(bone, ref[AnatomyLabel.BONE]), 4),
            # what the reference's resolution allows: our mask against itself as a 3 mm
            # segmentation draws it, and our mask so drawn against the reference
            "dice_bone_own_3mm_copy": round(dice(bone, bone_3mm), 4),
            "dice_bone_3mm_copy_vs_reference": round(dice(bone_3mm, ref[AnatomyLabel.BONE]), 4),
            "dice_lungs": (round(dice(anatomy.mask(AnatomyLabel.LUNGS),
                                      ref[AnatomyLabel.LUNGS]), 4)
                           if ref[AnatomyLabel.LUNGS].any() or anatomy.mask(
                               AnatomyLabel.LUNGS).any() else "no lungs in CT or labels"),
            "body_covers_labelled_tissue": round(body_cover, 4),
            "labels_present": len(present), "names_unknown": unmapped,
        }
    table = json.loads((folder / "total_v2_label_names.json").read_text())
    mapped = {n: map_label_name(n) for n in table.values()}
    results["name_table"] = {
        "names": len(mapped),
        "mapped": sum(1 for m in mapped.values() if m.label is not None),
        "unused_with_reason": sum(1 for m in mapped.values() if m.label is None and m.known),
        "unknown": [n for n, m in mapped.items() if not m.known],
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 small patients only")
    parser.add_argument("--sizes", default="small", help="comma list: small,full")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--only-sites", action="store_true",
                        help="only the patients with one lesion per site")
    args = parser.parse_args(argv)
    from fixtures.phantom import generate_patient

    report: dict[str, Any] = {"patients": []}
    scenarios = SCENARIOS[:3] if args.quick else SCENARIOS
    if args.only_sites:
        scenarios = tuple(sc for sc in SCENARIOS if sc.get("lesions") == "all_sites")
    for size in args.sizes.split(","):
        for sc in scenarios:
            kw = {k: v for k, v in sc.items() if k not in ("seed", "lesions")}
            if sc.get("lesions") == "all_sites":
                kw["lesions"] = _lesion_specs()
            try:
                patient = generate_patient(sc["seed"], size=size, **kw)
            except Exception as err:  # noqa: BLE001 - a phantom that cannot place a lesion
                print(f"{size:5s} {sc}: phantom not generated ({err})")
                continue
            res = evaluate_patient(patient)
            res["scenario"] = {"size": size, **sc}
            report["patients"].append(res)
            bad = [les for les in res["lesions"] if not les["recovered"]]
            print(f"{size:5s} {sc} {res['seconds']} s dice={res['dice']} "
                  f"lm={res['landmark_error_mm']} lesions={len(res['lesions']) - len(bad)}/"
                  f"{len(res['lesions'])} missed={[(b['region'], b['seen']) for b in bad]}")
    pts = report["patients"]
    summary = {
        "patients": len(pts),
        "dice_min": {lab.value: min(p["dice"][lab.value] for p in pts) for lab in DICE_LABELS},
        "dice_median": {lab.value: float(np.median([p["dice"][lab.value] for p in pts]))
                        for lab in DICE_LABELS},
        "dice_pet_grid_min": {lab.value: min(p["dice_pet_grid"][lab.value] for p in pts)
                              for lab in DICE_LABELS},
        "dice_pet_grid_ceiling_min": {lab.value: min(p["dice_pet_grid_ceiling"][lab.value]
                                                     for p in pts) for lab in DICE_LABELS},
        "landmark_max_error_mm": {
            lm.value: max((p["landmark_error_mm"][lm.value] for p in pts
                           if p["landmark_error_mm"][lm.value] is not None), default=None)
            for lm in CHECKED_LANDMARKS},
        "landmarks_not_found": sum(1 for p in pts for v in p["landmark_error_mm"].values()
                                   if v is None),
        "lesions": sum(len(p["lesions"]) for p in pts),
        "lesions_recovered": sum(les["recovered"] for p in pts for les in p["lesions"]),
    }
    summary["lesion_recovery"] = round(summary["lesions_recovered"] / max(summary["lesions"], 1),
                                       4)
    report["summary"] = summary
    ts = Path(__file__).resolve().parents[1] / "fixtures" / "public" / "totalsegmentator-example"
    if ts.is_dir():
        report["totalsegmentator_example"] = evaluate_totalsegmentator(ts)
    print(json.dumps({k: v for k, v in report.items() if k != "patients"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
