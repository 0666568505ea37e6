"""Resample a volume onto another volume's grid in physical (LPS) space with SimpleITK."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import SimpleITK as _sitk

from imaging.volume import Volume, same_geometry

__all__ = ["resample_to"]

logger = logging.getLogger(__name__)

sitk: Any = _sitk  # SimpleITK ships no type hints


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
    image = sitk.GetImageFromArray(np.ascontiguousarray(work))
    image.SetSpacing(tuple(reversed(volume.spacing)))
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(np.asarray(volume.direction)[:, ::-1].reshape(-1)))
    ref = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    ref.SetSpacing(tuple(reversed(reference.spacing)))
    ref.SetOrigin(reference.origin)
    ref.SetDirection(tuple(np.asarray(reference.direction)[:, ::-1].reshape(-1)))
    flt = sitk.ResampleImageFilter()
    flt.SetSize([int(s) for s in reversed(reference.shape)])
    flt.SetOutputSpacing(ref.GetSpacing())
    flt.SetOutputOrigin(ref.GetOrigin())
    flt.SetOutputDirection(ref.GetDirection())
    flt.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    flt.SetDefaultPixelValue(float(fill))
    if interpolation == "linear":
        flt.SetInterpolator(sitk.sitkLinear)
        flt.SetOutputPixelType(sitk.sitkFloat32)
    else:
        flt.SetInterpolator(sitk.sitkNearestNeighbor)
        flt.SetOutputPixelType(image.GetPixelID())
    del ref
    result = flt.Execute(image)
    del image
    array = sitk.GetArrayFromImage(result)
    if src.dtype == np.bool_:
        array = array.astype(bool)
    return Volume(array=array, spacing=reference.spacing, origin=reference.origin,
                  direction=reference.direction, unit=volume.unit)
