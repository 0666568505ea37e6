"""Validate end-to-end staging against the synthetic patients' truth.

Run: ``.venv/bin/python benchmarks/validate_staging.py [--patients 52] [--seed 6000]
[--jobs 2] [--out validation-staging] [--size small] [--anatomy rule|model]``

Generates a mixed-stage cohort (stage mix of the cohort study: T0N0M0 / TrN0M0 / N1-M1 =
46 / 19 / 48 of 113, the N1-M1 share split between N1/M1a and M1b-M1c), writes every patient in
turn as DICOM in the Siemens, GE and Philips flavours and as NIfTI, with head-first, feet-first
and prone patients and the three tracers, stages each one with :func:`staging.pipeline.stage_study`
(exactly what ``psma-stage stage`` runs) and compares with ``truth.json``:

* ``group`` accuracy (target >= 98 %), ``emmett_group`` accuracy,
* ``mitnm`` string accuracy (target >= 90 %),
* per-category lesion counts equal to the truth for all five categories (target >= 90 %),
* per-category count agreement, the group confusion matrix, and every mismatch with its cause.

``--anatomy rule`` (default) stages with the rule-based anatomy labeller. ``--anatomy model``
also writes each patient's organ map as a TotalSegmentator-style folder of per-class NIfTIs
(:func:`fixtures.phantom.write_totalseg`: the classes of TotalSegmentator's default task only, so
no ureters) and stages with ``anatomy.provider = "totalsegmentator"`` on it, as
``psma-stage stage ... --anatomy totalsegmentator:PATH`` would: what is left wrong then is not
the rule labeller's doing for the structures the model covers. The mode is in the summary.

A study that fails to stage counts as wrong (its error is listed). Results:
``OUT/per_patient.csv``, ``OUT/summary.json`` and a Markdown summary on stdout for
``docs/validation.md``; ``OUT/per_patient.jsonl`` grows as patients finish.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = ("fossa", "node_pelvic", "node_extrapelvic", "bone", "visceral")
GROUP_ORDER = ("T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c")
GROUP_WEIGHTS = np.array([46.0, 19.0, 30.0, 18.0]) / 113.0
FORMATS = (("dicom", "siemens"), ("dicom", "ge"), ("dicom", "philips"), ("nifti", None))
ORIENTATIONS = ("HFS", "FFS", "HFS", "HFP", "HFS")
TRACERS = ("psma11", "dcfpyl", "psma11", "psma1007")


def plan(n: int, seed: int) -> list[dict[str, Any]]:
    """The cohort: per patient seed, stage group, format, vendor, orientation, tracer."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(len(GROUP_ORDER), size=n, p=GROUP_WEIGHTS)
    out = []
    for i in range(n):
        fmt, vendor = FORMATS[i % len(FORMATS)]
        out.append({
            "index": i, "seed": seed + i, "stage": GROUP_ORDER[int(groups[i])], "format": fmt,
            "vendor": vendor, "orientation": ORIENTATIONS[i % len(ORIENTATIONS)],
            "tracer": TRACERS[(i // len(FORMATS)) % len(TRACERS)],
        })
    return out


ANATOMY_MODES = ("rule", "model")


def anatomy_overrides(mode: str, provider_dir: Path | None) -> dict[str, Any]:
    """The ``[anatomy]`` config overrides of an anatomy mode (``{}`` for the rule labeller)."""
    if mode == "rule":
        return {}
    if mode == "model" and provider_dir is not None:
        return {"provider": "totalsegmentator", "provider_path": str(provider_dir)}
    raise ValueError(f"anatomy mode must be one of {ANATOMY_MODES} (model needs the folder), "
                     f"got {mode!r}.")


def run_one(item: dict[str, Any], work: str, size: Literal["small", "full"],
            anatomy: str = "rule") -> dict[str, Any]:
    """Generate, write, stage and compare one patient (runs in a worker process)."""
    from fixtures.phantom import generate_patient, write_patient, write_totalseg
    from staging.config import load_config
    from staging.models import StudySource
    from staging.pipeline import stage_study

    row: dict[str, Any] = {k: item[k] for k in ("index", "seed", "format", "vendor",
                                                 "orientation", "tracer")}
    row["anatomy"] = anatomy
    t0 = time.perf_counter()
    patient = generate_patient(item["seed"], size=size, stage=item["stage"],
                               orientation=item["orientation"], tracer=item["tracer"])
    root = Path(work) / f"p{item['index']:03d}"
    pdir = write_patient(patient, root / "data", format=item["format"],
                         vendor=item["vendor"] or "siemens")
    truth = json.loads((pdir / "truth.json").read_text())
    row.update(patient_id=truth["patient_id"], true_group=truth["group"],
               true_emmett=truth["emmett_group"], true_mitnm=truth["mitnm"],
               **{f"true_{c}": int(truth["counts_by_category"][c]) for c in CATEGORIES})
    if item["format"] == "dicom":
        source = StudySource.from_dicom(pdir / "dicom")
    else:
        source = StudySource.from_nifti(pdir / "nifti" / "SUV.nii.gz",
                                        pdir / "nifti" / "CTres.nii.gz",
                                        patient_id=truth["patient_id"])
    provider_dir = write_totalseg(patient, pdir / "totalsegmentator") if anatomy == "model" \
        else None
    row["generate_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    try:
        # DICOM names its radiopharmaceutical (tracer "auto" reads it); NIfTI does not, so the
        # tracer is set as a user would set it
        overrides: dict[str, dict[str, Any]] = (
            {} if item["format"] == "dicom" else {"lesion": {"tracer": item["tracer"]}})
        if anatomy != "rule":
            overrides["anatomy"] = anatomy_overrides(anatomy, provider_dir)
        result = stage_study(source, root / "result", config=load_config(None, **overrides))
        rec = result.record
        row.update(error="", group=rec["group"], emmett=rec["emmett_group"], mitnm=rec["mitnm"],
                   anatomy_provider=rec["anatomy_provider"],
                   needs_review=rec["needs_review"],
                   equivocal=int(rec["counts_by_category"]["equivocal"]),
                   **{c: int(rec["counts_by_category"][c]) for c in CATEGORIES},
                   review="; ".join(rec["review_reasons"]),
                   lesions="; ".join(f"{les['id']}:{les['category']}:{les['region']}"
                                     for les in rec["lesions"]))
    except Exception as err:  # noqa: BLE001 - a failed study is a result of the validation
        row.update(error=f"{type(err).__name__}: {err}".replace("\n", " "), group="", emmett="",
                   mitnm="", needs_review="", equivocal="", review="", lesions="",
                   anatomy_provider="",
                   **{c: "" for c in CATEGORIES})
        row["traceback"] = traceback.format_exc(limit=3)
    row["stage_s"] = round(time.perf_counter() - t1, 2)
    row["truth_lesions"] = "; ".join(f"{les['id']}:{les['category']}:{les['region']}"
                                     for les in truth["lesions"])
    shutil.rmtree(root, ignore_errors=True)
    return row


def summarise(rows: list[dict[str, Any]], *, anatomy: str = "rule") -> dict[str, Any]:
    n = len(rows)
    ok = [r for r in rows if not r["error"]]
    group = sum(r["group"] == r["true_group"] for r in ok)
    emmett = sum(r["emmett"] == r["true_emmett"] for r in ok)
    mitnm = sum(r["mitnm"] == r["true_mitnm"] for r in ok)
    counts = sum(all(r[c] == r[f"true_{c}"] for c in CATEGORIES) for r in ok)
    per_cat = {c: sum(r[c] == r[f"true_{c}"] for r in ok) / n for c in CATEGORIES}
    confusion = {t: {p: 0 for p in (*GROUP_ORDER, "failed")} for t in GROUP_ORDER}
    for r in rows:
        confusion[r["true_group"]][r["group"] or "failed"] += 1
    by_format: dict[str, dict[str, float]] = {}
    for key in sorted({f"{r['format']}/{r['vendor'] or '-'}" for r in rows}):
        sub = [r for r in rows if f"{r['format']}/{r['vendor'] or '-'}" == key]
        by_format[key] = {
            "n": len(sub),
            "group": sum(r["group"] == r["true_group"] for r in sub) / len(sub),
            "mitnm": sum(r["mitnm"] == r["true_mitnm"] for r in sub) / len(sub),
        }
    return {
        "anatomy": anatomy,
        "anatomy_providers": sorted({str(r["anatomy_provider"]) for r in ok}),
        "patients": n, "failed": n - len(ok),
        "group_accuracy": group / n, "emmett_accuracy": emmett / n,
        "mitnm_accuracy": mitnm / n, "counts_all_equal": counts / n,
        "counts_equal_by_category": per_cat,
        "needs_review": sum(bool(r["needs_review"]) for r in ok),
        "group_confusion": confusion, "by_format": by_format,
        "true_group_mix": {g: sum(r["true_group"] == g for r in rows) for g in GROUP_ORDER},
        "median_stage_s": float(np.median([r["stage_s"] for r in rows])) if rows else 0.0,
    }


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    anatomy = {"rule": "rule-based labeller", "model": "TotalSegmentator-style model masks"}
    lines = [
        f"Anatomy: `--anatomy {summary['anatomy']}` ({anatomy[summary['anatomy']]}; provider "
        f"in the records: {', '.join(summary['anatomy_providers']) or '-'}).",
        "",
        f"Cohort: {summary['patients']} synthetic patients (`--seed {args.seed}`, size "
        f"{args.size}), true groups {summary['true_group_mix']}; failed to stage: "
        f"{summary['failed']}.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| `group` equals truth | {summary['group_accuracy']:.1%} | >= 98 % |",
        f"| `emmett_group` equals truth | {summary['emmett_accuracy']:.1%} | - |",
        f"| `mitnm` equals truth | {summary['mitnm_accuracy']:.1%} | >= 90 % |",
        f"| all 5 category counts equal truth | {summary['counts_all_equal']:.1%} | >= 90 % |",
        "",
        "| category | count equals truth |",
        "|---|---|",
        *[f"| {c} | {v:.1%} |" for c, v in summary["counts_equal_by_category"].items()],
        "",
        "| input | n | group | mitnm |",
        "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['group']:.0%} | {v['mitnm']:.0%} |"
          for k, v in summary["by_format"].items()],
        "",
        "Group confusion (rows truth, columns staged):",
        "",
        "| truth \\ staged | " + " | ".join((*GROUP_ORDER, "failed")) + " |",
        "|---" * (len(GROUP_ORDER) + 2) + "|",
        *[f"| {t} | " + " | ".join(str(v) for v in row.values()) + " |"
          for t, row in summary["group_confusion"].items()],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=52)
    parser.add_argument("--seed", type=int, default=6000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--size", default="small", choices=("small", "full"))
    parser.add_argument("--out", type=Path, default=Path("validation-staging"))
    parser.add_argument("--anatomy", default="rule", choices=ANATOMY_MODES,
                        help="rule: the rule-based anatomy labeller; model: stage with a "
                             "TotalSegmentator-style folder written from the organ truth")
    parser.add_argument("--items", default=None, metavar="START:STOP",
                        help="run only this slice of the cohort plan (to shard a run)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for the generated patients (default OUT/work)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    items = plan(args.patients, args.seed)
    if args.items:
        first, _, last = args.items.partition(":")
        items = items[int(first or 0):int(last) if last else None]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, item, str(work), args.size, args.anatomy)
                   for item in items]
        partial = (args.out / "per_patient.jsonl").open("w")
        for fut in futures:
            row = fut.result()
            rows.append(row)
            partial.write(json.dumps(row, default=str) + "\n")  # results so far, if interrupted
            partial.flush()
            status = row["error"] or (f"{row['mitnm']} vs {row['true_mitnm']}"
                                      + ("" if row["group"] == row["true_group"] else " GROUP"))
            print(f"[{len(rows)}/{len(items)}] {row['patient_id']} {row['format']}/"
                  f"{row['vendor']}: {status}", file=sys.stderr, flush=True)
        partial.close()
    rows.sort(key=lambda r: r["index"])
    fields = sorted({k for r in rows for k in r if k != "traceback"})
    with (args.out / "per_patient.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, anatomy=args.anatomy)
    summary.update(items=args.items or "all", wall_s=round(time.perf_counter() - start, 1),
                   jobs=args.jobs,
                   machine=f"{platform.machine()}, {os.cpu_count()} cores",
                   load_average=os.getloadavg())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
