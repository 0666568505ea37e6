"""Core image types: a 3-D :class:`Volume` in DICOM patient space, and a :class:`PetCtStudy`.

Conventions (see ``docs/conventions.md``):

* Arrays are indexed ``(k, j, i)`` = (slice, row, column).
* ``spacing`` and the columns of ``direction`` follow the same array-axis order ``(k, j, i)``.
* World coordinates are DICOM patient LPS millimetres: x to the patient's left, y posterior,
  z superior (head). A voxel index ``(k, j, i)`` maps to
  ``origin + direction @ (spacing * (k, j, i))``; ``origin`` is the centre of voxel (0, 0, 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imaging.errors import GeometryError

__all__ = [
    "PetCtStudy",
    "StudyMetadata",
    "Unit",
    "Volume",
    "same_geometry",
]

Unit = Literal["HU", "Bq/ml", "g/ml", "cm2/ml", "CNTS", "label", "mask", "1"]
_UNITS: frozenset[str] = frozenset(Unit.__args__)  # type: ignore[attr-defined]


def _as_triple(value: ArrayLike, what: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{what} must be three finite numbers, got {value!r}.")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True, slots=True, eq=False)
class Volume:
    """Scalar 3-D image in DICOM patient space (LPS, mm).

    Parameters
    ----------
    array : ndarray, shape (K, J, I)
        Voxel values in ``(slice, row, column)`` order. Stored read-only.
    spacing : tuple of float
        Voxel size in mm along ``(k, j, i)``.
    origin : tuple of float
        LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
    direction : ndarray, shape (3, 3)
        Orthonormal columns: the LPS unit vectors of increasing ``k``, ``j`` and ``i``.
    unit : str
        One of :data:`Unit`.
    """

    array: NDArray[Any]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: NDArray[np.float64] = field(default_factory=lambda: np.eye(3)[:, ::-1].copy())
    unit: Unit = "1"

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise GeometryError(f"Volume needs a 3-D array, got shape {array.shape}.")
        if 0 in array.shape:
            raise GeometryError(f"Volume array is empty, shape {array.shape}.")
        spacing = _as_triple(self.spacing, "spacing")
        if min(spacing) <= 0:
            raise GeometryError(f"Spacing must be positive, got {spacing} mm.")
        origin = _as_triple(self.origin, "origin")
        direction = np.array(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise GeometryError(
                f"Direction cosines must be orthonormal, got {direction.round(5).tolist()}."
            )
        if self.unit not in _UNITS:
            raise GeometryError(f"Unknown unit {self.unit!r}; expected one of {sorted(_UNITS)}.")
        array.setflags(write=False)
        direction.setflags(write=False)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(K, J, I)``."""
        k, j, i = self.array.shape
        return (int(k), int(j), int(i))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def affine(self) -> NDArray[np.float64]:
        """4x4 matrix mapping homogeneous ``(k, j, i, 1)`` to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def index_to_world(self, index: ArrayLike) -> NDArray[np.float64]:
        """Map voxel indices ``(..., 3)`` in ``(k, j, i)`` order to LPS mm ``(..., 3)``."""
        idx = np.asarray(index, dtype=np.float64)
        return idx @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(
            self.origin
        )

    def world_to_index(self, points_mm: ArrayLike) -> NDArray[np.float64]:
        """Map LPS points ``(..., 3)`` to continuous voxel indices ``(k, j, i)``."""
        pts = np.asarray(points_mm, dtype=np.float64) - np.asarray(self.origin)
        return (pts @ self.direction) / np.asarray(self.spacing)

    def axis_world_coordinates(self, axis: int) -> NDArray[np.float64]:
        """LPS position of each voxel centre along one array axis, starting from the origin."""
        n = self.shape[axis]
        steps = np.arange(n, dtype=np.float64)[:, None] * self.spacing[axis]
        return np.asarray(self.origin)[None, :] + steps * self.direction[:, axis][None, :]

    def z_extent_mm(self) -> tuple[float, float]:
        """Lowest and highest LPS z (mm) of any voxel centre."""
        corners = np.array(
            [[k, j, i] for k in (0, self.shape[0] - 1) for j in (0, self.shape[1] - 1)
             for i in (0, self.shape[2] - 1)],
            dtype=np.float64,
        )
        z = self.index_to_world(corners)[:, 2]
        return (float(z.min()), float(z.max()))

    def geometry_hash(self) -> str:
        """Short hash of shape, spacing, origin and direction (rounded to 1e-4 mm)."""
        parts = (self.shape, np.round(self.spacing, 4), np.round(self.origin, 4),
                 np.round(self.direction, 5))
        return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]

    # -- derived volumes --------------------------------------------------------------------
    def with_array(self, array: ArrayLike, unit: Unit | None = None) -> Volume:
        """Same geometry, new voxel values (shape must match)."""
        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise GeometryError(f"New array shape {arr.shape} differs from volume {self.shape}.")
        return replace(self, array=arr, unit=self.unit if unit is None else unit)

    # -- SimpleITK interop ------------------------------------------------------------------
    def to_sitk(self) -> Any:
        """Convert to a ``SimpleITK.Image`` (LPS, the ITK convention)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(tuple(reversed(self.spacing)))
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction[:, ::-1].reshape(-1)))
        return img

    @classmethod
    def from_sitk(cls, image: Any, *, unit: Unit) -> Volume:
        """Build from a ``SimpleITK.Image`` (geometry taken as LPS, as ITK uses)."""
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image)
        direction_xyz = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(
            array=array,
            spacing=tuple(reversed(image.GetSpacing())),  # type: ignore[arg-type]
            origin=image.GetOrigin(),
            direction=direction_xyz[:, ::-1],
            unit=unit,
        )


def same_geometry(a: Volume, b: Volume, *, atol: float = 1e-3) -> bool:
    """True if two volumes share shape, spacing, origin (within ``atol`` mm) and direction."""
    return (
        a.shape == b.shape
        and np.allclose(a.spacing, b.spacing, atol=atol)
        and np.allclose(a.origin, b.origin, atol=atol)
        and np.allclose(a.direction, b.direction, atol=1e-4)
    )


@dataclass(frozen=True, slots=True)
class StudyMetadata:
    """Patient and acquisition facts of one PET/CT study (no names: PHI stays in the DICOM).

    ``patient_id`` is the pseudonymised identifier as found in the data; use
    :func:`imaging.dicom.safe_path_component` (or similar) before using it in a path.
    """

    patient_id: str
    study_instance_uid: str
    pet_series_instance_uid: str | None = None
    ct_series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_datetime: datetime | None = None
    patient_sex: str | None = None
    patient_age_years: float | None = None
    patient_weight_kg: float | None = None
    patient_size_m: float | None = None
    radiopharmaceutical: str | None = None
    radionuclide: str | None = None
    manufacturer: str | None = None
    source: Literal["dicom", "nifti", "synthetic"] = "dicom"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class PetCtStudy:
    """A PET volume in SUV, its CT, and what is known of how they were made.

    ``suv_provenance`` is the JSON-ready record of the SUV conversion (every input, the branch
    taken, the factor and warnings); see :mod:`imaging.suv`.

    ``pet_headers`` (DICOM input only) holds the header of every instance of the source PET
    series as read by the loader (pydicom datasets without pixel data, in file order), and
    ``pet_files`` their files: what a DICOM Segmentation or any other derived object needs to
    reference the source images without reading the folder again. ``None`` otherwise.
    """

    pet: Volume
    ct: Volume | None
    meta: StudyMetadata
    suv_provenance: Mapping[str, Any] = field(default_factory=dict)
    pet_headers: tuple[Any, ...] | None = field(default=None, repr=False)
    pet_files: tuple[Path, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pet.unit not in ("g/ml", "cm2/ml"):
            raise GeometryError(
                f"PetCtStudy.pet must be in SUV units (g/ml or cm2/ml), got {self.pet.unit!r}; "
                "convert with imaging.suv first."
            )
        if self.ct is not None and self.ct.unit != "HU":
            raise GeometryError(f"PetCtStudy.ct must be in HU, got {self.ct.unit!r}.")
