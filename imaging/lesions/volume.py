"""Lesion volume by iterative, PSF-calibrated thresholding (Jentzen et al. 2007).

A fixed fraction of SUVmax segments a PET lesion at the right size only for one lesion size:
the partial-volume effect of the scanner's point-spread function (PSF) lowers the peak of a
small lesion and widens its profile, so the fraction of SUVmax found at the lesion's true edge
depends on the lesion volume. The iterative thresholding method (ITM) of Jentzen et al. uses a
calibration curve ``f(V)`` (background-corrected threshold fraction against sphere volume) and
iterates ``volume -> fraction -> volume`` until the segmented volume no longer changes.

Jentzen measured the curve on a sphere phantom per scanner. Here it is computed from first
principles for the image at hand: uniform spheres of a range of diameters, partial-volume
sampled on the PET voxel grid, blurred with a Gaussian PSF of the scanner's FWHM; for each
sphere the fraction whose isocontour holds, on average over sub-voxel positions, the sphere's
volume. The curve is cached per (FWHM, voxel spacing).

References
----------
Jentzen W, Freudenberg L, Eising EG, Heinze M, Brandau W, Bockisch A. Segmentation of PET
volumes by iterative image thresholding. J Nucl Med 2007;48:108-114.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from imaging.errors import LesionError

__all__ = ["IterativeThreshold", "ThresholdCurve", "iterative_threshold", "sphere_threshold_curve"]

_cc3d: Any = cc3d
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Calibration spheres: 8-40 mm diameter (0.27-33.5 mL); outside, the end values hold.
_DIAMETERS_MM = np.geomspace(8.0, 40.0, 15)
# Sphere centres relative to a voxel centre, in voxels: the curve is their average.
_OFFSETS = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [0.5, 0.0, 0.25],
                     [0.0, 0.5, 0.25], [0.25, 0.0, 0.5]])
_SUBSAMPLES = 4  # per axis, for the voxels' partial-volume fractions
_FRACTIONS = np.linspace(0.15, 0.95, 801)
_FRACTION_TOLERANCE = 1e-3  # the iteration has converged when the fraction moves less


@dataclass(frozen=True, slots=True, eq=False)
class ThresholdCurve:
    """Background-corrected threshold fraction against lesion volume for one PSF and grid.

    Attributes
    ----------
    volume_ml : ndarray, shape (n,)
        Calibration sphere volumes (mL), increasing.
    fraction : ndarray, shape (n,)
        Fraction ``f`` of ``SUVmax - B`` above the background ``B`` whose isocontour holds the
        sphere's volume.
    fwhm_mm : float
        Gaussian PSF FWHM (mm).
    spacing : tuple of float
        Voxel spacing (mm) along k, j, i.
    """

    volume_ml: NDArray[np.float64]
    fraction: NDArray[np.float64]
    fwhm_mm: float
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        self.volume_ml.setflags(write=False)
        self.fraction.setflags(write=False)

    def fraction_at(self, volume_ml: float) -> float:
        """Threshold fraction for a lesion of ``volume_ml`` (linear in log volume, clamped)."""
        v = math.log(max(volume_ml, 1e-6))
        return float(np.interp(v, np.log(self.volume_ml), self.fraction))


def _check_psf_grid(fwhm_mm: float, spacing: tuple[float, float, float]) -> None:
    if not (math.isfinite(fwhm_mm) and fwhm_mm > 0):
        raise LesionError(f"PSF FWHM must be a positive number of mm, got {fwhm_mm!r}.")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise LesionError(f"voxel spacing must be three positive numbers (mm), got {spacing!r}.")


def sphere_threshold_curve(
    fwhm_mm: float, spacing: tuple[float, float, float]
) -> ThresholdCurve:
    """Calibration curve of the iterative thresholding method for a Gaussian PSF and voxel grid.

    Parameters
    ----------
    fwhm_mm : float
        FWHM (mm) of the isotropic Gaussian PSF.
    spacing : tuple of float
        Voxel spacing (mm) along k, j, i.

    Returns
    -------
    ThresholdCurve
        Fractions for spheres of 8-40 mm diameter. Cached per (FWHM rounded to 0.1 mm,
        spacing rounded to 0.01 mm).

    Raises
    ------
    LesionError
        If the FWHM or a spacing is not a positive finite number.

    Notes
    -----
    For each sphere of radius ``R`` and each of six sub-voxel centre positions, the voxels'
    partial-volume fractions (4 x 4 x 4 sub-samples) are blurred by the PSF. With ``c(f)`` the
    number of voxels at or above ``f x max`` averaged over the positions, the calibrated
    fraction solves ``c(f) x voxel volume = 4/3 pi R^3``.

    Examples
    --------
    >>> curve = sphere_threshold_curve(6.0, (5.0, 4.0, 4.0))
    >>> 0.3 < curve.fraction_at(5.0) < 0.6
    True
    """
    _check_psf_grid(fwhm_mm, spacing)
    key = (round(float(fwhm_mm), 1), tuple(round(float(s), 2) for s in spacing))
    return _curve(*key)


@lru_cache(maxsize=16)
def _curve(fwhm_mm: float, spacing: tuple[float, float, float]) -> ThresholdCurve:
    sp = np.asarray(spacing, dtype=np.float64)
    sigma_mm = fwhm_mm / _FWHM_PER_SIGMA
    voxel_ml = float(np.prod(sp)) / 1000.0
    sub = (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES - 0.5
    volumes = np.pi / 6.0 * _DIAMETERS_MM ** 3 / 1000.0
    fractions = np.empty(len(_DIAMETERS_MM))
    for n, diameter in enumerate(_DIAMETERS_MM):
        radius = diameter / 2.0
        half = np.ceil((radius + 4.0 * sigma_mm) / sp).astype(int) + 1
        counts = np.zeros(len(_FRACTIONS))
        for offset in _OFFSETS:
            # sub-sample coordinates (mm) relative to the sphere centre, per axis
            axes = [((np.arange(-h, h + 1)[:, None] + sub[None, :]).ravel() - o) * s
                    for h, o, s in zip(half, offset, sp, strict=True)]
            inside = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
                      + axes[2][None, None, :] ** 2) <= radius ** 2
            shape = tuple(int(2 * h + 1) for h in half)
            frac = inside.reshape(shape[0], _SUBSAMPLES, shape[1], _SUBSAMPLES, shape[2],
                                  _SUBSAMPLES).mean(axis=(1, 3, 5))
            blurred = ndimage.gaussian_filter(frac, sigma_mm / sp, mode="constant")
            rel = np.sort((blurred / blurred.max()).ravel())
            counts += rel.size - np.searchsorted(rel, _FRACTIONS, side="left")
        counts /= len(_OFFSETS)
        # counts fall with the fraction: solve c(f) = V / voxel volume on the reversed arrays
        fractions[n] = float(np.interp(volumes[n] / voxel_ml, counts[::-1], _FRACTIONS[::-1]))
    return ThresholdCurve(volumes, fractions, fwhm_mm, spacing)


@dataclass(frozen=True, slots=True, eq=False)
class IterativeThreshold:
    """Result of :func:`iterative_threshold` on one lesion patch.

    Attributes
    ----------
    mask : ndarray of bool, shape of the patch
        The lesion: voxels at or above the final level connected to the peak.
    fraction : float
        Final background-corrected threshold fraction.
    level : float
        Final threshold (SUV): ``background + fraction x (peak - background)``.
    iterations : int
        Segmentations computed.
    converged : bool
        ``True`` if the last two segmentations had the same voxel count.
    """

    mask: NDArray[np.bool_]
    fraction: float
    level: float
    iterations: int
    converged: bool


def iterative_threshold(
    image: NDArray[np.floating], peak: tuple[int, int, int], *, background: float,
    curve: ThresholdCurve | Callable[[float], float], start_fraction: float,
    allowed: NDArray[np.bool_] | None = None, max_iterations: int = 20, connectivity: int = 18,
) -> IterativeThreshold:
    """Segment one lesion by iterative thresholding (ITM, Jentzen et al. 2007).

    Parameters
    ----------
    image : ndarray, shape (K, J, I)
        Patch of the SUV image around the lesion.
    peak : tuple of int
        Index of the lesion's SUVmax voxel in the patch.
    background : float
        Background SUV ``B`` around the lesion.
    curve : ThresholdCurve or callable
        Threshold fraction as a function of volume (mL) (:func:`sphere_threshold_curve`).
    start_fraction : float
        Fraction of the first segmentation, in (0, 1).
    allowed : ndarray of bool, shape (K, J, I), optional
        Voxels the lesion may occupy (the peak always may).
    max_iterations : int
        Segmentations at most.
    connectivity : {6, 18, 26}
        Voxel connectivity of the lesion.

    Returns
    -------
    IterativeThreshold
        The final segmentation and whether the iteration converged.

    Raises
    ------
    LesionError
        If ``start_fraction`` is not in (0, 1) or ``max_iterations`` < 1.

    Notes
    -----
    ``V_0`` is the volume at ``start_fraction``; then ``f_n = (f_{n-1} + curve(V_{n-1})) / 2``,
    the level is ``B + f_n (SUVmax - B)`` and ``V_n`` the volume of the voxels at or above it
    connected to the peak, until ``V_n == V_{n-1}`` (the voxel count repeats) or the fraction
    moves by less than 0.001. The damping (Jentzen iterate the undamped ``f_n = curve(V_{n-1})``)
    keeps the iteration from alternating between two segmentations one voxel apart, which a
    volume measured in whole voxels can otherwise do. The spacing is taken from the curve when
    it is a :class:`ThresholdCurve`, else volumes are in voxels.
    """
    if not 0.0 < start_fraction < 1.0:
        raise LesionError(f"start_fraction must be in (0, 1), got {start_fraction!r}.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
            or max_iterations < 1:
        raise LesionError(f"max_iterations must be an integer >= 1, got {max_iterations!r}.")
    if isinstance(curve, ThresholdCurve):
        voxel_ml = float(np.prod(curve.spacing)) / 1000.0
        fraction_at: Callable[[float], float] = curve.fraction_at
    else:
        voxel_ml = 1.0
        fraction_at = curve
    top = float(image[peak])
    background = min(background, top)
    ok = np.ones(image.shape, dtype=bool) if allowed is None else allowed.copy()
    ok[peak] = True

    def segment(fraction: float) -> tuple[NDArray[np.bool_], float]:
        level = background + fraction * (top - background)
        region = ok & (image >= level)
        region[peak] = True
        cc = _cc3d.connected_components(region, connectivity=connectivity)
        return cc == cc[peak], level

    fraction = start_fraction
    mask, level = segment(fraction)
    count = int(np.count_nonzero(mask))
    converged = False
    iterations = 1
    while iterations < max_iterations:
        # damped step: a volume that changes by whole voxels cannot make it cycle
        new_fraction = 0.5 * (fraction + fraction_at(count * voxel_ml))
        step = abs(new_fraction - fraction)
        fraction = new_fraction
        mask, level = segment(fraction)
        iterations += 1
        new = int(np.count_nonzero(mask))
        if new == count or step < _FRACTION_TOLERANCE:
            converged = True
            break
        count = new
    return IterativeThreshold(mask, fraction, level, iterations, converged)
