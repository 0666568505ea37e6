"""Benchmark ``psma-stage stage`` on a full-size synthetic study from DICOM.

Run: ``.venv/bin/python benchmarks/bench_stage.py [--seed 7] [--repeats 1] [--keep DIR]``

Generates one full-size patient (CT 512x512 at ~0.98 mm, 3 mm slices; PET ~200x200 at ~4 mm) as
Siemens-flavoured DICOM, then runs ``psma-stage stage`` in a fresh process (exactly as a user
does) and reports the total wall time, the peak resident memory of that process, and the
per-stage split the pipeline records in ``staging.json`` (load, suv, anatomy, lesions, staging,
outputs). Targets: total < 10 s, peak < 3 GB. The machine and its load average are printed with
the figures (the machine is shared; compare figures taken under similar load).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
# VmHWM (peak RSS of this process's own address space) rather than ru_maxrss, which Linux
# carries over from the forking parent (the benchmark holding the generated patient) on exec.
_PEAK = """
import sys
try:
    from staging.cli import main
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_RSS_KB {peak}\\n")
sys.exit(code)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stage", default="M1b-M1c", help="study group of the patient")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep data and outputs here")
    args = parser.parse_args(argv)

    from fixtures.phantom import generate_patient, write_patient

    work = Path(tempfile.mkdtemp(prefix="bench-stage-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    info_path = work / "patient.json"
    if info_path.is_file():  # --keep DIR from an earlier run: reuse the generated study
        info = json.loads(info_path.read_text())
        pdir = Path(info["folder"])
    else:
        t0 = time.perf_counter()
        patient = generate_patient(args.seed, size="full", stage=args.stage)
        pdir = write_patient(patient, work / "data", format="dicom", vendor="siemens")
        info = {"folder": str(pdir), "ct_shape": list(patient.ct.shape),
                "pet_shape": list(patient.pet_suv.shape), "mitnm": patient.truth["mitnm"],
                "generate_s": round(time.perf_counter() - t0, 1)}
        info_path.write_text(json.dumps(info))
        del patient
    n_ct = sum(1 for p in (pdir / "dicom" / "CT").rglob("*") if p.is_file())
    n_pt = sum(1 for p in (pdir / "dicom" / "PT").rglob("*") if p.is_file())
    print(f"full-size patient: CT {info['ct_shape']} ({n_ct} files), PET {info['pet_shape']} "
          f"({n_pt} files), generated in {info['generate_s']} s", file=sys.stderr)
    runs = []
    for n in range(args.repeats):
        out = work / f"result-{n}"
        load_before = os.getloadavg()
        t1 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK, "-q", "stage", str(pdir / "dicom"), "-o", str(out)],
            cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t1
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        peak_kb = int(proc.stderr.split("PEAK_RSS_KB")[-1].split()[0])
        record = json.loads((out / "staging.json").read_text())
        runs.append({"wall_s": round(wall, 2), "peak_rss_gb": round(peak_kb / 1024**2, 3),
                     "timings_s": record["timings_s"], "load_average": load_before,
                     "mitnm": record["mitnm"], "truth_mitnm": info["mitnm"],
                     "lesions": record["lesion_count"]})
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GiB",
        "python": platform.python_version(),
        "ct_shape": info["ct_shape"], "pet_shape": info["pet_shape"],
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    best = min(runs, key=lambda r: r["wall_s"])
    stages = " | ".join(f"{k} {v:.2f}" for k, v in best["timings_s"].items())
    print(f"\n| total wall (process) | peak RSS | per stage (s) | load avg |\n|---|---|---|---|\n"
          f"| {best['wall_s']:.1f} s | {best['peak_rss_gb']:.2f} GB | {stages} | "
          f"{best['load_average'][0]:.1f} |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
