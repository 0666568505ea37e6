"""``psma-stage cohort`` end to end: files, summary.json, database input, atomic output."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures.clinical import sample_stage_mix, simulate_clinical
from staging import database
from staging.cli import main
from staging.cohort import CohortSpec, CohortWarning, analyze_cohort, join_cohort

N = 160


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cohort-input")
    mix = sample_stage_mix(N, seed=31)
    staging = pd.DataFrame({
        "patient_id": [f"pt{i:03d}" for i in range(N)],
        "study_instance_uid": [f"1.2.826.0.1.{i}" for i in range(N)],
        "group": [m["group"] for m in mix],
        "emmett_group": [m["emmett_group"] for m in mix],
        "lesion_count": [m["n_lesions"] for m in mix],
    })
    clinical, _ = simulate_clinical(staging, seed=32)
    clinical["log2_psa"] = np.log2(clinical["psa"]).round(6)
    staging.to_csv(folder / "staging.csv", index=False)
    clinical.to_csv(folder / "clinical.csv", index=False)
    return folder / "staging.csv", folder / "clinical.csv"


def _run(args: list[str]) -> int:
    # the CLI turns caveats into log lines; nothing else may warn
    return main(["-q", "cohort", *args])


COMMON = ["--group-by", "group,emmett_group", "--adjust", "log2_psa", "--at", "24,60"]


@pytest.fixture(scope="module")
def csv_report(tables: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    staging, clinical = tables
    out = tmp_path_factory.mktemp("csv-report") / "report"
    assert _run(["--staging", str(staging), "--clinical", str(clinical), "-o", str(out),
                 *COMMON]) == 0
    return out


def test_cli_writes_every_output(tables: tuple[Path, Path], csv_report: Path) -> None:
    staging, clinical = tables
    out = csv_report
    names = {p.name for p in out.iterdir()}
    for by in ("group", "emmett_group"):
        for stem in ("counts", "lesion_counts", "table1", "survival", "logrank", "cox"):
            assert {f"{stem}_{by}.csv", f"{stem}_{by}.md"} <= names
        assert {f"km_{by}.png", f"km_{by}.svg"} <= names
    assert {"summary.json", "cohort.html", "km_overall.png", "km_overall.svg"} <= names
    assert not [n for n in out.parent.iterdir() if n.name.startswith(".")]  # no temp left
    assert (out / "km_group.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "km_group.svg").read_text()
    html = (out / "cohort.html").read_text()
    for fig in ("km_overall.svg", "km_group.svg", "km_emmett_group.svg"):
        assert f"src='{fig}'" in html
    assert "Table 1 by group" in html
    assert "Cox hazard ratios by group" in html
    md = (out / "survival_group.md").read_text()
    assert md.startswith("### Survival by group")
    assert "| T0N0M0 |" in md

    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == "1"
    assert summary["inputs"]["n_patients_analysed"] == N
    assert summary["settings"]["adjust"] == ["log2_psa"]
    # the JSON numbers are the API's numbers
    cohort = join_cohort(pd.read_csv(staging), pd.read_csv(clinical))
    # caveats of the small groups (tested in test_cohort_inputs.py)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CohortWarning)
        analysis = analyze_cohort(cohort, spec=CohortSpec(adjust=("log2_psa",)))
    surv = analysis.groupings["group"].survival
    km = summary["groupings"]["group"]["kaplan_meier"]
    for _, row in surv.table.iterrows():
        entry = next(a for a in km[row["level"]]["at"] if a["time"] == row["time"])
        assert entry["survival"] == pytest.approx(row["survival"], abs=1e-12)
        assert entry["lower"] == pytest.approx(row["lower"], abs=1e-12)
        assert entry["at_risk"] == row["at_risk"]
    eff = analysis.groupings["group"].effects
    assert eff is not None
    cox = summary["groupings"]["group"]["cox"]["models"]
    for _, row in eff.summary[eff.summary["status"] == "fitted"].iterrows():
        entry = next(h for h in cox[row["model"]]["hazard_ratios"] if h["term"] == row["term"])
        assert entry["hr"] == pytest.approx(row["hr"], abs=1e-12)
        assert entry["p"] == pytest.approx(row["p"], abs=1e-12)
    assert summary["groupings"]["group"]["logrank"]["overall"]["p"] == pytest.approx(
        surv.logrank["p"], abs=1e-12)
    categories = {w["category"] for w in summary["warnings"]}
    assert categories <= {"LowEventsPerVariableWarning", "ProportionalHazardsWarning",
                          "FewEventsInArmWarning"}


def test_cli_reports_unmatched_patients_in_summary(tables: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    staging, clinical = tables
    cut = tmp_path / "clinical_cut.csv"
    frame = pd.read_csv(clinical)
    frame.iloc[3:].to_csv(cut, index=False)
    out = tmp_path / "r"
    assert _run(["--staging", str(staging), "--clinical", str(cut), "-o", str(out),
                 "--treatments", ""]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["only_in_staging"] == sorted(frame["patient_id"][:3])
    assert summary["groupings"]["group"]["cox"] is None
    assert any(w["category"] == "UnmatchedPatientsWarning" for w in summary["warnings"])
    assert "staged but without clinical data" in (out / "cohort.html").read_text()


def test_cli_errors_exit_2_with_a_useful_message(
    tables: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, clinical = tables
    base = ["--staging", str(staging), "--clinical", str(clinical)]
    assert _run([*base, "-o", str(tmp_path / "a"), "--time-col", "os_time"]) == 2
    err = capsys.readouterr().err
    assert "unknown column(s) ['os_time']" in err
    assert "'pfs_months'" in err
    assert not (tmp_path / "a").exists()
    assert _run(["--staging", str(staging), "-o", str(tmp_path / "b")]) == 2
    assert "--clinical CSV is required" in capsys.readouterr().err
    assert _run([*base, "-o", str(tmp_path / "c"), "--at", "two"]) == 2
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    assert _run([*base, "-o", str(tmp_path / "d"), "--treatments", ""]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _run([*base, "-o", str(tmp_path / "d"), "--treatments", "", "--overwrite"]) == 0
    assert not (tmp_path / "d" / "keep.txt").exists()
    assert (tmp_path / "d" / "summary.json").is_file()


def test_failure_while_writing_leaves_nothing_behind(
    tables: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import staging.cohort.report as report

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report, "plot_km", broken)
    staging, clinical = tables
    out = tmp_path / "out"
    assert _run(["--staging", str(staging), "--clinical", str(clinical), "-o", str(out),
                 "--treatments", ""]) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cohort", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--db", "--staging", "--clinical", "--time-col", "--event-col", "--group-by",
                   "--treatments", "--adjust", "--at", "--ci-method"):
        assert option in text


def test_cli_reads_the_study_database(tables: tuple[Path, Path], csv_report: Path,
                                      tmp_path: Path) -> None:
    """--db: staging results and clinical table from the database of `psma-stage run`."""
    staging, clinical = tables
    db = tmp_path / "results.db"
    engine = database.open_database(db)
    try:
        run_id = database.start_run(engine, input="synthetic", out_dir=tmp_path,
                                    software_version="test", config_hash="0", config={},
                                    jobs=1)
        for row in pd.read_csv(staging).to_dict("records"):
            n = int(row["lesion_count"])
            record = {**row, "mitnm": "miT0N0M0", "lesion_count_bin":
                      "0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else
                      "4-5" if n <= 5 else "6+", "counts_by_category": {}}
            database.record_study(engine, run_id=run_id, key=f"{row['patient_id']}/s1",
                                  record=record, source="synthetic", input_hash="0",
                                  config_hash="0", result_digest="0", files={})
    finally:
        engine.dispose()
    database.import_clinical(db, clinical)
    out_db = tmp_path / "from_db"
    assert _run(["--db", str(db), "-o", str(out_db), *COMMON]) == 0
    a = json.loads((out_db / "summary.json").read_text())
    b = json.loads((csv_report / "summary.json").read_text())
    assert a["inputs"]["staging"] == {"database": str(db)}
    assert a["inputs"]["clinical"] == {"database": str(db)}
    assert a["inputs"]["n_patients_analysed"] == N
    assert a["groupings"] == b["groupings"]


def test_database_password_is_not_recorded() -> None:
    from staging.commands.cohort import _safe_url

    assert _safe_url("postgresql://lab:secret@db.example/psma") == \
        "postgresql://lab:***@db.example/psma"
    assert _safe_url("results/results.db") == "results/results.db"
