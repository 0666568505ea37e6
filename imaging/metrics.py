"""Segmentation and detection metrics for PET lesion masks, as the autoPET challenges define them.

Voxel metrics follow the autoPET evaluation code exactly (domain.md section 4):

* components are 18-connected (``cc3d.connected_components(mask, connectivity=18)``);
* **false-positive volume** = total volume of predicted components that share no voxel with the
  reference; **false-negative volume** = total volume of reference components that share no voxel
  with the prediction;
* **Dice** = ``2 |P ∩ G| / (|P| + |G|)``.

Two conventions for cases without reference lesions:

``"autopet3"`` (default; autoPET III ``evaluation_metrics.py``)
    Dice and FN volume are NaN when the reference is empty; FP volume is 0 when the prediction is
    empty.
``"autopet2"`` (autoPET I and II ``val_script.py``)
    No guards: Dice is ``0/0`` = NaN only when both masks are empty, and 0 when only the
    reference is empty; FN volume is 0 when the reference is empty.

NaN here means *undefined by definition* (a ratio 0/0), exactly as the challenges report it and
skip it when averaging; it never stands for a failure (failures raise).

Lesion-wise detection (domain.md 4.3) comes in two flavours:

``"autopet"``
    A reference lesion is detected if at least one predicted voxel touches it; a predicted lesion
    is a false positive if it touches no reference voxel (many-to-many).
``"hungarian"``
    PI-CAI style one-to-one matching: overlap = IoU, pairs below ``min_iou`` (default 0.10) are
    not allowed, and :func:`scipy.optimize.linear_sum_assignment` maximises first the number of
    matches and then the summed IoU. Unmatched reference lesions are false negatives, unmatched
    predicted lesions false positives.

All overlaps come from one labelled pass: each mask is labelled once, the voxel counts of every
(reference lesion, predicted lesion) pair come from one :func:`numpy.bincount` over paired labels,
and every metric is read from that table (no loop over components touching the volume).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from imaging.errors import GeometryError, LesionError
from imaging.volume import Volume, same_geometry

__all__ = [
    "CaseScore",
    "DetectionResult",
    "DetectionSummary",
    "Instances",
    "Matching",
    "Rules",
    "VoxelMetrics",
    "autopet_metrics",
    "detect_lesions",
    "label_instances",
    "lesion_mask",
    "pool_detection",
    "score_case",
]

logger = logging.getLogger(__name__)

Rules = Literal["autopet3", "autopet2"]
Matching = Literal["autopet", "hungarian"]
Instances = Literal["components", "labels"]

_RULES: frozenset[str] = frozenset(("autopet3", "autopet2"))
_MATCHINGS: frozenset[str] = frozenset(("autopet", "hungarian"))
_INSTANCES: frozenset[str] = frozenset(("components", "labels"))

#: Largest dense (reference x prediction) pair table built with ``np.bincount``; above it the
#: sparse ``np.unique`` path is used (same result, bounded memory).
_DENSE_PAIR_LIMIT = 1 << 22

#: Connectivity of a lesion, as in every autoPET evaluation script.
CONNECTIVITY: Literal[18] = 18


# -- result types ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VoxelMetrics:
    """autoPET voxel metrics of one case.

    Attributes
    ----------
    dice : float
        Foreground Dice in [0, 1]; NaN where the rules leave it undefined (see module notes).
    fp_volume_ml, fn_volume_ml : float
        False-positive and false-negative volume (mL); ``fn_volume_ml`` is NaN for an empty
        reference under ``"autopet3"``.
    reference_volume_ml, predicted_volume_ml, intersection_ml : float
        ``|G|``, ``|P|`` and ``|P ∩ G|`` in mL.
    n_reference_components, n_predicted_components : int
        Number of 18-connected components of each mask.
    rules : str
        ``"autopet3"`` or ``"autopet2"``.
    """

    dice: float
    fp_volume_ml: float
    fn_volume_ml: float
    reference_volume_ml: float
    predicted_volume_ml: float
    intersection_ml: float
    n_reference_components: int
    n_predicted_components: int
    rules: str


@dataclass(frozen=True, slots=True)
class DetectionResult:
    """Lesion-wise detection of one case.

    Attributes
    ----------
    matching : str
        ``"autopet"`` (>= 1 voxel overlap, many-to-many) or ``"hungarian"`` (one-to-one, IoU).
    min_iou : float
        Minimum IoU of a match (``"hungarian"`` only; 0 for ``"autopet"``).
    n_reference, n_predicted : int
        Number of reference and predicted lesions.
    tp_reference : int
        Reference lesions detected.
    tp_predicted : int
        Predicted lesions counted as true (equal to ``tp_reference`` for one-to-one matching).
    sensitivity, precision, f1 : float
        ``tp_reference / n_reference``, ``tp_predicted / n_predicted`` and their harmonic mean;
        NaN where the denominator is zero.
    reference_detected : Mapping[int, bool]
        Reference lesion id (label value, or component number) -> detected.
    reference_category : Mapping[int, str]
        Reference lesion id -> category, for the ids given a category.
    matches : tuple of (int, int, float)
        ``(reference id, predicted id, IoU)`` of each pair counted as a detection.
    """

    matching: str
    min_iou: float
    n_reference: int
    n_predicted: int
    tp_reference: int
    tp_predicted: int
    reference_detected: Mapping[int, bool]
    reference_category: Mapping[int, str]
    matches: tuple[tuple[int, int, float], ...]

    @property
    def false_negatives(self) -> int:
        """Reference lesions not detected."""
        return self.n_reference - self.tp_reference

    @property
    def false_positives(self) -> int:
        """Predicted lesions not counted as true."""
        return self.n_predicted - self.tp_predicted

    @property
    def sensitivity(self) -> float:
        """Detected share of the reference lesions (NaN without reference lesions)."""
        return _ratio(self.tp_reference, self.n_reference)

    @property
    def precision(self) -> float:
        """True share of the predicted lesions (NaN without predicted lesions)."""
        return _ratio(self.tp_predicted, self.n_predicted)

    @property
    def f1(self) -> float:
        """Harmonic mean of sensitivity and precision (NaN if either is undefined)."""
        return _f1(self.sensitivity, self.precision)

    def per_category(self) -> dict[str, tuple[int, int]]:
        """Category -> ``(n_reference, n_detected)`` over the reference lesions with a category."""
        out: dict[str, tuple[int, int]] = {}
        for lesion_id, category in self.reference_category.items():
            n, hit = out.get(category, (0, 0))
            out[category] = (n + 1, hit + int(self.reference_detected[lesion_id]))
        return out


@dataclass(frozen=True, slots=True)
class CaseScore:
    """Everything scored for one case: voxel metrics and both detection flavours."""

    voxel: VoxelMetrics
    autopet: DetectionResult
    hungarian: DetectionResult

    def to_record(self) -> dict[str, Any]:
        """Flat, JSON-ready dict (one row of a per-case table)."""
        v, a, h = self.voxel, self.autopet, self.hungarian
        record: dict[str, Any] = {
            "dice": v.dice,
            "fp_volume_ml": v.fp_volume_ml,
            "fn_volume_ml": v.fn_volume_ml,
            "reference_volume_ml": v.reference_volume_ml,
            "predicted_volume_ml": v.predicted_volume_ml,
            "n_reference_lesions": h.n_reference,
            "n_predicted_lesions": h.n_predicted,
            "autopet_tp": a.tp_reference,
            "autopet_fp": a.false_positives,
            "autopet_fn": a.false_negatives,
            "autopet_sensitivity": a.sensitivity,
            "autopet_precision": a.precision,
            "hungarian_tp": h.tp_reference,
            "hungarian_fp": h.false_positives,
            "hungarian_fn": h.false_negatives,
            "hungarian_sensitivity": h.sensitivity,
            "hungarian_precision": h.precision,
            "hungarian_f1": h.f1,
        }
        for category, (n, hit) in sorted(h.per_category().items()):
            record[f"n_ref_{category}"] = n
            record[f"hungarian_tp_{category}"] = hit
            record[f"autopet_tp_{category}"] = a.per_category()[category][1]
        return record


@dataclass(frozen=True, slots=True)
class DetectionSummary:
    """Lesion detection pooled over a set of cases (FROC-style: lesions summed, then divided).

    Attributes
    ----------
    matching : str
        Matching flavour of the pooled results.
    n_cases, n_reference, n_predicted, tp_reference, tp_predicted : int
        Sums over the cases.
    per_category : Mapping[str, tuple[int, int]]
        Category -> ``(n_reference, n_detected)`` summed over cases.
    """

    matching: str
    n_cases: int
    n_reference: int
    n_predicted: int
    tp_reference: int
    tp_predicted: int
    per_category: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def sensitivity(self) -> float:
        """Pooled lesion sensitivity (NaN without reference lesions)."""
        return _ratio(self.tp_reference, self.n_reference)

    @property
    def precision(self) -> float:
        """Pooled precision (NaN without predicted lesions)."""
        return _ratio(self.tp_predicted, self.n_predicted)

    @property
    def f1(self) -> float:
        """Harmonic mean of pooled sensitivity and precision."""
        return _f1(self.sensitivity, self.precision)

    @property
    def fp_per_scan(self) -> float:
        """False-positive lesions per case (NaN without cases)."""
        return _ratio(self.n_predicted - self.tp_predicted, self.n_cases)

    def category_sensitivity(self) -> dict[str, float]:
        """Category -> pooled sensitivity (NaN for a category without reference lesions)."""
        return {c: _ratio(hit, n) for c, (n, hit) in sorted(self.per_category.items())}


# -- helpers ---------------------------------------------------------------------------------
def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else math.nan


def _f1(sensitivity: float, precision: float) -> float:
    if math.isnan(sensitivity) or math.isnan(precision):
        return math.nan
    if sensitivity + precision == 0:
        return 0.0
    return 2.0 * sensitivity * precision / (sensitivity + precision)


def lesion_mask(
    volume: Volume, *, label: int | None = None, what: str = "mask"
) -> NDArray[np.bool_]:
    """Binary lesion mask of a mask volume, refusing values that are not a binary mask.

    Parameters
    ----------
    volume : Volume
        Mask or label volume, shape (K, J, I).
    label : int, optional
        Take the voxels equal to this value as lesion (for multi-class masks, e.g. DEEP-PSMA
        label 1 = tumour, 2 = normal uptake). Without it the mask must hold only 0 and 1.
    what : str
        Name of the mask in error messages (e.g. its file name).

    Returns
    -------
    ndarray of bool, shape (K, J, I)

    Raises
    ------
    LesionError
        If the mask holds NaN, non-integer values, or values other than 0/1 while no ``label`` is
        chosen, or if ``label`` does not occur.
    """
    arr = np.asarray(volume.array)
    if arr.dtype == np.bool_:
        if label not in (None, 1):
            raise LesionError(f"{what}: label {label} chosen but the mask is boolean (0/1 only).")
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise LesionError(f"{what}: mask holds NaN or infinite values; export a 0/1 mask.")
        if not np.array_equal(arr, np.round(arr)):
            raise LesionError(
                f"{what}: mask holds non-integer values (min {float(arr.min()):g}, max "
                f"{float(arr.max()):g}); it looks like a probability map. Threshold it into a "
                "0/1 lesion mask first."
            )
    if label is not None:
        out = arr == label
        if not out.any():
            present = _present_values(arr)
            raise LesionError(
                f"{what}: label {label} does not occur in the mask (values found: {present}); "
                "choose one of those with --label."
            )
        return np.asarray(out)
    # bincount-free check: 0/1 only
    if arr.min() < 0 or arr.max() > 1:
        present = _present_values(arr)
        raise LesionError(
            f"{what}: mask is not binary (values found: {present}). Choose the lesion label with "
            "--label N (e.g. 1 = tumour in DEEP-PSMA masks), or score instance label maps with "
            "--instances labels."
        )
    return np.asarray(arr != 0)


def _present_values(arr: NDArray[Any], limit: int = 12) -> str:
    values = np.unique(arr)
    shown = ", ".join(f"{v:g}" for v in values[:limit].astype(np.float64))
    return shown + (f", ... ({values.size} distinct)" if values.size > limit else "")


def label_instances(
    volume: Volume, *, instances: Instances = "components", label: int | None = None,
    what: str = "mask",
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Number the lesions of a mask volume.

    Parameters
    ----------
    volume : Volume
        Mask (``instances="components"``) or instance label map (``"labels"``).
    instances : {"components", "labels"}
        ``"components"``: lesions are the 18-connected components of the binary mask (autoPET).
        ``"labels"``: each distinct non-zero value is one lesion, connected or not (e.g. the
        phantom's ``SEG.nii.gz``, whose values are truth lesion ids).
    label : int, optional
        With ``"components"``: the mask value taken as lesion (see :func:`lesion_mask`).
    what : str
        Name of the mask in error messages.

    Returns
    -------
    labels : ndarray of int64, shape (K, J, I)
        0 = background, lesions numbered 1..N.
    ids : ndarray of int64, shape (N + 1,)
        ``ids[n]`` = the lesion's original id (its label value, or ``n`` for components);
        ``ids[0] = 0``.

    Raises
    ------
    LesionError
        As :func:`lesion_mask`; or with ``"labels"`` if values are negative or non-integer.
    ValueError
        If ``instances`` is unknown.
    """
    if instances not in _INSTANCES:
        raise ValueError(f"instances must be one of {sorted(_INSTANCES)}, got {instances!r}.")
    if instances == "components":
        mask = lesion_mask(volume, label=label, what=what)
        cc, n = cc3d.connected_components(
            mask.astype(np.uint8), connectivity=CONNECTIVITY, return_N=True
        )
        return cc.astype(np.int64, copy=False), np.arange(int(n) + 1, dtype=np.int64)
    arr = np.asarray(volume.array)
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr))
    ):
        raise LesionError(f"{what}: an instance label map must hold integer lesion ids.")
    if arr.size and arr.min() < 0:
        raise LesionError(f"{what}: negative value {arr.min():g} in an instance label map.")
    fg = arr != 0
    values, inverse = np.unique(arr[fg], return_inverse=True)
    labels = np.zeros(arr.shape, dtype=np.int64)
    labels[fg] = inverse.reshape(-1) + 1
    ids: NDArray[np.int64] = np.concatenate([[0], values.astype(np.int64)])
    return labels, ids


@dataclass(frozen=True, slots=True)
class _Pairs:
    """Sparse overlap table of two labellings."""

    ref_sizes: NDArray[np.int64]  # (n_ref + 1,) voxels per reference lesion (0 = background)
    pred_sizes: NDArray[np.int64]  # (n_pred + 1,)
    ref: NDArray[np.int64]  # (n_pairs,) reference lesion number of each overlapping pair
    pred: NDArray[np.int64]  # (n_pairs,) predicted lesion number
    count: NDArray[np.int64]  # (n_pairs,) voxels shared


def _pair_table(ref_labels: NDArray[np.int64], n_ref: int, pred_labels: NDArray[np.int64],
                n_pred: int) -> _Pairs:
    """Voxel counts of every overlapping (reference, predicted) lesion pair in one pass."""
    ref_flat = ref_labels.reshape(-1)
    pred_flat = pred_labels.reshape(-1)
    ref_sizes = np.bincount(ref_flat, minlength=n_ref + 1).astype(np.int64)
    pred_sizes = np.bincount(pred_flat, minlength=n_pred + 1).astype(np.int64)
    both = (ref_flat > 0) & (pred_flat > 0)
    codes = ref_flat[both] * np.int64(n_pred + 1) + pred_flat[both]
    width = (n_ref + 1) * (n_pred + 1)
    if width <= _DENSE_PAIR_LIMIT:
        table = np.bincount(codes, minlength=width)
        keys = np.flatnonzero(table)
        counts = table[keys]
    else:  # very many lesions on both sides: same table, sparse
        keys, counts = np.unique(codes, return_counts=True)
    return _Pairs(
        ref_sizes=ref_sizes,
        pred_sizes=pred_sizes,
        ref=(keys // (n_pred + 1)).astype(np.int64),
        pred=(keys % (n_pred + 1)).astype(np.int64),
        count=counts.astype(np.int64),
    )


def _check_pair(prediction: Volume, reference: Volume, *, atol: float) -> None:
    if not same_geometry(prediction, reference, atol=atol):
        raise GeometryError(
            "prediction and reference masks are on different grids: prediction shape "
            f"{prediction.shape}, spacing {tuple(round(s, 4) for s in prediction.spacing)} mm, "
            f"origin {tuple(round(o, 3) for o in prediction.origin)}; reference shape "
            f"{reference.shape}, spacing {tuple(round(s, 4) for s in reference.spacing)} mm, "
            f"origin {tuple(round(o, 3) for o in reference.origin)}. Resample the prediction "
            "onto the reference grid (nearest neighbour; `bench --resample`)."
        )


def _voxel_from_pairs(pairs: _Pairs, *, voxel_ml: float, rules: str) -> VoxelMetrics:
    n_ref = pairs.ref_sizes.size - 1
    n_pred = pairs.pred_sizes.size - 1
    ref_vox = int(pairs.ref_sizes[1:].sum())
    pred_vox = int(pairs.pred_sizes[1:].sum())
    inter_vox = int(pairs.count.sum())
    ref_hit = np.zeros(n_ref + 1, dtype=bool)
    ref_hit[pairs.ref] = True
    pred_hit = np.zeros(n_pred + 1, dtype=bool)
    pred_hit[pairs.pred] = True
    fp_vox = int(pairs.pred_sizes[1:][~pred_hit[1:]].sum())
    fn_vox = int(pairs.ref_sizes[1:][~ref_hit[1:]].sum())
    denom = ref_vox + pred_vox
    if rules == "autopet3" and ref_vox == 0:
        dice = fn_ml = math.nan
    else:
        dice = 2.0 * inter_vox / denom if denom else math.nan
        fn_ml = fn_vox * voxel_ml
    return VoxelMetrics(
        dice=dice,
        fp_volume_ml=fp_vox * voxel_ml,
        fn_volume_ml=fn_ml,
        reference_volume_ml=ref_vox * voxel_ml,
        predicted_volume_ml=pred_vox * voxel_ml,
        intersection_ml=inter_vox * voxel_ml,
        n_reference_components=n_ref,
        n_predicted_components=n_pred,
        rules=rules,
    )


def _detection_from_pairs(
    pairs: _Pairs, *, ref_ids: NDArray[np.int64], pred_ids: NDArray[np.int64], matching: str,
    min_iou: float, categories: Mapping[int, str] | None,
) -> DetectionResult:
    n_ref = pairs.ref_sizes.size - 1
    n_pred = pairs.pred_sizes.size - 1
    ref_hit = np.zeros(n_ref + 1, dtype=bool)
    pred_hit = np.zeros(n_pred + 1, dtype=bool)
    union = pairs.ref_sizes[pairs.ref] + pairs.pred_sizes[pairs.pred] - pairs.count
    iou = pairs.count / np.maximum(union, 1)
    if matching == "autopet":
        ref_hit[pairs.ref] = True
        pred_hit[pairs.pred] = True
        chosen = np.arange(pairs.count.size)
    else:
        valid = np.flatnonzero(iou >= min_iou)
        chosen = np.zeros(0, dtype=np.int64)
        if valid.size:
            rows, r_inv = np.unique(pairs.ref[valid], return_inverse=True)
            cols, c_inv = np.unique(pairs.pred[valid], return_inverse=True)
            # maximise the number of matches first, then the summed IoU (IoU <= 1 < big)
            big = float(min(rows.size, cols.size) + 1)
            weight = np.zeros((rows.size, cols.size))
            weight[r_inv.reshape(-1), c_inv.reshape(-1)] = big + iou[valid]
            r_sel, c_sel = linear_sum_assignment(weight, maximize=True)
            keep = weight[r_sel, c_sel] > 0
            lookup = np.full((rows.size, cols.size), -1, dtype=np.int64)
            lookup[r_inv.reshape(-1), c_inv.reshape(-1)] = valid
            chosen = lookup[r_sel[keep], c_sel[keep]]
            ref_hit[pairs.ref[chosen]] = True
            pred_hit[pairs.pred[chosen]] = True
    detected = {int(ref_ids[n]): bool(ref_hit[n]) for n in range(1, n_ref + 1)}
    category: dict[int, str] = {}
    if categories is not None:
        category = {lid: str(categories[lid]) for lid in detected if lid in categories}
        missing = sorted(set(detected) - set(category))
        if missing:
            logger.debug("reference lesions without a category: %s", missing[:20])
    matches = tuple(
        (int(ref_ids[pairs.ref[c]]), int(pred_ids[pairs.pred[c]]), float(iou[c]))
        for c in sorted(chosen.tolist(), key=lambda c: (pairs.ref[c], pairs.pred[c]))
    )
    return DetectionResult(
        matching=matching,
        min_iou=min_iou if matching == "hungarian" else 0.0,
        n_reference=n_ref,
        n_predicted=n_pred,
        tp_reference=int(ref_hit[1:].sum()),
        tp_predicted=int(pred_hit[1:].sum()),
        reference_detected=detected,
        reference_category=category,
        matches=matches,
    )


def _validate_options(rules: str | None, matching: str | None, min_iou: float) -> None:
    if rules is not None and rules not in _RULES:
        raise ValueError(f"rules must be one of {sorted(_RULES)}, got {rules!r}.")
    if matching is not None and matching not in _MATCHINGS:
        raise ValueError(f"matching must be one of {sorted(_MATCHINGS)}, got {matching!r}.")
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}.")


# -- public API ------------------------------------------------------------------------------
def autopet_metrics(
    prediction: Volume, reference: Volume, *, rules: Rules = "autopet3",
    label: int | None = None, atol: float = 1e-3,
) -> VoxelMetrics:
    """Dice, false-positive and false-negative volume exactly as the autoPET evaluation.

    Parameters
    ----------
    prediction, reference : Volume
        Binary lesion masks on the same grid, shape (K, J, I).
    rules : {"autopet3", "autopet2"}
        Empty-case convention (module notes).
    label : int, optional
        Mask value taken as lesion in both masks (multi-class masks).
    atol : float
        Tolerance (mm) of the grid comparison.

    Returns
    -------
    VoxelMetrics

    Raises
    ------
    GeometryError
        If the masks are not on the same grid.
    LesionError
        If a mask is not binary and no ``label`` is chosen.

    Notes
    -----
    ``FPvol = Σ_{c ∈ cc18(P), |c ∩ G| = 0} |c| · v``,
    ``FNvol = Σ_{g ∈ cc18(G), |g ∩ P| = 0} |g| · v``,
    ``Dice = 2|P ∩ G| / (|P| + |G|)`` with ``v`` the voxel volume in mL.

    Examples
    --------
    >>> import numpy as np
    >>> from imaging.volume import Volume
    >>> g = np.zeros((1, 1, 6), np.uint8); g[0, 0, :2] = 1
    >>> p = np.zeros((1, 1, 6), np.uint8); p[0, 0, 1:2] = 1; p[0, 0, 4] = 1
    >>> grid = dict(spacing=(10.0, 10.0, 10.0), origin=(0, 0, 0), unit="mask")
    >>> m = autopet_metrics(Volume(p, **grid), Volume(g, **grid))
    >>> round(m.dice, 4), m.fp_volume_ml, m.fn_volume_ml
    (0.5, 1.0, 0.0)
    """
    _validate_options(rules, None, 0.1)
    _check_pair(prediction, reference, atol=atol)
    ref_labels, ref_ids = label_instances(reference, label=label, what="reference")
    pred_labels, pred_ids = label_instances(prediction, label=label, what="prediction")
    pairs = _pair_table(ref_labels, ref_ids.size - 1, pred_labels, pred_ids.size - 1)
    return _voxel_from_pairs(pairs, voxel_ml=reference.voxel_volume_ml, rules=rules)


def detect_lesions(
    prediction: Volume, reference: Volume, *, matching: Matching = "hungarian",
    min_iou: float = 0.10, reference_instances: Instances = "components",
    prediction_instances: Instances = "components", categories: Mapping[int, str] | None = None,
    label: int | None = None, atol: float = 1e-3,
) -> DetectionResult:
    """Lesion-wise detection of a predicted mask against a reference.

    Parameters
    ----------
    prediction, reference : Volume
        Lesion masks (or instance label maps) on the same grid, shape (K, J, I).
    matching : {"hungarian", "autopet"}
        One-to-one IoU matching (PI-CAI) or >= 1 voxel overlap (autoPET).
    min_iou : float
        Minimum IoU of a one-to-one match, in (0, 1].
    reference_instances, prediction_instances : {"components", "labels"}
        How lesions are numbered (see :func:`label_instances`).
    categories : Mapping[int, str], optional
        Reference lesion id (label value) -> category, for per-category sensitivity. Needs
        ``reference_instances="labels"``.
    label : int, optional
        Mask value taken as lesion for masks numbered by components.
    atol : float
        Tolerance (mm) of the grid comparison.

    Returns
    -------
    DetectionResult

    Raises
    ------
    GeometryError
        If the masks are not on the same grid.
    LesionError
        If a mask is not usable (see :func:`lesion_mask`).
    ValueError
        If an option is unknown, or ``categories`` is given with components numbering.
    """
    _validate_options(None, matching, min_iou)
    score = score_case(
        prediction, reference, min_iou=min_iou, reference_instances=reference_instances,
        prediction_instances=prediction_instances, categories=categories, label=label,
        atol=atol,
    )
    return score.autopet if matching == "autopet" else score.hungarian


def score_case(
    prediction: Volume, reference: Volume, *, rules: Rules = "autopet3", min_iou: float = 0.10,
    reference_instances: Instances = "components", prediction_instances: Instances = "components",
    categories: Mapping[int, str] | None = None, label: int | None = None, atol: float = 1e-3,
) -> CaseScore:
    """Voxel metrics and both detection flavours of one case from one labelled pass.

    Parameters
    ----------
    prediction, reference : Volume
        Lesion masks (or instance label maps) on the same grid, shape (K, J, I).
    rules : {"autopet3", "autopet2"}
        Empty-case convention of the voxel metrics.
    min_iou : float
        Minimum IoU of a one-to-one match.
    reference_instances, prediction_instances : {"components", "labels"}
        Lesion numbering for detection; voxel metrics always use the 18-connected components of
        the binary masks, as autoPET does.
    categories : Mapping[int, str], optional
        Reference lesion id -> category (needs ``reference_instances="labels"``).
    label : int, optional
        Mask value taken as lesion for masks numbered by components.
    atol : float
        Tolerance (mm) of the grid comparison.

    Returns
    -------
    CaseScore

    Raises
    ------
    GeometryError
        If the masks are not on the same grid.
    LesionError
        If a mask is not usable.
    ValueError
        If an option is unknown or ``categories`` comes with components numbering.
    """
    _validate_options(rules, None, min_iou)
    if categories is not None and reference_instances != "labels":
        raise ValueError(
            "categories are keyed by reference label value; use reference_instances='labels'."
        )
    _check_pair(prediction, reference, atol=atol)
    voxel_ml = reference.voxel_volume_ml
    ref_cc, ref_cc_ids, ref_inst = _numbered(
        reference, instances=reference_instances, label=label, what="reference")
    pred_cc, pred_cc_ids, pred_inst = _numbered(
        prediction, instances=prediction_instances, label=label, what="prediction")
    cc_pairs = _pair_table(ref_cc, ref_cc_ids.size - 1, pred_cc, pred_cc_ids.size - 1)
    voxel = _voxel_from_pairs(cc_pairs, voxel_ml=voxel_ml, rules=rules)
    if ref_inst is None and pred_inst is None:
        pairs, ref_ids, pred_ids = cc_pairs, ref_cc_ids, pred_cc_ids
    else:
        ref_l, ref_ids = ref_inst or (ref_cc, ref_cc_ids)
        pred_l, pred_ids = pred_inst or (pred_cc, pred_cc_ids)
        pairs = _pair_table(ref_l, ref_ids.size - 1, pred_l, pred_ids.size - 1)
    common = dict(ref_ids=ref_ids, pred_ids=pred_ids, min_iou=min_iou, categories=categories)
    return CaseScore(
        voxel=voxel,
        autopet=_detection_from_pairs(pairs, matching="autopet", **common),  # type: ignore[arg-type]
        hungarian=_detection_from_pairs(pairs, matching="hungarian", **common),  # type: ignore[arg-type]
    )


def _numbered(
    volume: Volume, *, instances: str, label: int | None, what: str
) -> tuple[NDArray[np.int64], NDArray[np.int64],
           tuple[NDArray[np.int64], NDArray[np.int64]] | None]:
    """18-connected components of the lesion voxels, and the instance numbering if asked.

    Voxel metrics always use the components of the binary mask (an instance label map counts
    every non-zero voxel as lesion).
    """
    if instances != "labels":
        labels, ids = label_instances(volume, instances="components", label=label, what=what)
        return labels, ids, None
    inst = label_instances(volume, instances="labels", what=what)
    mask = volume.with_array(inst[0] != 0, unit="mask")
    labels, ids = label_instances(mask, instances="components", what=what)
    return labels, ids, inst


def pool_detection(results: Iterable[DetectionResult]) -> DetectionSummary:
    """Pool per-case detection results (lesions summed over cases, then divided).

    Parameters
    ----------
    results : iterable of DetectionResult
        One per case, all with the same matching.

    Returns
    -------
    DetectionSummary

    Raises
    ------
    ValueError
        If the results mix matching flavours.
    """
    items = list(results)
    kinds = {r.matching for r in items}
    if len(kinds) > 1:
        raise ValueError(f"cannot pool detection results of different matchings: {sorted(kinds)}")
    per_category: dict[str, tuple[int, int]] = {}
    for r in items:
        for category, (n, hit) in r.per_category().items():
            n0, h0 = per_category.get(category, (0, 0))
            per_category[category] = (n0 + n, h0 + hit)
    return DetectionSummary(
        matching=kinds.pop() if kinds else "hungarian",
        n_cases=len(items),
        n_reference=sum(r.n_reference for r in items),
        n_predicted=sum(r.n_predicted for r in items),
        tp_reference=sum(r.tp_reference for r in items),
        tp_predicted=sum(r.tp_predicted for r in items),
        per_category=per_category,
    )
