"""MIP lesion ids: per ray, the lesion with the highest SUV (the first one on ties), else 0."""

from __future__ import annotations

import numpy as np

from imaging.volume import Volume
from staging.outputs.mip import canonical_zyx, mip_images


def _expected(suv: Volume, labels: Volume, axis: int) -> np.ndarray:
    s, _ = canonical_zyx(suv)
    lab, _ = canonical_zyx(labels)
    s, lab = np.moveaxis(s, axis, -1), np.moveaxis(lab, axis, -1)
    out = np.zeros(s.shape[:2], dtype=np.int64)
    for a in range(s.shape[0]):
        for b in range(s.shape[1]):
            ray_lab, ray_suv = lab[a, b], s[a, b]
            if (ray_lab > 0).any():
                best = np.argmax(np.where(ray_lab > 0, ray_suv, -np.inf))
                out[a, b] = ray_lab[best]
    return out


def test_lesion_ids_and_mips_match_the_per_ray_definition() -> None:
    rng = np.random.default_rng(3)
    for trial in range(24):
        shape = tuple(int(n) for n in rng.integers(3, 10, size=3))
        values = rng.random(shape).astype(np.float32) * 5
        if trial % 3 == 0:
            values = np.round(values)  # ties along rays
        labels = np.zeros(shape, np.uint16)
        for _ in range(int(rng.integers(0, 5))):
            k, j, i = (int(rng.integers(0, d)) for d in shape)
            labels[k:k + 2, j:j + 3, i:i + 2] = rng.integers(1, 5)
        direction = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1, 1], size=3)
        suv = Volume(array=values, spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0),
                     direction=direction, unit="g/ml")
        lab = suv.with_array(labels, "label")
        images = mip_images(suv, lab)
        s, _ = canonical_zyx(suv)
        for name, axis in (("anterior", 1), ("lateral", 2)):
            mip, ids, _ = images[name]
            np.testing.assert_array_equal(mip, s.max(axis=axis))
            np.testing.assert_array_equal(ids, _expected(suv, lab, axis))
