"""SUV-threshold lesion finder and per-lesion quantification (PSMA PET).

Public API::

    from imaging.lesions import LesionConfig, find_lesions
    result = find_lesions(study.pet, anatomy=anatomy_map.masks, config=LesionConfig())
    result.labels            # uint16 Volume on the PET grid
    result.to_dataframe()    # the lesion table

Methods, references and validation figures: ``docs/lesions.md``.
"""

from __future__ import annotations

from imaging.lesions.config import PRESETS, LesionConfig, tracer_from_radiopharmaceutical
from imaging.lesions.finder import Lesion, LesionResult, find_lesions
from imaging.lesions.measures import mipsma
from imaging.lesions.reference import ReferenceValue, ReferenceValues, measure_reference_regions

__all__ = [
    "PRESETS",
    "Lesion",
    "LesionConfig",
    "LesionResult",
    "ReferenceValue",
    "ReferenceValues",
    "find_lesions",
    "measure_reference_regions",
    "mipsma",
    "tracer_from_radiopharmaceutical",
]
