"""``psma-stage bench``: score lesion finders and external masks against reference reads."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from imaging.errors import ConfigError
from imaging.metrics import CaseScore

__all__ = ["handler", "register"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Score lesion segmentations the way the autoPET challenges do (Dice, false-positive and
false-negative volume over 18-connected components, autoPET III rules for cases without
lesions), plus lesion-wise detection (autoPET-style >= 1 voxel, and one-to-one Hungarian
matching with IoU >= 0.10 as in PI-CAI), per-category lesion sensitivity and, for pipeline
methods, staging agreement (confusion matrices, accuracy, kappa with bootstrap CI).

Two modes:

  psma-stage bench --pair PRED REF
      PRED and REF are two NIfTI masks (one case), or two folders of per-case masks
      (<case>.nii.gz, <case>/<mask>.nii.gz or <case>/nifti/SEG.nii.gz). Cases missing on
      either side are listed. Prints the metrics (--json for JSON); with -o writes
      per_case.csv.

  psma-stage bench INPUT --reference REF -o OUTDIR --method NAME=CONFIG ...
                                                   --predictions NAME=FOLDER ...
      Runs each --method (a pipeline configuration: a TOML file, 'default', or
      SECTION.KEY=VALUE,... settings) over the cohort INPUT (folder or manifest CSV), reads
      each --predictions folder of external masks (e.g. nnU-Net output), scores all of them
      against REF (a folder of reference masks and/or a staging CSV; a phantom cohort folder
      with truth.json / nifti/SEG.nii.gz / truth.csv works as REF) and writes per_case.csv,
      summary.csv, timing.csv, agreement.csv, plots and OUTDIR/bench.html.

Exit codes: 0 every case scored; 1 an input could not be scored (a mask on another grid
without --resample, a non-binary mask without --label, unreadable files, some cases failed);
2 usage or configuration error."""

_EPILOG = """\
examples:
  psma-stage bench --pair nnunet/case01.nii.gz labels/case01.nii.gz
  psma-stage bench --pair nnunet_out/ labels/ --resample -o scores/
  psma-stage bench cohort/ --reference cohort/ -o bench/ \\
      --method suv3=lesion.threshold_suv=3 --method suv4=lesion.threshold_suv=4 \\
      --method percist=lesion.method=percist --predictions nnunet=nnunet_out/"""


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="benchmark lesion finders / masks against reference reads (autoPET "
        "metrics, lesion detection, staging agreement)", description=_DESCRIPTION,
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path, metavar="INPUT",
                   help="cohort folder or manifest CSV the --method pipelines run on")
    p.add_argument("--pair", nargs=2, type=Path, metavar=("PRED", "REF"),
                   help="score a predicted mask (or folder of masks) against a reference")
    p.add_argument("--reference", action="append", type=Path, default=[], metavar="REF",
                   help="reference masks folder and/or staging CSV (repeatable)")
    p.add_argument("-o", "--out", type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", action="append", default=[], metavar="NAME=CONFIG",
                   help="a pipeline method: NAME=file.toml, NAME=default or "
                   "NAME=section.key=value[,section.key=value] (repeatable)")
    p.add_argument("--predictions", action="append", default=[], metavar="NAME=FOLDER",
                   help="external per-case NIfTI masks scored as method NAME (repeatable)")
    p.add_argument("--label", type=int, metavar="N",
                   help="take mask value N as lesion in multi-class masks")
    p.add_argument("--instances", choices=("components", "labels"), default="components",
                   help="lesions of predicted masks: 18-connected components (default) or "
                   "one per label value")
    p.add_argument("--reference-instances", choices=("auto", "components", "labels"),
                   default="auto", help="lesions of reference masks; auto = label values "
                   "when truth.json gives lesion categories, else components")
    p.add_argument("--resample", action="store_true",
                   help="resample predictions on another grid onto the reference grid "
                   "(nearest neighbour) instead of refusing them")
    p.add_argument("--rules", choices=("autopet3", "autopet2"), default="autopet3",
                   help="empty-reference rules of the voxel metrics (default autopet3)")
    p.add_argument("--min-iou", type=float, default=0.10,
                   help="minimum IoU of a one-to-one lesion match (default 0.10)")
    p.add_argument("--missing-as-empty", action="store_true",
                   help="score a case without prediction as an empty prediction")
    p.add_argument("--input-format", choices=("auto", "dicom", "nifti"), default="auto",
                   help="which copy of a case INPUT to read when both exist (auto = NIfTI)")
    p.add_argument("--runner", choices=("shared", "stage"), default="shared",
                   help="shared (default): load and label anatomy once per case, then run each "
                   "method's lesion finder and staging; stage: run the full `psma-stage "
                   "stage` pipeline per method and case, keeping its outputs in OUTDIR/runs/")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="B",
                   help="bootstrap resamples of the confidence intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTDIR")
    p.add_argument("--json", action="store_true", help="--pair: print JSON")
    p.set_defaults(func=handler)


def _options(args: argparse.Namespace) -> Any:
    from staging.benchmark import ScoringOptions

    if not 0.0 < args.min_iou <= 1.0:
        raise ConfigError(f"--min-iou must be in (0, 1], got {args.min_iou}.")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}.")
    return ScoringOptions(
        rules=args.rules, min_iou=args.min_iou, label=args.label,
        reference_instances=args.reference_instances, prediction_instances=args.instances,
        resample=args.resample, missing_as_empty=args.missing_as_empty,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "NaN (undefined)" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _print_score(score: CaseScore, *, as_json: bool) -> None:
    record = score.to_record()
    if as_json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in record.items()}
        print(json.dumps(clean, indent=2))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        print(f"{key:<{width}}  {_fmt(value)}")


def _pair(args: argparse.Namespace) -> int:
    from staging.benchmark import score_folders, score_pair

    pred, ref = args.pair
    options = _options(args)
    for path, what in ((pred, "PRED"), (ref, "REF")):
        if not path.exists():
            raise ConfigError(f"--pair {what} {path}: not found.")
    if pred.is_file() and ref.is_file():
        _print_score(score_pair(pred, ref, options=options), as_json=args.json)
        return 0
    if not (pred.is_dir() and ref.is_dir()):
        raise ConfigError(f"--pair needs two files or two folders, got {pred} and {ref}.")
    report = score_folders(pred, ref, options=options)
    if report.missing_prediction:
        print(f"no prediction for {len(report.missing_prediction)} reference case(s): "
              f"{', '.join(report.missing_prediction)}", file=sys.stderr)
    if report.missing_reference:
        print(f"no reference for {len(report.missing_reference)} predicted case(s): "
              f"{', '.join(report.missing_reference)}", file=sys.stderr)
    for case, reason in report.failed.items():
        print(f"case {case} not scored: {reason}", file=sys.stderr)
    table = report.table
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / "per_case.csv"
        with tempfile.NamedTemporaryFile("w", dir=args.out, suffix=".csv", delete=False) as fh:
            table.to_csv(fh, index=False)
        Path(fh.name).replace(target)
        print(f"per-case scores: {target}")
    if args.json:
        print(table.to_json(orient="records", indent=2))
    elif not table.empty:
        cols = [c for c in ("case_id", "dice", "fp_volume_ml", "fn_volume_ml",
                            "n_reference_lesions", "n_predicted_lesions", "hungarian_tp",
                            "hungarian_fp", "hungarian_fn") if c in table.columns]
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        dice = table["dice"].dropna()
        print(f"\n{len(table)} case(s) scored; mean Dice {dice.mean():.4g} over {len(dice)} "
              f"case(s) with lesions; mean FP volume {table['fp_volume_ml'].mean():.4g} mL")
    return 1 if report.failed or table.empty else 0


def _cohort(args: argparse.Namespace) -> int:
    from staging.benchmark import (
        discover_input,
        load_reference,
        parse_method,
        parse_predictions,
        run_benchmark,
        stage_study_runner,
        write_report,
    )

    if not args.reference:
        raise ConfigError("bench needs --reference REF (or --pair PRED REF).")
    if args.out is None:
        raise ConfigError("bench needs -o OUTDIR for the report.")
    methods = [parse_method(m) for m in args.method]
    methods += [parse_predictions(p) for p in args.predictions]
    if not methods:
        raise ConfigError("give at least one --method NAME=CONFIG or --predictions NAME=FOLDER.")
    if args.method and args.input is None:
        raise ConfigError("--method needs the INPUT cohort to run the pipeline on.")
    cases = discover_input(args.input, prefer=args.input_format) if args.method else None
    reference = load_reference(args.reference)

    def progress(message: str) -> None:
        logger.info("bench: case %s done", message)

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{args.out}: output folder exists and is not empty; choose another "
                          "-o or pass --overwrite.")
    runs_dir = None
    runner = None
    if args.runner == "stage" and args.method:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        runs_dir = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.runs-", dir=args.out.parent))
        runner = stage_study_runner(runs_dir)
    try:
        result = run_benchmark(reference=reference, methods=methods, cases=cases,
                               options=_options(args), n_bootstrap=args.bootstrap,
                               seed=args.seed, runner=runner, progress=progress)
        files = write_report(result, args.out, overwrite=args.overwrite, runs_dir=runs_dir)
    finally:
        if runs_dir is not None and runs_dir.exists():
            shutil.rmtree(runs_dir, ignore_errors=True)
    for name, miss in result.missing.items():
        if miss["missing_prediction"]:
            print(f"{name}: no prediction for {', '.join(miss['missing_prediction'])}",
                  file=sys.stderr)
        if miss["missing_reference"]:
            print(f"{name}: no reference for {', '.join(miss['missing_reference'])}",
                  file=sys.stderr)
    if result.n_failed:
        print(f"{result.n_failed} (method, case) pair(s) failed; see per_case.csv",
              file=sys.stderr)
    cols = [c for c in ("method", "n_scored", "dice_mean", "fp_volume_ml_mean",
                        "fn_volume_ml_mean", "hungarian_sensitivity", "hungarian_fp_per_scan",
                        "group_accuracy", "seconds_mean") if c in result.summary.columns]
    print(result.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"report: {files['bench.html']}")
    scored = int(result.summary["n_scored"].sum()) if not result.summary.empty else 0
    if scored == 0 and not result.agreement:
        print("nothing could be scored: no reference mask matched a prediction and no staging "
              "agreement was computed", file=sys.stderr)
        return 1
    return 1 if result.n_failed else 0


def handler(args: argparse.Namespace) -> int:
    """Run ``bench``; see the module description."""
    if args.pair is not None:
        if args.method or args.predictions or args.input is not None:
            raise ConfigError("--pair scores masks only; it does not combine with INPUT, "
                              "--method or --predictions.")
        return _pair(args)
    return _cohort(args)
