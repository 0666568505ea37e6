"""Prostate-fossa box (domain.md 3.3) and nodal regions (domain.md 3.4) on the working grid."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.landmarks import PelvisFrame
from imaging.anatomy.model import AnatomyConfig
from imaging.anatomy.tissues import Tissues, bbox, box_dilate, box_erode
from imaging.vocabulary import Landmark, NodalRegion

__all__ = ["REGION_ORDER", "fossa_box", "nodal_regions", "rectum_front"]

REGION_ORDER: tuple[NodalRegion, ...] = tuple(NodalRegion)
"""Index + 1 of each region in the working-grid region volume."""

LM = Landmark
R = NodalRegion


def _per_slice(values: NDArray[np.float64] | None, n: int) -> NDArray[np.float64]:
    """Fill NaN gaps of a per-slice profile with the nearest finite value."""
    if values is None:
        return np.full(n, np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return values.copy()
    idx = np.arange(values.size)
    nearest = ok[np.clip(np.searchsorted(ok, idx), 0, ok.size - 1)]
    prev = ok[np.clip(np.searchsorted(ok, idx) - 1, 0, ok.size - 1)]
    pick = np.where(np.abs(prev - idx) < np.abs(nearest - idx), prev, nearest)
    return values[pick]


def rectum_front(hu: NDArray[np.float32], t: Tissues, grid: WorkGrid, frame: PelvisFrame,
                 bladder: NDArray[np.bool_] | None, rectum: NDArray[np.bool_] | None = None,
                 *, config: AnatomyConfig) -> tuple[NDArray[np.float64], str]:
    """Per slice, the y (mm) of the anterior rectal wall at the fossa's levels (NaN: not seen).

    RTOG's posterior border of the prostate fossa is the anterior rectal wall. With a model
    provider's rectum mask it is that mask's front near the midline. Otherwise, on each slice of
    the fossa's z range the rectum is looked for on CT as what it is there: a round structure of
    soft tissue, stool or gas (-30 to 200 HU, or <= -400 HU) lying in the mesorectal fat in front
    of the sacrum / coccyx. The slice's candidates (body, not bone, not the bladder or the voxel
    around it) are split into 2D components; the rectum is the most posterior one whose centre
    lies within 30 mm of the midline and ``rectum_search_mm`` in front of the sacrum / coccyx,
    whose extent is at most ``rectum_max_width_mm`` both ways (the pelvic-floor muscles run on
    into the side walls, the bladder base and a prostate bed touching the rectum make one wider
    piece, and that slice keeps the default border), and whose area is that of a tube at least
    15 mm across; and the slices' pieces must overlap from slice to slice over at least
    ``rectum_min_length_mm`` (a tube, not a recurrence beside the bladder). Its front is the
    anterior wall. Slices between two found ones take the nearer's value; outside them,
    nothing.
    """
    n = grid.shape[0]
    front = np.full(n, np.nan)
    xs = grid.x_mm()
    ys = grid.y_mm()
    s = grid.spacing_mm
    mid = np.abs(xs - frame.x_mid_mm) <= config.rectum_midline_mm
    if rectum is not None and rectum.any():
        in_rows: NDArray[np.bool_] = np.any(rectum[:, :, mid], axis=2)
        has = np.any(in_rows, axis=1)
        front[has] = ys[np.argmax(in_rows[has], axis=1)]
        return front, "front of the provider's rectum mask near the midline"
    back = _per_slice(frame.sacrum_front_y_mm, n)
    sup = frame.landmarks[LM.PUBIC_SYMPHYSIS_SUPERIOR].position_mm
    inf = frame.landmarks[LM.PUBIC_SYMPHYSIS_INFERIOR].position_mm
    if sup is None or inf is None or not np.isfinite(back).any():
        return front, "no symphysis or sacrum to search between"
    zs = grid.z_mm()
    ks = np.flatnonzero((zs >= inf[2] - config.fossa_below_symphysis_mm)
                        & (zs <= sup[2] + config.fossa_above_symphysis_mm))
    if ks.size == 0:
        return front, "the fossa's levels are not in the CT"
    sl = slice(int(ks[0]), int(ks[-1]) + 1)
    cand = (t.body[sl] & ~t.bone[sl] & ~t.lungs[sl]
            & (((hu[sl] >= -30.0) & (hu[sl] <= 200.0)) | (hu[sl] <= -400.0)))
    if bladder is not None:
        cand &= ~box_dilate(bladder[sl], 1)
    # the search window (plus a rectum's width around it), labelled slice by slice in one call
    # (no connectivity along z); a piece touching the window's edge runs on outside it
    max_px = config.rectum_max_width_mm / s
    centre_mm = 30.0  # the rectum's centre lies within this of the midline
    reach = centre_mm + config.rectum_max_width_mm
    cols = np.flatnonzero(np.abs(xs - frame.x_mid_mm) <= reach)
    back_k = back[ks]
    rows = np.flatnonzero((ys >= np.nanmin(back_k) - config.rectum_search_mm
                           - config.rectum_max_width_mm) & (ys <= np.nanmax(back_k) + s))
    if cols.size < 3 or rows.size < 3:
        return front, "the search window in front of the sacrum is outside the CT"
    win = (slice(None), slice(int(rows[0]), int(rows[-1]) + 1),
           slice(int(cols[0]), int(cols[-1]) + 1))
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = True
    lab, n_c = ndi.label(cand[win], structure=plane)
    if n_c == 0:
        return front, "no soft tissue or gas in front of the sacrum at the fossa's levels"
    boxes = ndi.find_objects(lab)
    k0, j0, j1, i0, i1 = (np.array([b[a].start if e == 0 else b[a].stop for b in boxes])
                          for a, e in ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1)))
    flat = lab.ravel()
    size = np.bincount(flat, minlength=n_c + 1)[1:].astype(np.float64)
    jj, ii = np.indices(lab.shape[1:])
    jw = np.broadcast_to(jj, lab.shape).ravel()
    iw = np.broadcast_to(ii, lab.shape).ravel()
    cy = ys[rows[0]] + s * np.bincount(flat, jw, minlength=n_c + 1)[1:] / size
    cx = xs[cols[0]] + s * np.bincount(flat, iw, minlength=n_c + 1)[1:] / size
    h, w = lab.shape[1:]
    back_c = back[ks[k0]]
    ok = ((j1 - j0 <= max_px) & (i1 - i0 <= max_px) & (size >= np.pi * (7.5 / s) ** 2)
          & (j0 > 0) & (j1 < h) & (i0 > 0) & (i1 < w)
          & (np.abs(cx - frame.x_mid_mm) <= centre_mm)
          & (cy >= back_c - config.rectum_search_mm) & (cy <= back_c))
    # per slice the most posterior such piece; its front row is the anterior wall
    pick = np.zeros(ks.size, dtype=np.int64)  # label + 1 of the slice's piece, 0 for none
    for c in np.flatnonzero(ok)[np.argsort(cy[ok], kind="stable")]:
        pick[k0[c]] = c + 1
    # the rectum is a tube: only runs of consecutive slices whose pieces overlap in-plane,
    # at least rectum_min_length_mm long (a fossa recurrence beside the bladder is a round
    # piece too, on a few slices)
    has = pick > 0
    chosen = has[:, None, None] & (lab == pick[:, None, None])
    linked = np.zeros(ks.size, dtype=bool)
    linked[1:] = np.any(chosen[1:] & chosen[:-1], axis=(1, 2))
    run = np.cumsum(has & ~linked) * has  # run number of each slice's piece, 0 for none
    keep = has & (np.bincount(run)[run] >= config.rectum_min_length_mm / s)
    front[ks[keep]] = ys[rows[0] + j0[pick[keep] - 1]]
    found = np.flatnonzero(np.isfinite(front))
    if found.size == 0:
        return front, "no rectum seen between the fossa and the sacrum"
    inside = slice(int(found[0]), int(found[-1]) + 1)
    front[inside] = _per_slice(front[inside], inside.stop - inside.start)
    return front, (f"rectum seen on CT on {found.size} slice(s) (a round soft-tissue, stool or "
                   f"gas structure <= {config.rectum_max_width_mm:g} mm wide in the mesorectal "
                   "fat in front of the sacrum)")


def fossa_box(t: Tissues, grid: WorkGrid, frame: PelvisFrame,
              bladder: NDArray[np.bool_] | None, *,
              config: AnatomyConfig,
              rectum_front_mm: NDArray[np.float64] | None = None
              ) -> tuple[NDArray[np.bool_] | None, str]:
    """The RTOG-based prostate-fossa region, or None with the reason."""
    sup = frame.landmarks[LM.PUBIC_SYMPHYSIS_SUPERIOR].position_mm
    inf = frame.landmarks[LM.PUBIC_SYMPHYSIS_INFERIOR].position_mm
    if sup is None or inf is None:
        return None, "pubic symphysis not located: " + (
            frame.landmarks[LM.PUBIC_SYMPHYSIS_SUPERIOR].reason)
    zz = grid.z_mm()[:, None, None]
    yy = grid.y_mm()[None, :, None]
    xx = grid.x_mm()[None, None, :]
    half = frame.obturator_half_width_mm
    half_w = 30.0 if half is None else float(np.clip(half - config.fossa_obturator_internus_mm,
                                                     15.0, 45.0))
    y_ant = frame.symphysis_back_y_mm if frame.symphysis_back_y_mm is not None else sup[1]
    back = _per_slice(frame.sacrum_front_y_mm, grid.shape[0])
    k_lo = np.searchsorted(grid.z_mm(), inf[2] - config.fossa_below_symphysis_mm)
    finite = np.isfinite(back)
    if not finite.any():
        return None, "no sacrum / coccyx found to bound the fossa posteriorly"
    y_post = back - config.fossa_rectum_allowance_mm
    walls = 0
    if rectum_front_mm is not None:
        seen = np.isfinite(rectum_front_mm) & (rectum_front_mm < y_post)
        walls = int(seen.sum())
        y_post = np.where(seen, rectum_front_mm, y_post)
    y_post = y_post[:, None, None]
    box = ((zz >= inf[2] - config.fossa_below_symphysis_mm)
           & (zz <= sup[2] + config.fossa_above_symphysis_mm)
           & (yy >= y_ant) & (yy <= y_post) & (np.abs(xx - frame.x_mid_mm) <= half_w))
    del k_lo
    box &= t.body & ~t.bone
    reason = (f"RTOG box: z from {inf[2] - config.fossa_below_symphysis_mm:.0f} to "
              f"{sup[2] + config.fossa_above_symphysis_mm:.0f} mm, half-width {half_w:.0f} mm")
    if walls:
        reason += f", posterior border at the anterior rectal wall on {walls} slice(s)"
    if bladder is not None and bladder.any():
        r = max(1, round(config.fossa_bladder_wall_mm / grid.spacing_mm))
        bb = bbox(bladder, pad=1)
        if bb is not None:
            lumen = np.zeros_like(bladder)
            lumen[bb] = box_erode(bladder[bb], r)
            box &= ~lumen
        reason += f", bladder lumen removed (wall band {config.fossa_bladder_wall_mm:g} mm kept)"
    return box, reason


def nodal_regions(t: Tissues, grid: WorkGrid, frame: PelvisFrame, *,
                  config: AnatomyConfig) -> tuple[NDArray[np.uint8], dict[NodalRegion, str]]:
    """Exclusive nodal-region index volume (0 = none, else REGION_ORDER index + 1)."""
    reasons: dict[NodalRegion, str] = {}
    code = {r: i + 1 for i, r in enumerate(REGION_ORDER)}
    soft = t.body & ~t.bone & ~t.lungs
    out = np.where(soft, code[R.OTHER_EXTRAPELVIC], 0).astype(np.uint8)
    reasons[R.OTHER_EXTRAPELVIC] = "soft tissue outside every other region"
    zs, ys, xs = grid.z_mm(), grid.y_mm(), grid.x_mm()
    zz, yy, xx = zs[:, None, None], ys[None, :, None], xs[None, None, :]
    dx = xx - frame.x_mid_mm
    left = dx >= 0
    spine = _per_slice(frame.spine_front_y_mm, zs.size)[:, None, None]

    def put(region: NodalRegion, where: NDArray[np.bool_], reason: str,
            ks: slice = slice(None)) -> None:
        """Label the soft tissue of ``where``, which covers the slices ``ks`` of the grid."""
        sub = out[ks]
        sub[np.broadcast_to(where, sub.shape) & soft[ks]] = code[region]
        reasons[region] = reason

    def slab(lo: float, hi: float) -> slice:
        """Slices whose z lies in [lo, hi] (mm)."""
        k = np.flatnonzero((zs >= lo) & (zs <= hi))
        return slice(int(k[0]), int(k[-1]) + 1) if k.size else slice(0, 0)

    dz = frame.diaphragm_z_mm
    if dz is not None:
        ks = slab(np.nextafter(dz, np.inf), np.inf)
        put(R.SUPRADIAPHRAGMATIC, np.ones((1, 1, 1), dtype=bool),
            f"above the diaphragm (z > {dz:.0f} mm)", ks)
    z_ab = frame.z(LM.AORTIC_BIFURCATION)
    cib = [frame.z(lm) for lm in (LM.COMMON_ILIAC_BIFURCATION_LEFT,
                                 LM.COMMON_ILIAC_BIFURCATION_RIGHT)]
    cib_found = [c for c in cib if c is not None]
    z_cib = float(np.mean(cib_found)) if cib_found else None
    if z_ab is not None and np.isfinite(spine).any():
        upper = dz if dz is not None else np.inf
        ks = slab(np.nextafter(z_ab, np.inf), upper)
        sp = spine[ks]
        retro = (np.abs(dx) <= config.retroperitoneal_half_width_mm) & (yy >= sp - 60.0) & (
            yy <= sp + 30.0)
        put(R.RETROPERITONEAL, retro, "para-aortic / paracaval: above the aortic bifurcation, "
            "in front of and beside the spine, below the diaphragm", ks)
    heads = [frame.landmarks[lm].position_mm for lm in (LM.FEMORAL_HEAD_LEFT,
                                                         LM.FEMORAL_HEAD_RIGHT)]
    heads_found = [h for h in heads if h is not None]
    if z_ab is None or z_cib is None or not heads_found:
        why = "pelvic landmarks missing (aortic / common-iliac bifurcation or femoral heads)"
        for r in R:
            reasons.setdefault(r, why)
        return out, reasons
    fh = np.mean(np.array(heads_found), axis=0)
    sym_inf = frame.z(LM.PUBIC_SYMPHYSIS_INFERIOR) or fh[2] - 55.0
    prom = frame.landmarks[LM.SACRAL_PROMONTORY].position_mm
    prom_z = prom[2] if prom is not None else z_cib + 14.0
    pelvis_floor = min(sym_inf - 20.0, fh[2] + config.inguinal_top_rel_femoral_head_mm)
    lateral_limit = 150.0
    # common iliac: between the two bifurcations
    ks = slab(np.nextafter(z_cib, np.inf), z_ab)
    ci = (np.abs(dx) <= lateral_limit) & (yy >= spine[ks] - 90.0)
    put(R.COMMON_ILIAC_LEFT, ci & left, "between the aortic and common-iliac bifurcations, left",
        ks)
    put(R.COMMON_ILIAC_RIGHT, ci & ~left, "between the aortic and common-iliac bifurcations, "
        "right", ks)
    # true pelvis below the common-iliac bifurcation: anterior (external iliac), posterior
    # (internal iliac), and the obturator band at acetabular level between them
    z_groin = fh[2] + config.inguinal_top_rel_femoral_head_mm
    ks = slab(np.nextafter(z_groin, np.inf), z_cib)
    pelvis = np.abs(dx) <= lateral_limit
    z_obt_top = fh[2] + config.obturator_above_femoral_head_mm
    y_split = fh[1] - config.external_internal_split_mm
    y_obt_front = fh[1] - config.obturator_front_mm
    y_obt_back = fh[1] + config.obturator_back_mm
    low = zz[ks] <= z_obt_top
    ext = pelvis & np.where(low, yy < y_obt_front, yy < y_split)
    obt = pelvis & low & (yy >= y_obt_front) & (yy < y_obt_back)
    intl = pelvis & ~ext & ~obt
    put(R.EXTERNAL_ILIAC_LEFT, ext & left, "below the common-iliac bifurcation, anterolateral",
        ks)
    put(R.EXTERNAL_ILIAC_RIGHT, ext & ~left, "below the common-iliac bifurcation, anterolateral",
        ks)
    put(R.INTERNAL_ILIAC_LEFT, intl & left, "below the common-iliac bifurcation, posterolateral",
        ks)
    put(R.INTERNAL_ILIAC_RIGHT, intl & ~left, "below the common-iliac bifurcation, "
        "posterolateral", ks)
    put(R.OBTURATOR_LEFT, obt & left, "acetabular level, pelvic side wall", ks)
    put(R.OBTURATOR_RIGHT, obt & ~left, "acetabular level, pelvic side wall", ks)
    back = _per_slice(frame.sacrum_front_y_mm, zs.size)[:, None, None]
    s3 = prom_z - config.promontory_to_s3_mm
    ks = slab(s3, prom_z)
    pre = (np.abs(dx) <= config.presacral_half_width_mm) & (
        yy >= back[ks] - config.presacral_depth_mm) & (yy <= back[ks] + 5.0)
    put(R.PRESACRAL, pre, "within 20 mm of the midline, in front of S1-S3", ks)
    ks = slab(pelvis_floor, np.nextafter(s3, -np.inf))
    peri = (np.abs(dx) <= config.perirectal_half_width_mm) & (
        yy >= back[ks] - config.perirectal_depth_mm) & (yy <= back[ks] + 5.0)
    put(R.PERIRECTAL, peri, "mesorectum: midline, in front of the sacrum / coccyx below S3", ks)
    ks = slab(z_groin - config.inguinal_depth_mm, z_groin)
    ing = (yy < fh[1] - config.inguinal_anterior_mm) & (
        np.abs(dx) >= config.inguinal_min_lateral_mm)
    put(R.INGUINAL_LEFT, ing & left, "groin: below the inguinal ligament level, anterior", ks)
    put(R.INGUINAL_RIGHT, ing & ~left, "groin: below the inguinal ligament level, anterior", ks)
    # the true pelvis goes on below the groin level down to the pelvic floor (the symphysis'
    # lower edge): behind the symphysis and inside the obturator internus, the obturator and
    # internal-iliac nodes of the lower pelvic side wall (the groin, in front, stays inguinal)
    if config.pelvic_floor_regions and sym_inf < z_groin:
        ks = slab(np.nextafter(sym_inf, np.inf), z_groin)
        # only what no pelvic region took (perirectal, presacral keep theirs), and the groin
        free = np.isin(out, [code[R.OTHER_EXTRAPELVIC], code[R.INGUINAL_LEFT],
                             code[R.INGUINAL_RIGHT]])
        half = frame.obturator_half_width_mm
        inner = np.abs(dx) <= (half if half is not None else config.retroperitoneal_half_width_mm)
        if frame.symphysis_back_y_mm is not None:
            inner = inner & (yy >= frame.symphysis_back_y_mm)
        low_obt = inner & (yy >= y_obt_front) & (yy < y_obt_back)
        low_int = inner & (yy >= y_obt_back)
        for region, where, side in ((R.OBTURATOR_LEFT, low_obt, left),
                                    (R.OBTURATOR_RIGHT, low_obt, ~left),
                                    (R.INTERNAL_ILIAC_LEFT, low_int, left),
                                    (R.INTERNAL_ILIAC_RIGHT, low_int, ~left)):
            sub = out[ks]
            sub[np.broadcast_to(where & side, sub.shape) & soft[ks] & free[ks]] = code[region]
        for region in (R.OBTURATOR_LEFT, R.OBTURATOR_RIGHT, R.INTERNAL_ILIAC_LEFT,
                       R.INTERNAL_ILIAC_RIGHT):
            reasons[region] += (" (down to the pelvic floor behind the symphysis, inside the "
                                "obturator internus)")
    return out, reasons
