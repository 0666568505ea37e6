"""Rule-based tissue masks on the working grid (domain.md 3.1): body, lungs, bone, metal.

Arrays are ``[z, y, x]`` on a :class:`~imaging.anatomy.grid.WorkGrid` (z superior, y posterior,
x left). Morphology uses separable box filters and connected components (cc3d), never per-slice
Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from imaging.anatomy.model import AnatomyConfig

__all__ = ["Tissues", "bbox", "box_close", "box_dilate", "box_erode", "box_open",
           "contrast_lumina", "fill_holes", "fill_holes_per_slice", "label_slices",
           "segment_tissues"]

_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = True


@dataclass(frozen=True, slots=True)
class Tissues:
    """Working-grid masks and what was noted while making them."""

    body: NDArray[np.bool_]
    lungs: NDArray[np.bool_]
    bone: NDArray[np.bool_]
    metal: NDArray[np.bool_]
    notes: dict[str, str]


def _window_1d(mask: NDArray[np.bool_], r: int, axis: int, erode: bool) -> NDArray[np.bool_]:
    """OR (dilation) or AND (erosion) of each voxel's ``2r + 1`` neighbours along ``axis``.

    Voxels beyond the array count as False for dilation and True for erosion (the
    ``scipy.ndimage`` minimum / maximum filter with ``mode="constant"``). The window is built by
    doubling, so a width w costs about log2(w) + 2 whole-array boolean operations.
    """
    n = mask.shape[axis]
    w = 2 * r + 1
    pad = [(0, 0)] * mask.ndim
    pad[axis] = (r, r)
    f = np.pad(mask, pad, mode="constant", constant_values=erode)
    op = np.logical_and if erode else np.logical_or
    m = f.shape[axis]

    def sl(a: int, b: int) -> tuple[slice, ...]:
        idx = [slice(None)] * mask.ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    span = 1
    while 2 * span <= w:  # f[i] covers [i, i + 2 span - 1]
        op(f[sl(0, m - span)], f[sl(span, m)], out=f[sl(0, m - span)])
        span *= 2
    rest = w - span
    if rest > 0:
        op(f[sl(0, m - rest)], f[sl(rest, m)], out=f[sl(0, m - rest)])
    return f[sl(0, n)]  # a view: the next axis pads (copies) it anyway


def _box(mask: NDArray[np.bool_], size: tuple[int, int, int], erode: bool) -> NDArray[np.bool_]:
    if any(s % 2 == 0 for s in size):  # even windows are not centred: leave them to SciPy
        filt = ndi.minimum_filter if erode else ndi.maximum_filter
        return np.asarray(filt(np.asarray(mask, dtype=bool).view(np.uint8), size=size,
                               mode="constant", cval=int(erode)), dtype=bool)
    out = np.asarray(mask, dtype=bool)
    for axis, s in enumerate(size):
        if s > 1:
            out = _window_1d(out, s // 2, axis, erode)
    return np.ascontiguousarray(out) if out is not mask else out.copy()


def _erode(mask: NDArray[np.bool_], size: tuple[int, int, int]) -> NDArray[np.bool_]:
    return _box(mask, size, erode=True)


def _dilate(mask: NDArray[np.bool_], size: tuple[int, int, int]) -> NDArray[np.bool_]:
    return _box(mask, size, erode=False)


def _cube_in_box(mask: NDArray[np.bool_], r: int, erode: bool) -> NDArray[np.bool_]:
    """Erosion or dilation by a (2r+1)^3 cube, computed on the mask's box grown by ``r``.

    Outside that box the mask is False and so are its erosion and dilation; inside it every
    voxel's neighbourhood is either in the box or beyond the array's edge, as on the whole
    array. The result is the same, and an organ's mask in a slab of the body is a small box.
    """
    size = (2 * r + 1,) * 3
    box = bbox(mask, pad=r)
    if box is None:
        return np.zeros(mask.shape, dtype=bool)
    if math.prod(s.stop - s.start for s in box) > mask.size // 2:
        return _box(mask, size, erode)
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = _box(mask[box], size, erode)
    return out


def box_erode(mask: NDArray[np.bool_], r: int) -> NDArray[np.bool_]:
    """Erosion by a (2r+1)^3 cube (separable, on the mask's box)."""
    return _cube_in_box(mask, r, erode=True) if r > 0 else mask


def box_dilate(mask: NDArray[np.bool_], r: int) -> NDArray[np.bool_]:
    """Dilation by a (2r+1)^3 cube (separable, on the mask's box)."""
    return _cube_in_box(mask, r, erode=False) if r > 0 else mask


def box_open(mask: NDArray[np.bool_], r: int) -> NDArray[np.bool_]:
    """Opening by a (2r+1)^3 cube."""
    return box_dilate(box_erode(mask, r), r)


def box_close(mask: NDArray[np.bool_], r: int) -> NDArray[np.bool_]:
    """Closing by a (2r+1)^3 cube (no shrinking at the array border)."""
    padded = np.pad(mask, r)
    out = box_erode(box_dilate(padded, r), r)
    return out[r:-r, r:-r, r:-r] if r > 0 else out


def bbox(mask: NDArray[np.bool_], pad: int = 0) -> tuple[slice, slice, slice] | None:
    """Index box of the True voxels, grown by ``pad`` (clipped); None when empty.

    Two passes over the volume: the per-slice test on contiguous rows and the in-plane
    projection (an element-wise OR of the slices), whose rows and columns give the rest.
    """
    nz = mask.shape[0]
    flat = np.ascontiguousarray(mask).reshape(nz, -1)
    ks = np.flatnonzero(flat.any(axis=1))
    if ks.size == 0:
        return None
    proj = np.logical_or.reduce(mask[ks[0]:ks[-1] + 1], axis=0)
    js = np.flatnonzero(proj.any(axis=1))
    is_ = np.flatnonzero(proj.any(axis=0))
    out = []
    for idx, n in ((ks, mask.shape[0]), (js, mask.shape[1]), (is_, mask.shape[2])):
        out.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + pad + 1, n)))
    return (out[0], out[1], out[2])


def label_slices(mask: NDArray[np.bool_]) -> tuple[NDArray[np.unsignedinteger[Any]], int]:
    """In-plane 8-connected components of every z slice: labels (0 off the mask) and their top.

    The slices are stacked into one 2-D image (``(Z * Y, X)``) and labelled once with cc3d; a
    component can join the next slice's only through a slice's first or last row. cc3d 4.1
    labels some voxels off the mask of such a 2-D image (on random masks, a few hundred voxels
    in 300 images, some with the label of a component inside the mask); those are set to 0,
    and the count is taken from the labels, not from ``return_N``.
    """
    nz, ny, nx = mask.shape
    labels = cc3d.connected_components(np.ascontiguousarray(mask).reshape(nz * ny, nx),
                                       connectivity=8).reshape(nz, ny, nx)
    labels[~mask] = 0
    return labels, int(labels.max(initial=0))


def _slice_holes(mask: NDArray[np.bool_],
                 ) -> tuple[NDArray[np.unsignedinteger[Any]], NDArray[np.bool_]]:
    """In-plane background components of every z slice and, per component, whether it is a hole.

    Labelled by :func:`label_slices` on the background: background touching a slice's border
    may join the next slice's border background there, which is outside either way, while a
    hole cannot reach a border row and so never joins another slice.
    """
    background, n = label_slices(~mask)
    border = np.unique(np.concatenate([
        background[:, 0, :].ravel(), background[:, -1, :].ravel(),
        background[:, :, 0].ravel(), background[:, :, -1].ravel()]))
    hole = np.ones(n + 1, dtype=bool)
    hole[border] = False
    hole[0] = False
    return background, hole


def fill_holes_per_slice(mask: NDArray[np.bool_]) -> tuple[NDArray[np.bool_], NDArray[np.int32]]:
    """Fill the in-plane holes of every z slice at once.

    Returns the filled mask and the hole labels (0 outside holes; each 2-D hole its own label).
    See :func:`_slice_holes`; ``fill_holes(mask, per_slice=True)`` when the labels are not
    needed.
    """
    if mask.size == 0:
        return mask.copy(), np.zeros(mask.shape, dtype=np.int32)
    background, hole = _slice_holes(mask)
    ids = np.where(hole, np.arange(hole.size, dtype=np.int32), np.int32(0))
    labels = ids[background]
    return mask | (labels > 0), labels


def fill_holes(mask: NDArray[np.bool_], *, per_slice: bool = False) -> NDArray[np.bool_]:
    """Fill the holes of a mask: 3-D (6-connected background) or in every z slice.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    per_slice : bool
        False: ``scipy.ndimage.binary_fill_holes`` with its default (6-connected) structure;
        True: the filled mask of :func:`fill_holes_per_slice` (in-plane, 8-connected
        background), without its label volume.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)

    Notes
    -----
    The holes are the background components that touch no face of the array (no border row
    or column of their slice). In 3-D, with a frame of background around the array, the
    outside is the frame's component: one cc3d labelling and one comparison. SciPy's fill
    finds the same voxels by dilating from the faces one voxel per iteration (a few times
    slower on an organ's box).
    """
    if mask.size == 0:
        return mask.copy()
    if per_slice:
        background, hole = _slice_holes(mask)
        return np.asarray(mask | hole[background], dtype=bool)
    # a frame of background around the array: the outside is the frame's component (the mask
    # is label 0, the holes any other label)
    nz, ny, nx = mask.shape
    framed = np.ones((nz + 2, ny + 2, nx + 2), dtype=bool)
    np.logical_not(mask, out=framed[1:-1, 1:-1, 1:-1])
    lab = cc3d.connected_components(framed, connectivity=6)
    return np.asarray(lab[1:-1, 1:-1, 1:-1] != lab[0, 0, 0], dtype=bool)


def _odd(n: float) -> int:
    return max(1, 2 * round(n) + 1)


def _partial_lungs(labels: NDArray[np.integer[Any]], sizes: NDArray[np.integer[Any]],
                   voxel_ml: float,
                   body: NDArray[np.bool_]) -> list[int]:
    zs = np.flatnonzero(body.any(axis=(1, 2)))
    if zs.size == 0:
        return []
    top = zs[-1]
    cand = np.flatnonzero(sizes * voxel_ml >= 20.0)
    cand = cand[cand > 0]
    if cand.size == 0:
        return []
    nz = labels.shape[0]
    # per-slice area of each candidate, shape (n_cand, Z)
    sel = np.isin(labels, cand)
    zidx = np.broadcast_to(np.arange(nz)[:, None, None], labels.shape)[sel]
    remap = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    remap[cand] = np.arange(cand.size)
    area = np.zeros((cand.size, nz))
    np.add.at(area, (remap[labels[sel]], zidx), 1.0)
    chosen = []
    for row, lab in zip(area, cand, strict=True):
        ks = np.flatnonzero(row)
        mid = (ks[0] + ks[-1]) / 2.0
        upper, lower = row[ks[ks > mid]].sum(), row[ks[ks <= mid]].sum()
        if ks[-1] >= top - 2 and upper >= 2.0 * max(lower, 1.0):
            chosen.append(int(lab))
    return chosen


def _max3(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """Maximum over each voxel's 3 x 3 x 3 neighbourhood (edges repeat: ``mode="nearest"``)."""
    out = values
    for axis in range(values.ndim):
        src = out
        out = src.copy()
        lo = [slice(None)] * values.ndim
        hi = [slice(None)] * values.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        np.maximum(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])
        np.maximum(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])
    return out


def _half_max_edge(bone: NDArray[np.bool_], hu: NDArray[np.float32],
                   config: AnatomyConfig) -> NDArray[np.bool_]:
    """Drop outer bone voxels below the local half-maximum edge.

    Resampled onto the working grid, a cortex of ~850 HU next to ~40 HU soft tissue crosses
    the 120 HU threshold a fraction of a voxel outside its true edge, so every bone surface
    comes out about half a voxel too thick (one working voxel on thin cortex and ribs). An edge
    voxel is kept only if it reaches ``bone_edge_fraction`` of the way from soft tissue
    (``bone_edge_soft_hu``) to the brightest voxel of its 3 x 3 x 3 neighbourhood: the
    full-width-at-half-maximum edge, which follows the real edge also where partial volume
    lowers the peak (thin real ribs), unlike one higher global threshold.
    """
    box = bbox(bone, pad=1)
    if box is None:
        return bone
    sub_bone = bone[box]
    sub_hu = hu[box]
    edge = sub_bone & ~_erode(sub_bone, (3, 3, 3))
    peak = _max3(sub_hu)
    soft = np.float32(config.bone_edge_soft_hu)
    level = soft + np.float32(config.bone_edge_fraction) * (peak - soft)
    out = bone.copy()
    out[box] = sub_bone & ~(edge & (sub_hu < level))
    return out


def _odd_voxels(mm: float, spacing_mm: float) -> int:
    """Odd box width (voxels) closest to ``mm``, at least 1."""
    return max(1, 2 * round(mm / spacing_mm / 2.0) + 1)


def contrast_lumina(hu: NDArray[np.float32], candidates: NDArray[np.bool_], spacing_mm: float,
                    *, config: AnatomyConfig) -> NDArray[np.bool_]:
    """Contrast-filled lumina among the bone candidates, with their partial-volume wall.

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        CT in HU on an isotropic grid.
    candidates : ndarray of bool, shape (Z, Y, X)
        Voxels at or above the bone threshold (inside the body).
    spacing_mm : float
        Isotropic voxel size.
    config : AnatomyConfig
        ``bone_hu`` (voxels below it count as soft tissue around a lumen) and the ``lumen_*``
        rule: ``lumen_max_hu`` (upper HU of enhanced arterial-phase blood; cortical bone lies
        above), ``lumen_core_mm`` (in-plane width and height of the box of blood-dense voxels a
        lumen holds), ``lumen_min_soft_rim`` (share of its in-plane outline in soft tissue) and
        ``lumen_min_length_mm`` (extent along z: a lumbar vertebral body is 25-35 mm tall, and on
        a coarse grid two of them can join across a thin disc).

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
        The lumina and the one-voxel in-plane rim around them that is below ``lumen_max_hu``
        (so a calcified plaque or the cortex of a vertebra touching the vessel stays a bone
        candidate).

    Notes
    -----
    Blood-dense voxels are ``candidates`` below ``lumen_max_hu``; their opening by a
    ``lumen_core_mm`` box leaves the wide, homogeneous regions. A component of those is a
    lumen when at least ``lumen_min_soft_rim`` of the voxels just outside it in-plane are
    soft tissue (below ``bone_hu``). Marrow of blood density sits inside cortex and trabecular
    bone, so its rim is above the threshold almost everywhere.
    """
    out = np.zeros(hu.shape, dtype=bool)
    blood_max = np.float32(config.lumen_max_hu)
    dense = candidates & (hu < blood_max)
    box = bbox(dense, pad=2)
    if box is None:
        return out
    sub_hu = hu[box]
    sub = dense[box]
    w = _odd_voxels(config.lumen_core_mm[0], spacing_mm)
    h = _odd_voxels(config.lumen_core_mm[1], spacing_mm)
    size = (h, w, w)
    core = _erode(sub, size)
    if not core.any():
        return out
    wide = _dilate(core, size) & sub
    labels, n = cc3d.connected_components(wide, connectivity=6, return_N=True)
    # the rim: voxels one step outside a region in-plane, each given the label next to it
    grown = labels.copy()
    for axis in (1, 2):
        for shift in (1, -1):
            nb = np.roll(labels, shift, axis=axis)
            take = (grown == 0) & (nb > 0)
            grown[take] = nb[take]
    rim = (grown > 0) & (labels == 0)
    rim_n = np.bincount(grown[rim], minlength=n + 1)
    soft_n = np.bincount(grown[rim & (sub_hu < np.float32(config.bone_hu))], minlength=n + 1)
    lumen = soft_n >= config.lumen_min_soft_rim * np.maximum(rim_n, 1)
    lumen[0] = False
    # and it is a tube: longer along z than a vertebral body between two discs, or cut by the
    # first or last slice of the scan
    nz = hu.shape[0]
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or not lumen[lab]:
            continue
        k0, k1 = sl[0].start + box[0].start, sl[0].stop + box[0].start
        long_ = (k1 - k0) * spacing_mm >= config.lumen_min_length_mm
        lumen[lab] = long_ or k0 == 0 or k1 == nz
    if not lumen[1:].any():
        return out
    inside = lumen[grown]
    out[box] = inside & (sub_hu < blood_max)
    return out


def segment_tissues(hu: NDArray[np.float32], spacing_mm: float, *,
                    config: AnatomyConfig,
                    peak_hu: NDArray[np.float32] | None = None) -> Tissues:
    """Body, lungs, bone and metal from a working-grid CT (HU).

    Parameters
    ----------
    hu : ndarray, shape (Z, Y, X)
        CT in HU on the working grid (air fill -1024 outside the scan).
    spacing_mm : float
        Isotropic working spacing.
    config : AnatomyConfig
        Thresholds (see its fields).
    peak_hu : ndarray, shape (Z, Y, X), optional
        The CT's brightest voxel at its own resolution around each working voxel
        (:func:`imaging.anatomy.grid.peak_for`), for a CT finer than the working grid: a bone
        piece whose working-grid peak stays below ``bone_min_peak_hu`` is bone still when it
        reaches ``bone_min_native_peak_hu`` here.
    """
    notes: dict[str, str] = {}
    voxel_ml = spacing_mm**3 / 1000.0
    # -- body: threshold, opening to detach the couch, components, reconstruction, fill -----
    raw = hu > config.body_hu
    w = _odd(config.body_opening_mm / spacing_mm / 2)
    opened = _dilate(_erode(raw, (1, w, w)), (1, w, w))
    labels, n = cc3d.connected_components(opened, connectivity=6, return_N=True)
    if n == 0:
        empty = np.zeros(hu.shape, dtype=bool)
        return Tissues(empty, empty, empty, empty, {"body": "no voxel above "
                                                    f"{config.body_hu} HU: not a CT of a body"})
    # the component sizes from the labels of the foreground only (cast to intp for bincount)
    fg = labels > 0
    ids = labels[fg]
    sizes = np.bincount(ids, minlength=n + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    main = labels == largest
    keep = np.zeros(n + 1, dtype=bool)
    keep[largest] = True
    candidates = np.flatnonzero(sizes * voxel_ml >= config.body_min_ml)
    if candidates.size > 1:
        # reject couch-like pieces: lying below (posterior to) the patient's back
        yy = np.arange(hu.shape[1], dtype=np.float64)
        per_y = sizes[candidates].astype(np.float64)
        rows = np.broadcast_to(yy[None, :, None], hu.shape)
        ysum = np.bincount(ids, weights=rows[fg], minlength=n + 1)[candidates]
        mean_y = ysum / np.maximum(per_y, 1)
        # a connected component covers a contiguous run of rows
        ys = np.flatnonzero(main.any(axis=(0, 2)))
        main_y = np.arange(ys[0], ys[-1] + 1) if ys.size else ys
        back_y = np.percentile(main_y, 90) if main_y.size else hu.shape[1]
        for lab, my in zip(candidates, mean_y, strict=True):
            if lab != largest and my < back_y:
                keep[lab] = True
            elif lab != largest:
                notes["couch"] = "a couch-like component behind the patient was removed"
    body = main if np.count_nonzero(keep) == 1 else keep[labels]
    body = _dilate(body, (1, w, w)) & raw
    body = fill_holes(body, per_slice=True)
    # the rest lies inside the body: work on its box (full z, so scan edges stay edges)
    box = bbox(body, pad=2)
    assert box is not None  # the largest component is kept
    box = (slice(0, body.shape[0]), box[1], box[2])
    metal_b, bone_b, lungs_b = _inside_body(
        np.ascontiguousarray(hu[box]), body[box], spacing_mm, config, notes,
        peak_hu=None if peak_hu is None else np.ascontiguousarray(peak_hu[box]))
    metal = np.zeros(body.shape, dtype=bool)
    bone = np.zeros(body.shape, dtype=bool)
    lungs = np.zeros(body.shape, dtype=bool)
    metal[box], bone[box], lungs[box] = metal_b, bone_b, lungs_b
    return Tissues(body=body, lungs=lungs, bone=bone, metal=metal, notes=notes)


def _inside_body(hu: NDArray[np.float32], body: NDArray[np.bool_], spacing_mm: float,
                 config: AnatomyConfig, notes: dict[str, str], *,
                 peak_hu: NDArray[np.float32] | None = None,
                 ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """Metal, bone and lungs inside ``body`` (arrays on the body's box)."""
    voxel_ml = spacing_mm**3 / 1000.0
    # -- metal ---------------------------------------------------------------------------------
    metal = (hu >= config.metal_hu) & body
    if metal.any():
        mlab, _mn = cc3d.connected_components(metal, connectivity=26, return_N=True)
        msz = np.bincount(mlab.ravel())
        msz[0] = 0
        metal = (msz * voxel_ml >= config.metal_min_ml)[mlab]
    # -- bone: threshold, closing, marrow fill, size and peak checks, metal removed -----------
    bone = (hu >= config.bone_hu) & body & ~metal
    # contrast-filled lumina lying against bone would merge with it: out before the closing,
    # and again after it, so neither closing nor marrow fill bridges them back
    lumina = contrast_lumina(hu, bone, spacing_mm, config=config)
    bone &= ~lumina
    # the size floor is judged on the pieces before the half-maximum edge: on a coarse CT (an
    # autoPET-style CT on the PET grid) the edge cuts a thin rib into pieces of well under
    # bone_min_ml that were one bone with the rest of the rib
    whole, wn = cc3d.connected_components(bone, connectivity=26, return_N=True)
    whole_ml = np.bincount(whole.ravel(), minlength=wn + 1) * voxel_ml
    whole_ml[0] = 0.0
    if config.bone_edge_fraction > 0.0:
        bone = _half_max_edge(bone, hu, config)
    c = _odd(config.bone_closing_mm / spacing_mm)
    bone = _erode(_dilate(bone, (c, c, c)), (c, c, c))
    _filled, holes = fill_holes_per_slice(bone)
    if holes.max() > 0:
        area = np.bincount(holes.ravel())
        in_hole = holes > 0
        hsum = np.bincount(holes[in_hole], weights=hu[in_hole], minlength=area.size)
        mean = hsum / np.maximum(area, 1)
        area_cm2 = area * spacing_mm**2 / 100.0
        # red marrow (dense) up to marrow_fill_max_cm2; fatty marrow (medullary cavity of the
        # long bones) only in small holes, so fat-filled rings such as the pelvic inlet stay open
        ok = ((area_cm2 <= config.marrow_fill_max_cm2) & (mean >= config.marrow_min_hu)) | (
            (area_cm2 <= config.fatty_marrow_max_cm2) & (mean <= config.fatty_marrow_max_hu))
        ok[0] = False
        bone = bone | ok[holes]
    bone &= ~lumina
    if config.bone_edge_hu > config.bone_hu:
        # partial-volume rim: outer voxels that are mostly soft tissue
        edge = bone & ~_erode(bone, (1, 3, 3))
        bone &= ~(edge & (hu < config.bone_edge_hu))
    blab, bn = cc3d.connected_components(bone, connectivity=26, return_N=True)
    if bn:
        bsz = np.bincount(blab.ravel())
        peaked = np.zeros(bn + 1, dtype=bool)
        peaked[np.unique(blab[hu >= config.bone_min_peak_hu])] = True
        if peak_hu is not None:
            # a thin cortex (a rib's) averaged onto the working grid loses its density: judged
            # at the CT's own resolution too, against a level contrast-filled vessels and
            # organs do not reach there
            peaked[np.unique(blab[peak_hu >= config.bone_min_native_peak_hu])] = True
        # pieces cut by the first or last slice of the scan are judged as if whole
        cut = np.zeros(bn + 1, dtype=bool)
        cut[np.unique(blab[[0, -1]])] = True
        # a piece's size is that of the largest pre-edge piece it overlaps
        sel = blab > 0
        big = np.r_[0.0, ndi.maximum(whole_ml[whole[sel]], labels=blab[sel],
                                     index=np.arange(1, bn + 1))]
        good = ((np.maximum(bsz * voxel_ml, big) >= config.bone_min_ml) | cut) & (
            peaked)
        good[0] = False
        if np.any(~good[1:] & ~peaked[1:]
                  & (bsz[1:] * voxel_ml >= config.bone_min_ml)):
            notes["bone"] = ("dense components without a bone peak (contrast) were left out "
                             "of bone")
        bone = good[blab]
    if metal.any():
        bone &= ~_dilate(metal, (3, 3, 3))
    # -- lungs: air inside the body, large components, trachea cut -----------------------------
    air = (hu < config.lung_hu) & body
    alab, an = cc3d.connected_components(air, connectivity=6, return_N=True)
    lungs = np.zeros(hu.shape, dtype=bool)
    if an:
        asz = np.bincount(alab[air], minlength=an + 1)  # the air voxels' labels only
        asz[0] = 0
        order = np.argsort(asz)[::-1]
        chosen = [int(lab) for lab in order[:2] if asz[lab] * voxel_ml >= config.lung_min_ml]
        if not chosen:
            # a CT covering only part of the lungs (a slab): the lung bases are the air
            # components that reach the top of the scan and widen cranially
            chosen = _partial_lungs(alab, asz, voxel_ml, body)
        if chosen:
            if len(chosen) <= 2:  # the usual two lungs: compared, not gathered per voxel
                lungs = alab == chosen[0]
                for lab in chosen[1:]:
                    lungs |= alab == lab
            else:
                lut = np.zeros(an + 1, dtype=bool)
                lut[chosen] = True
                lungs = lut[alab]
            area = lungs.sum(axis=(1, 2)) * spacing_mm**2 / 100.0
            zs = np.flatnonzero(area > 0)
            top = zs[-1]
            # trachea: the narrow run of slices above the apices
            narrow = area < config.trachea_max_area_cm2
            # vessels and nodules inside the lungs belong to them: close, then fill per slice
            r = max(1, round(config.lung_closing_mm / spacing_mm / 2))
            lbox = bbox(lungs, pad=r + 1)
            assert lbox is not None
            sub = (box_close(lungs[lbox], r) & body[lbox]) | lungs[lbox]
            sub = fill_holes(sub, per_slice=True)
            lungs = np.zeros_like(lungs)
            lungs[lbox] = sub
            wide = np.flatnonzero(~narrow[: top + 1])
            if wide.size and wide[-1] < top and wide[-1] > zs[0]:
                lungs[wide[-1] + 1:] = False
        else:
            notes["lungs"] = ("no lung-like air component inside the body (>= "
                              f"{config.lung_min_ml:g} mL, or lung bases widening towards the "
                              "top of a partial scan): the CT does not cover the lungs")
    return metal, bone, lungs
