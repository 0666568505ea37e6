"""Cohort inputs and bad input: clear, typed errors and recorded caveats."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imaging.errors import ConfigError
from staging.cohort import (
    Cohort,
    CohortError,
    CohortSpec,
    EmptyGroupWarning,
    FewEventsInArmWarning,
    LowEventsPerVariableWarning,
    ModelConvergenceWarning,
    NoEventsWarning,
    ProportionalHazardsWarning,
    UnmatchedPatientsWarning,
    analyze_cohort,
    fit_treatment_effects,
    join_cohort,
    read_clinical_table,
    read_staging_results,
    stratify,
    summarize_survival,
)


def _staging(ids: list[str], groups: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": ids, "group": groups,
                         "lesion_count": [0 if g == "T0N0M0" else 1 for g in groups]})


def _cohort(n_per_group: int = 60, seed: int = 0) -> Cohort:
    """Four groups, exponential times, both treatment arms with events in every group."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c"], n_per_group)
    n = len(groups)
    time = rng.exponential(40.0, n)
    cens = rng.uniform(30, 80, n)
    return Cohort.from_frame(pd.DataFrame({
        "patient_id": [f"p{i:03d}" for i in range(n)],
        "group": groups,
        "wprt": np.tile([0, 1], n // 2),
        "adt": np.tile([0, 0, 1, 1], n // 4),
        "age": rng.normal(67, 7, n),
        "pfs_months": np.minimum(time, cens).round(2),
        "pfs_event": (time <= cens).astype(int),
    }))


# ---------------------------------------------------------------------------------------------
# unknown columns


def test_unknown_columns_list_the_available_ones() -> None:
    cohort = _cohort()
    with pytest.raises(ConfigError, match=r"--time-col: unknown column\(s\) \['os_time'\].*"
                       r"'pfs_months'"):
        summarize_survival(cohort, time_col="os_time")
    with pytest.raises(ConfigError, match=r"--group-by: unknown column\(s\) \['stage'\]"):
        stratify(cohort, by="stage")
    with pytest.raises(ConfigError, match=r"--treatments: unknown column\(s\) \['sbrt'\].*"
                       r"'adt'.*'wprt'"):
        analyze_cohort(cohort, spec=CohortSpec(treatments=("wprt", "sbrt")))
    with pytest.raises(ConfigError, match=r"--adjust: unknown column\(s\) \['psa'\]"):
        fit_treatment_effects(cohort, adjust=("psa",))


def test_non_numeric_adjuster_is_a_config_error() -> None:
    data = _cohort().data.assign(centre=lambda d: np.where(d.index % 2, "A", "B"))
    with pytest.raises(ConfigError, match="--adjust centre: column is not numeric"):
        fit_treatment_effects(Cohort.from_frame(data), adjust=("centre",))


# ---------------------------------------------------------------------------------------------
# empty group, group without events, arm without events


def test_group_with_no_patients_is_listed_and_skipped() -> None:
    data = _cohort().data
    data = data[data["group"] != "M1b-M1c"]
    cohort = Cohort.from_frame(data)
    with pytest.warns(EmptyGroupWarning, match="group=M1b-M1c: no patients"):
        st = stratify(cohort, by="group")
    assert st.table.set_index("level").loc["M1b-M1c", "n"] == 0
    with pytest.warns(EmptyGroupWarning):
        s = summarize_survival(cohort)
    assert "M1b-M1c" not in set(s.table["level"])
    assert s.logrank["degrees_of_freedom"] == 2  # three groups tested
    # asking explicitly for a level that has no patients is an error that says what to do
    with pytest.raises(ConfigError, match=r"level\(s\) \['M1b-M1c'\] have no patients.*Remove"):
        stratify(cohort, by="group", levels=["T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c"])
    with pytest.raises(ConfigError, match=r"patients in level\(s\) \['N1/M1a'\] are not"):
        stratify(cohort, by="group", levels=["T0N0M0", "TrN0M0"])


def test_group_with_no_events() -> None:
    data = _cohort().data
    data.loc[data["group"] == "TrN0M0", "pfs_event"] = 0
    cohort = Cohort.from_frame(data)
    with pytest.warns(NoEventsWarning, match="group=TrN0M0: no pfs_event events"):
        s = summarize_survival(cohort)
    med = s.medians.set_index("level").loc["TrN0M0"]
    assert med["events"] == 0
    assert np.isinf(med["median"])  # not reached
    rows = s.table[s.table["level"] == "TrN0M0"]
    assert (rows["survival"] == 1.0).all()
    with pytest.warns(NoEventsWarning, match="Cox model .* not estimable"):
        eff = fit_treatment_effects(cohort)
    tr = eff.summary[eff.summary["model"] == "TrN0M0"]
    assert (tr["status"] == "not_estimable").all()
    assert tr["reason"].str.contains("no pfs_event events").all()
    assert tr["hr"].isna().all()
    assert (eff.summary[eff.summary["model"] == "T0N0M0"]["status"] == "fitted").all()


def test_treatment_arm_without_events() -> None:
    data = _cohort().data
    in_group = data["group"] == "N1/M1a"
    data.loc[in_group & (data["wprt"] == 1), "pfs_event"] = 0
    with pytest.warns(FewEventsInArmWarning, match=r"wprt: no events in the wprt=1 arm"):
        eff = fit_treatment_effects(Cohort.from_frame(data))
    row = eff.summary.set_index(["model", "term"]).loc[("N1/M1a", "wprt")]
    assert row["status"] == "not_estimable"
    assert "monotone likelihood" in row["reason"]
    assert eff.summary.set_index(["model", "term"]).loc[("N1/M1a", "adt"), "status"] == "fitted"


def test_treatment_arm_with_one_event_is_flagged_but_fitted() -> None:
    data = _cohort().data
    arm = data.index[(data["group"] == "N1/M1a") & (data["wprt"] == 1)
                     & (data["pfs_event"] == 1)]
    data.loc[arm[1:], "pfs_event"] = 0
    with pytest.warns(FewEventsInArmWarning, match=r"wprt: only 1 event in the wprt=1 arm") as rec:
        eff = fit_treatment_effects(Cohort.from_frame(data), stratified=False)
    assert len([w for w in rec if "wprt" in str(w.message)]) == 1
    assert eff.summary.set_index(["model", "term"]).loc[("N1/M1a", "wprt"), "status"] == "fitted"


def test_constant_treatment_in_a_group() -> None:
    data = _cohort().data
    data.loc[data["group"] == "T0N0M0", "adt"] = 1
    with pytest.warns(FewEventsInArmWarning, match=r"adt: constant \(adt = 1"):
        eff = fit_treatment_effects(Cohort.from_frame(data))
    assert eff.summary.set_index(["model", "term"]).loc[("T0N0M0", "adt"), "status"] == \
        "not_estimable"


def test_low_events_per_variable_warns() -> None:
    cohort = _cohort(n_per_group=12, seed=3)
    with pytest.warns(LowEventsPerVariableWarning, match="fewer than 10"):
        eff = fit_treatment_effects(cohort, adjust=("age",), stratified=False)
    assert (eff.summary["events_per_variable"].dropna() < 10).all()


def test_schoenfeld_rejection_warns() -> None:
    # crossing hazards: treated patients fail early, untreated late
    rng = np.random.default_rng(5)
    n = 200
    treated = np.tile([0, 1], n // 2)
    time = np.where(treated == 1, rng.weibull(0.5, n) * 20, rng.weibull(3.0, n) * 20)
    data = pd.DataFrame({"patient_id": [f"x{i}" for i in range(n)], "cohort": "all",
                         "wprt": treated, "pfs_months": time, "pfs_event": 1})
    with pytest.warns(ProportionalHazardsWarning, match="wprt: Schoenfeld test p"):
        eff = fit_treatment_effects(Cohort.from_frame(data), group_by="cohort",
                                    treatments=("wprt",), stratified=False)
    assert eff.summary.loc[0, "ph_p"] < 0.05


def test_separation_maps_lifelines_warning_to_our_category() -> None:
    # an adjuster that orders the event times perfectly: the likelihood has no maximum
    n = 40
    time = np.arange(1.0, n + 1)
    data = pd.DataFrame({"patient_id": [f"s{i}" for i in range(n)], "cohort": "all",
                         "wprt": np.tile([0, 1], n // 2), "score": -time,
                         "pfs_months": time, "pfs_event": 1})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        eff = fit_treatment_effects(Cohort.from_frame(data), group_by="cohort",
                                    treatments=("wprt",), adjust=("score",), stratified=False)
    categories = {w.category for w in rec}
    assert ModelConvergenceWarning in categories
    # nothing from lifelines/scipy escapes unmapped
    assert all(issubclass(c, ModelConvergenceWarning | LowEventsPerVariableWarning
                          | ProportionalHazardsWarning) for c in categories), categories
    model = eff.models["all"]
    assert model.status == "not_estimable"
    assert "did not converge" in model.reason
    assert eff.summary["hr"].isna().all()


# ---------------------------------------------------------------------------------------------
# time-to-event validation


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("pfs_months", -3.0, r"negative time for patient\(s\) p005 \(values -3"),
        ("pfs_months", np.nan, r"missing or non-numeric time for patient\(s\) p005"),
        ("pfs_months", "soon", r"missing or non-numeric time for patient\(s\) p005"),
        ("pfs_event", 2, r"'pfs_event' \(event flag\) must be 0 or 1; patient\(s\) p005 have 2"),
        ("pfs_event", np.nan, r"must be 0 or 1; patient\(s\) p005 have None"),
    ],
)
def test_bad_time_or_event_names_the_patient(column: str, value: object, match: str) -> None:
    data = _cohort().data.astype({column: object})
    data.loc[5, column] = value
    with pytest.raises(CohortError, match=match):
        summarize_survival(Cohort.from_frame(data))


def test_bad_treatment_flag_names_the_patient() -> None:
    data = _cohort().data.astype({"wprt": object})
    data.loc[7, "wprt"] = "maybe"
    with pytest.raises(CohortError, match=r"'wprt' \(treatment flag\).*p007 have maybe"):
        fit_treatment_effects(Cohort.from_frame(data))


def test_event_flags_as_words_and_bools_are_accepted() -> None:
    data = _cohort().data
    words = data.assign(pfs_event=data["pfs_event"].map({1: "yes", 0: "no"}))
    bools = data.assign(pfs_event=data["pfs_event"].astype(bool))
    a = summarize_survival(Cohort.from_frame(words)).table
    b = summarize_survival(Cohort.from_frame(bools)).table
    c = summarize_survival(Cohort.from_frame(data)).table
    pd.testing.assert_frame_equal(a, c)
    pd.testing.assert_frame_equal(b, c)


# ---------------------------------------------------------------------------------------------
# joining


def test_mismatched_ids_are_reported_not_dropped_silently() -> None:
    staging = _staging(["a", "b", "c", "d"], ["T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c"])
    clinical = pd.DataFrame({"patient_id": ["b", "c", "d", "e", "f"], "pfs_months": 1.0,
                             "pfs_event": 0})
    with pytest.warns(UnmatchedPatientsWarning) as rec:
        cohort = join_cohort(staging, clinical)
    messages = [str(w.message) for w in rec]
    assert any("1 patient(s) staged but absent from the clinical table, left out: a" in m
               for m in messages)
    assert any("2 patient(s) in the clinical table but not staged, left out: e, f" in m
               for m in messages)
    assert cohort.only_in_staging == ("a",)
    assert cohort.only_in_clinical == ("e", "f")
    assert cohort.data["patient_id"].tolist() == ["b", "c", "d"]
    assert len(cohort.notes) == 2


def test_no_overlap_and_duplicates_are_errors() -> None:
    staging = _staging(["a", "b"], ["T0N0M0", "TrN0M0"])
    with pytest.raises(CohortError, match="no patient_id is in both"):
        join_cohort(staging, pd.DataFrame({"patient_id": ["x", "y"]}))
    with pytest.raises(CohortError, match=r"staging results has several rows for patient_id a"):
        join_cohort(_staging(["a", "a"], ["T0N0M0", "TrN0M0"]),
                    pd.DataFrame({"patient_id": ["a"]}))
    with pytest.raises(CohortError, match=r"clinical table has several rows for patient_id b"):
        join_cohort(staging, pd.DataFrame({"patient_id": ["a", "b", "b"]}))


def test_missing_group_value_names_the_patient() -> None:
    data = _cohort().data.astype({"group": object})
    data.loc[3, "group"] = None
    with pytest.raises(CohortError, match=r"'group' has no value for patient\(s\) p003"):
        stratify(Cohort.from_frame(data))


def test_unknown_group_label_is_an_error() -> None:
    data = _cohort().data
    data.loc[3, "group"] = "N2"
    with pytest.raises(CohortError, match=r"value\(s\) \['N2'\] that are not group levels"):
        stratify(Cohort.from_frame(data))


# ---------------------------------------------------------------------------------------------
# readers


def _record(pid: str, group: str, n: int) -> dict[str, object]:
    return {
        "schema_version": "1", "patient_id": pid, "study_instance_uid": f"1.2.{pid}",
        "mitnm": "miT0N0M0", "group": group, "emmett_group": "negative", "lesion_count": n,
        "lesion_count_bin": str(n), "counts_by_category": {"fossa": n, "node_pelvic": 0,
                                                           "node_extrapelvic": 0, "bone": 0,
                                                           "visceral": 0, "equivocal": 0},
        "psma_tv_ml": 0.0, "tl_psma": 0.0, "max_mipsma_score": None, "bone_pattern": "none",
        "needs_review": False, "reference_suv": {"blood_pool": 1.5, "liver": 5.0,
                                                 "parotid": 12.0},
        "config": {"x": 1}, "lesions": [{"id": 1}],
    }


def test_read_staging_json_folder_and_csv(tmp_path: Path) -> None:
    for pid, group, n in (("a", "T0N0M0", 0), ("b", "TrN0M0", 1)):
        folder = tmp_path / "results" / pid / "study"
        folder.mkdir(parents=True)
        (folder / "staging.json").write_text(json.dumps(_record(pid, group, n)))
    frame = read_staging_results(tmp_path / "results")
    assert frame["patient_id"].tolist() == ["a", "b"]
    assert frame.loc[1, "count_fossa"] == 1
    assert frame.loc[0, "ref_liver_suv"] == 5.0
    assert "lesions" not in frame.columns
    assert "config" not in frame.columns
    csv = tmp_path / "export.csv"
    frame.drop(columns="source").to_csv(csv, index=False)
    again = read_staging_results(csv)
    assert again["group"].tolist() == ["T0N0M0", "TrN0M0"]
    with pytest.raises(ConfigError, match="staging results not found; check the path"):
        read_staging_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no staging\.json below this folder"):
        read_staging_results(tmp_path / "empty")
    bad = tmp_path / "bad" / "staging.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(CohortError, match=r"cannot read staging\.json"):
        read_staging_results(bad)
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ConfigError, match=r"unknown staging-results format '\.xlsx'"):
        read_staging_results(tmp_path / "x.xlsx")


def test_read_clinical_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="clinical table not found"):
        read_clinical_table(tmp_path / "nope.csv")
    path = tmp_path / "c.csv"
    path.write_text("id,pfs_months\n1,3\n")
    with pytest.raises(CohortError, match=r"no 'patient_id' column; columns found: \['id'"):
        read_clinical_table(path)
