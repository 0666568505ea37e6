"""PET-assisted organ masks on the working grid (domain.md 3.1, 2.4).

Bladder: the largest high-SUV component in the midline pelvis, refined by CT water density.
Kidneys, salivary glands, liver and spleen: high-uptake components where anatomy puts them,
refined by CT soft-tissue density. Each comes with a confidence and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.grid import WorkGrid
from imaging.anatomy.landmarks import PelvisFrame
from imaging.anatomy.model import AnatomyConfig
from imaging.anatomy.tissues import Tissues, bbox, box_close, box_dilate, box_open
from imaging.vocabulary import AnatomyLabel, Landmark

__all__ = ["OrganResult", "find_organs"]


@dataclass(frozen=True, slots=True)
class OrganResult:
    """One organ mask (or None) with confidence and reason."""

    mask: NDArray[np.bool_] | None
    confidence: float
    reason: str


def _components(mask: NDArray[np.bool_]) -> tuple[NDArray[Any], NDArray[Any]]:
    lab = cc3d.connected_components(mask, connectivity=26)
    return lab, np.bincount(lab.ravel())


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
            filled = ndi.binary_fill_holes(mask)
            if filled.sum() >= 10:
                return OrganResult(full(filled), 0.85, f"PET SUV >= {config.bladder_suv:g} in "
                                   "the midline pelvis, refined by CT water density")
    # CT only: the water-density blob above the symphysis
    wet = box_open(water, 2)
    lab, sizes = _components(wet)
    sizes[0] = 0
    if sizes.max() * grid.spacing_mm**3 / 1000.0 < 20.0:
        return OrganResult(None, 0.0, "no PET bladder focus and no water-density blob >= 20 mL "
                           "above the symphysis")
    mask = box_dilate(lab == int(np.argmax(sizes)), 2) & water
    return OrganResult(full(ndi.binary_fill_holes(mask)), 0.5, "CT only: largest water-density "
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
    """Bladder, kidneys, salivary glands, liver and spleen where CT and PET show them."""
    out: dict[AnatomyLabel, OrganResult] = {}
    out[AnatomyLabel.URINARY_BLADDER] = _bladder(hu, pet, t, grid, frame, config)
    no_pet = "needs PET uptake to be found by rules (no PET given)"
    if pet is None:
        for lab in (AnatomyLabel.KIDNEYS, AnatomyLabel.SALIVARY_GLANDS, AnatomyLabel.LIVER,
                    AnatomyLabel.SPLEEN):
            out[lab] = OrganResult(None, 0.0, no_pet)
        return out
    zs = grid.z_mm()
    lung_z = np.flatnonzero(t.lungs.any(axis=(1, 2)))
    dz = frame.diaphragm_z_mm
    crest = [frame.landmarks[lm].position_mm for lm in (Landmark.ILIAC_CREST_LEFT,
                                                         Landmark.ILIAC_CREST_RIGHT)]
    crest_z = [c[2] for c in crest if c is not None]
    if dz is not None:
        lo = float(np.mean(crest_z)) if crest_z else dz - 250.0
        kid = _paired_hot(pet, t, grid, frame.x_mid_mm, suv=config.kidney_suv,
                          zlim=(lo, dz + 30.0), lateral=(25.0, 140.0), min_ml=15.0)
        out[AnatomyLabel.KIDNEYS] = (
            OrganResult(kid, 0.7, f"SUV >= {config.kidney_suv:g} components lateral to the "
                        "spine between the iliac crests and the diaphragm")
            if kid.any() else OrganResult(None, 0.0, "no renal uptake found below the "
                                          "diaphragm"))
        # liver and spleen: moderate uptake, soft-tissue density, right / left upper abdomen
        ks = np.flatnonzero((zs <= dz + 40.0) & (zs >= dz - 220.0))
        zsl = slice(int(ks[0]), int(ks[-1]) + 1) if ks.size else slice(0, 0)
        soft = (hu[zsl] > 20.0) & (hu[zsl] < 120.0) & t.body[zsl] & ~t.bone[zsl] & ~t.lungs[zsl]
        xx = grid.x_mm()[None, None, :]
        pet_up = pet[zsl]
        kid_near = box_dilate(kid[zsl], 2) if kid.any() else None
        for label, side, lo_suv in ((AnatomyLabel.LIVER, -1.0, config.organ_suv),
                                    (AnatomyLabel.SPLEEN, 1.0, config.organ_suv)):
            cand = soft & (pet_up >= lo_suv) & (side * (xx - frame.x_mid_mm) > 15.0)
            if kid_near is not None:
                cand &= ~kid_near
            cand = box_open(cand, 1)
            comp, sizes = _components(cand)
            sizes[0] = 0
            min_ml = 500.0 if label is AnatomyLabel.LIVER else 50.0
            if sizes.size > 1 and sizes.max() * grid.spacing_mm**3 / 1000.0 >= min_ml:
                organ = np.zeros(t.body.shape, dtype=bool)
                organ[zsl] = comp == int(np.argmax(sizes))
                out[label] = OrganResult(organ, 0.6,
                                         f"largest soft-tissue component with SUV >= "
                                         f"{lo_suv:g} in the {'right' if side < 0 else 'left'} "
                                         "upper abdomen")
            else:
                out[label] = OrganResult(None, 0.0, "no large soft-tissue component with "
                                         "tracer uptake in the upper abdomen")
    else:
        for lab in (AnatomyLabel.KIDNEYS, AnatomyLabel.LIVER, AnatomyLabel.SPLEEN):
            out[lab] = OrganResult(None, 0.0, "the lungs (diaphragm level) are not in the CT, "
                                   "so the upper abdomen cannot be located")
    if lung_z.size:
        apex = float(zs[lung_z[-1]])
        sal = _paired_hot(pet, t, grid, frame.x_mid_mm, suv=config.salivary_suv,
                          zlim=(apex, apex + 180.0), lateral=(15.0, 90.0), min_ml=2.0)
        out[AnatomyLabel.SALIVARY_GLANDS] = (
            OrganResult(sal, 0.6, f"SUV >= {config.salivary_suv:g} components in the neck and "
                        "face, off the midline")
            if sal.any() else OrganResult(None, 0.0, "no glandular uptake above the lung apices "
                                          "(head and neck not in the PET?)"))
    else:
        out[AnatomyLabel.SALIVARY_GLANDS] = OrganResult(None, 0.0, "no lungs, so no neck level")
    return out
