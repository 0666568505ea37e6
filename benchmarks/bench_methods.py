"""Method benchmark: lesion finders of the pipeline scored against synthetic-patient truth.

Generates a phantom cohort (default 30 patients, size "small", NIfTI, fixed seed) unless it
already exists, then runs ``psma-stage bench`` with four lesion-finder presets (fixed SUV 3,
fixed SUV 4, PERCIST liver threshold, qPSMA split threshold) against the cohort's truth
(``<patient>/nifti/SEG.nii.gz`` lesion ids, ``truth.json`` categories, ``truth.csv`` stages),
and copies the summary, the plots and a Markdown table into ``docs/benchmarks/``.

Run (one command, from the repository root)::

    .venv/bin/python benchmarks/bench_methods.py

Options: ``--patients N``, ``--seed S``, ``--work DIR`` (cohort and bench output, default
``bench-output/methods``), ``--docs DIR`` (default ``docs/benchmarks``), ``--bootstrap B``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from staging.cli import main as psma_stage  # noqa: E402

METHODS = (
    "suv3=lesion.preset=suv3",
    "suv4=lesion.preset=suv4",
    "percist=lesion.preset=percist",
    "qpsma=lesion.preset=qpsma",
)

TABLE_COLUMNS = {
    "method": "method",
    "n_scored": "cases",
    "dice_mean": "Dice mean",
    "dice_ci": "Dice 95% CI",
    "dice_median": "Dice median",
    "fp_volume_ml_mean": "FP vol mL (mean)",
    "fn_volume_ml_mean": "FN vol mL (mean)",
    "hungarian_sensitivity": "lesion sens.",
    "hungarian_fp_per_scan": "FP / scan",
    "hungarian_f1": "F1",
    "autopet_sensitivity": "sens. (autoPET >= 1 vox)",
    "group_accuracy": "group acc.",
    "group_kappa_linear": "group kappa (lin.)",
    "seconds_mean": "s / case (method)",
}


def _cohort(out: Path, *, patients: int, seed: int) -> Path:
    from fixtures.phantom import generate_cohort

    marker = out / f".complete-{patients}-{seed}"
    if marker.is_file():
        print(f"cohort exists: {out}")
        return out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    generate_cohort(patients, seed=seed, size="small", format="nifti", out_dir=out)
    marker.write_text("")
    print(f"cohort of {patients} generated in {time.perf_counter() - t0:.0f} s: {out}")
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if pd.isna(value) else f"{value + 0.0:.{digits}g}"  # no "-0"


def _markdown(summary: pd.DataFrame) -> str:
    rows = []
    for _, r in summary.iterrows():
        cells = []
        for key in TABLE_COLUMNS:
            if key == "dice_ci":
                cells.append(f"{_fmt(r['dice_ci_low'])} to {_fmt(r['dice_ci_high'])}")
            elif key in ("method",):
                cells.append(str(r[key]))
            elif key == "n_scored":
                cells.append(str(int(r[key])))
            else:
                cells.append(_fmt(r.get(key, float("nan"))))
        rows.append("| " + " | ".join(cells) + " |")
    head = "| " + " | ".join(TABLE_COLUMNS.values()) + " |"
    sep = "|" + "---|" * len(TABLE_COLUMNS)
    return "\n".join([head, sep, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-output" / "methods")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args(argv)

    cohort = _cohort(args.work / "cohort", patients=args.patients, seed=args.seed)
    out = args.work / "bench"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    argv_bench = ["bench", str(cohort), "--reference", str(cohort), "-o", str(out),
                  "--overwrite", "--bootstrap", str(args.bootstrap), "--seed", "0"]
    for method in METHODS:
        argv_bench += ["--method", method]
    code = psma_stage(argv_bench)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    if code not in (0, 1):
        return code
    summary = pd.read_csv(out / "summary.csv")
    args.docs.mkdir(parents=True, exist_ok=True)
    for name in ("summary.csv", "timing.csv", "agreement.csv", "voxel_metrics_box.png",
                 "sensitivity_vs_fp.png"):
        if (out / name).is_file():
            shutil.copy2(out / name, args.docs / name)
    uname = platform.uname()
    cpu = os.cpu_count()
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=False).stdout.strip()
    except OSError:
        git = "unknown"
    table = _markdown(summary)
    meta = (f"{args.patients} patients (seed {args.seed}, size small), bench wall time "
            f"{elapsed / 60:.1f} min on {uname.machine} {uname.system} ({cpu} cores), load "
            f"average {load_before[0]:.1f} before / {load_after[0]:.1f} after, commit {git}, "
            f"exit code {code}")
    (args.docs / "table.md").write_text(table + "\n\n" + meta + "\n")
    print(table)
    print(meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
