"""The study database: schema and migrations, one transaction per study, reads, export, clinical.

Every test runs on SQLite and on a real PostgreSQL server started by the test set-up
(``postgres`` marker; skipped with the reason when no server can start, failed under CI=true).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from imaging.errors import ConfigError
from staging import batch
from staging import database as db
from staging.cli import main
from tests.conftest import skip_or_fail
from tests.staging.batch_doubles import FakeConfig, fake_stage, write_fake_cohort
from tests.staging.pg_server import fresh_database, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    try:
        with postgres_server() as server:
            yield server
    except RuntimeError as err:
        skip_or_fail(f"no PostgreSQL server could be started: {err}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return db.database_url(tmp_path / "study.db")
    return fresh_database(request.getfixturevalue("pg_server"))


def _record(patient: str = "P1", study: str = "1.2.3", n: int = 2) -> dict[str, Any]:
    lesions = [{"id": i + 1, "category": "bone", "region": "spine", "suv_max": 12.5,
                "suv_mean": 6.0, "suv_peak": 9.0, "volume_ml": 2.0, "tl_psma": 12.0,
                "centroid_mm": [1.0, -2.0, 300.5], "mipsma_score": 3, "equivocal": False}
               for i in range(n)]
    return {
        "schema_version": "1", "patient_id": patient, "study_instance_uid": study,
        "mitnm": "miT0N0M1b" if n else "miT0N0M0", "group": "M1b-M1c" if n else "T0N0M0",
        "emmett_group": "extra_fossa" if n else "negative", "lesion_count": n,
        "lesion_count_bin": {0: "0", 1: "1"}.get(n, "2-3"),
        "counts_by_category": {"fossa": 0, "node_pelvic": 0, "node_extrapelvic": 0, "bone": n,
                               "visceral": 0, "equivocal": 0},
        "psma_tv_ml": 2.0 * n, "tl_psma": 12.0 * n, "max_mipsma_score": 3 if n else None,
        "bone_pattern": "oligometastatic" if n > 1 else "none", "needs_review": False,
        "reference_suv": {"blood_pool": {"suv_mean": 1.6}, "liver": 5.2, "parotid": None},
        "series": {"pet": "1.2.3.4", "ct": {"series_instance_uid": "1.2.3.5", "n": 300}},
        "config_hash": "abc", "software_version": "0.1.0", "anatomy_provider": "rules",
        "lesions": lesions,
    }


def _store(engine: sa.engine.Engine, run_id: int, record: dict[str, Any],
           key: str = "P1/1.2.3") -> None:
    db.record_study(engine, run_id=run_id, key=key, record=record, source="/in/P1",
                    input_hash="i", config_hash="c", result_digest="d",
                    files={"staging.json": 10})


def _run_id(engine: sa.engine.Engine) -> int:
    return db.start_run(engine, input="/in", out_dir=Path("/out"), software_version="0.1.0",
                        config_hash="c", config={"a": 1}, jobs=2)


def test_migrations_upgrade_an_older_database_keeping_its_data(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        assert db.migrate(engine, to_version=1) == 1
        assert db.schema_version(engine) == 1
        assert not sa.inspect(engine).has_table("clinical")
        _store(engine, _run_id(engine), _record())
    finally:
        engine.dispose()
    engine = db.open_database(db_url)  # brings it to the current version
    try:
        assert db.schema_version(engine) == db.SCHEMA_VERSION == 2
        assert sa.inspect(engine).has_table("clinical")
        assert list(db.read_results(engine)["patient_id"]) == ["P1"]
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM schema_version "
                                            "ORDER BY version")).scalars().all()
        assert versions == [1, 2]
    finally:
        engine.dispose()


def test_newer_schema_is_refused_with_advice(db_url: str) -> None:
    engine = db.open_database(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, description, applied_at) "
                             "VALUES (99, 'future', CURRENT_TIMESTAMP)"))
    engine.dispose()
    with pytest.raises(db.DatabaseError, match=r"schema version 99.*upgrade psma-stage"):
        db.open_database(db_url)


def test_record_study_is_one_transaction_that_replaces(db_url: str) -> None:
    engine = db.open_database(db_url)
    try:
        run = _run_id(engine)
        _store(engine, run, _record(n=2))
        _store(engine, run, _record(n=3))  # restaged: replaces, never duplicates
        assert len(db.read_results(engine)) == 1
        assert list(db.read_lesions(engine)["lesion_id"]) == [1, 2, 3]

        broken = _record(n=1)
        broken["lesions"].append(copy.deepcopy(broken["lesions"][0]))  # duplicate lesion id
        with pytest.raises(IntegrityError):
            _store(engine, run, broken)
        # the failed transaction left the previous result whole
        results = db.read_results(engine)
        assert list(results["lesion_count"]) == [3]
        assert len(db.read_lesions(engine)) == 3
        with engine.connect() as conn:
            series = conn.execute(sa.text("SELECT role, series_instance_uid FROM series "
                                          "ORDER BY role")).all()
        assert [tuple(r) for r in series] == [("ct", "1.2.3.5"), ("pet", "1.2.3.4")]
    finally:
        engine.dispose()


def test_read_functions_give_tidy_typed_tables(db_url: str) -> None:
    engine = db.open_database(db_url)
    try:
        run = _run_id(engine)
        _store(engine, run, _record("P2", "9.9", n=0), key="P2/9.9")
        _store(engine, run, _record("P1", "1.2.3", n=2))
        db.record_failure(engine, run_id=run, item_key="P3/7.7", source="/in/P3",
                          error_type="SuvError", message="dose missing", patient_id="P3")
        results = db.read_results(db_url)
        assert list(results["patient_id"]) == ["P1", "P2"]
        row = results.iloc[0]
        assert row["group"] == "M1b-M1c"
        assert row["count_bone"] == 2
        assert row["ref_blood_pool_suv"] == pytest.approx(1.6)
        assert row["ref_liver_suv"] == pytest.approx(5.2)
        assert pd.isna(row["ref_parotid_suv"])
        assert results["needs_review"].dtype == bool
        assert pd.isna(results.iloc[1]["max_mipsma_score"])
        lesions = db.read_lesions(db_url)
        assert list(lesions.columns[:4]) == ["patient_id", "study_instance_uid", "study_key",
                                             "lesion_id"]
        assert lesions["centroid_z_mm"].tolist() == [300.5, 300.5]
        failures = db.read_failures(db_url)
        assert failures.loc[0, "message"] == "dose missing"
    finally:
        engine.dispose()


def test_export_csv_and_parquet_with_clinical_join(db_url: str, tmp_path: Path) -> None:
    engine = db.open_database(db_url)
    try:
        _store(engine, _run_id(engine), _record())
    finally:
        engine.dispose()
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("patient_id,age,psa,pfs_months,pfs_event,site\n"
                        "P1,66,0.4,30.5,yes,A\nP9,70,,12,0,B\n")
    assert db.import_clinical(db_url, clinical) == 2
    table = db.read_clinical(db_url).set_index("patient_id")
    assert table.loc["P1", "pfs_event"] is True or table.loc["P1", "pfs_event"] == 1
    assert pd.isna(table.loc["P9", "psa"])
    assert table.loc["P9", "site"] == "B"

    assert db.export_table(db_url, tmp_path / "p.csv", what="patients") == 1
    patients = pd.read_csv(tmp_path / "p.csv")
    assert patients.loc[0, "age"] == 66
    assert patients.loc[0, "group"] == "M1b-M1c"
    assert db.export_table(db_url, tmp_path / "l.parquet", what="lesions") == 2
    lesions = pd.read_parquet(tmp_path / "l.parquet")
    assert lesions["suv_max"].tolist() == [12.5, 12.5]
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        db.export_table(db_url, tmp_path / "x.xlsx")


def test_import_clinical_checks_everything_before_writing(db_url: str, tmp_path: Path) -> None:
    db.open_database(db_url).dispose()
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,age,os_event\nP1,61,1\nP2,sixty,0\n")
    with pytest.raises(ConfigError, match=r"row 3, column 'age': 'sixty' is not a number"):
        db.import_clinical(db_url, bad)
    bad.write_text("patient_id,os_event\nP1,maybe\n")
    with pytest.raises(ConfigError, match="yes/no"):
        db.import_clinical(db_url, bad)
    bad.write_text("id,age\nP1,61\n")
    with pytest.raises(ConfigError, match="no 'patient_id' column"):
        db.import_clinical(db_url, bad)
    bad.write_text("patient_id,age\nP1,61\nP1,62\n")
    with pytest.raises(ConfigError, match="more than once"):
        db.import_clinical(db_url, bad)
    assert db.read_clinical(db_url).empty  # nothing half-imported


def test_batch_run_and_crash_recovery_on_this_database(db_url: str, tmp_path: Path) -> None:
    specs = [{"patient_id": f"P{i}", "study_uid": f"1.2.{i}", "lesions": i} for i in range(4)]
    specs[2]["fail"] = "RadionuclideTotalDose absent"
    manifest = write_fake_cohort(tmp_path / "in", specs)
    out = tmp_path / "out"

    def run() -> batch.BatchSummary:
        return batch.run_batch(batch.discover_batch(manifest), out, config=FakeConfig(),
                               db_url=db_url, jobs=2, stage_fn=fake_stage)

    first = run()
    assert (first.n_staged, first.n_failed, first.exit_code) == (3, 1, 1)
    assert not (out / "results.db").exists()  # everything went to --db
    keys = sorted(db.read_results(db_url)["study_key"])
    engine = db.open_database(db_url)
    db.delete_study(engine, keys[0])  # as if killed between the rename and the commit
    engine.dispose()
    second = run()
    assert second.recovered == (keys[0],)
    assert (second.n_staged, second.n_skipped, second.n_failed) == (1, 2, 1)
    results = db.read_results(db_url)
    assert sorted(results["study_key"]) == keys
    assert results["study_key"].is_unique
    assert len(db.read_failures(db_url)) == 1
    runs = db.read_runs(db_url)
    assert list(runs["status"]) == ["finished", "finished"]
    # a database mirrors one output folder
    with pytest.raises(db.DatabaseError, match="another output folder"):
        batch.run_batch(batch.discover_batch(manifest), tmp_path / "other", config=FakeConfig(),
                        db_url=db_url, jobs=1, stage_fn=fake_stage)


def test_bad_urls_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No driver"):
        db.open_database("nosuchdb+nodriver://x/y")
    with pytest.raises(db.DatabaseError, match="does not exist"):
        db.read_results(tmp_path / "absent.db")
    empty = tmp_path / "empty.db"
    sa.create_engine(db.database_url(empty)).connect().close()
    with pytest.raises(db.DatabaseError, match="holds no psma-stage results"):
        db.read_results(empty)
    with pytest.raises(db.DatabaseError, match="Check the URL"):
        db.open_database("postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")


def test_export_and_import_clinical_commands(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    engine = db.open_database(path)
    _store(engine, _run_id(engine), _record())
    engine.dispose()
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("patient_id,os_months,os_event\nP1,40.0,no\n")
    assert main(["import-clinical", "--db", str(path), str(clinical)]) == 0
    assert main(["export", "--db", str(path), "-o", str(tmp_path / "c.csv")]) == 0
    exported = pd.read_csv(tmp_path / "c.csv")
    assert exported.loc[0, "os_months"] == 40.0
    assert main(["export", "--db", str(path), "-o", str(tmp_path / "l.csv"),
                 "--what", "lesions"]) == 0
    assert len(pd.read_csv(tmp_path / "l.csv")) == 2
    assert main(["export", "--db", str(path), "-o", str(tmp_path / "x.txt")]) == 2
    assert main(["export", "--db", str(tmp_path / "nope.db"), "-o",
                 str(tmp_path / "y.csv")]) == 1
