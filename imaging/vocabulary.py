"""The single registry of names: anatomy labels, nodal regions, landmarks, lesion categories.

Everything that names a region (the CLI, output files, label-map values, the TotalSegmentator and
MOOSE adapters, the staging rules) imports it from here, so the names can never drift apart.
Label-map integer values are part of the output schema: never renumber, only append.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ANATOMY_LABEL_VALUES",
    "EXTRAPELVIC_NODAL_REGIONS",
    "PELVIC_NODAL_REGIONS",
    "AnatomyLabel",
    "Landmark",
    "LesionCategory",
    "NodalRegion",
    "anatomy_label_from_value",
]


class AnatomyLabel(StrEnum):
    """Canonical organ / tissue masks (domain.md 3.1, 3.5)."""

    BODY = "body"
    BONE = "bone"
    LUNGS = "lungs"
    LIVER = "liver"
    SPLEEN = "spleen"
    KIDNEYS = "kidneys"
    URINARY_BLADDER = "urinary_bladder"
    URETERS = "ureters"
    BOWEL = "bowel"
    RECTUM = "rectum"
    SALIVARY_GLANDS = "salivary_glands"
    LACRIMAL_GLANDS = "lacrimal_glands"
    AORTA = "aorta"
    ILIAC_VESSELS = "iliac_vessels"
    ADRENALS = "adrenals"
    BRAIN = "brain"
    HEART = "heart"
    PROSTATE = "prostate"
    PROSTATE_FOSSA = "prostate_fossa"
    GALLBLADDER = "gallbladder"
    METAL = "metal"


class NodalRegion(StrEnum):
    """Lymph-node regions of the PROMISE v1 template (domain.md 1.1, 3.4).

    Pelvic regions map to miN; extrapelvic ones to miM1a. Whether the common iliac region is
    pelvic depends on the configured pelvic boundary (see ``staging``).
    """

    COMMON_ILIAC_LEFT = "common_iliac_left"
    COMMON_ILIAC_RIGHT = "common_iliac_right"
    EXTERNAL_ILIAC_LEFT = "external_iliac_left"
    EXTERNAL_ILIAC_RIGHT = "external_iliac_right"
    INTERNAL_ILIAC_LEFT = "internal_iliac_left"
    INTERNAL_ILIAC_RIGHT = "internal_iliac_right"
    OBTURATOR_LEFT = "obturator_left"
    OBTURATOR_RIGHT = "obturator_right"
    PRESACRAL = "presacral"
    PERIRECTAL = "perirectal"  # PROMISE "other pelvic" (mesorectal)
    RETROPERITONEAL = "retroperitoneal"
    SUPRADIAPHRAGMATIC = "supradiaphragmatic"
    INGUINAL_LEFT = "inguinal_left"
    INGUINAL_RIGHT = "inguinal_right"
    OTHER_EXTRAPELVIC = "other_extrapelvic"


PELVIC_NODAL_REGIONS: frozenset[NodalRegion] = frozenset(
    {
        NodalRegion.COMMON_ILIAC_LEFT,
        NodalRegion.COMMON_ILIAC_RIGHT,
        NodalRegion.EXTERNAL_ILIAC_LEFT,
        NodalRegion.EXTERNAL_ILIAC_RIGHT,
        NodalRegion.INTERNAL_ILIAC_LEFT,
        NodalRegion.INTERNAL_ILIAC_RIGHT,
        NodalRegion.OBTURATOR_LEFT,
        NodalRegion.OBTURATOR_RIGHT,
        NodalRegion.PRESACRAL,
        NodalRegion.PERIRECTAL,
    }
)
"""Pelvic regions under the PROMISE (aortic-bifurcation) boundary."""

EXTRAPELVIC_NODAL_REGIONS: frozenset[NodalRegion] = frozenset(NodalRegion) - PELVIC_NODAL_REGIONS


class Landmark(StrEnum):
    """Anatomical landmarks located by the labeller (domain.md 3.2, 3.4)."""

    FEMORAL_HEAD_LEFT = "femoral_head_left"
    FEMORAL_HEAD_RIGHT = "femoral_head_right"
    PUBIC_SYMPHYSIS_SUPERIOR = "pubic_symphysis_superior"
    PUBIC_SYMPHYSIS_INFERIOR = "pubic_symphysis_inferior"
    SACRAL_PROMONTORY = "sacral_promontory"
    ILIAC_CREST_LEFT = "iliac_crest_left"
    ILIAC_CREST_RIGHT = "iliac_crest_right"
    AORTIC_BIFURCATION = "aortic_bifurcation"
    COMMON_ILIAC_BIFURCATION_LEFT = "common_iliac_bifurcation_left"
    COMMON_ILIAC_BIFURCATION_RIGHT = "common_iliac_bifurcation_right"
    LIVER_DOME = "liver_dome"


class LesionCategory(StrEnum):
    """Per-lesion categories and their miTNM meaning (domain.md 1.3)."""

    FOSSA = "fossa"  # miTr
    NODE_PELVIC = "node_pelvic"  # miN1a / miN1b
    NODE_EXTRAPELVIC = "node_extrapelvic"  # miM1a
    BONE = "bone"  # miM1b
    VISCERAL = "visceral"  # miM1c
    EQUIVOCAL = "equivocal"  # reported, kept out of the group decision


ANATOMY_LABEL_VALUES: dict[str, int] = {
    **{label.value: n for n, label in enumerate(AnatomyLabel, start=1)},
    **{region.value: 100 + n for n, region in enumerate(NodalRegion, start=1)},
}
"""Integer value of each anatomy label and nodal region in ``anatomy.nii.gz`` label maps.

Organs are 1..99 in :class:`AnatomyLabel` order; nodal regions are 101.. in :class:`NodalRegion`
order. A voxel carries one value, so overlapping masks are written by priority (see the
anatomy module); the full masks are available through the API.
"""

_VALUE_TO_NAME = {v: k for k, v in ANATOMY_LABEL_VALUES.items()}


def anatomy_label_from_value(value: int) -> str:
    """Name of a label-map value (inverse of :data:`ANATOMY_LABEL_VALUES`)."""
    try:
        return _VALUE_TO_NAME[int(value)]
    except KeyError:
        raise ValueError(
            f"Label value {value} is not in the anatomy vocabulary; valid values are "
            f"{sorted(_VALUE_TO_NAME)}."
        ) from None
