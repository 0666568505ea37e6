"""psma-stage image layer: loading, SUV, resampling, anatomy and lesions (no staging logic)."""

from __future__ import annotations

from imaging.dicom import Inventory, discover, safe_path_component
from imaging.errors import (
    AnatomyError,
    ConfigError,
    DicomError,
    DicomWarning,
    GeometryError,
    InconsistentSeriesError,
    LesionError,
    MissingAttributeError,
    NoUsableSeriesError,
    PipelineError,
    PipelineWarning,
    SuvError,
)
from imaging.loading import load_study
from imaging.nifti import load_nifti_study, read_nifti, write_nifti
from imaging.resample import resample_to
from imaging.suv import SuvConversion, SuvOverrides, compute_suv_factors
from imaging.volume import PetCtStudy, StudyMetadata, Volume, same_geometry

__all__ = [
    "AnatomyError",
    "ConfigError",
    "DicomError",
    "DicomWarning",
    "GeometryError",
    "InconsistentSeriesError",
    "Inventory",
    "LesionError",
    "MissingAttributeError",
    "NoUsableSeriesError",
    "PetCtStudy",
    "PipelineError",
    "PipelineWarning",
    "StudyMetadata",
    "SuvConversion",
    "SuvError",
    "SuvOverrides",
    "Volume",
    "compute_suv_factors",
    "discover",
    "load_nifti_study",
    "load_study",
    "read_nifti",
    "resample_to",
    "safe_path_component",
    "same_geometry",
    "write_nifti",
]

__version__ = "0.1.0"
