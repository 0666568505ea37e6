"""Stratification: patients per group, lesion-count mix, and a descriptive "Table 1"."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from imaging.errors import ConfigError
from staging.cohort.errors import CohortError, CohortNote, EmptyGroupWarning, _warn
from staging.cohort.inputs import Cohort, _listing, require_columns
from staging.models import EMMETT_GROUPS, GROUPS, LESION_COUNT_BINS

__all__ = ["KNOWN_LEVELS", "Stratification", "group_levels", "lesion_count_bins", "stratify"]

logger = logging.getLogger(__name__)

KNOWN_LEVELS: dict[str, tuple[str, ...]] = {
    "group": GROUPS,
    "emmett_group": EMMETT_GROUPS,
    "lesion_count_bin": LESION_COUNT_BINS,
}
"""Canonical order (and complete list) of the levels of the staging grouping columns."""

OVERALL = "All patients"


def group_levels(
    data: pd.DataFrame, by: str, *, levels: Sequence[str] | None = None
) -> tuple[tuple[str, ...], list[CohortNote]]:
    """The ordered levels of grouping column ``by``, checked against the data.

    Known staging columns (``group``, ``emmett_group``, ``lesion_count_bin``) keep their
    canonical order and list every level, including those without patients (reported with an
    :class:`EmptyGroupWarning`); other columns use their sorted values.

    Raises
    ------
    ConfigError
        If ``by`` is not a column, or ``levels`` names a level with no patients or leaves out
        a level that has patients.
    CohortError
        If some patients have no value in ``by``.
    """
    require_columns(data, [by], option="--group-by")
    values = data[by]
    if values.isna().any():
        ids = data.loc[values.isna(), "patient_id"].tolist()
        raise CohortError(
            f"grouping column {by!r} has no value for patient(s) {_listing(ids)}; restage them, "
            "fill the column, or remove them from the tables."
        )
    present = set(values.astype(str))
    notes: list[CohortNote] = []
    if levels is not None:
        chosen = tuple(str(v) for v in levels)
        empty = [lv for lv in chosen if lv not in present]
        if empty:
            raise ConfigError(
                f"--levels {by}: level(s) {empty} have no patients; levels present: "
                f"{sorted(present)}. Remove them from --levels."
            )
        left_out = sorted(present - set(chosen))
        if left_out:
            raise ConfigError(
                f"--levels {by}: patients in level(s) {left_out} are not in the levels given "
                f"{list(chosen)}; list every level present or filter the input tables."
            )
        return chosen, notes
    known = KNOWN_LEVELS.get(by)
    if known is not None:
        unknown = sorted(present - set(known))
        if unknown:
            raise CohortError(
                f"grouping column {by!r} has value(s) {unknown} that are not {by} levels "
                f"{list(known)}; the staging results may come from another software version."
            )
        for lv in known:
            if lv not in present:
                _warn(notes, EmptyGroupWarning, f"{by}={lv}",
                      "no patients in this group; listed with n = 0, left out of survival "
                      "estimates and tests")
        return known, notes
    return tuple(sorted(present)), notes


def lesion_count_bins(counts: pd.Series) -> pd.Series:
    """``lesion_count`` -> the staging.json bins ``0, 1, 2-3, 4-5, 6+``."""
    c = pd.to_numeric(counts, errors="coerce")
    bins = pd.cut(c, [-0.5, 0.5, 1.5, 3.5, 5.5, np.inf], labels=list(LESION_COUNT_BINS))
    return bins.astype(str).where(c.notna())


@dataclass(frozen=True, slots=True, eq=False)
class Stratification:
    """Patients per group, lesion-count mix and Table 1 of one grouping column.

    Attributes
    ----------
    by : str
        The grouping column.
    levels : tuple of str
        Its levels in report order (empty ones included).
    table : pandas.DataFrame
        One row per level and a last ``All patients`` row: ``level, n, percent``.
    lesion_counts : pandas.DataFrame or None
        Rows = levels (+ All patients), columns = lesion-count bins, values = n; ``None``
        without a ``lesion_count`` column.
    table1 : pandas.DataFrame
        Descriptive table: ``variable, statistic`` then one column per level and
        ``All patients``; continuous variables as median (Q1, Q3), binary and categorical ones as
        n (%), with the number of missing values.
    table1_values : pandas.DataFrame
        The numbers behind Table 1: ``variable, kind (binary/continuous/categorical), level,
        n, missing, value, count, percent, median, q1, q3, min, max``.
    notes : tuple of CohortNote
    """

    by: str
    levels: tuple[str, ...]
    table: pd.DataFrame
    lesion_counts: pd.DataFrame | None
    table1: pd.DataFrame
    table1_values: pd.DataFrame
    notes: tuple[CohortNote, ...]

    @property
    def summary(self) -> pd.DataFrame:
        """Alias of :attr:`table` (lifelines naming)."""
        return self.table


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _is_binary(s: pd.Series) -> bool:
    if is_bool_dtype(s):
        return True
    if not is_numeric_dtype(s):
        return False
    vals = set(pd.unique(s.dropna()))
    return bool(vals) and vals <= {0, 1}


def _table1(data: pd.DataFrame, by: str, levels: Sequence[str],
            describe: Sequence[str]) -> pd.DataFrame:
    groups = {lv: data.loc[data[by].astype(str) == lv] for lv in levels}
    groups[OVERALL] = data
    rows: list[dict[str, str]] = [
        {"variable": "Patients", "statistic": "n (%)",
         **{k: f"{len(g)} ({100 * len(g) / max(len(data), 1):.1f}%)" for k, g in groups.items()}}
    ]
    for var in describe:
        col = data[var]
        if _is_binary(col):
            row = {"variable": var, "statistic": "n (%) with 1"}
            for k, g in groups.items():
                s = g[var].dropna().astype(float)
                row[k] = f"{int(s.sum())} ({100 * s.mean():.1f}%)" if len(s) else "-"
            rows.append(row)
        elif is_numeric_dtype(col):
            row = {"variable": var, "statistic": "median (Q1, Q3)"}
            for k, g in groups.items():
                s = g[var].dropna().astype(float)
                row[k] = (f"{_fmt(s.median())} ({_fmt(s.quantile(0.25))}, "
                          f"{_fmt(s.quantile(0.75))})") if len(s) else "-"
            rows.append(row)
        else:
            cats = sorted(col.dropna().astype(str).unique())
            for cat in cats:
                row = {"variable": var, "statistic": f"{cat}: n (%)"}
                for k, g in groups.items():
                    s = g[var].dropna().astype(str)
                    row[k] = f"{int((s == cat).sum())} ({100 * (s == cat).mean():.1f}%)" \
                        if len(s) else "-"
                rows.append(row)
        if col.isna().any():
            rows.append({"variable": var, "statistic": "missing, n",
                         **{k: str(int(g[var].isna().sum())) for k, g in groups.items()}})
    return pd.DataFrame(rows, columns=["variable", "statistic", *levels, OVERALL])


def _describe_values(data: pd.DataFrame, by: str, levels: Sequence[str],
                     describe: Sequence[str]) -> pd.DataFrame:
    """The numbers behind Table 1, one row per (variable, level[, value])."""
    groups = {lv: data.loc[data[by].astype(str) == lv] for lv in levels}
    groups[OVERALL] = data
    rows: list[dict[str, object]] = []
    for var in describe:
        col = data[var]
        kind = ("binary" if _is_binary(col) else "continuous" if is_numeric_dtype(col)
                else "categorical")
        for level, g in groups.items():
            s = g[var].dropna()
            base = {"variable": var, "kind": kind, "level": level, "n": len(s),
                    "missing": int(g[var].isna().sum())}
            if kind == "binary":
                s = s.astype(float)
                rows.append(base | {"value": "1", "count": int(s.sum()),
                                    "percent": 100 * s.mean() if len(s) else np.nan})
            elif kind == "continuous":
                s = s.astype(float)
                rows.append(base | {"median": s.median(), "q1": s.quantile(0.25),
                                    "q3": s.quantile(0.75), "min": s.min(), "max": s.max()})
            else:
                s = s.astype(str)
                for cat in sorted(col.dropna().astype(str).unique()):
                    rows.append(base | {"value": cat, "count": int((s == cat).sum()),
                                        "percent": 100 * (s == cat).mean() if len(s)
                                        else np.nan})
    columns = ["variable", "kind", "level", "n", "missing", "value", "count", "percent",
               "median", "q1", "q3", "min", "max"]
    return pd.DataFrame(rows, columns=columns)


def stratify(
    cohort: Cohort,
    *,
    by: str = "group",
    levels: Sequence[str] | None = None,
    describe: Sequence[str] = (),
) -> Stratification:
    """Patients per level of ``by`` with n and %, lesion-count distribution, and Table 1.

    Parameters
    ----------
    cohort : Cohort
        Joined staging + clinical data.
    by : str
        Grouping column (``group``, ``emmett_group`` or any column of the cohort).
    levels : sequence of str, optional
        Levels to report, in order (default: canonical order of the known staging columns, or
        the sorted values).
    describe : sequence of str
        Columns summarised in Table 1 (continuous: median (IQR); 0/1: n (%); text: n (%) per
        value).

    Returns
    -------
    Stratification

    Raises
    ------
    ConfigError
        If a column is unknown (the message lists the available ones) or ``levels`` does not
        match the data.
    CohortError
        If a patient has no value in ``by``.
    """
    data = cohort.data
    lv, notes = group_levels(data, by, levels=levels)
    require_columns(data, describe, option="--describe")
    key = data[by].astype(str)
    n = np.array([(key == v).sum() for v in lv] + [len(data)], dtype=int)
    table = pd.DataFrame({"level": [*lv, OVERALL], "n": n,
                          "percent": 100.0 * n / max(len(data), 1)})
    lesion_counts: pd.DataFrame | None = None
    if "lesion_count" in data.columns or "lesion_count_bin" in data.columns:
        bins = (data["lesion_count_bin"].astype(str) if "lesion_count_bin" in data.columns
                else lesion_count_bins(data["lesion_count"]))
        if "lesion_count" in data.columns:
            bins = bins.where(bins.notna() & (bins != "nan"),
                              lesion_count_bins(data["lesion_count"]))
        lesion_counts = (pd.crosstab(key, bins).reindex(index=list(lv),
                                                        columns=list(LESION_COUNT_BINS))
                         .fillna(0).astype(int))
        lesion_counts.loc[OVERALL] = lesion_counts.sum(axis=0)
        lesion_counts.index.name = by
        lesion_counts.columns.name = "lesion_count_bin"
    table1 = _table1(data, by, lv, describe)
    values = _describe_values(data, by, lv, describe)
    return Stratification(by=by, levels=lv, table=table, lesion_counts=lesion_counts,
                          table1=table1, table1_values=values, notes=tuple(notes))
