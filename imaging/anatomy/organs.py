"""PET-assisted organ masks on the working grid (domain.md 3.1, 2.4).

Bladder: the largest high-SUV component in the midline pelvis, refined by CT water density.
Kidneys, salivary glands, liver and spleen: high-uptake components where anatomy puts them,
refined by CT soft-tissue density. Each comes with a confidence and a reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.landmarks import PelvisFrame
from imaging.anatomy.model import AnatomyConfig
from imaging.anatomy.tissues import (
    Tissues,
    bbox,
    box_close,
    box_dilate,
    box_erode,
    box_open,
    fill_holes,
)
from imaging.vocabulary import AnatomyLabel, Landmark

__all__ = ["OrganResult", "find_organs"]


@dataclass(frozen=True, slots=True)
class OrganResult:
    """One organ mask (or None) with confidence and reason."""

    mask: NDArray[np.bool_] | None
    confidence: float
    reason: str


def _components(mask: NDArray[np.bool_]) -> tuple[NDArray[Any], NDArray[Any]]:
    """26-connected labels and the voxel count of each (index 0: the background)."""
    lab = cc3d.connected_components(mask, connectivity=26)
    # counted over the mask's voxels only: a bincount of every label casts the whole slab
    sizes = np.bincount(lab[mask], minlength=1)
    sizes[0] = mask.size - np.count_nonzero(mask)
    return lab, sizes


def _coords(grid: WorkGrid) -> tuple[NDArray[np.float64], ...]:
    return (grid.z_mm()[:, None, None], grid.y_mm()[None, :, None], grid.x_mm()[None, None, :])


def _grow(seed: NDArray[np.bool_], allowed: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Components of ``allowed`` that touch ``seed``."""
    lab = cc3d.connected_components(allowed, connectivity=6)
    ids = np.unique(lab[seed & allowed])
    ids = ids[ids > 0]
    return np.isin(lab, ids) if ids.size else np.zeros_like(seed)


def _bladder(hu: NDArray[np.float32], pet: NDArray[np.float32] | None, t: Tissues,
             grid: WorkGrid, frame: PelvisFrame, config: AnatomyConfig) -> OrganResult:
    sym = frame.landmarks[Landmark.PUBIC_SYMPHYSIS_SUPERIOR].position_mm
    fh = [frame.landmarks[lm].position_mm for lm in (Landmark.FEMORAL_HEAD_LEFT,
                                                       Landmark.FEMORAL_HEAD_RIGHT)]
    fh_found = [f for f in fh if f is not None]
    if sym is None and not fh_found:
        return OrganResult(None, 0.0, "pelvis not located (no symphysis, no femoral heads)")
    z_ref = sym[2] if sym is not None else float(np.mean([f[2] for f in fh_found]))
    zz, yy, xx = _coords(grid)
    region = (np.abs(xx - frame.x_mid_mm) < 70.0) & (zz > z_ref - 30.0) & (
        zz < z_ref + 130.0) & t.body & ~t.bone
    if sym is not None:
        region &= yy > sym[1] - 10.0
    box = bbox(region, pad=2)
    if box is None:
        return OrganResult(None, 0.0, "the midline pelvis is outside the CT")
    region_b = region[box]
    hu_b = hu[box]
    water = (hu_b >= config.bladder_hu[0]) & (hu_b <= config.bladder_hu[1]) & region_b

    def full(mask_b: NDArray[np.bool_]) -> NDArray[np.bool_]:
        out = np.zeros(region.shape, dtype=bool)
        out[box] = mask_b
        return out

    if pet is not None:
        hot = (pet[box] >= config.bladder_suv) & region_b
        if hot.any():
            lab, sizes = _components(hot)
            sizes[0] = 0
            core = lab == int(np.argmax(sizes))
            r = max(1, round(config.bladder_search_mm / grid.spacing_mm))
            near = box_dilate(core, r) & region_b
            # CT refinement: water-density voxels around the PET core, smoothed
            wet = box_open(water & near, 1)
            grown = _grow(core & wet, wet)
            if not grown.any():
                grown = core
            mask = box_close(grown, 1) & near
            filled = fill_holes(mask)
            if filled.sum() >= 10:
                # urine of the wall's partial-volume voxels: CT says fat or wall, PET says
                # urine; grown only through voxels no hotter than the urine itself, so a
                # recurrence hotter than the bladder (PSMA-1007) stays outside
                pet_b = pet[box]
                inside = pet_b[filled]
                lo = config.bladder_rim_fraction * float(np.median(inside))
                hi = float(np.percentile(inside, 99))
                rim = _pet_rim(filled, pet_b, lo, region_b,
                               max(1, round(config.bladder_rim_mm / grid.spacing_mm)), top=hi)
                return OrganResult(full(rim), 0.85, f"PET SUV >= {config.bladder_suv:g} in "
                                   "the midline pelvis, refined by CT water density, with the "
                                   "urine-level partial-volume rim")
    # CT only: the water-density blob above the symphysis
    wet = box_open(water, 2)
    lab, sizes = _components(wet)
    sizes[0] = 0
    if sizes.max() * grid.spacing_mm**3 / 1000.0 < 20.0:
        return OrganResult(None, 0.0, "no PET bladder focus and no water-density blob >= 20 mL "
                           "above the symphysis")
    mask = box_dilate(lab == int(np.argmax(sizes)), 2) & water
    return OrganResult(full(fill_holes(mask)), 0.5, "CT only: largest water-density "
                       "blob in the midline pelvis (no PET focus)")


def _paired_hot(pet: NDArray[np.float32], t: Tissues, grid: WorkGrid, x_mid: float, *,
                suv: float, zlim: tuple[float, float], lateral: tuple[float, float],
                min_ml: float) -> NDArray[np.bool_]:
    zs = grid.z_mm()
    ks = np.flatnonzero((zs >= zlim[0]) & (zs <= zlim[1]))
    out = np.zeros(t.body.shape, dtype=bool)
    if ks.size == 0:
        return out
    zsl = slice(int(ks[0]), int(ks[-1]) + 1)
    lat = np.abs(grid.x_mm() - x_mid)[None, None, :]
    hot = (pet[zsl] >= suv) & t.body[zsl] & ~t.bone[zsl] & (lat >= lateral[0]) & (
        lat <= lateral[1])
    lab, sizes = _components(hot)
    keep = sizes * grid.spacing_mm**3 / 1000.0 >= min_ml
    keep[0] = False
    out[zsl] = keep[lab]
    return out


def find_organs(hu: NDArray[np.float32], pet: NDArray[np.float32] | None, t: Tissues,
                grid: WorkGrid, frame: PelvisFrame, *,
                config: AnatomyConfig) -> dict[AnatomyLabel, OrganResult]:
    """Organ masks where CT and PET show them (domain.md 2.4, 3.1).

    Bladder, kidneys, liver, spleen, salivary and lacrimal glands, heart, bowel and ureters;
    each with a confidence and the reason (or why it could not be found). The rules run on the
    in-plane box of the body (air around the patient cut away) and the masks are put back.
    """
    box = bbox(t.body, pad=2)
    if box is None:
        return _find_organs(hu, pet, t, grid, frame, config=config)
    box = (slice(0, t.body.shape[0]), box[1], box[2])
    x0, y0, z0 = grid.origin_mm
    sub = WorkGrid(shape=(t.body.shape[0], box[1].stop - box[1].start,
                          box[2].stop - box[2].start), spacing_mm=grid.spacing_mm,
                   origin_mm=(x0 + box[2].start * grid.spacing_mm,
                              y0 + box[1].start * grid.spacing_mm, z0))
    t_sub = Tissues(body=t.body[box], lungs=t.lungs[box], bone=t.bone[box], metal=t.metal[box],
                    notes=t.notes)
    found = _find_organs(np.ascontiguousarray(hu[box]),
                         None if pet is None else np.ascontiguousarray(pet[box]), t_sub, sub,
                         frame, config=config)
    out: dict[AnatomyLabel, OrganResult] = {}
    for label, res in found.items():
        if res.mask is None:
            out[label] = res
            continue
        full = np.zeros(t.body.shape, dtype=bool)
        full[box] = res.mask
        out[label] = OrganResult(full, res.confidence, res.reason)
    return out


def _find_organs(hu: NDArray[np.float32], pet: NDArray[np.float32] | None, t: Tissues,
                 grid: WorkGrid, frame: PelvisFrame, *,
                 config: AnatomyConfig) -> dict[AnatomyLabel, OrganResult]:
    out: dict[AnatomyLabel, OrganResult] = {}
    out[AnatomyLabel.URINARY_BLADDER] = _bladder(hu, pet, t, grid, frame, config)
    spine = _spine_front(t, grid, frame)
    if pet is None:
        no_pet = "needs PET uptake to be found by rules (no PET given)"
        for lab in (AnatomyLabel.KIDNEYS, AnatomyLabel.SALIVARY_GLANDS, AnatomyLabel.LIVER,
                    AnatomyLabel.SPLEEN, AnatomyLabel.BOWEL, AnatomyLabel.LACRIMAL_GLANDS,
                    AnatomyLabel.URETERS, AnatomyLabel.GALLBLADDER):
            out[lab] = OrganResult(None, 0.0, no_pet)
        out[AnatomyLabel.HEART] = _heart(hu, None, t, grid, frame, spine, None, config)
        return out
    _liver_spleen_kidneys(hu, pet, t, grid, frame, spine, config, out)
    zs = grid.z_mm()
    lung_z = np.flatnonzero(t.lungs.any(axis=(1, 2)))
    if lung_z.size:
        apex = float(zs[lung_z[-1]])
        sal = _paired_hot(pet, t, grid, frame.x_mid_mm, suv=config.salivary_suv,
                          zlim=(apex, apex + 180.0), lateral=(15.0, 90.0), min_ml=2.0)
        if sal.any():
            box = bbox(sal, pad=3)
            assert box is not None
            level = config.salivary_rim_fraction * float(np.median(pet[sal]))
            sal[box] = _pet_rim(sal[box], pet[box], level, t.body[box],
                                max(1, round(config.organ_rim_mm / grid.spacing_mm)))
        out[AnatomyLabel.SALIVARY_GLANDS] = (
            OrganResult(sal, 0.6, f"SUV >= {config.salivary_suv:g} components in the neck and "
                        "face, off the midline")
            if sal.any() else OrganResult(None, 0.0, "no glandular uptake above the lung apices "
                                          "(head and neck not in the PET?)"))
    else:
        out[AnatomyLabel.SALIVARY_GLANDS] = OrganResult(None, 0.0, "no lungs, so no neck level")
    out[AnatomyLabel.LACRIMAL_GLANDS] = _lacrimal(pet, t, grid, config)
    liver = out[AnatomyLabel.LIVER].mask
    out[AnatomyLabel.HEART] = _heart(hu, pet, t, grid, frame, spine, liver, config)
    blocked = np.zeros(t.body.shape, dtype=bool)
    for lab in (AnatomyLabel.LIVER, AnatomyLabel.SPLEEN, AnatomyLabel.KIDNEYS,
                AnatomyLabel.URINARY_BLADDER, AnatomyLabel.HEART):
        m = out[lab].mask
        if m is not None:
            blocked |= m
    # ureters before the bowel: a ureter running beside a loop would join the loop's component
    # and be hidden as bowel; as a ureter it makes a touching lesion equivocal instead
    out[AnatomyLabel.URETERS] = _ureters(pet, t, grid, frame, out[AnatomyLabel.KIDNEYS].mask,
                                         out[AnatomyLabel.URINARY_BLADDER].mask, blocked, config)
    if out[AnatomyLabel.URETERS].mask is not None:
        blocked |= out[AnatomyLabel.URETERS].mask
    out[AnatomyLabel.BOWEL] = _bowel(hu, pet, t, grid, frame, spine, blocked,
                                     out[AnatomyLabel.KIDNEYS].mask, config)
    # the gallbladder after the bowel, and never in a loop: fluid-filled small bowel against
    # the liver has the bile's CT density too (PHANTOM-8043 of the staging cohorts: a 26 mL
    # "gallbladder" on small bowel kept the loop out of the bowel mask, and its hottest part
    # was staged as a retroperitoneal node)
    if out[AnatomyLabel.BOWEL].mask is not None:
        blocked |= out[AnatomyLabel.BOWEL].mask
    out[AnatomyLabel.GALLBLADDER] = _gallbladder(hu, t, grid, out[AnatomyLabel.LIVER].mask,
                                                 blocked, config)
    return out


# -- physiological-uptake organs: liver, spleen, bowel, heart, lacrimal glands, ureters --------
# (domain.md 2.4 and 3.1). Every rule works on a crop of the working grid and on a 3-voxel
# box-smoothed CT and PET (noise down, edges kept within a voxel).


def _smooth(a: NDArray[np.float32], within: NDArray[np.bool_] | None = None
            ) -> NDArray[np.float32]:
    """3-voxel box mean; with ``within``, the mean over those voxels only (no bone / lung
    partial volume pulled into soft tissue)."""
    if within is None:
        return np.asarray(ndi.uniform_filter(a, size=3, mode="nearest"), dtype=np.float32)
    w = within.astype(np.float32)
    num = ndi.uniform_filter(a * w, size=3, mode="nearest")
    den = ndi.uniform_filter(w, size=3, mode="nearest")
    return np.asarray(np.where(den > 0.05, num / np.maximum(den, 0.05), a), dtype=np.float32)


def _z_slice(grid: WorkGrid, lo_mm: float, hi_mm: float) -> slice | None:
    ks = np.flatnonzero((grid.z_mm() >= lo_mm) & (grid.z_mm() <= hi_mm))
    return slice(int(ks[0]), int(ks[-1]) + 1) if ks.size else None


def _in_crop(mask: NDArray[np.bool_] | None, zsl: slice) -> NDArray[np.bool_] | None:
    return None if mask is None else mask[zsl]


def _lung_above(lungs: NDArray[np.bool_], near: int, far: int) -> NDArray[np.bool_]:
    """Voxels with lung between ``near`` and ``far`` voxels above them (same column)."""
    nz = lungs.shape[0]
    out = np.zeros(lungs.shape, dtype=bool)
    for d in range(near, min(far, nz - 1) + 1):  # a few boolean passes, no int32 cumsum
        out[:nz - d] |= lungs[d:]
    return out


def _spine_front(t: Tissues, grid: WorkGrid, frame: PelvisFrame) -> NDArray[np.float64]:
    """Anterior surface y (mm) of the vertebral bodies per working slice (NaN-free).

    From the landmark frame where it was measured; elsewhere the most anterior bone within
    12 mm of the midline in the posterior half of the body; else 62 % of the body depth.
    """
    ys = grid.y_mm()
    nz = grid.shape[0]
    xsel = np.abs(grid.x_mm() - frame.x_mid_mm) <= 12.0
    strip = t.bone[:, :, xsel].any(axis=2)  # (z, y)
    body_y: NDArray[np.bool_] = np.asarray(t.body.any(axis=2), dtype=bool)
    has_body = body_y.any(axis=1)
    front = np.where(has_body, ys[np.argmax(body_y, axis=1)], np.nan)
    back = np.where(has_body, ys[body_y.shape[1] - 1 - np.argmax(body_y[:, ::-1], axis=1)],
                    np.nan)
    mid = (front + back) / 2.0
    post = strip & (ys[None, :] >= mid[:, None])
    own = np.where(post.any(axis=1), ys[np.argmax(post, axis=1)], np.nan)
    out = np.full(nz, np.nan)
    given = frame.spine_front_y_mm
    if given is not None and given.shape == (nz,):
        out = np.where(np.isfinite(given), given, out)
    out = np.where(np.isfinite(out), out, own)
    out = np.where(np.isfinite(out), out, front + 0.62 * (back - front))
    ok = np.flatnonzero(np.isfinite(out))
    if ok.size == 0:
        return np.full(nz, float(ys.mean()))
    idx = np.clip(np.searchsorted(ok, np.arange(nz)), 0, ok.size - 1)
    return np.asarray(np.where(np.isfinite(out), out, out[ok[idx]]), dtype=np.float64)


def _largest(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    lab, sizes = _components(mask)
    if sizes.size <= 1:
        return np.zeros_like(mask)
    sizes[0] = 0
    return np.asarray(lab == int(np.argmax(sizes)), dtype=bool)


def _fill(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return fill_holes(fill_holes(mask), per_slice=True)


@dataclass(frozen=True, slots=True)
class _Abdomen:
    """Crop of the upper abdomen / lower thorax shared by the liver, spleen and kidney rules."""

    zsl: slice
    hu: NDArray[np.float32]
    pet: NDArray[np.float32]
    soft: NDArray[np.bool_]
    body: NDArray[np.bool_]
    body_soft: NDArray[np.bool_]  # body, not bone, not lung
    below_lung: NDArray[np.bool_]
    dx: NDArray[np.float64]  # x - midline, (1, 1, X)
    spine: NDArray[np.float64]  # (Z, 1, 1)
    yy: NDArray[np.float64]  # (1, Y, 1)
    spacing_mm: float


def _abdomen(hu: NDArray[np.float32], pet: NDArray[np.float32], t: Tissues, grid: WorkGrid,
             frame: PelvisFrame, spine: NDArray[np.float64], dz: float,
             config: AnatomyConfig) -> _Abdomen | None:
    zsl = _z_slice(grid, dz - config.liver_depth_mm, dz + 120.0)
    if zsl is None:
        return None
    s = grid.spacing_mm
    body_soft = t.body[zsl] & ~t.bone[zsl] & ~t.lungs[zsl]
    hu_c, pet_c = _smooth(hu[zsl], body_soft), _smooth(pet[zsl])
    soft = body_soft & (hu_c >= config.organ_hu[0]) & (hu_c <= config.organ_hu[1])
    near, far = (max(1, round(v / s)) for v in config.organ_seed_below_lung_mm)
    below = _lung_above(t.lungs[zsl], near, far) & ~t.lungs[zsl]
    return _Abdomen(zsl, hu_c, pet_c, soft, t.body[zsl], body_soft, below,
                    (grid.x_mm() - frame.x_mid_mm)[None, None, :],
                    spine[zsl][:, None, None], grid.y_mm()[None, :, None], s)


def _seed_reference(a: _Abdomen, seed: NDArray[np.bool_]) -> tuple[float, float] | None:
    if seed.sum() < 8:
        return None
    return float(np.median(a.pet[seed])), float(np.median(a.hu[seed]))


def _grow_organ(a: _Abdomen, seed: NDArray[np.bool_], ref: tuple[float, float],
                blocked: NDArray[np.bool_], keep_out: NDArray[np.bool_], *,
                config: AnatomyConfig) -> NDArray[np.bool_]:
    """Region growing from ``seed`` through voxels of similar CT density and PET uptake.

    The growth stops at ``blocked`` (other organs and uptake as hot as theirs); the holes it
    leaves are filled, except for ``keep_out`` (the other organs' own masks): a metastasis
    hotter than a kidney but enclosed by the liver is in the liver.
    """
    ref_suv, ref_hu = ref
    lo, hi = config.organ_suv_ratio
    allowed = (a.soft & (np.abs(a.hu - ref_hu) <= config.organ_hu_tol)
               & (a.pet >= lo * ref_suv) & (a.pet <= hi * ref_suv) & ~blocked)
    rim = max(1, round(config.organ_rim_mm / a.spacing_mm))
    reach = _grow(seed, allowed)  # everything the growth can reach: work in its box only
    box = bbox(reach, pad=rim + 4)
    out = np.zeros(allowed.shape, dtype=bool)
    if box is None:
        return out
    allowed_b, soft_b, blocked_b = allowed[box], a.soft[box], blocked[box]
    opened = box_open(allowed_b, 1)
    grown = _grow(seed[box] & opened, opened)
    if not grown.any():
        return out
    grown = box_dilate(grown, 1) & allowed_b
    grown = box_close(grown, 2) & ~blocked_b & soft_b
    grown = _fill(grown) & ~keep_out[box] & a.body_soft[box]
    # organ edge: up to organ_rim_mm more (into lung, bone or fat) where the PET still shows
    # the organ's uptake, so its partial-volume spill gets the organ's threshold
    out[box] = _pet_rim(grown, a.pet[box], lo * ref_suv, a.body[box] & ~blocked_b, rim,
                        top=hi * ref_suv)
    return out


def _pet_rim(mask: NDArray[np.bool_], pet: NDArray[np.float32], level: float,
             allowed: NDArray[np.bool_], steps: int, top: float = np.inf) -> NDArray[np.bool_]:
    """Grow ``mask`` by up to ``steps`` voxels into ``allowed`` voxels with PET in
    ``[level, top]`` (an organ's partial-volume spill is not hotter than the organ)."""
    ok = allowed & (pet >= level) & (pet <= top)
    for _ in range(steps):
        mask = mask | (box_dilate(mask, 1) & ok)
    return mask


def _liver_spleen_kidneys(hu: NDArray[np.float32], pet: NDArray[np.float32], t: Tissues,
                          grid: WorkGrid, frame: PelvisFrame, spine: NDArray[np.float64],
                          config: AnatomyConfig, out: dict[AnatomyLabel, OrganResult]) -> None:
    dz = frame.diaphragm_z_mm
    no_dz = ("the lungs (diaphragm level) are not in the CT, so the upper abdomen cannot be "
             "located")
    if dz is None:
        for lab in (AnatomyLabel.KIDNEYS, AnatomyLabel.LIVER, AnatomyLabel.SPLEEN):
            out[lab] = OrganResult(None, 0.0, no_dz)
        return
    a = _abdomen(hu, pet, t, grid, frame, spine, dz, config)
    if a is None:
        for lab in (AnatomyLabel.KIDNEYS, AnatomyLabel.LIVER, AnatomyLabel.SPLEEN):
            out[lab] = OrganResult(None, 0.0, "the upper abdomen is outside the CT")
        return
    voxel_ml = grid.spacing_mm**3 / 1000.0
    hot = a.pet >= config.organ_suv
    # liver seed: right upper quadrant, just under the right lung base
    liver_seed = _largest(box_open(a.below_lung & a.soft & hot
                                   & (a.dx < -config.liver_seed_lateral_mm), 1))
    liver_ref = _seed_reference(a, liver_seed)
    # kidneys: clearly hotter than the liver (PSMA-1007: liver uptake approaches the renal one)
    kid_suv = config.kidney_suv
    if liver_ref is not None:
        kid_suv = max(kid_suv, config.kidney_over_liver * liver_ref[0])
    crest = [frame.landmarks[lm].position_mm for lm in (Landmark.ILIAC_CREST_LEFT,
                                                         Landmark.ILIAC_CREST_RIGHT)]
    crest_z = [c[2] for c in crest if c is not None]
    lo_z = float(np.mean(crest_z)) if crest_z else dz - 250.0
    kid = _paired_hot(pet, t, grid, frame.x_mid_mm, suv=kid_suv, zlim=(lo_z, dz + 30.0),
                      lateral=(25.0, 140.0), min_ml=15.0)
    out[AnatomyLabel.KIDNEYS] = (
        OrganResult(kid, 0.7, f"SUV >= {kid_suv:.3g} components lateral to the spine between "
                    "the iliac crests and the diaphragm")
        if kid.any() else OrganResult(None, 0.0, "no renal uptake found below the diaphragm"))
    kid_near = box_dilate(kid[a.zsl], 1)
    kid_block = kid_near | (a.pet >= kid_suv)
    liver_c = np.zeros(a.soft.shape, dtype=bool)
    if liver_ref is None:
        out[AnatomyLabel.LIVER] = OrganResult(None, 0.0, "no soft tissue with tracer uptake "
                                              "under the right lung base (liver seed)")
    else:
        liver_c = _grow_organ(a, liver_seed, liver_ref, kid_block, kid_near, config=config)
        ml = float(liver_c.sum() * voxel_ml)
        if ml >= config.liver_min_ml:
            out[AnatomyLabel.LIVER] = OrganResult(
                _uncrop(liver_c, a.zsl, t.body.shape), 0.7,
                f"grown from under the right lung base (seed SUV {liver_ref[0]:.1f}, "
                f"{liver_ref[1]:.0f} HU) through CT density within {config.organ_hu_tol:g} HU "
                f"and SUV {config.organ_suv_ratio[0]:g}-{config.organ_suv_ratio[1]:g} x the "
                "seed's, holes filled")
        else:
            liver_c[:] = False
            out[AnatomyLabel.LIVER] = OrganResult(None, 0.0, f"the liver grown from under the "
                                                  f"right lung base is only {ml:.0f} mL")
    # spleen seed: left posterolateral upper quadrant under the left lung base
    blocked = kid_block | box_dilate(liver_c, 1)
    spleen_seed = (a.below_lung & a.soft & hot & ~blocked
                   & (a.dx > config.spleen_seed_lateral_mm) & (a.yy >= a.spine - 40.0))
    spleen_seed = _largest(box_open(spleen_seed, 1))
    spleen_ref = _seed_reference(a, spleen_seed)
    if spleen_ref is None:
        out[AnatomyLabel.SPLEEN] = OrganResult(None, 0.0, "no soft tissue with tracer uptake "
                                               "under the left lung base (spleen seed)")
        return
    spleen_c = _grow_organ(a, spleen_seed, spleen_ref, blocked, kid_near | box_dilate(liver_c, 1),
                           config=config)
    ml = float(spleen_c.sum() * voxel_ml)
    if config.spleen_ml[0] <= ml <= config.spleen_ml[1]:
        out[AnatomyLabel.SPLEEN] = OrganResult(
            _uncrop(spleen_c, a.zsl, t.body.shape), 0.65,
            f"grown from the left posterolateral upper abdomen under the lung base (seed SUV "
            f"{spleen_ref[0]:.1f}, {spleen_ref[1]:.0f} HU), same density / uptake rule as the "
            "liver")
    else:
        out[AnatomyLabel.SPLEEN] = OrganResult(None, 0.0, f"the spleen grown from the left "
                                               f"upper abdomen is {ml:.0f} mL, outside "
                                               f"{config.spleen_ml[0]:g}-"
                                               f"{config.spleen_ml[1]:g} mL")


def _uncrop(mask_c: NDArray[np.bool_], zsl: slice, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    out = np.zeros(shape, dtype=bool)
    out[zsl] = mask_c
    return out


def _heart(hu: NDArray[np.float32], pet: NDArray[np.float32] | None, t: Tissues,
           grid: WorkGrid, frame: PelvisFrame, spine: NDArray[np.float64],
           liver: NDArray[np.bool_] | None, config: AnatomyConfig) -> OrganResult:
    """Largest soft-tissue mass between the lungs above the diaphragm, in front of the spine."""
    dz = frame.diaphragm_z_mm
    if dz is None:
        return OrganResult(None, 0.0, "no lungs in the CT, so no mediastinum")
    zsl = _z_slice(grid, dz - 30.0, dz + config.heart_height_mm)
    if zsl is None:
        return OrganResult(None, 0.0, "the lower thorax is outside the CT")
    lungs = t.lungs[zsl]
    xs, ys = grid.x_mm(), grid.y_mm()
    # per slice: between the two lungs' centres (x), behind the sternum / front of the lungs
    # and in front of the spine (y)
    dx = xs - frame.x_mid_mm
    n_r = lungs[:, :, dx < 0].sum(axis=(1, 2))
    n_l = lungs[:, :, dx >= 0].sum(axis=(1, 2))
    cx = np.broadcast_to(xs[None, None, :], lungs.shape)
    x_r = np.where(dx < 0, cx, 0.0)
    x_l = np.where(dx >= 0, cx, 0.0)
    xr = (lungs * x_r).sum(axis=(1, 2)) / np.maximum(n_r, 1)
    xl = (lungs * x_l).sum(axis=(1, 2)) / np.maximum(n_l, 1)
    ok_z = (n_r > 0) & (n_l > 0)
    mid_strip = np.abs(dx) <= 30.0
    front_bone: NDArray[np.bool_] = np.asarray(t.bone[zsl][:, :, mid_strip].any(axis=2),
                                               dtype=bool) & (ys[None, :] < spine[zsl][:, None]
                                                              - 40.0)
    lung_y: NDArray[np.bool_] = np.asarray(lungs.any(axis=2), dtype=bool)
    y_lung_front = np.where(lung_y.any(axis=1), ys[np.argmax(lung_y, axis=1)], np.inf)
    y_sternum = np.where(front_bone.any(axis=1), ys[np.argmax(front_bone, axis=1)], np.inf)
    y_front = np.minimum(y_sternum, y_lung_front)
    hu_c = _smooth(hu[zsl])
    cand = ((xs[None, None, :] >= xr[:, None, None]) & (xs[None, None, :] <= xl[:, None, None])
            & ok_z[:, None, None] & (ys[None, :, None] > y_front[:, None, None])
            & (ys[None, :, None] < spine[zsl][:, None, None] - 5.0)
            & t.body[zsl] & ~t.bone[zsl] & ~lungs
            & (hu_c >= config.heart_hu[0]) & (hu_c <= config.heart_hu[1]))
    if liver is not None:
        cand &= ~box_dilate(liver[zsl], 1)
    r = max(1, round(config.heart_opening_mm / grid.spacing_mm / 2))
    core = _largest(box_open(cand, r))
    ml = float(core.sum() * grid.spacing_mm**3 / 1000.0)
    if ml < config.heart_min_ml:
        return OrganResult(None, 0.0, f"no soft-tissue mass of >= {config.heart_min_ml:g} mL "
                           "between the lungs above the diaphragm")
    heart = box_dilate(core, r) & cand
    conf = 0.5
    reason = (f"largest soft-tissue mass ({config.heart_hu[0]:g}..{config.heart_hu[1]:g} HU) "
              "between the lungs above the diaphragm, behind the sternum, in front of the spine")
    if pet is not None:
        # PET: blood-pool uptake separates the heart from the chest-wall muscle in front of it
        pet_c = _smooth(pet[zsl])
        ref = float(np.median(pet_c[core]))
        heart = _largest(heart & (pet_c >= config.heart_suv_fraction * ref))
        conf = 0.6
        reason += (f", SUV >= {config.heart_suv_fraction:g} x its blood pool ({ref:.1f}): "
                   "organ-adaptive threshold there")
    heart = _fill(heart)
    return OrganResult(_uncrop(heart, zsl, t.body.shape), conf, reason)


def _lacrimal(pet: NDArray[np.float32], t: Tissues, grid: WorkGrid,
              config: AnatomyConfig) -> OrganResult:
    """Paired small foci in the anterolateral head at orbit level (superolateral orbits)."""
    zs = grid.z_mm()
    body_z = np.flatnonzero(t.body.any(axis=(1, 2)))
    lung_z = np.flatnonzero(t.lungs.any(axis=(1, 2)))
    if body_z.size == 0 or lung_z.size == 0:
        return OrganResult(None, 0.0, "no lungs in the CT, so the head cannot be located")
    vertex, apex = float(zs[body_z[-1]]), float(zs[lung_z[-1]])
    if vertex - apex < config.lacrimal_min_head_mm:
        return OrganResult(None, 0.0, f"the CT ends {vertex - apex:.0f} mm above the lung "
                           "apices: the head (orbits) is not in the scan")
    lo, hi = config.lacrimal_below_vertex_mm
    zsl = _z_slice(grid, vertex - hi, vertex - lo)
    if zsl is None:
        return OrganResult(None, 0.0, "the orbit level is outside the CT")
    body = t.body[zsl]
    cols = body.any(axis=(0, 1))
    xs, ys = grid.x_mm(), grid.y_mm()
    x_mid = float((xs[cols]).mean())
    # the head's front and back along its own midline: what the orbit-level slab holds off
    # the midline (a prone patient's shoulders and arms, padding) must not move them, nor
    # what lies on the midline apart from the head (the couch shell under a prone face): the
    # longest unbroken run of body rows is the head
    strip = np.abs(xs - x_mid) <= config.lacrimal_lateral_mm[0]
    rows = body[:, :, strip].any(axis=(0, 2))
    if not rows.any():
        return OrganResult(None, 0.0, "no body on the head's midline at orbit level")
    runs, n_runs = ndi.label(rows)
    head = runs == 1 + int(np.argmax(np.bincount(runs)[1:])) if n_runs > 1 else rows
    y_front, y_back = float(ys[head].min()), float(ys[head].max())
    lat = np.abs(xs - x_mid)[None, None, :]
    ant = ys[None, :, None] <= y_front + config.lacrimal_anterior_fraction * (y_back - y_front)
    hot = ((pet[zsl] >= config.lacrimal_suv) & body & ant
           & (lat >= config.lacrimal_lateral_mm[0]) & (lat <= config.lacrimal_lateral_mm[1]))
    lab, sizes = _components(hot)
    ok = (sizes * grid.spacing_mm**3 / 1000.0 <= config.lacrimal_max_ml)
    ok[0] = False
    if not ok.any():
        return OrganResult(None, 0.0, f"no small SUV >= {config.lacrimal_suv:g} focus "
                           "lateral in the front of the head at orbit level")
    foci = ok[lab]
    left = foci & (xs[None, None, :] > x_mid)
    sides = int(left.any()) + int((foci & ~left).any())
    mask = box_dilate(foci, 1) & body
    return OrganResult(_uncrop(mask, zsl, t.body.shape), 0.6 if sides == 2 else 0.4,
                       f"{'paired' if sides == 2 else 'one-sided'} small SUV >= "
                       f"{config.lacrimal_suv:g} foci {config.lacrimal_lateral_mm[0]:g}-"
                       f"{config.lacrimal_lateral_mm[1]:g} mm off the midline in the front of "
                       "the head, orbit level")


def _depth(mask: NDArray[np.bool_], lab: NDArray[Any], n: int, steps: int = 8
           ) -> NDArray[np.float64]:
    """Erosions (box, one voxel each) each component of ``mask`` survives, up to ``steps``."""
    depth = np.zeros(n + 1)
    inner = mask
    for step in range(1, steps + 1):
        inner = box_erode(inner, 1)
        alive = np.unique(lab[inner])
        if alive.size == 0 or (alive.size == 1 and alive[0] == 0):
            break
        depth[alive] = step
    return depth


def _tubular(mask: NDArray[np.bool_], lab: NDArray[Any], n: int, count: NDArray[np.float64],
             spacing_mm: float, tubularity: float) -> NDArray[np.bool_]:
    """Per component of ``mask``: volume >= ``tubularity`` x the ball of its inscribed radius.

    A node is a compact ball (volume close to its inscribed ball's); a bowel loop or a stretch
    of it is long or tortuous.
    """
    radius_mm = (_depth(mask, lab, n) + 1.0) * spacing_mm
    return np.asarray(count * spacing_mm**3 >= tubularity * (4.0 / 3.0) * np.pi * radius_mm**3,
                      dtype=bool)


def _compact_parts(mask: NDArray[np.bool_], spacing_mm: float, max_ml: float,
                   tubularity: float) -> NDArray[np.bool_]:
    """The components of ``mask`` that are focal: at most ``max_ml`` and not tubular.

    A hot stretch of small bowel (PSMA-1007, SUV 9 beside a colon at 4) stands above its loop's
    level as much as a node does, but it is long: its volume exceeds ``tubularity`` x the ball
    of its inscribed radius.
    """
    lab, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n == 0:
        return mask
    count = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    focal = (count * spacing_mm**3 <= max_ml * 1000.0) & ~_tubular(mask, lab, n, count,
                                                                   spacing_mm, tubularity)
    focal[0] = False
    return focal[lab]


def _round_parts(mask: NDArray[np.bool_], strong: NDArray[np.bool_], spacing_mm: float,
                 max_ml: float, tubularity: float) -> NDArray[np.bool_]:
    """Small round components of ``mask`` that hold a ``strong`` voxel.

    Below a few mL the tubularity test of :func:`_compact_parts` counts the inscribed radius
    in too few whole voxels: a node's 1 mL hot core (10 x 10 x 10 mm on a 3 mm grid) has none
    and passes as tubular. Such a part is still focal when it is round by its principal axes
    (length < ``tubularity`` x width) and, its shape being weak evidence at that size, stands
    further above its loop (the ``strong`` voxels).
    """
    lab, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    if n == 0:
        return mask
    count = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    _, _, length, width = _principal_axes(lab, n, spacing_mm)
    has_strong = np.zeros(n + 1, dtype=bool)
    has_strong[np.unique(lab[strong & mask])] = True
    ok = (count * spacing_mm**3 <= max_ml * 1000.0) & (length < tubularity * width) & has_strong
    ok[0] = False
    return ok[lab]


def _loop_pieces(avid: NDArray[np.bool_], lab: NDArray[Any], n: int, loops: NDArray[np.bool_],
                 pet_c: NDArray[np.float32], voxel_ml: float, config: AnatomyConfig
                 ) -> NDArray[np.bool_]:
    """Components of ``avid`` that are short pieces of bowel loop (per component, as ``loops``).

    Where a loop dips out of the cavity or behind gas and stool, what is left in view is a
    short compact piece at the loops' own uptake. A piece is wider than the PSF (its
    half-maximum region alone holds ``bowel_fragment_ml``; a small node is blurred into a peak
    whose half-maximum region is the node itself) and no hotter than ``bowel_fragment_ratio`` x
    the loops' plateau (90th percentile of the found loops; a visible node stands well above its
    surroundings). Off when ``bowel_fragment_ratio`` is None or no loop was found.
    """
    out = np.zeros(n + 1, dtype=bool)
    if n == 0 or config.bowel_fragment_ratio is None or not loops[1:].any():
        return out
    plateau = float(np.percentile(pet_c[loops[lab]], 90))
    peak = np.zeros(n + 1)
    peak[1:] = ndi.maximum(pet_c[avid], lab[avid], index=np.arange(1, n + 1))
    top = np.zeros_like(avid)
    top[avid] = pet_c[avid] >= 0.5 * peak[lab[avid]]
    wide = np.bincount(lab[top], minlength=n + 1) * voxel_ml >= config.bowel_fragment_ml
    out = wide & (peak <= config.bowel_fragment_ratio * plateau) & ~loops
    out[0] = False
    return out


def _gallbladder(hu: NDArray[np.float32], t: Tissues, grid: WorkGrid,
                 liver: NDArray[np.bool_] | None, blocked: NDArray[np.bool_],
                 config: AnatomyConfig) -> OrganResult:
    """The fluid-density sac in contact with the liver (CT only, so any tracer).

    [18F]PSMA-1007 is excreted through the bile: the gallbladder is then as hot as a metastasis
    and is hard-excluded for that tracer (domain.md 2.4). Rule: smoothed CT within
    ``gallbladder_hu`` (bile, denser than fat, lighter than liver and bowel wall) inside
    ``gallbladder_reach_mm`` of the liver mask (which may already hold the sac: PET-grown livers
    take in a hot gallbladder); of the components of a plausible volume, the one with most
    contact with the liver.
    """
    if liver is None or not liver.any():
        return OrganResult(None, 0.0, "no liver mask, so no gallbladder fossa to look in")
    s = grid.spacing_mm
    reach = max(1, round(config.gallbladder_reach_mm / s))
    box = bbox(liver, pad=reach + 1)
    assert box is not None
    liv = liver[box]
    near = box_dilate(liv, reach)
    hu_c = _smooth(hu[box])
    fluid = (near & t.body[box] & ~t.bone[box] & ~t.lungs[box]
             & (hu_c >= config.gallbladder_hu[0]) & (hu_c <= config.gallbladder_hu[1])
             & ~(blocked[box] & ~liver[box]))
    fluid = box_open(fluid, 1)
    lab, n = cc3d.connected_components(fluid, connectivity=6, return_N=True)
    if n == 0:
        return OrganResult(None, 0.0, "no fluid-density structure against the liver")
    voxel_ml = s**3 / 1000.0
    size = np.bincount(lab.ravel(), minlength=n + 1) * voxel_ml
    rim = box_dilate(liv, 1) & ~liv
    contact = np.bincount(lab[rim | (liv & fluid)].ravel(), minlength=n + 1).astype(float)
    ok = (size >= config.gallbladder_ml[0]) & (size <= config.gallbladder_ml[1]) & (contact > 0)
    ok[0] = False
    if not ok.any():
        return OrganResult(None, 0.0, f"no fluid-density structure of "
                           f"{config.gallbladder_ml[0]:g}-{config.gallbladder_ml[1]:g} mL "
                           "against the liver")
    best = int(np.argmax(np.where(ok, contact, -1.0)))
    mask = np.zeros(t.body.shape, dtype=bool)
    mask[box] = box_dilate(lab == best, 1) & t.body[box] & ~t.bone[box]
    return OrganResult(mask, 0.5,
                       f"fluid density ({config.gallbladder_hu[0]:g} to "
                       f"{config.gallbladder_hu[1]:g} HU) against the liver, "
                       f"{size[best]:.0f} mL")


def _bowel(hu: NDArray[np.float32], pet: NDArray[np.float32], t: Tissues, grid: WorkGrid,
           frame: PelvisFrame, spine: NDArray[np.float64], blocked: NDArray[np.bool_],
           kidneys: NDArray[np.bool_] | None, config: AnatomyConfig) -> OrganResult:
    """Stomach, small bowel and colon: diffuse-uptake loops and gas-containing loops."""
    dz = frame.diaphragm_z_mm
    sym = frame.landmarks[Landmark.PUBIC_SYMPHYSIS_SUPERIOR].position_mm
    zs = grid.z_mm()
    top = dz + config.bowel_above_diaphragm_mm if dz is not None else float(zs[-1])
    bottom = sym[2] if sym is not None else float(zs[0])
    zsl = _z_slice(grid, bottom, top)
    if zsl is None or (dz is None and sym is None):
        return OrganResult(None, 0.0, "neither the diaphragm nor the pelvis is in the CT, so "
                           "the abdominal cavity cannot be located")
    s = grid.spacing_mm
    voxel_ml = s**3 / 1000.0
    hu_raw = hu[zsl]
    hu_c, pet_c = _smooth(hu_raw), _smooth(pet[zsl])
    body = t.body[zsl]
    w = max(1, round(config.bowel_wall_depth_mm / s))
    inner = np.asarray(ndi.minimum_filter(body.view(np.uint8), size=(1, 2 * w + 1, 2 * w + 1),
                                          mode="constant", cval=0), dtype=bool)
    yy = grid.y_mm()[None, :, None]
    dx = (grid.x_mm() - frame.x_mid_mm)[None, None, :]
    sp = spine[zsl][:, None, None]
    lungs = t.lungs[zsl]
    # between the lungs: from a row's first lung voxel to its last (no running maximum)
    col = np.arange(lungs.shape[2])
    first = np.argmax(lungs, axis=2)[:, :, None]
    last = lungs.shape[2] - 1 - np.argmax(lungs[:, :, ::-1], axis=2)[:, :, None]
    has_lung = np.asarray(lungs.any(axis=2), dtype=bool)[:, :, None]
    between = has_lung & (col >= first) & (col <= last)
    if dz is not None:
        # below the diaphragm's dome the lung bases only hem in the upper abdomen (the
        # stomach's fundus and gas cap lie between them), not the mediastinum
        between &= (zs[zsl] >= dz)[:, None, None]
    cavity = (inner & ~t.bone[zsl] & ~lungs & ~between & (yy < sp + 10.0)
              & ~box_dilate(blocked[zsl], 1))
    # nodal stations kept out: para-aortic / paracaval band and psoas in front of and beside
    # the spine (sacrum in the pelvis), pelvic side walls
    keep_out = (np.abs(dx) <= config.bowel_keepout_half_width_mm) & (
        yy >= sp - config.bowel_keepout_front_mm)
    spine_band = keep_out & (np.abs(dx) <= config.bowel_fat_loop_band_half_width_mm)
    crest = [frame.landmarks[lm].position_mm for lm in (Landmark.ILIAC_CREST_LEFT,
                                                         Landmark.ILIAC_CREST_RIGHT)]
    crest_z = [c[2] for c in crest if c is not None]
    if crest_z:
        r = max(1, round(config.bowel_sidewall_mm / s))
        side = box_dilate(t.bone[zsl], r) & (np.abs(dx) >= 25.0)
        side &= (zs[zsl] <= max(crest_z))[:, None, None]
        keep_out = keep_out | side
    whole = cavity  # loops are judged whole, through the nodal band
    cavity = cavity & ~keep_out
    # 1. diffuse-uptake loops: large tubular / tortuous components of moderate uptake (a node
    #    is a compact ball: its volume is close to that of its largest inscribed ball)
    avid = whole & (pet_c >= config.bowel_suv) & (hu_c >= config.bowel_hu[0]) & (
        hu_c <= config.bowel_hu[1])
    gas = _big_gas(cavity & (hu_raw <= config.bowel_gas_hu), voxel_ml, config)
    # gas in the nodal stations too: no node holds gas
    station_gas = _big_gas(whole & ~cavity & (hu_raw <= config.bowel_gas_hu), voxel_ml, config)
    lab, n = cc3d.connected_components(avid, connectivity=26, return_N=True)
    loops = np.zeros_like(avid)
    kidney_zone = np.zeros_like(avid)
    ok = np.zeros(n + 1, dtype=bool)
    if n:
        count = np.bincount(lab[avid], minlength=n + 1).astype(np.float64)
        count[0] = avid.size - np.count_nonzero(avid)
        tubular = _tubular(avid, lab, n, count, s, config.bowel_min_tubularity)
        with_gas = np.zeros(n + 1, dtype=bool)
        with_gas[np.unique(lab[box_dilate(gas, 1)])] = True
        ok = (count * voxel_ml >= config.bowel_min_ml) & (tubular | with_gas)
        ok[0] = False
        # loop pieces outside the nodal stations only (there a node of a loop's size and uptake
        # is as likely as a piece of loop, and a reader would call it), and away from the
        # kidneys: above and beside them lie the adrenals and the renal hila
        near_kidney = np.zeros(n + 1, dtype=bool)
        if kidneys is not None and kidneys.any():
            reach_k = max(1, round(config.bowel_fragment_kidney_mm / s))
            kidney_zone = box_dilate(kidneys[zsl], reach_k)
            near_kidney[np.unique(lab[kidney_zone & avid])] = True
        ok |= _loop_pieces(avid, lab, n, ok, pet_c, voxel_ml, config) & ~near_kidney & (
            np.bincount(lab[avid & keep_out], minlength=n + 1) < 0.5 * count)
        loops = np.zeros_like(avid)
        loops[avid] = ok[lab[avid]]
    # foci much hotter than their loop stay out of the mask (a node against a loop)
    # the nodal-band focus rule stays bowel_fragment_kidney_mm away from the kidneys: a focus
    # in the band beside a kidney is as likely its renal pelvis or upper ureter under a loop
    plateau = _loop_plateau(lab, n, ok, pet_c)  # shared by the loop-core and nodule rules
    core = _loop_cores(lab, n, ok, pet_c, pet[zsl], keep_out & ~kidney_zone, s, config,
                       plateau=plateau)
    if n:
        fatty = _fatty_loops(lab, n, ok & ~with_gas, avid, hu_c, config)
        core |= _nodules_in_fat(lab, fatty, hu_c, s, config)
        if config.bowel_fat_loop_band:
            # a fatty halo is no bowel: where it reaches into the midline band in front of the
            # spine and sacrum (para-aortic, presacral and perirectal stations) a node is as
            # likely as the halo; not further out, where the ureters run down to the bladder
            core |= fatty[lab] & spine_band
        tissue = body & ~t.bone[zsl]
        core |= _nodules_in_loops(lab, n, ok, tissue, hu_c, plateau, pet[zsl], s, config)
        core |= _dense_foci(lab, ok, hu_raw, tissue, plateau, pet[zsl], s, config)
    # 2. gas-containing loops: the bowel wall / content around gas below the lungs
    reach = max(1, round(config.bowel_gas_reach_mm / s))
    wall = (box_dilate(gas, reach) & cavity & (hu_c >= config.bowel_wall_hu[0])
            & (hu_c <= config.bowel_wall_hu[1])) | gas
    if wall.any() and config.bowel_peak_ratio is not None:
        ref = float(np.median(pet_c[wall]))
        core |= wall & (pet_c > max(config.bowel_peak_ratio * ref, config.bowel_suv))
    if station_gas.any():
        # a loop's gas in a nodal station is bowel, with its wall (one voxel): a node beside
        # it is as likely as the loop's own wall further out, so no more than that
        loops |= box_dilate(station_gas, 1) & whole & (hu_c <= config.bowel_hu[1])
    mask = (loops | wall) & ~core
    mask = box_close(mask, 1) & whole & ~core
    mask &= cavity | loops
    if mask.sum() * voxel_ml < config.bowel_min_ml:
        return OrganResult(None, 0.0, "no diffuse-uptake or gas-containing bowel loops found in "
                           "the abdominal cavity")
    return OrganResult(_uncrop(mask, zsl, t.body.shape), 0.5,
                       f"abdominal-cavity loops: uniform SUV >= {config.bowel_suv:g} components "
                       f">= {config.bowel_min_ml:g} mL, and gas ({config.bowel_gas_hu:g} HU) with "
                       f"the wall / content around it; para-aortic band, psoas and pelvic side "
                       "walls kept out (nodal stations)"
                       + ("" if config.bowel_peak_ratio is None else
                          f"; foci above {config.bowel_peak_ratio:g} x their loop's plateau "
                          "left out"))


def _big_gas(gas: NDArray[np.bool_], voxel_ml: float, config: AnatomyConfig
             ) -> NDArray[np.bool_]:
    """The gas pockets (26-connected) of at least ``bowel_gas_min_ml``."""
    glab, gn = cc3d.connected_components(gas, connectivity=26, return_N=True)
    if not gn:
        return gas
    gsz = np.bincount(glab[gas], minlength=gn + 1)  # the gas voxels' labels only
    big = gsz * voxel_ml >= config.bowel_gas_min_ml
    big[0] = False
    out = np.zeros_like(gas)
    out[gas] = big[glab[gas]]
    return out


def _fatty_loops(lab: NDArray[Any], n: int, loops: NDArray[np.bool_],
                 avid: NDArray[np.bool_], hu_c: NDArray[np.float32],
                 config: AnatomyConfig) -> NDArray[np.bool_]:
    """Per component: a "loop" (of ``loops``) whose median smoothed CT is fat.

    A loop's wall and content are soft tissue or fluid. An avid tube or shell whose median
    smoothed CT is at most ``bowel_fat_loop_hu`` and that holds no gas (the caller passes the
    gas-free loops) is the partial-volume halo of a hot organ (the bladder's, in the
    perivesical fat). None when ``bowel_fat_loop_hu`` is None.
    """
    fatty = np.zeros(n + 1, dtype=bool)
    if config.bowel_fat_loop_hu is None or n == 0:
        return fatty
    ids = np.flatnonzero(loops[1:]) + 1
    if ids.size:
        fatty[ids] = np.asarray(ndi.median(hu_c[avid], lab[avid], index=ids)
                                ) <= config.bowel_fat_loop_hu
    return fatty


def _focal_with_rim(mask: NDArray[np.bool_], s: float, config: AnatomyConfig
                    ) -> NDArray[np.bool_]:
    """The focal parts of ``mask`` (at most ``bowel_core_max_ml``, not tubular, or round by
    their principal axes), with a one-voxel rim: what the nodule rules leave out of a loop."""
    focal = _compact_parts(mask, s, config.bowel_core_max_ml, config.bowel_min_tubularity)
    focal |= _round_parts(mask, mask, s, config.bowel_core_max_ml, config.bowel_min_tubularity)
    return box_dilate(focal, 1)


def _nodules_in_fat(lab: NDArray[Any], fatty: NDArray[np.bool_], hu_c: NDArray[np.float32],
                    s: float, config: AnatomyConfig) -> NDArray[np.bool_]:
    """Soft-tissue nodules inside the fatty halo "loops" (kept out of the bowel mask).

    A node inside a halo (:func:`_fatty_loops`) shows on CT as a compact soft-tissue nodule
    (``bowel_wall_hu`` or denser; at most ``bowel_core_max_ml``, not tubular or round by its
    principal axes, so vessels and ureters crossing the halo stay in), and is left out with a
    one-voxel rim.
    """
    if not fatty.any():
        return np.zeros(lab.shape, dtype=bool)
    soft = fatty[lab] & (hu_c >= config.bowel_wall_hu[0])
    return _focal_with_rim(soft, s, config)


def _nodules_in_loops(lab: NDArray[Any], n: int, loops: NDArray[np.bool_],
                      tissue: NDArray[np.bool_], hu_c: NDArray[np.float32],
                      plateau: NDArray[np.float64], pet_raw: NDArray[np.float32], s: float,
                      config: AnatomyConfig) -> NDArray[np.bool_]:
    """Soft-tissue nodules alone in the fat inside a loop's uptake (kept out of the mask).

    A loop's component (its SUV >= ``bowel_suv`` region) takes in the fat around the loop and
    whatever lies in that fat: a node beside a loop joins the loop's uptake on PET, but on CT it
    is a nodule of its own, with fat all round. Soft tissue (``bowel_wall_hu[0]`` or denser,
    bone left out) is cut into pieces over the whole body (a loop stays one long piece with
    its continuation outside the component); a piece that lies inside the loops, is focal
    (at most ``bowel_core_max_ml``, not tubular, or round by its principal axes) and is
    hotter than ``bowel_nodule_ratio`` x its loop's plateau (``plateau``, per component of
    ``lab``: :func:`_loop_plateau`) is left out, with a one-voxel rim. None turns the rule off.
    """
    out = np.zeros(lab.shape, dtype=bool)
    if config.bowel_nodule_ratio is None or n == 0 or not loops[1:].any():
        return out
    soft = tissue & (hu_c >= config.bowel_wall_hu[0])
    pieces, m = cc3d.connected_components(soft, connectivity=6, return_N=True)
    if m == 0:
        return out
    in_loop = loops[lab]
    count = np.bincount(pieces.ravel(), minlength=m + 1)
    inside = np.bincount(pieces[in_loop], minlength=m + 1)
    small = (count * s**3 <= config.bowel_core_max_ml * 1000.0) & (inside == count)
    small[0] = False
    if not small.any():
        return out
    cand = small[pieces]
    # each piece against the plateau of the loop it lies in (the highest, if it spans two)
    ref = np.zeros(m + 1)
    np.maximum.at(ref, pieces[cand], plateau[lab[cand]])
    peak = np.zeros(m + 1)
    np.maximum.at(peak, pieces[cand], pet_raw[cand])
    hot = small & (peak > config.bowel_nodule_ratio * np.maximum(ref, config.bowel_suv))
    if not hot.any():
        return out
    part = hot[pieces]
    return _focal_with_rim(part, s, config)


def _dense_foci(lab: NDArray[Any], loops: NDArray[np.bool_], hu_raw: NDArray[np.float32],
                tissue: NDArray[np.bool_], plateau: NDArray[np.float64],
                pet_raw: NDArray[np.float32], s: float, config: AnatomyConfig
                ) -> NDArray[np.bool_]:
    """Foci of the loops on CT denser than bowel content (kept out of the mask).

    A node against a loop joins the loop's uptake, and when it also touches the psoas or a
    vessel it is no nodule alone in the fat either (:func:`_nodules_in_loops`); a node only
    1.5-1.8 x as hot as the loop is no loop core (:func:`_loop_cores`). On CT it is still
    denser than the loop: a node is soft tissue (about 40 HU), unopacified bowel content fluid
    (0-25 HU). The loops' voxels whose CT lies in ``bowel_nodule_hu`` and whose SUV is above
    ``bowel_nodule_ratio`` x their loop's plateau (``plateau``, per component of ``lab``) form
    a focus when at least ``bowel_nodule_min_ml`` of them hang together (26-connected; a few
    noisy voxels of a hot loop are not one) and the part is focal (at most
    ``bowel_core_max_ml``, not tubular, or round by its principal axes); it is left out with a
    one-voxel rim. The CT is the 3-voxel box mean over the soft-tissue voxels alone
    (``tissue``, and no denser than the range): beside a bone the plain mean takes in the
    bone's partial volume and a loop of 20 HU reads 60-75 HU. Either setting None turns the
    rule off.
    """
    out = np.zeros(lab.shape, dtype=bool)
    if config.bowel_nodule_hu is None or config.bowel_nodule_ratio is None:
        return out
    inside = loops[lab]
    if not inside.any():
        return out
    lo, hi = config.bowel_nodule_hu
    hu_c = _smooth(hu_raw, within=tissue & (hu_raw <= hi))
    level = np.maximum(plateau[lab[inside]], config.bowel_suv)
    hot = np.zeros_like(inside)
    hot[inside] = ((hu_c[inside] >= lo) & (hu_c[inside] <= hi)
                   & (pet_raw[inside] > config.bowel_nodule_ratio * level))
    min_vox = math.ceil(config.bowel_nodule_min_ml * 1000.0 / s**3 - 1e-9)
    hot = cc3d.dust(hot, threshold=min_vox, connectivity=26)
    return _focal_with_rim(hot, s, config)


def _loop_plateau(lab: NDArray[Any], n: int, loops: NDArray[np.bool_],
                  pet_c: NDArray[np.float32]) -> NDArray[np.float64]:
    """90th percentile of the smoothed SUV of each loop component (0 for the others)."""
    inside = loops[lab]
    values, ids = pet_c[inside], lab[inside]
    plateau = np.zeros(n + 1)
    if values.size == 0:
        return plateau
    order = np.lexsort((values, ids))
    counts = np.bincount(ids, minlength=n + 1)
    start = np.cumsum(counts) - counts
    have = np.flatnonzero(counts)
    plateau[have] = values[order][start[have] + np.floor(0.9 * (counts[have] - 1)).astype(int)]
    return plateau


def _loop_cores(lab: NDArray[Any], n: int, loops: NDArray[np.bool_], pet_c: NDArray[np.float32],
                pet_raw: NDArray[np.float32], keep_out: NDArray[np.bool_], s: float,
                config: AnatomyConfig, *, plateau: NDArray[np.float64] | None = None
                ) -> NDArray[np.bool_]:
    """Focal parts of the loops much hotter than their loop (kept out of the bowel mask).

    A node or metastasis against a loop joins the loop's component; its voxels above
    ``bowel_peak_ratio`` x the loop's plateau (the 90th percentile of the loop's smoothed SUV,
    so a loop's own axis, where its blurred profile peaks, is not a focus) that form focal parts
    (at most ``bowel_core_max_ml``, and not tubular: a ureter bolus running under the loop is a
    streak) are left out, with a one-voxel rim. Optional, inside the nodal band ``keep_out``:
    voxels above ``bowel_band_peak_ratio`` x the loop's local mean over ``bowel_focus_max_mm``
    (at least three together, ``bowel_band_rim`` rim). Either ratio None turns its part off.
    ``plateau``: the loops' plateaus when the caller has them (:func:`_loop_plateau`).
    """
    mask: NDArray[np.bool_] = np.asarray(loops[lab], dtype=bool)
    core: NDArray[np.bool_] = np.zeros_like(mask)
    if not mask.any():
        return core
    if config.bowel_peak_ratio is not None:
        if plateau is None:
            plateau = _loop_plateau(lab, n, loops, pet_c)
        level = np.maximum(plateau[lab[mask]], config.bowel_suv)
        hot = np.zeros_like(mask)
        hot[mask] = pet_raw[mask] > config.bowel_peak_ratio * level
        focal = _compact_parts(hot, s, config.bowel_core_max_ml, config.bowel_min_tubularity)
        if config.bowel_round_core_ratio is not None:
            strong = np.zeros_like(mask)
            strong[mask] = pet_raw[mask] > config.bowel_round_core_ratio * level
            focal |= _round_parts(hot, strong, s, config.bowel_round_core_max_ml,
                                  config.bowel_min_tubularity)
        core = box_dilate(focal, 1)
    if config.bowel_band_peak_ratio is not None:
        lbox = bbox(mask, pad=1)
        assert lbox is not None
        level = np.full(mask.shape, np.inf, dtype=np.float32)
        w = max(3, 2 * round(config.bowel_focus_max_mm / s / 2) + 1)
        inside = mask[lbox].astype(np.float32)
        num = ndi.uniform_filter(pet_c[lbox] * inside, size=w, mode="nearest")
        den = ndi.uniform_filter(inside, size=w, mode="nearest")
        level[lbox] = np.maximum(num / np.maximum(den, 1e-3), config.bowel_suv)
        band = mask & keep_out & (pet_raw > config.bowel_band_peak_ratio * level)
        # a focus is more than one noisy voxel: at least 3 such voxels in its 3x3x3 neighbourhood
        band &= ndi.uniform_filter(band.astype(np.float32), size=3) * 27.0 >= 2.5
        band = _compact_parts(band, s, config.bowel_core_max_ml, config.bowel_min_tubularity)
        core |= box_dilate(band, config.bowel_band_rim) & keep_out
    return core


def _principal_axes(lab: NDArray[Any], n: int, s: float
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                               NDArray[np.float64]]:
    """Voxel count, centre (z, y, x mm), length and width (mm) of every component of ``lab``.

    From the second moments of all components at once (bincount): length and width are the
    extents of a uniform bar with the component's largest and middle principal variances.
    """
    kk, jj, ii = np.nonzero(lab)
    ids = lab[kk, jj, ii]
    pts = np.stack([kk, jj, ii], axis=1).astype(np.float64) * s
    cnt = np.bincount(ids, minlength=n + 1).astype(np.float64)
    safe = np.maximum(cnt, 1.0)
    mean = np.stack([np.bincount(ids, pts[:, a], minlength=n + 1) for a in range(3)], 1) / (
        safe[:, None])
    d = pts - mean[ids]
    cov = np.empty((n + 1, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = np.bincount(ids, d[:, a] * d[:, b],
                                                      minlength=n + 1) / safe
    ev = np.linalg.eigvalsh(cov)  # ascending
    length = np.sqrt(12.0 * np.maximum(ev[:, 2], 0.0))
    width = np.sqrt(12.0 * np.maximum(ev[:, 1], 0.0) + s * s)
    return cnt, mean, length, width


def _ureters(pet: NDArray[np.float32], t: Tissues, grid: WorkGrid, frame: PelvisFrame,
             kidneys: NDArray[np.bool_] | None, bladder: NDArray[np.bool_] | None,
             blocked: NDArray[np.bool_], config: AnatomyConfig) -> OrganResult:
    """Thin elongated high-uptake tracks between the renal hila and the bladder."""
    if kidneys is None or not kidneys.any():
        return OrganResult(None, 0.0, "no kidneys found, so no ureter course to follow")
    floor = config.ureter_min_urine_suv
    if floor is not None and bladder is not None and bladder.any():
        urine = float(np.median(pet[bladder]))
        if urine < floor:
            return OrganResult(None, 0.0, f"urine too faint to show the ureters: the bladder's "
                               f"median SUV is {urine:.1f}, below {floor:g} "
                               "(ureter_min_urine_suv; a tracer excreted through the bile)")
    zs = grid.z_mm()
    kz = float(zs[np.flatnonzero(kidneys.any(axis=(1, 2)))].mean())
    if bladder is not None and bladder.any():
        bz = float(zs[np.flatnonzero(bladder.any(axis=(1, 2)))[0]])
    else:
        sym = frame.landmarks[Landmark.PUBIC_SYMPHYSIS_SUPERIOR].position_mm
        bz = sym[2] if sym is not None else float(zs[0])
    # up to the hilum's upper lip: the ureteropelvic junction lies about the kidney's middle
    zsl = _z_slice(grid, bz, kz + config.ureter_hilum_mm)
    if zsl is None:
        return OrganResult(None, 0.0, "no slices between the kidneys and the bladder")
    s = grid.spacing_mm
    lat = np.abs(grid.x_mm() - frame.x_mid_mm)[None, None, :]
    excl = blocked[zsl] | box_dilate(kidneys[zsl], 1)
    if bladder is not None:
        excl |= box_dilate(bladder[zsl], 1)
    # thin bright structures: white top-hat with an in-plane square wider than a ureter, so
    # the broad halo of the bladder and kidneys and wide bowel loops drop out
    body_box = bbox(t.body[zsl], pad=1)
    assert body_box is not None  # the body is not empty (checked by the labeller)
    pet_c = pet[zsl][body_box]
    w = max(3, 2 * round(config.ureter_max_width_mm / s / 2) + 1)
    tophat = np.zeros(t.body[zsl].shape, dtype=np.float32)
    tophat[body_box] = pet_c - ndi.grey_opening(pet_c, size=(1, w, w), mode="nearest")
    cand = ((pet[zsl] >= config.ureter_suv) & (tophat >= config.ureter_contrast_suv)
            & t.body[zsl] & ~t.bone[zsl] & ~t.lungs[zsl] & ~excl
            & (lat >= config.ureter_lateral_mm[0]) & (lat <= config.ureter_lateral_mm[1]))
    lab, n = cc3d.connected_components(cand, connectivity=26, return_N=True)
    # above the bladder the ureters run 40 mm or more off the midline; a hot piece peaking
    # within ureter_peak_midline_mm of it (a presacral node, a recurrence at the bladder base)
    # is left out whole, not cut at a limit into a small piece that looks like a bolus
    lab = _drop_medial_peaks(lab, n, pet[zsl], lat, config.ureter_peak_midline_mm)
    if n == 0:
        return OrganResult(None, 0.0, f"no SUV >= {config.ureter_suv:g} track between the "
                           "kidneys and the bladder")
    cnt, mean, length, width = _principal_axes(lab, n, s)
    ok = (length >= config.ureter_min_length_mm) & (
        length >= config.ureter_min_elongation * width)
    ok[0] = False
    ok |= _on_ureter_course(lab, n, cnt, mean, ok, grid, frame.x_mid_mm, config)
    ok |= _at_renal_hilum(lab, n, cnt, mean, kidneys[zsl], grid, frame.x_mid_mm, config)
    on_path = np.zeros(lab.shape, dtype=bool)
    if config.ureter_course and bladder is not None:
        allowed = (t.body[zsl] & ~t.bone[zsl] & ~t.lungs[zsl] & ~blocked[zsl]
                   & (lat >= config.ureter_peak_midline_mm)
                   & (lat <= config.ureter_lateral_mm[1]))
        course = _best_course(pet[zsl], allowed, kidneys[zsl], bladder[zsl], grid,
                              frame.x_mid_mm, w, config)
        if config.ureter_base_course:
            base, behind = _bladder_base(bladder[zsl], grid, frame.x_mid_mm, config)
            course = np.concatenate([course, _best_course(
                pet[zsl], allowed & behind, kidneys[zsl], base, grid, frame.x_mid_mm, w,
                config)])
        on_course, on_path = _on_best_course(lab, n, cnt, pet[zsl], course, grid, config)
        ok |= on_course
    if not ok.any() and not on_path.any():
        return OrganResult(None, 0.0, f"no elongated SUV >= {config.ureter_suv:g} track "
                           f"(>= {config.ureter_min_length_mm:g} mm, length / width >= "
                           f"{config.ureter_min_elongation:g}) between kidneys and bladder")
    taken = ok[lab] | on_path
    taken |= _between_track_ends(lab, n, cnt, pet[zsl], taken, s, config)[lab]
    nodes = _side_nodes(taken, pet[zsl], s, config)
    nodes |= _above_urine(taken, pet[zsl], pet[bladder] if bladder is not None else None, s,
                          config)
    mask = box_dilate(taken & ~nodes, 1) & t.body[zsl] & ~excl & ~nodes
    return OrganResult(_uncrop(mask, zsl, t.body.shape), 0.5,
                       f"elongated SUV >= {config.ureter_suv:g} tracks (>= "
                       f"{config.ureter_min_length_mm:g} mm, length / width >= "
                       f"{config.ureter_min_elongation:g}) {config.ureter_lateral_mm[0]:g}-"
                       f"{config.ureter_lateral_mm[1]:g} mm off the midline between the kidneys "
                       "and the bladder, and the short boluses (<= "
                       f"{config.ureter_bolus_max_ml:g} mL) that line up along z in chains "
                       + (f"or lie within {config.ureter_path_mm:g} mm of the cheapest "
                          "kidney-to-bladder path on PET " if config.ureter_course else "")
                       + "(equivocal, domain.md 3.1)")


def _between_track_ends(lab: NDArray[Any], n: int, count: NDArray[np.float64],
                        pet: NDArray[np.float32], taken: NDArray[np.bool_], s: float,
                        config: AnatomyConfig) -> NDArray[np.bool_]:
    """Short hot components in the gap between two stretches of one ureter (per component).

    Where boluses are faint a ureter's track breaks off and goes on higher up; the pieces in
    the gap are too short to be judged by shape and too few to form a chain. The tracks of
    ``taken`` (26-connected, at least ``ureter_min_length_mm`` along z) are linked upper end
    to lower end of the nearest track above when the gap is at most ``ureter_gap_mm`` along z
    and the in-plane step at most ``ureter_chain_slope`` x the gap plus ``ureter_course_mm``
    (the chain rule's link); a candidate of at most ``ureter_bolus_max_ml`` not yet taken
    whose hottest voxel lies in the gap within ``ureter_path_mm`` of the straight line between
    the two ends is ureter. A node beside the ureter peaks at its own centre, off the line by
    its radius plus the ureter's.
    """
    out = np.zeros(n + 1, dtype=bool)
    reach = config.ureter_gap_mm
    if reach is None or n == 0 or not taken.any():
        return out
    cand = (count * s**3 / 1000.0 <= config.ureter_bolus_max_ml) & (count > 0)
    cand[np.unique(lab[taken])] = False
    cand[0] = False
    if not cand.any():
        return out
    ids, peak = _component_peaks(lab, pet, cand[lab])
    peak_mm = peak * s
    tracks, m = cc3d.connected_components(taken, connectivity=26, return_N=True)
    tops, bottoms = [], []
    for box, t in zip(ndi.find_objects(tracks), range(1, m + 1), strict=True):
        if box is None:
            continue
        pts = (np.argwhere(tracks[box] == t) + [b.start for b in box]) * s
        z = pts[:, 0]
        if z.max() - z.min() >= config.ureter_min_length_mm:
            tops.append(pts[z == z.max()].mean(axis=0))
            bottoms.append(pts[z == z.min()].mean(axis=0))
    if len(tops) < 2:
        return out
    top, bottom = np.array(tops), np.array(bottoms)
    dz = bottom[None, :, 0] - top[:, None, 0]  # [a, b]: gap from a's top up to b's bottom
    dxy = np.hypot(bottom[None, :, 1] - top[:, None, 1], bottom[None, :, 2] - top[:, None, 2])
    link = (dz > 0) & (dz <= reach) & (dxy <= config.ureter_chain_slope * dz
                                       + config.ureter_course_mm)
    for a in np.flatnonzero(link.any(axis=1)):
        p0, p1 = top[a], bottom[int(np.argmin(np.where(link[a], dz[a], np.inf)))]
        d = p1 - p0
        f = (peak_mm - p0) @ d / float(d @ d)
        gap = (peak_mm[:, 0] > p0[0]) & (peak_mm[:, 0] < p1[0])
        dist = np.linalg.norm(peak_mm - (p0 + np.clip(f, 0.0, 1.0)[:, None] * d), axis=1)
        out[ids[gap & (dist <= config.ureter_path_mm)]] = True
    return out


def _side_nodes(taken: NDArray[np.bool_], pet: NDArray[np.float32], s: float,
                config: AnatomyConfig) -> NDArray[np.bool_]:
    """Nodes hanging off the side of a ureter track: compact hot parts with a deep saddle.

    A node beside the ureter joins its hot component when their halos touch. Around a maximum
    of SUV ``P`` in the track, the voxels above ``ureter_side_node_saddle x P`` connected to it
    form a part; it is a node when it is small (at most ``ureter_side_node_max_ml``) and round
    (length < 2 x width by principal axes) and the track goes on past it: what is left of the
    component without the part (and a one-voxel rim) is still one piece (bar small tails, 10 %)
    that runs above and below it. A bolus inside the ureter cuts the track in two when taken
    away, and a bolus at the track's end leaves the track on one side only. Off when the saddle
    ratio is None.
    """
    out = np.zeros(taken.shape, dtype=bool)
    f = config.ureter_side_node_saddle
    if f is None or not taken.any():
        return out
    lab = cc3d.connected_components(taken, connectivity=26)
    comp_size = np.bincount(lab.ravel())
    vals = np.where(taken, pet, -np.inf).astype(np.float32)
    peaks = taken & (vals >= ndi.maximum_filter(vals, size=3, mode="nearest")) & (
        pet >= config.ureter_suv)
    pts = np.argwhere(peaks)
    pts = pts[np.argsort(-pet[tuple(pts.T)], kind="stable")]
    boxes = ndi.find_objects(lab)
    max_vox = config.ureter_side_node_max_ml * 1000.0 / s**3
    for k, j, i in pts:
        if out[k, j, i]:
            continue
        c = int(lab[k, j, i])
        box = boxes[c - 1]
        assert box is not None
        comp = lab[box] == c
        loc = (k - box[0].start, j - box[1].start, i - box[2].start)
        high = comp & (pet[box] > f * pet[k, j, i])
        hl = cc3d.connected_components(high, connectivity=26)
        part = hl == hl[loc]
        if int(part.sum()) * 4 > comp_size[c] or not _small_and_round(part, max_vox, s):
            continue
        rest = comp & ~box_dilate(part, 1)
        pieces = cc3d.connected_components(rest, connectivity=26)
        counts = np.bincount(pieces.ravel())
        counts[0] = 0
        main = int(np.argmax(counts))
        if main == 0 or counts[main] < 0.9 * counts.sum():
            continue  # the track falls apart without it (small tails of the part aside)
        zr = np.flatnonzero(part.any(axis=(1, 2)))
        rz = np.flatnonzero((pieces == main).any(axis=(1, 2)))
        if rz.min() >= zr.min() or rz.max() <= zr.max():
            continue
        out[box] |= part
    return out


def _small_and_round(part: NDArray[np.bool_], max_vox: float, s: float) -> bool:
    """At most ``max_vox`` voxels and round: length < 2 x width by principal axes (a part of
    fewer than 3 voxels has no shape to judge and counts as round)."""
    size = int(part.sum())
    if size > max_vox:
        return False
    if size < 3:
        return True
    _, _, length, width = _principal_axes(part.astype(np.int32), 1, s)
    return bool(length[1] < 2.0 * width[1])


def _above_urine(taken: NDArray[np.bool_], pet: NDArray[np.float32],
                 urine: NDArray[np.float32] | None, s: float,
                 config: AnatomyConfig) -> NDArray[np.bool_]:
    """Focal parts of the ureter tracks hotter than urine can be (nodes on the ureter's course).

    Urine in a ureter is the urine that fills the bladder: a bolus can be more concentrated
    than the bladder's pooled urine, but not many times so. A part of the tracks whose hottest
    voxel exceeds ``ureter_urine_ratio`` x the bladder's urine level (the median SUV of the
    bladder mask) is tissue: the voxels above ``ureter_side_node_saddle`` (0.5 when that is
    None) x its peak connected to it, when they are focal (at most ``ureter_side_node_max_ml``
    and round: length < 2 x width by principal axes; a hot stretch of bowel crossing the course
    is long), are left out of the mask with the track voxels within two voxels of them. Tells
    an [18F]PSMA-1007 node (SUV 18, bladder 6) on the kidney-to-bladder path from a bolus;
    with a urine-excreted tracer (bladder 35-90) it does not apply. Off when the ratio is None
    or no bladder was found.
    """
    out = np.zeros(taken.shape, dtype=bool)
    f = config.ureter_urine_ratio
    if f is None or urine is None or urine.size == 0 or not taken.any():
        return out
    level = f * float(np.median(urine))
    hot = taken & (pet > level)
    if not hot.any():
        return out
    saddle = config.ureter_side_node_saddle or 0.5
    max_vox = config.ureter_side_node_max_ml * 1000.0 / s**3
    tracks = cc3d.connected_components(taken, connectivity=26)
    track_boxes = ndi.find_objects(tracks)
    cores = cc3d.connected_components(hot, connectivity=26)
    for c, core_box in enumerate(ndi.find_objects(cores), start=1):
        if core_box is None:
            continue
        # judged inside the bounding box of the track the core lies on
        first = np.argwhere(cores[core_box] == c)[0] + [b.start for b in core_box]
        t_id = int(tracks[tuple(first)])
        box = track_boxes[t_id - 1]
        assert box is not None
        core = cores[box] == c
        high = (tracks[box] == t_id) & (pet[box] > saddle * float(pet[box][core].max()))
        lab = cc3d.connected_components(high, connectivity=26)
        part = np.isin(lab, np.unique(lab[core]))
        if _small_and_round(part, max_vox, s):
            out[box] |= part
    # with its fringe on the tracks (two voxels): an isolated node taken whole for a bolus
    # would otherwise leave a ring of mask around itself
    return box_dilate(out, 2) & taken if out.any() else out


def _component_peaks(lab: NDArray[Any], pet: NDArray[np.float32], within: NDArray[np.bool_]
                     ) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """Label and voxel index of the hottest voxel of every component of ``lab`` in ``within``.

    The voxels are sorted by (label, SUV) and the last of each label taken.
    """
    vox = np.argwhere(within)
    ids = lab[tuple(vox.T)]
    order = np.lexsort((pet[tuple(vox.T)], ids))
    ids, vox = ids[order], vox[order]
    last = np.r_[ids[1:] != ids[:-1], True]
    return ids[last], vox[last]


def _drop_medial_peaks(lab: NDArray[Any], n: int, pet: NDArray[np.float32],
                       lat: NDArray[np.float64], limit_mm: float) -> NDArray[Any]:
    """``lab`` without the components whose hottest voxel lies within ``limit_mm`` of the
    midline (``lat``: distance from it, broadcastable)."""
    if n == 0:
        return lab
    ids, peak = _component_peaks(lab, pet, lab > 0)
    medial = np.zeros(n + 1, dtype=bool)
    medial[ids] = np.broadcast_to(lat, lab.shape)[tuple(peak.T)] < limit_mm
    return np.where(medial[lab], 0, lab)


def _at_renal_hilum(lab: NDArray[Any], n: int, count: NDArray[np.float64],
                    centre: NDArray[np.float64], kidneys: NDArray[np.bool_], grid: WorkGrid,
                    x_mid: float, config: AnatomyConfig) -> NDArray[np.bool_]:
    """Short hot components at a renal hilum: the renal pelvis emptying into the ureter.

    The ureter leaves the renal pelvis at the hilum, on the kidney's medial side, and its first
    centimetres are often the hottest of its course. A candidate of at most
    ``ureter_bolus_max_ml`` with a voxel within ``ureter_hilum_mm`` of a kidney, its centre
    medial to that kidney's centre but lateral to the midline, is ureter. Para-aortic nodes lie
    against the aorta, medial to this zone.
    """
    s = grid.spacing_mm
    out = np.zeros(n + 1, dtype=bool)
    if not kidneys.any():
        return out
    near = np.zeros(n + 1, dtype=bool)
    near[np.unique(lab[box_dilate(kidneys, max(1, round(config.ureter_hilum_mm / s)))])] = True
    x = grid.x_mm()
    cx = float(x[0]) + centre[:, 2]
    kbox = bbox(kidneys)  # the kidneys' voxels in the same order, from their box only
    assert kbox is not None
    xk = x[kbox[2]]
    for sign in (1.0, -1.0):
        side = (sign * (xk - x_mid) > 0)[None, None, :] & kidneys[kbox]
        if not side.any():
            continue
        kx = float(xk[np.nonzero(side)[2]].mean())
        medial = (sign * (cx - x_mid) > 0) & (sign * (cx - kx) < 0)
        out |= near & medial & (count * s**3 / 1000.0 <= config.ureter_bolus_max_ml)
    out[0] = False
    return out


_PAIRWISE: dict[Callable[..., Any], Callable[..., Any]] = {np.max: np.maximum,
                                                           np.any: np.logical_or}


def _pool2(a: NDArray[Any], func: Callable[..., Any], cval: float) -> NDArray[Any]:
    """``a`` reduced by ``func`` over 2-voxel blocks along every axis (padded with ``cval``).

    ``np.max`` and ``np.any`` run one axis at a time on the even and odd planes (the values of
    skimage's ``block_reduce``, which reduces a 6-D view several times slower); any other
    ``func`` goes through ``block_reduce``.
    """
    pair = _PAIRWISE.get(func)
    if pair is None:
        from skimage.measure import block_reduce

        return np.asarray(block_reduce(a, (2,) * a.ndim, func, cval=cval))  # type: ignore[no-untyped-call]
    out = np.pad(a, [(0, n % 2) for n in a.shape], constant_values=cval)
    for axis in range(a.ndim):
        lead = (slice(None),) * axis
        out = pair(out[(*lead, slice(0, None, 2))], out[(*lead, slice(1, None, 2))])
    return out


def _bladder_base(bladder: NDArray[np.bool_], grid: WorkGrid, x_mid: float,
                  config: AnatomyConfig) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Where the ureters enter the bladder, and where their last stretch runs.

    The ureters reach the bladder from behind and enter at its base (the trigone): the
    bladder's voxels in its lowest third and behind its centre; and the way there: above the
    bladder everything, at its levels only the back quarter of its depth and what lies behind
    (the pelvic side walls beside the bladder, with the external-iliac and obturator nodes,
    are not on the way), and neither there nor at the base within
    ``ureter_base_midline_mm`` of the midline, where the ureters do not run and local
    recurrences (anastomosis, seminal-vesicle bed) and perirectal nodes lie.
    """
    zz, yy, _ = np.nonzero(bladder)
    z_lo, y_c = float(zz.min()), float(yy.mean())
    z_third = z_lo + (float(zz.max()) - z_lo) / 3.0
    # the working grid's indices grow with LPS z (up) and y (back)
    k = np.arange(bladder.shape[0])[:, None, None]
    j = np.arange(bladder.shape[1])[None, :, None]
    lateral = (np.abs(grid.x_mm() - x_mid) >= config.ureter_base_midline_mm)[None, None, :]
    base = bladder & (k <= z_third) & (j >= y_c) & lateral
    behind = (k > zz.max()) | ((j >= (y_c + float(yy.max())) / 2.0) & lateral)
    return base, np.asarray(np.broadcast_to(behind, bladder.shape))


def _best_course(pet: NDArray[np.float32], allowed: NDArray[np.bool_],
                 kidneys: NDArray[np.bool_], bladder: NDArray[np.bool_], grid: WorkGrid,
                 x_mid: float, width: int, config: AnatomyConfig) -> NDArray[np.float64]:
    """The cheapest kidney-to-bladder path on each side: its points (voxel indices of the crop).

    Urine carries tracer the whole way from the renal pelvis to the bladder, so on PET the
    ureter is the cheapest route between them when a step costs ``(c / top-hat)^2`` (``c`` =
    ``ureter_contrast_suv``; the white top-hat of the box-smoothed PET with a ``width``-voxel
    in-plane square, clipped to ``[ureter_course_floor_suv, c]``): a thin hot structure costs
    1 per voxel, fat about ``(c / noise)^2``, so the path keeps to the ureter across the
    stretches where no bolus stands out enough to be found by shape. Minimal paths
    (:class:`skimage.graph.MCP_Geometric`, 26-connected) run on a grid coarsened 2 x by
    maximum, so a 1-voxel ureter survives; one cost map from the bladder, traced back from
    each side's kidney voxel nearest to it in cost; each block of the path is placed at its
    hottest voxel (where the block's cost came from).
    """
    from skimage.graph import MCP_Geometric

    c = config.ureter_contrast_suv
    points: list[NDArray[np.float64]] = []
    box = bbox(allowed | kidneys | bladder, pad=1)
    if box is None or not kidneys.any() or not bladder.any():
        return np.empty((0, 3))
    allowed, kidneys, bladder = allowed[box], kidneys[box], bladder[box]
    ends = kidneys | bladder
    # the bladder's and kidneys' own edges would make a cheap corridor around them (a bright
    # convex edge stands out of any in-plane opening): they are flattened to the background
    # (lower quartile of the passable voxels) first
    flat = pet[box].copy()
    flat[ends] = np.percentile(flat[allowed], 25) if allowed.any() else 0.0
    smooth = _smooth(flat)
    tophat = smooth - ndi.grey_opening(smooth, size=(1, width, width), mode="nearest")
    fine = np.where(allowed | ends, tophat, -1.0)
    top = _pool2(fine, np.max, -1.0)
    passable, kid, bla = (_pool2(m, np.any, False) for m in (allowed | ends, kidneys, bladder))
    cost = (c / np.clip(top, config.ureter_course_floor_suv, c)) ** 2
    cost[~passable] = -1.0  # MCP: negative costs are impassable
    to_bladder = MCP_Geometric(cost, fully_connected=True)
    from_bladder, _ = to_bladder.find_costs(np.argwhere(bla))
    x = grid.x_mm()[box[2]]
    xc = _pool2(x, np.mean, float(x[-1]))
    offset = np.array([sl.start for sl in box], dtype=np.float64)
    for sign in (1.0, -1.0):
        side = sign * (xc - x_mid) > 0
        at_kidney = np.where(kid & side[None, None, :], from_bladder, np.inf)
        if not np.isfinite(at_kidney).any():
            continue
        start = tuple(int(v) for v in np.unravel_index(np.argmin(at_kidney), at_kidney.shape))
        path = np.array(to_bladder.traceback(start), dtype=np.intp)
        points.append(_block_peaks(fine, path) + offset)
    return np.concatenate(points) if points else np.empty((0, 3))


def _block_peaks(fine: NDArray[Any], blocks: NDArray[np.intp]) -> NDArray[np.float64]:
    """The voxel of each 2 x 2 x 2 block (coarse indices ``blocks``) where ``fine`` peaks.

    A coarse step costs by its block's maximum, so that voxel is where the path runs.
    """
    corner = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    vox = blocks[:, None, :] * 2 + corner[None, :, :]
    inside = np.all(vox < np.array(fine.shape), axis=2)
    vox = np.minimum(vox, np.array(fine.shape) - 1)
    vals = np.where(inside, fine[vox[..., 0], vox[..., 1], vox[..., 2]], -np.inf)
    best = np.argmax(vals, axis=1)
    return np.asarray(vox[np.arange(len(blocks)), best], dtype=np.float64)


def _on_best_course(lab: NDArray[Any], n: int, count: NDArray[np.float64],
                    pet: NDArray[np.float32], course: NDArray[np.float64], grid: WorkGrid,
                    config: AnatomyConfig) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Hot components and voxels on the best kidney-to-bladder path (:func:`_best_course`).

    A piece of at most ``ureter_course_max_ml`` whose hottest voxel lies within
    ``ureter_path_mm`` of the path is a ureter bolus: the path runs through it. A node beside
    the ureter peaks at its own centre, off the path by its radius plus the ureter's. Of every
    other hot component (a ureter running into a loop or along a vessel, a piece the path
    skirts) only the voxels within ``ureter_path_mm`` of the path are taken: small pieces too,
    since a ureter piece whose hottest voxel lies off the path is otherwise left whole as a
    node (limiting this to large components gained one node and lost one ureter piece on the
    development cohorts). Returns (per component, per voxel).
    """
    from scipy.spatial import cKDTree

    s = grid.spacing_mm
    out = np.zeros(n + 1, dtype=bool)
    voxels = np.zeros(lab.shape, dtype=bool)
    if course.size == 0 or n == 0:
        return out, voxels
    tree = cKDTree(course * s)
    small = (count * s**3 / 1000.0 <= config.ureter_course_max_ml) & (count > 0)
    small[0] = False
    if small.any():
        ids, peak = _component_peaks(lab, pet, small[lab])
        near, _ = tree.query(peak * s, distance_upper_bound=config.ureter_path_mm + 1e-6)
        out[ids[np.isfinite(near)]] = True
    reach = config.ureter_path_mm / s
    lo = np.maximum(np.floor(course.min(axis=0) - reach), 0).astype(int)
    hi = np.ceil(course.max(axis=0) + reach + 1).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    hot = np.argwhere(lab[box] > 0) + lo
    near, _ = tree.query(hot * s, distance_upper_bound=config.ureter_path_mm + 1e-6)
    voxels[tuple(hot[np.isfinite(near)].T)] = True
    return out, voxels


def _on_ureter_course(lab: NDArray[Any], n: int, count: NDArray[np.float64],
                      centre: NDArray[np.float64], tracks: NDArray[np.bool_],
                      grid: WorkGrid, x_mid: float, config: AnatomyConfig) -> NDArray[np.bool_]:
    """Short hot components that line up along z with others on the same side: ureter boluses.

    Urine moves down the ureter in boluses, so the tracer fills it in pieces: the long pieces
    are found by their shape, the short ones (a few voxels) look like small nodes one by one,
    but together they trace the ureter's course. Two pieces on the same side are linked
    when they are 1 voxel to ``ureter_chain_step_mm`` apart in z and their in-plane offset is
    at most ``ureter_chain_slope x`` that gap plus ``ureter_course_mm`` (a ureter runs down,
    turning forwards no faster than 45 degrees into the pelvis); a
    linked chain of at least three pieces (centres) spanning ``ureter_min_length_mm`` or more
    marks its pieces of at most ``ureter_bolus_max_ml`` as ureter, unless they lie off the
    course their neighbours trace (:func:`_off_course`). There a track already found by its
    shape (``tracks``) on that side is the centre of each of its slices, so a piece is judged
    against where the track actually runs at the nearest level, not against the track's
    middle, which may lie far off in z. A node has no such chain (unless it lies on one).
    With ``ureter_chain_needs_track`` a chain counts only when one of its pieces is such a
    track: the nodes of an iliac chain line up along z beside the ureter as boluses do, and
    where the ureter shows no track a chain of specks is as likely nodes (or noise) as urine.
    ``centre`` holds the candidates' centres in mm of the cropped grid (z, y, x).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    s = grid.spacing_mm
    out = np.zeros(n + 1, dtype=bool)
    cx = float(grid.x_mm()[0]) + centre[:, 2]
    small = count * s**3 / 1000.0 <= config.ureter_bolus_max_ml
    for sign in (1.0, -1.0):
        ids = np.flatnonzero((sign * (cx - x_mid) > 0) & (small | tracks) & (count > 0))
        ids = ids[ids > 0]
        if ids.size < 3:
            continue
        c = centre[ids]
        dz = np.abs(c[:, None, 0] - c[None, :, 0])
        dxy = np.hypot(c[:, None, 1] - c[None, :, 1], c[:, None, 2] - c[None, :, 2])
        link = (dz >= s * 0.99) & (dz <= config.ureter_chain_step_mm) & (
            dxy <= config.ureter_chain_slope * dz + config.ureter_course_mm)
        k, member = connected_components(csr_matrix(link), directed=False)
        z = centre[ids, 0]
        top, bottom = np.full(k, -np.inf), np.full(k, np.inf)
        np.maximum.at(top, member, z)
        np.minimum.at(bottom, member, z)
        chain = (np.bincount(member, minlength=k) >= 3) & (
            top - bottom >= config.ureter_min_length_mm)
        if config.ureter_chain_needs_track:
            chain &= np.bincount(member, weights=tracks[ids], minlength=k) > 0
        take = ids[chain[member] & small[ids] & ~tracks[ids]]
        if take.size == 0:
            continue
        # judged against the other chain pieces and every slice of the side's tracks
        track_pts = _slice_centres(lab, ids[tracks[ids]], s)
        pts = np.concatenate([centre[take], track_pts])
        judged = np.arange(len(pts)) < take.size
        off = _off_course(pts, config, fixed=~judged)
        out[take[~off[: take.size]]] = True
    out[0] = False
    return out


def _slice_centres(lab: NDArray[Any], ids: NDArray[np.intp], s: float) -> NDArray[np.float64]:
    """Centre (z, y, x mm) of every axial slice of the components ``ids``."""
    boxes = ndi.find_objects(lab)
    pts = [np.empty((0, 3))]
    for t in ids:
        box = boxes[t - 1]
        if box is None:
            continue
        vox = np.argwhere(lab[box] == t) + [b.start for b in box]
        levels, inv = np.unique(vox[:, 0], return_inverse=True)
        per = np.bincount(inv).astype(np.float64)
        yx = np.stack([np.bincount(inv, vox[:, a]) for a in (1, 2)], axis=1) / per[:, None]
        pts.append(np.column_stack([levels, yx]) * s)
    return np.concatenate(pts)


def _off_course(c: NDArray[np.float64], config: AnatomyConfig,
                fixed: NDArray[np.bool_] | None = None) -> NDArray[np.bool_]:
    """Chain pieces (centres ``c``, mm, z y x) lying off the course their neighbours trace.

    A bolus lies on the ureter between the pieces just above and below it; a node that a loose
    chain link reached (up to ``ureter_chain_step_mm`` away in z) lies beside it. A piece whose
    nearest neighbours above and below are at most ``ureter_chain_step_mm`` apart in z is off
    the course when its in-plane distance from the straight line between them exceeds
    ``ureter_course_mm`` + ``ureter_chain_slope`` x the smaller z gap. The worst piece is
    dropped first and the rest judged again without it, so a node does not pull its neighbours
    off the line. Points marked ``fixed`` (a track's slices) are neighbours but never judged.
    """
    off = np.zeros(len(c), dtype=bool)
    judged = np.ones(len(c), dtype=bool) if fixed is None else ~fixed
    while True:
        worst, worst_ratio = -1, 1.0
        alive = np.flatnonzero(~off)
        for i in alive[judged[alive]]:
            dz = c[alive, 0] - c[i, 0]
            above, below = alive[dz > 0.5], alive[dz < -0.5]
            if above.size == 0 or below.size == 0:
                continue
            a = above[np.argmin(c[above, 0])]
            b = below[np.argmax(c[below, 0])]
            if c[a, 0] - c[b, 0] > config.ureter_chain_step_mm:
                continue  # too far apart to trace a line between
            w = (c[i, 0] - c[b, 0]) / (c[a, 0] - c[b, 0])
            line = c[b, 1:] + w * (c[a, 1:] - c[b, 1:])
            gap = min(c[a, 0] - c[i, 0], c[i, 0] - c[b, 0])
            tol = config.ureter_course_mm + config.ureter_chain_slope * gap
            ratio = float(np.hypot(*(c[i, 1:] - line))) / tol
            if ratio > worst_ratio:
                worst, worst_ratio = int(i), ratio
        if worst < 0:
            return off
        off[worst] = True
