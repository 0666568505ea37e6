"""Lesion volume by iterative, PSF-calibrated thresholding, on analytic blurred spheres."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from imaging.errors import ConfigError, LesionError
from imaging.lesions import PRESETS, LesionConfig, find_lesions
from imaging.lesions.volume import iterative_threshold, sphere_threshold_curve
from imaging.volume import Volume

SPACING = (4.0, 4.0, 4.0)  # mm along (k, j, i)
FWHM_MM = 6.0


def _blurred_sphere(volume_ml: float, *, background: float = 1.0, suv: float = 10.0,
                    offset: tuple[float, float, float] = (0.3, -0.2, 0.45),
                    spacing: tuple[float, float, float] = SPACING, fwhm_mm: float = FWHM_MM,
                    ) -> tuple[NDArray[np.float64], tuple[int, int, int]]:
    """A uniform sphere (partial-volume sampled, 5^3 sub-samples) on a background, PSF-blurred.

    Returns the image and the index of the voxel holding the sphere centre.
    """
    radius = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    sp = np.asarray(spacing)
    half = np.ceil((radius + 4 * fwhm_mm) / sp).astype(int)
    shape = tuple(int(2 * h + 1) for h in half)
    centre_mm = (half + np.asarray(offset)) * sp
    sub = (np.arange(5) + 0.5) / 5
    frac = np.zeros(shape)
    for dk in sub:
        for dj in sub:
            for di in sub:
                k, j, i = np.meshgrid(*[(np.arange(n) + d - 0.5) * s for n, d, s in
                                        zip(shape, (dk, dj, di), sp, strict=True)],
                                      indexing="ij")
                frac += ((k - centre_mm[0]) ** 2 + (j - centre_mm[1]) ** 2
                         + (i - centre_mm[2]) ** 2) <= radius ** 2
    frac /= sub.size ** 3
    activity = background + (suv - background) * frac
    sigma = [fwhm_mm / 2.3548 / s for s in spacing]
    image = ndimage.gaussian_filter(activity, sigma, mode="nearest")
    return image, tuple(int(v) for v in np.unravel_index(np.argmax(image), image.shape))


@pytest.mark.parametrize("volume_ml", [1.0, 2.0, 5.0, 10.0])
def test_iterative_threshold_recovers_blurred_sphere_volume(volume_ml: float) -> None:
    image, peak = _blurred_sphere(volume_ml)
    curve = sphere_threshold_curve(FWHM_MM, SPACING)
    res = iterative_threshold(image, peak, background=1.0, curve=curve, start_fraction=0.41)
    assert res.converged
    assert res.iterations < 20
    found_ml = np.count_nonzero(res.mask) * np.prod(SPACING) / 1000
    assert found_ml == pytest.approx(volume_ml, rel=0.2)
    assert res.level == pytest.approx(1.0 + res.fraction * (image[peak] - 1.0))


@pytest.mark.parametrize("volume_ml", [1.0, 5.0])
def test_iterative_threshold_beats_a_fixed_50_percent_on_small_spheres(volume_ml: float) -> None:
    image, peak = _blurred_sphere(volume_ml, suv=8.0, background=2.0)
    curve = sphere_threshold_curve(FWHM_MM, SPACING)
    itm = iterative_threshold(image, peak, background=2.0, curve=curve, start_fraction=0.5)
    fixed = iterative_threshold(image, peak, background=2.0, curve=lambda v: 0.5,
                                start_fraction=0.5)
    voxel_ml = np.prod(SPACING) / 1000
    itm_err = abs(np.count_nonzero(itm.mask) * voxel_ml / volume_ml - 1)
    fixed_err = abs(np.count_nonzero(fixed.mask) * voxel_ml / volume_ml - 1)
    assert itm_err < fixed_err


def test_curve_is_consistent_with_its_own_spheres() -> None:
    # A calibration sphere thresholded at the curve's fraction holds its volume (averaged over
    # the sub-voxel positions the curve was computed for; one position within a few voxels).
    curve = sphere_threshold_curve(FWHM_MM, (5.0, 4.0, 4.0))
    assert np.all(np.diff(curve.volume_ml) > 0)
    assert np.all((curve.fraction > 0.3) & (curve.fraction < 0.8))
    for volume_ml in (1.5, 4.0, 12.0):
        image, peak = _blurred_sphere(volume_ml, background=0.0, offset=(0.0, 0.0, 0.0),
                                      spacing=(5.0, 4.0, 4.0))
        level = curve.fraction_at(volume_ml) * image[peak]
        count = np.count_nonzero(image >= level)
        assert abs(count - volume_ml / 0.08) <= max(3.0, 0.1 * volume_ml / 0.08)


def test_curve_depends_on_the_psf_and_is_cached() -> None:
    narrow = sphere_threshold_curve(5.0, SPACING)
    wide = sphere_threshold_curve(8.0, SPACING)
    # A wider PSF flattens the top of a small sphere: its edge sits at a higher fraction.
    assert wide.fraction_at(1.0) > narrow.fraction_at(1.0) + 0.02
    assert sphere_threshold_curve(5.0, SPACING) is narrow
    assert narrow.fraction_at(1e-3) == narrow.fraction[0]
    assert narrow.fraction_at(1e4) == narrow.fraction[-1]


@pytest.mark.parametrize("fwhm", [0.0, -3.0, float("nan")])
def test_curve_rejects_invalid_psf(fwhm: float) -> None:
    with pytest.raises(LesionError, match="PSF FWHM"):
        sphere_threshold_curve(fwhm, SPACING)


def test_curve_rejects_invalid_spacing() -> None:
    with pytest.raises(LesionError, match="spacing"):
        sphere_threshold_curve(6.0, (4.0, 0.0, 4.0))


def test_iteration_reports_non_convergence() -> None:
    # A "curve" that answers 0.2, 0.8, 0.2, ... whatever the volume never lets the fraction
    # settle: the iteration must stop at max_iterations and say it did not converge.
    image, peak = _blurred_sphere(2.0)
    answers = iter([0.2, 0.8] * 10)
    res = iterative_threshold(image, peak, background=1.0, curve=lambda v: next(answers),
                              start_fraction=0.5, max_iterations=6)
    assert not res.converged
    assert res.iterations == 6


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"start_fraction": 1.0}, "start_fraction"),
    ({"start_fraction": 0.41, "max_iterations": 0}, "max_iterations"),
])
def test_iteration_rejects_invalid_settings(kwargs: dict[str, float], match: str) -> None:
    image, peak = _blurred_sphere(1.0)
    with pytest.raises(LesionError, match=match):
        iterative_threshold(image, peak, background=1.0, curve=lambda v: 0.5,
                            **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"isocontour_iterative": True}, "needs isocontour_fraction"),
    ({"isocontour_iterative": "yes", "isocontour_fraction": 0.41}, "true or false"),
    ({"isocontour_max_iterations": 1}, "isocontour_max_iterations"),
    ({"isocontour_max_iterations": 2.5}, "isocontour_max_iterations"),
])
def test_config_rejects_invalid_iterative_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LesionConfig(**kwargs)  # type: ignore[arg-type]


def _suv(arr: NDArray[np.floating]) -> Volume:
    return Volume(np.asarray(arr, dtype=np.float32), SPACING, (0.0, 0.0, 0.0), unit="g/ml")


@pytest.mark.parametrize("volume_ml", [1.0, 5.0])
def test_finder_itm_recovers_volume_where_fixed_threshold_inflates(volume_ml: float) -> None:
    image, _ = _blurred_sphere(volume_ml, background=0.5, suv=12.0)
    itm = PRESETS["suv3-itm"]
    cfg = LesionConfig(threshold_suv=1.0, isocontour_fraction=itm.isocontour_fraction,
                       isocontour_iterative=True, psf_fwhm_mm=FWHM_MM)
    result = find_lesions(_suv(image), anatomy={}, config=cfg)
    assert result.lesion_count == 1
    assert result.lesions[0].volume_ml == pytest.approx(volume_ml, rel=0.2)
    assert any("6.0 mm PSF (psf_fwhm_mm)" in note for note in result.notes)
    plain = find_lesions(_suv(image), anatomy={}, config=LesionConfig(threshold_suv=1.0))
    assert plain.lesions[0].volume_ml > 1.2 * volume_ml


def test_finder_itm_without_psf_falls_back_and_says_so() -> None:
    image, _ = _blurred_sphere(2.0, background=0.5, suv=12.0)
    cfg = LesionConfig(threshold_suv=1.0, isocontour_fraction=0.41, isocontour_iterative=True)
    fixed = LesionConfig(threshold_suv=1.0, isocontour_fraction=0.41)
    result = find_lesions(_suv(image), anatomy={}, config=cfg)
    assert any("neither set" in note for note in result.notes)
    assert result.lesions[0].voxel_count == find_lesions(
        _suv(image), anatomy={}, config=fixed).lesions[0].voxel_count
