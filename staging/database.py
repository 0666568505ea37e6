"""The study database: staging results, lesions, failures and clinical data in SQL.

SQLAlchemy 2.x Core. The default is an embedded SQLite file (``OUTDIR/results.db``, WAL
journal); any SQLAlchemy URL works, and PostgreSQL (``postgresql://...``, driver psycopg 3) is
tested against a real server. The layout is documented in ``docs/database.md``.

Writes happen in one transaction per study (:func:`record_study`, :func:`record_failure`), from
one process only (the batch parent), so concurrent workers never contend for the database. The
schema carries its version in the ``schema_version`` table; :func:`migrate` applies the pending
steps of :data:`MIGRATIONS` in order, each in its own transaction.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from imaging.errors import ConfigError, PipelineError

__all__ = [
    "CLINICAL_COLUMNS",
    "COUNT_CATEGORIES",
    "EXPORT_TABLES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DatabaseError",
    "StoredStudy",
    "bind_output_folder",
    "database_url",
    "delete_study",
    "export_table",
    "finish_run",
    "import_clinical",
    "migrate",
    "open_database",
    "read_clinical",
    "read_failures",
    "read_lesions",
    "read_results",
    "read_runs",
    "record_failure",
    "record_study",
    "schema_version",
    "start_run",
    "stored_studies",
]

logger = logging.getLogger(__name__)

COUNT_CATEGORIES: tuple[str, ...] = (
    "fossa", "node_pelvic", "node_extrapelvic", "bone", "visceral", "equivocal",
)
"""Keys of ``counts_by_category`` in staging.json; stored as columns ``count_<category>``."""

CLINICAL_COLUMNS: dict[str, str] = {
    "age": "float", "psa": "float", "months_from_rp": "float", "wprt": "bool", "adt": "bool",
    "pfs_months": "float", "pfs_event": "bool", "dm_months": "float", "dm_event": "bool",
    "os_months": "float", "os_event": "bool",
}
"""Typed columns of the ``clinical`` table; other CSV columns are kept in ``extra_json``."""

EXPORT_TABLES: tuple[str, ...] = ("patients", "lesions", "failures", "clinical", "runs")
"""What :func:`export_table` can write."""


class DatabaseError(PipelineError):
    """The study database cannot be used as asked (unreachable, newer schema, other output)."""


# --------------------------------------------------------------------------------------------
# Schema. Each table is created by exactly one migration step; a later change to a table is a
# new step (ALTER), never an edit of the definition a released step created.
# --------------------------------------------------------------------------------------------

metadata = sa.MetaData()

_schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

_database_info = sa.Table(
    "database_info", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("status", sa.String(16), nullable=False),  # running / finished / interrupted
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("out_dir", sa.Text, nullable=False),
    sa.Column("software_version", sa.String(32), nullable=False),
    sa.Column("config_hash", sa.String(128), nullable=False),
    sa.Column("config_json", sa.Text, nullable=False),
    sa.Column("jobs", sa.Integer, nullable=False),
    sa.Column("n_discovered", sa.Integer),
    sa.Column("n_staged", sa.Integer),
    sa.Column("n_skipped", sa.Integer),
    sa.Column("n_failed", sa.Integer),
)

_patients = sa.Table(
    "patients", metadata,
    sa.Column("patient_id", sa.String(128), primary_key=True),
    sa.Column("folder", sa.String(200), nullable=False, unique=True),
    sa.Column("first_run_id", sa.Integer, sa.ForeignKey("runs.run_id"), nullable=False),
)

_studies = sa.Table(
    "studies", metadata,
    sa.Column("study_key", sa.String(400), primary_key=True),  # "<patient folder>/<study folder>"
    sa.Column("patient_id", sa.String(128), sa.ForeignKey("patients.patient_id"),
              nullable=False, index=True),
    sa.Column("study_instance_uid", sa.String(128), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("config_hash", sa.String(128), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.run_id"), nullable=False),
    sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("output_dir", sa.Text, nullable=False),  # relative to the output folder
    sa.Column("result_digest", sa.String(64), nullable=False),  # sha256 of staging.json
    sa.Column("files_json", sa.Text, nullable=False),  # {relative path: size in bytes}
    sa.Column("elapsed_s", sa.Float),
)

_series = sa.Table(
    "series", metadata,
    sa.Column("study_key", sa.String(400), sa.ForeignKey("studies.study_key"), primary_key=True),
    sa.Column("role", sa.String(8), primary_key=True),  # pet / ct
    sa.Column("series_instance_uid", sa.String(128)),
    sa.Column("detail_json", sa.Text),
)

_result_columns: list[sa.Column[Any]] = [
    sa.Column("study_key", sa.String(400), sa.ForeignKey("studies.study_key"), primary_key=True),
    sa.Column("patient_id", sa.String(128), nullable=False, index=True),
    sa.Column("study_instance_uid", sa.String(128), nullable=False),
    sa.Column("mitnm", sa.String(64), nullable=False),
    sa.Column("group", sa.String(16), nullable=False),
    sa.Column("emmett_group", sa.String(32), nullable=False),
    sa.Column("lesion_count", sa.Integer, nullable=False),
    sa.Column("lesion_count_bin", sa.String(8), nullable=False),
    *[sa.Column(f"count_{c}", sa.Integer, nullable=False) for c in COUNT_CATEGORIES],
    sa.Column("psma_tv_ml", sa.Float),
    sa.Column("tl_psma", sa.Float),
    sa.Column("max_mipsma_score", sa.Integer),
    sa.Column("bone_pattern", sa.String(32)),
    sa.Column("needs_review", sa.Boolean, nullable=False),
    sa.Column("ref_blood_pool_suv", sa.Float),
    sa.Column("ref_liver_suv", sa.Float),
    sa.Column("ref_parotid_suv", sa.Float),
    sa.Column("anatomy_provider", sa.String(64)),
    sa.Column("software_version", sa.String(32)),
    sa.Column("config_hash", sa.String(128)),
    sa.Column("record_json", sa.Text, nullable=False),  # staging.json verbatim
]
_staging_results = sa.Table("staging_results", metadata, *_result_columns)

_lesions = sa.Table(
    "lesions", metadata,
    sa.Column("study_key", sa.String(400), sa.ForeignKey("studies.study_key"), primary_key=True),
    sa.Column("lesion_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("patient_id", sa.String(128), nullable=False, index=True),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("region", sa.String(64)),
    sa.Column("suv_max", sa.Float),
    sa.Column("suv_mean", sa.Float),
    sa.Column("suv_peak", sa.Float),
    sa.Column("volume_ml", sa.Float),
    sa.Column("tl_psma", sa.Float),
    sa.Column("centroid_x_mm", sa.Float),
    sa.Column("centroid_y_mm", sa.Float),
    sa.Column("centroid_z_mm", sa.Float),
    sa.Column("mipsma_score", sa.Integer),
    sa.Column("equivocal", sa.Boolean, nullable=False),
)

_failures = sa.Table(
    "failures", metadata,
    # one row per item currently failing: a study key, or "path:<source>" when discovery could
    # not tell which study the files belong to
    sa.Column("item_key", sa.String(500), primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.run_id"), nullable=False),
    sa.Column("patient_id", sa.String(128)),
    sa.Column("study_instance_uid", sa.String(128)),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("input_hash", sa.String(64)),
    sa.Column("config_hash", sa.String(128)),
    sa.Column("error_type", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
)

_clinical = sa.Table(
    "clinical", metadata,
    sa.Column("patient_id", sa.String(128), primary_key=True),
    *[sa.Column(name, sa.Float if kind == "float" else sa.Boolean)
      for name, kind in CLINICAL_COLUMNS.items()],
    sa.Column("extra_json", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
)


def _create(*tables: sa.Table) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        for table in tables:
            table.create(conn)
    return step


MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "staging results: runs, patients, studies, series, staging_results, lesions, failures",
     _create(_database_info, _runs, _patients, _studies, _series, _staging_results, _lesions,
             _failures)),
    (2, "clinical table for import-clinical", _create(_clinical)),
)
"""Ordered schema steps ``(version, description, step)``; append only."""

SCHEMA_VERSION: int = MIGRATIONS[-1][0]
"""The schema version this software writes."""


# --------------------------------------------------------------------------------------------
# Connecting and migrating
# --------------------------------------------------------------------------------------------

def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL for ``target``: a URL as given, or a file path as SQLite.

    ``postgresql://`` without a driver gets psycopg 3 (``postgresql+psycopg://``), the driver
    the ``postgres`` extra installs.

    Examples
    --------
    >>> database_url("postgresql://lab@db/psma")
    'postgresql+psycopg://lab@db/psma'
    >>> database_url(Path("/data/out/results.db"))
    'sqlite:////data/out/results.db'
    """
    text = str(target)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith("postgresql://") or text.startswith("postgres://"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_database(target: str | Path, *, create: bool = True) -> Engine:
    """Connect to the study database and bring its schema up to :data:`SCHEMA_VERSION`.

    Parameters
    ----------
    target : str or Path
        A SQLAlchemy URL or a SQLite file path.
    create : bool
        Create (and migrate) the schema when missing. With ``False`` an empty or absent database
        raises :class:`DatabaseError` (the export and read functions use this).

    Returns
    -------
    sqlalchemy.engine.Engine

    Raises
    ------
    ConfigError
        If the URL is malformed or its driver is not installed.
    DatabaseError
        If the server cannot be reached, the schema is newer than this software, or the
        database holds no psma-stage schema and ``create`` is False.
    """
    url = database_url(target)
    try:
        sa_url = sa.engine.make_url(url)
    except ArgumentError as err:
        raise ConfigError(
            f"--db {target!r} is not a database URL; give a file path (SQLite) or a SQLAlchemy "
            "URL such as postgresql://user@host/dbname."
        ) from err
    if sa_url.get_backend_name() == "sqlite" and sa_url.database not in (None, "", ":memory:"):
        db_file = Path(sa_url.database)
        if not create and not db_file.exists():
            raise DatabaseError(
                f"Database file {db_file} does not exist; run `psma-stage run` first or check "
                "--db."
            )
        db_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        raise ConfigError(
            f"No driver for database URL scheme {sa_url.drivername!r} ({err}); for PostgreSQL "
            "install the extra: pip install 'psma-stage[postgres]'."
        ) from err
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _on_sqlite_connect)
    try:
        version = schema_version(engine)
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"Database {sa_url.render_as_string(hide_password=True)} has schema version "
                f"{version}, newer than this psma-stage ({SCHEMA_VERSION}); upgrade psma-stage."
            )
        if version == 0 and not create:
            raise DatabaseError(
                f"Database {sa_url.render_as_string(hide_password=True)} holds no psma-stage "
                "results; run `psma-stage run` first or check --db."
            )
        if version < SCHEMA_VERSION:
            migrate(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except OperationalError as err:
        engine.dispose()
        raise DatabaseError(
            f"Cannot use database {sa_url.render_as_string(hide_password=True)}: "
            f"{str(err.orig).strip().splitlines()[0] if err.orig else err}. Check the URL, that "
            "the server is running, and the credentials."
        ) from err
    return engine


def schema_version(engine: Engine) -> int:
    """The schema version stored in the database (0 for an empty database)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        value = conn.execute(sa.select(sa.func.max(_schema_version.c.version))).scalar()
    return int(value or 0)


def migrate(engine: Engine, *, to_version: int = SCHEMA_VERSION) -> int:
    """Apply the pending steps of :data:`MIGRATIONS` up to ``to_version``; return the version.

    Each step and its ``schema_version`` row commit together, so an interrupted migration leaves
    the database at the last completed version (PostgreSQL and SQLite both have transactional
    DDL).
    """
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            _schema_version.create(conn)
    current = schema_version(engine)
    for version, description, step in MIGRATIONS:
        if version <= current or version > to_version:
            continue
        with engine.begin() as conn:
            step(conn)
            conn.execute(sa.insert(_schema_version).values(
                version=version, description=description, applied_at=_now()))
        logger.info("database schema migrated to version %d (%s)", version, description)
        current = version
    return current


def bind_output_folder(engine: Engine, *, outdir_id: str, out_dir: Path) -> None:
    """Tie the database to one output folder, or check that it is tied to this one.

    A database mirrors exactly one output folder, so that crash recovery can compare the two.

    Raises
    ------
    DatabaseError
        If the database already holds the results of another output folder.
    """
    with engine.begin() as conn:
        row = conn.execute(sa.select(_database_info.c.value)
                           .where(_database_info.c.key == "outdir_id")).scalar()
        if row is None:
            conn.execute(sa.insert(_database_info), [
                {"key": "outdir_id", "value": outdir_id},
                {"key": "out_dir", "value": str(out_dir)},
            ])
            return
        if row != outdir_id:
            first = conn.execute(sa.select(_database_info.c.value)
                                 .where(_database_info.c.key == "out_dir")).scalar()
            raise DatabaseError(
                f"The database already holds the results of another output folder ({first}); "
                f"a database mirrors one output folder. Use a new database for {out_dir} "
                "(--db), or the output folder it belongs to."
            )


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def start_run(engine: Engine, *, input: str, out_dir: Path, software_version: str,
              config_hash: str, config: Mapping[str, Any], jobs: int) -> int:
    """Insert a ``runs`` row with status ``running``; return its ``run_id``."""
    with engine.begin() as conn:
        result = conn.execute(sa.insert(_runs).values(
            status="running", started_at=_now(), input=input, out_dir=str(out_dir),
            software_version=software_version, config_hash=config_hash,
            config_json=json.dumps(dict(config), sort_keys=True, default=str), jobs=jobs,
        ).returning(_runs.c.run_id))
        return int(result.scalar_one())


def finish_run(engine: Engine, run_id: int, *, status: str, n_discovered: int, n_staged: int,
               n_skipped: int, n_failed: int) -> None:
    """Close a run with its final status and counts."""
    with engine.begin() as conn:
        conn.execute(sa.update(_runs).where(_runs.c.run_id == run_id).values(
            status=status, finished_at=_now(), n_discovered=n_discovered, n_staged=n_staged,
            n_skipped=n_skipped, n_failed=n_failed))


def mark_interrupted_runs(engine: Engine) -> int:
    """Mark runs left ``running`` by a killed process as ``interrupted``; return how many."""
    with engine.begin() as conn:
        result = conn.execute(sa.update(_runs).where(_runs.c.status == "running")
                              .values(status="interrupted"))
        return int(result.rowcount or 0)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _result_row(key: str, record: Mapping[str, Any]) -> dict[str, Any]:
    counts = record.get("counts_by_category") or {}
    ref = record.get("reference_suv") or {}

    def ref_mean(name: str) -> float | None:
        value = ref.get(name)
        if isinstance(value, Mapping):
            value = value.get("suv_mean")
        return _num(value)

    return {
        "study_key": key,
        "patient_id": str(record["patient_id"]),
        "study_instance_uid": str(record.get("study_instance_uid") or ""),
        "mitnm": str(record["mitnm"]),
        "group": str(record["group"]),
        "emmett_group": str(record["emmett_group"]),
        "lesion_count": int(record["lesion_count"]),
        "lesion_count_bin": str(record["lesion_count_bin"]),
        **{f"count_{c}": int(counts.get(c, 0)) for c in COUNT_CATEGORIES},
        "psma_tv_ml": _num(record.get("psma_tv_ml")),
        "tl_psma": _num(record.get("tl_psma")),
        "max_mipsma_score": _int(record.get("max_mipsma_score")),
        "bone_pattern": record.get("bone_pattern"),
        "needs_review": bool(record.get("needs_review", False)),
        "ref_blood_pool_suv": ref_mean("blood_pool"),
        "ref_liver_suv": ref_mean("liver"),
        "ref_parotid_suv": ref_mean("parotid"),
        "anatomy_provider": record.get("anatomy_provider"),
        "software_version": record.get("software_version"),
        "config_hash": record.get("config_hash"),
        "record_json": json.dumps(record, sort_keys=True, default=str),
    }


def _lesion_rows(key: str, patient_id: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for lesion in record.get("lesions") or ():
        centroid = list(lesion.get("centroid_mm") or (None, None, None))
        rows.append({
            "study_key": key,
            "lesion_id": int(lesion["id"]),
            "patient_id": patient_id,
            "category": str(lesion["category"]),
            "region": lesion.get("region"),
            "suv_max": _num(lesion.get("suv_max")),
            "suv_mean": _num(lesion.get("suv_mean")),
            "suv_peak": _num(lesion.get("suv_peak")),
            "volume_ml": _num(lesion.get("volume_ml")),
            "tl_psma": _num(lesion.get("tl_psma")),
            "centroid_x_mm": _num(centroid[0]),
            "centroid_y_mm": _num(centroid[1]),
            "centroid_z_mm": _num(centroid[2]),
            "mipsma_score": _int(lesion.get("mipsma_score")),
            "equivocal": bool(lesion.get("equivocal", False)),
        })
    return rows


def _series_rows(key: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for role, value in (record.get("series") or {}).items():
        if value is None:
            continue
        uid = value.get("series_instance_uid") if isinstance(value, Mapping) else value
        rows.append({
            "study_key": key, "role": str(role), "series_instance_uid": None if uid is None
            else str(uid), "detail_json": json.dumps(value, sort_keys=True, default=str),
        })
    return rows


def _delete_study_rows(conn: Connection, key: str) -> None:
    for table in (_lesions, _series, _staging_results, _studies):
        conn.execute(sa.delete(table).where(table.c.study_key == key))


def record_study(engine: Engine, *, run_id: int, key: str, record: Mapping[str, Any],
                 source: str, input_hash: str, config_hash: str, result_digest: str,
                 files: Mapping[str, int], elapsed_s: float | None = None) -> None:
    """Store one staged study in ONE transaction, replacing any earlier result of that study.

    Parameters
    ----------
    run_id : int
        The run that staged it.
    key : str
        ``"<patient folder>/<study folder>"``: the study's folder relative to the output folder,
        and its primary key.
    record : mapping
        The staging.json content.
    source : str
        Where the study was read from (for people; not parsed).
    input_hash, config_hash : str
        What ``--resume`` compares.
    result_digest : str
        sha256 of the staging.json file in the study folder (crash recovery compares it).
    files : mapping of str to int
        Every file of the study folder (relative path -> size in bytes).
    elapsed_s : float, optional
        Wall time of staging the study.

    Raises
    ------
    KeyError
        If ``record`` lacks a patient-level staging.json key.
    """
    patient_id = str(record["patient_id"])
    folder = key.split("/", 1)[0]
    result_row = _result_row(key, record)
    lesion_rows = _lesion_rows(key, patient_id, record)
    series_rows = _series_rows(key, record)
    with engine.begin() as conn:
        _delete_study_rows(conn, key)
        known = conn.execute(sa.select(_patients.c.folder)
                             .where(_patients.c.patient_id == patient_id)).scalar()
        if known is None:
            conn.execute(sa.insert(_patients).values(patient_id=patient_id, folder=folder,
                                                     first_run_id=run_id))
        conn.execute(sa.insert(_studies).values(
            study_key=key, patient_id=patient_id,
            study_instance_uid=result_row["study_instance_uid"], source=source,
            input_hash=input_hash, config_hash=config_hash, run_id=run_id, staged_at=_now(),
            output_dir=key, result_digest=result_digest,
            files_json=json.dumps(dict(files), sort_keys=True), elapsed_s=elapsed_s))
        if series_rows:
            conn.execute(sa.insert(_series), series_rows)
        conn.execute(sa.insert(_staging_results).values(**result_row))
        if lesion_rows:
            conn.execute(sa.insert(_lesions), lesion_rows)
        conn.execute(sa.delete(_failures).where(_failures.c.item_key == key))


def record_failure(engine: Engine, *, run_id: int, item_key: str, source: str,
                   error_type: str, message: str, patient_id: str | None = None,
                   study_instance_uid: str | None = None, input_hash: str | None = None,
                   config_hash: str | None = None) -> None:
    """Record that an item failed in this run (one transaction; one row per failing item).

    An earlier staged result of the same study, if any, is kept: it is complete and consistent
    with the inputs and configuration it records.
    """
    with engine.begin() as conn:
        attempts = conn.execute(sa.select(_failures.c.attempts)
                                .where(_failures.c.item_key == item_key)).scalar()
        conn.execute(sa.delete(_failures).where(_failures.c.item_key == item_key))
        conn.execute(sa.insert(_failures).values(
            item_key=item_key, run_id=run_id, patient_id=patient_id,
            study_instance_uid=study_instance_uid, source=source, input_hash=input_hash,
            config_hash=config_hash, error_type=error_type, message=message,
            attempts=int(attempts or 0) + 1, failed_at=_now()))


def clear_failure(engine: Engine, item_key: str) -> None:
    """Forget the failure of an item that no longer fails (e.g. now skipped as unchanged)."""
    with engine.begin() as conn:
        conn.execute(sa.delete(_failures).where(_failures.c.item_key == item_key))


def delete_study(engine: Engine, key: str) -> None:
    """Remove every row of one study (one transaction); crash recovery uses it."""
    with engine.begin() as conn:
        _delete_study_rows(conn, key)


@dataclass(frozen=True, slots=True)
class StoredStudy:
    """What the database knows about one staged study (for resume and crash recovery)."""

    key: str
    input_hash: str
    config_hash: str
    result_digest: str
    files: Mapping[str, int]


def stored_studies(engine: Engine) -> dict[str, StoredStudy]:
    """Every staged study, by key."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(
            _studies.c.study_key, _studies.c.input_hash, _studies.c.config_hash,
            _studies.c.result_digest, _studies.c.files_json)).all()
    return {r.study_key: StoredStudy(r.study_key, r.input_hash, r.config_hash, r.result_digest,
                                     json.loads(r.files_json)) for r in rows}


# --------------------------------------------------------------------------------------------
# Reading and exporting
# --------------------------------------------------------------------------------------------

def _engine_for(target: str | Path | Engine) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return open_database(target, create=False), True


def _read(target: str | Path | Engine, query: sa.Select[Any]) -> pd.DataFrame:
    engine, owned = _engine_for(target)
    try:
        with engine.connect() as conn:
            return pd.read_sql(query, conn)
    except SQLAlchemyError as err:
        raise DatabaseError(f"Reading the study database failed: {err}") from err
    finally:
        if owned:
            engine.dispose()


def read_results(target: str | Path | Engine) -> pd.DataFrame:
    """One row per staged study: the patient-level staging.json fields.

    Parameters
    ----------
    target : str, Path or Engine
        Database URL, SQLite path, or an open engine.

    Returns
    -------
    pandas.DataFrame
        Columns ``patient_id, study_instance_uid, study_key, mitnm, group, emmett_group,
        lesion_count, lesion_count_bin, count_fossa, count_node_pelvic, count_node_extrapelvic,
        count_bone, count_visceral, count_equivocal, psma_tv_ml, tl_psma, max_mipsma_score,
        bone_pattern, needs_review, ref_blood_pool_suv, ref_liver_suv, ref_parotid_suv,
        anatomy_provider, software_version, config_hash, run_id, staged_at``, sorted by
        patient_id then study_instance_uid.

    Raises
    ------
    DatabaseError
        If the database is absent, unreachable, or holds no psma-stage schema.
    """
    r = _staging_results.c
    cols = [r.patient_id, r.study_instance_uid, r.study_key, r.mitnm, r.group, r.emmett_group,
            r.lesion_count, r.lesion_count_bin, *[r[f"count_{c}"] for c in COUNT_CATEGORIES],
            r.psma_tv_ml, r.tl_psma, r.max_mipsma_score, r.bone_pattern, r.needs_review,
            r.ref_blood_pool_suv, r.ref_liver_suv, r.ref_parotid_suv, r.anatomy_provider,
            r.software_version, r.config_hash, _studies.c.run_id, _studies.c.staged_at]
    query = (sa.select(*cols).select_from(_staging_results.join(_studies))
             .order_by(r.patient_id, r.study_instance_uid))
    frame = _read(target, query)
    frame["needs_review"] = frame["needs_review"].astype(bool)
    return frame


def read_lesions(target: str | Path | Engine) -> pd.DataFrame:
    """One row per lesion of every staged study.

    Returns
    -------
    pandas.DataFrame
        Columns ``patient_id, study_instance_uid, study_key, lesion_id, category, region,
        suv_max, suv_mean, suv_peak, volume_ml, tl_psma, centroid_x_mm, centroid_y_mm,
        centroid_z_mm, mipsma_score, equivocal`` (LPS mm), sorted by study then lesion id.
    """
    lz = _lesions.c
    query = (sa.select(lz.patient_id, _studies.c.study_instance_uid, lz.study_key, lz.lesion_id,
                       lz.category, lz.region, lz.suv_max, lz.suv_mean, lz.suv_peak,
                       lz.volume_ml, lz.tl_psma, lz.centroid_x_mm, lz.centroid_y_mm,
                       lz.centroid_z_mm, lz.mipsma_score, lz.equivocal)
             .select_from(_lesions.join(_studies))
             .order_by(lz.patient_id, lz.study_key, lz.lesion_id))
    frame = _read(target, query)
    frame["equivocal"] = frame["equivocal"].astype(bool)
    return frame


def read_failures(target: str | Path | Engine) -> pd.DataFrame:
    """The items failing as of their latest attempt (one row each)."""
    f = _failures.c
    return _read(target, sa.select(f.item_key, f.patient_id, f.study_instance_uid, f.source,
                                   f.error_type, f.message, f.attempts, f.run_id, f.failed_at)
                 .order_by(f.item_key))


def read_clinical(target: str | Path | Engine) -> pd.DataFrame:
    """The imported clinical table: typed columns, then the extra columns of the CSV."""
    c = _clinical.c
    frame = _read(target, sa.select(c.patient_id, *[c[n] for n in CLINICAL_COLUMNS],
                                    c.extra_json).order_by(c.patient_id))
    extras = pd.DataFrame([json.loads(x) for x in frame.pop("extra_json")], index=frame.index)
    return pd.concat([frame, extras], axis=1) if len(extras.columns) else frame


def read_runs(target: str | Path | Engine) -> pd.DataFrame:
    """Every run: status, start/end, software version, configuration hash and counts."""
    r = _runs.c
    return _read(target, sa.select(r.run_id, r.status, r.started_at, r.finished_at, r.input,
                                   r.software_version, r.config_hash, r.jobs, r.n_discovered,
                                   r.n_staged, r.n_skipped, r.n_failed).order_by(r.run_id))


def export_table(target: str | Path | Engine, path: Path, *, what: str = "patients") -> int:
    """Write one tidy table to CSV or Parquet (by the suffix of ``path``); return its rows.

    ``patients`` is one row per staged study (:func:`read_results`) with the clinical columns
    joined on ``patient_id`` when clinical data was imported; ``lesions`` one row per lesion;
    ``failures``, ``clinical`` and ``runs`` the tables of those names.

    Raises
    ------
    ConfigError
        If ``what`` or the file suffix is not supported, or Parquet support is not installed.
    """
    if what not in EXPORT_TABLES:
        raise ConfigError(f"--what must be one of {list(EXPORT_TABLES)}, got {what!r}.")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(
            f"Cannot tell the format of {path}: use a .csv or .parquet file name.")
    engine, owned = _engine_for(target)
    try:
        readers: dict[str, Callable[[Engine], pd.DataFrame]] = {
            "patients": read_results, "lesions": read_lesions, "failures": read_failures,
            "clinical": read_clinical, "runs": read_runs}
        frame = readers[what](engine)
        if what == "patients":
            clinical = read_clinical(engine)
            if len(clinical):
                frame = frame.merge(clinical, on="patient_id", how="left")
    finally:
        if owned:
            engine.dispose()
    for column in frame.columns:  # timezone-aware datetimes as ISO text: portable to R/SPSS
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        try:
            frame.to_parquet(path, index=False)
        except ImportError as err:
            raise ConfigError(
                f"Writing {path} needs pyarrow: pip install 'psma-stage[parquet]', or export "
                "to .csv."
            ) from err
    return len(frame)


# --------------------------------------------------------------------------------------------
# Clinical data
# --------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _parse_clinical_value(value: Any, kind: str, *, column: str, row: int,
                          path: Path) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    text = str(value).strip()
    if kind == "float":
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(
                f"{path}: row {row}, column {column!r}: {text!r} is not a number; fix the "
                "value or leave the cell empty for unknown.")
        return number
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(
        f"{path}: row {row}, column {column!r}: {text!r} is not a yes/no value (use 1/0, "
        "true/false or yes/no; empty for unknown).")


def import_clinical(target: str | Path | Engine, csv_path: Path) -> int:
    """Insert or replace the clinical rows of a CSV (keyed by ``patient_id``); return the count.

    The columns of :data:`CLINICAL_COLUMNS` are typed (numbers; events and treatments as
    yes/no); other columns are kept as text in ``extra_json``. The whole file is checked before
    anything is written, and written in one transaction.

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, has no ``patient_id`` column, repeats a patient,
        or holds a value of the wrong type (the message names row and column).
    """
    if not csv_path.is_file():
        raise ConfigError(f"Clinical table {csv_path} does not exist.")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{csv_path}: not a readable CSV table ({err}).") from err
    table.columns = [str(c).strip() for c in table.columns]
    if "patient_id" not in table.columns:
        raise ConfigError(
            f"{csv_path}: no 'patient_id' column (found {list(table.columns)}); the clinical "
            "table needs one row per patient with a patient_id column.")
    ids = table["patient_id"].str.strip()
    if (ids == "").any():
        empty_row = int((ids == "").to_numpy().argmax()) + 2
        raise ConfigError(f"{csv_path}: row {empty_row} has an empty patient_id.")
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise ConfigError(
            f"{csv_path}: {len(duplicated)} patient_id value(s) appear more than once; keep "
            "one row per patient.")
    extra_columns = [c for c in table.columns if c != "patient_id" and c not in CLINICAL_COLUMNS]
    imported_at = _now()
    rows = []
    for index, record in enumerate(table.to_dict(orient="records")):
        row_number = index + 2  # header is row 1
        row: dict[str, Any] = {"patient_id": str(record["patient_id"]).strip()}
        for name, kind in CLINICAL_COLUMNS.items():
            row[name] = _parse_clinical_value(record.get(name), kind, column=name,
                                              row=row_number, path=csv_path)
        row["extra_json"] = json.dumps({c: record[c] for c in extra_columns}, sort_keys=True)
        row["source"] = str(csv_path)
        row["imported_at"] = imported_at
        rows.append(row)
    engine, owned = _engine_for_write(target)
    try:
        with engine.begin() as conn:
            for chunk in _chunks([r["patient_id"] for r in rows], 500):
                conn.execute(sa.delete(_clinical).where(_clinical.c.patient_id.in_(chunk)))
            if rows:
                conn.execute(sa.insert(_clinical), rows)
    finally:
        if owned:
            engine.dispose()
    if extra_columns:
        logger.info("clinical: kept %d extra column(s) as text: %s", len(extra_columns),
                    ", ".join(extra_columns))
    return len(rows)


def _engine_for_write(target: str | Path | Engine) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return open_database(target, create=True), True


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
