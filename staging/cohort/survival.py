"""Kaplan-Meier, log-rank and Cox proportional-hazards analyses with lifelines.

Every number is lifelines' own (``KaplanMeierFitter``, ``multivariate_logrank_test``,
``pairwise_logrank_test``, ``CoxPHFitter``, ``proportional_hazard_test``); this module chooses
the subsets, reads the values at the requested times, checks the caveats a reviewer would ask
about, and collects everything in result objects with a ``.table`` / ``.summary``.

Confidence intervals of the survival function
---------------------------------------------
``ci_method="log-log"`` (default) is lifelines' interval, Greenwood's variance on the
log(-log S) scale ("exponential Greenwood"), which always lies within [0, 1].
``ci_method="log"`` is R ``survfit``'s default ``conf.type = "log"``:
``S * exp(+/- z * sqrt(V))`` with Greenwood's ``V = sum d / (n (n - d))``, upper bound
capped at 1.  Both are computed from lifelines' event table; medians' intervals are where the
interval curves cross 0.5 (lifelines ``median_survival_times``, as R does).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from lifelines.statistics import (
    multivariate_logrank_test,
    pairwise_logrank_test,
    proportional_hazard_test,
)
from lifelines.utils import median_survival_times
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from scipy import stats
from scipy.linalg import LinAlgWarning

from imaging.errors import ConfigError
from staging.cohort.errors import (
    CohortNote,
    FewEventsInArmWarning,
    LowEventsPerVariableWarning,
    MissingCovariateWarning,
    ModelConvergenceWarning,
    NoEventsWarning,
    ProportionalHazardsWarning,
    _warn,
)
from staging.cohort.inputs import (
    Cohort,
    _listing,
    require_columns,
    validate_binary,
    validate_survival_columns,
)
from staging.cohort.stratify import OVERALL, group_levels

__all__ = [
    "CiMethod",
    "SurvivalSummary",
    "TreatmentEffects",
    "fit_treatment_effects",
    "km_confidence_interval",
    "summarize_survival",
]

logger = logging.getLogger(__name__)

CiMethod = Literal["log-log", "log"]
CI_METHODS: tuple[str, ...] = ("log-log", "log")
MIN_EVENTS_PER_VARIABLE = 10
MIN_EVENTS_PER_ARM = 2


# ----------------------------------------------------------------------------------------------
# Kaplan-Meier


def km_confidence_interval(
    kmf: KaplanMeierFitter, *, ci_method: CiMethod = "log-log"
) -> pd.DataFrame:
    """Pointwise confidence interval of a fitted Kaplan-Meier curve.

    Parameters
    ----------
    kmf : lifelines.KaplanMeierFitter
        Fitted; its ``alpha`` sets the level.
    ci_method : {"log-log", "log"}
        ``"log-log"``: lifelines' exponential-Greenwood interval (returned unchanged);
        ``"log"``: R's default (see the module notes).

    Returns
    -------
    pandas.DataFrame
        Columns ``lower``, ``upper``, indexed by ``kmf.timeline``; NaN where the interval is
        undefined (log: after the curve reaches 0).
    """
    if ci_method == "log-log":
        ci = kmf.confidence_interval_survival_function_.copy()
        ci.columns = ["lower", "upper"]
        return ci
    if ci_method != "log":
        raise ConfigError(f"ci_method {ci_method!r} is not one of {list(CI_METHODS)}.")
    table = kmf.event_table
    d = table["observed"].to_numpy(dtype=float)
    n = table["at_risk"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(d > 0, d / (n * (n - d)), 0.0)
    var = pd.Series(np.cumsum(terms), index=table.index).reindex(kmf.timeline, method="ffill")
    s = kmf.survival_function_.iloc[:, 0]
    z = stats.norm.ppf(1.0 - kmf.alpha / 2.0)
    with np.errstate(over="ignore", invalid="ignore"):
        half = z * np.sqrt(var.to_numpy())
        lower = s.to_numpy() * np.exp(-half)
        upper = np.minimum(s.to_numpy() * np.exp(half), 1.0)
    undefined = ~np.isfinite(var.to_numpy()) | (s.to_numpy() <= 0)
    lower[undefined] = np.nan
    upper[undefined] = np.nan
    return pd.DataFrame({"lower": lower, "upper": upper}, index=kmf.timeline)


def _step(series: pd.Series, t: float) -> float:
    """Value of a right-continuous step function (indexed by time) at ``t``."""
    return float(series.loc[:t].iloc[-1])


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True, slots=True, eq=False)
class SurvivalSummary:
    """Kaplan-Meier estimates per group and overall, follow-up and log-rank tests.

    Attributes
    ----------
    by : str
        Grouping column; levels without patients are not in the tables.
    time_col, event_col : str
    at : tuple of float
        Times of the landmark estimates.
    ci_method : str
    alpha : float
    table : pandas.DataFrame
        One row per (level, time): ``level, time, survival, lower, upper, at_risk,
        events_by_time, reason`` (``survival`` NaN only beyond the last follow-up of the level,
        with ``reason`` saying so).
    medians : pandas.DataFrame
        Per level: ``level, n, events, median, median_lower, median_upper,
        median_follow_up, median_follow_up_lower, median_follow_up_upper`` (inf = not reached;
        follow-up by reverse Kaplan-Meier).
    logrank : dict
        ``test_statistic, degrees_of_freedom, p`` across the levels (empty with < 2 levels).
    pairwise : pandas.DataFrame
        ``level_a, level_b, test_statistic, p, p_holm``.
    fitters : dict
        The fitted ``KaplanMeierFitter`` per level and for ``All patients``.
    confidence_intervals : dict
        The interval (``km_confidence_interval``) per level, as plotted.
    notes : tuple of CohortNote
    """

    by: str
    time_col: str
    event_col: str
    at: tuple[float, ...]
    ci_method: str
    alpha: float
    table: pd.DataFrame
    medians: pd.DataFrame
    logrank: dict[str, float]
    pairwise: pd.DataFrame
    fitters: Mapping[str, KaplanMeierFitter]
    confidence_intervals: Mapping[str, pd.DataFrame]
    notes: tuple[CohortNote, ...] = ()

    @property
    def summary(self) -> pd.DataFrame:
        """Alias of :attr:`table` (lifelines naming)."""
        return self.table


def _holm(p: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values."""
    p_arr = np.asarray(p, dtype=float)
    m = len(p_arr)
    order = np.argsort(p_arr, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_arr[idx]))
        adj[idx] = running
    return adj.tolist()


def summarize_survival(
    cohort: Cohort,
    *,
    group_by: str = "group",
    time_col: str = "pfs_months",
    event_col: str = "pfs_event",
    at: Sequence[float] = (24.0, 60.0),
    alpha: float = 0.05,
    ci_method: CiMethod = "log-log",
    levels: Sequence[str] | None = None,
) -> SurvivalSummary:
    """Kaplan-Meier per level of ``group_by`` and overall, with log-rank tests.

    Parameters
    ----------
    cohort : Cohort
    group_by : str
        Grouping column.
    time_col, event_col : str
        Follow-up time (any unit, e.g. months) and event flag (1 = event, 0 = censored).
    at : sequence of float
        Times (unit of ``time_col``) for the landmark estimates.
    alpha : float
        1 - confidence level.
    ci_method : {"log-log", "log"}
        See :func:`km_confidence_interval`.
    levels : sequence of str, optional
        Levels in order (see :func:`staging.cohort.stratify.group_levels`).

    Returns
    -------
    SurvivalSummary

    Raises
    ------
    ConfigError
        Unknown column, bad ``at``/``alpha``/``ci_method``.
    CohortError
        Invalid time or event values (the message names the patients).

    Warns
    -----
    NoEventsWarning
        A level has no events (its median is not reached).
    """
    if ci_method not in CI_METHODS:
        raise ConfigError(f"ci_method {ci_method!r} is not one of {list(CI_METHODS)}.")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha = {alpha}: must be in (0, 1), e.g. 0.05 for 95% intervals.")
    at_t = tuple(float(t) for t in at)
    if not at_t or any(not math.isfinite(t) or t < 0 for t in at_t):
        raise ConfigError(f"--at {list(at)}: give one or more non-negative times, e.g. 24,60.")
    data = validate_survival_columns(cohort.data, time_col=time_col, event_col=event_col)
    lv, notes = group_levels(data, group_by, levels=levels)
    key = data[group_by].astype(str)
    subsets = {v: data.loc[key == v] for v in lv if (key == v).any()}
    subsets[OVERALL] = data

    fitters: dict[str, KaplanMeierFitter] = {}
    cis: dict[str, pd.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    med_rows: list[dict[str, Any]] = []
    for name, sub in subsets.items():
        t = sub[time_col].to_numpy(dtype=float)
        e = sub[event_col].to_numpy(dtype=int)
        kmf = KaplanMeierFitter(alpha=alpha).fit(t, e, label=name)
        ci = km_confidence_interval(kmf, ci_method=ci_method)
        fitters[name], cis[name] = kmf, ci
        if name != OVERALL and e.sum() == 0:
            _warn(notes, NoEventsWarning, f"{group_by}={name}",
                  f"no {event_col} events among {len(sub)} patients: survival stays 1, the "
                  "median is not reached and no hazard ratio can be estimated in this group")
        s = kmf.survival_function_.iloc[:, 0]
        for tt in at_t:
            beyond = tt > t.max()
            rows.append({
                "level": name, "time": tt,
                "survival": np.nan if beyond else _step(s, tt),
                "lower": np.nan if beyond else _step(ci["lower"], tt),
                "upper": np.nan if beyond else _step(ci["upper"], tt),
                "at_risk": int((t >= tt).sum()),
                "events_by_time": int(((t <= tt) & (e == 1)).sum()),
                "reason": f"beyond the last follow-up ({t.max():g})" if beyond else "",
            })
        med_ci = median_survival_times(ci)
        rev = KaplanMeierFitter(alpha=alpha).fit(t, 1 - e)
        rev_ci = median_survival_times(km_confidence_interval(rev, ci_method=ci_method))
        med_rows.append({
            "level": name, "n": len(sub), "events": int(e.sum()),
            "median": float(kmf.median_survival_time_),
            "median_lower": float(med_ci.iloc[0, 0]), "median_upper": float(med_ci.iloc[0, 1]),
            "median_follow_up": float(rev.median_survival_time_),
            "median_follow_up_lower": float(rev_ci.iloc[0, 0]),
            "median_follow_up_upper": float(rev_ci.iloc[0, 1]),
        })
    table = pd.DataFrame(rows)
    medians = pd.DataFrame(med_rows)

    tested = [v for v in lv if v in subsets]
    logrank: dict[str, float] = {}
    pairwise = pd.DataFrame(columns=["level_a", "level_b", "test_statistic", "p", "p_holm"])
    if len(tested) >= 2:
        sub = data.loc[key.isin(tested)]
        res = multivariate_logrank_test(sub[time_col], key[sub.index], sub[event_col])
        logrank = {"test_statistic": float(res.test_statistic),
                   "degrees_of_freedom": float(res.degrees_of_freedom),
                   "p": float(res.p_value)}
        pw = pairwise_logrank_test(sub[time_col], key[sub.index], sub[event_col]).summary
        order = {v: i for i, v in enumerate(tested)}
        prow = []
        for (a, b), r in pw.iterrows():
            a, b = (a, b) if order[a] < order[b] else (b, a)
            prow.append({"level_a": a, "level_b": b,
                         "test_statistic": float(r["test_statistic"]), "p": float(r["p"])})
        pairwise = pd.DataFrame(prow)
        pairwise["p_holm"] = _holm(pairwise["p"].tolist())
        pairwise = pairwise.sort_values(
            ["level_a", "level_b"], key=lambda c: c.map(order), kind="stable"
        ).reset_index(drop=True)
    return SurvivalSummary(by=group_by, time_col=time_col, event_col=event_col, at=at_t,
                           ci_method=ci_method, alpha=alpha, table=table, medians=medians,
                           logrank=logrank, pairwise=pairwise, fitters=fitters,
                           confidence_intervals=cis, notes=tuple(notes))


# ----------------------------------------------------------------------------------------------
# Cox proportional hazards


@dataclass(frozen=True, slots=True, eq=False)
class CoxModel:
    """One Cox model (within a level, or stratified by the grouping column).

    ``status`` is ``"fitted"`` or ``"not_estimable"`` (with ``reason``); ``fitter`` is the
    fitted ``CoxPHFitter`` (``None`` when not estimable); ``terms`` holds the covariates
    fitted and ``dropped`` those left out with the reason.
    """

    scope: str
    status: str
    reason: str
    n: int
    events: int
    terms: tuple[str, ...]
    dropped: Mapping[str, str]
    events_per_variable: float | None
    ph_test: pd.DataFrame | None
    fitter: CoxPHFitter | None
    excluded_missing: tuple[str, ...] = ()
    notes: tuple[CohortNote, ...] = ()
    convergence_problem: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class TreatmentEffects:
    """Cox models for the treatment flags, within each level and stratified by level.

    Attributes
    ----------
    by : str
    treatments, adjust : tuple of str
    summary : pandas.DataFrame
        One row per (model, term): ``model`` (level name, or ``stratified by <by>``), ``term``,
        ``role`` (treatment/adjuster), ``status``, ``hr``, ``hr_lower``, ``hr_upper``, ``p``,
        ``coef``, ``se``, ``n``, ``events``, ``events_per_variable``, ``ph_p`` (Schoenfeld
        test, rank time transform), ``reason``.
    models : dict
        ``CoxModel`` per model name.
    notes : tuple of CohortNote
    """

    by: str
    treatments: tuple[str, ...]
    adjust: tuple[str, ...]
    alpha: float
    summary: pd.DataFrame
    models: Mapping[str, CoxModel]
    notes: tuple[CohortNote, ...] = field(default=())

    @property
    def table(self) -> pd.DataFrame:
        """Alias of :attr:`summary`."""
        return self.summary


def _fit_cox(
    data: pd.DataFrame,
    *,
    scope: str,
    time_col: str,
    event_col: str,
    treatments: Sequence[str],
    adjust: Sequence[str],
    strata: str | None,
    alpha: float,
    notes: list[CohortNote],
) -> CoxModel:
    covariates = [*treatments, *adjust]
    model_notes: list[CohortNote] = []

    def warn(category: type, message: str) -> None:
        _warn(model_notes, category, scope, message)

    cols = [time_col, event_col, *covariates] + ([strata] if strata else [])
    complete = data[cols].notna().all(axis=1)
    excluded = tuple(data.loc[~complete, "patient_id"].astype(str))
    if excluded:
        warn(MissingCovariateWarning,
             f"{len(excluded)} patient(s) without a value for {covariates} left out of the Cox "
             f"model: {_listing(excluded)}")
    df = data.loc[complete, cols].copy()
    df[event_col] = df[event_col].astype(int)
    for c in covariates:
        df[c] = df[c].astype(float)
    n, events = len(df), int(df[event_col].sum())
    dropped: dict[str, str] = {}

    def not_estimable(reason: str) -> CoxModel:
        notes.extend(model_notes)
        return CoxModel(scope=scope, status="not_estimable", reason=reason, n=n, events=events,
                        terms=(), dropped=dropped, events_per_variable=None, ph_test=None,
                        fitter=None, excluded_missing=excluded, notes=tuple(model_notes))

    if events == 0:
        return not_estimable(f"no {event_col} events among {n} patients")
    for c in covariates:
        if df[c].nunique() < 2:
            dropped[c] = f"constant ({c} = {df[c].iloc[0]:g} for all {n} patients)" if n else \
                "no patients"
            continue
        if c in treatments:
            arm_events = {arm: int(df.loc[df[c] == arm, event_col].sum()) for arm in (0.0, 1.0)}
            empty = [arm for arm, k in arm_events.items() if k == 0]
            if empty:
                dropped[c] = (f"no events in the {c}={empty[0]:g} arm (monotone likelihood): "
                              "hazard ratio not estimable")
                warn(FewEventsInArmWarning, f"{c}: {dropped[c]}")
                continue
            for arm, k in arm_events.items():
                if k < MIN_EVENTS_PER_ARM:
                    warn(FewEventsInArmWarning,
                         f"{c}: only {k} event in the {c}={arm:g} arm; the hazard ratio is "
                         "unreliable")
    for c, why in dropped.items():
        if c in treatments and "arm" not in why:
            warn(FewEventsInArmWarning, f"{c}: {why}; treatment effect not estimable")
    terms = [c for c in covariates if c not in dropped]
    if not terms:
        return not_estimable("no covariate with variation and events in every arm")
    epv = events / len(terms)
    if epv < MIN_EVENTS_PER_VARIABLE:
        warn(LowEventsPerVariableWarning,
             f"{events} events for {len(terms)} variable(s) ({epv:.1f} per variable, fewer than "
             f"{MIN_EVENTS_PER_VARIABLE}): hazard ratios are imprecise and may be biased away "
             "from 1; use fewer adjusters or pool groups (stratified model)")
    fit_df = df[[time_col, event_col, *terms] + ([strata] if strata else [])]
    cph = CoxPHFitter(alpha=alpha)
    # lifelines signals (near-)separation and collinearity with its ConvergenceWarning or, from
    # the Newton-Raphson solve, SciPy's LinAlgWarning: both become ModelConvergenceWarning here
    expected = (ConvergenceWarning, LinAlgWarning)
    try:
        with warnings.catch_warnings(record=True) as caught:
            for category in expected:
                warnings.simplefilter("always", category)
            # numpy overflow inside lifelines' Newton-Raphson: the same divergence
            warnings.filterwarnings("always", category=RuntimeWarning, module=r"lifelines\.")
            cph.fit(fit_df, duration_col=time_col, event_col=event_col,
                    strata=[strata] if strata else None)
            ph = proportional_hazard_test(cph, fit_df, time_transform="rank").summary
    except ConvergenceError as err:
        first = str(err).strip().splitlines()[0]
        warn(ModelConvergenceWarning, f"Cox fit did not converge ({first})")
        return not_estimable(f"Cox fit did not converge: {first}")
    convergence_problem = False
    for w in caught:
        from_lifelines = "lifelines" in str(w.filename)
        if issubclass(w.category, expected) or (issubclass(w.category, RuntimeWarning)
                                                 and from_lifelines):
            convergence_problem = True
            warn(ModelConvergenceWarning,
                 f"lifelines: {str(w.message).strip().splitlines()[0]} (check for a covariate "
                 "that (nearly) separates events, or collinear covariates)")
        else:  # not ours to silence: re-issue unchanged
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if any("failed to converge" in str(w.message) for w in caught):
        return not_estimable("Cox fit did not converge (Newton-Raphson); a covariate may "
                             "separate events from non-events")
    ph_test = pd.DataFrame({"term": ph.index.astype(str),
                            "test_statistic": ph["test_statistic"].to_numpy(float),
                            "p": ph["p"].to_numpy(float)})
    rejected = ph_test.loc[ph_test["p"] < alpha]
    for _, r in rejected.iterrows():
        warn(ProportionalHazardsWarning,
             f"{r['term']}: Schoenfeld test p = {r['p']:.3g} < {alpha:g}; the hazard ratio is "
             "an average over follow-up; consider stratifying on it or a time interaction")
    notes.extend(model_notes)
    return CoxModel(scope=scope, status="fitted", reason="", n=n, events=events,
                    terms=tuple(terms), dropped=dropped, events_per_variable=epv,
                    ph_test=ph_test, fitter=cph, excluded_missing=excluded,
                    notes=tuple(model_notes), convergence_problem=convergence_problem)


def _check_covariates(data: pd.DataFrame, treatments: Sequence[str],
                      adjust: Sequence[str]) -> pd.DataFrame:
    require_columns(data, treatments, option="--treatments")
    require_columns(data, adjust, option="--adjust")
    both = set(treatments) & set(adjust)
    if both:
        raise ConfigError(f"column(s) {sorted(both)} are both treatments and adjusters.")
    out = data.copy()
    for c in treatments:
        out[c] = validate_binary(out, c, what="treatment flag", allow_missing=True)
    for c in adjust:
        if is_bool_dtype(out[c]):
            out[c] = out[c].astype(float)
        elif not is_numeric_dtype(out[c]):
            raise ConfigError(
                f"--adjust {c}: column is not numeric (values such as "
                f"{_listing(out[c].dropna().astype(str).unique()[:3].tolist())}); encode it as "
                "numbers (e.g. 0/1 indicator columns) in the clinical table."
            )
    return out


def fit_treatment_effects(
    cohort: Cohort,
    *,
    group_by: str = "group",
    treatments: Sequence[str] = ("wprt", "adt"),
    adjust: Sequence[str] = (),
    time_col: str = "pfs_months",
    event_col: str = "pfs_event",
    alpha: float = 0.05,
    levels: Sequence[str] | None = None,
    stratified: bool = True,
) -> TreatmentEffects:
    """Cox models of the treatment flags within each level of ``group_by`` (and stratified).

    Within each level, ``time ~ treatments + adjust`` is fitted with lifelines' ``CoxPHFitter``
    (Efron ties); with ``stratified=True`` one more model pools the levels with a separate
    baseline hazard per level (``strata=[group_by]``) and common hazard ratios.

    Parameters
    ----------
    cohort : Cohort
    group_by : str
    treatments : sequence of str
        0/1 treatment columns (e.g. ``wprt``, ``adt``).
    adjust : sequence of str
        Numeric adjusters (e.g. ``psa``, ``age``; transform them in the table if needed).
    time_col, event_col : str
    alpha : float
    levels : sequence of str, optional
    stratified : bool

    Returns
    -------
    TreatmentEffects

    Raises
    ------
    ConfigError
        Unknown columns (listing the available ones), non-numeric adjusters, a column both
        treatment and adjuster.
    CohortError
        Invalid time/event/treatment values (naming the patients).

    Warns
    -----
    NoEventsWarning, FewEventsInArmWarning, LowEventsPerVariableWarning,
    ProportionalHazardsWarning, ModelConvergenceWarning, MissingCovariateWarning
    """
    if not treatments:
        raise ConfigError("--treatments: name at least one 0/1 treatment column, e.g. wprt,adt.")
    data = validate_survival_columns(cohort.data, time_col=time_col, event_col=event_col)
    data = _check_covariates(data, treatments, adjust)
    lv, notes = group_levels(data, group_by, levels=levels)
    key = data[group_by].astype(str)
    models: dict[str, CoxModel] = {}
    for v in lv:
        sub = data.loc[key == v]
        if sub.empty:
            continue
        model = _fit_cox(sub, scope=f"{group_by}={v}", time_col=time_col, event_col=event_col,
                         treatments=treatments, adjust=adjust, strata=None, alpha=alpha,
                         notes=notes)
        if model.status != "fitted" and model.events == 0:
            _warn(notes, NoEventsWarning, f"{group_by}={v}",
                  f"no events: Cox model of {list(treatments)} not estimable in this group")
        models[v] = model
    present = [v for v in lv if (key == v).any()]
    if stratified and len(present) >= 2:
        name = f"stratified by {group_by}"
        models[name] = _fit_cox(data.loc[key.isin(present)].assign(**{group_by: key}),
                                scope=name, time_col=time_col, event_col=event_col,
                                treatments=treatments, adjust=adjust, strata=group_by,
                                alpha=alpha, notes=notes)
    rows: list[dict[str, Any]] = []
    for name, m in models.items():
        ph = ({} if m.ph_test is None else dict(zip(m.ph_test["term"], m.ph_test["p"],
                                                    strict=True)))
        for term in (*treatments, *adjust):
            row: dict[str, Any] = {
                "model": name, "term": term,
                "role": "treatment" if term in treatments else "adjuster",
                "n": m.n, "events": m.events, "events_per_variable": m.events_per_variable,
                "hr": np.nan, "hr_lower": np.nan, "hr_upper": np.nan, "p": np.nan,
                "coef": np.nan, "se": np.nan, "ph_p": np.nan,
            }
            if m.fitter is not None and term in m.terms:
                s = m.fitter.summary.loc[term]
                row.update(status="fitted", hr=float(s["exp(coef)"]),
                           reason=("lifelines reported a convergence problem: estimate "
                                   "unreliable" if m.convergence_problem else ""),
                           hr_lower=float(s[f"exp(coef) lower {100 * (1 - alpha):g}%"]),
                           hr_upper=float(s[f"exp(coef) upper {100 * (1 - alpha):g}%"]),
                           p=float(s["p"]), coef=float(s["coef"]), se=float(s["se(coef)"]),
                           ph_p=ph.get(term, np.nan))
            else:
                row.update(status="not_estimable", reason=m.dropped.get(term, m.reason))
            rows.append(row)
    columns = ["model", "term", "role", "status", "hr", "hr_lower", "hr_upper", "p", "coef",
               "se", "n", "events", "events_per_variable", "ph_p", "reason"]
    summary = pd.DataFrame(rows, columns=columns)
    return TreatmentEffects(by=group_by, treatments=tuple(treatments), adjust=tuple(adjust),
                            alpha=alpha, summary=summary, models=models, notes=tuple(notes))
