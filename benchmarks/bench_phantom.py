"""Benchmark: time and peak memory of generating (and writing) synthetic patients.

Each measurement runs in a fresh subprocess: ``generate_patient(seed, size=...)`` then
``write_patient(..., format="dicom")`` into a temporary folder; wall time, CPU time and peak
resident memory (``ru_maxrss``) above the after-import baseline are reported.

Run:  .venv/bin/python benchmarks/bench_phantom.py [--small-repeats 3] [--full-repeats 1]
Targets (issue 3): ``--size small`` in seconds (unit tests); ``--size full`` (CT 512x512 at
0.98 mm, 3 mm slices; PET 200x200 at 4.07 mm) in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
from fixtures.phantom import generate_patient, write_patient
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
p = generate_patient(int(sys.argv[1]), size=sys.argv[2], stage="M1b-M1c")
t1, c1 = time.perf_counter(), time.process_time()
with tempfile.TemporaryDirectory() as tmp:
    write_patient(p, Path(tmp), format="dicom")
    t2, c2 = time.perf_counter(), time.process_time()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"generate_s": t1 - t0, "generate_cpu_s": c1 - c0, "write_dicom_s": t2 - t1,
                  "write_cpu_s": c2 - c1, "peak_above_baseline_mb": (peak - base) / 1024,
                  "ct_shape": list(p.ct.shape), "pet_shape": list(p.pet_suv.shape),
                  "lesions": len(p.truth["lesions"])}))
"""


def _run(seed: int, size: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", _CHILD, str(seed), size], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-repeats", type=int, default=3)
    parser.add_argument("--full-repeats", type=int, default=1)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| size | CT (k,j,i) | PET (k,j,i) | generate s (CPU s) | write DICOM s (CPU s) | "
          "peak MB |")
    print("|---|---|---|---|---|---|")
    for size, n in (("small", args.small_repeats), ("full", args.full_repeats)):
        runs = [_run(100 + i, size) for i in range(n)]
        med = {k: statistics.median(r[k] for r in runs) for k in (
            "generate_s", "generate_cpu_s", "write_dicom_s", "write_cpu_s",
            "peak_above_baseline_mb")}
        r0 = runs[0]
        print(f"| {size} (median of {n}) | {'x'.join(map(str, r0['ct_shape']))} | "
              f"{'x'.join(map(str, r0['pet_shape']))} | {med['generate_s']:.1f} "
              f"({med['generate_cpu_s']:.1f}) | {med['write_dicom_s']:.1f} "
              f"({med['write_cpu_s']:.1f}) | {med['peak_above_baseline_mb']:.0f} |")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
