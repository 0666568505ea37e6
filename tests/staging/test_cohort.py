"""Cohort statistics: numbers identical to lifelines, and published reference values.

Reference values for the NCCTG lung cancer data (R ``survival::lung``, shipped with lifelines as
``lifelines.datasets.load_lung``), from R's ``survfit``/``coxph``/``survdiff`` defaults:
KM median 310 days (95% CI 285-363, conf.type "log"); by sex 270 (212-310) and 426 (348-550);
1-year survival 0.409 (0.345-0.486); log-rank by sex chi-square 10.3 on 1 df; Cox on sex
HR 0.588 (0.424-0.816).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_lung
from lifelines.statistics import (
    multivariate_logrank_test,
    pairwise_logrank_test,
    proportional_hazard_test,
)
from lifelines.utils import median_survival_times

from fixtures.clinical import sample_stage_mix, simulate_clinical
from staging.cohort import (
    Cohort,
    CohortSpec,
    analyze_cohort,
    fit_treatment_effects,
    stratify,
    summarize_survival,
)
from staging.cohort.survival import _holm

ATOL = 1e-6
GROUPS = ("T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c")


@pytest.fixture(scope="module")
def lung() -> Cohort:
    d = load_lung().reset_index().rename(columns={"index": "patient_id"})
    d["female"] = (d["sex"] == 2).astype(int)
    d["cohort"] = "all"
    return Cohort.from_frame(d)


@pytest.fixture(scope="module")
def simulated() -> Cohort:
    n = 320
    mix = sample_stage_mix(n, seed=21)
    patients = pd.DataFrame({
        "patient_id": [f"sim{i:04d}" for i in range(n)],
        "group": [m["group"] for m in mix],
        "emmett_group": [m["emmett_group"] for m in mix],
        "lesion_count": [m["n_lesions"] for m in mix],
    })
    clinical, _ = simulate_clinical(patients, seed=22)
    clinical["log2_psa"] = np.log2(clinical["psa"])
    return Cohort.from_frame(patients.merge(clinical, on="patient_id"))


# ---------------------------------------------------------------------------------------------
# published reference values


def test_lung_km_matches_r_survfit(lung: Cohort) -> None:
    s = summarize_survival(lung, group_by="sex", time_col="time", event_col="status",
                           at=[365.0], ci_method="log")
    med = s.medians.set_index("level")
    assert med.loc["All patients", "median"] == 310
    assert (med.loc["All patients", "median_lower"], med.loc["All patients", "median_upper"]) \
        == (285, 363)
    assert tuple(med.loc["1", ["median", "median_lower", "median_upper"]]) == (270, 212, 310)
    assert tuple(med.loc["2", ["median", "median_lower", "median_upper"]]) == (426, 348, 550)
    one_year = s.table.set_index("level").loc["All patients"]
    assert one_year["survival"] == pytest.approx(0.409, abs=5e-4)
    assert one_year["lower"] == pytest.approx(0.345, abs=5e-4)
    assert one_year["upper"] == pytest.approx(0.486, abs=5e-4)
    assert s.logrank["test_statistic"] == pytest.approx(10.3, abs=0.05)
    assert s.logrank["degrees_of_freedom"] == 1


def test_lung_log_log_interval_is_lifelines_default(lung: Cohort) -> None:
    s = summarize_survival(lung, group_by="cohort", time_col="time", event_col="status",
                           at=[365.0])
    kmf = KaplanMeierFitter().fit(lung.data["time"], lung.data["status"])
    ci = kmf.confidence_interval_survival_function_.loc[:365.0].iloc[-1]
    row = s.table.set_index("level").loc["All patients"]
    assert row["survival"] == pytest.approx(0.409, abs=5e-4)
    assert row["lower"] == pytest.approx(ci.iloc[0], abs=ATOL)
    assert row["upper"] == pytest.approx(ci.iloc[1], abs=ATOL)
    # the two transforms differ slightly, as documented: log-log 0.339-0.478, log 0.345-0.486
    assert row["lower"] == pytest.approx(0.339, abs=5e-4)
    assert row["upper"] == pytest.approx(0.478, abs=5e-4)


def test_lung_cox_on_sex_matches_r_coxph(lung: Cohort) -> None:
    eff = fit_treatment_effects(lung, group_by="cohort", treatments=["female"],
                                time_col="time", event_col="status", stratified=False)
    row = eff.summary.set_index("term").loc["female"]
    assert row["status"] == "fitted"
    assert round(row["hr"], 3) == 0.588
    assert round(row["hr_lower"], 3) == 0.424
    assert round(row["hr_upper"], 3) == 0.816
    assert row["p"] == pytest.approx(0.00149, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# identical to lifelines called directly


def _at(series: pd.Series, t: float) -> float:
    return float(series.loc[:t].iloc[-1])


def test_km_and_logrank_identical_to_lifelines(simulated: Cohort) -> None:
    s = summarize_survival(simulated, group_by="group", at=(24.0, 60.0))
    d = simulated.data
    for level in GROUPS:
        sub = d[d["group"] == level]
        kmf = KaplanMeierFitter().fit(sub["pfs_months"], sub["pfs_event"])
        ci = kmf.confidence_interval_survival_function_
        rows = s.table[s.table["level"] == level].set_index("time")
        for t in (24.0, 60.0):
            assert rows.loc[t, "survival"] == pytest.approx(
                float(kmf.survival_function_at_times(t).iloc[0]), abs=ATOL)
            assert rows.loc[t, "lower"] == pytest.approx(_at(ci.iloc[:, 0], t), abs=ATOL)
            assert rows.loc[t, "upper"] == pytest.approx(_at(ci.iloc[:, 1], t), abs=ATOL)
            assert rows.loc[t, "at_risk"] == int((sub["pfs_months"] >= t).sum())
        med = s.medians.set_index("level").loc[level]
        assert med["median"] == pytest.approx(kmf.median_survival_time_, abs=ATOL)
        mci = median_survival_times(ci)
        assert med["median_lower"] == pytest.approx(float(mci.iloc[0, 0]), abs=ATOL)
        assert med["median_upper"] == pytest.approx(float(mci.iloc[0, 1]), abs=ATOL)
    res = multivariate_logrank_test(d["pfs_months"], d["group"], d["pfs_event"])
    assert s.logrank["test_statistic"] == pytest.approx(res.test_statistic, abs=ATOL)
    assert s.logrank["p"] == pytest.approx(res.p_value, abs=ATOL)
    pw = pairwise_logrank_test(d["pfs_months"], d["group"], d["pfs_event"]).summary
    assert len(s.pairwise) == 6
    for _, r in s.pairwise.iterrows():
        key = (r["level_a"], r["level_b"]) if (r["level_a"], r["level_b"]) in pw.index \
            else (r["level_b"], r["level_a"])
        assert r["test_statistic"] == pytest.approx(pw.loc[key, "test_statistic"], abs=ATOL)
        assert r["p"] == pytest.approx(pw.loc[key, "p"], abs=ATOL)


@pytest.mark.filterwarnings("ignore::staging.cohort.LowEventsPerVariableWarning")
@pytest.mark.filterwarnings("ignore::staging.cohort.ProportionalHazardsWarning")
def test_cox_identical_to_lifelines(simulated: Cohort) -> None:
    eff = fit_treatment_effects(simulated, group_by="group", treatments=("wprt", "adt"),
                                adjust=("log2_psa", "age"))
    d = simulated.data
    cols = ["pfs_months", "pfs_event", "wprt", "adt", "log2_psa", "age"]
    summary = eff.summary.set_index(["model", "term"])
    for level in GROUPS:
        sub = d.loc[d["group"] == level, cols]
        cph = CoxPHFitter().fit(sub, "pfs_months", "pfs_event")
        ph = proportional_hazard_test(cph, sub, time_transform="rank").summary
        for term in ("wprt", "adt", "log2_psa", "age"):
            row = summary.loc[(level, term)]
            ref = cph.summary.loc[term]
            assert row["hr"] == pytest.approx(ref["exp(coef)"], abs=ATOL)
            assert row["hr_lower"] == pytest.approx(ref["exp(coef) lower 95%"], abs=ATOL)
            assert row["hr_upper"] == pytest.approx(ref["exp(coef) upper 95%"], abs=ATOL)
            assert row["p"] == pytest.approx(ref["p"], abs=ATOL)
            assert row["ph_p"] == pytest.approx(ph.loc[term, "p"], abs=ATOL)
    strat = CoxPHFitter().fit(d[[*cols, "group"]], "pfs_months", "pfs_event", strata=["group"])
    for term in ("wprt", "adt"):
        row = summary.loc[("stratified by group", term)]
        assert row["hr"] == pytest.approx(strat.summary.loc[term, "exp(coef)"], abs=ATOL)
        assert row["p"] == pytest.approx(strat.summary.loc[term, "p"], abs=ATOL)


def test_stratify_counts_and_table1() -> None:
    data = pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(6)],
        "group": ["T0N0M0", "T0N0M0", "TrN0M0", "N1/M1a", "N1/M1a", "N1/M1a"],
        "lesion_count": [0, 0, 1, 1, 3, 7],
        "age": [60.0, 70.0, 65.0, 50.0, 60.0, 80.0],
        "adt": [0, 1, 1, 1, 1, 0],
    })
    with pytest.warns(Warning, match="M1b-M1c") as rec:
        st = stratify(Cohort.from_frame(data), by="group", describe=["age", "adt"])
    assert {type(w.message).__name__ for w in rec} == {"EmptyGroupWarning"}
    t = st.table.set_index("level")
    assert t.loc["N1/M1a", "n"] == 3
    assert t.loc["N1/M1a", "percent"] == pytest.approx(50.0)
    assert t.loc["M1b-M1c", "n"] == 0
    assert st.lesion_counts is not None
    assert st.lesion_counts.loc["N1/M1a"].to_dict() == {"0": 0, "1": 1, "2-3": 1, "4-5": 0,
                                                        "6+": 1}
    t1 = st.table1.set_index(["variable", "statistic"])
    assert t1.loc[("age", "median (Q1, Q3)"), "N1/M1a"] == "60 (55, 70)"
    assert t1.loc[("adt", "n (%) with 1"), "All patients"] == "4 (66.7%)"
    assert t1.loc[("age", "median (Q1, Q3)"), "M1b-M1c"] == "-"
    values = st.table1_values.set_index(["variable", "level"])
    assert tuple(values.loc[("age", "N1/M1a"), ["median", "q1", "q3", "n"]]) == (60, 55, 70, 3)
    assert values.loc[("adt", "All patients"), "count"] == 4
    assert values.loc[("adt", "All patients"), "percent"] == pytest.approx(400 / 6)
    assert values.loc[("age", "M1b-M1c"), "n"] == 0


def test_holm_adjustment() -> None:
    # Holm (1979): sorted p 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04, 0.04
    assert _holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


@pytest.mark.filterwarnings("ignore::staging.cohort.LowEventsPerVariableWarning")
@pytest.mark.filterwarnings("ignore::staging.cohort.ProportionalHazardsWarning")
def test_analyze_cohort_repeats_each_grouping(simulated: Cohort) -> None:
    spec = CohortSpec(group_by=("group", "emmett_group"), adjust=("log2_psa",))
    analysis = analyze_cohort(simulated, spec=spec)
    assert list(analysis.groupings) == ["group", "emmett_group"]
    emmett = analysis.groupings["emmett_group"]
    assert emmett.stratification.levels == ("negative", "fossa_confined", "extra_fossa")
    # the negative Emmett group is the T0N0M0 group: same KM numbers
    a = emmett.survival.table.set_index("level").loc["negative"]
    b = analysis.groupings["group"].survival.table.set_index("level").loc["T0N0M0"]
    np.testing.assert_allclose(a[["survival", "lower", "upper"]].to_numpy(float),
                               b[["survival", "lower", "upper"]].to_numpy(float))
