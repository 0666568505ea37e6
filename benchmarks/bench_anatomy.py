"""Benchmark the rule-based anatomy labeller on a full-size study (CT 512 x 512 x 400).

Run: ``.venv/bin/python benchmarks/bench_anatomy.py [--repeat 3]``

The CT is a synthetic patient's CT resampled to 512 x 512 x 400 (0.98 mm pixels, 2.5 mm
slices, HFS) and the PET its SUV on a 200 x 200 grid at 4.07 mm, so the timing includes the
real work on realistic content: block-averaging the CT to the 3 mm working grid, every mask,
landmark and region, and putting the results on the PET grid. Reports wall time, CPU time of
this process (one core: SimpleITK's global default and the OpenMP / BLAS pools are set to one
thread) and peak resident memory, with the machine load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

# one core: the target is single-threaded (set before numpy / SciPy load their thread pools)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.anatomy import label_anatomy  # noqa: E402
from imaging.volume import Volume  # noqa: E402


def _full_size(seed: int) -> tuple[Volume, Volume]:
    from fixtures.phantom import generate_patient

    patient = generate_patient(seed, size="small")
    ct, pet = patient.ct, patient.pet_suv
    z0, z1 = ct.z_extent_mm()
    centre = ct.index_to_world(np.asarray(ct.shape, dtype=float) / 2.0)
    n = (512, 512, 400)
    spacing = (0.9765625, 0.9765625, min(2.5, (z1 - z0) / (n[2] - 1)))
    origin = (centre[0] - spacing[0] * (n[0] - 1) / 2, centre[1] - spacing[1] * (n[1] - 1) / 2,
              z1)
    f = sitk.ResampleImageFilter()
    f.SetSize(n)
    f.SetOutputSpacing(spacing)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # HFS: slices head to feet
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(-1024)
    f.SetOutputPixelType(sitk.sitkInt16)
    big = Volume.from_sitk(f.Execute(ct.to_sitk()), unit="HU")
    f.SetSize((200, 200, int(np.ceil((z1 - z0) / 3.0))))
    f.SetOutputSpacing((4.07, 4.07, 3.0))
    f.SetOutputOrigin((centre[0] - 4.07 * 99.5, centre[1] - 4.07 * 99.5, z1))
    f.SetOutputPixelType(sitk.sitkFloat32)
    f.SetDefaultPixelValue(0)
    pet_full = Volume.from_sitk(f.Execute(pet.to_sitk()), unit="g/ml")
    return big, pet_full


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    ct, pet = _full_size(31)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    load_before = [round(v, 2) for v in os.getloadavg()]
    walls, cpus = [], []
    for _ in range(args.repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        anatomy = label_anatomy(ct, pet=pet)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "ct_shape_kji": list(ct.shape), "ct_spacing_mm": [round(s, 3) for s in ct.spacing],
        "pet_shape_kji": list(pet.shape),
        "wall_s": [round(w, 2) for w in walls], "cpu_s": [round(c, 2) for c in cpus],
        "best_wall_s": round(min(walls), 2), "best_cpu_s": round(min(cpus), 2),
        "peak_rss_mib": round(rss1, 0), "rss_before_mib": round(rss0, 0),
        "masks": len(anatomy.masks), "nodal_regions": len(anatomy.nodal_regions),
        "landmarks_found": sum(1 for f in anatomy.landmarks.values() if f.found),
        "load_average_before": load_before,
        "load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
