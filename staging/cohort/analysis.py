"""The whole cohort analysis in one call: stratification, survival and Cox per grouping."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from imaging.errors import ConfigError
from staging.cohort.errors import CohortNote
from staging.cohort.inputs import Cohort, require_columns, validate_survival_columns
from staging.cohort.stratify import Stratification, stratify
from staging.cohort.survival import (
    CI_METHODS,
    SurvivalSummary,
    TreatmentEffects,
    fit_treatment_effects,
    summarize_survival,
)

__all__ = ["CohortAnalysis", "CohortSpec", "analyze_cohort"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CohortSpec:
    """What to analyse: column names, landmark times and interval settings.

    Attributes
    ----------
    time_col, event_col : str
        Time-to-event pair of the endpoint (default progression-free survival in months).
    group_by : tuple of str
        Grouping columns; every analysis is repeated for each (default ``("group",)``).
    treatments : tuple of str
        0/1 treatment columns for the Cox models (default ``("wprt", "adt")``; empty: none).
    adjust : tuple of str
        Numeric adjusters of the Cox models.
    describe : tuple of str
        Extra Table 1 columns (treatments, adjusters and ``lesion_count`` are always there).
    at : tuple of float
        Landmark times (default 24 and 60).
    alpha : float
        1 - confidence level.
    ci_method : {"log-log", "log"}
        Kaplan-Meier interval (lifelines' default, or R's).
    levels : mapping of str to tuple of str
        Explicit level order/selection per grouping column.
    time_unit, endpoint : str
        Labels for tables and figures.
    stratified : bool
        Also fit the Cox model pooled over levels, stratified by the grouping column.
    """

    time_col: str = "pfs_months"
    event_col: str = "pfs_event"
    group_by: tuple[str, ...] = ("group",)
    treatments: tuple[str, ...] = ("wprt", "adt")
    adjust: tuple[str, ...] = ()
    describe: tuple[str, ...] = ()
    at: tuple[float, ...] = (24.0, 60.0)
    alpha: float = 0.05
    ci_method: str = "log-log"
    levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    time_unit: str = "months"
    endpoint: str = "Progression-free survival"
    stratified: bool = True

    def __post_init__(self) -> None:
        if not self.group_by:
            raise ConfigError("--group-by: name at least one grouping column, e.g. group.")
        if len(set(self.group_by)) != len(self.group_by):
            raise ConfigError(f"--group-by {list(self.group_by)}: a column is repeated.")
        if self.ci_method not in CI_METHODS:
            raise ConfigError(
                f"--ci-method {self.ci_method!r}: choose one of {list(CI_METHODS)}."
            )
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--alpha {self.alpha}: must be in (0, 1), e.g. 0.05.")
        if not self.at or any(not math.isfinite(t) or t < 0 for t in self.at):
            raise ConfigError(f"--at {list(self.at)}: give non-negative times, e.g. 24,60.")
        unknown = sorted(set(self.levels) - set(self.group_by))
        if unknown:
            raise ConfigError(f"--levels for {unknown}: not among --group-by "
                              f"{list(self.group_by)}.")
        object.__setattr__(self, "levels",
                           MappingProxyType({k: tuple(v) for k, v in self.levels.items()}))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (saved in summary.json)."""
        return {
            "time_col": self.time_col, "event_col": self.event_col,
            "group_by": list(self.group_by), "treatments": list(self.treatments),
            "adjust": list(self.adjust), "describe": list(self.describe), "at": list(self.at),
            "alpha": self.alpha, "ci_method": self.ci_method,
            "levels": {k: list(v) for k, v in self.levels.items()},
            "time_unit": self.time_unit, "endpoint": self.endpoint,
            "stratified": self.stratified,
        }


@dataclass(frozen=True, slots=True, eq=False)
class GroupingAnalysis:
    """Stratification, survival and Cox results of one grouping column."""

    stratification: Stratification
    survival: SurvivalSummary
    effects: TreatmentEffects | None


@dataclass(frozen=True, slots=True, eq=False)
class CohortAnalysis:
    """Everything :func:`analyze_cohort` computed, per grouping column."""

    cohort: Cohort
    spec: CohortSpec
    groupings: Mapping[str, GroupingAnalysis]

    @property
    def notes(self) -> tuple[CohortNote, ...]:
        """Every caveat raised, in order, without repeats."""
        seen: dict[tuple[str, str, str], CohortNote] = {}
        parts = [self.cohort.notes]
        for g in self.groupings.values():
            parts += [g.stratification.notes, g.survival.notes]
            if g.effects is not None:
                parts.append(g.effects.notes)
        for part in parts:
            for n in part:
                seen.setdefault((n.category, n.where, n.message), n)
        return tuple(seen.values())


def analyze_cohort(cohort: Cohort, *, spec: CohortSpec | None = None) -> CohortAnalysis:
    """Run stratification, Kaplan-Meier/log-rank and Cox models for each grouping column.

    Parameters
    ----------
    cohort : Cohort
        Joined staging + clinical data (:func:`staging.cohort.join_cohort`).
    spec : CohortSpec, optional
        Columns and settings (defaults: PFS in months by ``group``, treatments wprt/adt).

    Returns
    -------
    CohortAnalysis

    Raises
    ------
    ConfigError
        A named column is unknown (the message lists the available ones).
    CohortError
        Invalid values (the message names the patients).
    """
    spec = spec or CohortSpec()
    data = cohort.data
    require_columns(data, spec.group_by, option="--group-by")
    require_columns(data, spec.treatments, option="--treatments")
    require_columns(data, spec.adjust, option="--adjust")
    require_columns(data, spec.describe, option="--describe")
    validate_survival_columns(data, time_col=spec.time_col, event_col=spec.event_col)
    describe = list(dict.fromkeys([
        *spec.treatments, *spec.adjust, *spec.describe,
        *(["lesion_count"] if "lesion_count" in data.columns else []),
    ]))
    groupings: dict[str, GroupingAnalysis] = {}
    for by in spec.group_by:
        levels = spec.levels.get(by)
        strat = stratify(cohort, by=by, levels=levels, describe=describe)
        surv = summarize_survival(cohort, group_by=by, at=spec.at,
                                  ci_method=spec.ci_method,  # type: ignore[arg-type]
                                  levels=levels, time_col=spec.time_col,
                                  event_col=spec.event_col, alpha=spec.alpha)
        effects = None
        if spec.treatments:
            effects = fit_treatment_effects(
                cohort, group_by=by, treatments=spec.treatments, adjust=spec.adjust,
                levels=levels, stratified=spec.stratified, time_col=spec.time_col,
                event_col=spec.event_col, alpha=spec.alpha)
        groupings[by] = GroupingAnalysis(stratification=strat, survival=surv, effects=effects)
    return CohortAnalysis(cohort=cohort, spec=spec, groupings=groupings)
