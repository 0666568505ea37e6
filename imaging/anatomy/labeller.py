"""``label_anatomy``: CT (+ PET) -> :class:`AnatomyMap` on the PET grid."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.adrenals import adrenal_regions
from imaging.anatomy.bone_detail import bone_on_reference
from imaging.anatomy.grid import (
    WorkGrid,
    crop_to_content,
    make_work_grid,
    peak_for,
    resample_image,
    resample_onto,
    shrink_for,
    to_reference_box,
)
from imaging.anatomy.landmarks import PelvisFrame, find_landmarks
from imaging.anatomy.model import AnatomyConfig, AnatomyMap, LandmarkFinding, MaskInfo
from imaging.anatomy.organs import OrganResult, find_organs
from imaging.anatomy.providers import ProviderMasks, load_provider_masks
from imaging.anatomy.regions import REGION_ORDER, fossa_box, nodal_regions, rectum_front
from imaging.anatomy.tissues import bbox, segment_tissues
from imaging.errors import AnatomyError
from imaging.vocabulary import AnatomyLabel, Landmark, NodalRegion
from imaging.volume import Volume

__all__ = ["label_anatomy"]

logger = logging.getLogger(__name__)

_BITS: tuple[AnatomyLabel, ...] = tuple(AnatomyLabel)


def _check_inputs(ct: Volume, pet: Volume | None) -> None:
    if ct.unit != "HU":
        raise AnatomyError(f"label_anatomy needs a CT in HU, got unit {ct.unit!r}; convert the "
                           "CT to Hounsfield units (rescale slope/intercept) first.")
    arr = np.asarray(ct.array)
    if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
        raise AnatomyError("The CT holds NaN or infinite values; fix the reader or the file.")
    if pet is not None and pet.unit not in ("g/ml", "cm2/ml", "Bq/ml", "CNTS", "1"):
        raise AnatomyError(f"PET unit {pet.unit!r} is not a PET unit (expected SUV g/ml).")


def label_anatomy(ct: Volume, *, pet: Volume | None = None, reference: Volume | None = None,
                  config: AnatomyConfig = AnatomyConfig()) -> AnatomyMap:  # noqa: B008
    """Label organs, landmarks, the prostate fossa and nodal regions of a PET/CT study.

    Parameters
    ----------
    ct : Volume
        CT in HU, any orientation (HFS, FFS, prone, oblique rows) and slice thickness.
    pet : Volume, optional
        PET in SUV (g/ml) on its own grid; helps to find the bladder, kidneys, liver, spleen
        and salivary glands. Must share the CT's frame of reference.
    reference : Volume, optional
        Grid of the results; defaults to ``pet``'s grid, else the CT's.
    config : AnatomyConfig
        Thresholds, provider choice and pelvic boundary.

    Returns
    -------
    AnatomyMap
        Masks, nodal regions and landmarks on the reference grid, each with provider,
        confidence and reason.

    Raises
    ------
    AnatomyError
        If the CT is not in HU or holds no body, or if ``config.require_pelvis`` is set and the
        pelvis (femoral heads, symphysis, aortic bifurcation) cannot be located.
    """
    _check_inputs(ct, pet)
    ref = reference if reference is not None else (pet if pet is not None else ct)
    grid = make_work_grid(ct, config.working_spacing_mm)
    ct_img = shrink_for(ct, grid)
    # the air around the patient is cut away in-plane: every rule runs on the body's box
    grid = crop_to_content(grid, ct_img, above=config.body_hu)
    hu = resample_image(ct_img, grid, fill=-1024.0)
    del ct_img
    tissues = segment_tissues(hu, grid.spacing_mm, config=config, peak_hu=peak_for(ct, grid))
    if not tissues.body.any():
        raise AnatomyError(
            f"No body found in the CT (no voxel above {config.body_hu:g} HU in a component of "
            f">= {config.body_min_ml:g} mL); check that the series is a CT in HU."
        )
    pet_w = resample_onto(pet, grid, fill=0.0) if pet is not None else None
    frame = find_landmarks(tissues, grid, config=config)
    organs = find_organs(hu, pet_w, tissues, grid, frame, config=config)

    kid = organs.get(AnatomyLabel.KIDNEYS)
    others = np.zeros(grid.shape, dtype=bool)
    for label in (AnatomyLabel.LIVER, AnatomyLabel.SPLEEN, AnatomyLabel.BOWEL,
                  AnatomyLabel.HEART, AnatomyLabel.URINARY_BLADDER):
        res = organs.get(label)
        if res is not None and res.mask is not None:
            others |= res.mask
    adrenals, adrenal_why = adrenal_regions(
        hu, None if kid is None else kid.mask, tissues, grid, frame.x_mid_mm, exclude=others,
        config=config)
    organs[AnatomyLabel.ADRENALS] = OrganResult(adrenals, 0.3 if adrenals is not None else 0.0,
                                                adrenal_why)

    liver = organs.get(AnatomyLabel.LIVER)
    if liver is not None and liver.mask is not None and liver.mask.any():
        k = int(np.flatnonzero(liver.mask.any(axis=(1, 2)))[-1])
        jj, ii = np.nonzero(liver.mask[k])
        pos = grid.to_world(np.array([k, jj.mean(), ii.mean()]))
        frame.landmarks[Landmark.LIVER_DOME] = LandmarkFinding(
            _xyz(pos), 0.6, "top of the rule-based liver mask", "liver")

    provider: ProviderMasks | None = None
    if config.provider != "rule":
        assert config.provider_path is not None  # checked by AnatomyConfig
        provider = load_provider_masks(config.provider_path, kind=config.provider, grid=grid,
                                       ct=ct)
        _apply_vessel_landmarks(provider, grid, frame)

    masks_w: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    info: dict[str, MaskInfo] = {}
    voxel_ml = grid.spacing_mm**3 / 1000.0
    for label, arr, reason in (
        (AnatomyLabel.BODY, tissues.body, f"HU > {config.body_hu:g}, couch removed, holes filled"),
        (AnatomyLabel.BONE, tissues.bone, tissues.notes.get(
            "bone", f"HU >= {config.bone_hu:g}, closed, marrow filled, metal removed")),
        (AnatomyLabel.LUNGS, tissues.lungs, f"air < {config.lung_hu:g} HU inside the body, "
         "large components"),
        (AnatomyLabel.METAL, tissues.metal, f"HU >= {config.metal_hu:g}"),
    ):
        if arr.any():
            masks_w[label] = arr
            info[label.value] = MaskInfo("rule", 0.9, reason, _volume_ml(arr, voxel_ml))
        else:
            info[label.value] = MaskInfo("rule", 0.0, tissues.notes.get(
                label.value, f"nothing matched ({reason})"))
    for label, res in organs.items():
        if res.mask is not None and res.mask.any():
            masks_w[label] = res.mask
            info[label.value] = MaskInfo("rule", res.confidence, res.reason,
                                         _volume_ml(res.mask, voxel_ml))
        else:
            info[label.value] = MaskInfo("rule", 0.0, res.reason)
    if provider is not None:
        for label, arr in provider.masks.items():
            masks_w[label] = arr
            info[label.value] = MaskInfo(provider.name, 0.95,
                                         f"{provider.name} classes: "
                                         f"{', '.join(provider.sources[label])}",
                                         _volume_ml(arr, voxel_ml))
    bladder = masks_w.get(AnatomyLabel.URINARY_BLADDER)
    front = None
    if config.fossa_rectum_wall:
        front, how_rectum = rectum_front(hu, tissues, grid, frame, bladder,
                                         masks_w.get(AnatomyLabel.RECTUM), config=config)
    fossa, why = fossa_box(tissues, grid, frame, bladder, config=config, rectum_front_mm=front)
    if front is not None:
        why += f" ({how_rectum})"
    if fossa is not None and fossa.any():
        masks_w[AnatomyLabel.PROSTATE_FOSSA] = fossa
        info[AnatomyLabel.PROSTATE_FOSSA.value] = MaskInfo("rule", 0.7, why,
                                                           _volume_ml(fossa, voxel_ml))
    else:
        info[AnatomyLabel.PROSTATE_FOSSA.value] = MaskInfo("rule", 0.0, why)
    for label in AnatomyLabel:
        info.setdefault(label.value, MaskInfo("rule", 0.0, "no rule for this label; use a "
                                              "model provider (totalsegmentator / moose)"))
    regions_w, region_reasons = nodal_regions(tissues, grid, frame, config=config)

    # -- onto the reference grid: one bitfield and one region index, nearest neighbour ----------
    masks, nodal, region_ml = _to_reference_grid(masks_w, regions_w, grid, ref)
    if AnatomyLabel.BONE in masks and AnatomyLabel.BONE not in (provider.masks if provider
                                                                else {}):
        masks[AnatomyLabel.BONE] = bone_on_reference(masks[AnatomyLabel.BONE], ct, ref,
                                                     config=config)
    for n, region in enumerate(REGION_ORDER):
        ml = region_ml.get(n + 1, 0.0)
        info[region.value] = MaskInfo("rule", 0.6 if ml > 0 else 0.0,
                                      region_reasons.get(region, "not located"), ml)
    boundary_lm = (Landmark.AORTIC_BIFURCATION if config.pelvic_boundary == "aortic_bifurcation"
                   else None)
    if boundary_lm is not None:
        boundary_z = frame.z(boundary_lm)
    else:
        zz = [frame.z(lm) for lm in (Landmark.COMMON_ILIAC_BIFURCATION_LEFT,
                                     Landmark.COMMON_ILIAC_BIFURCATION_RIGHT)]
        found = [z for z in zz if z is not None]
        boundary_z = float(np.mean(found)) if found else None
    flags = list(frame.flags)
    if boundary_z is None:
        flags.append("pelvic_boundary_not_located")
    if config.require_pelvis:
        _require_pelvis(frame, boundary_z)
    grid_vol = ref.with_array(np.broadcast_to(np.uint8(0), ref.shape), unit="mask")
    return AnatomyMap(grid=grid_vol, masks=masks, nodal_regions=nodal,
                      landmarks={lm: frame.landmarks[lm] for lm in Landmark},
                      mask_info=info, pelvic_boundary=config.pelvic_boundary,
                      pelvic_boundary_z_mm=boundary_z, provider=config.provider,
                      flags=tuple(flags))


def _reference_box(box: tuple[slice, slice, slice], grid: WorkGrid,
                   ref: Volume) -> tuple[slice, slice, slice]:
    """Index box of ``ref`` that holds every reference voxel nearest to a voxel of ``box``."""
    corners = np.array([[k, j, i] for k in (box[0].start - 1, box[0].stop)
                        for j in (box[1].start - 1, box[1].stop)
                        for i in (box[2].start - 1, box[2].stop)], dtype=np.float64)
    idx = ref.world_to_index(grid.to_world(corners))
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 2
    return tuple(slice(max(int(a), 0), min(int(b), n))  # type: ignore[return-value]
                 for a, b, n in zip(lo, hi, ref.shape, strict=True))


def _within(box: tuple[slice, slice, slice], cover: tuple[slice, slice, slice],
            ) -> tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]:
    """``box`` clipped to ``cover``: in the reference grid's indices and in ``cover``'s own."""
    full, local = [], []
    for b, c in zip(box, cover, strict=True):
        lo = max(b.start, c.start)
        hi = max(min(b.stop, c.stop), lo)
        full.append(slice(lo, hi))
        local.append(slice(lo - c.start, hi - c.start))
    return (full[0], full[1], full[2]), (local[0], local[1], local[2])


def _to_reference_grid(masks_w: dict[AnatomyLabel, NDArray[np.bool_]],
                       regions_w: NDArray[np.uint8], grid: WorkGrid, ref: Volume,
                       ) -> tuple[dict[AnatomyLabel, NDArray[np.bool_]],
                                  dict[NodalRegion, NDArray[np.bool_]], dict[int, float]]:
    """Masks and nodal regions on the reference grid (nearest neighbour in physical space).

    The masks travel as one bitfield (one resampling for all, the region index in its top byte)
    on the reference box the working grid covers, and each is decoded only inside the
    reference box its working-grid box maps to (each region inside its box on the reference
    grid, from ``find_objects``). Returns the masks, the regions and the volume (mL) of each
    region index on the reference grid.
    """
    present = [label for label in _BITS if label in masks_w]
    # the region index rides in the top byte when the masks leave it free (one resampling)
    packed = len(present) <= 24
    dtype = np.uint32 if packed or len(present) > 16 else np.uint16
    bits = regions_w.astype(np.uint32) << np.uint32(24) if packed else np.zeros(grid.shape,
                                                                                dtype=dtype)
    boxes: dict[AnatomyLabel, tuple[slice, slice, slice]] = {}
    for n, label in enumerate(present):
        box = bbox(masks_w[label])
        if box is None:
            continue
        boxes[label] = box
        sub = bits[box]
        sub |= np.left_shift(masks_w[label][box].astype(dtype), dtype(n))  # not a bool scatter
    # values only on the reference box the working grid covers: zero outside it
    bits_ref, cover = to_reference_box(bits, grid, ref)
    masks: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    for n, label in enumerate(present):
        out = np.zeros(ref.shape, dtype=bool)
        if label in boxes:
            rbox, local = _within(_reference_box(boxes[label], grid, ref), cover)
            np.not_equal(bits_ref[local] & dtype(1 << n), 0, out=out[rbox])
        masks[label] = out
    regions_ref = ((bits_ref >> np.uint32(24)).astype(np.uint8) if packed
                   else to_reference_box(regions_w, grid, ref)[0])
    nodal: dict[NodalRegion, NDArray[np.bool_]] = {}
    volume_ml: dict[int, float] = {}
    # each region's box on the reference grid itself (the covered box has fewer voxels than
    # the working grid: 4 mm PET voxels)
    for n, local in enumerate(ndi.find_objects(regions_ref, max_label=len(REGION_ORDER))):
        if local is None:
            continue
        rbox = (slice(local[0].start + cover[0].start, local[0].stop + cover[0].start),
                slice(local[1].start + cover[1].start, local[1].stop + cover[1].start),
                slice(local[2].start + cover[2].start, local[2].stop + cover[2].start))
        m = np.zeros(ref.shape, dtype=bool)
        np.equal(regions_ref[local], n + 1, out=m[rbox])
        count = np.count_nonzero(m[rbox])
        if count:
            nodal[REGION_ORDER[n]] = m
            volume_ml[n + 1] = float(count * ref.voxel_volume_ml)
    return masks, nodal, volume_ml


def _volume_ml(mask: NDArray[np.bool_], voxel_ml: float) -> float:
    """Volume of a mask in mL (``count_nonzero``: a bool ``sum`` casts every voxel first)."""
    return float(np.count_nonzero(mask) * voxel_ml)


def _xyz(pos: NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(pos[0]), float(pos[1]), float(pos[2]))


def _require_pelvis(frame: PelvisFrame, boundary_z: float | None) -> None:
    needed = (Landmark.FEMORAL_HEAD_LEFT, Landmark.FEMORAL_HEAD_RIGHT,
              Landmark.PUBIC_SYMPHYSIS_SUPERIOR, Landmark.PUBIC_SYMPHYSIS_INFERIOR)
    missing = [f"{lm.value} ({frame.landmarks[lm].reason})" for lm in needed
               if not frame.landmarks[lm].found]
    if boundary_z is None:
        missing.append("pelvic boundary (aortic / common-iliac bifurcation)")
    if missing:
        raise AnatomyError(
            "The pelvis could not be located, so fossa and pelvic-node regions are unknown: "
            + "; ".join(missing) + ". Check that the CT covers the pelvis (vertex to mid-thigh), "
            "or supply model masks (provider='totalsegmentator' or 'moose')."
        )


def _apply_vessel_landmarks(provider: ProviderMasks, grid: WorkGrid, frame: PelvisFrame) -> None:
    """Aortic and common-iliac bifurcations from the provider's vessel masks (domain.md 3.4)."""
    aorta = provider.roles.get("aorta")
    if aorta is not None and aorta.any():
        zs = np.flatnonzero(aorta.any(axis=(1, 2)))
        k = zs[0]
        if k <= 1:
            frame.landmarks[Landmark.AORTIC_BIFURCATION] = LandmarkFinding(
                None, 0.0, "the aorta mask reaches the caudal edge of the scan: its end "
                "(the bifurcation) is outside the CT", "none")
            aorta = None
    if aorta is not None and aorta.any():
        _, jj, ii = np.nonzero(aorta[k:k + 2])
        pos = grid.to_world(np.array([k, jj.mean(), ii.mean()]))
        frame.landmarks[Landmark.AORTIC_BIFURCATION] = LandmarkFinding(
            _xyz(pos), 0.85, "inferior end of the aorta mask", "vessels")
    for side, lm in (("left", Landmark.COMMON_ILIAC_BIFURCATION_LEFT),
                     ("right", Landmark.COMMON_ILIAC_BIFURCATION_RIGHT)):
        art = provider.roles.get(f"iliac_artery_{side}")
        if art is None or not art.any():
            continue
        zs = np.flatnonzero(art.any(axis=(1, 2)))
        if zs[0] <= 1:
            continue
        if aorta is None or not aorta.any():
            k = zs[-1]
            jj, ii = np.nonzero(art[k])
            pos = grid.to_world(np.array([k, jj.mean(), ii.mean()]))
            frame.landmarks[Landmark.AORTIC_BIFURCATION] = LandmarkFinding(
                _xyz(pos), 0.7, "cranial end of the iliac artery mask",
                "vessels")
        k = zs[0]
        jj, ii = np.nonzero(art[k])
        pos = grid.to_world(np.array([k, jj.mean(), ii.mean()]))
        frame.landmarks[lm] = LandmarkFinding(_xyz(pos), 0.7,
                                              "caudal end of the common iliac artery mask",
                                              "vessels")
