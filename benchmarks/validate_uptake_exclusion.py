"""End-to-end check of the physiological-uptake exclusion on synthetic patients.

Run: ``.venv/bin/python benchmarks/validate_uptake_exclusion.py [--patients 10] [--seed 7100]
[--jobs 2] [--format dicom|nifti] [--out validation-uptake] [--json summary.json]``

Generates a mixed-stage cohort of small synthetic patients (stage groups cycling through
T0N0M0, TrN0M0, N1/M1a, M1b-M1c; tracers PSMA-11, DCFPyL and PSMA-1007; HFS / FFS), writes
each one (DICOM by default), stages it with :func:`staging.pipeline.stage_study` (what
``psma-stage stage`` runs, default configuration: rule-based anatomy) and compares with the
truth:

* false-positive lesions outside ``equivocal``: found lesions that hold no truth-lesion voxel,
  with the truth organs they sit in (from the phantom's organ map, here only, never in the
  library);
* sensitivity for truth lesions of >= 0.5 mL and SUVmax >= 4 (found = any voxel overlap);
* patient ``group`` and ``mitnm`` equal to the truth.

Targets (issue 6 and the uptake-exclusion task): < 0.5 non-equivocal false positives per scan,
group correct >= 98 %. Prints a Markdown table; ``--json`` writes the per-patient rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("T0N0M0", "M1b-M1c", "N1/M1a", "TrN0M0")
TRACERS = ("psma11", "dcfpyl", "psma11", "psma1007")
ORIENTATIONS = ("HFS", "FFS")


def run_one(index: int, seed: int, work: str, fmt: str) -> dict[str, Any]:
    """Generate, write, stage and compare one patient (runs in a worker process)."""
    from fixtures.phantom import ORGAN_LABELS, generate_patient, write_patient
    from imaging.nifti import read_nifti
    from imaging.resample import resample_to
    from staging.config import load_config
    from staging.models import StudySource
    from staging.pipeline import stage_study

    stage = STAGES[index % len(STAGES)]
    tracer = TRACERS[(index // 2) % len(TRACERS)]
    orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
    t0 = time.perf_counter()
    patient = generate_patient(seed, size="small", stage=stage, tracer=tracer,
                               orientation=orientation)
    root = Path(work) / f"p{index:03d}"
    pdir = write_patient(patient, root / "data", format=fmt)
    if fmt == "dicom":
        source = StudySource.from_dicom(pdir / "dicom")
    else:
        source = StudySource.from_nifti(pdir / "nifti" / "SUV.nii.gz",
                                        pdir / "nifti" / "CTres.nii.gz",
                                        patient_id=patient.patient_id)
    overrides = {} if fmt == "dicom" else {"lesion": {"tracer": tracer}}  # NIfTI names no tracer
    result = stage_study(source, root / "out", config=load_config(**overrides))
    record = result.record
    found = read_nifti(root / "out" / "lesions.nii.gz", unit="label")
    truth_les = resample_to(patient.lesions_pet, found, interpolation="nearest", fill=0).array
    organs = resample_to(patient.organs_pet, found, interpolation="nearest", fill=0).array
    names = {v: k for k, v in ORGAN_LABELS.items()}
    lab = np.asarray(found.array)
    equivocal = {les["id"]: bool(les["equivocal"]) for les in record["lesions"]}
    fps = []
    for les in record["lesions"]:
        m = lab == les["id"]
        if m.any() and not (truth_les[m] > 0).any() and not equivocal[les["id"]]:
            where = Counter(names.get(int(v), "air") for v in organs[m]).most_common(2)
            fps.append({"id": les["id"], "category": les["category"],
                        "suv_max": round(les["suv_max"], 1),
                        "volume_ml": round(les["volume_ml"], 2),
                        "organs": [w for w, _ in where]})
    hit = set(np.unique(truth_les[lab > 0]).tolist()) - {0}
    eligible = [t for t in patient.truth["lesions"]
                if t["volume_ml"] >= 0.5 and t["suv_max"] >= 4.0]
    missed = [f"{t['category']}:{t['region']}" for t in eligible if t["id"] not in hit]
    row = {
        "index": index, "seed": seed, "patient_id": patient.patient_id, "tracer": tracer,
        "orientation": orientation, "true_group": patient.truth["group"],
        "group": record["group"], "true_mitnm": patient.truth["mitnm"],
        "mitnm": record["mitnm"], "group_ok": record["group"] == patient.truth["group"],
        "mitnm_ok": record["mitnm"] == patient.truth["mitnm"],
        "fp": len(fps), "fp_lesions": fps, "eligible": len(eligible),
        "found": len(eligible) - len(missed), "missed": missed,
        "equivocal": sum(equivocal.values()), "seconds": round(time.perf_counter() - t0, 1),
    }
    shutil.rmtree(root / "data", ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--format", choices=("dicom", "nifti"), default="dicom")
    parser.add_argument("--out", type=Path, default=Path("validation-uptake"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, i, args.seed + i, str(args.out), args.format)
                   for i in range(args.patients)]
        rows = [f.result() for f in futures]
    n = len(rows)
    fp = sum(r["fp"] for r in rows)
    eligible = sum(r["eligible"] for r in rows)
    found = sum(r["found"] for r in rows)
    group_ok = sum(r["group_ok"] for r in rows)
    mitnm_ok = sum(r["mitnm_ok"] for r in rows)
    print("| seed | tracer | truth group | staged group | mitnm (truth / staged) | FP | "
          "found / eligible | FP sites (truth organs) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sites = "; ".join(f"{f['category']} {f['suv_max']} ({', '.join(f['organs'])})"
                          for f in r["fp_lesions"]) or "-"
        print(f"| {r['seed']} | {r['tracer']} | {r['true_group']} | {r['group']} | "
              f"{r['true_mitnm']} / {r['mitnm']} | {r['fp']} | {r['found']} / "
              f"{r['eligible']} | {sites} |")
    summary = {
        "patients": n, "fp_per_scan": fp / n if n else 0.0,
        "sensitivity": found / eligible if eligible else None,
        "group_correct": group_ok / n if n else 0.0,
        "mitnm_correct": mitnm_ok / n if n else 0.0,
        "wall_s": round(time.perf_counter() - start, 1), "machine": platform.platform(),
    }
    print()
    print(f"non-equivocal FP per scan {summary['fp_per_scan']:.2f} (target < 0.5); "
          f"sensitivity {found}/{eligible}; group correct {group_ok}/{n}; "
          f"mitnm correct {mitnm_ok}/{n}; {summary['wall_s']} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
