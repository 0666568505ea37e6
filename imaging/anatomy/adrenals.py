"""Rule-based adrenal regions: soft tissue on the superomedial upper pole of each kidney.

A non-contrast CT shows the adrenal gland as a thin limb in fat that thresholds cannot separate
from the crura and vessels beside it, so the rule does not segment the gland: it marks the
soft tissue where the gland lies (and where an adrenal metastasis would sit), anchored on the
kidney mask, with a low confidence. A model provider's adrenal masks replace it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.model import AnatomyConfig
from imaging.anatomy.tissues import Tissues, bbox

__all__ = ["adrenal_regions"]


def adrenal_regions(hu: NDArray[np.float32], kidneys: NDArray[np.bool_] | None, t: Tissues,
                    grid: WorkGrid, x_mid_mm: float, *, exclude: NDArray[np.bool_],
                    config: AnatomyConfig) -> tuple[NDArray[np.bool_] | None, str]:
    """Adrenal regions above each kidney's upper pole, on the working grid.

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        CT in HU on the working grid.
    kidneys : ndarray of bool or None
        Kidney mask (both sides); without it there is no anchor and no region.
    t : Tissues
        Body, bone, lungs (kept out of the region).
    grid : WorkGrid
        The working grid.
    x_mid_mm : float
        LPS x of the body's midline (splits left from right kidney).
    exclude : ndarray of bool
        Organ masks the region must not take (liver, spleen, bowel, ...).
    config : AnatomyConfig
        ``adrenal_offset_mm`` (medial, anterior, superior offset of the region's centre from
        the top of the upper pole), ``adrenal_semi_axes_mm`` (lateral, AP, cranio-caudal) and
        ``adrenal_hu`` (soft-tissue window).

    Returns
    -------
    mask, reason
        The region (None when no kidney anchors it) and how it was made.
    """
    if kidneys is None or not kidneys.any():
        return None, ("no rule-based kidney mask to anchor the adrenal regions (needs the PET); "
                      "use a model provider (totalsegmentator / moose)")
    s = grid.spacing_mm
    xs = grid.x_mm()
    out = np.zeros(kidneys.shape, dtype=bool)
    sides = []
    med, ant, sup = config.adrenal_offset_mm
    ax, ay, az = config.adrenal_semi_axes_mm
    lo_hu, hi_hu = config.adrenal_hu
    for name, on_side in (("right", xs < x_mid_mm), ("left", xs >= x_mid_mm)):
        kid = kidneys & on_side[None, None, :]
        box = bbox(kid)
        if box is None:
            continue
        top = box[0].stop - 1
        pole_lo = max(top - round(config.adrenal_pole_mm / s), box[0].start)
        _, ky, kx = np.nonzero(kid[pole_lo:top + 1])
        toward_mid = 1.0 if name == "right" else -1.0  # LPS x grows to the patient's left
        cx = float(xs[0] + s * kx.mean()) + toward_mid * med
        cy = float(grid.origin_mm[1] + s * ky.mean()) - ant
        cz = float(grid.origin_mm[2] + s * top) + sup
        centre_idx = np.array([(cz - grid.origin_mm[2]) / s, (cy - grid.origin_mm[1]) / s,
                               (cx - xs[0]) / s])
        half = np.ceil(np.array([az, ay, ax]) / s).astype(int)
        lo = np.maximum(np.floor(centre_idx).astype(int) - half, 0)
        hi = np.minimum(np.ceil(centre_idx).astype(int) + half + 1, np.asarray(out.shape))
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        zz, yy, xx = np.ogrid[sl[0], sl[1], sl[2]]
        ell = (((zz - centre_idx[0]) * s / az) ** 2 + ((yy - centre_idx[1]) * s / ay) ** 2
               + ((xx - centre_idx[2]) * s / ax) ** 2) <= 1.0
        sub_hu = hu[sl]
        region = (ell & (sub_hu >= lo_hu) & (sub_hu <= hi_hu) & t.body[sl] & ~t.bone[sl]
                  & ~t.lungs[sl] & ~kidneys[sl] & ~exclude[sl])
        if region.any():
            out[sl] |= region
            sides.append(name)
    if not out.any():
        return None, "no soft tissue above the kidneys' upper poles"
    return out, (f"estimate ({' and '.join(sides)}): soft tissue ({lo_hu:g}..{hi_hu:g} HU) in "
                 f"a {2 * ax:g} x {2 * ay:g} x {2 * az:g} mm ellipsoid centred {med:g} mm medial, "
                 f"{ant:g} mm anterior and {sup:g} mm above the top of each kidney's upper "
                 "pole; the gland itself is not segmented")
