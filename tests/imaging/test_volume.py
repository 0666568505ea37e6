from __future__ import annotations

import numpy as np
import pytest

from imaging.errors import GeometryError
from imaging.volume import Volume, same_geometry


def _oblique_volume() -> Volume:
    rng = np.random.default_rng(7)
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                    [0, 0, 1]])
    direction = rot @ np.eye(3)[:, ::-1]
    return Volume(rng.normal(size=(4, 5, 6)).astype(np.float32), (3.0, 2.0, 1.5),
                  (-10.0, 20.0, 30.0), direction, "HU")


def test_index_world_round_trip_on_oblique_grid() -> None:
    vol = _oblique_volume()
    idx = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.5]])
    assert np.allclose(vol.world_to_index(vol.index_to_world(idx)), idx)
    assert np.allclose(vol.index_to_world([0, 0, 0]), vol.origin)
    # one step along k moves 3 mm along the slice normal (z here)
    assert np.allclose(vol.index_to_world([1, 0, 0]) - vol.origin, [0, 0, 3.0])


def test_sitk_round_trip_keeps_geometry_and_values() -> None:
    vol = _oblique_volume()
    back = Volume.from_sitk(vol.to_sitk(), unit="HU")
    assert same_geometry(vol, back)
    assert np.array_equal(vol.array, back.array)
    img = vol.to_sitk()
    # SimpleITK's physical point of index (i, j, k) equals our (k, j, i) mapping
    assert np.allclose(img.TransformIndexToPhysicalPoint((5, 4, 3)), vol.index_to_world([3, 4, 5]))


def test_volume_is_read_only() -> None:
    vol = _oblique_volume()
    with pytest.raises(ValueError, match="read-only"):
        vol.array[0, 0, 0] = 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"array": np.zeros((2, 2))}, "3-D"),
        ({"spacing": (1.0, 0.0, 1.0)}, "positive"),
        ({"direction": np.ones((3, 3))}, "orthonormal"),
        ({"unit": "furlongs"}, "Unknown unit"),
        ({"origin": (0.0, float("nan"), 0.0)}, "finite"),
    ],
)
def test_volume_rejects_invalid_geometry(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"array": np.zeros((2, 2, 2)), "spacing": (1.0, 1.0, 1.0),
                               "origin": (0.0, 0.0, 0.0), "unit": "HU"}
    base.update(kwargs)
    with pytest.raises(GeometryError, match=match):
        Volume(**base)  # type: ignore[arg-type]
