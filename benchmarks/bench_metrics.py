"""Speed of the autoPET metrics on a full-size mask pair (400 x 200 x 200 voxels, k x j x i).

The reference holds ~200 box lesions, the prediction the same lesions shifted by 2 voxels plus
~300 false positives. Reported: median wall time of :func:`imaging.metrics.score_case` (voxel
metrics and both detection flavours from one labelled pass) over a few repeats, single-threaded.

Target: < 5 s per case, independent of the lesion count (no per-component pass over the volume).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_metrics.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.metrics import score_case
from imaging.volume import Volume

SHAPE = (400, 200, 200)


def _boxes(rng: np.random.Generator, n: int) -> NDArray[np.uint8]:
    out = np.zeros(SHAPE, np.uint8)
    for _ in range(n):
        c = rng.integers(10, [SHAPE[0] - 10, SHAPE[1] - 10, SHAPE[2] - 10])
        r = int(rng.integers(2, 6))
        out[c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ref = _boxes(rng, 200)
    pred = np.roll(ref, 2, axis=2) | _boxes(rng, 300)
    grid = {"spacing": (3.0, 4.0, 4.0), "origin": (0.0, 0.0, 0.0), "unit": "mask"}
    p, g = Volume(pred, **grid), Volume(ref, **grid)  # type: ignore[arg-type]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        score = score_case(p, g)
        times.append(time.perf_counter() - t0)
    v = score.voxel
    print(f"score_case on {SHAPE}: median {np.median(times):.2f} s over {args.repeats} "
          f"(reference {v.n_reference_components} lesions, prediction "
          f"{v.n_predicted_components}; Dice {v.dice:.3f})")
    print(f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
