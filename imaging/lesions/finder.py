"""SUV-threshold lesion finder with physiological-uptake exclusion.

Pipeline of :func:`find_lesions` (all on the PET grid):

1. validate the SUV image and the anatomy masks;
2. measure the reference regions (blood pool, liver, parotid, spleen);
3. candidate voxels: SUV >= the method's threshold (bone and soft tissue may differ), inside the
   body; organ-adaptive thresholds near liver, spleen, lungs and adrenals; hard exclusion near
   kidneys, bladder, ureters, salivary and lacrimal glands and bowel;
4. connected components (cc3d, 18-connectivity by default), minimum volume, organ spill-over
   removal;
5. optional watershed split at SUV local maxima and optional per-lesion isocontour refinement;
6. deterministic relabelling (descending SUVmax) and per-lesion measures, miPSMA score, anatomy
   overlaps and equivocal flags.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.optimize import minimize_scalar
from skimage.morphology import h_maxima as _sk_h_maxima
from skimage.segmentation import watershed as _sk_watershed

from imaging.errors import LesionError
from imaging.lesions._geometry import Zones, ball_offsets, bbox_slices
from imaging.lesions.config import LesionConfig
from imaging.lesions.measures import LesionMeasures, measure_lesions, mipsma, overlap_dict
from imaging.lesions.reference import ReferenceValues, measure_reference_regions
from imaging.lesions.volume import (
    ThresholdCurve,
    fit_blurred_sphere,
    iterative_threshold,
    sphere_threshold_curve,
)
from imaging.vocabulary import AnatomyLabel
from imaging.volume import Volume, same_geometry

if TYPE_CHECKING:  # pandas is imported where the table is built (it costs ~0.5 s at start-up)
    import pandas as pd

__all__ = ["Lesion", "LesionResult", "find_lesions"]

logger = logging.getLogger(__name__)

_SUV_UNITS = ("g/ml", "cm2/ml")
_MAX_LABEL = int(np.iinfo(np.uint16).max)
_DEFAULT_CONFIG = LesionConfig()
# scikit-image and cc3d ship no complete type hints: typed handles for strict mypy.
h_maxima: Callable[..., NDArray[Any]] = _sk_h_maxima
watershed: Callable[..., NDArray[Any]] = _sk_watershed
_cc3d: Any = cc3d
# Masks that contain other organs (not neighbours in their own right).
_BACKGROUND_LABELS = frozenset({AnatomyLabel.BODY, AnatomyLabel.BONE, AnatomyLabel.PROSTATE_FOSSA,
                                AnatomyLabel.METAL})


@dataclass(frozen=True, slots=True)
class Lesion:
    """One lesion of a :class:`LesionResult` (its voxels carry ``id`` in ``LesionResult.labels``).

    Attributes
    ----------
    id : int
        1-based label, in order of decreasing SUVmax.
    voxel_count : int
    volume_ml : float
    suv_max, suv_mean, suv_peak : float
        SUVpeak: 1 cm^3 sphere placed (centred on a lesion voxel) to maximise the mean.
    tl_psma : float
        Total lesion PSMA = SUVmean x volume_ml.
    centroid_mm, suv_max_position_mm : tuple of float
        LPS millimetres.
    mipsma_score : int or None
        miPSMA expression score 0-3; ``None`` when a needed reference region was not measured.
    mipsma_index : float or None
        Continuous miPSMA index (see :func:`imaging.lesions.measures.mipsma`).
    overlaps : mapping of str to float
        Fraction of the lesion's voxels inside each anatomy mask given (every label of the input).
    equivocal : bool
        Reported but not to be counted as a lesion by staging (touches bladder/ureter,
        ganglion-like, organ spill-over).
    equivocal_reason : str or None
    """

    id: int
    voxel_count: int
    volume_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tl_psma: float
    centroid_mm: tuple[float, float, float]
    suv_max_position_mm: tuple[float, float, float]
    mipsma_score: int | None
    mipsma_index: float | None
    overlaps: Mapping[str, float]
    equivocal: bool = False
    equivocal_reason: str | None = None


_COLUMNS = (
    "id", "voxel_count", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tl_psma",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "suv_max_x_mm", "suv_max_y_mm", "suv_max_z_mm",
    "mipsma_score", "mipsma_index", "equivocal", "equivocal_reason",
)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class LesionResult:
    """Lesions of one scan: the label map, the lesion list and the reference regions.

    Attributes
    ----------
    labels : Volume
        uint16 lesion ids on the PET grid (unit ``"label"``), 0 = background.
    lesions : tuple of Lesion
        In id order.
    reference : ReferenceValues
    thresholds : mapping of str to float
        Thresholds actually applied (``soft_tissue``, ``bone`` and ``organ:<label>``).
    config : LesionConfig
    overlap_labels : tuple of str
        Anatomy labels of the input, the keys of every ``Lesion.overlaps``.
    notes : tuple of str
        What the finder could not do as configured (e.g. a mask was absent).
    """

    labels: Volume
    lesions: tuple[Lesion, ...]
    reference: ReferenceValues
    thresholds: Mapping[str, float]
    config: LesionConfig
    overlap_labels: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        n_eq = sum(les.equivocal for les in self.lesions)
        return (f"LesionResult({self.config.name}: {self.lesion_count} lesion(s), {n_eq} "
                f"equivocal, PSMA-TV {self.psma_tv_ml:.2f} mL, grid {self.labels.shape})")

    @property
    def lesion_count(self) -> int:
        """Number of lesions, equivocal ones included."""
        return len(self.lesions)

    @property
    def psma_tv_ml(self) -> float:
        """PSMA tumour volume: sum of non-equivocal lesion volumes (mL)."""
        return float(sum(les.volume_ml for les in self.lesions if not les.equivocal))

    @property
    def tl_psma(self) -> float:
        """Total lesion PSMA: sum of SUVmean x volume over non-equivocal lesions."""
        return float(sum(les.tl_psma for les in self.lesions if not les.equivocal))

    def to_dataframe(self) -> pd.DataFrame:
        """The lesion table: one row per lesion, ``overlap_<label>`` columns, typed columns.

        An empty result gives the same columns with zero rows. Missing miPSMA values are
        ``pd.NA`` (nullable dtypes), never NaN.
        """
        rows: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        for name in self.overlap_labels:
            rows[f"overlap_{name}"] = []
        for les in self.lesions:
            rows["id"].append(les.id)
            rows["voxel_count"].append(les.voxel_count)
            rows["volume_ml"].append(les.volume_ml)
            rows["suv_max"].append(les.suv_max)
            rows["suv_mean"].append(les.suv_mean)
            rows["suv_peak"].append(les.suv_peak)
            rows["tl_psma"].append(les.tl_psma)
            for a, axis in enumerate("xyz"):
                rows[f"centroid_{axis}_mm"].append(les.centroid_mm[a])
                rows[f"suv_max_{axis}_mm"].append(les.suv_max_position_mm[a])
            rows["mipsma_score"].append(les.mipsma_score)
            rows["mipsma_index"].append(les.mipsma_index)
            rows["equivocal"].append(les.equivocal)
            rows["equivocal_reason"].append(les.equivocal_reason)
            for name in self.overlap_labels:
                rows[f"overlap_{name}"].append(les.overlaps.get(name, 0.0))
        dtypes = {"id": "int64", "voxel_count": "int64", "mipsma_score": "Int64",
                  "mipsma_index": "Float64", "equivocal": "bool", "equivocal_reason": "string"}
        import pandas as pd

        frame = pd.DataFrame(rows)
        for col in frame.columns:
            frame[col] = frame[col].astype(dtypes.get(col, "float64"))
        return frame


# -- validation ------------------------------------------------------------------------------

def _validate_suv(suv: Volume, config: LesionConfig) -> None:
    if not isinstance(suv, Volume):
        raise LesionError(
            f"find_lesions needs an imaging.volume.Volume in SUV, got {type(suv).__name__}."
        )
    if suv.unit not in _SUV_UNITS:
        raise LesionError(
            f"The PET volume is in {suv.unit!r}, not SUV (g/ml or cm2/ml); convert it with "
            "imaging.suv (or load it with imaging.loading) before finding lesions."
        )
    arr = suv.array
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise LesionError(f"The SUV array has dtype {arr.dtype}; a real numeric type is needed.")
    vmax = float(arr.max())
    if np.issubdtype(arr.dtype, np.floating) and not (
            np.isfinite(vmax) and np.isfinite(float(arr.min()))):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_bad = int(np.count_nonzero(bad))
            first = np.unravel_index(int(np.argmax(bad)), arr.shape)
            pos = suv.index_to_world(np.asarray(first, dtype=np.float64))
            raise LesionError(
                f"The SUV image holds {n_bad} NaN/infinite voxel(s), the first at index (k, j, i)"
                f" = {tuple(int(v) for v in first)} (LPS {np.round(pos, 1).tolist()} mm). "
                "Fix the reconstruction or SUV conversion; the finder does not guess values."
            )
    if vmax > config.max_plausible_suv:
        raise LesionError(
            f"The 'SUV' image has a maximum of {vmax:.6g}, above the plausible SUV limit of "
            f"{config.max_plausible_suv:g}: it looks like activity concentration (Bq/ml), not "
            "SUV. Convert it with imaging.suv, or raise LesionConfig.max_plausible_suv if the "
            "values really are SUV."
        )


def _validate_anatomy(
    suv: Volume, anatomy: Mapping[Any, Any], anatomy_grid: Volume | None,
) -> dict[AnatomyLabel, NDArray[np.bool_]]:
    if anatomy_grid is not None and not same_geometry(anatomy_grid, suv):
        raise LesionError(
            f"The anatomy masks are on a different grid (shape {anatomy_grid.shape}, spacing "
            f"{anatomy_grid.spacing}, origin {anatomy_grid.origin}) than the PET (shape "
            f"{suv.shape}, spacing {suv.spacing}, origin {suv.origin}); resample them to the "
            "PET grid with imaging.resample.resample_to(..., interpolation='nearest')."
        )
    out: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    for key, value in anatomy.items():
        try:
            label = AnatomyLabel(key)
        except ValueError:
            raise LesionError(
                f"Anatomy key {key!r} is not an AnatomyLabel; valid labels are "
                f"{[a.value for a in AnatomyLabel]}."
            ) from None
        if isinstance(value, Volume):
            if not same_geometry(value, suv):
                raise LesionError(
                    f"The {label.value} mask is on a different grid (shape {value.shape}, "
                    f"spacing {value.spacing}, origin {value.origin}) than the PET (shape "
                    f"{suv.shape}, spacing {suv.spacing}, origin {suv.origin}); resample it to "
                    "the PET grid (nearest neighbour) first."
                )
            value = value.array
        mask = np.asarray(value)
        if mask.shape != suv.shape:
            raise LesionError(
                f"The {label.value} mask has shape {mask.shape}, the PET {suv.shape}: masks must "
                "be on the PET grid; resample them with imaging.resample.resample_to(..., "
                "interpolation='nearest')."
            )
        if mask.dtype != np.bool_:
            if not (np.issubdtype(mask.dtype, np.integer) and mask.size and mask.max() <= 1
                    and mask.min() >= 0):
                raise LesionError(
                    f"The {label.value} mask has dtype {mask.dtype} with values outside "
                    "{0, 1}; pass a boolean mask."
                )
            mask = mask.astype(bool)
        out[label] = mask
    return out


# -- thresholds ------------------------------------------------------------------------------

def _thresholds(
    reference: ReferenceValues, config: LesionConfig, has_bone: bool,
) -> tuple[float, float, str]:
    """Soft-tissue and bone thresholds of the configured method, with a description."""
    liver, blood = reference.liver, reference.blood_pool

    def percist() -> tuple[float, str]:
        if liver.suv_mean is not None and liver.suv_sd is not None:
            t = config.percist_liver_factor * liver.suv_mean + \
                config.percist_liver_sd_factor * liver.suv_sd
            return t, (f"PERCIST {config.percist_liver_factor:g} x liver "
                       f"{liver.suv_mean:.2f} + {config.percist_liver_sd_factor:g} SD")
        if blood.suv_mean is not None and blood.suv_sd is not None:
            t = config.percist_blood_pool_factor * blood.suv_mean + \
                config.percist_blood_pool_sd_factor * blood.suv_sd
            return t, (f"PERCIST blood-pool fallback (liver: {liver.flag}) "
                       f"{config.percist_blood_pool_factor:g} x {blood.suv_mean:.2f} + "
                       f"{config.percist_blood_pool_sd_factor:g} SD")
        raise LesionError(
            f"The PERCIST threshold needs the liver or blood-pool reference, and neither was "
            f"measured (liver: {liver.flag}; blood pool: {blood.flag}). Provide liver/aorta "
            "masks or use method='fixed'."
        )

    if config.method == "fixed":
        t = config.threshold_suv
        return t, t, f"fixed SUV {t:g}"
    if config.method == "percist":
        t, text = percist()
        return t, t, text
    # qpsma-split
    if not has_bone:
        raise LesionError(
            "method 'qpsma-split' needs a bone mask in the anatomy input (bone and soft tissue "
            "get different thresholds); provide AnatomyLabel.BONE or use method='fixed'."
        )
    if config.soft_tissue_rule == "percist":
        t_soft, text = percist()
    else:
        if liver.suv_mean is None or liver.suv_sd is None or liver.suv_mean <= 0:
            raise LesionError(
                f"The qPSMA soft-tissue threshold needs the liver reference, which was not "
                f"measured ({liver.flag}); provide a liver mask or use method='fixed'."
            )
        t_soft = config.qpsma_liver_factor / liver.suv_mean * (liver.suv_mean + liver.suv_sd)
        text = (f"qPSMA {config.qpsma_liver_factor:g} / liver {liver.suv_mean:.2f} x "
                f"(liver + SD {liver.suv_sd:.2f})")
    return t_soft, config.bone_threshold_suv, f"bone {config.bone_threshold_suv:g}, soft {text}"


def _robust_centre_spread(values: NDArray[np.floating]) -> tuple[float, float]:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med, 1.4826 * mad


# -- sparse helpers ---------------------------------------------------------------------------

def _dilated_crop(
    mask: NDArray[np.bool_], box: tuple[slice, slice, slice], offsets: NDArray[np.intp],
) -> NDArray[np.bool_]:
    """``mask`` dilated by ``offsets``, evaluated on the crop ``box``."""
    reach = np.abs(offsets).max(axis=0) if len(offsets) else np.zeros(3, int)
    lo = [max(s.start - int(r), 0) for s, r in zip(box, reach, strict=True)]
    hi = [min(s.stop + int(r), n) for s, r, n in zip(box, reach, mask.shape, strict=True)]
    big = np.asarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    if not big.any():
        return np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    struct = np.zeros(tuple(2 * reach + 1), dtype=bool)
    struct[tuple((offsets + reach).T)] = True
    dil = np.asarray(ndimage.binary_dilation(big, structure=struct), dtype=bool)
    return dil[box[0].start - lo[0]:box[0].stop - lo[0],
               box[1].start - lo[1]:box[1].stop - lo[1],
               box[2].start - lo[2]:box[2].stop - lo[2]]


def _components(
    fg: NDArray[np.intp], shape: tuple[int, int, int], connectivity: int,
) -> tuple[NDArray[np.intp], int]:
    """Connected-component label of each voxel of ``fg`` (flat indices)."""
    if fg.size == 0:
        return np.zeros(0, dtype=np.intp), 0
    coords = np.unravel_index(fg, shape)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    binary = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    local = tuple(c - s.start for c, s in zip(coords, box, strict=True))
    binary[local] = True
    cc, n = _cc3d.connected_components(binary, connectivity=connectivity, return_N=True)
    return cc[local].astype(np.intp), int(n)


def _split_components(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    config: LesionConfig,
) -> tuple[NDArray[np.intp], int]:
    """Watershed split of each component at h-maxima of SUV; returns new labels of ``fg``."""
    coords = np.stack(np.unravel_index(fg, arr.shape), axis=1)
    order = np.argsort(lab, kind="stable")
    lab_sorted = lab[order]
    bounds = np.searchsorted(lab_sorted, np.arange(1, n + 2))
    new = np.zeros_like(lab)
    next_id = 1
    conn = {6: 1, 18: 2, 26: 3}[config.connectivity]
    for c in range(n):
        members = order[bounds[c]:bounds[c + 1]]
        pts = coords[members]
        if len(members) < 4:
            new[members] = next_id
            next_id += 1
            continue
        box = bbox_slices(pts, arr.shape, (1, 1, 1))
        local = pts - np.array([s.start for s in box])
        inside = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        inside[tuple(local.T)] = True
        img = np.where(inside, np.asarray(arr[box], dtype=np.float64), 0.0)
        peaks = h_maxima(img, config.split_prominence_suv) & inside
        markers, n_mark = _cc3d.connected_components(peaks, connectivity=26, return_N=True)
        if n_mark < 2:
            new[members] = next_id
            next_id += 1
            continue
        ws = watershed(-img, markers=markers.astype(np.int32), mask=inside, connectivity=conn)
        parts = ws[tuple(local.T)].astype(np.intp)
        new[members] = next_id + parts - 1
        next_id += int(n_mark)
    # Watershed parts of one component may be empty in principle: compact the ids.
    used, compact = np.unique(new, return_inverse=True)
    return compact.astype(np.intp) + 1, int(used.size)


def _isocontour(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    config: LesionConfig, zones: Zones, excluded: Mapping[AnatomyLabel, float],
    organ_floor: list[tuple[AnatomyLabel, float]], spacing: tuple[float, float, float],
    spill: _Spill, curve: ThresholdCurve | None = None,
    organ_centre: Mapping[AnatomyLabel, float] | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int, int]:
    """Replace each component by the voxels >= its isocontour level connected to its maximum.

    Level = ``B + fraction x (SUVmax - B)`` with ``B`` the median SUV of the surrounding ring
    (background-adapted, as the EANM guideline's A50%) or ``B = 0`` (plain % of SUVmax), both on
    the image with the modelled organ halo removed. With a calibration ``curve`` the fraction is
    found by iterative thresholding (:func:`imaging.lesions.volume.iterative_threshold`).
    Returns the new voxels, labels, lesion count and the number of lesions whose iteration
    did not converge. With ``organ_centre`` an organ floor holds only where the organ's typical
    uptake reaches the lesion's starting level (otherwise the organ's tissue lies below the
    isocontour anyway, and the floor would only cut the lesion's own edge).

    The region may grow up to ``isocontour_margin_mm`` beyond the component, never into the
    excluded zone, and within organ-adaptive zones never below the organ threshold. Lesions are
    processed by decreasing SUVmax; a voxel already taken stays with the first lesion.
    """
    frac = config.isocontour_fraction
    assert frac is not None
    shape = arr.shape
    coords = np.stack(np.unravel_index(fg, shape), axis=1)
    vals = arr.reshape(-1)[fg]
    order = np.lexsort((fg, -vals, lab))
    lab_sorted = lab[order]
    starts = np.r_[0, np.flatnonzero(np.diff(lab_sorted)) + 1]
    stops = np.r_[starts[1:], len(order)]
    maxima = vals[order[starts]]
    margin_vox = np.ceil(config.isocontour_margin_mm / np.asarray(spacing)).astype(int)
    grow = ball_offsets(config.isocontour_margin_mm, spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    taken = np.zeros(shape, dtype=bool) if n else np.zeros((1, 1, 1), dtype=bool)
    busy = np.zeros(shape, dtype=bool) if n else np.zeros((1, 1, 1), dtype=bool)
    busy.reshape(-1)[fg] = True  # every component: no lesion is part of another's fit
    out_fg: list[NDArray[np.intp]] = []
    out_lab: list[NDArray[np.intp]] = []
    next_id = 1
    unconverged = 0
    for c in np.argsort(-maxima, kind="stable"):
        members = order[starts[c]:stops[c]]
        pts = coords[members]
        peak = coords[order[starts[c]]]
        if taken[tuple(peak)]:
            continue  # swallowed by a hotter lesion's isocontour
        box = bbox_slices(pts, shape, margin_vox)
        lo = np.array([s.start for s in box])
        sub = np.asarray(arr[box], dtype=np.float64)
        res = sub - spill.crop(box)  # organ halo removed
        comp = np.zeros(sub.shape, dtype=bool)
        comp[tuple((pts - lo).T)] = True
        allowed = _dilated_crop(comp, (slice(0, sub.shape[0]), slice(0, sub.shape[1]),
                                       slice(0, sub.shape[2])), grow)
        allowed &= ~taken[box]
        for organ in excluded:
            allowed &= ~zones.crop(organ, excluded[organ], box)
        top = float(res[tuple(peak - lo)])
        background = 0.0
        if config.isocontour_background:
            ring = allowed & ~comp
            if ring.any():
                background = min(float(np.median(res[ring])), top)
        floor = np.zeros(sub.shape)
        for organ, t_org in organ_floor:
            if (organ_centre is not None
                    and organ_centre[organ] < background + frac * (top - background)):
                continue
            zone = zones.crop(organ, config.adaptive_margin_mm, box)
            floor[zone] = np.maximum(floor[zone], t_org)
        # Voxels hotter than the lesion's own maximum belong to another structure.
        allowed &= (sub <= float(maxima[c])) & (sub >= floor)
        if curve is not None:
            pk = peak - lo
            itm = iterative_threshold(res, (int(pk[0]), int(pk[1]), int(pk[2])),
                                      background=background, curve=curve, start_fraction=frac,
                                      allowed=allowed, connectivity=config.connectivity,
                                      max_iterations=config.isocontour_max_iterations)
            keep = itm.mask
            unconverged += not itm.converged
            if config.isocontour_sphere_fit:
                # the fit may use every voxel but other lesions' and hotter structures'
                use = ~(busy[box] & ~comp) & ~taken[box] & (sub <= float(maxima[c]))
                keep = _sphere_fit_mask(res, keep, (int(pk[0]), int(pk[1]), int(pk[2])),
                                        allowed=allowed, use=use, spacing=spacing,
                                        fwhm_mm=curve.fwhm_mm,
                                        min_volume_ml=float(curve.volume_ml[0]),
                                        connectivity=config.connectivity)
            if np.count_nonzero(keep) * voxel_ml < config.min_volume_ml * (1 - 1e-9):
                # refinement reshapes a found lesion, never removes it: the calibrated fraction
                # of a lesion below the curve's range can leave a single voxel
                keep = comp & ~taken[box]
                keep[tuple(pk)] = True
        else:
            level = background + frac * (top - background)
            region = allowed & (res >= level)
            region[tuple(peak - lo)] = True
            cc = _cc3d.connected_components(region, connectivity=config.connectivity)
            keep = cc == cc[tuple(peak - lo)]
        kk = np.argwhere(keep) + lo
        taken[tuple(kk.T)] = True
        out_fg.append(np.ravel_multi_index(tuple(kk.T), shape))
        out_lab.append(np.full(len(kk), next_id, dtype=np.intp))
        next_id += 1
    if not out_fg:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), 0, unconverged
    new_fg = np.concatenate(out_fg)
    new_lab = np.concatenate(out_lab)
    srt = np.argsort(new_fg, kind="stable")
    return new_fg[srt].astype(np.intp), new_lab[srt], next_id - 1, unconverged


# -- the finder -------------------------------------------------------------------------------

def find_lesions(
    suv: Volume, *, anatomy: Mapping[AnatomyLabel, NDArray[np.bool_]],
    config: LesionConfig = _DEFAULT_CONFIG, anatomy_grid: Volume | None = None,
) -> LesionResult:
    """Find PSMA-avid lesions in an SUV image and quantify them.

    Parameters
    ----------
    suv : Volume
        SUV image (unit ``"g/ml"`` or ``"cm2/ml"``), shape (K, J, I).
    anatomy : mapping of AnatomyLabel to bool ndarray, shape (K, J, I)
        Anatomy masks on the PET grid (e.g. ``AnatomyMap.masks``). Used: ``body`` (candidates
        inside it), ``bone`` (bone threshold, ganglion rule), the hard-excluded and
        organ-adaptive organs of ``config``, ``urinary_bladder`` / ``ureters`` (equivocal),
        ``aorta``, ``liver``, ``salivary_glands``, ``spleen`` (reference regions). Absent masks
        are skipped and listed in ``LesionResult.notes``. Values may also be :class:`Volume`
        masks, whose grid is then checked.
    config : LesionConfig
        Method and settings.
    anatomy_grid : Volume, optional
        The grid the masks were made on (``AnatomyMap.grid``); checked against the PET grid.

    Returns
    -------
    LesionResult
        uint16 label map, lesions ordered by decreasing SUVmax (ties: raster order),
        reference values, applied thresholds.

    Raises
    ------
    LesionError
        If the image is not in SUV units, looks like Bq/ml, holds NaN/inf, a mask is on another
        grid or shape, or the method needs a reference/mask that is missing.
    """
    _validate_suv(suv, config)
    masks = _validate_anatomy(suv, anatomy, anatomy_grid)
    arr = suv.array
    shape = suv.shape
    notes: list[str] = []
    if config.tracer == "auto":
        notes.append("tracer not stated: treated as a urinary-excretion tracer (PSMA-11 / "
                     "DCFPyL; no gallbladder exclusion, liver as the miPSMA reference); set "
                     "the tracer for [18F]PSMA-1007")
    reference = measure_reference_regions(suv, anatomy=masks, config=config)
    bone = masks.get(AnatomyLabel.BONE)
    t_soft, t_bone, how = _thresholds(reference, config, bone is not None)
    thresholds: dict[str, float] = {"soft_tissue": float(t_soft), "bone": float(t_bone)}
    logger.debug("lesion thresholds: %s", how)

    # 1. Candidate voxels.
    t_min = min(t_soft, t_bone) if bone is not None else t_soft
    above = arr >= t_min
    body = masks.get(AnatomyLabel.BODY)
    if body is not None:
        above &= body
    else:
        notes.append("no body mask: candidates taken from the whole field of view")
    cand = np.flatnonzero(above)
    del above
    cvals = arr.reshape(-1)[cand].astype(np.float64)
    ccoords = np.stack(np.unravel_index(cand, shape), axis=1).astype(np.intp)
    if bone is not None:
        thr = np.where(bone.reshape(-1)[cand], t_bone, t_soft)
    else:
        thr = np.full(cand.size, t_soft)
    zones = Zones(dict(masks), suv.spacing)
    margin_mm = config.adaptive_margin_mm
    base_thr = thr
    fringe_thr = np.zeros(cand.size)  # the organ threshold that removed a candidate, or 0
    organ_floor: list[tuple[AnatomyLabel, float]] = []
    organ_noise: list[tuple[AnatomyLabel, float, float, float]] = []  # centre, k, spread
    for organ in config.adaptive_organs:
        m = masks.get(organ)
        if m is None:
            notes.append(f"no {organ.value} mask: no organ-adaptive threshold there")
            continue
        organ_vals = zones.values(organ, arr)
        if organ_vals is None or organ_vals.size < 2:
            continue
        centre, spread = _robust_centre_spread(organ_vals)
        k = config.adaptive_sd_factor
        if k is None:
            k = max(3.0, float(np.sqrt(2.0 * np.log(organ_vals.size))))
        # the skeleton keeps the bone threshold as its floor (qPSMA: bone SUV >= 3 whatever
        # the soft-tissue rule); its own noise bound matters where marrow is avid (PSMA-1007)
        t_org = max(t_bone if organ is AnatomyLabel.BONE else t_soft, centre + k * spread)
        thresholds[f"organ:{organ.value}"] = float(t_org)
        organ_floor.append((organ, t_org))
        organ_noise.append((organ, centre, k, spread))
        near = zones.hits(organ, ccoords, margin_mm)
        thr = np.where(near, np.maximum(thr, t_org), thr)
        fringe_thr = np.where(near & (cvals < t_org), np.maximum(fringe_thr, t_org), fringe_thr)
    keep = cvals >= thr
    removed = (cvals >= base_thr) & (cvals < thr)
    fringe = (cand[removed], cvals[removed], fringe_thr[removed])
    del base_thr, fringe_thr, removed
    excl_present = [o for o in config.excluded_organs if o in masks]
    notes.extend(f"no {o.value} mask: its uptake is not excluded"
                 for o in config.excluded_organs if o not in masks)
    margins: dict[AnatomyLabel, float] = {}
    spill = _Spill()
    if config.spill_correction and excl_present:
        _model_spill(arr, zones, excl_present, suv.spacing, config, t_min, spill, thresholds,
                     [o for o in masks if o not in _BACKGROUND_LABELS])
        if spill.parts:
            keep = (cvals - spill.at(ccoords)) >= thr
    for organ in excl_present:
        if f"spill_scale:{organ.value}" in thresholds:
            margins[organ] = config.margin_mm(organ)
        else:
            margins[organ], _ = _spill_margin(
                arr, zones, organ, suv.spacing, base_mm=config.margin_mm(organ),
                threshold=t_min, max_mm=config.spill_margin_max_mm,
                organ_floor=dict(organ_floor), adaptive_margin_mm=margin_mm,
                excluded_organs=excl_present)
        thresholds[f"margin_mm:{organ.value}"] = margins[organ]
        idx = np.flatnonzero(keep)
        keep[idx[zones.hits(organ, ccoords[idx], margins[organ])]] = False
    fg = cand[keep]
    del ccoords, cvals, thr, cand, keep

    # 2. Connected components, minimum volume.
    lab, n = _components(fg, shape, config.connectivity)
    fg, lab, n = _drop_small(fg, lab, n, suv.voxel_volume_ml, config.min_volume_ml)
    if config.organ_fringe_drop and n and fringe[0].size:
        fg, lab, n, dropped = _drop_organ_fringe(arr, fg, lab, n, fringe,
                                                 config.spill_prominence_suv)
        if dropped:
            notes.append(f"{dropped} component(s) dropped as the fringe of an organ's uptake "
                         "(no maximum of their own, below the organ's adaptive threshold)")
    del fringe

    # 3. Organ spill-over next to hard-excluded organs (peak on the excluded organ's rim).
    touched: dict[AnatomyLabel, NDArray[np.intp]] = {}
    if excl_present and n and config.spill_drop:
        fg, lab, n, touched = _remove_spill(arr, fg, lab, n, zones, margins, suv.spacing, config,
                                            spill, _noise_coefficient(reference))
        fg, lab, n = _drop_small(fg, lab, n, suv.voxel_volume_ml, config.min_volume_ml)

    # 3b. Contrast to noise: a component must stand out of its surroundings (Rose criterion).
    if config.min_contrast_noise is not None and n:
        fg, lab, n, how_cnr = _drop_low_contrast(arr, fg, lab, n, masks, spill, reference,
                                                 config)
        notes.append(how_cnr)

    # 3c. Detection level: a soft-tissue component must peak at detect_suv (hysteresis).
    if config.detect_suv is not None and n:
        thresholds["detect_suv"] = float(config.detect_suv)
        fg, lab, n = _drop_faint(arr, fg, lab, n, bone, config.detect_suv)

    # 4. Optional split and isocontour refinement.
    if config.split and n:
        lab, n = _split_components(arr, fg, lab, n, config)
    if config.isocontour_fraction is not None and n:
        curve = None
        floors = organ_floor
        centres: dict[AnatomyLabel, float] | None = None
        if config.isocontour_iterative:
            curve, how_itm = _itm_curve(config, thresholds, suv.spacing)
            notes.append(how_itm)
            if curve is not None:
                floors = [(o, c + k * sd) for o, c, k, sd in organ_noise]
                centres = {o: c for o, c, _, _ in organ_noise}
        fg, lab, n, unconverged = _isocontour(arr, fg, lab, n, config, zones, margins, floors,
                                              suv.spacing, spill, curve, centres)
        if unconverged:
            notes.append(f"iterative thresholding did not converge within "
                         f"{config.isocontour_max_iterations} steps for {unconverged} "
                         "lesion(s): their last segmentation is kept")
        fg, lab, n = _drop_small(fg, lab, n, suv.voxel_volume_ml, config.min_volume_ml)
    if n > _MAX_LABEL:
        raise LesionError(
            f"{n} lesions found, more than a uint16 label map holds ({_MAX_LABEL}); the "
            "threshold is probably far too low for this image."
        )

    # 5. Deterministic relabel by decreasing SUVmax, ties by raster order of the max voxel.
    mask_names = tuple(str(k) for k in masks)
    labels = np.zeros(shape, dtype=np.uint16)
    if not n:
        return LesionResult(suv.with_array(labels, unit="label"), (), reference, thresholds,
                            config, mask_names, tuple(notes))
    vals = arr.reshape(-1)[fg]
    first = _hottest(fg, lab, vals)
    rank = np.lexsort((fg[first], -vals[first]))
    lut = np.zeros(n + 1, dtype=np.intp)
    lut[lab[first[rank]]] = np.arange(1, n + 1)
    lab = lut[lab]
    labels.reshape(-1)[fg] = lab.astype(np.uint16)
    meas = measure_lesions(suv, fg, lab, n, masks=[masks[AnatomyLabel(k)] for k in mask_names],
                           peak_volume_ml=config.suv_peak_volume_ml)

    # 6. Equivocal flags, miPSMA.
    reasons = _equivocal_reasons(suv, fg, lab, n, meas, zones, config, margins, touched)
    scores, indices = mipsma(meas.suv_max, reference, tracer=config.tracer)
    lesions = tuple(
        Lesion(
            id=i + 1,
            voxel_count=int(meas.voxel_count[i]),
            volume_ml=float(meas.volume_ml[i]),
            suv_max=float(meas.suv_max[i]),
            suv_mean=float(meas.suv_mean[i]),
            suv_peak=float(meas.suv_peak[i]),
            tl_psma=float(meas.tl_psma[i]),
            centroid_mm=_triple(meas.centroid_mm[i]),
            suv_max_position_mm=_triple(meas.suv_max_position_mm[i]),
            mipsma_score=scores[i],
            mipsma_index=indices[i],
            overlaps=overlap_dict(mask_names, meas.overlaps[i]),
            equivocal=reasons[i] is not None,
            equivocal_reason=reasons[i],
        )
        for i in range(n)
    )
    logger.info("found %d lesion(s) (%d equivocal) with %s", n,
                sum(les.equivocal for les in lesions), how)
    return LesionResult(suv.with_array(labels, unit="label"), lesions, reference, thresholds,
                        config, mask_names, tuple(notes))


def _sphere_fit_mask(
    res: NDArray[np.float64], mask: NDArray[np.bool_], peak: tuple[int, int, int], *,
    allowed: NDArray[np.bool_], use: NDArray[np.bool_], spacing: tuple[float, float, float],
    fwhm_mm: float, min_volume_ml: float, connectivity: int,
) -> NDArray[np.bool_]:
    """The isocontour of ``res`` connected to ``peak`` whose voxel count holds the volume of a
    blurred sphere fitted to the patch (:func:`imaging.lesions.volume.fit_blurred_sphere`).

    The threshold ``mask`` gives the starting radius and is kept when the fit cannot be made
    (too few usable voxels), fails (radius at a bound, non-positive contrast) or finds a sphere
    smaller than ``min_volume_ml`` (the smallest calibration sphere: below it the PSF hides the
    size, and the fitted radius is no better than the threshold outline). The level is
    found by bisection over the sorted values of the allowed voxels, and of the isocontours it
    visits (and ``mask``) the one whose voxel count is nearest the fitted volume is kept: the
    search can end one level off, a voxel (8% of 1 mL on 4 x 4 x 5 mm) on the wrong side. The
    peak always stays.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    r0_mm = (3.0 * np.count_nonzero(mask) * voxel_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    try:
        fit = fit_blurred_sphere(res, peak, spacing=spacing, fwhm_mm=fwhm_mm, radius_mm=r0_mm,
                                 use=use)
    except LesionError:  # patch too small for the model: the threshold segmentation stays
        return mask
    if not fit.success or fit.volume_ml < min_volume_ml:
        return mask
    target = fit.volume_ml / voxel_ml
    values = np.sort(res[allowed])[::-1]
    lo, hi = 0, len(values) - 1
    best, gap = mask, abs(np.count_nonzero(mask) - target)
    while lo <= hi:
        mid = (lo + hi) // 2
        region = allowed & (res >= values[mid])
        region[peak] = True
        cc = _cc3d.connected_components(region, connectivity=connectivity)
        candidate = cc == cc[peak]
        count = np.count_nonzero(candidate)
        if abs(count - target) < gap:
            best, gap = candidate, abs(count - target)
        if count < target:
            lo = mid + 1
        elif count > target:
            hi = mid - 1
        else:
            break
    return best


def _itm_curve(
    config: LesionConfig, thresholds: Mapping[str, float], spacing: tuple[float, float, float],
) -> tuple[ThresholdCurve | None, str]:
    """Calibration curve of the iterative thresholding method, and how its PSF was chosen."""
    if config.psf_fwhm_mm is not None:
        fwhm, source = config.psf_fwhm_mm, "psf_fwhm_mm"
    elif "psf_fwhm_mm_refined" in thresholds:
        fwhm, source = thresholds["psf_fwhm_mm_refined"], "fitted on a hot excluded organ"
    elif "psf_fwhm_mm" in thresholds:
        fwhm, source = thresholds["psf_fwhm_mm"], "fitted on a hot excluded organ"
    else:
        return None, ("iterative thresholding needs the PSF, which is neither set "
                      "(psf_fwhm_mm) nor fitted (no hot excluded organ): the fixed "
                      f"{config.isocontour_fraction:g} isocontour is used instead")
    return (sphere_threshold_curve(fwhm, spacing),
            f"iterative thresholding calibrated for a {fwhm:.1f} mm PSF ({source})")


def _drop_organ_fringe(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    fringe: tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]],
    prominence: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int, int]:
    """Drop components that are the cut-off fringe of an organ-adaptive organ's uptake.

    ``fringe`` holds the candidates an organ-adaptive threshold removed: flat indices, SUV and
    that organ's threshold. A component whose voxels touch (26-neighbourhood) such a voxel
    within ``prominence`` of the component's own SUVmax, while that SUVmax is below the organ's
    threshold, has no maximum standing out of the organ's uptake and is dropped (the fringe of
    a noisy organ plateau). Returns the kept components and the number dropped.
    """
    idx, vals, thr = fringe
    shape = arr.shape
    rc = np.stack(np.unravel_index(idx, shape), axis=1)
    lo = np.maximum(rc.min(axis=0) - 1, 0)
    hi = np.minimum(rc.max(axis=0) + 2, shape)
    box_shape = tuple(int(h - low) for low, h in zip(lo, hi, strict=True))
    hot = np.full(box_shape, -np.inf)  # SUV of the removed voxels, -inf elsewhere
    org_t = np.zeros(box_shape)
    local = tuple((rc - lo).T)
    hot[local], org_t[local] = vals, thr
    fc = np.stack(np.unravel_index(fg, shape), axis=1) - lo
    inside = np.all((fc >= -1) & (fc <= np.asarray(box_shape)), axis=1)
    touch = np.full(fg.size, -np.inf)
    touch_t = np.zeros(fg.size)
    if inside.any():
        nb = fc[inside][:, None, :] + _shell_offsets(1, 1)[None, :, :]
        ok = np.all((nb >= 0) & (nb < np.asarray(box_shape)), axis=2)
        nb = np.where(ok[..., None], nb, 0)
        v = np.where(ok, hot[nb[..., 0], nb[..., 1], nb[..., 2]], -np.inf)
        t = np.where(ok, org_t[nb[..., 0], nb[..., 1], nb[..., 2]], 0.0)
        best = np.argmax(v, axis=1)
        rows = np.arange(v.shape[0])
        touch[inside], touch_t[inside] = v[rows, best], t[rows, best]
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, lab, arr.reshape(-1)[fg].astype(np.float64))
    comp_touch = np.full(n + 1, -np.inf)
    np.maximum.at(comp_touch, lab, touch)
    comp_t = np.zeros(n + 1)
    np.maximum.at(comp_t, lab, np.where(np.isfinite(touch), touch_t, 0.0))
    drop = (comp_touch >= peak - prominence) & (peak < comp_t)
    fg, lab, kept = _keep_components(fg, lab, n, ~drop)
    return fg, lab, kept, n - kept


def _drop_small(
    fg: NDArray[np.intp], lab: NDArray[np.intp], n: int, voxel_ml: float, min_ml: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int]:
    """Remove components below ``min_ml`` and renumber the rest 1..n' (order kept)."""
    if n == 0:
        return fg, lab, 0
    counts = np.bincount(lab, minlength=n + 1)
    return _keep_components(fg, lab, n, counts * voxel_ml >= min_ml * (1 - 1e-9))


def _hottest(fg: NDArray[np.intp], lab: NDArray[np.intp], vals: NDArray[np.floating]
             ) -> NDArray[np.intp]:
    """Index (into ``fg``) of each component's hottest voxel, in label order (ties: raster)."""
    order = np.lexsort((fg, -vals, lab))
    return order[np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]]


def _drop_faint(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    bone: NDArray[np.bool_] | None, detect_suv: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int]:
    """Remove soft-tissue components whose SUVmax is below ``detect_suv``.

    A component whose hottest voxel lies in ``bone`` is kept (the bone threshold applies).
    """
    vals = arr.reshape(-1)[fg]
    first = _hottest(fg, lab, vals)
    ok = np.zeros(n + 1, dtype=bool)
    ok[lab[first]] = vals[first] >= detect_suv
    if bone is not None:
        ok[lab[first]] |= bone.reshape(-1)[fg[first]]
    return _keep_components(fg, lab, n, ok)


def _keep_components(
    fg: NDArray[np.intp], lab: NDArray[np.intp], n: int, ok: NDArray[np.bool_],
) -> tuple[NDArray[np.intp], NDArray[np.intp], int]:
    """Keep the components whose ``ok[label]`` holds, renumbered 1..n' (order kept)."""
    ok = ok.copy()
    ok[0] = False
    lut = np.zeros(n + 1, dtype=np.intp)
    lut[ok] = np.arange(1, int(ok.sum()) + 1)
    sel = ok[lab]
    return fg[sel], lut[lab[sel]], int(ok.sum())


_SHELL: dict[tuple[int, int], NDArray[np.intp]] = {}


def _shell_offsets(inner: int, outer: int) -> NDArray[np.intp]:
    """Voxel offsets along the 26 grid directions at steps ``inner..outer``, shape (m, 3).

    A sparse sample of the shell around a voxel (26 rays instead of every voxel of the cubic
    shell): enough for a quartile of the surroundings, six times fewer lookups.
    """
    key = (inner, outer)
    if key not in _SHELL:
        r = np.arange(-1, 2)
        rays = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
        rays = rays[np.abs(rays).max(axis=1) > 0]
        steps = np.arange(inner, outer + 1)
        _SHELL[key] = (rays[None, :, :] * steps[:, None, None]).reshape(-1, 3).astype(np.intp)
    return _SHELL[key]


def _noise_coefficient(reference: ReferenceValues) -> float | None:
    """The scan's noise coefficient ``SD / sqrt(mean)`` in the liver reference VOI, or None."""
    liver = reference.liver
    if not liver.found or not liver.suv_sd or not liver.suv_mean or liver.suv_mean <= 0:
        return None
    return float(liver.suv_sd) / float(np.sqrt(liver.suv_mean))


def _drop_low_contrast(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    masks: Mapping[AnatomyLabel, NDArray[np.bool_]], spill: _Spill,
    reference: ReferenceValues, config: LesionConfig,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int, str]:
    """Drop components whose SUVmax does not stand out of the noise of their surroundings.

    Contrast-to-noise ratio ``(SUVmax - bg) / (c sqrt(bg))``: ``bg`` is the upper-quartile SUV
    in a shell 2-3 voxels around the component (voxels hotter than the component left out, the
    modelled spill of hot organs subtracted), ``c`` the scan's noise coefficient
    ``SD / sqrt(mean)`` in the liver reference VOI (PET noise variance grows with the count
    level). Components below ``config.min_contrast_noise`` (Rose criterion, 5 by default) are
    the noise maxima of moderately avid tissue (stomach wall, bone marrow, heart) that a fixed
    SUV threshold admits; a component with no measurable surroundings is kept. The upper
    quartile, not the median, because at an organ's edge half of the shell lies in the colder
    tissue outside it.
    """
    c = _noise_coefficient(reference)
    if c is None:
        return fg, lab, n, ("contrast-to-noise filter not applied: no liver reference to "
                            "measure the scan's noise")
    shape = arr.shape
    flat = arr.reshape(-1)
    # component SUVmax (halo-corrected where a hot organ's spill was modelled)
    coords = np.stack(np.unravel_index(fg, shape), axis=1)
    own = flat[fg] - spill.at(coords)
    top = np.full(n + 1, -np.inf)
    np.maximum.at(top, lab, own)
    # boundary voxels only: the shell of a component is reached from its surface
    label_of = np.zeros(int(np.prod(shape)), dtype=np.int32)
    label_of[fg] = lab
    inside = label_of > 0
    edge = np.zeros(fg.size, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            nb = coords.copy()
            nb[:, axis] += step
            ok = (nb[:, axis] >= 0) & (nb[:, axis] < shape[axis])
            edge[~ok] = True
            idx = np.ravel_multi_index(tuple(nb[ok].T), shape)
            edge[np.flatnonzero(ok)[~inside[idx]]] = True
    offs = _shell_offsets(2, 3)
    pts = (coords[edge][:, None, :] + offs[None, :, :]).reshape(-1, 3)
    owner = np.repeat(lab[edge], len(offs))
    ok = np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)
    pts, owner = pts[ok], owner[ok]
    idx = np.ravel_multi_index(tuple(pts.T), shape)
    # the component's own voxels are not its surroundings; other candidates' voxels are (leaving
    # out every voxel above threshold would bias the background low in noisy avid tissue). A
    # voxel reached along several rays counts several times: a sample, not a set.
    keep_v = label_of[idx] != owner
    body = masks.get(AnatomyLabel.BODY)
    if body is not None:
        keep_v &= body.reshape(-1)[idx]
    owner, idx = owner[keep_v], idx[keep_v]
    vals = flat[idx] - spill.at(np.stack(np.unravel_index(idx, shape), axis=1))
    # voxels hotter than the component belong to a hotter neighbour (bladder, kidney, another
    # lesion's tail), not to the background it must stand out of
    cooler = vals < top[owner]
    owner, vals = owner[cooler], vals[cooler]
    order = np.lexsort((vals, owner))
    owner, vals = owner[order], vals[order]
    counts = np.bincount(owner, minlength=n + 1)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    has = counts >= 8
    bg = np.zeros(n + 1)
    bg[has] = vals[starts[has] + (3 * counts[has]) // 4]
    bg = np.maximum(bg, 0.0)
    cnr = (top - bg) / (c * np.sqrt(np.maximum(bg, config.contrast_noise_floor_suv)))
    assert config.min_contrast_noise is not None  # the caller skips the test otherwise
    fg, lab, kept = _keep_components(fg, lab, n, ~has | (cnr >= config.min_contrast_noise))
    how = (f"contrast-to-noise >= {config.min_contrast_noise:g} (noise coefficient {c:.3f} from "
           f"the liver VOI): {n - kept} component(s) dropped")
    return fg, lab, kept, how


class _Spill:
    """Modelled partial-volume spill of hot excluded organs, stored as crops (SUV)."""

    def __init__(self) -> None:
        self.parts: list[tuple[NDArray[np.intp], NDArray[np.float64]]] = []

    def add(self, lo: NDArray[np.intp], values: NDArray[np.float64]) -> None:
        self.parts.append((lo, values))

    def at(self, coords: NDArray[np.intp]) -> NDArray[np.float64]:
        """Spill at voxels ``coords`` (n, 3)."""
        out = np.zeros(len(coords))
        for lo, values in self.parts:
            local = coords - lo
            ok = np.all((local >= 0) & (local < np.asarray(values.shape)), axis=1)
            out[ok] += values[tuple(local[ok].T)]
        return out

    def crop(self, box: tuple[slice, slice, slice]) -> NDArray[np.float64]:
        """Spill on the crop ``box`` of the full grid."""
        out = np.zeros(tuple(s.stop - s.start for s in box))
        for lo, values in self.parts:
            src = [slice(max(b.start - int(l0), 0), min(b.stop - int(l0), n))
                   for b, l0, n in zip(box, lo, values.shape, strict=True)]
            if any(sl.stop <= sl.start for sl in src):
                continue
            dst = [slice(sl.start + int(l0) - b.start, sl.stop + int(l0) - b.start)
                   for sl, l0, b in zip(src, lo, box, strict=True)]
            out[dst[0], dst[1], dst[2]] += values[src[0], src[1], src[2]]
        return out


def _fit_spill(
    arr: NDArray[np.floating], zones: Zones, organ: AnatomyLabel,
    spacing: tuple[float, float, float], *, sigmas_mm: Sequence[float], reach_mm: float,
    others: Sequence[AnatomyLabel], refined: dict[str, float] | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.float64], float, float] | None:
    """Fit ``SUV = a * (G_sigma * mask) + b`` in the shell around an organ (within ``reach_mm``).

    ``G_sigma`` is a Gaussian PSF; among ``sigmas_mm`` the best least-squares fit wins
    (robust: two passes dropping residuals beyond 3 MAD, so lesions next to the organ do not
    drive the fit). Voxels of ``others`` masks are left out of the shell. Returns the crop
    origin, the spill ``a * G_sigma * mask`` outside the organ (0 inside), ``a`` and sigma, or
    ``None`` if the organ is absent or the fit is not usable. With ``refined`` given, sigma is
    also refined continuously within half a millimetre of the best grid value (on the best
    fit's inliers) and stored as ``refined["sigma_mm"]``; the spill keeps the grid value.
    """
    box = zones.bbox(organ)
    mask = zones.mask(organ)
    if box is None or mask is None:
        return None
    reach = np.ceil(reach_mm / np.asarray(spacing)).astype(int) + 1
    lo = np.array([max(s.start - int(r), 0) for s, r in zip(box, reach, strict=True)])
    hi = np.array([min(s.stop + int(r), n) for s, r, n in zip(box, reach, mask.shape,
                                                              strict=True)])
    sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    m = np.asarray(mask[sl])
    y = np.asarray(arr[sl], dtype=np.float64)
    mf = m.astype(np.float64)
    # The shell: outside the organ, where the widest candidate PSF still carries >= 1% of it.
    wide = ndimage.gaussian_filter(mf, [max(sigmas_mm) / sp for sp in spacing], mode="constant")
    shell = ~m & (wide >= 0.01)
    for key in others:
        other = zones.mask(key)
        if key != organ and other is not None:
            shell &= ~np.asarray(other[sl])
    if np.count_nonzero(shell) < 20:
        return None
    ys = y[shell]
    best: tuple[float, float, float, float, NDArray[np.float64], NDArray[np.bool_]] | None = None
    for sigma in sigmas_mm:
        g = ndimage.gaussian_filter(mf, [sigma / sp for sp in spacing], mode="constant")
        gs = g[shell]
        use = np.ones(gs.size, dtype=bool)
        for _ in range(3):
            design = np.stack([gs[use], np.ones(int(use.sum()))], axis=1)
            coef, *_ = np.linalg.lstsq(design, ys[use], rcond=None)
            resid = ys - (coef[0] * gs + coef[1])
            mad = float(np.median(np.abs(resid[use] - np.median(resid[use])))) * 1.4826
            inliers = np.abs(resid) <= 3 * max(mad, 1e-6)
            if np.count_nonzero(inliers) < 2:  # an exact fit (noise-free image): keep the set
                break
            use = inliers
        sse = float(np.mean(resid[use] ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(coef[0]), float(coef[1]), float(sigma), g, use)
    assert best is not None
    _, a, _, sigma, g, use = best
    if a <= 0:
        return None
    if refined is not None:
        def cost(s: float) -> float:
            gs = ndimage.gaussian_filter(mf, [s / sp for sp in spacing], mode="constant")[shell]
            design = np.stack([gs[use], np.ones(int(use.sum()))], axis=1)
            _, res, *_ = np.linalg.lstsq(design, ys[use], rcond=None)
            return float(res[0]) if res.size else 0.0
        opt = minimize_scalar(cost, bounds=(max(sigma - 0.5, 0.5), sigma + 0.5),
                              method="bounded", options={"xatol": 0.02})
        refined["sigma_mm"] = float(opt.x)
    spill = a * g
    spill[m] = 0.0
    return lo, spill, a, sigma


def _model_spill(
    arr: NDArray[np.floating], zones: Zones, organs: Sequence[AnatomyLabel],
    spacing: tuple[float, float, float], config: LesionConfig, threshold: float,
    spill: _Spill, record: dict[str, float], others: Sequence[AnatomyLabel],
) -> None:
    """Fit the spill of every hot excluded organ into ``spill`` (PSF fitted once, or given)."""
    reach = 12.0 if config.psf_fwhm_mm is None else 2.0 * config.psf_fwhm_mm
    hot: list[AnatomyLabel] = []
    for organ in organs:
        vals = zones.values(organ, arr)
        if vals is not None and vals.size and float(np.percentile(vals, 90)) >= threshold:
            hot.append(organ)
    if not hot:
        return
    if config.psf_fwhm_mm is not None:
        sigmas = [config.psf_fwhm_mm / 2.3548]
    else:
        # PSF from the most compact hot organ (smallest bounding box), then reused.
        def size(o: AnatomyLabel) -> int:
            b = zones.bbox(o)
            return int(np.prod([s.stop - s.start for s in b])) if b else 0
        probe = min(hot, key=size)
        refined: dict[str, float] | None = {} if config.isocontour_iterative else None
        fit = _fit_spill(arr, zones, probe, spacing, sigmas_mm=(1.5, 2.0, 2.5, 3.0, 3.5, 4.5),
                         reach_mm=reach, others=others, refined=refined)
        if fit is None:
            return
        sigmas = [fit[3]]
        reach = max(reach, 4.0 * fit[3])
        if refined:  # the iterative isocontour's calibration needs the PSF more finely
            record["psf_fwhm_mm_refined"] = refined["sigma_mm"] * 2.3548
    record["psf_fwhm_mm"] = float(sigmas[0] * 2.3548)
    for organ in hot:
        fit = _fit_spill(arr, zones, organ, spacing, sigmas_mm=sigmas, reach_mm=reach,
                         others=others)
        if fit is not None:
            spill.add(fit[0], fit[1])
            record[f"spill_scale:{organ.value}"] = fit[2]


def _spill_margin(
    arr: NDArray[np.floating], zones: Zones, organ: AnatomyLabel,
    spacing: tuple[float, float, float], *, base_mm: float, threshold: float, max_mm: float,
    organ_floor: Mapping[AnatomyLabel, float], adaptive_margin_mm: float,
    excluded_organs: Sequence[AnatomyLabel],
) -> tuple[float, float]:
    """Exclusion margin (mm) of a hard-excluded organ, grown to cover its partial-volume spill.

    Starting from ``base_mm``, the margin grows one ring (the smallest voxel spacing) at a time
    while the median SUV of the next ring outside the organ still reaches the local threshold
    (``threshold``, or an organ-adaptive threshold near liver, spleen, ...), up to
    ``max_mm``: a hot organ (bladder, kidneys) gets a wider margin than a cooler one. Also
    returns the spill level: the 99th percentile of SUV in the ring just outside the margin.
    Rings leave out voxels of other hard-excluded organs.
    """
    box = zones.bbox(organ)
    mask = zones.mask(organ)
    if box is None or mask is None or max_mm <= base_mm:
        return base_mm, 0.0
    reach = np.ceil(max_mm / np.asarray(spacing)).astype(int) + 1
    lo = [max(s.start - int(r), 0) for s, r in zip(box, reach, strict=True)]
    hi = [min(s.stop + int(r), n) for s, r, n in zip(box, reach, mask.shape, strict=True)]
    sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    crop = np.asarray(mask[sl])
    values = np.asarray(arr[sl])
    level = float(np.percentile(values[crop], 99)) if crop.any() else 0.0
    if level < threshold:  # a cool organ (median far below) cannot spill above the threshold
        return base_mm, level
    dist = ndimage.distance_transform_edt(~crop, sampling=spacing)
    # Rings are judged against the local threshold: inside an organ-adaptive zone (a liver next
    # to a kidney) that organ's threshold; voxels of other excluded organs are left out.
    floor = np.full(crop.shape, float(threshold))
    other = np.zeros(crop.shape, dtype=bool)
    for key in zones.keys():
        if key == organ or key in _BACKGROUND_LABELS:
            continue
        if key in organ_floor:
            zone = zones.crop(key, adaptive_margin_mm, sl)
            floor[zone] = np.maximum(floor[zone], organ_floor[key])
        elif key in excluded_organs:
            m = zones.mask(key)
            if m is not None:
                other |= np.asarray(m[sl])
    excess = values - floor
    step = min(spacing)
    margin = base_mm
    level = 0.0
    while True:
        ring = (dist > margin + 1e-6) & (dist <= margin + step + 1e-6) & ~other
        if not ring.any():
            break
        level = float(np.percentile(values[ring], 99))
        if margin >= max_mm or float(np.median(excess[ring])) < 0:
            break
        margin = min(margin + step, max_mm)
    return float(margin), level


def _remove_spill(
    arr: NDArray[np.floating], fg: NDArray[np.intp], lab: NDArray[np.intp], n: int,
    zones: Zones, excluded: Mapping[AnatomyLabel, float], spacing: tuple[float, float, float],
    config: LesionConfig, spill: _Spill, noise: float | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.intp], int, dict[AnatomyLabel, NDArray[np.intp]]]:
    """Remove the partial-volume spill of hard-excluded organs from the components touching them.

    For each component within one voxel of an excluded organ's zone (mask + margin), a
    marker-based watershed on -SUV runs over the component and the zone: one marker is the
    zone, the others the component's own SUV maxima away from the zone (h-maxima of prominence
    ``spill_prominence_suv``, or ``spill_prominence_noise_sd`` noise SDs at the component's
    SUVmax when ``noise``, the scan's noise coefficient, is known: the halo of a bladder at SUV
    50 carries noise bumps of several SUV). Voxels that drain towards the organ are its spill
    and are removed; a lesion next to the organ keeps the voxels that drain to its own maximum.
    A component without a maximum of its own is removed entirely. A component hotter than
    ``spill_hotter_ratio`` x the organ's uptake beside it (90th percentile of its voxels within
    3 voxels of the component) cannot be its spill and is kept whole
    (a local recurrence at the base of a [18F]PSMA-1007 bladder of SUV 5). Also returns, per
    organ, the flat indices of the kept voxels of components that touched its zone.
    """
    step = max(spacing) * 1.01
    coords = np.stack(np.unravel_index(fg, arr.shape), axis=1).astype(np.intp)
    touching = np.zeros(n + 1, dtype=bool)
    touched_by: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    for organ, margin in excluded.items():
        near = zones.hits(organ, coords, margin + step)
        if near.any():
            per_label = np.zeros(n + 1, dtype=bool)
            per_label[lab[near]] = True
            touched_by[organ] = per_label
            touching |= per_label
    touching[0] = False
    ids = np.flatnonzero(touching)
    if ids.size == 0:
        return fg, lab, n, {}
    top = np.zeros(n + 1)
    np.maximum.at(top, lab, arr.reshape(-1)[fg])
    conn = {6: 1, 18: 2, 26: 3}[config.connectivity]
    remove = np.zeros(len(fg), dtype=bool)
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(n + 2))
    for c in ids:
        members = order[bounds[c]:bounds[c + 1]]
        pts = coords[members]
        # the organ's own uptake beside the component (90th percentile of its voxels within 3
        # voxels; ureters and bowel are not uniform):
        # a component hotter than that by spill_hotter_ratio cannot be its spill
        wide = bbox_slices(pts, arr.shape, (3, 3, 3))
        near_organ = np.zeros(tuple(s.stop - s.start for s in wide), dtype=bool)
        for organ in excluded:
            m = zones.mask(organ)
            if m is not None:
                near_organ |= np.asarray(m[wide])
        if near_organ.any():
            level = float(np.percentile(np.asarray(arr[wide])[near_organ], 90))
            if top[c] > config.spill_hotter_ratio * level:
                continue
        box = bbox_slices(pts, arr.shape, (1, 1, 1))
        lo = np.array([s.start for s in box])
        local = pts - lo
        comp = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        comp[tuple(local.T)] = True
        zone = np.zeros_like(comp)
        for organ, margin in excluded.items():
            zone |= zones.crop(organ, margin, box)
        zone &= ~comp
        rim = np.zeros_like(comp)
        for organ, margin in excluded.items():
            rim |= zones.crop(organ, margin + step, box)
        img = np.asarray(arr[box], dtype=np.float64) - spill.crop(box)
        h = config.spill_prominence_suv
        if noise:
            # noise at the SUV of the component's own part: its voxels on the organ's rim (a
            # bladder's partial-volume voxels at SUV 50-70) are not where its maxima can lie
            off_rim = comp & ~rim
            at = float(np.asarray(arr[box])[off_rim].max()) if off_rim.any() else float(top[c])
            h = max(h, config.spill_prominence_noise_sd * noise * float(np.sqrt(max(at, 0.0))))
        peaks = h_maxima(np.where(comp, img, 0.0), h) & comp & ~rim
        own, n_own = _cc3d.connected_components(peaks, connectivity=26, return_N=True)
        if n_own == 0:
            remove[members] = True
            continue
        markers = np.where(zone, 1, 0).astype(np.int32)
        markers[own > 0] = own[own > 0].astype(np.int32) + 1
        ws = watershed(-img, markers=markers, mask=comp | zone, connectivity=conn)
        remove[members] = ws[tuple(local.T)] == 1
    keep = ~remove
    touched = {organ: fg[keep & per_label[lab]] for organ, per_label in touched_by.items()}
    if not remove.any():
        return fg, lab, n, touched
    logger.debug("removed %d organ spill-over voxel(s)", int(remove.sum()))
    fg = fg[keep]
    new_lab, new_n = _components(fg, arr.shape, config.connectivity)
    return fg, new_lab, new_n, touched


def _equivocal_reasons(
    suv: Volume, fg: NDArray[np.intp], lab: NDArray[np.intp], n: int, meas: LesionMeasures,
    zones: Zones, config: LesionConfig, margins: Mapping[AnatomyLabel, float],
    touched: Mapping[AnatomyLabel, NDArray[np.intp]],
) -> list[str | None]:
    """Why each lesion is equivocal (``None`` if it is not)."""
    reasons: list[list[str]] = [[] for _ in range(n)]
    coords = np.stack(np.unravel_index(fg, suv.shape), axis=1).astype(np.intp)
    for organ in config.equivocal_touch:
        if organ not in zones:
            continue
        # Touching = within equivocal_touch_mm of the organ's excluded zone (mask + margin).
        reach = margins.get(organ, 0.0) + config.equivocal_touch_mm
        near = zones.hits(organ, coords, reach)
        if organ in touched:  # was joined to the organ's spill before that was removed
            near |= np.isin(fg, touched[organ])
        hit = np.bincount(lab[near], minlength=n + 1)[1:] > 0
        urine = zones.values(organ, suv.array)  # its urine activity: 99th percentile
        if config.equivocal_hotter_ratio is not None and urine is not None and urine.size:
            hit &= meas.suv_max <= config.equivocal_hotter_ratio * float(np.percentile(urine, 99))
        for i in np.flatnonzero(hit):
            reasons[i].append(f"touches {organ.value}")
    bone = zones.mask(AnatomyLabel.BONE)
    if bone is not None and config.ganglion_max_suv > 0:
        cand = (meas.suv_max < config.ganglion_max_suv) & (
            meas.volume_ml < config.ganglion_max_volume_ml)
        box = zones.bbox(AnatomyLabel.LIVER) if AnatomyLabel.LIVER in zones else None
        if box is not None:
            # Cervical, stellate and coeliac ganglia lie above the lower liver edge; pelvic
            # nodes next to the pelvic bones must not be caught by this rule.
            corners = np.array([[k, j, i] for k in (box[0].start, box[0].stop - 1)
                                for j in (box[1].start, box[1].stop - 1)
                                for i in (box[2].start, box[2].stop - 1)], dtype=np.float64)
            z_low = suv.index_to_world(corners)[:, 2].min()
            cand &= meas.centroid_mm[:, 2] >= z_low
        cand_ids = np.flatnonzero(cand) + 1
        if cand_ids.size:
            sel = np.isin(lab, cand_ids)
            in_bone = np.bincount(lab[sel], weights=bone.reshape(-1)[fg[sel]],
                                  minlength=n + 1)[1:]
            near = zones.hits(AnatomyLabel.BONE, coords[sel], config.ganglion_bone_distance_mm)
            near_cnt = np.bincount(lab[sel][near], minlength=n + 1)[1:]
            for i in cand_ids - 1:
                if in_bone[i] == 0 and near_cnt[i] > 0:
                    reasons[i].append(
                        f"sympathetic-ganglion-like (SUVmax < {config.ganglion_max_suv:g}, "
                        f"< {config.ganglion_max_volume_ml:g} mL, "
                        f"<= {config.ganglion_bone_distance_mm:g} mm from bone)")
    return ["; ".join(r) if r else None for r in reasons]


def _triple(row: NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(row[0]), float(row[1]), float(row[2]))
