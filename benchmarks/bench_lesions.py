"""Benchmark of the lesion finder on a full-size PET (400 x 200 x 200 voxels, k x j x i).

The image is an analytic whole-body PET: an elliptic body cylinder, liver, spleen, kidneys,
bladder, spine, aorta and parotid glands with PSMA-11-like uptake, Gaussian PSF and noise, plus
0, 10 or 200 spherical lesions (radius 4-12 mm, SUV 4-30; some of the 200 touch and merge).
Reported: wall and CPU time of ``find_lesions`` per method over a few repeats, with a single
thread for numpy/SciPy (CPU time is the figure to read on a shared, loaded machine).

Target: < 1 s for the default method on one core, growing only mildly with the lesion count.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lesions.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from imaging.lesions import LesionConfig, find_lesions
from imaging.vocabulary import AnatomyLabel as A
from imaging.volume import Volume

SHAPE = (400, 200, 200)
SPACING = (3.0, 4.07, 4.07)


def _ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]
               ) -> tuple[tuple[slice, slice, slice], NDArray[np.bool_]]:
    """Ellipsoid (mm, (k, j, i) order) as a bounding-box slice and the mask inside it."""
    lo = [max(int((c - r) / s) - 1, 0) for c, r, s in zip(centre, radii, SPACING, strict=True)]
    hi = [min(int((c + r) / s) + 2, n) for c, r, s, n in zip(centre, radii, SPACING, SHAPE,
                                                              strict=True)]
    axes = [np.arange(a, b) * s for a, b, s in zip(lo, hi, SPACING, strict=True)]
    k, j, i = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2
              + ((i - centre[2]) / radii[2]) ** 2) <= 1.0
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])), inside


def make_scan(n_lesions: int, *, seed: int = 0) -> tuple[Volume, dict[A, NDArray[np.bool_]]]:
    """Synthetic full-size PSMA PET with ``n_lesions`` spheres and its organ masks."""
    rng = np.random.default_rng(seed)
    masks: dict[A, NDArray[np.bool_]] = {}

    def organ(label: A, parts: list[tuple[tuple[float, float, float],
                                          tuple[float, float, float]]]) -> NDArray[np.bool_]:
        m = np.zeros(SHAPE, dtype=bool)
        for c, r in parts:
            sl, inside = _ellipsoid(c, r)
            m[sl] |= inside
        masks[label] = m
        return m

    cy, cx = 100 * 4.07, 100 * 4.07
    body = organ(A.BODY, [((600.0, cy, cx), (650.0, 130.0, 180.0))])
    act = np.where(body, 0.7, 0.0).astype(np.float32)
    uptake = [
        (A.LIVER, [((820.0, cy, cx - 70), (80.0, 90.0, 100.0))], 5.2),
        (A.SPLEEN, [((860.0, cy + 40, cx + 110), (45.0, 35.0, 30.0))], 8.0),
        (A.KIDNEYS, [((700.0, cy + 60, cx - 80), (55.0, 25.0, 25.0)),
                     ((700.0, cy + 60, cx + 80), (55.0, 25.0, 25.0))], 42.0),
        (A.URINARY_BLADDER, [((200.0, cy - 40, cx), (35.0, 40.0, 45.0))], 60.0),
        (A.BONE, [((600.0, cy + 80, cx), (560.0, 18.0, 18.0))], 1.3),
        (A.AORTA, [((760.0, cy + 45, cx + 25), (300.0, 12.0, 12.0))], 1.7),
        (A.SALIVARY_GLANDS, [((1130.0, cy, cx - 60), (25.0, 20.0, 15.0)),
                             ((1130.0, cy, cx + 60), (25.0, 20.0, 15.0))], 15.0),
        (A.LUNGS, [((1000.0, cy, cx - 80), (110.0, 70.0, 60.0)),
                   ((1000.0, cy, cx + 80), (110.0, 70.0, 60.0))], 0.45),
    ]
    for label, parts, suv in uptake:
        act[organ(label, parts)] = suv
    # Lesions in soft tissue / bone away from the hot organs.
    hot = np.zeros(SHAPE, dtype=np.float32)
    placed = 0
    while placed < n_lesions:
        c = (rng.uniform(150, 1050), cy + rng.uniform(-90, 90), cx + rng.uniform(-140, 140))
        r = rng.uniform(4.0, 12.0)
        sl, inside = _ellipsoid(c, (r, r, r))
        if not body[sl][inside].all():
            continue
        hot[sl][inside] = rng.uniform(4.0, 30.0)
        placed += 1
    act += hot
    sigma = [6.5 / 2.355 / s for s in SPACING]
    img = ndimage.gaussian_filter(act, sigma)
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), 0.7)
    noise /= noise.std()
    img = np.maximum(img + 0.3 * np.sqrt(np.maximum(img, 0)) * noise, 0).astype(np.float32)
    return Volume(img, SPACING, (0.0, 0.0, 0.0), unit="g/ml"), masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 10, 200],
                        help="lesion counts to benchmark")
    args = parser.parse_args(argv)
    methods = {
        "fixed SUV 3 (default)": LesionConfig(),
        "qPSMA split": LesionConfig.preset("qpsma"),
        "PERCIST": LesionConfig.preset("percist"),
        "SUV 3 + 41% isocontour": LesionConfig.preset("suv3-iso41"),
        "SUV 3 + iterative isocontour (ITM)": LesionConfig.preset("suv3-itm"),
        "SUV 3 + ITM + sphere fit": LesionConfig.preset("suv3-fit"),
        "SUV 3 + split": LesionConfig.preset("suv3-split"),
    }
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {' '.join(load)}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"# grid {SHAPE} voxels, spacing {SPACING} mm")
    print("| lesions | method | found | median wall s | min wall s | median CPU s |")
    print("|---|---|---|---|---|---|")
    for count in args.counts:
        suv, masks = make_scan(count, seed=count)
        for name, cfg in methods.items():
            times, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                res = find_lesions(suv, anatomy=masks, config=cfg)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            print(f"| {count} | {name} | {res.lesion_count} | {np.median(times):.3f} | "
                  f"{min(times):.3f} | {np.median(cpu):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
