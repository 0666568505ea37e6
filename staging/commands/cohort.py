"""``psma-stage cohort``: stratification and survival analysis of a staged cohort."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any

from imaging.errors import ConfigError
from staging.cohort import (
    CohortSpec,
    CohortWarning,
    analyze_cohort,
    join_cohort,
    read_clinical_table,
    read_staging_database,
    read_staging_results,
    write_cohort_report,
)

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _times(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _names(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give comma-separated numbers, e.g. 24,60") from err


def _levels(text: str) -> tuple[str, tuple[str, ...]]:
    column, sep, values = text.partition("=")
    if not sep or not column.strip() or not _names(values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give COLUMN=level1,level2,... e.g. group=T0N0M0,TrN0M0")
    return column.strip(), _names(values)


def register(subparsers: Any) -> None:
    """Add the ``cohort`` subcommand."""
    p = subparsers.add_parser(
        "cohort",
        help="cohort tables, Kaplan-Meier curves, log-rank tests and Cox models by PSMA group",
        description="Join staging results (--staging CSV/staging.json files or --db) with a "
        "clinical table on patient_id and write to OUTDIR: summary.json (every number), "
        "Table 1 and survival/hazard-ratio tables as CSV and Markdown, Kaplan-Meier figures "
        "with confidence bands and numbers at risk (PNG, SVG), and cohort.html. Patients in one "
        "table but not the other are listed, never dropped silently. Statistics are lifelines': "
        "Kaplan-Meier (Greenwood variance), log-rank (overall and pairwise, Holm-adjusted), "
        "Cox proportional hazards (Efron ties) within each group and stratified by group, with "
        "warnings when events per variable < 10, a treatment arm has < 2 events, or the "
        "Schoenfeld test rejects proportional hazards.",
        epilog="Example: psma-stage cohort --db results/results.db --clinical clinical.csv "
        "-o cohort-report --adjust psa,age --at 24,60",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--staging", type=Path, nargs="+", metavar="FILE",
                     help="staging results: a CSV export, staging.json files, or folders "
                     "searched for staging.json")
    src.add_argument("--db", metavar="URL",
                     help="study database (SQLAlchemy URL or SQLite file) written by "
                     "`psma-stage run`; its clinical table is used when --clinical is absent")
    p.add_argument("--clinical", type=Path, metavar="CSV",
                   help="clinical table with a patient_id column (required with --staging)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR",
                   help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--time-col", default="pfs_months", help="follow-up time column "
                   "(default pfs_months)")
    p.add_argument("--event-col", default="pfs_event",
                   help="event column, 1 = event, 0 = censored (default pfs_event)")
    p.add_argument("--group-by", type=_names, default=("group",), metavar="COLS",
                   help="comma-separated grouping columns, each analysed in turn "
                   "(default group; e.g. group,emmett_group)")
    p.add_argument("--treatments", type=_names, default=("wprt", "adt"), metavar="COLS",
                   help="0/1 treatment columns for the Cox models (default wprt,adt; '' for "
                   "none)")
    p.add_argument("--adjust", type=_names, default=(), metavar="COLS",
                   help="numeric adjusters of the Cox models, e.g. psa,age (default none)")
    p.add_argument("--describe", type=_names, default=(), metavar="COLS",
                   help="further Table 1 columns (treatments, adjusters and lesion_count are "
                   "always described)")
    p.add_argument("--at", type=_times, default=(24.0, 60.0), metavar="TIMES",
                   help="landmark times for survival estimates (default 24,60)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="1 - confidence level (default 0.05: 95%% intervals)")
    p.add_argument("--ci-method", choices=("log-log", "log"), default="log-log",
                   help="Kaplan-Meier interval: log-log (lifelines default, exponential "
                   "Greenwood) or log (R survfit default)")
    p.add_argument("--levels", type=_levels, action="append", default=[],
                   metavar="COL=A,B,...", help="level order/selection of a grouping column")
    p.add_argument("--time-unit", default="months", help="unit of the time column (labels)")
    p.add_argument("--endpoint", default="Progression-free survival",
                   help="endpoint name for titles and axes")
    p.add_argument("--no-stratified", dest="stratified", action="store_false",
                   help="skip the Cox model pooled over groups stratified by group")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    p.set_defaults(func=_run)


def _safe_url(url: str) -> str:
    """The database URL without its password (a plain SQLite path is returned as given)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # a file path, not a URL
        return url


def _run(args: argparse.Namespace) -> int:
    if args.staging is not None and args.clinical is None:
        raise ConfigError("--clinical CSV is required with --staging (the clinical table "
                          "with patient_id, times, events and treatments).")
    spec = CohortSpec(
        time_col=args.time_col, event_col=args.event_col, group_by=tuple(args.group_by),
        treatments=tuple(args.treatments), adjust=tuple(args.adjust),
        describe=tuple(args.describe), at=tuple(args.at), alpha=args.alpha,
        ci_method=args.ci_method, levels=dict(args.levels), time_unit=args.time_unit,
        endpoint=args.endpoint, stratified=args.stratified,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CohortWarning)
        if args.db is not None:
            staging = read_staging_database(args.db)
            sources: dict[str, Any] = {"staging": {"database": _safe_url(args.db)}}
        else:
            staging = read_staging_results(args.staging)
            sources = {"staging": {"files": [str(p) for p in args.staging]}}
        if args.clinical is not None:
            clinical = read_clinical_table(args.clinical)
            sources["clinical"] = {"file": str(args.clinical)}
        else:
            clinical = read_clinical_table(args.db, from_database=True)
            sources["clinical"] = {"database": _safe_url(args.db)}
        sources["n_staging_rows"] = len(staging)
        sources["n_clinical_rows"] = len(clinical)
        cohort = join_cohort(staging, clinical)
        analysis = analyze_cohort(cohort, spec=spec)
        out = write_cohort_report(analysis, args.out, sources=sources,
                                  overwrite=args.overwrite)
    logged: set[tuple[str, str]] = set()
    for w in caught:
        if issubclass(w.category, CohortWarning):
            key = (w.category.__name__, str(w.message))
            if key not in logged:  # stratification and survival check the same levels
                logged.add(key)
                logger.warning("%s: %s", *key)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    logger.info("%d patients analysed; report: %s", cohort.n_patients, out / "cohort.html")
    return 0
