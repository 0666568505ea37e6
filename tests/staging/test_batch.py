"""Batch orchestration, resume and crash safety, with a test double of stage_study.

The double (tests/staging/batch_doubles.py) writes a staging.json-shaped record; the real
pipeline on phantom cohorts is exercised in test_batch_cohort.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from imaging.errors import ConfigError
from staging import batch
from staging import database as db
from tests.staging.batch_doubles import FakeConfig, fake_stage, write_fake_cohort

REPO = Path(__file__).resolve().parents[2]


def _specs(n: int, **extra: object) -> list[dict[str, object]]:
    return [{"patient_id": f"P{i:03d}", "study_uid": f"1.2.826.0.1.{i}", "lesions": i % 4,
             **extra} for i in range(n)]


def _run(manifest: Path, out: Path, **kwargs: object) -> batch.BatchSummary:
    items = batch.discover_batch(manifest)
    options: dict[str, object] = {"config": FakeConfig(), "jobs": 2, "stage_fn": fake_stage}
    options.update(kwargs)
    return batch.run_batch(items, out, **options)  # type: ignore[arg-type]


def _snapshot(out: Path) -> dict[str, object]:
    """Every study folder's files and bytes, and the database's study rows."""
    folders = {}
    for folder in sorted(p for p in out.glob("*/*") if p.is_dir()
                         and not p.parent.name.startswith(".")):
        folders[f"{folder.parent.name}/{folder.name}"] = {
            f.name: f.read_bytes() for f in sorted(folder.iterdir())}
    results = db.read_results(out / "results.db")
    lesions = db.read_lesions(out / "results.db")
    results = results.drop(columns=["run_id", "staged_at"])
    return {"folders": folders,
            "results": results.astype(object).where(results.notna(), None).to_dict("records"),
            "lesions": lesions.astype(object).where(lesions.notna(), None).to_dict("records")}


def test_batch_stages_good_studies_and_records_failures(tmp_path: Path) -> None:
    specs = _specs(5)
    specs[1]["fail"] = "RadionuclideTotalDose (0018,1074) is absent"
    specs[3]["no_ct"] = True
    manifest = write_fake_cohort(tmp_path / "in", specs)
    events: list[batch.BatchEvent] = []
    summary = _run(manifest, tmp_path / "out", progress=events.append)

    assert (summary.n_items, summary.n_staged, summary.n_failed) == (5, 3, 2)
    assert summary.exit_code == 1
    results = db.read_results(tmp_path / "out" / "results.db")
    assert sorted(results["patient_id"]) == ["P000", "P002", "P004"]
    assert list(results["lesion_count"]) == [0, 2, 0]
    for key in results["study_key"]:
        assert (tmp_path / "out" / key / "staging.json").is_file()
    lesions = db.read_lesions(tmp_path / "out" / "results.db")
    assert len(lesions) == 2
    assert set(lesions["patient_id"]) == {"P002"}
    failures = db.read_failures(tmp_path / "out" / "results.db").set_index("patient_id")
    assert failures.loc["P001", "error_type"] == "SuvError"
    assert "RadionuclideTotalDose" in failures.loc["P001", "message"]
    assert "no CT" in failures.loc["P003", "message"]
    assert not (tmp_path / "out" / "P001").exists()
    # progress: the discovery failure, then the start of staging, then one per staged item
    assert [e.kind for e in events[:2]] == ["failed", "start"]
    assert events[1].done == 1
    assert len(events) == 6
    assert events[-1].done == 5
    assert events[-1].failed == 2
    # nothing temporary is left behind
    assert not any((tmp_path / "out" / ".psma-stage" / "staging").glob("*"))
    runs = db.read_runs(tmp_path / "out" / "results.db")
    assert runs.loc[0, "status"] == "finished"
    assert runs.loc[0, "n_failed"] == 2


def test_resume_skips_unchanged_and_restages_changed(tmp_path: Path) -> None:
    manifest = write_fake_cohort(tmp_path / "in", _specs(3))
    out = tmp_path / "out"
    first = _run(manifest, out)
    assert first.n_staged == 3
    before = _snapshot(out)

    again = _run(manifest, out)
    assert (again.n_staged, again.n_skipped) == (0, 3)
    assert _snapshot(out) == before

    changed = tmp_path / "in" / "case001" / "pet.json"
    spec = json.loads(changed.read_text())
    spec["lesions"] = 3
    changed.write_text(json.dumps(spec))
    third = _run(manifest, out)
    assert (third.n_staged, third.n_skipped) == (1, 2)
    results = db.read_results(out / "results.db").set_index("patient_id")
    assert results.loc["P001", "lesion_count"] == 3
    assert len(results) == 3

    fourth = _run(manifest, out, config=FakeConfig(threshold=4.0))
    assert fourth.n_staged == 3  # configuration changed: everything again
    assert set(db.read_results(out / "results.db")["config_hash"]) == {"fake-4.0"}
    assert _run(manifest, out, config=FakeConfig(threshold=4.0), force=True).n_staged == 3


def test_failed_study_is_retried_and_its_failure_cleared(tmp_path: Path) -> None:
    specs = _specs(2)
    specs[0]["fail"] = "dose missing"
    manifest = write_fake_cohort(tmp_path / "in", specs)
    out = tmp_path / "out"
    assert _run(manifest, out).n_failed == 1
    assert _run(manifest, out).n_failed == 1  # still broken: retried, attempts counted
    failures = db.read_failures(out / "results.db")
    assert list(failures["attempts"]) == [2]
    specs[0].pop("fail")
    (tmp_path / "in" / "case000" / "pet.json").write_text(json.dumps(specs[0]))
    fixed = _run(manifest, out)
    assert (fixed.n_staged, fixed.n_failed, fixed.exit_code) == (1, 0, 0)
    assert db.read_failures(out / "results.db").empty


def test_fail_fast_and_limit(tmp_path: Path) -> None:
    specs = _specs(6)
    specs[0]["fail"] = "broken"
    manifest = write_fake_cohort(tmp_path / "in", specs)
    summary = _run(manifest, tmp_path / "ff", jobs=1, fail_fast=True)
    assert summary.n_failed == 1
    assert summary.n_staged == 0
    assert summary.not_attempted == 5
    assert summary.exit_code == 1
    limited = _run(manifest, tmp_path / "lim", limit=3)
    assert limited.n_items == 3
    assert limited.n_staged + limited.n_failed == 3


def test_worker_death_is_a_recorded_failure(tmp_path: Path) -> None:
    specs = _specs(3)
    specs[1]["die"] = True
    manifest = write_fake_cohort(tmp_path / "in", specs)
    summary = _run(manifest, tmp_path / "out", jobs=1)
    assert (summary.n_staged, summary.n_failed) == (2, 1)
    failures = db.read_failures(tmp_path / "out" / "results.db")
    assert list(failures["error_type"]) == ["WorkerDied"]
    assert "worker process died" in failures.loc[0, "message"]


def test_patient_ids_are_sanitised_into_folders(tmp_path: Path) -> None:
    specs = [{"patient_id": "../../escape", "study_uid": "1.2.3", "lesions": 1},
             {"patient_id": "A/B\\C", "study_uid": "../x", "lesions": 0}]
    manifest = write_fake_cohort(tmp_path / "in", specs)
    out = tmp_path / "out"
    assert _run(manifest, out).n_staged == 2
    assert not (tmp_path / "escape").exists()
    staged = sorted(str(p.relative_to(out)) for p in out.glob("*/*/staging.json"))
    assert len(staged) == 2
    for rel in staged:
        patient, study, _ = rel.split("/")
        for part in (patient, study):
            assert not part.startswith(".")
            assert "\\" not in part
        assert (out / rel).resolve().is_relative_to(out.resolve())
    # the raw identifiers are kept in the database, not in paths
    assert sorted(db.read_results(out / "results.db")["patient_id"]) == ["../../escape",
                                                                         "A/B\\C"]


def test_output_folder_guards(tmp_path: Path) -> None:
    manifest = write_fake_cohort(tmp_path / "in", _specs(1))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        _run(manifest, foreign)
    assert (foreign / "thesis.docx").read_text() == "precious"

    out = tmp_path / "out"
    _run(manifest, out)
    with pytest.raises(ConfigError, match="same --db"):
        _run(manifest, out, db_url=str(tmp_path / "other.db"))
    with pytest.raises(ConfigError, match="jobs"):
        _run(manifest, out, jobs=0)


def test_recovery_repairs_every_crash_state(tmp_path: Path) -> None:
    """Each state a kill can leave (see docs/batch.md) is repaired, then completed."""
    manifest = write_fake_cohort(tmp_path / "in", _specs(4))
    reference = tmp_path / "reference"
    _run(manifest, reference)
    out = tmp_path / "out"
    _run(manifest, out)
    keys = sorted(db.read_results(out / "results.db")["study_key"])
    state = out / ".psma-stage"
    engine = db.open_database(out / "results.db")
    try:
        # 1. killed after the rename, before the commit: folder without rows
        db.delete_study(engine, keys[0])
        # 2. killed between moving an old result aside and renaming the new one in
        (state / "trash").mkdir(parents=True)
        os.rename(out / keys[1], state / "trash" / "old")
        # 3. a half-written folder whose staging.json differs from the committed one
        (out / keys[2] / "staging.json").write_text("{")
        # 4. a worker's temporary folder and a run left 'running'
        (state / "staging" / "9-000001" / "study").mkdir(parents=True)
        db.start_run(engine, input="x", out_dir=out, software_version="t", config_hash="h",
                     config={}, jobs=1)
    finally:
        engine.dispose()
    summary = _run(manifest, out)
    assert sorted(summary.recovered) == sorted(keys[:3])
    assert (summary.n_staged, summary.n_skipped) == (3, 1)
    assert _snapshot(out) == _snapshot(reference)
    assert not any(state.glob("staging/*"))
    assert not (state / "trash").exists()
    assert "interrupted" in set(db.read_runs(out / "results.db")["status"])


def test_second_concurrent_run_is_refused(tmp_path: Path) -> None:
    manifest = write_fake_cohort(tmp_path / "in", _specs(1))
    out = tmp_path / "out"
    _run(manifest, out)
    with batch._locked(out.resolve()), pytest.raises(ConfigError, match="Another psma-stage"):
        _run(manifest, out)


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from staging import batch
    from tests.staging.batch_doubles import FakeConfig, fake_stage
    items = batch.discover_batch(Path(sys.argv[1]))
    batch.run_batch(items, Path(sys.argv[2]), config=FakeConfig(), jobs=2, stage_fn=fake_stage)
""")


@pytest.mark.slow
def test_sigkill_at_many_moments_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    """kill -9 the batch parent at several moments; rerunning gives the uninterrupted result.

    Each of the three rounds stages at least one study before its kill, and with two workers
    and the offset up to about three: 16 studies leave room for the kills to interrupt the
    work (8 did not always: a fast round could finish them all)."""
    n = 16
    manifest = write_fake_cohort(tmp_path / "in", _specs(n, sleep=0.25))
    reference = tmp_path / "reference"
    _run(manifest, reference)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for offset in (0.0, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(manifest), str(out)],
                                cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        before = len(list(out.glob("*/*/staging.json")))
        deadline = time.monotonic() + 30
        while (len(list(out.glob("*/*/staging.json"))) <= before and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)  # kill only once this round has made progress
        time.sleep(offset)
        assert proc.poll() is None, "the run finished before it could be killed"
        helpers = psutil.Process(proc.pid).children(recursive=True)  # fork server, workers
        assert helpers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(helpers, timeout=15)
        assert not alive, f"orphaned worker processes survived the kill: {alive}"
    assert len(db.read_results(out / "results.db")) < n  # the kills did interrupt the work
    done = _run(manifest, out)
    assert done.n_failed == 0
    assert _snapshot(out) == _snapshot(reference)
    staged = db.read_results(out / "results.db")
    assert len(staged) == n
    assert staged["study_key"].is_unique


def test_run_command_usage_errors_exit_2(tmp_path: Path) -> None:
    from staging.cli import main

    assert main(["run", str(tmp_path / "absent"), "-o", str(tmp_path / "o")]) == 2
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o"), "--limit", "0"]) == 2
    assert main(["run", str(tmp_path), "-o", str(tmp_path / "o"), "--set", "nosuch.key=1"]) == 2
    assert not (tmp_path / "o").exists()


def test_ctrl_c_stops_at_once_and_rerun_completes(tmp_path: Path) -> None:
    manifest = write_fake_cohort(tmp_path / "in", _specs(2, sleep=20.0))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(manifest), str(out)],
                            cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(out.glob(".psma-stage/staging/*/")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the studies are being staged
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    proc.wait(timeout=60)
    assert time.monotonic() - start < 15  # did not wait for the 20 s studies
    assert proc.returncode != 0
    assert db.read_runs(out / "results.db").loc[0, "status"] == "interrupted"
    fast = write_fake_cohort(tmp_path / "in", _specs(2))  # same studies, now quick to stage
    done = _run(fast, out)
    assert (done.n_staged, done.n_failed) == (2, 0)
