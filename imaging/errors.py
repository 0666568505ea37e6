"""Every error and warning psma-stage raises on purpose.

A message says what is wrong, where (file, tag, patient), the value found, and how to fix it.
All errors subclass :class:`PipelineError`; the domain errors also subclass ``ValueError`` so
that callers that only know the standard library can still catch them.
"""

from __future__ import annotations

from pathlib import Path

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
    "PipelineError",
    "PipelineWarning",
    "SuvError",
]


class PipelineError(Exception):
    """Base for every error raised on purpose."""


class DicomError(PipelineError, ValueError):
    """A DICOM file or series cannot be used as it is."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = Path(path) if path is not None else None


class MissingAttributeError(DicomError):
    """A required DICOM attribute is absent or empty."""


class InconsistentSeriesError(DicomError):
    """The instances of a series do not form one regular volume."""


class NoUsableSeriesError(DicomError):
    """No series of the needed kind was found (no PET, no CT for a PET, empty folder)."""


class SuvError(PipelineError, ValueError):
    """SUV cannot be computed from the metadata given."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = Path(path) if path is not None else None


class GeometryError(PipelineError, ValueError):
    """Geometry is invalid or two images are not on the same grid."""


class AnatomyError(PipelineError, ValueError):
    """A region the stage needs could not be located in the CT."""


class LesionError(PipelineError, ValueError):
    """The input to the lesion finder is not usable (not SUV, NaNs, masks on another grid)."""


class ConfigError(PipelineError, ValueError):
    """A configuration file or option is invalid."""


class PipelineWarning(UserWarning):
    """Base for every warning issued on purpose."""


class DicomWarning(PipelineWarning):
    """A tolerated deviation in DICOM input; ``strict=True`` turns it into an error."""
