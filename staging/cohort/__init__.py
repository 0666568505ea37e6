"""Cohort stratification and survival analysis of staged PSMA PET/CT studies.

Staging results (CSV export, ``staging.json`` files or the study database) are joined with a
clinical table on ``patient_id`` (:func:`join_cohort`), then :func:`analyze_cohort` computes,
for each grouping column: patients per group, lesion-count mix and Table 1
(:func:`stratify`); Kaplan-Meier estimates with confidence intervals at landmark times, medians,
follow-up and log-rank tests (:func:`summarize_survival`); and Cox models of the treatment flags
within each group and stratified by group (:func:`fit_treatment_effects`). All statistics are
lifelines'. :func:`write_cohort_report` writes summary.json, CSV/Markdown tables, Kaplan-Meier
figures and cohort.html.
"""

from __future__ import annotations

from staging.cohort.analysis import CohortAnalysis, CohortSpec, GroupingAnalysis, analyze_cohort
from staging.cohort.errors import (
    CohortError,
    CohortNote,
    CohortWarning,
    EmptyGroupWarning,
    FewEventsInArmWarning,
    LowEventsPerVariableWarning,
    MissingCovariateWarning,
    ModelConvergenceWarning,
    NoEventsWarning,
    ProportionalHazardsWarning,
    UnmatchedPatientsWarning,
)
from staging.cohort.inputs import (
    Cohort,
    join_cohort,
    read_clinical_table,
    read_staging_database,
    read_staging_results,
)
from staging.cohort.plots import plot_km
from staging.cohort.report import summary_dict, write_cohort_report
from staging.cohort.stratify import Stratification, stratify
from staging.cohort.survival import (
    CoxModel,
    SurvivalSummary,
    TreatmentEffects,
    fit_treatment_effects,
    km_confidence_interval,
    summarize_survival,
)

__all__ = [
    "Cohort",
    "CohortAnalysis",
    "CohortError",
    "CohortNote",
    "CohortSpec",
    "CohortWarning",
    "CoxModel",
    "EmptyGroupWarning",
    "FewEventsInArmWarning",
    "GroupingAnalysis",
    "LowEventsPerVariableWarning",
    "MissingCovariateWarning",
    "ModelConvergenceWarning",
    "NoEventsWarning",
    "ProportionalHazardsWarning",
    "Stratification",
    "SurvivalSummary",
    "TreatmentEffects",
    "UnmatchedPatientsWarning",
    "analyze_cohort",
    "fit_treatment_effects",
    "join_cohort",
    "km_confidence_interval",
    "plot_km",
    "read_clinical_table",
    "read_staging_database",
    "read_staging_results",
    "stratify",
    "summarize_survival",
    "summary_dict",
    "write_cohort_report",
]
