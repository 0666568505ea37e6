"""Bony landmarks with known answers: where the femoral-head search looks, and what it finds."""

from __future__ import annotations

import numpy as np

from imaging.anatomy.landmarks import _kink


def test_spine_kink_ignores_slices_without_spine_quietly() -> None:
    # no spine in the lowest 30 mm, a sacrum sloping forward 2 mm a slice, then upright;
    # warnings are errors in the tests, so inf - inf in the spineless windows would fail
    front = np.full(40, np.nan)
    front[10:20] = 30.0 - 2.0 * np.arange(10)
    front[20:] = 10.0
    assert _kink(front, 3.0) == 17
