"""Cohort inputs: staging results and a clinical table, validated and joined on ``patient_id``.

Staging results come from a CSV export, from ``staging.json`` files (one per study) or from
the study database (:func:`staging.database.read_results`); the clinical table from a CSV file
or the database's ``clinical`` table. Both are joined into a :class:`Cohort`, one row per
patient; patients present on one side only are reported (warning and ``Cohort.only_in_*``),
never dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imaging.errors import ConfigError
from staging.cohort.errors import CohortError, CohortNote, UnmatchedPatientsWarning, _warn

__all__ = [
    "Cohort",
    "join_cohort",
    "read_clinical_table",
    "read_staging_database",
    "read_staging_results",
    "require_columns",
    "validate_binary",
    "validate_survival_columns",
]

logger = logging.getLogger(__name__)

_ID = "patient_id"
_MAX_LISTED = 10


def _listing(ids: Sequence[Any]) -> str:
    shown = [str(i) for i in list(ids)[:_MAX_LISTED]]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _flatten_staging_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Patient-level scalars of a staging.json record (lesion list and provenance left out)."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key == "counts_by_category" and isinstance(value, Mapping):
            row.update({f"count_{k}": v for k, v in value.items()})
        elif key == "reference_suv" and isinstance(value, Mapping):
            row.update({f"ref_{k}_suv": v for k, v in value.items()})
        elif isinstance(value, str | int | float | bool) or value is None:
            row[key] = value
    return row


def read_staging_results(sources: Path | str | Sequence[Path | str]) -> pd.DataFrame:
    """Read staging results from a CSV export or from ``staging.json`` files.

    Parameters
    ----------
    sources : path or sequence of paths
        A ``.csv`` file (one row per study, e.g. ``psma-stage db export``), ``staging.json``
        files, or folders searched recursively for ``staging.json``.

    Returns
    -------
    pandas.DataFrame
        One row per study; ``counts_by_category`` becomes ``count_<category>`` columns and
        ``reference_suv`` becomes ``ref_<organ>_suv``; ``patient_id`` is a string.

    Raises
    ------
    ConfigError
        If a path does not exist, a folder holds no ``staging.json``, or a suffix is unknown.
    CohortError
        If a file cannot be parsed or lacks ``patient_id``.
    """
    paths = [Path(sources)] if isinstance(sources, str | Path) else [Path(p) for p in sources]
    if not paths:
        raise ConfigError("No staging results given; pass a CSV export or staging.json files.")
    frames: list[pd.DataFrame] = []
    records: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: staging results not found; check the path.")
        if path.is_dir():
            found = sorted(path.rglob("staging.json"))
            if not found:
                raise ConfigError(
                    f"{path}: no staging.json below this folder; point --staging at the output "
                    "folder of `psma-stage run` or at a CSV export."
                )
            records += [_read_json_record(p) for p in found]
        elif path.suffix.lower() == ".json":
            records.append(_read_json_record(path))
        elif path.suffix.lower() in {".csv", ".tsv"}:
            frames.append(_read_csv(path))
        else:
            raise ConfigError(
                f"{path}: unknown staging-results format {path.suffix!r}; give a .csv export or "
                "staging.json files."
            )
    if records:
        frames.append(pd.DataFrame.from_records(records))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if _ID not in frame.columns:
        raise CohortError(
            f"staging results {', '.join(map(str, paths))} have no 'patient_id' column; "
            f"columns found: {sorted(frame.columns)}."
        )
    frame[_ID] = frame[_ID].astype(str).str.strip()
    logger.info("read %d staging results from %d source(s)", len(frame), len(paths))
    return frame


def _read_json_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CohortError(f"{path}: cannot read staging.json ({err}); restage the study.") from err
    if not isinstance(record, dict) or _ID not in record:
        raise CohortError(f"{path}: not a staging.json record (no 'patient_id' key).")
    row = _flatten_staging_record(record)
    row["source"] = str(path)
    return row


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                           dtype={_ID: str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as err:
        raise CohortError(f"{path}: cannot read the table ({err}).") from err


def read_staging_database(url: str) -> pd.DataFrame:
    """Staging results of the study database (:func:`staging.database.read_results`).

    Parameters
    ----------
    url : str
        SQLAlchemy URL or SQLite file path of a database written by ``psma-stage run``.

    Returns
    -------
    pandas.DataFrame
        One row per staged study with the patient-level staging.json fields.

    Raises
    ------
    staging.database.DatabaseError
        If the database is absent, unreachable or holds no psma-stage schema.
    """
    from staging.database import read_results

    frame = read_results(url)
    frame[_ID] = frame[_ID].astype(str).str.strip()
    logger.info("read %d staging results from the study database", len(frame))
    return frame


def read_clinical_table(source: Path | str, *, from_database: bool = False) -> pd.DataFrame:
    """Read the clinical table from a CSV file or from the study database.

    Parameters
    ----------
    source : path or str
        A ``.csv``/``.tsv`` file with a ``patient_id`` column, or (``from_database=True``) a
        SQLAlchemy URL / SQLite path whose ``clinical`` table was filled by
        ``psma-stage db import-clinical``.

    Returns
    -------
    pandas.DataFrame
        One row per patient as stored; ``patient_id`` is a string.

    Raises
    ------
    ConfigError
        If the file is absent.
    CohortError
        If it cannot be parsed or has no ``patient_id`` column.
    """
    if from_database:
        from staging.database import read_clinical

        frame = read_clinical(str(source))
        # the database keeps a CSV's extra columns as text: give numbers back their type
        for col in frame.columns:
            if col != _ID and frame[col].dtype == object:
                text = frame[col].map(lambda v: None if v is None or v == "" else v)
                numbers = pd.to_numeric(text, errors="coerce")
                if text.notna().any() and numbers.notna().sum() == text.notna().sum():
                    frame[col] = numbers
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: clinical table not found; check the --clinical path.")
        frame = _read_csv(path)
    if _ID not in frame.columns:
        raise CohortError(
            f"clinical table {source} has no 'patient_id' column; columns found: "
            f"{sorted(frame.columns)}. Rename the identifier column to patient_id."
        )
    frame[_ID] = frame[_ID].astype(str).str.strip()
    return frame


@dataclass(frozen=True, slots=True, eq=False)
class Cohort:
    """Staging results joined with clinical data: one row per patient of both tables.

    Attributes
    ----------
    data : pandas.DataFrame
        The joined table (staging columns, then clinical columns), sorted by ``patient_id``.
    only_in_staging, only_in_clinical : tuple of str
        Patient ids present on one side only (left out of ``data``).
    notes : tuple of CohortNote
        Caveats raised while joining.
    """

    data: pd.DataFrame
    only_in_staging: tuple[str, ...] = ()
    only_in_clinical: tuple[str, ...] = ()
    notes: tuple[CohortNote, ...] = ()

    def __post_init__(self) -> None:
        if _ID not in self.data.columns:
            raise CohortError("Cohort data needs a 'patient_id' column.")
        if self.data[_ID].duplicated().any():
            raise CohortError("Cohort data must hold one row per patient_id.")

    @property
    def n_patients(self) -> int:
        """Number of patients in the joined table."""
        return len(self.data)

    @classmethod
    def from_frame(cls, data: pd.DataFrame) -> Cohort:
        """A cohort from an already joined table (one row per ``patient_id``)."""
        frame = data.copy()
        frame[_ID] = frame[_ID].astype(str)
        return cls(data=frame.sort_values(_ID, kind="stable").reset_index(drop=True))


def _duplicates(frame: pd.DataFrame, what: str, hint: str) -> None:
    dup = frame.loc[frame[_ID].duplicated(keep=False), _ID]
    if len(dup):
        raise CohortError(
            f"{what} has several rows for patient_id {_listing(sorted(dup.unique()))}; the "
            f"analysis needs one row per patient. {hint}"
        )


def join_cohort(staging: pd.DataFrame, clinical: pd.DataFrame) -> Cohort:
    """Join staging results and clinical data on ``patient_id`` (inner join, reported).

    Parameters
    ----------
    staging : pandas.DataFrame
        One row per patient (several studies of one patient are an error: choose the scan).
    clinical : pandas.DataFrame
        One row per patient.

    Returns
    -------
    Cohort
        The patients of both tables; those of one table only are listed in
        ``only_in_staging`` / ``only_in_clinical`` and reported with an
        :class:`UnmatchedPatientsWarning`.

    Raises
    ------
    CohortError
        If either table repeats a patient_id, or no patient is in both tables.
    """
    for frame, what in ((staging, "staging results"), (clinical, "clinical table")):
        if _ID not in frame.columns:
            raise CohortError(f"{what} has no 'patient_id' column; found {sorted(frame.columns)}.")
    staging = staging.assign(**{_ID: staging[_ID].astype(str).str.strip()})
    clinical = clinical.assign(**{_ID: clinical[_ID].astype(str).str.strip()})
    _duplicates(staging, "staging results",
                "Keep the baseline scan of each patient (filter the CSV export).")
    _duplicates(clinical, "clinical table", "Merge or remove the repeated rows.")
    s_ids, c_ids = set(staging[_ID]), set(clinical[_ID])
    both = s_ids & c_ids
    only_s = tuple(sorted(s_ids - c_ids))
    only_c = tuple(sorted(c_ids - s_ids))
    if not both:
        raise CohortError(
            f"no patient_id is in both the staging results ({len(s_ids)} patients, e.g. "
            f"{_listing(sorted(s_ids)[:3])}) and the clinical table ({len(c_ids)} patients, e.g. "
            f"{_listing(sorted(c_ids)[:3])}); check that both use the same pseudonymised ids."
        )
    notes: list[CohortNote] = []
    if only_s:
        _warn(notes, UnmatchedPatientsWarning, "join",
              f"{len(only_s)} patient(s) staged but absent from the clinical table, left out: "
              f"{_listing(only_s)}")
    if only_c:
        _warn(notes, UnmatchedPatientsWarning, "join",
              f"{len(only_c)} patient(s) in the clinical table but not staged, left out: "
              f"{_listing(only_c)}")
    overlap = (set(staging.columns) & set(clinical.columns)) - {_ID}
    merged = staging.merge(clinical, on=_ID, how="inner", suffixes=("", "_clinical"))
    if overlap:
        logger.info("columns in both tables, clinical copy suffixed '_clinical': %s",
                    sorted(overlap))
    merged = merged.sort_values(_ID, kind="stable").reset_index(drop=True)
    return Cohort(data=merged, only_in_staging=only_s, only_in_clinical=only_c,
                  notes=tuple(notes))


def require_columns(data: pd.DataFrame, columns: Iterable[str], *, option: str) -> None:
    """Raise :class:`ConfigError` naming the unknown columns and listing the available ones."""
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ConfigError(
            f"{option}: unknown column(s) {missing}; the joined staging + clinical table has "
            f"{sorted(map(str, data.columns))}. Name one of these (see --help)."
        )


def validate_survival_columns(
    data: pd.DataFrame, *, time_col: str, event_col: str
) -> pd.DataFrame:
    """Check and normalise a time-to-event pair; return a copy with float time, int event.

    Raises
    ------
    ConfigError
        If a column is unknown (the message lists the available ones).
    CohortError
        If times are missing, not numeric or negative, or events are not 0/1 (the message
        names the patients).
    """
    require_columns(data, [time_col], option="--time-col")
    require_columns(data, [event_col], option="--event-col")
    out = data.copy()
    time = pd.to_numeric(out[time_col], errors="coerce")
    bad = out.loc[time.isna() | ~np.isfinite(time.fillna(0.0)), _ID].tolist()
    if bad:
        raise CohortError(
            f"column {time_col!r}: missing or non-numeric time for patient(s) {_listing(bad)} "
            f"(values {_listing(out.loc[out[_ID].isin(bad), time_col].tolist())}); fill in the "
            "follow-up time or remove these patients."
        )
    neg = out.loc[time < 0, _ID].tolist()
    if neg:
        raise CohortError(
            f"column {time_col!r}: negative time for patient(s) {_listing(neg)} (values "
            f"{_listing(time[time < 0].tolist())}); times are measured from the start of "
            "follow-up and cannot be negative."
        )
    out[time_col] = time.astype(float)
    out[event_col] = validate_binary(out, event_col, what="event flag")
    return out


_BOOL_WORDS = {"true": 1, "false": 0, "yes": 1, "no": 0}


def validate_binary(data: pd.DataFrame, column: str, *, what: str,
                    allow_missing: bool = False) -> pd.Series:
    """A 0/1 column as ``Int64`` (bool, 0/1 numbers and true/false words accepted).

    Raises
    ------
    CohortError
        If a value is not 0/1 (or missing, unless ``allow_missing``); names the patients.
    """
    raw = data[column]
    if raw.dtype == bool:
        return raw.astype("Int64")
    def as_number(v: Any) -> Any:
        if isinstance(v, bool | np.bool_):
            return int(v)
        if isinstance(v, str):
            return _BOOL_WORDS.get(v.strip().lower(), v)
        return v

    mapped = raw.map(as_number)
    values = pd.to_numeric(mapped, errors="coerce")
    missing = raw.isna()
    invalid = (~missing & (values.isna() | ~values.isin([0, 1])))
    if not allow_missing:
        invalid |= missing
    if invalid.any():
        ids = data.loc[invalid, _ID].tolist()
        found = [None if (isinstance(v, float) and math.isnan(v)) else v
                 for v in raw[invalid].tolist()]
        raise CohortError(
            f"column {column!r} ({what}) must be 0 or 1; patient(s) {_listing(ids)} have "
            f"{_listing(found)}. Code it 1 = yes/event, 0 = no/censored."
        )
    return values.astype("Int64")
