"""Lesion volume by iterative, PSF-calibrated thresholding, on analytic blurred spheres."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from fixtures.phantom.pet import apply_psf_and_noise
from imaging.errors import ConfigError, LesionError
from imaging.lesions import PRESETS, LesionConfig, find_lesions
from imaging.lesions.volume import (
    _sphere_fractions,
    blurred_sphere_profile,
    fit_blurred_sphere,
    iterative_threshold,
    sphere_threshold_curve,
)
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


# -- model-based volume: blurred-sphere fit ----------------------------------------------------

def _noisy(image: NDArray[np.float64], noise: float, seed: int) -> NDArray[np.float64]:
    """PET-like noise: SD ``noise x sqrt(SUV)``, correlated over about one voxel."""
    rng = np.random.default_rng(seed)
    corr = ndimage.gaussian_filter(rng.standard_normal(image.shape), 0.7)
    corr /= corr.std()
    return np.maximum(image + noise * np.sqrt(np.maximum(image, 0.0)) * corr, 0.0)


def test_blurred_sphere_profile_matches_a_numerical_convolution() -> None:
    h = 0.25  # mm
    x = (np.arange(161) - 80) * h
    k, j, i = np.meshgrid(x, x, x, indexing="ij")
    sphere = (k ** 2 + j ** 2 + i ** 2 <= 8.0 ** 2).astype(float)
    numeric = ndimage.gaussian_filter(sphere, 2.5 / h)[80, 80, [80, 100, 112, 120, 136]]
    analytic = blurred_sphere_profile(np.array([0.0, 5.0, 8.0, 10.0, 14.0]), 8.0, 2.5)
    np.testing.assert_allclose(analytic, numeric, atol=0.01)
    # the centre formula joins the general one continuously
    near = blurred_sphere_profile(np.array([0.0, 1e-2]), 8.0, 2.5)
    assert near[0] == pytest.approx(near[1], abs=1e-4)


@pytest.mark.parametrize(("volume_ml", "suv", "background"), [(3.0, 8.0, 1.0), (6.0, 6.0, 1.5)])
def test_sphere_fit_recovers_noisy_sphere_volume(volume_ml: float, suv: float,
                                                 background: float) -> None:
    clean, _ = _blurred_sphere(volume_ml, background=background, suv=suv,
                                  spacing=(5.0, 4.0, 4.0))
    radius0 = (3 * 0.7 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)  # a poor start
    hits = 0
    for seed in range(10):
        image = _noisy(clean, 0.3, seed)
        pk = tuple(int(v) for v in np.unravel_index(np.argmax(image), image.shape))
        fit = fit_blurred_sphere(image, pk, spacing=(5.0, 4.0, 4.0), fwhm_mm=FWHM_MM,
                                 radius_mm=radius0)
        assert fit.success
        hits += abs(fit.volume_ml / volume_ml - 1) <= 0.2
    assert hits >= 9


def test_sphere_fit_leaves_out_a_neighbouring_hot_structure() -> None:
    image, peak = _blurred_sphere(4.0, background=1.0, suv=10.0)
    image = image.copy()
    image[:, :, :3] = 30.0  # a hot organ at the patch's edge, not to be fitted
    use = np.ones(image.shape, dtype=bool)
    use[:, :, :4] = False
    fit = fit_blurred_sphere(image, peak, spacing=SPACING, fwhm_mm=FWHM_MM, radius_mm=7.0,
                             use=use)
    assert fit.volume_ml == pytest.approx(4.0, rel=0.1)
    assert fit.uptake == pytest.approx(10.0, rel=0.15)
    assert fit.background == pytest.approx(1.0, abs=0.3)


def _phantom_sphere(volume_ml: float, offset: tuple[float, float, float], *,
                    background: float = 1.0, suv: float = 10.0,
                    ) -> tuple[NDArray[np.float64], tuple[int, int, int]]:
    """A sphere as the synthetic patients hold one: 4^3-sub-sampled voxel fractions on a
    5 x 4 x 4 mm grid, blurred by the phantom's own PSF step (noise 0) on a flat background."""
    spacing = np.array([5.0, 4.0, 4.0])
    radius = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    half = np.ceil((radius + 4 * FWHM_MM) / spacing).astype(int)
    shape = tuple(int(2 * h + 1) for h in half)
    centre = (half + np.asarray(offset)) * spacing
    axes = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    frac = np.zeros(shape)
    for dk in sub:
        for dj in sub:
            for di in sub:
                frac += ((axes[0][:, None, None] + dk * spacing[0] - centre[0]) ** 2
                         + (axes[1][None, :, None] + dj * spacing[1] - centre[1]) ** 2
                         + (axes[2][None, None, :] + di * spacing[2] - centre[2]) ** 2
                         <= radius ** 2)
    frac /= sub.size ** 3
    lesion = apply_psf_and_noise(((suv - background) * frac).astype(np.float32),
                                 (5.0, 4.0, 4.0), fwhm_mm=FWHM_MM, noise=0.0,
                                 rng=np.random.default_rng(0))
    image = lesion.astype(np.float64) + background
    return image, tuple(int(v) for v in np.unravel_index(np.argmax(image), image.shape))


@pytest.mark.parametrize("volume_ml", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.3, -0.2, 0.45)])
def test_sphere_fit_recovers_phantom_rendered_sphere_within_3_percent(
        volume_ml: float, offset: tuple[float, float, float]) -> None:
    image, peak = _phantom_sphere(volume_ml, offset)
    radius0 = 0.9 * (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    fit = fit_blurred_sphere(image, peak, spacing=(5.0, 4.0, 4.0), fwhm_mm=FWHM_MM,
                             radius_mm=radius0)
    assert fit.success
    assert fit.volume_ml == pytest.approx(volume_ml, rel=0.03)
    assert fit.uptake == pytest.approx(10.0, rel=0.05)
    assert fit.background == pytest.approx(1.0, abs=0.05)


def test_sphere_fit_needs_the_grid_model_for_a_1_ml_phantom_sphere() -> None:
    # Why the model blurs voxel fractions on the grid, as the image was made: the blurred
    # sphere sampled at voxel centres (box_nodes=1) is too large by about 8%, the continuous
    # blur averaged over the voxel (sampling="box") too small by about 8%.
    image, peak = _phantom_sphere(1.0, (0.0, 0.0, 0.0))
    kwargs = {"spacing": (5.0, 4.0, 4.0), "fwhm_mm": FWHM_MM, "radius_mm": 5.5}
    point = fit_blurred_sphere(image, peak, sampling="box", box_nodes=1, **kwargs)
    box = fit_blurred_sphere(image, peak, sampling="box", **kwargs)
    grid = fit_blurred_sphere(image, peak, **kwargs)
    assert point.volume_ml > 1.05
    assert box.volume_ml < 0.95
    assert grid.volume_ml == pytest.approx(1.0, rel=0.03)


def test_box_sampling_matches_a_numerical_voxel_average() -> None:
    # sampling="box": a fine-grid sphere blurred continuously and averaged over 4 mm voxels
    h = 0.5
    n = 8  # fine cells per voxel
    x = (np.arange(11 * n) + 0.5) * h
    k, j, i = np.meshgrid(x, x, x, indexing="ij")
    centre = np.array([5.5, 5.5, 5.5]) * 4.0 + np.array([0.7, -1.1, 0.4])
    fine = ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= 7.0 ** 2)
    blurred = ndimage.gaussian_filter(fine.astype(float), FWHM_MM / 2.3548 / h, mode="constant")
    voxels = blurred.reshape(11, n, 11, n, 11, n).mean(axis=(1, 3, 5))
    voxels = 1.0 + 9.0 * voxels
    peak = tuple(int(v) for v in np.unravel_index(np.argmax(voxels), voxels.shape))
    # the fit's voxel (0, 0, 0) is centred at 0 mm, the fine grid's at 2 mm
    fit = fit_blurred_sphere(voxels, peak, spacing=SPACING, fwhm_mm=FWHM_MM, radius_mm=6.0,
                             sampling="box")
    assert fit.radius_mm == pytest.approx(7.0, rel=0.01)
    np.testing.assert_allclose(fit.centre_mm, centre - 2.0, atol=0.05)


def test_sphere_fractions_hold_the_sphere_volume() -> None:
    spacing = np.array([5.0, 4.0, 4.0])
    for radius in (3.0, 6.2, 10.6):
        frac = _sphere_fractions((15, 15, 15), spacing, np.array([36.1, 27.3, 29.9]), radius)
        assert frac.min() >= 0.0
        assert frac.max() <= 1.0
        assert frac.sum() * 0.08 == pytest.approx(4 / 3 * np.pi * radius ** 3 / 1000, rel=0.01)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sampling": "exact"}, "sampling"),
    ({"sampling": "box", "box_nodes": 0}, "box_nodes"),
    ({"box_nodes": True}, "box_nodes"),
    ({"radius_mm": 0.0}, "starting radius"),
    ({"radius_mm": float("nan")}, "starting radius"),
    ({"fwhm_mm": -1.0}, "PSF FWHM"),
    ({"use": np.zeros((9, 9, 9), dtype=bool)}, "usable voxels"),
])
def test_sphere_fit_rejects_invalid_input(kwargs: dict[str, object], match: str) -> None:
    image, peak = _blurred_sphere(2.0)
    args: dict[str, object] = {"spacing": SPACING, "fwhm_mm": FWHM_MM, "radius_mm": 5.0}
    args.update(kwargs)
    if "use" in args:
        args["use"] = np.zeros(image.shape, dtype=bool)
    with pytest.raises(LesionError, match=match):
        fit_blurred_sphere(image, peak, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"isocontour_sphere_fit": True, "isocontour_fraction": 0.41}, "needs isocontour_iterative"),
    ({"isocontour_sphere_fit": 1, "isocontour_fraction": 0.41, "isocontour_iterative": True},
     "true or false"),
])
def test_config_rejects_invalid_sphere_fit_settings(kwargs: dict[str, object],
                                                    match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LesionConfig(**kwargs)  # type: ignore[arg-type]


def test_finder_sphere_fit_recovers_noisy_sphere_volume() -> None:
    clean, _ = _blurred_sphere(3.0, background=0.5, suv=8.0)
    cfg = LesionConfig(threshold_suv=2.0, isocontour_fraction=0.41, isocontour_iterative=True,
                       isocontour_sphere_fit=True, psf_fwhm_mm=FWHM_MM)
    assert cfg.name.endswith("+ sphere fit")
    hits = 0
    for seed in range(10):
        image = _noisy(clean, 0.3, seed)
        result = find_lesions(_suv(image), anatomy={}, config=cfg)
        assert result.lesion_count == 1
        assert result.lesions[0].suv_max == pytest.approx(float(image.max()), rel=1e-5)
        hits += abs(result.lesions[0].volume_ml / 3.0 - 1) <= 0.2
    assert hits >= 9


@pytest.mark.parametrize("offset", [(0.3, -0.2, 0.45), (0.1, 0.35, -0.3)])
def test_finder_sphere_fit_keeps_the_isocontour_nearest_the_fitted_volume(
        offset: tuple[float, float, float]) -> None:
    # A noise-free 1.5 mL sphere is 18.75 voxels of 0.08 mL: the kept isocontour has 19, not
    # the 18 where the bisection stops. (Off-centre spheres: at symmetric positions the
    # isocontours grow by 4-8 voxels at a time.)
    image, _ = _phantom_sphere(1.5, offset)
    suv = Volume(image.astype(np.float32), (5.0, 4.0, 4.0), (0.0, 0.0, 0.0), unit="g/ml")
    cfg = LesionConfig.preset("suv3-fit", psf_fwhm_mm=FWHM_MM)
    result = find_lesions(suv, anatomy={}, config=cfg)
    assert result.lesion_count == 1
    assert result.lesions[0].voxel_count == 19
    assert result.lesions[0].suv_max == pytest.approx(float(image.max()), rel=1e-6)


def test_finder_sphere_fit_keeps_itm_outline_below_the_calibrated_range() -> None:
    # a 0.12 mL sphere (6.1 mm across) is below the smallest calibration sphere (8 mm): the PSF
    # hides its size, so the fitted sphere is not used and the lesion keeps ITM's outline (the
    # fit alone would give it 3 voxels, ITM 2)
    image, _ = _phantom_sphere(0.12, (0.2, -0.1, 0.3), suv=20.0)
    suv = Volume(image.astype(np.float32), (5.0, 4.0, 4.0), (0.0, 0.0, 0.0), unit="g/ml")
    fit = find_lesions(suv, anatomy={}, config=LesionConfig.preset("suv3-fit",
                                                                   psf_fwhm_mm=FWHM_MM))
    itm = find_lesions(suv, anatomy={}, config=LesionConfig.preset("suv3-itm",
                                                                   psf_fwhm_mm=FWHM_MM))
    assert fit.lesion_count == itm.lesion_count == 1
    assert np.array_equal(np.asarray(fit.labels.array), np.asarray(itm.labels.array))
