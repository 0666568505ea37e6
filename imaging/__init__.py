"""psma-stage image layer: loading, SUV, resampling, anatomy and lesions (no staging logic)."""

from __future__ import annotations

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
from imaging.volume import PetCtStudy, StudyMetadata, Volume, same_geometry

__all__ = [
    "AnatomyError",
    "ConfigError",
    "DicomError",
    "DicomWarning",
    "GeometryError",
    "InconsistentSeriesError",
    "LesionError",
    "MissingAttributeError",
    "NoUsableSeriesError",
    "PetCtStudy",
    "PipelineError",
    "PipelineWarning",
    "StudyMetadata",
    "SuvError",
    "Volume",
    "same_geometry",
]

__version__ = "0.1.0"
