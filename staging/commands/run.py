"""``psma-stage run``, ``export`` and ``import-clinical``: a cohort into the study database."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from imaging.errors import ConfigError
from staging import batch
from staging import database as db

__all__ = ["register"]

logger = logging.getLogger(__name__)

_RUN_DESCRIPTION = """\
Stage every study of a cohort, in parallel, into OUTDIR/<patient>/<study>/ and the study
database (default OUTDIR/results.db, SQLite; --db takes any SQLAlchemy URL, e.g.
postgresql://user@host/db).

INPUT is a folder tree of DICOM files in any layout (studies are found by their UIDs) or a
manifest CSV (columns patient_id and path, or patient_id, pet and ct for NIfTI).

A study that fails (unreadable file, missing dose, no CT, ...) is recorded with its reason in
the `failures` table and the run goes on. Rerunning the same command resumes: unchanged studies
(same input files and configuration hash) are skipped, the others staged. An interrupted run
(Ctrl-C, kill -9, power cut) never leaves a half-written study; rerun it to finish.

Exit codes: 0 all studies staged or unchanged, 1 some failed, 2 usage or configuration error.
"""


def register(subparsers: Any) -> None:
    """Add the ``run``, ``export`` and ``import-clinical`` subcommands."""
    run = subparsers.add_parser(
        "run", help="stage a whole cohort in parallel into a study database",
        description=_RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("input", type=Path, metavar="INPUT",
                     help="folder tree of DICOM studies, or a manifest .csv")
    run.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR",
                     help="output folder (new, empty, or an earlier run's)")
    run.add_argument("--db", metavar="URL", default=None,
                     help="SQLAlchemy URL or SQLite file (default: OUTDIR/results.db)")
    run.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                     help="worker processes (default: number of cores)")
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="pipeline configuration TOML (defaults < file)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     dest="settings",
                     help="override one configuration key (repeatable), as in `psma-stage "
                     "stage`, e.g. staging.pelvic_boundary=common_iliac_bifurcation")
    run.add_argument("--manifest", type=Path, default=None, metavar="CSV",
                     help="manifest CSV listing the studies (instead of discovering INPUT)")
    run.add_argument("--resume", action="store_true",
                     help="skip studies whose inputs and configuration are unchanged (the "
                     "default whenever OUTDIR holds an earlier run; kept for explicitness)")
    run.add_argument("--force", action="store_true",
                     help="restage every study, even unchanged ones")
    run.add_argument("--fail-fast", action="store_true",
                     help="stop at the first failed study (running ones finish and are kept)")
    run.add_argument("--limit", type=int, default=None, metavar="N",
                     help="stage only the first N studies (in patient/study order)")
    run.add_argument("--validate", action="store_true",
                     help="dry run: discovery and header checks only; print what would be "
                     "staged, skipped and what would fail, write nothing")
    run.set_defaults(func=_run)

    export = subparsers.add_parser(
        "export", help="write a tidy table of the study database to CSV or Parquet",
        description="Write one tidy table of the study database for statistics software: "
        "`patients` (one row per staged study, clinical columns joined when imported), "
        "`lesions` (one row per lesion), `failures`, `clinical` or `runs`. The format follows "
        "the file suffix (.csv or .parquet).")
    export.add_argument("--db", required=True, metavar="URL",
                        help="SQLAlchemy URL or SQLite file (e.g. OUTDIR/results.db)")
    export.add_argument("-o", "--out", type=Path, required=True, metavar="FILE",
                        help="output .csv or .parquet file")
    export.add_argument("--what", choices=db.EXPORT_TABLES, default="patients",
                        help="which table (default: patients)")
    export.set_defaults(func=_export)

    clinical = subparsers.add_parser(
        "import-clinical", help="import a clinical table (one row per patient) into the database",
        description="Insert or replace clinical rows keyed by patient_id. Typed columns: "
        + ", ".join(db.CLINICAL_COLUMNS) + " (numbers; events and treatments as 1/0, "
        "true/false or yes/no; empty = unknown). Other columns are kept as text. The whole "
        "file is checked before anything is written.")
    clinical.add_argument("csv", type=Path, metavar="CLINICAL_CSV", help="the clinical table")
    clinical.add_argument("--db", required=True, metavar="URL",
                          help="SQLAlchemy URL or SQLite file (e.g. OUTDIR/results.db)")
    clinical.set_defaults(func=_import_clinical)


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------

def _load_config(path: Path | None, settings: list[str]) -> Any:
    from staging.config import load_config, parse_assignments

    if path is not None and not path.is_file():
        raise ConfigError(f"Configuration file {path} does not exist.")
    return load_config(path, **parse_assignments(settings))


def _run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}.")
    config = _load_config(args.config, args.settings)
    started = time.perf_counter()
    items = batch.discover_batch(args.input, manifest=args.manifest)
    if args.limit is not None:
        items = items[: args.limit]
    logger.info("found %d stud%s in %s in %.1f s", len(items), "y" if len(items) == 1 else "ies",
                args.input, time.perf_counter() - started)
    if args.validate:
        return _validate(items, args, config)
    with _progress(sys.stderr) as report:
        summary = batch.run_batch(items, args.out, config=config, db_url=args.db,
                                  jobs=args.jobs, force=args.force, fail_fast=args.fail_fast,
                                  input_label=str(args.input), progress=report)
    _print_summary(summary, args, sys.stdout)
    return summary.exit_code


def _validate(items: list[batch.BatchItem], args: argparse.Namespace, config: Any) -> int:
    stored: dict[str, db.StoredStudy] = {}
    target = args.db if args.db is not None else args.out / "results.db"
    if args.db is not None or (args.out / "results.db").is_file():
        with contextlib.suppress(db.DatabaseError):
            engine = db.open_database(target, create=False)
            try:
                stored = db.stored_studies(engine)
            finally:
                engine.dispose()
    plan = batch.plan_batch(items, stored=stored, config_hash=config.hash(),
                            force=args.force, check_headers=True, config=config)
    out = sys.stdout
    width = max([len(p.item.label) for p in plan] + [5])
    print(f"{'study':<{width}}  action  reason", file=out)
    for planned in plan:
        print(f"{planned.item.label:<{width}}  {planned.action:<6}  {planned.reason}", file=out)
    counts = {a: sum(p.action == a for p in plan) for a in ("stage", "skip", "fail")}
    print(f"\nwould stage {counts['stage']}, skip {counts['skip']} unchanged, "
          f"and {counts['fail']} would fail (dry run: nothing written)", file=out)
    return 1 if counts["fail"] else 0


class _Reporter:
    """Progress: a tqdm bar on a terminal, plain log lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.tty = stream.isatty()
        self.stream = stream
        self.bar: Any = None
        self.start = time.monotonic()
        self.worked = 0
        self.started = False

    def __call__(self, event: batch.BatchEvent) -> None:
        if not self.started:
            if event.kind == "start":
                self._start(event)
            elif event.kind == "failed":
                logger.info("%s failed before staging (see the summary)", event.label)
            return
        self.worked += 1
        remaining = event.total - event.done
        elapsed = time.monotonic() - self.start
        rate_h = self.worked / elapsed * 3600 if elapsed > 0 else 0.0
        eta = remaining / rate_h * 3600 if rate_h > 0 else None
        if self.bar is not None:
            self.bar.set_postfix(ok=event.staged, skipped=event.skipped, failed=event.failed,
                                 refresh=False)
            self.bar.update(1)
            return
        logger.info("[%d/%d] %s %s; %d staged, %d failed, %d remaining; %.1f studies/h; ETA %s",
                    event.done, event.total, event.label, event.kind, event.staged,
                    event.failed, remaining, rate_h, _duration(eta) if eta is not None else "-")

    def _start(self, event: batch.BatchEvent) -> None:
        """Staging starts: the unchanged studies and discovery failures are already counted."""
        self.started = True
        self.start = time.monotonic()
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=event.total, unit="study", file=self.stream,
                            desc="staging", dynamic_ncols=True, initial=event.done)
            self.bar.set_postfix(ok=event.staged, skipped=event.skipped, failed=event.failed)
        else:
            logger.info("%d studies: %d unchanged (skipped), %d failed before staging, "
                        "%d to stage", event.total, event.skipped, event.failed,
                        event.total - event.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _progress(stream: TextIO) -> Iterator[_Reporter]:
    reporter = _Reporter(stream)
    if reporter.tty:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            try:
                yield reporter
            finally:
                reporter.close()
    else:
        yield reporter


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_summary(summary: batch.BatchSummary, args: argparse.Namespace, out: TextIO) -> None:
    from staging.models import GROUPS

    results = db.read_results(summary.database_url if args.db is None else args.db)
    lesions = db.read_lesions(summary.database_url if args.db is None else args.db)
    failures = db.read_failures(summary.database_url if args.db is None else args.db)
    line = (f"Staged {summary.n_staged}, unchanged {summary.n_skipped}, failed "
            f"{summary.n_failed} of {summary.n_items} studies in {_duration(summary.elapsed_s)}")
    if summary.not_attempted:
        line += f"; {summary.not_attempted} not attempted (--fail-fast)"
    if summary.recovered:
        line += f"; {len(summary.recovered)} interrupted result(s) recovered and restaged"
    print(line + ".", file=out)
    print(f"\nThe database now holds {len(results)} staged studies of "
          f"{results['patient_id'].nunique() if len(results) else 0} patients.", file=out)
    groups = (results.groupby("group")["patient_id"].nunique() if len(results) else {})
    cats = (lesions.groupby("category").size() if len(lesions) else {})
    left = [("Patients per group", "")] + [(f"  {g}", str(int(groups.get(g, 0))))
                                           for g in GROUPS]
    right = [("Lesions per category", "")] + [(f"  {c}", str(int(cats.get(c, 0))))
                                              for c in db.COUNT_CATEGORIES]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", "")
        b = right[i] if i < len(right) else ("", "")
        print(f"{a[0]:<22}{a[1]:>5}      {b[0]:<24}{b[1]:>5}", file=out)
    print(f"\nFailures: {len(failures)}", file=out)
    for row in failures.itertuples():
        print(f"  {row.item_key}: {row.error_type}: {row.message}", file=out)
    example = next((summary.out_dir / key for key in results.get("study_key", [])), None)
    print(f"\nResults:  {summary.out_dir}/<patient>/<study>/", file=out)
    if example is not None and example.is_dir():
        names = sorted(p.name for p in example.iterdir())
        print(f"          each holding {', '.join(names)}", file=out)
        report = next((example / n for n in names if n.endswith(".html")), None)
        if report is not None:
            print(f"          e.g. open {report}", file=out)
    print(f"Database: {summary.database_url}", file=out)
    print(f"          psma-stage export --db {args.db or summary.database_url} -o cohort.csv",
          file=out)


# --------------------------------------------------------------------------------------------
# export, import-clinical
# --------------------------------------------------------------------------------------------

def _export(args: argparse.Namespace) -> int:
    rows = db.export_table(args.db, args.out, what=args.what)
    print(f"wrote {rows} row(s) of {args.what} to {args.out}")
    return 0


def _import_clinical(args: argparse.Namespace) -> int:
    rows = db.import_clinical(args.db, args.csv)
    print(f"imported {rows} clinical row(s) from {args.csv}")
    return 0
