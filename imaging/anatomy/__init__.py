"""Anatomic region labeller: where in the body is each voxel (domain.md 3).

``label_anatomy(ct, pet=..., config=...)`` returns an :class:`AnatomyMap` on the PET grid with
organ masks, the prostate-fossa region, nodal regions and bony / vascular landmarks, each with
the provider that made it, a confidence and a reason. The rule-based provider always runs (CPU,
no model weights); TotalSegmentator or MOOSE output replaces the masks it covers.
"""

from __future__ import annotations

from imaging.anatomy.labeller import label_anatomy
from imaging.anatomy.model import (
    LABEL_PRIORITY,
    AnatomyConfig,
    AnatomyMap,
    LandmarkFinding,
    MaskInfo,
    PointRegion,
)
from imaging.anatomy.names import NameMapping, map_label_name, map_label_names
from imaging.anatomy.overlay import plot_anatomy_overlay
from imaging.anatomy.providers import label_names_from_nifti

__all__ = [
    "LABEL_PRIORITY",
    "AnatomyConfig",
    "AnatomyMap",
    "LandmarkFinding",
    "MaskInfo",
    "NameMapping",
    "PointRegion",
    "label_anatomy",
    "label_names_from_nifti",
    "map_label_name",
    "map_label_names",
    "plot_anatomy_overlay",
]
