"""Small geometric helpers on the voxel grid: ball offsets, sphere kernels, sparse neighbourhoods.

The lesion finder works on sparse voxel sets (candidates, lesion voxels), so dilations and sphere
means are evaluated by gathering the image at ``voxel + offset`` for every offset of a ball rather
than filtering the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

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

    Neighbours outside the array are left out and the weights renormalised.
    """
    shape = np.asarray(image.shape)
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
    coords: NDArray[np.intp], shape: Sequence[int], margin: Sequence[int]
) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of ``coords`` grown by ``margin`` voxels, clipped to shape."""
    lo = np.maximum(coords.min(axis=0) - np.asarray(margin), 0)
    hi = np.minimum(coords.max(axis=0) + np.asarray(margin) + 1, np.asarray(shape))
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])))


def mask_bbox(mask: NDArray[np.bool_]) -> tuple[slice, slice, slice] | None:
    """Bounding box of a boolean mask as slices, or ``None`` if it is empty."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return (out[0], out[1], out[2])
