"""autoPET-exact voxel metrics and lesion-wise detection against known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

import imaging.metrics as metrics_module
from imaging.errors import GeometryError, LesionError
from imaging.metrics import (
    autopet_metrics,
    detect_lesions,
    label_instances,
    lesion_mask,
    pool_detection,
    score_case,
)
from imaging.volume import Volume

SPACING = (3.0, 2.0, 2.0)  # mm -> 0.012 mL per voxel
VOXEL_ML = 0.012


def _vol(array: NDArray[np.generic], spacing: tuple[float, float, float] = SPACING) -> Volume:
    return Volume(np.asarray(array), spacing=spacing, origin=(0.0, 0.0, 0.0), unit="mask")


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float
          ) -> NDArray[np.uint8]:
    k, j, i = np.indices(shape)
    d2 = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    return (d2 <= radius**2).astype(np.uint8)


SHAPE = (20, 24, 24)


# -- hand-built known answers ----------------------------------------------------------------
def test_identical_masks_score_perfectly() -> None:
    g = _ball(SHAPE, (6, 6, 6), 3) | _ball(SHAPE, (13, 16, 16), 4)
    score = score_case(_vol(g), _vol(g))
    assert score.voxel.dice == 1.0
    assert score.voxel.fp_volume_ml == 0.0
    assert score.voxel.fn_volume_ml == 0.0
    assert score.voxel.reference_volume_ml == pytest.approx(g.sum() * VOXEL_ML)
    for det in (score.autopet, score.hungarian):
        assert (det.n_reference, det.n_predicted, det.tp_reference) == (2, 2, 2)
        assert (det.sensitivity, det.precision, det.f1) == (1.0, 1.0, 1.0)
    assert [m[2] for m in score.hungarian.matches] == [1.0, 1.0]


def test_disjoint_masks_give_zero_dice_and_full_fp_fn_volumes() -> None:
    g = _ball(SHAPE, (6, 6, 6), 3)
    p = _ball(SHAPE, (13, 16, 16), 4)
    m = autopet_metrics(_vol(p), _vol(g))
    assert m.dice == 0.0
    assert m.fp_volume_ml == pytest.approx(p.sum() * VOXEL_ML)
    assert m.fn_volume_ml == pytest.approx(g.sum() * VOXEL_ML)
    det = detect_lesions(_vol(p), _vol(g), matching="autopet")
    assert (det.tp_reference, det.false_negatives, det.false_positives) == (0, 1, 1)
    assert det.sensitivity == 0.0
    assert det.precision == 0.0
    assert det.f1 == 0.0


def test_empty_reference_follows_autopet3_rules() -> None:
    p = _ball(SHAPE, (10, 12, 12), 3)
    empty = np.zeros(SHAPE, np.uint8)
    m3 = autopet_metrics(_vol(p), _vol(empty))
    assert math.isnan(m3.dice)
    assert math.isnan(m3.fn_volume_ml)
    assert m3.fp_volume_ml == pytest.approx(p.sum() * VOXEL_ML)
    # autoPET I/II had no guard: Dice 2*0/|P| = 0, FN volume 0
    m2 = autopet_metrics(_vol(p), _vol(empty), rules="autopet2")
    assert m2.dice == 0.0
    assert m2.fn_volume_ml == 0.0
    assert m2.fp_volume_ml == m3.fp_volume_ml
    det = detect_lesions(_vol(p), _vol(empty))
    assert det.n_reference == 0
    assert math.isnan(det.sensitivity)
    assert det.precision == 0.0
    assert det.false_positives == 1  # negative case: every candidate is a false positive


def test_both_empty_is_undefined_dice_and_no_fp() -> None:
    empty = np.zeros(SHAPE, np.uint8)
    m3 = autopet_metrics(_vol(empty), _vol(empty))
    assert math.isnan(m3.dice)
    assert math.isnan(m3.fn_volume_ml)
    assert m3.fp_volume_ml == 0.0
    m2 = autopet_metrics(_vol(empty), _vol(empty), rules="autopet2")
    assert math.isnan(m2.dice)  # 0/0 in val_script.py
    assert m2.fn_volume_ml == 0.0
    det = detect_lesions(_vol(empty), _vol(empty))
    assert math.isnan(det.sensitivity)
    assert math.isnan(det.precision)
    assert math.isnan(det.f1)


def test_empty_prediction_gives_zero_dice_and_full_fn_volume() -> None:
    g = _ball(SHAPE, (10, 12, 12), 4)
    empty = np.zeros(SHAPE, np.uint8)
    m = autopet_metrics(_vol(empty), _vol(g))
    assert m.dice == 0.0
    assert m.fp_volume_ml == 0.0
    assert m.fn_volume_ml == pytest.approx(g.sum() * VOXEL_ML)
    det = detect_lesions(_vol(empty), _vol(g))
    assert det.sensitivity == 0.0
    assert math.isnan(det.precision)
    assert math.isnan(det.f1)


def test_one_lesion_split_in_two() -> None:
    g = _ball(SHAPE, (10, 12, 12), 6)
    p = g.copy()
    p[:, :, 12] = 0  # cut the predicted lesion into two halves
    halves = int(p.sum())
    score = score_case(_vol(p), _vol(g))
    assert score.voxel.n_predicted_components == 2
    assert score.voxel.dice == pytest.approx(2 * halves / (halves + g.sum()))
    assert score.voxel.fp_volume_ml == 0.0  # both halves touch the reference
    assert score.voxel.fn_volume_ml == 0.0
    # autoPET-style (many-to-many): one reference lesion hit, both halves are true
    assert (score.autopet.tp_reference, score.autopet.tp_predicted) == (1, 2)
    assert score.autopet.precision == 1.0
    # one-to-one: one half matches (IoU ~0.45 >= 0.10), the other is a false positive
    h = score.hungarian
    assert (h.tp_reference, h.false_positives, h.false_negatives) == (1, 1, 0)
    assert h.precision == 0.5
    assert h.f1 == pytest.approx(2 / 3)
    # the reverse: a reference lesion split in two, one predicted blob -> one miss one-to-one
    rev = score_case(_vol(g), _vol(p))
    assert (rev.hungarian.tp_reference, rev.hungarian.false_negatives) == (1, 1)
    assert rev.autopet.sensitivity == 1.0
    assert rev.voxel.fn_volume_ml == 0.0


def test_components_are_18_connected() -> None:
    a = np.zeros((3, 3, 3), np.uint8)
    a[0, 0, 0] = a[1, 1, 0] = 1  # share an edge: 18-connected
    assert label_instances(_vol(a))[1].size - 1 == 1
    b = np.zeros((3, 3, 3), np.uint8)
    b[0, 0, 0] = b[1, 1, 1] = 1  # share only a corner: two lesions under 18-connectivity
    assert label_instances(_vol(b))[1].size - 1 == 2
    # a prediction touching only one of the corner-neighbours leaves the other as FN volume
    p = np.zeros((3, 3, 3), np.uint8)
    p[0, 0, 0] = 1
    m = autopet_metrics(_vol(p, (1.0, 1.0, 1.0)), _vol(b, (1.0, 1.0, 1.0)))
    assert m.fn_volume_ml == pytest.approx(0.001)


def test_min_iou_separates_the_two_matchings() -> None:
    g = _ball(SHAPE, (10, 12, 12), 5)
    p = np.zeros(SHAPE, np.uint8)
    p[10, 12, 12:14] = 1  # two voxels inside a large lesion: IoU far below 0.10
    score = score_case(_vol(p), _vol(g))
    assert score.autopet.tp_reference == 1
    assert score.hungarian.tp_reference == 0
    assert score.hungarian.false_positives == 1
    loose = detect_lesions(_vol(p), _vol(g), min_iou=1e-6)
    assert loose.tp_reference == 1


def test_per_category_sensitivity_uses_reference_lesion_ids() -> None:
    ref = np.zeros(SHAPE, np.uint16)
    ref[_ball(SHAPE, (5, 5, 5), 2) > 0] = 7
    ref[_ball(SHAPE, (14, 18, 18), 3) > 0] = 9
    ref[_ball(SHAPE, (5, 18, 5), 2) > 0] = 11
    pred = ((ref == 7) | (ref == 9)).astype(np.uint8)
    cats = {7: "bone", 9: "bone", 11: "node_pelvic"}
    score = score_case(_vol(pred), _vol(ref), reference_instances="labels", categories=cats)
    assert score.hungarian.reference_detected == {7: True, 9: True, 11: False}
    assert score.hungarian.per_category() == {"bone": (2, 2), "node_pelvic": (1, 0)}
    assert score.voxel.n_reference_components == 3
    record = score.to_record()
    assert record["hungarian_tp_bone"] == 2
    assert record["n_ref_node_pelvic"] == 1
    with pytest.raises(ValueError, match="reference_instances='labels'"):
        score_case(_vol(pred), _vol(ref.astype(bool).astype(np.uint8)), categories=cats)


def test_labels_mode_keeps_touching_lesions_apart() -> None:
    ref = np.zeros(SHAPE, np.uint16)
    ref[8:12, 8:12, 8:12] = 1
    ref[8:12, 8:12, 12:16] = 2  # touching lesion with another id
    assert label_instances(_vol(ref), instances="labels")[1].tolist() == [0, 1, 2]
    pred = (ref == 1).astype(np.uint8)
    score = score_case(_vol(pred), _vol(ref), reference_instances="labels")
    assert score.hungarian.n_reference == 2
    assert score.hungarian.tp_reference == 1
    assert score.voxel.n_reference_components == 1  # autoPET voxel metrics: one component
    assert score.voxel.fn_volume_ml == 0.0


def test_pool_detection_sums_lesions_over_cases() -> None:
    g = _ball(SHAPE, (10, 12, 12), 4)
    p = _ball(SHAPE, (3, 3, 3), 2)
    empty = np.zeros(SHAPE, np.uint8)
    results = [
        detect_lesions(_vol(g), _vol(g)),  # 1 TP
        detect_lesions(_vol(p), _vol(g)),  # 1 FN, 1 FP
        detect_lesions(_vol(empty), _vol(empty)),  # nothing
    ]
    pooled = pool_detection(results)
    assert (pooled.n_cases, pooled.n_reference, pooled.tp_reference) == (3, 2, 1)
    assert pooled.sensitivity == 0.5
    assert pooled.fp_per_scan == pytest.approx(1 / 3)
    assert pooled.precision == 0.5
    assert pooled.f1 == 0.5
    with pytest.raises(ValueError, match="different matchings"):
        pool_detection([results[0], detect_lesions(_vol(g), _vol(g), matching="autopet")])


# -- bad input -------------------------------------------------------------------------------
def test_different_grids_raise_geometry_error() -> None:
    g = _ball(SHAPE, (10, 12, 12), 4)
    moved = Volume(g, spacing=SPACING, origin=(0.0, 0.0, 5.0), unit="mask")
    with pytest.raises(GeometryError, match=r"different grids.*--resample"):
        autopet_metrics(moved, _vol(g))
    with pytest.raises(GeometryError, match="shape"):
        score_case(_vol(g[:-1]), _vol(g))


def test_non_binary_masks_are_refused_unless_a_label_is_chosen() -> None:
    multi = np.zeros(SHAPE, np.uint8)
    multi[_ball(SHAPE, (10, 12, 12), 4) > 0] = 1
    multi[_ball(SHAPE, (3, 3, 3), 2) > 0] = 2  # e.g. DEEP-PSMA "normal uptake"
    with pytest.raises(LesionError, match=r"not binary \(values found: 0, 1, 2\).*--label"):
        autopet_metrics(_vol(multi), _vol(multi))
    m = autopet_metrics(_vol(multi), _vol(multi), label=1)
    assert m.n_reference_components == 1
    with pytest.raises(LesionError, match="label 5 does not occur"):
        lesion_mask(_vol(multi), label=5)
    prob = np.full(SHAPE, 0.3, np.float32)
    with pytest.raises(LesionError, match="probability map"):
        lesion_mask(_vol(prob))
    bad = np.zeros(SHAPE, np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(LesionError, match="NaN"):
        lesion_mask(_vol(bad))
    neg = np.zeros(SHAPE, np.int16)
    neg[0, 0, 0] = -1
    with pytest.raises(LesionError, match="negative"):
        label_instances(_vol(neg), instances="labels")


def test_unknown_options_raise_value_error() -> None:
    g = _ball(SHAPE, (10, 12, 12), 4)
    with pytest.raises(ValueError, match="rules"):
        autopet_metrics(_vol(g), _vol(g), rules="autopet9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="matching"):
        detect_lesions(_vol(g), _vol(g), matching="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_iou"):
        detect_lesions(_vol(g), _vol(g), min_iou=0.0)
    with pytest.raises(ValueError, match="instances"):
        label_instances(_vol(g), instances="blobs")  # type: ignore[arg-type]


# -- agreement with a straightforward reference implementation --------------------------------
_S18 = ndimage.generate_binary_structure(3, 2)  # 18-connectivity, independent of cc3d


def _reference_autopet3(pred: NDArray[np.bool_], gt: NDArray[np.bool_], voxel_ml: float
                        ) -> tuple[float, float, float]:
    """The autoPET III formulas written plainly: one loop over the components of each mask."""
    pred_cc, n_pred = ndimage.label(pred, structure=_S18)
    gt_cc, n_gt = ndimage.label(gt, structure=_S18)
    fp = 0
    if pred.sum() > 0:
        for idx in range(1, n_pred + 1):
            comp = np.isin(pred_cc, idx)
            if (comp * gt).sum() == 0:
                fp += comp.sum()
    if gt.sum() == 0:
        return math.nan, fp * voxel_ml, math.nan
    fn = 0
    for idx in range(1, n_gt + 1):
        comp = np.isin(gt_cc, idx)
        if (comp * pred).sum() == 0:
            fn += comp.sum()
    dice = 2 * (gt * pred).sum() / (gt.sum() + pred.sum())
    return float(dice), fp * voxel_ml, fn * voxel_ml


def _random_mask(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.bool_]:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=float(rng.uniform(0.8, 2.0)))
    if rng.uniform() < 0.1:
        return np.zeros(shape, bool)
    return noise > np.quantile(noise, rng.uniform(0.85, 0.99))


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_reference_implementation_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    shape = (16, 20, 18)
    gt = _random_mask(rng, shape)
    flips = rng.uniform(size=shape) < 0.02
    pred = _random_mask(rng, shape) if rng.uniform() < 0.7 else gt ^ flips
    score = score_case(_vol(pred.astype(np.uint8)), _vol(gt.astype(np.uint8)))
    dice, fp, fn = _reference_autopet3(pred, gt, VOXEL_ML)
    for ours, theirs in ((score.voxel.dice, dice), (score.voxel.fn_volume_ml, fn)):
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs)
    assert score.voxel.fp_volume_ml == pytest.approx(fp)
    # autoPET-style detection: reference lesions with any overlap, predicted ones without
    gt_cc, n_gt = ndimage.label(gt, structure=_S18)
    pred_cc, n_pred = ndimage.label(pred, structure=_S18)
    hit_gt = sum(bool(pred[gt_cc == g].any()) for g in range(1, n_gt + 1))
    hit_pred = sum(bool(gt[pred_cc == p].any()) for p in range(1, n_pred + 1))
    assert (score.autopet.n_reference, score.autopet.n_predicted) == (n_gt, n_pred)
    assert (score.autopet.tp_reference, score.autopet.tp_predicted) == (hit_gt, hit_pred)


def _brute_force_matches(iou: NDArray[np.float64], min_iou: float) -> tuple[int, float]:
    """Best (number of matches, summed IoU) over every one-to-one assignment."""
    n_ref, n_pred = iou.shape
    best = (0, 0.0)
    for k in range(min(n_ref, n_pred), 0, -1):
        for rows in itertools.combinations(range(n_ref), k):
            for cols in itertools.permutations(range(n_pred), k):
                vals = iou[list(rows), list(cols)]
                if np.all(vals >= min_iou):
                    best = max(best, (k, float(vals.sum())))
        if best[0] == k:
            return best
    return best


@pytest.mark.parametrize("seed", range(8))
def test_hungarian_matching_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    shape = (12, 14, 14)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for n, target in enumerate((ref, pred)):
        for value in range(1, int(rng.integers(1, 5)) + 1):
            k, j, i = rng.integers(0, 9, size=3)
            size = rng.integers(2, 5, size=3)
            target[k:k + size[0], j:j + size[1], i:i + size[2]] = value + 10 * n
    # instance maps, so overlapping boxes of different ids stay separate lesions
    ref_l, ref_ids = label_instances(_vol(ref), instances="labels")
    pred_l, pred_ids = label_instances(_vol(pred), instances="labels")
    n_r, n_p = ref_ids.size - 1, pred_ids.size - 1
    iou = np.zeros((n_r, n_p))
    for r in range(n_r):
        for p in range(n_p):
            a, b = ref_l == r + 1, pred_l == p + 1
            iou[r, p] = (a & b).sum() / (a | b).sum()
    det = detect_lesions(_vol(pred), _vol(ref), reference_instances="labels",
                         prediction_instances="labels", min_iou=0.1)
    n_best, sum_best = _brute_force_matches(iou, 0.1)
    assert det.tp_reference == n_best
    assert sum(m[2] for m in det.matches) == pytest.approx(sum_best)


def test_sparse_pair_table_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    gt = _random_mask(rng, (16, 20, 18)) | _ball((16, 20, 18), (8, 10, 9), 3).astype(bool)
    pred = _random_mask(rng, (16, 20, 18)) | gt
    dense = score_case(_vol(pred.astype(np.uint8)), _vol(gt.astype(np.uint8)))
    monkeypatch.setattr(metrics_module, "_DENSE_PAIR_LIMIT", 0)
    sparse = score_case(_vol(pred.astype(np.uint8)), _vol(gt.astype(np.uint8)))
    assert sparse.to_record() == dense.to_record()
    assert sparse.hungarian.matches == dense.hungarian.matches
