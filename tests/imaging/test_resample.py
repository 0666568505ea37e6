"""resample_to: exact on linear fields, physical space, direction cosines, fill, labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from imaging.resample import resample_to
from imaging.volume import Volume


def _linear_field(vol: Volume, coeffs=(0.5, -0.25, 2.0), offset=3.0) -> np.ndarray:
    k, j, i = np.indices(vol.shape)
    xyz = vol.index_to_world(np.stack([k, j, i], axis=-1))
    return (xyz @ np.asarray(coeffs) + offset).astype(np.float32)


def _grid(shape, spacing, origin, direction=None, unit="HU") -> Volume:
    direction = np.eye(3)[:, ::-1] if direction is None else direction
    return Volume(np.zeros(shape, np.float32), spacing, origin, direction, unit)


def test_linear_field_is_reproduced_on_a_coarser_rotated_grid() -> None:
    src = _grid((40, 50, 50), (1.0, 1.0, 1.0), (-25.0, -25.0, -20.0))
    src = src.with_array(_linear_field(src))
    rot = Rotation.from_euler("z", 20, degrees=True).as_matrix()
    ref = _grid((8, 10, 10), (3.0, 2.5, 2.5), (-8.0, -9.0, -10.0),
                direction=rot @ np.eye(3)[:, ::-1])
    out = resample_to(src, ref)
    assert out.shape == ref.shape
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.origin, ref.origin)
    np.testing.assert_allclose(out.array, _linear_field(ref), atol=1e-3)


def test_flipped_reference_equals_flipped_array() -> None:
    rng = np.random.default_rng(1)
    src = _grid((4, 5, 6), (2.0, 1.0, 1.5), (0.0, 0.0, 0.0), unit="1").with_array(
        rng.uniform(size=(4, 5, 6)).astype(np.float32))
    # the same voxels listed feet-first and right-to-left
    direction = np.eye(3)[:, ::-1] * [[1], [1], [1]]
    direction = np.column_stack([-direction[:, 0], direction[:, 1], -direction[:, 2]])
    ref = _grid((4, 5, 6), (2.0, 1.0, 1.5), (5 * 1.5 * 1.0, 0.0, 3 * 2.0), direction=direction,
                unit="1")
    out = resample_to(src, ref, interpolation="nearest")
    np.testing.assert_array_equal(out.array, src.array[::-1, :, ::-1])


def test_ct_fill_outside_is_air_and_labels_stay_labels() -> None:
    ct = _grid((5, 5, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)).with_array(
        np.full((5, 5, 5), 40, np.int16))
    ref = _grid((5, 5, 5), (2.0, 2.0, 2.0), (-4.0, -4.0, -4.0), unit="g/ml")
    out = resample_to(ct, ref)
    assert out.unit == "HU"
    assert out.array[0, 0, 0] == -1024.0
    assert out.array[3, 3, 3] == pytest.approx(40.0)
    labels = ct.with_array(np.arange(125, dtype=np.uint16).reshape(5, 5, 5), unit="label")
    lab = resample_to(labels, ref, interpolation="nearest")
    assert lab.array.dtype == np.uint16
    assert lab.array[0, 0, 0] == 0
    assert set(np.unique(lab.array)) <= set(range(125))
    assert lab.array[3, 3, 3] == labels.array[2, 2, 2]
    mask = ct.with_array(np.ones((5, 5, 5), bool), unit="mask")
    m = resample_to(mask, ref, interpolation="nearest")
    assert m.array.dtype == np.bool_
    assert m.array[3, 3, 3]
    assert not m.array[0, 0, 0]


def test_same_grid_is_identity_and_bad_interpolation() -> None:
    vol = _grid((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert resample_to(vol, vol).array.shape == (2, 3, 4)
    with pytest.raises(ValueError, match="interpolation"):
        resample_to(vol, vol, interpolation="cubic")  # type: ignore[arg-type]


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_slabs_give_the_same_result_as_one_pass(monkeypatch: pytest.MonkeyPatch,
                                                interpolation: str) -> None:
    import imaging.resample as mod

    rng = np.random.default_rng(4)
    src = _grid((30, 20, 20), (2.0, 1.5, 1.5), (-14.0, -15.0, -30.0)).with_array(
        rng.normal(size=(30, 20, 20)).astype(np.float32))
    rot = Rotation.from_euler("xz", [5, 10], degrees=True).as_matrix()
    ref = _grid((17, 9, 11), (3.0, 3.3, 2.9), (-12.0, -13.0, -35.0),
                direction=rot @ np.eye(3)[:, ::-1])
    whole = resample_to(src, ref, interpolation=interpolation)  # type: ignore[arg-type]
    monkeypatch.setattr(mod, "_SLAB_BYTES", 4000)  # ~12 slabs
    sliced = resample_to(src, ref, interpolation=interpolation)  # type: ignore[arg-type]
    np.testing.assert_array_equal(sliced.array, whole.array)
    assert (whole.array == -1024).any()  # part of the grid lies outside the source
