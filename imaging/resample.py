"""Resample a volume onto another volume's grid in physical (LPS) space with SimpleITK."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal

import numpy as np
import SimpleITK as _sitk
from numpy.typing import NDArray

from imaging.volume import Volume, same_geometry

__all__ = ["resample_to"]

logger = logging.getLogger(__name__)

sitk: Any = _sitk  # SimpleITK ships no type hints

_SLAB_BYTES = 32 * 2**20  # source bytes per resampling slab


def _source_block(volume: Volume, reference: Volume, k0: int, k1: int
                  ) -> tuple[NDArray[np.intp], NDArray[np.intp]] | None:
    """Index box [lo, hi) of ``volume`` covering reference slices k0..k1-1, or None."""
    kk, jj, ii = np.meshgrid([k0, k1 - 1], [0, reference.shape[1] - 1],
                             [0, reference.shape[2] - 1], indexing="ij")
    corners = reference.index_to_world(np.stack([kk, jj, ii], axis=-1).reshape(-1, 3))
    idx = volume.world_to_index(corners)
    lo = np.floor(idx.min(axis=0)).astype(np.intp) - 1
    hi = np.ceil(idx.max(axis=0)).astype(np.intp) + 2
    shape = np.asarray(volume.shape)
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    if np.any(hi - lo <= 0):
        return None
    return lo, hi


def resample_to(
    volume: Volume,
    reference: Volume,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
    fill: float | None = None,
) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (identity transform, LPS mm).

    Parameters
    ----------
    volume : Volume
        Image to resample (any orientation; direction cosines are honoured).
    reference : Volume
        Grid to resample onto (its values are ignored).
    interpolation : {"linear", "nearest"}
        ``"linear"`` for intensities (CT in HU, SUV), ``"nearest"`` for labels and masks.
    fill : float, optional
        Value outside ``volume``. Default: -1024 for HU, else 0.

    Returns
    -------
    Volume
        Same unit as ``volume``, ``reference``'s geometry. Linear output is float32; nearest
        keeps the input dtype (bool masks stay bool).

    Raises
    ------
    ValueError
        If ``interpolation`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> src = Volume(np.arange(8, dtype=np.float32).reshape(2, 2, 2), (1, 1, 1), (0, 0, 0),
    ...              np.eye(3), "1")
    >>> float(resample_to(src, src).array[1, 1, 1])
    7.0
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    if fill is None:
        fill = -1024.0 if volume.unit == "HU" else 0.0
    src = np.asarray(volume.array)
    if interpolation == "linear":
        out_dtype = np.dtype(np.float32)
    else:
        out_dtype = src.dtype
    if same_geometry(volume, reference, atol=1e-4):
        return volume.with_array(src.astype(out_dtype, copy=False))
    work = src
    if src.dtype == np.bool_:
        work = src.view(np.uint8)
    elif src.dtype == np.float64 and interpolation == "linear":
        work = src.astype(np.float32)
    pixel_type = sitk.sitkFloat32 if interpolation == "linear" else None
    out = np.empty(reference.shape, dtype=np.float32 if interpolation == "linear"
                   else work.dtype)
    # Resample in slabs of reference slices, each from the source block it needs (plus a
    # one-voxel margin): the SimpleITK copy of the source stays small for whole-body CT.
    n_slabs = max(1, int(np.ceil(work.nbytes / _SLAB_BYTES)))
    bounds = np.linspace(0, reference.shape[0], n_slabs + 1).round().astype(int)
    for k0, k1 in itertools.pairwise(bounds.tolist()):
        if k1 <= k0:
            continue
        sub_origin = reference.index_to_world([k0, 0, 0])
        sub_shape = (int(k1 - k0), reference.shape[1], reference.shape[2])
        block = _source_block(volume, reference, k0, k1)
        if block is None:
            out[k0:k1] = fill
            continue
        lo, hi = block
        crop = np.ascontiguousarray(work[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        image = sitk.GetImageFromArray(crop)
        del crop
        image.SetSpacing(tuple(reversed(volume.spacing)))
        image.SetOrigin(tuple(float(v) for v in volume.index_to_world(lo)))
        image.SetDirection(tuple(np.asarray(volume.direction)[:, ::-1].reshape(-1)))
        flt = sitk.ResampleImageFilter()
        flt.SetSize([int(s) for s in reversed(sub_shape)])
        flt.SetOutputSpacing(tuple(reversed(reference.spacing)))
        flt.SetOutputOrigin(tuple(float(v) for v in sub_origin))
        flt.SetOutputDirection(tuple(np.asarray(reference.direction)[:, ::-1].reshape(-1)))
        flt.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
        flt.SetDefaultPixelValue(float(fill))
        flt.SetInterpolator(sitk.sitkLinear if interpolation == "linear"
                            else sitk.sitkNearestNeighbor)
        flt.SetOutputPixelType(pixel_type if pixel_type is not None else image.GetPixelID())
        out[k0:k1] = sitk.GetArrayFromImage(flt.Execute(image))
        del image
    array = out.astype(bool) if src.dtype == np.bool_ else out
    return Volume(array=array, spacing=reference.spacing, origin=reference.origin,
                  direction=reference.direction, unit=volume.unit)
