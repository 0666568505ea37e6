"""Lesion finder on analytic volumes with known answers (spheres, boxes, empty images)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from imaging.errors import ConfigError, LesionError
from imaging.lesions import (
    LesionConfig,
    ReferenceValue,
    ReferenceValues,
    find_lesions,
    measure_reference_regions,
    mipsma,
)
from imaging.lesions._geometry import sphere_weights
from imaging.vocabulary import AnatomyLabel as A
from imaging.volume import Volume

SPACING = (3.0, 4.0, 4.0)  # mm along (k, j, i); k -> z, j -> y, i -> x with the default direction


def _grid(shape: tuple[int, int, int]) -> tuple[NDArray[np.float64], ...]:
    return tuple(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING, strict=True)],
                             indexing="ij"))


def _ball(shape: tuple[int, int, int], centre_mm: tuple[float, float, float],
          radius_mm: float) -> NDArray[np.bool_]:
    k, j, i = _grid(shape)
    return ((k - centre_mm[0]) ** 2 + (j - centre_mm[1]) ** 2 + (i - centre_mm[2]) ** 2
            <= radius_mm**2)


def _suv(arr: NDArray[np.floating]) -> Volume:
    return Volume(np.asarray(arr, dtype=np.float32), SPACING, (0.0, 0.0, 0.0), unit="g/ml")


def _blur(arr: NDArray[np.floating], fwhm_mm: float = 6.0) -> NDArray[np.float64]:
    sigma = [fwhm_mm / 2.355 / s for s in SPACING]
    return np.asarray(ndimage.gaussian_filter(np.asarray(arr, dtype=np.float64), sigma))


# -- a sphere of known radius and SUV ------------------------------------------------------

def test_sphere_gives_expected_volume_mean_and_peak() -> None:
    shape = (60, 60, 60)
    centre, radius = (90.0, 120.0, 116.0), 15.0
    ball = _ball(shape, centre, radius)
    arr = np.where(ball, 10.0, 0.5)
    result = find_lesions(_suv(arr), anatomy={})
    assert result.lesion_count == 1
    les = result.lesions[0]
    voxel_ml = np.prod(SPACING) / 1000
    assert les.voxel_count == int(ball.sum())
    assert les.volume_ml == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.08)
    assert les.volume_ml == pytest.approx(ball.sum() * voxel_ml)
    assert les.suv_max == pytest.approx(10.0)
    assert les.suv_mean == pytest.approx(10.0)
    assert les.suv_peak == pytest.approx(10.0)  # a 1-mL sphere fits inside r = 15 mm
    assert les.tl_psma == pytest.approx(10.0 * les.volume_ml)
    # Default direction: k -> z, j -> y, i -> x (LPS).
    assert les.centroid_mm == pytest.approx((centre[2], centre[1], centre[0]), abs=0.5)
    assert result.psma_tv_ml == pytest.approx(les.volume_ml)
    assert result.tl_psma == pytest.approx(les.tl_psma)
    assert result.labels.array.dtype == np.uint16
    assert np.array_equal(result.labels.array > 0, ball)


def test_suv_peak_is_the_hot_core_when_a_1ml_sphere_fits_inside_it() -> None:
    shape = (60, 60, 60)
    centre = (90.0, 120.0, 120.0)
    arr = np.where(_ball(shape, centre, 20.0), 8.0, 0.5)
    arr[_ball(shape, centre, 10.0)] = 20.0
    arr[_ball(shape, (90.0, 120.0, 136.0), 1.0)] = 40.0  # one hot voxel: SUVmax, not SUVpeak
    les = find_lesions(_suv(arr), anatomy={}).lesions[0]
    assert les.suv_max == pytest.approx(40.0)
    assert les.suv_peak == pytest.approx(20.0)


def test_suv_peak_of_single_hot_voxel_follows_the_1ml_sphere_weights() -> None:
    shape = (40, 40, 40)
    arr = np.full(shape, 0.0)
    arr[18:23, 18:23, 18:23] = 4.0
    arr[20, 20, 20] = 100.0
    les = find_lesions(_suv(arr), anatomy={}).lesions[0]
    offs, w = sphere_weights(1.0, SPACING)
    # Sphere weights sum to 1 mL in voxels; the centre weight is 1.
    assert w.sum() * np.prod(SPACING) / 1000 == pytest.approx(1.0, rel=0.02)
    centre_w = w[np.all(offs == 0, axis=1)][0]
    inside = np.all(np.abs(offs) <= 2, axis=1)  # offsets that stay in the 5^3 block
    expected = (100.0 * centre_w + 4.0 * (w[inside].sum() - centre_w)) / w.sum()
    assert les.suv_peak == pytest.approx(expected)


# -- touching spheres, splitting -----------------------------------------------------------

def _touching_spheres() -> tuple[NDArray[np.float64], list[tuple[float, float, float]]]:
    shape = (50, 50, 60)
    c1, c2 = (75.0, 100.0, 90.0), (75.0, 100.0, 126.0)  # 36 mm apart, radius 16 mm: fused
    arr = np.full(shape, 0.5)
    arr[_ball(shape, c1, 16.0)] = 12.0
    arr[_ball(shape, c2, 16.0)] = 9.0
    return _blur(arr, 10.0), [c1, c2]


def test_touching_spheres_merge_without_split_and_separate_with_split() -> None:
    arr, centres = _touching_spheres()
    merged = find_lesions(_suv(arr), anatomy={})
    assert merged.lesion_count == 1
    split = find_lesions(_suv(arr), anatomy={}, config=LesionConfig(split=True))
    assert split.lesion_count == 2
    # Ordered by decreasing SUVmax: the SUV-12 sphere first, each centroid near its sphere.
    for les, c in zip(split.lesions, centres, strict=True):
        assert les.centroid_mm[0] == pytest.approx(c[2], abs=5.0)
    assert split.lesions[0].suv_max > split.lesions[1].suv_max
    # The split partitions the merged lesion exactly.
    assert np.array_equal(split.labels.array > 0, merged.labels.array > 0)
    assert sum(les.voxel_count for les in split.lesions) == merged.lesions[0].voxel_count


def test_split_keeps_a_single_noisy_lesion_whole() -> None:
    rng = np.random.default_rng(7)
    shape = (40, 40, 40)
    arr = np.where(_ball(shape, (60.0, 80.0, 80.0), 18.0), 10.0, 0.5)
    arr = _blur(arr, 8.0) + rng.normal(0, 0.1, shape)
    result = find_lesions(_suv(arr), anatomy={}, config=LesionConfig(split=True))
    assert result.lesion_count == 1


# -- empty and trivial images --------------------------------------------------------------

def test_nothing_above_threshold_gives_zero_lesions_and_a_valid_empty_table() -> None:
    arr = np.full((20, 20, 20), 1.0)
    result = find_lesions(_suv(arr), anatomy={A.BONE: np.zeros(arr.shape, bool)})
    assert result.lesion_count == 0
    assert result.lesions == ()
    assert result.psma_tv_ml == 0.0
    assert result.tl_psma == 0.0
    assert not result.labels.array.any()
    assert result.labels.array.dtype == np.uint16
    table = result.to_dataframe()
    assert len(table) == 0
    assert {"id", "volume_ml", "suv_max", "suv_peak", "mipsma_score", "equivocal",
            "overlap_bone"} <= set(table.columns)
    assert str(table["mipsma_score"].dtype) == "Int64"


def test_component_below_minimum_volume_is_dropped() -> None:
    arr = np.full((20, 20, 20), 0.5)
    arr[10, 10, 10] = 20.0  # 0.048 mL < 0.1 mL
    arr[3:5, 3:5, 3:5] = 8.0  # 0.384 mL
    result = find_lesions(_suv(arr), anatomy={})
    assert result.lesion_count == 1
    assert result.lesions[0].voxel_count == 8
    kept = find_lesions(_suv(arr), anatomy={}, config=LesionConfig(min_volume_ml=0.0))
    assert kept.lesion_count == 2


def test_connectivity_18_joins_edges_not_corners() -> None:
    arr = np.full((12, 12, 12), 0.5)
    arr[2:4, 2:4, 2:4] = 6.0
    arr[4:6, 4:6, 4:6] = 5.0  # touches the first block at one corner only
    arr[6:8, 6:8, 8:10] = 7.0
    arr[8:10, 8:10, 8:10] = 7.0  # shares an edge with the block above: 18-connected
    assert find_lesions(_suv(arr), anatomy={}).lesion_count == 3
    assert find_lesions(_suv(arr), anatomy={},
                        config=LesionConfig(connectivity=26)).lesion_count == 2


def test_ids_follow_decreasing_suvmax_and_results_are_deterministic() -> None:
    arr = np.full((30, 30, 30), 0.5)
    for n, (z, v) in enumerate([(4, 5.0), (12, 9.0), (20, 7.0)]):
        arr[z:z + 3, 5 + n:8 + n, 5:8] = v
    a = find_lesions(_suv(arr), anatomy={})
    b = find_lesions(_suv(arr), anatomy={})
    assert [les.suv_max for les in a.lesions] == [9.0, 7.0, 5.0]
    assert [les.id for les in a.lesions] == [1, 2, 3]
    assert np.array_equal(a.labels.array, b.labels.array)
    assert a.to_dataframe().equals(b.to_dataframe())
    assert a.labels.array[13, 7, 6] == 1


# -- bad input -----------------------------------------------------------------------------

def test_bq_per_ml_unit_is_rejected() -> None:
    vol = Volume(np.full((5, 5, 5), 5000.0, np.float32), SPACING, (0, 0, 0), unit="Bq/ml")
    with pytest.raises(LesionError, match=r"'Bq/ml', not SUV"):
        find_lesions(vol, anatomy={})


def test_activity_values_labelled_as_suv_are_rejected() -> None:
    arr = np.full((5, 5, 5), 3000.0)
    arr[2, 2, 2] = 2.5e6
    with pytest.raises(LesionError, match=r"2\.5e\+06.*looks like activity concentration"):
        find_lesions(_suv(arr), anatomy={})


def test_nan_in_image_is_rejected_with_its_position() -> None:
    arr = np.full((5, 5, 5), 1.0)
    arr[1, 2, 3] = np.nan
    with pytest.raises(LesionError, match=r"1 NaN/infinite voxel.*\(1, 2, 3\)"):
        find_lesions(_suv(arr), anatomy={})


def test_mask_of_another_shape_is_rejected() -> None:
    with pytest.raises(LesionError, match=r"liver mask has shape \(4, 5, 5\).*PET grid"):
        find_lesions(_suv(np.ones((5, 5, 5))), anatomy={A.LIVER: np.ones((4, 5, 5), bool)})


def test_mask_volume_on_another_grid_is_rejected() -> None:
    suv = _suv(np.ones((5, 5, 5)))
    shifted = Volume(np.ones((5, 5, 5), bool), SPACING, (10.0, 0.0, 0.0), unit="mask")
    with pytest.raises(LesionError, match="bone mask is on a different grid"):
        find_lesions(suv, anatomy={A.BONE: shifted})  # type: ignore[dict-item]
    grid = Volume(np.zeros((5, 5, 5)), (2.0, 2.0, 2.0), (0, 0, 0))
    with pytest.raises(LesionError, match="anatomy masks are on a different grid"):
        find_lesions(suv, anatomy={}, anatomy_grid=grid)


def test_non_binary_mask_and_unknown_label_are_rejected() -> None:
    suv = _suv(np.ones((5, 5, 5)))
    with pytest.raises(LesionError, match="values outside"):
        find_lesions(suv, anatomy={A.BONE: np.full((5, 5, 5), 2, np.uint8)})
    with pytest.raises(LesionError, match="'femur' is not an AnatomyLabel"):
        find_lesions(suv, anatomy={"femur": np.ones((5, 5, 5), bool)})  # type: ignore[dict-item]


def test_invalid_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="valid methods"):
        LesionConfig(method="otsu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="isocontour_fraction"):
        LesionConfig(isocontour_fraction=41)
    with pytest.raises(ConfigError, match="connectivity"):
        LesionConfig(connectivity=8)
    with pytest.raises(ConfigError, match="min_volume_ml"):
        LesionConfig(min_volume_ml=-1)
    with pytest.raises(ConfigError, match="unknown anatomy label"):
        LesionConfig(exclude=("kidneys", "pancreas"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="equivocal_hotter_ratio must be positive"):
        LesionConfig(equivocal_hotter_ratio=0.0)
    with pytest.raises(ConfigError, match="detect_suv must be zero or positive"):
        LesionConfig(detect_suv=-1.0)
    with pytest.raises(ConfigError, match="valid presets"):
        LesionConfig.preset("suv9")
    for flag in ("organ_fringe_drop", "spill_drop", "spill_correction"):
        with pytest.raises(ConfigError, match=flag):
            LesionConfig(**{flag: "yes"})  # type: ignore[arg-type]
    assert LesionConfig.preset("suv4").threshold_suv == 4.0


# -- an analytic "patient": organs, references, exclusions ---------------------------------

SHAPE = (90, 64, 64)  # z 0..267 mm, y and x 0..252 mm


def _patient(seed: int = 3, *, bladder: float = 60.0
             ) -> tuple[NDArray[np.float64], dict[A, NDArray[np.bool_]]]:
    """Boxes and spheres with textbook PSMA-11 uptake, blurred and with mild noise."""
    k, j, i = _grid(SHAPE)
    body = (np.abs(j - 126) < 110) & (np.abs(i - 126) < 115)
    m: dict[A, NDArray[np.bool_]] = {A.BODY: body}
    m[A.LIVER] = ((k - 150) ** 2 / 45**2 + (j - 120) ** 2 / 50**2 + (i - 80) ** 2 / 55**2) <= 1
    m[A.SPLEEN] = _ball(SHAPE, (160.0, 150.0, 190.0), 22.0)
    m[A.KIDNEYS] = _ball(SHAPE, (110.0, 160.0, 70.0), 18.0) | _ball(SHAPE, (110.0, 160.0, 180.0),
                                                                     18.0)
    m[A.URINARY_BLADDER] = _ball(SHAPE, (30.0, 100.0, 126.0), 25.0)
    m[A.BONE] = (np.abs(j - 180) < 14) & (np.abs(i - 126) < 14) & (k > 10)  # spine
    m[A.AORTA] = ((j - 150) ** 2 + (i - 150) ** 2 <= 12**2) & (k > 60)
    parotids = _ball(SHAPE, (250.0, 110.0, 60.0), 14.0) | _ball(SHAPE, (250.0, 110.0, 192.0),
                                                                  14.0)
    submandibular = _ball(SHAPE, (229.0, 80.0, 126.0), 8.0)
    m[A.SALIVARY_GLANDS] = parotids | submandibular
    arr = np.where(body, 0.6, 0.0)
    for organ, value in [(A.LIVER, 5.0), (A.SPLEEN, 7.0), (A.KIDNEYS, 35.0),
                         (A.URINARY_BLADDER, bladder), (A.BONE, 1.0), (A.AORTA, 1.8),
                         (A.SALIVARY_GLANDS, 14.0)]:
        arr[m[organ]] = value
    arr[submandibular] = 40.0  # hotter than the parotids: must not enter their reference
    arr = _blur(arr, 7.0)
    arr += np.random.default_rng(seed).normal(0, 0.08, SHAPE) * (arr > 0)
    return arr, m


def _with_lesions(arr: NDArray[np.float64], lesions: list[tuple[tuple[float, float, float],
                                                                 float, float]]
                  ) -> NDArray[np.float64]:
    hot = np.zeros(SHAPE)
    for centre, radius, suv in lesions:
        hot[_ball(SHAPE, centre, radius)] = suv
    return np.asarray(arr + _blur(hot, 7.0))


def test_reference_regions_are_measured_with_their_method() -> None:
    arr, masks = _patient()
    ref = measure_reference_regions(_suv(arr), anatomy=masks)
    assert ref.liver.flag is None
    assert ref.liver.suv_mean == pytest.approx(5.0, abs=0.15)
    assert "30-mm sphere" in ref.liver.method
    assert ref.liver.n_voxels > 100
    assert ref.spleen.suv_mean == pytest.approx(7.0, abs=0.4)
    assert ref.blood_pool.flag is None
    assert ref.blood_pool.suv_mean == pytest.approx(1.8, abs=0.25)
    assert "descending thoracic aorta" in ref.blood_pool.method
    # Parotid: the two large glands (SUV 14, blurred), not the small submandibular one (SUV 40).
    assert 9.5 < ref.parotid.suv_mean < 14.0
    assert ref.parotid.flag is None


def test_missing_reference_region_is_a_flag_never_a_default() -> None:
    arr, masks = _patient()
    del masks[A.AORTA], masks[A.SALIVARY_GLANDS]
    result = find_lesions(_suv(_with_lesions(arr, [((100.0, 60.0, 126.0), 8.0, 12.0)])),
                          anatomy=masks)
    ref = result.reference
    assert ref.blood_pool.suv_mean is None
    assert "no aorta mask" in str(ref.blood_pool.flag)
    assert ref.parotid.suv_mean is None
    assert ref.parotid.n_voxels == 0
    assert result.lesions[0].mipsma_score is None
    assert result.lesions[0].mipsma_index is None
    assert result.to_dataframe()["mipsma_score"].isna().all()


def test_organ_too_small_for_the_sphere_falls_back_with_a_flag() -> None:
    arr, masks = _patient()
    masks[A.SPLEEN] = _ball(SHAPE, (160.0, 150.0, 190.0), 11.0)
    ref = measure_reference_regions(_suv(arr), anatomy=masks)
    assert ref.spleen.suv_mean is not None
    assert "fell back" in str(ref.spleen.flag)


def test_physiological_organs_are_not_lesions_and_real_lesions_are_found() -> None:
    arr, masks = _patient()
    node = ((100.0, 60.0, 126.0), 8.0, 12.0)  # retroperitoneal-ish soft-tissue node
    liver_met = ((150.0, 110.0, 70.0), 9.0, 15.0)
    bone_met = ((200.0, 180.0, 126.0), 8.0, 10.0)
    result = find_lesions(_suv(_with_lesions(arr, [node, liver_met, bone_met])), anatomy=masks)
    lab = result.labels.array
    for organ in (A.KIDNEYS, A.URINARY_BLADDER, A.SALIVARY_GLANDS, A.SPLEEN):
        assert not (lab > 0)[masks[organ]].any(), organ
    found = {tuple(np.round(les.centroid_mm)) for les in result.lesions}
    assert len(result.lesions) == 3, found
    for (z, y, x), _, _ in (node, liver_met, bone_met):
        assert any(np.hypot(les.centroid_mm[0] - x, les.centroid_mm[2] - z) < 6
                   and abs(les.centroid_mm[1] - y) < 6 for les in result.lesions)
    bone_lesion = next(les for les in result.lesions if les.overlaps["bone"] > 0.5)
    assert bone_lesion.overlaps["liver"] == 0.0
    assert set(bone_lesion.overlaps) == {str(k) for k in masks}
    assert not any(les.equivocal for les in result.lesions)
    assert "organ:liver" in result.thresholds
    assert result.thresholds["organ:liver"] > 5.0


def test_lesion_next_to_the_bladder_is_kept_but_equivocal() -> None:
    arr, masks = _patient()
    touching = ((30.0, 100.0, 158.0), 7.0, 14.0)  # its edge on the bladder wall
    result = find_lesions(_suv(_with_lesions(arr, [touching])), anatomy=masks)
    assert result.lesion_count == 1
    les = result.lesions[0]
    assert les.centroid_mm[0] == pytest.approx(160.0, abs=4.0)
    assert les.equivocal
    assert "urinary_bladder" in str(les.equivocal_reason)
    assert result.psma_tv_ml == 0.0
    # The bladder's partial-volume halo is modelled (PSF fitted, scale = bladder SUV)...
    assert result.thresholds["psf_fwhm_mm"] == pytest.approx(7.0, abs=1.0)
    assert result.thresholds["spill_scale:urinary_bladder"] == pytest.approx(60.0, rel=0.15)


def test_a_focus_against_a_kidney_is_kept_but_equivocal() -> None:
    """A focus against a kidney may be its renal pelvis or the first centimetres of the ureter,
    which leave the kidney before any ureter track is seen (PHANTOM-8017, -10050: staged as
    retroperitoneal nodes in negative patients). A focus clear of the kidney is not."""
    arr, masks = _patient()
    touching = ((110.0, 160.0, 97.0), 6.0, 14.0)  # its edge 3 mm from the kidney mask
    clear = ((110.0, 160.0, 118.0), 6.0, 14.0)  # 24 mm from it
    result = find_lesions(_suv(_with_lesions(arr, [touching, clear])), anatomy=masks)
    assert result.lesion_count == 2
    by_x = sorted(result.lesions, key=lambda les: les.centroid_mm[0])
    assert by_x[0].equivocal
    assert "kidneys" in str(by_x[0].equivocal_reason)
    assert not by_x[1].equivocal
    assert not (result.labels.array > 0)[masks[A.KIDNEYS]].any()  # the kidney stays excluded
    urine_only = LesionConfig(equivocal_touch=(A.URINARY_BLADDER, A.URETERS))
    before = find_lesions(_suv(_with_lesions(arr, [touching, clear])), anatomy=masks,
                          config=urine_only)
    assert not any(les.equivocal for les in before.lesions)


@pytest.mark.parametrize(("suv", "ratio", "equivocal"),
                         [(40.0, 2.0, False), (10.0, 2.0, True), (40.0, None, True)])
def test_a_lesion_far_hotter_than_the_urine_it_touches_is_not_equivocal(
        suv: float, ratio: float | None, equivocal: bool) -> None:
    """An [18F]PSMA-1007-like bladder of SUV 6: a node of SUVmax > 2 x 6 beside it is no urine."""
    arr, masks = _patient(bladder=6.0)
    touching = ((30.0, 100.0, 158.0), 7.0, suv)  # its edge on the bladder wall
    result = find_lesions(_suv(_with_lesions(arr, [touching])), anatomy=masks,
                          config=LesionConfig(equivocal_hotter_ratio=ratio))
    assert result.lesion_count == 1
    les = result.lesions[0]
    assert les.centroid_mm[0] == pytest.approx(160.0, abs=4.0)
    assert les.equivocal is equivocal
    assert (les.suv_max > 12.5) is (suv == 40.0)


def test_lesion_near_but_not_touching_the_bladder_keeps_its_size() -> None:
    arr, masks = _patient()
    near = ((30.0, 100.0, 162.0), 7.0, 14.0)  # 8 mm from the bladder mask
    alone = _suv(_with_lesions(np.where(masks[A.BODY], 0.6, 0.0), [near]))
    ref = find_lesions(alone, anatomy={}).lesions[0]
    result = find_lesions(_suv(_with_lesions(arr, [near])), anatomy=masks)
    assert result.lesion_count == 1
    les = result.lesions[0]
    assert not les.equivocal
    # Spill correction leaves the lesion as it would be away from the bladder (within a voxel).
    assert abs(les.voxel_count - ref.voxel_count) <= 6
    without = find_lesions(_suv(_with_lesions(arr, [near])), anatomy=masks,
                           config=LesionConfig(spill_correction=False))
    assert without.lesion_count <= 1


def test_small_faint_paravertebral_focus_is_ganglion_like_equivocal() -> None:
    arr, masks = _patient()
    ganglion = ((180.0, 180.0, 144.0), 5.0, 4.6)  # beside the spine, above the liver edge
    img = _suv(_with_lesions(arr, [ganglion]))
    # below the detection level (SUV 4) it is not called at all; without that level, the
    # ganglion rule flags it
    assert find_lesions(img, anatomy=masks).lesion_count == 0
    result = find_lesions(img, anatomy=masks, config=LesionConfig(detect_suv=None))
    hits = [les for les in result.lesions
            if np.linalg.norm(np.subtract(les.centroid_mm, (144.0, 180.0, 180.0))) < 8]
    assert len(hits) == 1
    assert hits[0].suv_max < 4.0
    assert hits[0].equivocal
    assert "ganglion" in str(hits[0].equivocal_reason)


def test_bone_and_soft_tissue_thresholds_differ_in_qpsma_split() -> None:
    arr, masks = _patient()
    bone_met = ((120.0, 180.0, 126.0), 9.0, 3.2)  # moderate bone lesion: SUVmax ~ 3.7
    soft = ((100.0, 60.0, 126.0), 9.0, 3.2)  # same uptake in soft tissue
    img = _suv(_with_lesions(arr, [bone_met, soft]))
    fixed = find_lesions(img, anatomy=masks,
                         config=LesionConfig(threshold_suv=3.0, detect_suv=None))
    split = find_lesions(img, anatomy=masks, config=LesionConfig(method="qpsma-split"))
    liver = split.reference.liver
    assert liver.suv_mean is not None
    assert liver.suv_sd is not None
    t_soft = 4.30 / liver.suv_mean * (liver.suv_mean + liver.suv_sd)
    assert split.thresholds["soft_tissue"] == pytest.approx(t_soft)
    assert split.thresholds["bone"] == 3.0
    assert fixed.lesion_count == 2
    assert split.lesion_count == 1
    assert split.lesions[0].overlaps["bone"] > 0.5


def test_percist_threshold_and_its_blood_pool_fallback() -> None:
    arr, masks = _patient()
    img = _suv(_with_lesions(arr, [((100.0, 60.0, 126.0), 9.0, 15.0)]))
    res = find_lesions(img, anatomy=masks, config=LesionConfig(method="percist"))
    liver = res.reference.liver
    assert liver.suv_mean is not None
    assert liver.suv_sd is not None
    assert res.thresholds["soft_tissue"] == pytest.approx(1.5 * liver.suv_mean
                                                          + 2 * liver.suv_sd)
    no_liver = {k: v for k, v in masks.items() if k != A.LIVER}
    res2 = find_lesions(img, anatomy=no_liver, config=LesionConfig(method="percist"))
    blood = res2.reference.blood_pool
    assert blood.suv_mean is not None
    assert blood.suv_sd is not None
    assert res2.thresholds["soft_tissue"] == pytest.approx(2.0 * blood.suv_mean
                                                           + 2 * blood.suv_sd)
    bare = {k: v for k, v in no_liver.items() if k != A.AORTA}
    with pytest.raises(LesionError, match="neither was measured"):
        find_lesions(img, anatomy=bare, config=LesionConfig(method="percist"))
    with pytest.raises(LesionError, match="needs a bone mask"):
        find_lesions(img, anatomy={k: v for k, v in masks.items() if k != A.BONE},
                     config=LesionConfig(method="qpsma-split"))


@pytest.mark.parametrize("fraction", [0.41, 0.50])
def test_isocontour_refinement_recovers_a_blurred_sphere(fraction: float) -> None:
    shape = (60, 50, 50)
    radius = 14.0
    true_ml = 4 / 3 * np.pi * radius**3 / 1000
    arr = np.where(_ball(shape, (90.0, 100.0, 100.0), radius), 10.0, 0.3)
    arr = _blur(arr, 6.0)
    plain = find_lesions(_suv(arr), anatomy={}, config=LesionConfig(threshold_suv=1.5))
    iso = find_lesions(_suv(arr), anatomy={},
                       config=LesionConfig(threshold_suv=1.5, isocontour_fraction=fraction))
    assert iso.lesion_count == 1
    # A low threshold swallows the blur; the isocontour is close to the true volume.
    assert plain.lesions[0].volume_ml > 1.3 * true_ml
    assert iso.lesions[0].volume_ml == pytest.approx(true_ml, rel=0.25)
    vals = arr[iso.labels.array > 0]
    assert vals.min() >= fraction * iso.lesions[0].suv_max - 1e-6


# -- miPSMA ----------------------------------------------------------------------------------

def _refs(blood: float | None, liver: float, parotid: float, spleen: float = 6.0
          ) -> ReferenceValues:
    def r(v: float | None) -> ReferenceValue:
        return ReferenceValue(v, 0.1 if v is not None else None, 10 if v else 0, "test",
                              None if v is not None else "absent")
    return ReferenceValues(r(blood), r(liver), r(parotid), r(spleen))


def test_mipsma_score_boundaries_and_continuous_index() -> None:
    refs = _refs(1.5, 5.0, 15.0)
    scores, index = mipsma([0.0, 1.0, 1.5, 4.9, 5.0, 14.9, 15.0, 25.0], refs)
    assert scores == [0, 0, 1, 1, 2, 2, 3, 3]
    assert index[0] == 0.0
    assert index[1] == pytest.approx(1.0 / 1.5)
    assert index[2] == pytest.approx(1.0)
    assert index[4] == pytest.approx(2.0)
    assert index[6] == pytest.approx(3.0)
    assert index[7] == pytest.approx(3.0 + 10.0 / 10.0)
    for s, x in zip(scores, index, strict=True):
        assert x is not None
        assert s == min(3, int(np.floor(x + 1e-12)))


def test_mipsma_uses_spleen_for_psma1007_and_none_without_references() -> None:
    refs = _refs(1.5, 9.0, 15.0, spleen=6.0)
    assert mipsma([7.0], refs)[0] == [1]
    assert mipsma([7.0], refs, tracer="psma1007")[0] == [2]
    assert mipsma([7.0], _refs(None, 9.0, 15.0)) == ([None], [None])


def test_suv_peak_at_the_image_border_uses_only_voxels_inside() -> None:
    arr = np.full((20, 20, 20), 0.5)
    arr[:5, :5, :5] = 6.0  # a lesion in the corner: the 1-mL sphere pokes out of the image
    les = find_lesions(_suv(arr), anatomy={}).lesions[0]
    assert les.suv_peak == pytest.approx(6.0)
    assert les.voxel_count == 125


def _noisy_pet(activity: NDArray[np.floating], coefficient: float, *, seed: int
               ) -> NDArray[np.float64]:
    """``activity`` blurred by the PSF with Poisson-like noise of SD ``coefficient x sqrt(SUV)``,
    correlated over about one voxel, as the phantoms' PET."""
    clean = _blur(activity)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(clean.shape), 0.7)
    noise /= noise.std()
    return np.maximum(clean + coefficient * np.sqrt(clean) * noise, 0.0)


# -- contrast to noise ---------------------------------------------------------------------

def test_noise_maxima_of_avid_tissue_are_dropped_and_a_real_focus_is_kept() -> None:
    """Noise of a moderately avid organ (SUV 2.4, noise coefficient 0.3) crosses SUV 3; only the
    focus that stands 5 noise SDs out of its surroundings is a lesion."""
    shape = (50, 60, 60)
    organ = np.zeros(shape, dtype=bool)
    organ[5:45, 5:55, 5:55] = True
    act = np.where(organ, 2.4, 0.3)
    act[_ball(shape, (75.0, 120.0, 120.0), 8.0)] = 12.0
    arr = _noisy_pet(act, 0.3, seed=3)
    liver = _ball(shape, (60.0, 80.0, 80.0), 20.0)  # the reference VOI sits in the organ
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.LIVER: liver & organ}
    off = find_lesions(_suv(arr), anatomy=anatomy,
                       config=LesionConfig(min_contrast_noise=None, adaptive_organs=()))
    on = find_lesions(_suv(arr), anatomy=anatomy, config=LesionConfig(adaptive_organs=()))
    assert off.lesion_count > 3  # the fixed threshold alone admits the noise
    assert on.lesion_count == 1
    focus = _ball(shape, (75.0, 120.0, 120.0), 8.0)
    assert focus[np.asarray(on.labels.array) == 1].any()
    assert any("contrast-to-noise" in n for n in on.notes)


def test_contrast_filter_is_skipped_with_a_note_without_a_liver_reference() -> None:
    shape = (40, 40, 40)
    arr = np.where(_ball(shape, (60.0, 80.0, 80.0), 10.0), 8.0, 0.5)
    result = find_lesions(_suv(arr), anatomy={})
    assert result.lesion_count == 1
    assert any("contrast-to-noise filter not applied" in n for n in result.notes)


def test_avid_marrow_noise_is_not_bone_disease_but_a_bone_lesion_is() -> None:
    """[18F]PSMA-1007-like marrow (SUV 2.1, noisy) crosses the bone threshold of 3; the
    skeleton's own noise bound keeps it out and a bone metastasis still stands out."""
    shape = (50, 60, 60)
    bone = np.zeros(shape, dtype=bool)
    bone[5:45, 10:50, 20:40] = True
    act = np.where(bone, 2.1, 0.5)
    act[_ball(shape, (75.0, 120.0, 120.0), 8.0)] = 15.0
    arr = _noisy_pet(act, 0.22, seed=5)
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.BONE: bone}
    plain = find_lesions(_suv(arr), anatomy=anatomy,
                         config=LesionConfig(adaptive_organs=(), min_contrast_noise=None))
    adaptive = find_lesions(_suv(arr), anatomy=anatomy,
                            config=LesionConfig(min_contrast_noise=None))
    assert plain.lesion_count > 1
    assert adaptive.lesion_count == 1
    assert adaptive.thresholds["organ:bone"] > 3.0
    focus = _ball(shape, (75.0, 120.0, 120.0), 8.0)
    assert focus[np.asarray(adaptive.labels.array) == 1].any()


def test_focus_hotter_than_the_excluded_organ_beside_it_is_not_its_spill() -> None:
    """A recurrence (SUV 15) against a cool bladder (SUV 5, as with [18F]PSMA-1007) whose mask
    takes in the lesion's rim is kept, not removed as the bladder's halo."""
    shape = (50, 60, 60)
    bladder = _ball(shape, (75.0, 120.0, 100.0), 30.0)
    focus = _ball(shape, (75.0, 120.0, 136.0), 8.0)
    act = np.where(bladder, 5.0, 0.5)
    act[focus] = 15.0
    arr = _blur(act)
    mask = bladder | (focus & _ball(shape, (75.0, 120.0, 100.0), 33.0))
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.URINARY_BLADDER: mask}
    kept = find_lesions(_suv(arr), anatomy=anatomy)
    assert kept.lesion_count == 1
    assert focus[np.asarray(kept.labels.array) == 1].any()
    assert kept.lesions[0].equivocal_reason is None  # SUVmax 15 > 2 x the bladder's urine
    strict = find_lesions(_suv(arr), anatomy=anatomy,
                          config=LesionConfig(equivocal_hotter_ratio=None))
    assert strict.lesions[0].equivocal_reason == "touches urinary_bladder"
    removed = find_lesions(_suv(arr), anatomy=anatomy, config=LesionConfig(spill_hotter_ratio=1e9))
    assert removed.lesion_count == 0


def test_organ_fringe_beyond_the_adaptive_zone_is_dropped_but_a_node_beside_it_is_not() -> None:
    """A spleen whose mask misses a 30 mm tip: the tip beyond the organ-adaptive zone rises into
    the spleen without a maximum of its own and is dropped; a node of lower SUV than the
    spleen's threshold, 20 mm from the mask, has its own maximum and is kept."""
    shape = (40, 60, 70)
    k, j, i = _grid(shape)
    spleen = _ball(shape, (60.0, 120.0, 120.0), 30.0)
    tip = (np.abs(k - 60.0) <= 8.0) & (np.abs(j - 120.0) <= 8.0) & (i >= 120.0) & (i <= 180.0)
    node = _ball(shape, (60.0, 120.0, 50.0), 6.0)
    act = np.where(spleen | tip, 8.0, 0.5)
    act[node] = 9.0
    rng = np.random.default_rng(3)
    arr = _blur(act) * (1.0 + 0.05 * rng.standard_normal(shape))
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.SPLEEN: spleen}
    config = LesionConfig(adaptive_organs=(A.SPLEEN,), min_contrast_noise=None)
    result = find_lesions(_suv(arr), anatomy=anatomy, config=config)
    assert result.thresholds["organ:spleen"] > 9.5
    assert result.lesion_count == 1, [les.centroid_mm for les in result.lesions]
    assert node[np.asarray(result.labels.array) == 1].any()
    assert any("fringe" in note for note in result.notes)
    kept = find_lesions(_suv(arr), anatomy=anatomy,
                        config=LesionConfig(adaptive_organs=(A.SPLEEN,), min_contrast_noise=None,
                                            organ_fringe_drop=False))
    assert kept.lesion_count == 2
    assert tip[np.asarray(kept.labels.array) > 0].any()


@pytest.mark.parametrize("psf_fwhm_mm", [6.0, None])
def test_recurrence_against_a_bladder_whose_mask_falls_short_of_it_is_kept(
        psf_fwhm_mm: float | None) -> None:
    """A 2 mL recurrence of SUV 14 against a bladder of SUV 60 whose mask lies 1.5 mm inside
    the bladder, with count noise (SD = 0.3 sqrt(SUV)): the component touching the bladder
    also holds the bladder's edge voxels (SUV ~40), but the recurrence's own maximum is judged
    against the noise at its own SUV, not at theirs, and it is kept (flagged as touching)."""
    shape = (40, 64, 64)
    activity = _ball(shape, (60.0, 128.0, 128.0), 26.5)
    mask = _ball(shape, (60.0, 128.0, 128.0), 25.0)
    recurrence = _ball(shape, (60.0, 161.0, 128.0), 8.0)
    k, j, i = _grid(shape)
    liver = (np.abs(k - 60) <= 50) & (np.abs(j - 128) <= 45) & (i >= 190) & (i <= 250)
    act = np.full(shape, 0.6)
    act[liver] = 5.0
    act[activity] = 60.0
    act[recurrence] = 14.0
    arr = _blur(act)
    arr = np.maximum(arr + 0.3 * np.sqrt(arr) * np.random.default_rng(1).standard_normal(shape),
                     0.0)
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.URINARY_BLADDER: mask, A.LIVER: liver}
    result = find_lesions(_suv(arr), anatomy=anatomy,
                          config=LesionConfig(psf_fwhm_mm=psf_fwhm_mm, adaptive_organs=(A.LIVER,)))
    assert result.lesion_count == 1
    les = result.lesions[0]
    assert recurrence[np.asarray(result.labels.array) == 1].any()
    assert les.suv_max > 12.0
    assert les.volume_ml > 1.5
    assert les.equivocal_reason == "touches urinary_bladder"


def test_a_soft_tissue_focus_must_peak_at_the_detection_level_but_bone_keeps_its_own() -> None:
    """Hysteresis: a soft-tissue focus peaking at SUV 3.5 is not a lesion (SUV 4 detects), a
    node peaking at 6 is and keeps its SUV-3 extent; a bone focus at 3.5 keeps bone's SUV 3."""
    shape = (30, 50, 50)
    _, j, i = _grid(shape)
    bone = (np.abs(j - 150.0) <= 20.0) & (np.abs(i - 150.0) <= 20.0)
    act = np.where(bone, 0.8, 0.4)
    peaks: dict[str, NDArray[np.bool_]] = {}
    for name, centre, value in (("faint", (45.0, 60.0, 60.0), 3.5),
                                ("node", (45.0, 60.0, 140.0), 6.0),
                                ("bone", (45.0, 150.0, 150.0), 3.5)):
        ball = _ball(shape, centre, 5.0)
        act[ball] = value
        peaks[name] = ball
    arr = _blur(act, 4.0)
    anatomy = {A.BODY: np.ones(shape, dtype=bool), A.BONE: bone}
    found = find_lesions(_suv(arr), anatomy=anatomy)
    every = find_lesions(_suv(arr), anatomy=anatomy, config=LesionConfig(detect_suv=None))
    lab, lab_all = np.asarray(found.labels.array), np.asarray(every.labels.array)
    assert {name: bool(lab[m].any()) for name, m in peaks.items()} == {
        "faint": False, "node": True, "bone": True}
    assert all(lab_all[m].any() for m in peaks.values())
    node = lab[peaks["node"]].max()
    assert np.array_equal(lab == node, lab_all == lab_all[peaks["node"]].max())
    assert found.thresholds["detect_suv"] == 4.0
