"""The cohort statistics recover the known truth of a simulated cohort (fixtures.clinical)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fixtures.clinical import sample_stage_mix, simulate_clinical
from staging.cohort import Cohort, fit_treatment_effects, summarize_survival

GROUPS = ("T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c")


def _cohort(n: int, *, mix_seed: int, seed: int) -> tuple[Cohort, dict]:  # type: ignore[type-arg]
    mix = sample_stage_mix(n, seed=mix_seed)
    patients = pd.DataFrame({
        "patient_id": [f"sim{i:04d}" for i in range(n)],
        "group": [m["group"] for m in mix],
        "emmett_group": [m["emmett_group"] for m in mix],
        "lesion_count": [m["n_lesions"] for m in mix],
    })
    clinical, truth = simulate_clinical(patients, seed=seed)
    # the simulated hazard depends on log2(PSA): adjust on that scale (truth["covariate_note"])
    clinical["log2_psa"] = np.log2(clinical["psa"])
    return Cohort.from_frame(patients.merge(clinical, on="patient_id")), truth


@pytest.fixture(scope="module")
def cohort_and_truth() -> tuple[Cohort, dict]:  # type: ignore[type-arg]
    return _cohort(400, mix_seed=2026, seed=2027)


def test_pfs_per_group_within_sampling_error(cohort_and_truth: tuple[Cohort, dict]) -> None:  # type: ignore[type-arg]
    cohort, truth = cohort_and_truth
    # 8 comparisons (4 groups x 2 times): Bonferroni-adjusted intervals, 95% family-wise
    alpha = 0.05 / 8
    s = summarize_survival(cohort, group_by="group", at=(24.0, 60.0), alpha=alpha)
    table = s.table.set_index(["level", "time"])
    for g in GROUPS:
        for t in (24.0, 60.0):
            row = table.loc[(g, t)]
            true = truth["pfs_truth"][g][f"{t:g}"]
            assert row["lower"] < true < row["upper"], (g, t, row.to_dict(), true)
            # and the estimate is within 3 standard errors (Greenwood, log-log interval width)
            se = (row["upper"] - row["lower"]) / (2 * stats.norm.ppf(1 - alpha / 2))
            assert abs(row["survival"] - true) < 3 * se
    overall = table.loc[("All patients", 60.0)]
    assert overall["lower"] < truth["pfs_truth_overall"]["60"] < overall["upper"]


@pytest.mark.filterwarnings("ignore::staging.cohort.LowEventsPerVariableWarning")
@pytest.mark.filterwarnings("ignore::staging.cohort.FewEventsInArmWarning")
@pytest.mark.filterwarnings("ignore::staging.cohort.ProportionalHazardsWarning")
def test_hazard_ratio_intervals_cover_the_truth(cohort_and_truth: tuple[Cohort, dict]) -> None:  # type: ignore[type-arg]
    cohort, truth = cohort_and_truth
    eff = fit_treatment_effects(cohort, group_by="group", treatments=("wprt", "adt"),
                                adjust=("log2_psa",), stratified=False)
    rows = eff.summary.set_index(["model", "term"])
    for g in GROUPS:
        for term in ("wprt", "adt"):
            row = rows.loc[(g, term)]
            assert row["status"] == "fitted", row["reason"]
            true = truth["hazard_ratios"][g][term]
            assert row["hr_lower"] < true < row["hr_upper"], (g, term, row.to_dict(), true)
        psa = rows.loc[(g, "log2_psa")]
        true_psa = truth["covariate_hazard_ratios"]["log2_psa"]
        assert psa["hr_lower"] < true_psa < psa["hr_upper"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::staging.cohort.CohortWarning")
def test_hazard_ratio_interval_coverage_over_replicates() -> None:
    """Coverage over independent cohorts (not one lucky seed): close to the nominal 95%."""
    hits, total, not_estimable = 0, 0, 0
    for rep in range(20):
        cohort, truth = _cohort(300, mix_seed=rep, seed=1000 + rep)
        eff = fit_treatment_effects(cohort, treatments=("wprt", "adt"), adjust=("log2_psa",),
                                    stratified=False)
        for _, row in eff.summary[eff.summary["role"] == "treatment"].iterrows():
            if row["status"] != "fitted":
                not_estimable += 1
                continue
            true = truth["hazard_ratios"][row["model"]][row["term"]]
            hits += bool(row["hr_lower"] < true < row["hr_upper"])
            total += 1
    assert total >= 150
    assert not_estimable <= 10
    # binomial(160, 0.95): mean 152, sd 2.8; 88% coverage is 4 sd below the nominal rate
    assert hits / total >= 0.88, (hits, total)
    print(f"coverage {hits}/{total} = {hits / total:.3f}; not estimable {not_estimable}")
