"""Small geometric helpers on the voxel grid: ball offsets, sphere kernels, sparse neighbourhoods.

The lesion finder works on sparse voxel sets (candidates, lesion voxels), so dilations and sphere
means are evaluated by gathering the image at ``voxel + offset`` for every offset of a ball rather
than filtering the whole volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__: list[str] = []


def ball_offsets(
    radius_mm: float, spacing: Sequence[float], *, include_centre: bool = True
) -> NDArray[np.intp]:
    """Integer ``(k, j, i)`` offsets whose voxel centres lie within ``radius_mm`` of the origin.

    Returns shape ``(n, 3)``, sorted for determinism (always contains the centre when
    ``include_centre``; a radius smaller than every spacing gives just the centre).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    reach = np.floor(radius_mm / sp + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offs = np.stack([g.ravel() for g in grids], axis=1)
    dist = np.sqrt(((offs * sp) ** 2).sum(axis=1))
    keep = dist <= radius_mm + 1e-6
    if not include_centre:
        keep &= dist > 0
    return np.asarray(offs[keep], dtype=np.intp)


def sphere_weights(
    volume_ml: float, spacing: Sequence[float], *, supersample: int = 7
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Partial-volume weights of a sphere of ``volume_ml`` centred on a voxel centre.

    Each weight is the fraction of the voxel inside the sphere (``supersample``^3 sub-samples),
    so ``sum(weights) * voxel_volume`` equals the sphere volume to sampling accuracy.

    Returns
    -------
    offsets : ndarray, shape (n, 3)
        ``(k, j, i)`` offsets with non-zero weight.
    weights : ndarray, shape (n,)
        Fractions in ``(0, 1]``.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    reach = np.ceil(radius / sp + 0.5).astype(int)
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5  # sub-voxel centres in voxel units
    sk, sj, si = np.meshgrid(sub * sp[0], sub * sp[1], sub * sp[2], indexing="ij")
    sub_pts = np.stack([sk.ravel(), sj.ravel(), si.ravel()], axis=1)
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offs = np.stack([g.ravel() for g in grids], axis=1)
    centres = offs * sp
    inside = ((centres[:, None, :] + sub_pts[None, :, :]) ** 2).sum(axis=2) <= radius**2
    weights = inside.mean(axis=1)
    keep = weights > 0
    return np.asarray(offs[keep], dtype=np.intp), weights[keep]


def gather_any(
    mask: NDArray[np.bool_], coords: NDArray[np.intp], offsets: NDArray[np.intp]
) -> NDArray[np.bool_]:
    """For each voxel ``coords[n]``, whether ``mask`` is true at any ``coords[n] + offset``.

    Equivalent to a binary dilation of ``mask`` by the offsets, evaluated only at ``coords``
    (shape ``(n, 3)``). Neighbours outside the array count as false.
    """
    shape = np.asarray(mask.shape)
    flat = mask.reshape(-1)
    out = np.zeros(len(coords), dtype=bool)
    if len(coords) == 0:
        return out
    for off in offsets:
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        idx = np.ravel_multi_index(tuple(nb[ok].T), mask.shape)
        out[ok] |= flat[idx]
    return out


def gather_mean(
    image: NDArray[np.floating], coords: NDArray[np.intp], offsets: NDArray[np.intp],
    weights: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Weighted mean of ``image`` over ``coords[n] + offsets`` (a correlation at sparse points).

    Neighbours outside the array are left out and the weights renormalised. Points at least the
    kernel reach away from every border (the usual case) take a fast path: one fancy-indexing
    gather of ``(points, offsets)`` flat indices, in chunks.
    """
    shape = np.asarray(image.shape)
    reach = np.abs(offsets).max(axis=0) if len(offsets) else np.zeros(3, dtype=np.intp)
    if len(coords) and np.all((coords >= reach) & (coords < shape - reach)):
        flat_img = image.reshape(-1)
        strides = np.array([image.shape[1] * image.shape[2], image.shape[2], 1], dtype=np.intp)
        flat_idx = coords @ strides
        doff = offsets @ strides
        w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        out = np.empty(len(coords), dtype=np.float64)
        chunk = max(1, 2_000_000 // max(len(offsets), 1))
        for start in range(0, len(coords), chunk):
            idx = flat_idx[start:start + chunk, None] + doff[None, :]
            out[start:start + chunk] = flat_img[idx].astype(np.float64) @ w
        return out
    flat = image.reshape(-1)
    total = np.zeros(len(coords), dtype=np.float64)
    wsum = np.zeros(len(coords), dtype=np.float64)
    for off, w in zip(offsets, weights, strict=True):
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        idx = np.ravel_multi_index(tuple(nb[ok].T), image.shape)
        total[ok] += w * flat[idx]
        wsum[ok] += w
    return total / wsum


def bbox_slices(
    coords: NDArray[np.intp], shape: Sequence[int], margin: Sequence[int] | NDArray[np.intp]
) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``coords`` grown by ``margin`` voxels, clipped to shape."""
    lo = np.maximum(coords.min(axis=0) - np.asarray(margin), 0)
    hi = np.minimum(coords.max(axis=0) + np.asarray(margin) + 1, np.asarray(shape))
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])))


def mask_bbox(mask: NDArray[np.bool_]) -> tuple[slice, slice, slice] | None:
    """Bounding box of a boolean mask as slices, or ``None`` if it is empty.

    One pass over the full array (slices that hold any voxel), the rest on the slab.
    """
    hit_k = np.flatnonzero(mask.any(axis=(1, 2)))
    if hit_k.size == 0:
        return None
    slab = mask[hit_k[0]:hit_k[-1] + 1]
    hit_j = np.flatnonzero(slab.any(axis=(0, 2)))
    hit_i = np.flatnonzero(slab.any(axis=(0, 1)))
    return (slice(int(hit_k[0]), int(hit_k[-1]) + 1), slice(int(hit_j[0]), int(hit_j[-1]) + 1),
            slice(int(hit_i[0]), int(hit_i[-1]) + 1))


class Zones:
    """Masks grown by a radius, evaluated on their bounding boxes and cached per radius.

    ``hits`` answers "is this voxel within r mm of the mask?" for many voxels: either by
    dilating the mask inside its (grown) bounding box once, or, when there are few voxels, by
    gathering the mask at ``voxel + offset`` directly. No full-volume morphology is done.
    """

    def __init__(self, masks: Mapping[Any, NDArray[np.bool_]],
                 spacing: Sequence[float]) -> None:
        self._masks = masks
        self._spacing = tuple(float(s) for s in spacing)
        self._boxes: dict[object, tuple[slice, slice, slice] | None] = {}
        self._dilated: dict[tuple[object, float], tuple[NDArray[np.intp],
                                                        NDArray[np.bool_]]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._masks

    def keys(self) -> list[Any]:
        """Labels of the masks held."""
        return list(self._masks)

    def mask(self, key: object) -> NDArray[np.bool_] | None:
        """The mask itself, or ``None`` if absent."""
        return self._masks.get(key)

    def bbox(self, key: object) -> tuple[slice, slice, slice] | None:
        """Bounding box of the (ungrown) mask, cached."""
        if key not in self._boxes:
            self._boxes[key] = mask_bbox(self._masks[key])
        return self._boxes[key]

    def values(self, key: object, image: NDArray[Any]) -> NDArray[Any] | None:
        """``image`` inside the mask (read on its bounding box), or ``None`` if absent."""
        mask = self._masks.get(key)
        box = self.bbox(key) if mask is not None else None
        if mask is None or box is None:
            return None
        return np.asarray(image[box])[np.asarray(mask[box])]

    def _grown(self, key: object, radius_mm: float
               ) -> tuple[NDArray[np.intp], NDArray[np.bool_]] | None:
        cache_key = (key, round(radius_mm, 6))
        if cache_key in self._dilated:
            return self._dilated[cache_key]
        box = self.bbox(key)
        if box is None:
            return None
        mask = self._masks[key]
        offs = ball_offsets(radius_mm, self._spacing)
        reach = np.abs(offs).max(axis=0)
        lo = np.array([max(s.start - int(r), 0) for s, r in zip(box, reach, strict=True)])
        hi = np.array([min(s.stop + int(r), n) for s, r, n in zip(box, reach, mask.shape,
                                                                  strict=True)])
        crop = np.asarray(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        struct = np.zeros(tuple(2 * reach + 1), dtype=bool)
        struct[tuple((offs + reach).T)] = True
        grown = ndimage.binary_dilation(crop, structure=struct) if len(offs) > 1 else crop
        self._dilated[cache_key] = (lo, grown)
        return lo, grown

    def hits(self, key: object, coords: NDArray[np.intp], radius_mm: float) -> NDArray[np.bool_]:
        """For each ``(k, j, i)`` row of ``coords``: within ``radius_mm`` of the mask?"""
        out = np.zeros(len(coords), dtype=bool)
        box = self.bbox(key)
        if box is None or len(coords) == 0:
            return out
        offs = ball_offsets(radius_mm, self._spacing)
        reach = np.abs(offs).max(axis=0)
        lo = np.array([s.start for s in box]) - reach
        hi = np.array([s.stop for s in box]) + reach
        inside = np.flatnonzero(np.all((coords >= lo) & (coords < hi), axis=1))
        if inside.size == 0:
            return out
        cache_key = (key, round(radius_mm, 6))
        box_size = int(np.prod(hi - lo))
        if cache_key not in self._dilated and inside.size * 16 < box_size:
            out[inside] = gather_any(self._masks[key], coords[inside], offs)
            return out
        grown = self._grown(key, radius_mm)
        assert grown is not None
        g_lo, arr = grown
        local = coords[inside] - g_lo
        ok = np.all((local >= 0) & (local < np.asarray(arr.shape)), axis=1)
        out[inside[ok]] = arr[tuple(local[ok].T)]
        return out

    def crop(self, key: object, radius_mm: float,
             box: tuple[slice, slice, slice]) -> NDArray[np.bool_]:
        """The grown mask on the crop ``box`` of the full grid."""
        shape = tuple(s.stop - s.start for s in box)
        out = np.zeros(shape, dtype=bool)
        grown = self._grown(key, radius_mm)
        if grown is None:
            return out
        lo, arr = grown
        src = [slice(max(b.start - int(lo_), 0), min(b.stop - int(lo_), n))
               for b, lo_, n in zip(box, lo, arr.shape, strict=True)]
        if any(s.stop <= s.start for s in src):
            return out
        dst = [slice(s.start + int(lo_) - b.start, s.stop + int(lo_) - b.start)
               for s, lo_, b in zip(src, lo, box, strict=True)]
        out[dst[0], dst[1], dst[2]] = arr[src[0], src[1], src[2]]
        return out
