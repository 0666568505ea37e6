"""NIfTI input and output, converting between NIfTI RAS and DICOM LPS.

Convention (see ``docs/loading.md``): nibabel's array axes ``(i, j, k)`` are our ``(k, j, i)``
array transposed ``(2, 1, 0)``; the NIfTI affine maps ``(i, j, k)`` to RAS mm and equals
``diag(-1, -1, 1, 1) @ LPS affine`` with the LPS affine's columns in ``(i, j, k)`` order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as _nib
import numpy as np
from numpy.typing import NDArray

from imaging.errors import GeometryError, PipelineError
from imaging.volume import PetCtStudy, StudyMetadata, Unit, Volume

__all__ = ["load_nifti_study", "read_nifti", "write_nifti"]

logger = logging.getLogger(__name__)

nib: Any = _nib  # nibabel images are typed loosely

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_INTEGER_UNITS = ("label", "mask")


class NiftiError(PipelineError, ValueError):
    """A NIfTI file cannot be read as a 3-D image."""


def _ras_affine_to_geometry(affine: NDArray[np.float64], path: Path
                            ) -> tuple[tuple[float, float, float], tuple[float, float, float],
                                       NDArray[np.float64]]:
    lps = _LPS_RAS @ affine  # maps (i, j, k) to LPS
    cols_ijk = lps[:3, :3]
    spacing_ijk = np.linalg.norm(cols_ijk, axis=0)
    if np.any(spacing_ijk <= 0) or not np.all(np.isfinite(lps)):
        raise GeometryError(f"{path}: NIfTI affine {affine.round(4).tolist()} is singular.")
    dir_ijk = cols_ijk / spacing_ijk
    if not np.allclose(dir_ijk.T @ dir_ijk, np.eye(3), atol=1e-4):
        raise GeometryError(
            f"{path}: NIfTI affine has shear (columns not orthogonal: "
            f"{affine[:3, :3].round(4).tolist()}); resample it to an orthogonal grid first."
        )
    spacing = (float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0]))
    direction = dir_ijk[:, ::-1].copy()
    origin = (float(lps[0, 3]), float(lps[1, 3]), float(lps[2, 3]))
    return spacing, origin, direction


def read_nifti(path: Path | str, *, unit: Unit) -> Volume:
    """Read a 3-D NIfTI image (RAS) into a :class:`Volume` (LPS).

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` file; a 4-D image with one volume is accepted.
    unit : str
        Unit of the voxel values. ``"label"`` and ``"mask"`` keep the stored integer type;
        anything else is read as float32 with the NIfTI scaling applied.

    Returns
    -------
    Volume

    Raises
    ------
    NiftiError
        If the file is missing, unreadable or not 3-D.
    GeometryError
        If its affine is singular or sheared.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except (FileNotFoundError, nib.filebasedimages.ImageFileError, OSError, EOFError,
            ValueError) as err:
        raise NiftiError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err}).") from err
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) != 3:
        raise NiftiError(f"{path}: NIfTI image has shape {shape}; a 3-D image is needed.")
    try:
        if unit in _INTEGER_UNITS:
            data = np.asanyarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError) as err:
        raise NiftiError(f"{path}: cannot read voxel data ({err}); file truncated?") from err
    data = data.reshape(shape[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing, origin, direction = _ras_affine_to_geometry(affine, path)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction, unit=unit)


def nifti_affine(volume: Volume) -> NDArray[np.float64]:
    """The RAS affine of ``volume`` for nibabel's ``(i, j, k)`` array order."""
    lps_kji = volume.affine
    lps_ijk = lps_kji[:, [2, 1, 0, 3]]
    return _LPS_RAS @ lps_ijk


def write_nifti(volume: Volume, path: Path | str) -> Path:
    """Write a :class:`Volume` as NIfTI (RAS affine, sform and qform code 1), atomically.

    The array keeps its dtype (write float32 for SUV, integers for labels). The file appears
    only when complete (temporary file in the same folder, then rename).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(np.asarray(array.transpose(2, 1, 0)), nifti_affine(volume))
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or ".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_nifti_study(
    pet_path: Path | str,
    ct_path: Path | str | None,
    *,
    patient_id: str | None = None,
) -> PetCtStudy:
    """Load an autoPET-style study: a PET NIfTI already in SUVbw (g/ml) and a CT NIfTI in HU.

    Parameters
    ----------
    pet_path : Path
        PET in SUVbw (e.g. ``SUV.nii.gz``).
    ct_path : Path or None
        CT in HU (e.g. ``CTres.nii.gz``); any grid.
    patient_id : str, optional
        Defaults to the name of the PET file's folder.

    Returns
    -------
    PetCtStudy
        ``meta.source == "nifti"``; ``suv_provenance`` records that the PET was taken as SUVbw
        as stored, with file digests.

    Raises
    ------
    NiftiError, GeometryError
        See :func:`read_nifti`.
    """
    pet_path = Path(pet_path)
    pet = read_nifti(pet_path, unit="g/ml")
    ct = None if ct_path is None else read_nifti(ct_path, unit="HU")
    digest = _file_digest(pet_path)
    pid = patient_id if patient_id is not None else pet_path.resolve().parent.name
    provenance: dict[str, Any] = {
        "algorithm": "none: PET NIfTI taken as SUVbw (g/ml) as stored",
        "branch": "nifti",
        "suv_type": "bw",
        "factor": 1.0,
        "pet_file": pet_path.name,
        "pet_sha256_16": digest,
        "ct_file": None if ct_path is None else Path(ct_path).name,
        "warnings": [],
    }
    meta = StudyMetadata(
        patient_id=pid,
        study_instance_uid=f"nifti-{digest}",
        source="nifti",
        extra={"pet_path": str(pet_path), "ct_path": None if ct_path is None else str(ct_path)},
    )
    return PetCtStudy(pet=pet, ct=ct, meta=meta, suv_provenance=provenance)
