"""Reference-region uptake: blood pool, liver, parotid glands and spleen.

Geometry follows PERCIST (Wahl et al., J Nucl Med 2009;50 Suppl 1:122S; O et al., Radiology
2016, "Practical PERCIST"): a 3-cm sphere in normal right-lobe liver and a 1-cm x 2-cm cylinder
in the descending thoracic aorta. The parotid VOI is the whole gland at 50% of its SUVmax, and the
spleen (the PSMA-1007 reference of PROMISE V2) a sphere like the liver's. Each value records how it
was measured; a region that cannot be measured gives a flag and ``suv_mean=None``, never a
default number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from imaging.lesions._geometry import ball_offsets, mask_bbox
from imaging.lesions.config import LesionConfig
from imaging.vocabulary import AnatomyLabel
from imaging.volume import Volume

__all__ = ["ReferenceValue", "ReferenceValues", "measure_reference_regions"]

logger = logging.getLogger(__name__)

_DEFAULT_CONFIG = LesionConfig()


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """Uptake of one reference region.

    Attributes
    ----------
    suv_mean, suv_sd : float or None
        Mean and sample SD (ddof=1) of SUV in the VOI; ``None`` when the region was not found.
    n_voxels : int
        Number of PET voxels in the VOI (0 when not found).
    method : str
        How the VOI was built (or what was tried).
    flag : str or None
        ``None`` when measured as intended; otherwise why the value is missing or degraded
        (e.g. a fallback VOI was used).
    """

    suv_mean: float | None
    suv_sd: float | None
    n_voxels: int
    method: str
    flag: str | None = None

    @property
    def found(self) -> bool:
        """True if a value was measured (possibly with a fallback VOI)."""
        return self.suv_mean is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"suv_mean": self.suv_mean, "suv_sd": self.suv_sd, "n_voxels": self.n_voxels,
                "method": self.method, "flag": self.flag}


@dataclass(frozen=True, slots=True)
class ReferenceValues:
    """The four reference regions of one scan."""

    blood_pool: ReferenceValue
    liver: ReferenceValue
    parotid: ReferenceValue
    spleen: ReferenceValue

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready ``{region: fields}``."""
        return {"blood_pool": self.blood_pool.to_dict(), "liver": self.liver.to_dict(),
                "parotid": self.parotid.to_dict(), "spleen": self.spleen.to_dict()}


def _missing(label: AnatomyLabel, method: str) -> ReferenceValue:
    return ReferenceValue(None, None, 0, method,
                          flag=f"no {label.value} mask in the anatomy input; region not measured")


def _stats(values: NDArray[np.floating], method: str, flag: str | None) -> ReferenceValue:
    vals = np.asarray(values, dtype=np.float64)
    sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return ReferenceValue(float(vals.mean()), sd, int(vals.size), method, flag)


def _sphere_voi(
    suv: NDArray[np.floating], mask: NDArray[np.bool_], spacing: tuple[float, float, float],
    direction: NDArray[np.float64], *, diameter_mm: float, prefer_right: bool,
    exclude: NDArray[np.bool_] | None,
) -> tuple[NDArray[np.intp] | None, str]:
    """Voxel coordinates of a sphere fully inside ``mask``, placed at a typical-uptake spot.

    Candidate centres are voxels at least the sphere radius from the mask border (Euclidean
    distance transform in mm). The sphere chosen is the one whose mean SUV is the median of all
    candidate spheres' means (robust to lesions in the organ), optionally among the candidates
    in the patient-right half. Returns ``(coords or None, description)``.
    """
    box = mask_bbox(mask)
    if box is None:
        return None, "mask empty"
    radius = diameter_mm / 2.0
    pad = 1
    m = np.pad(mask[box], pad)
    s = np.pad(np.asarray(suv[box], dtype=np.float64), pad)
    if exclude is not None:
        m_use = m & ~np.pad(exclude[box], pad)
    else:
        m_use = m
    dist = ndimage.distance_transform_edt(m, sampling=spacing)
    cand = (dist >= radius) & m_use
    if not cand.any():
        return None, f"no point {radius:g} mm inside the mask"
    offs = ball_offsets(radius, spacing)
    # Sphere sums by direct convolution (kernel symmetric, so convolution = correlation; the
    # organ box is small, and scipy.signal would cost half a second to import).
    reach = np.abs(offs).max(axis=0)
    kernel = np.zeros(tuple(2 * reach + 1), dtype=np.float64)
    kernel[tuple((offs + reach).T)] = 1.0
    sums = ndimage.convolve(s, kernel, mode="constant", cval=0.0)
    means_all = sums / kernel.sum()
    cidx = np.argwhere(cand)
    if prefer_right:
        # Patient right = smaller LPS x. World x of each candidate (direction columns are k,j,i).
        x = cidx @ (direction[0, :] * np.asarray(spacing))
        right = cidx[x <= np.median(x)]
        if right.size:
            cidx = right
    means = means_all[tuple(cidx.T)]
    target = np.median(means)
    best = int(np.argmin(np.abs(means - target)))  # first in raster order on ties
    centre = cidx[best]
    coords = centre + offs - pad
    origin = np.array([box[0].start, box[1].start, box[2].start])
    return coords + origin, f"{diameter_mm:g}-mm sphere"


def _organ_sphere(
    suv: Volume, masks: Mapping[AnatomyLabel, NDArray[np.bool_]], label: AnatomyLabel, *,
    diameter_mm: float, prefer_right: bool, exclude: NDArray[np.bool_] | None,
) -> ReferenceValue:
    where = " in the normal right lobe" if prefer_right else ""
    method = f"{diameter_mm:g}-mm sphere inside the {label.value} mask{where} (PERCIST geometry)"
    mask = masks.get(label)
    if mask is None:
        return _missing(label, method)
    arr = suv.array
    coords, why = _sphere_voi(arr, mask, suv.spacing, suv.direction, diameter_mm=diameter_mm,
                              prefer_right=prefer_right, exclude=exclude)
    if coords is not None:
        return _stats(arr[tuple(coords.T)], method, None)
    # Fallback: the organ eroded by 10 mm, then the whole organ.
    box = mask_bbox(mask)
    if box is None:
        return ReferenceValue(None, None, 0, method, flag=f"{label.value} mask is empty")
    m = np.pad(mask[box], 1)
    dist = ndimage.distance_transform_edt(m, sampling=suv.spacing)[1:-1, 1:-1, 1:-1]
    for erode_mm in (10.0, 0.0):
        sel = dist > erode_mm
        if exclude is not None:
            sel &= ~exclude[box]
        if np.count_nonzero(sel) >= 2:
            fb = (f"whole {label.value} mask" if erode_mm == 0
                  else f"{label.value} mask eroded {erode_mm:g} mm")
            return _stats(np.asarray(arr[box])[sel], fb,
                          f"sphere not placeable ({why}); fell back to {fb}")
    return ReferenceValue(None, None, 0, method,
                          flag=f"{label.value} mask too small to measure ({why})")


def _blood_pool(
    suv: Volume, masks: Mapping[AnatomyLabel, NDArray[np.bool_]], config: LesionConfig,
) -> ReferenceValue:
    d, length = config.blood_pool_diameter_mm, config.blood_pool_length_mm
    method = (f"{d:g}-mm x {length:g}-mm cylinder in the descending thoracic aorta "
              "(above the liver dome; PERCIST geometry)")
    aorta = masks.get(AnatomyLabel.AORTA)
    if aorta is None:
        return _missing(AnatomyLabel.AORTA, method)
    box = mask_bbox(aorta)
    if box is None:
        return ReferenceValue(None, None, 0, method, flag="aorta mask is empty")
    arr = suv.array
    sub = np.asarray(aorta[box])
    origin = np.array([box[0].start, box[1].start, box[2].start])
    dirk = suv.direction[:, 0]
    axial = abs(dirk[2]) > 0.9
    notes: list[str] = []
    # Slices above the liver dome (thoracic aorta), when the liver mask is there.
    liver = masks.get(AnatomyLabel.LIVER)
    kk = np.arange(sub.shape[0]) + origin[0]
    keep_k = np.ones(sub.shape[0], dtype=bool)
    if liver is not None and axial:
        lbox = mask_bbox(liver)
        if lbox is not None:
            z_k = suv.origin[2] + dirk[2] * suv.spacing[0] * kk
            liver_z = suv.origin[2] + dirk[2] * suv.spacing[0] * np.array(
                [lbox[0].start, lbox[0].stop - 1])
            keep_k = z_k > liver_z.max()
    else:
        notes.append("no liver mask: thoracic level not known, whole aorta used")
    if axial:
        n_len = max(1, round(length / suv.spacing[0]))
        # Per slice: the most posterior 2-D component of the aorta = descending aorta.
        centres: list[tuple[int, float, float]] = []
        for n in np.flatnonzero(keep_k & sub.any(axis=(1, 2))):
            lab, count = cc3d.connected_components(sub[n], connectivity=8, return_N=True)
            if count == 0:
                continue
            jj, ii = np.nonzero(lab)
            ll = lab[jj, ii].astype(np.intp)
            cnt = np.bincount(ll, minlength=count + 1)[1:]
            cj = np.bincount(ll, weights=jj, minlength=count + 1)[1:] / cnt
            ci = np.bincount(ll, weights=ii, minlength=count + 1)[1:] / cnt
            # LPS y of each component centre (y posterior): direction row 1, columns j and i.
            y = (suv.direction[1, 1] * suv.spacing[1] * cj
                 + suv.direction[1, 2] * suv.spacing[2] * ci)
            c = int(np.argmax(y))
            centres.append((int(n), float(cj[c]), float(ci[c])))
        if len(centres) >= 1:
            # The longest run of consecutive slices, then its central n_len slices.
            ks = np.array([c[0] for c in centres])
            breaks = np.flatnonzero(np.diff(ks) != 1)
            starts = np.r_[0, breaks + 1]
            stops = np.r_[breaks + 1, len(ks)]
            longest = int(np.argmax(stops - starts))
            a, b = int(starts[longest]), int(stops[longest])
            mid = (a + b) // 2
            lo = max(a, mid - n_len // 2)
            hi = min(b, lo + n_len)
            r = d / 2.0
            jgrid, igrid = np.meshgrid(np.arange(sub.shape[1]), np.arange(sub.shape[2]),
                                       indexing="ij")
            pts: list[NDArray[np.intp]] = []
            for kn, cj_, ci_ in centres[lo:hi]:
                dj = (jgrid - cj_) * suv.spacing[1]
                di = (igrid - ci_) * suv.spacing[2]
                disk = (dj**2 + di**2 <= r**2 + 1e-6) & sub[kn]
                if not disk.any():  # thin vessel: at least the voxel nearest the centre line
                    disk = np.zeros_like(disk)
                    nj, ni = round(cj_), round(ci_)
                    disk[nj, ni] = sub[kn][nj, ni]
                jj, ii = np.nonzero(disk)
                pts.append(np.stack([np.full(jj.size, kn), jj, ii], axis=1))
            coords = np.concatenate(pts) + origin if pts else np.empty((0, 3), np.intp)
            if len(coords) >= 2:
                flag = None
                if hi - lo < n_len:
                    notes.append(f"descending aorta only {hi - lo} slices long")
                if notes:
                    flag = "; ".join(notes)
                return _stats(arr[tuple(coords.T)], method, flag)
    # Fallback: aorta eroded 4 mm (PET partial volume), thoracic part if known.
    m = np.pad(sub, 1)
    dist = ndimage.distance_transform_edt(m, sampling=suv.spacing)[1:-1, 1:-1, 1:-1]
    for erode_mm in (4.0, 0.0):
        sel = (dist > erode_mm) & keep_k[:, None, None]
        if np.count_nonzero(sel) >= 2:
            fb = f"aorta mask eroded {erode_mm:g} mm" + ("" if keep_k.all() else " above liver")
            notes.append("cylinder not placeable (non-axial grid or no descending segment)")
            return _stats(np.asarray(arr[box])[sel], fb,
                          "; ".join(notes) + f"; fell back to {fb}")
    return ReferenceValue(None, None, 0, method,
                          flag="aorta mask has no thoracic voxels to measure")


def _parotid(
    suv: Volume, masks: Mapping[AnatomyLabel, NDArray[np.bool_]], config: LesionConfig,
) -> ReferenceValue:
    frac = config.parotid_isocontour
    method = (f"parotid glands: the two largest salivary-gland components, voxels >= "
              f"{frac:.0%} of each gland's SUVmax, pooled")
    mask = masks.get(AnatomyLabel.SALIVARY_GLANDS)
    if mask is None:
        return _missing(AnatomyLabel.SALIVARY_GLANDS, method)
    box = mask_bbox(mask)
    if box is None:
        return ReferenceValue(None, None, 0, method, flag="salivary_glands mask is empty")
    lab, count = cc3d.connected_components(np.asarray(mask[box]), connectivity=26,
                                           return_N=True)
    s = np.asarray(suv.array[box], dtype=np.float64)
    ll = lab.reshape(-1)
    fg = np.flatnonzero(ll)
    sizes = np.bincount(ll[fg], minlength=count + 1)
    order = np.argsort(-sizes[1:], kind="stable")[:2] + 1
    gmax = np.zeros(count + 1)
    np.maximum.at(gmax, ll[fg], s.reshape(-1)[fg])
    sel = np.isin(lab, order) & (s >= frac * gmax[lab])
    flag = None if len(order) == 2 else "only one salivary-gland component found"
    return _stats(s[sel], method, flag)


def measure_reference_regions(
    suv: Volume, *, anatomy: Mapping[AnatomyLabel, NDArray[np.bool_]],
    config: LesionConfig = _DEFAULT_CONFIG,
) -> ReferenceValues:
    """Measure blood pool, liver, parotid and spleen uptake.

    Parameters
    ----------
    suv : Volume
        SUV image (g/ml or cm2/ml).
    anatomy : mapping of AnatomyLabel to bool ndarray, shape (K, J, I)
        Masks on ``suv``'s grid (validated by :func:`imaging.lesions.find_lesions`).
    config : LesionConfig
        VOI geometry.

    Returns
    -------
    ReferenceValues
        Each region with its method and, when not measured as intended, a flag.
    """
    liver = _organ_sphere(suv, anatomy, AnatomyLabel.LIVER,
                          diameter_mm=config.liver_sphere_diameter_mm, prefer_right=True,
                          exclude=None)
    spleen = _organ_sphere(suv, anatomy, AnatomyLabel.SPLEEN,
                           diameter_mm=config.spleen_sphere_diameter_mm, prefer_right=False,
                           exclude=None)
    out = ReferenceValues(
        blood_pool=_blood_pool(suv, anatomy, config),
        liver=liver,
        parotid=_parotid(suv, anatomy, config),
        spleen=spleen,
    )
    for name in ("blood_pool", "liver", "parotid", "spleen"):
        ref = getattr(out, name)
        if ref.flag:
            logger.info("reference %s: %s", name, ref.flag)
    return out
