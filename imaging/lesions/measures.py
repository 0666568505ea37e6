"""Per-lesion quantification from a lesion label map, in one sparse pass over the lesion voxels.

Nothing here loops over voxels or over lesions: every statistic is a ``np.bincount`` /
``np.add.reduceat`` over the lesion voxels sorted by label, and SUVpeak is a sphere correlation
evaluated only at lesion voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from imaging.lesions._geometry import gather_mean, sphere_weights
from imaging.lesions.reference import ReferenceValues
from imaging.volume import Volume

__all__ = ["LesionMeasures", "measure_lesions", "mipsma"]


@dataclass(frozen=True, slots=True, eq=False)
class LesionMeasures:
    """Column arrays, one entry per lesion id ``1..n`` (index ``id - 1``)."""

    voxel_count: NDArray[np.int64]
    volume_ml: NDArray[np.float64]
    suv_max: NDArray[np.float64]
    suv_mean: NDArray[np.float64]
    suv_peak: NDArray[np.float64]
    tl_psma: NDArray[np.float64]
    centroid_mm: NDArray[np.float64]  # (n, 3) LPS
    suv_max_index: NDArray[np.intp]  # (n, 3) (k, j, i)
    suv_max_position_mm: NDArray[np.float64]  # (n, 3) LPS
    overlaps: NDArray[np.float64]  # (n, n_masks) fraction of lesion voxels


def measure_lesions(
    suv: Volume, fg: NDArray[np.intp], lab: NDArray[np.intp], n: int, *,
    masks: Sequence[NDArray[np.bool_]] = (), peak_volume_ml: float = 1.0,
) -> LesionMeasures:
    """Quantify lesions given their voxels.

    Parameters
    ----------
    suv : Volume
        SUV image.
    fg : ndarray of int, shape (m,)
        Flat (C-order) indices of all lesion voxels, ascending.
    lab : ndarray of int, shape (m,)
        Lesion id ``1..n`` of each voxel of ``fg``.
    n : int
        Number of lesions; every id must occur.
    masks : sequence of bool ndarray, shape (K, J, I)
        Anatomy masks whose overlap fractions are wanted (columns of ``overlaps``).
    peak_volume_ml : float
        SUVpeak sphere volume (1 mL, PERCIST).

    Returns
    -------
    LesionMeasures

    Notes
    -----
    SUVpeak is the largest mean of a ``peak_volume_ml`` sphere (partial-volume weighted voxels)
    centred on any voxel of the lesion; the sphere may include voxels outside the lesion, as in
    PERCIST. TL-PSMA = SUVmean x volume.
    """
    arr = suv.array
    vals = arr.reshape(-1)[fg].astype(np.float64)
    coords = np.stack(np.unravel_index(fg, arr.shape), axis=1).astype(np.intp)
    counts = np.bincount(lab, minlength=n + 1)[1:].astype(np.int64)
    voxel_ml = suv.voxel_volume_ml
    volume = np.asarray(counts * voxel_ml, dtype=np.float64)
    mean = np.bincount(lab, weights=vals, minlength=n + 1)[1:] / counts
    cidx = np.stack([np.bincount(lab, weights=coords[:, a], minlength=n + 1)[1:] / counts
                     for a in range(3)], axis=1)
    # Sort by (label, -value, flat index): the first voxel of each label is its SUVmax voxel,
    # the lowest flat index among equal maxima (deterministic).
    order = np.lexsort((fg, -vals, lab))
    lab_sorted = lab[order]
    starts = np.r_[0, np.flatnonzero(np.diff(lab_sorted)) + 1]
    first = order[starts]
    suv_max = vals[first]
    max_idx = coords[first]
    # SUVpeak: sphere means at lesion voxels, maximum per lesion.
    offs, w = sphere_weights(peak_volume_ml, suv.spacing)
    local = gather_mean(arr, coords, offs, w)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, lab - 1, local)
    # Overlaps: all masks gathered at lesion voxels, summed per label in one reduceat.
    if masks:
        hits = np.stack([np.asarray(m).reshape(-1)[fg] for m in masks], axis=1)
        sums = np.add.reduceat(hits[order].astype(np.int64), starts, axis=0)
        overlaps = sums / counts[:, None]
    else:
        overlaps = np.zeros((n, 0))
    return LesionMeasures(
        voxel_count=counts,
        volume_ml=volume,
        suv_max=suv_max,
        suv_mean=mean,
        suv_peak=peak,
        tl_psma=mean * volume,
        centroid_mm=suv.index_to_world(cidx),
        suv_max_index=max_idx,
        suv_max_position_mm=suv.index_to_world(max_idx),
        overlaps=overlaps,
    )


def mipsma(
    suv_max: NDArray[np.float64] | Sequence[float], reference: ReferenceValues, *,
    tracer: str = "psma11",
) -> tuple[list[int | None], list[float | None]]:
    """miPSMA expression score (0-3) and continuous index of lesions.

    Parameters
    ----------
    suv_max : array of float
        Lesion SUVmax.
    reference : ReferenceValues
        Blood pool, liver (spleen for ``tracer="psma1007"``) and parotid SUVmean.
    tracer : str
        ``"psma1007"`` uses the spleen as the score-2 reference (PROMISE V2).

    Returns
    -------
    scores, indices : list
        Score 0 (< blood pool), 1 (>= blood pool, < liver), 2 (>= liver, < parotid),
        3 (>= parotid); ``None`` when a needed reference was not measured. The index is
        piecewise linear through (0, 0), (blood pool, 1), (liver, 2), (parotid, 3) and continues
        above the parotid with the slope of the last segment, so ``score == min(3, floor(index))``;
        ``None`` when a reference is missing or the references are not increasing.
    """
    values = np.asarray(suv_max, dtype=np.float64)
    organ = reference.spleen if tracer == "psma1007" else reference.liver
    refs = [reference.blood_pool.suv_mean, organ.suv_mean, reference.parotid.suv_mean]
    if any(r is None for r in refs):
        return [None] * values.size, [None] * values.size
    b, liv, p = (float(r) for r in refs)  # type: ignore[arg-type]
    scores: list[int | None] = [
        int(np.searchsorted(np.array([b, liv, p]), v, side="right")) if b <= liv <= p
        else int((v >= b) + (v >= liv) + (v >= p))
        for v in values
    ]
    if not 0 < b < liv < p:
        return scores, [None] * values.size
    xs = np.array([0.0, b, liv, p])
    ys = np.array([0.0, 1.0, 2.0, 3.0])
    idx = np.interp(values, xs, ys)
    above = values > p
    idx[above] = 3.0 + (values[above] - p) / (p - liv)
    return scores, [float(x) for x in idx]


def overlap_dict(labels: Sequence[str], row: NDArray[np.float64]) -> Mapping[str, float]:
    """``{label: fraction}`` for one lesion, every label of the anatomy input included."""
    return {name: float(f) for name, f in zip(labels, row, strict=True)}
