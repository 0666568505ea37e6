"""Bony landmarks on the working grid (domain.md 3.2, 3.4).

Every landmark comes back as a :class:`~imaging.anatomy.model.LandmarkFinding`: a position in
LPS mm with a confidence and the method used, or ``None`` with the reason it was not found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.model import AnatomyConfig, LandmarkFinding
from imaging.anatomy.tissues import Tissues, bbox
from imaging.vocabulary import Landmark

__all__ = ["PelvisFrame", "find_landmarks"]

LM = Landmark


@dataclass(slots=True)
class PelvisFrame:
    """Landmarks plus the derived geometry the fossa box and nodal regions need."""

    landmarks: dict[Landmark, LandmarkFinding]
    x_mid_mm: float
    flags: list[str] = field(default_factory=list)
    sacrum_front_y_mm: NDArray[np.float64] | None = None  # per working slice, NaN where none
    spine_front_y_mm: NDArray[np.float64] | None = None
    obturator_half_width_mm: float | None = None
    symphysis_back_y_mm: float | None = None
    diaphragm_z_mm: float | None = None
    z0_mm: float = 0.0
    spacing_mm: float = 1.0

    def z(self, landmark: Landmark) -> float | None:
        """LPS z of a found landmark, else None."""
        pos = self.landmarks[landmark].position_mm
        return None if pos is None else pos[2]


def _missing(reason: str) -> LandmarkFinding:
    return LandmarkFinding(position_mm=None, confidence=0.0, reason=reason, method="none")


def _found(xyz: NDArray[np.float64] | tuple[float, float, float], confidence: float,
           method: str, reason: str = "") -> LandmarkFinding:
    x, y, z = (float(v) for v in xyz)
    return LandmarkFinding(position_mm=(x, y, z), confidence=confidence, method=method,
                           reason=reason or f"located from {method}")


def _midline(body: NDArray[np.bool_], grid: WorkGrid) -> float:
    counts = body.sum(axis=(0, 1)).astype(np.float64)
    if counts.sum() == 0:
        return float(grid.x_mm().mean())
    return float((counts * grid.x_mm()).sum() / counts.sum())


def _block_reduce_any(mask: NDArray[np.bool_], f: int) -> NDArray[np.bool_]:
    """True where at least half of a block of f x f x f voxels is (blocks from index 0).

    The count is summed over the f^3 strided sub-grids (exact integers; a float mean over a
    6-D view of the blocks is several times slower).
    """
    nz, ny, nx = (s // f * f for s in mask.shape)
    m = mask[:nz, :ny, :nx]
    count = np.zeros((nz // f, ny // f, nx // f), dtype=np.int32)
    for a in range(f):
        for b in range(f):
            for c in range(f):
                count += m[a::f, b::f, c::f]
    return np.asarray(2 * count >= f**3, dtype=bool)


# The femoral heads lie 150-550 mm below the diaphragm (the lung bases' 20 %-area level; 270-335
# mm in the synthetic cohort, about 300-380 mm in adults): the search is limited to that band.
_HIPS_BELOW_DIAPHRAGM_MM = (150.0, 550.0)


def _femoral_heads(t: Tissues, grid: WorkGrid, x_mid: float, diaphragm_z: float | None,
                   frame: PelvisFrame, config: AnatomyConfig) -> None:
    """Left and right femoral heads: deepest points of the lateral bone below the diaphragm.

    The search band hangs from the diaphragm, not from the lowest lung voxel: air the lung
    rule takes in by mistake (a sheet of air trapped between the back and a couch, enclosed
    in the body on a coarse CT) can run far below the lung bases, and anchored on it the band
    slid below the hips, into the femoral shafts.
    """
    s = grid.spacing_mm
    xs, zs = grid.x_mm(), grid.z_mm()
    zlo, zhi = zs[0], zs[-1]
    if diaphragm_z is not None:
        zhi = min(zhi, diaphragm_z - _HIPS_BELOW_DIAPHRAGM_MM[0])
        zlo = max(zlo, diaphragm_z - _HIPS_BELOW_DIAPHRAGM_MM[1])
    kz = np.flatnonzero((zs >= zlo) & (zs <= zhi))
    if kz.size < 3 or not t.bone[kz[0]:kz[-1] + 1].any():
        for lm in (LM.FEMORAL_HEAD_LEFT, LM.FEMORAL_HEAD_RIGHT):
            frame.landmarks[lm] = _missing(
                "the CT does not reach the hips (no bone below the lungs)")
        return
    sub = t.bone[kz[0]:kz[-1] + 1]
    f = max(1, round(6.0 / s))
    coarse = _block_reduce_any(sub, f) if f > 1 else sub
    # on the bone's box with a background rim: every bone voxel's nearest background voxel
    # lies in it (the rim is nearer than anything beyond), so the distances are the same
    dist = np.zeros(coarse.shape)
    cbox = bbox(coarse, pad=1)
    if cbox is not None:
        dist[cbox] = ndi.distance_transform_edt(coarse[cbox]) * (s * f)
    cx = xs[: coarse.shape[2] * f].reshape(-1, f).mean(axis=1) if f > 1 else xs
    results: dict[str, tuple[NDArray[np.float64], float] | None] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lateral = sign * (cx - x_mid)
        band = (lateral > 40.0) & (lateral < 170.0)
        d = np.where(band[None, None, :], dist, 0.0)
        if d.max() < config.femoral_head_min_radius_mm:
            results[side] = None
            continue
        kc, jc, ic = np.unravel_index(int(np.argmax(d)), d.shape)
        # refine on the working grid: local distance maximum in a +-18 mm box
        k0, j0, i0 = kc * f + f // 2 + kz[0], jc * f + f // 2, ic * f + f // 2
        r = round(18.0 / s)
        sl = tuple(slice(max(c - r, 0), c + r + 1) for c in (k0, j0, i0))
        local = ndi.distance_transform_edt(np.pad(t.bone[sl], 1))[1:-1, 1:-1, 1:-1]
        peak = np.array(np.unravel_index(int(np.argmax(local)), local.shape), dtype=float)
        top = local.max()
        near = local >= top - 1.0
        centre = np.array(ndi.center_of_mass(near)) if near.any() else peak
        zyx = centre + np.array([sl[0].start, sl[1].start, sl[2].start])
        pos = grid.to_world(zyx)
        pos[0] += sign * config.femoral_head_lateral_correction_mm
        results[side] = (pos, float(top * s))
    # hip prostheses: metal in the hip region replaces the femoral head
    if t.metal.any():
        mlab, mn = cc3d.connected_components(t.metal, connectivity=26, return_N=True)
        for lab in range(1, mn + 1):
            m = mlab == lab
            zz, yy, xx = np.nonzero(m)
            if zz.size * s**3 / 1000.0 < 5.0:
                continue
            side = "left" if xs[xx].mean() > x_mid else "right"
            if abs(xs[xx].mean() - x_mid) < 40.0:
                continue
            frame.flags.append(f"hip_prosthesis_{side}")
            topz = zz.max()
            head = zz >= topz - round(30.0 / s)
            zyx = np.array([zz[head].mean(), yy[head].mean(), xx[head].mean()])
            results[side] = (grid.to_world(zyx), -1.0)
    both = [r for r in (results["left"], results["right"]) if r is not None]
    for side, lm in (("left", LM.FEMORAL_HEAD_LEFT), ("right", LM.FEMORAL_HEAD_RIGHT)):
        res = results[side]
        if res is None:
            frame.landmarks[lm] = _missing(f"no thick bone lateral to the midline on the {side}")
            continue
        pos, radius = res
        conf = 0.9
        reason = f"deepest point of the {side} hip bone (radius {radius:.0f} mm)"
        method = "bone"
        if radius < 0:
            conf, method = 0.6, "metal"
            reason = f"hip prosthesis on the {side}: centre of the metal head"
        if len(both) == 2 and abs(both[0][0][2] - both[1][0][2]) > 30.0:
            conf = min(conf, 0.4)
            reason += "; left and right heads differ by > 30 mm in z"
        frame.landmarks[lm] = _found(pos, conf, method, reason)


def _symphysis(t: Tissues, grid: WorkGrid, frame: PelvisFrame) -> None:
    heads = [frame.landmarks[lm].position_mm for lm in (LM.FEMORAL_HEAD_LEFT,
                                                         LM.FEMORAL_HEAD_RIGHT)]
    heads_found = [h for h in heads if h is not None]
    if not heads_found:
        for lm in (LM.PUBIC_SYMPHYSIS_SUPERIOR, LM.PUBIC_SYMPHYSIS_INFERIOR):
            frame.landmarks[lm] = _missing("femoral heads not found, so no pelvis to search")
        return
    fh = np.mean(np.array(heads_found), axis=0)
    xs, ys, zs = grid.x_mm(), grid.y_mm(), grid.z_mm()
    zsel = (zs >= fh[2] - 70.0) & (zs <= fh[2] + 30.0)
    xsel = np.abs(xs - frame.x_mid_mm) <= 10.0
    ysel = ys < fh[1] - 15.0
    strip = t.bone[np.ix_(zsel, ysel, xsel)]
    present = strip.any(axis=(1, 2))
    if not present.any():
        for lm in (LM.PUBIC_SYMPHYSIS_SUPERIOR, LM.PUBIC_SYMPHYSIS_INFERIOR):
            frame.landmarks[lm] = _missing("no midline bone anterior to the femoral heads")
        return
    zsub = zs[zsel]
    # the longest run of slices with anterior midline bone
    ks = np.flatnonzero(present)
    runs = np.split(ks, np.flatnonzero(np.diff(ks) > 1) + 1)
    run = max(runs, key=len)
    lo, hi = run[0], run[-1]
    s = grid.spacing_mm
    ysub = ys[ysel]
    jj_run = np.nonzero(strip[lo:hi + 1])[1]
    for lm, k in ((LM.PUBIC_SYMPHYSIS_SUPERIOR, hi), (LM.PUBIC_SYMPHYSIS_INFERIOR, lo)):
        y = float(ysub[jj_run].mean())
        z = float(zsub[k]) + (s / 2 if k == hi else -s / 2) * 0.0
        conf = 0.85 if len(run) * s >= 20.0 else 0.5
        frame.landmarks[lm] = _found((frame.x_mid_mm, y, z), conf, "bone",
                                     f"{'top' if k == hi else 'bottom'} of the midline anterior "
                                     "pelvic bone")
    jj = np.nonzero(strip[lo:hi + 1].any(axis=(0, 2)))[0]
    frame.symphysis_back_y_mm = float(ysub[jj].max())


def _sacrum(t: Tissues, grid: WorkGrid, frame: PelvisFrame, fh_z: float, fh_y: float,
            config: AnatomyConfig) -> None:
    xs, ys, zs = grid.x_mm(), grid.y_mm(), grid.z_mm()
    s = grid.spacing_mm
    xsel = np.abs(xs - frame.x_mid_mm) <= 12.0
    ysel = ys > fh_y - 40.0
    strip = t.bone[:, ysel, :][:, :, xsel]
    yv = ys[ysel]
    has = strip.any(axis=2)  # (z, y)
    front = np.where(np.any(has, axis=1), yv[np.argmax(has, axis=1)], np.nan)
    frame.sacrum_front_y_mm = front
    frame.spine_front_y_mm = front
    # vertebral-body bone in the strip: from the anterior surface 25 mm back
    body_depth = np.zeros(zs.size)
    ok = np.isfinite(front)
    if ok.any():
        yy = yv[None, :]
        inbody = has & (yy >= front[:, None]) & (yy <= front[:, None] + 25.0)
        body_depth = inbody.sum(axis=1) * s
    start = int(np.searchsorted(zs, fh_z))
    stop = int(np.searchsorted(zs, fh_z + 200.0))
    seg = body_depth[start:stop]
    if seg.size < 5 or not (seg > 0).any():
        frame.landmarks[LM.SACRAL_PROMONTORY] = _missing(
            "no midline posterior bone above the femoral heads")
        return
    # first gap (intervertebral disc) above a bony run of >= 30 mm: top of S1 below it
    present = seg >= 6.0
    idx = np.flatnonzero(present)
    first = idx[0]
    gaps = np.flatnonzero(~present[first:]) + first
    top = None
    for g in gaps:  # few candidates (one per disc); scalar work only
        run = present[first:g]
        if run.sum() * s >= 30.0:
            top = g - 1
            break
    conf, method = 0.8, "bone"
    reason = "top of the sacrum below the L5/S1 disc, anterior surface"
    if top is None:
        # no disc gap (fused or thin discs): the promontory is where the anterior surface,
        # sloping forward up the sacrum, turns into the upright lumbar column
        crest_z = [frame.z(lm) for lm in (LM.ILIAC_CREST_LEFT, LM.ILIAC_CREST_RIGHT)]
        crest_found = [c for c in crest_z if c is not None]
        prior = None
        if crest_found:
            z_prior = float(np.mean(crest_found)) - config.intercristal_to_promontory_mm
            prior = (z_prior - zs[start]) / s
        seg_front = front[start:stop]
        step = np.diff(seg_front)
        jumps = np.flatnonzero(np.isfinite(step) & (step >= config.lumbosacral_step_mm))
        if prior is not None:
            jumps = jumps[np.abs(jumps - prior) * s <= config.promontory_search_mm]
        if jumps.size:
            # the lumbosacral angle: going up, the surface steps back from S1 to L5
            pick = jumps[np.argmin(np.abs(jumps - prior))] if prior is not None else jumps[0]
            k = start + int(pick)
            frame.landmarks[LM.SACRAL_PROMONTORY] = _found(
                (frame.x_mid_mm, float(front[k]), float(zs[k])), 0.7, "bone",
                "no L5/S1 disc gap: anterior-most point of S1 where the spine surface steps "
                "back to L5")
            return
        top = _kink(seg_front, s, prior)
        conf, reason = 0.6, ("no L5/S1 disc gap: where the forward-sloping sacral surface meets "
                             "the upright lumbar column")
    if top is None:
        frame.landmarks[LM.SACRAL_PROMONTORY] = _missing(
            "neither an L5/S1 disc gap nor a sacral slope found in the midline spine above the "
            "femoral heads")
        return
    k = start + top
    above = front[k + 1:k + 1 + max(2, round(12.0 / s))]
    y = float(np.nanmin(above)) if np.isfinite(above).any() else front[k]
    frame.landmarks[LM.SACRAL_PROMONTORY] = _found((frame.x_mid_mm, float(y), float(zs[k])),
                                                   conf, method, reason)


def _kink(front: NDArray[np.float64], spacing: float, prior: float | None = None) -> int | None:
    """First index from which the anterior spine surface stays upright for >= 24 mm."""
    n = max(2, round(24.0 / spacing))
    if front.size < n + 3 or not np.isfinite(front).any():
        return None
    f = np.where(np.isfinite(front), front, np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(f, n)
    # inf - inf (NaN) arises only where a window has a slice without spine, and such windows
    # are dropped by the finiteness test below: no warning for them
    with np.errstate(invalid="ignore"):
        upright = (windows.max(axis=1) - windows.min(axis=1)) <= 4.0
        moving_below = np.zeros_like(upright)
        moving_below[2:] = (f[:-n - 1][: upright.size - 2] - f[2:upright.size]) >= 4.0
    cand = np.flatnonzero(upright & moving_below & np.isfinite(windows).all(axis=1))
    if cand.size == 0:
        return None
    if prior is not None:
        return int(cand[np.argmin(np.abs(cand - prior))]) - 1
    return int(cand[0]) - 1


def _crests(t: Tissues, grid: WorkGrid, frame: PelvisFrame) -> None:
    xs, zs = grid.x_mm(), grid.z_mm()
    s = grid.spacing_mm
    for side, sign, lm, head in (("left", 1.0, LM.ILIAC_CREST_LEFT, LM.FEMORAL_HEAD_LEFT),
                                 ("right", -1.0, LM.ILIAC_CREST_RIGHT, LM.FEMORAL_HEAD_RIGHT)):
        hp = frame.landmarks[head].position_mm
        if hp is None:
            frame.landmarks[lm] = _missing(f"{side} femoral head not found")
            continue
        lateral = sign * (xs - frame.x_mid_mm)
        band = (lateral > 45.0) & (lateral < 200.0)
        zsel = (zs >= hp[2] - 60.0) & (zs <= hp[2] + 300.0)
        # both selections are runs (z and the lateral distance grow along their axes): the
        # bone is labelled in their box only, with the patch and results offset by its corner
        kb, ib = np.flatnonzero(zsel), np.flatnonzero(band)
        if kb.size == 0 or ib.size == 0:
            frame.landmarks[lm] = _missing(f"no {side} pelvic bone next to the femoral head")
            continue
        kc, ic = int(kb[0]), int(ib[0])
        sub = t.bone[kc:kc + kb.size, :, ic:ic + ib.size]
        lab = cc3d.connected_components(np.ascontiguousarray(sub), connectivity=26)
        k0, j0, i0 = grid.to_index(hp)
        r = round(30.0 / s)
        patch = lab[max(k0 - r - kc, 0):max(k0 + r + 1 - kc, 0), max(j0 - r, 0):j0 + r + 1,
                    max(i0 - r - ic, 0):max(i0 + r + 1 - ic, 0)]
        ids = np.bincount(patch.ravel(), minlength=1)
        ids[0] = 0
        if ids.max() == 0:
            frame.landmarks[lm] = _missing(f"no {side} pelvic bone next to the femoral head")
            continue
        comp = lab == int(np.argmax(ids))
        zz = np.flatnonzero(comp.any(axis=(1, 2)))
        ktop = zz[-1]
        jj, ii = np.nonzero(comp[ktop])
        pos = grid.to_world(np.array([ktop + kc, jj.mean(), (ii + ic).mean()]))
        if (pos[2] - hp[2]) < 60.0:
            frame.landmarks[lm] = _missing(f"{side} ilium ends < 60 mm above the femoral head: "
                                           "iliac wing not in the CT or not separable")
            continue
        frame.landmarks[lm] = _found(pos, 0.8, "bone", f"cranial-most point of the {side} ilium")


def find_landmarks(t: Tissues, grid: WorkGrid, *, config: AnatomyConfig) -> PelvisFrame:
    """Locate the bony landmarks; vessel-based ones are estimated here and may be replaced.

    Returns a :class:`PelvisFrame` whose ``landmarks`` has every :class:`Landmark`.
    """
    x_mid = _midline(t.body, grid)
    frame = PelvisFrame(landmarks={}, x_mid_mm=x_mid, z0_mm=grid.origin_mm[2],
                        spacing_mm=grid.spacing_mm)
    zs = grid.z_mm()
    lung_z = np.flatnonzero(t.lungs.any(axis=(1, 2)))
    if lung_z.size:
        # diaphragm: lowest slice where the lungs cover a fifth of their largest area
        area = t.lungs.sum(axis=(1, 2))
        big = np.flatnonzero(area >= 0.2 * area.max())
        frame.diaphragm_z_mm = float(zs[big[0]])
        frame.landmarks[LM.LIVER_DOME] = _found(
            (x_mid - 60.0, float(grid.y_mm().mean()), float(zs[big[0]])), 0.5, "lungs",
            "lowest slice where the lungs reach a fifth of their largest area (dome estimate)")
    else:
        frame.landmarks[LM.LIVER_DOME] = _missing("no lungs in the CT")
    _femoral_heads(t, grid, x_mid, frame.diaphragm_z_mm, frame, config)
    heads = [frame.landmarks[lm].position_mm for lm in (LM.FEMORAL_HEAD_LEFT,
                                                         LM.FEMORAL_HEAD_RIGHT)]
    found = [h for h in heads if h is not None]
    if found:
        fh = np.mean(np.array(found), axis=0)
        if len(found) == 2:
            frame.x_mid_mm = x_mid = float(fh[0])
        _symphysis(t, grid, frame)
        _crests(t, grid, frame)
        _sacrum(t, grid, frame, float(fh[2]), float(fh[1]), config)
        frame.obturator_half_width_mm = _obturator_half_width(t, grid, frame, fh)
    else:
        for lm in (LM.PUBIC_SYMPHYSIS_SUPERIOR, LM.PUBIC_SYMPHYSIS_INFERIOR,
                   LM.SACRAL_PROMONTORY, LM.ILIAC_CREST_LEFT, LM.ILIAC_CREST_RIGHT):
            frame.landmarks[lm] = _missing("the pelvis is not in the CT (no femoral heads)")
        frame.flags.append("pelvis_not_in_ct")
    _promontory_from_crests(frame, config)
    _vessel_estimates(frame, config)
    return frame


def _promontory_from_crests(frame: PelvisFrame, config: AnatomyConfig) -> None:
    """When the spine shows no L5/S1 level, estimate it below the intercristal plane."""
    if frame.landmarks[LM.SACRAL_PROMONTORY].found:
        return
    crests = [frame.landmarks[lm].position_mm for lm in (LM.ILIAC_CREST_LEFT,
                                                          LM.ILIAC_CREST_RIGHT)]
    found = [c for c in crests if c is not None]
    if not found:
        return
    z = float(np.mean([c[2] for c in found])) - config.intercristal_to_promontory_mm
    y = _front_at(frame, z, default=None)
    if y is None:
        return
    why = frame.landmarks[LM.SACRAL_PROMONTORY].reason
    frame.landmarks[LM.SACRAL_PROMONTORY] = _found(
        (frame.x_mid_mm, y, z), 0.35, "intercristal_plane",
        f"{why}; estimated {config.intercristal_to_promontory_mm:g} mm below the "
        "intercristal plane")


def _obturator_half_width(t: Tissues, grid: WorkGrid, frame: PelvisFrame,
                          fh: NDArray[np.float64]) -> float | None:
    """Distance from the midline to the medial acetabular walls, at femoral-head level."""
    xs = grid.x_mm()
    k, j, _ = grid.to_index(tuple(fh))
    row = t.bone[k, max(j - 3, 0):j + 4].any(axis=0)
    out = []
    for sign in (1.0, -1.0):
        lateral = sign * (xs - frame.x_mid_mm)
        cand = np.flatnonzero(row & (lateral > 10.0))
        if cand.size:
            out.append(float(lateral[cand].min()))
    return float(np.mean(out)) if out else None


def _vessel_estimates(frame: PelvisFrame, config: AnatomyConfig) -> None:
    """Aortic and common-iliac bifurcations from the bones (replaced by vessel masks if any)."""
    crests = [frame.landmarks[lm].position_mm for lm in (LM.ILIAC_CREST_LEFT,
                                                          LM.ILIAC_CREST_RIGHT)]
    crests_found = [c for c in crests if c is not None]
    prom = frame.landmarks[LM.SACRAL_PROMONTORY].position_mm
    if crests_found:
        z = float(np.mean([c[2] for c in crests_found])) + \
            config.intercristal_to_aortic_bifurcation_mm
        y = _front_at(frame, z, default=prom[1] if prom else None)
        frame.landmarks[LM.AORTIC_BIFURCATION] = (
            _found((frame.x_mid_mm + config.aortic_bifurcation_left_mm,
                    (y if y is not None else 0.0)
                    - config.aortic_bifurcation_anterior_mm, z), 0.5,
                   "intercristal_plane", "no vessel mask: estimated at the intercristal plane "
                   "(about L4), anterior to the spine") if y is not None
            else _missing("iliac crests found but no spine in front of which to place it"))
    else:
        frame.landmarks[LM.AORTIC_BIFURCATION] = _missing(
            "no vessel mask and no iliac crests to estimate the intercristal plane")
    for lm, sign in ((LM.COMMON_ILIAC_BIFURCATION_LEFT, 1.0),
                     (LM.COMMON_ILIAC_BIFURCATION_RIGHT, -1.0)):
        if prom is None:
            frame.landmarks[lm] = _missing("no vessel mask and no sacral promontory (L5/S1)")
            continue
        lateral = config.common_iliac_bifurcation_lateral_mm
        frame.landmarks[lm] = _found(
            (frame.x_mid_mm + sign * lateral, prom[1] - 10.0,
             prom[2] - config.promontory_to_common_iliac_bifurcation_mm), 0.4,
            "promontory_level", "no vessel mask: estimated just below the sacral promontory "
            f"(L5/S1), {lateral:g} mm from the midline")


def _front_at(frame: PelvisFrame, z: float, default: float | None) -> float | None:
    """Anterior surface y of the midline spine at height z (nearest slice with one)."""
    values = frame.spine_front_y_mm
    if values is None:
        return default
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return default
    k = (z - frame.z0_mm) / frame.spacing_mm
    return float(values[ok[np.argmin(np.abs(ok - k))]])
