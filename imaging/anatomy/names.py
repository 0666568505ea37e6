"""Map the label names of TotalSegmentator and MOOSE to the canonical vocabulary, by NAME.

Provider label maps are matched by name, never by integer index: TotalSegmentator renumbers its
classes between task versions (``total_v3`` puts ``vertebrae_L6`` where ``total`` has
``vertebrae_S1``), and MOOSE spells vertebrae with a singular prefix. Every name a provider may
emit is either mapped to an :class:`~imaging.vocabulary.AnatomyLabel` or listed as unused with
the reason, so that :func:`map_label_name` can say what it did with each one (domain.md 3.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imaging.vocabulary import AnatomyLabel

__all__ = ["LANDMARK_ROLES", "NameMapping", "map_label_name", "map_label_names"]

L = AnatomyLabel

_EXACT: dict[str, AnatomyLabel] = {
    "body": L.BODY,
    "body_trunc": L.BODY,
    "body_extremities": L.BODY,
    "skin": L.BODY,
    "spleen": L.SPLEEN,
    "kidney_left": L.KIDNEYS,
    "kidney_right": L.KIDNEYS,
    "kidney_cyst_left": L.KIDNEYS,
    "kidney_cyst_right": L.KIDNEYS,
    "gallbladder": L.GALLBLADDER,
    "liver": L.LIVER,
    "stomach": L.BOWEL,
    "small_bowel": L.BOWEL,
    "duodenum": L.BOWEL,
    "colon": L.BOWEL,
    "urinary_bladder": L.URINARY_BLADDER,
    "bladder": L.URINARY_BLADDER,
    "prostate": L.PROSTATE,
    "adrenal_gland_left": L.ADRENALS,
    "adrenal_gland_right": L.ADRENALS,
    "heart": L.HEART,
    "aorta": L.AORTA,
    "iliac_artery_left": L.ILIAC_VESSELS,
    "iliac_artery_right": L.ILIAC_VESSELS,
    "iliac_vena_left": L.ILIAC_VESSELS,
    "iliac_vena_right": L.ILIAC_VESSELS,
    "brain": L.BRAIN,
    "parotid_gland_left": L.SALIVARY_GLANDS,
    "parotid_gland_right": L.SALIVARY_GLANDS,
    "submandibular_gland_left": L.SALIVARY_GLANDS,
    "submandibular_gland_right": L.SALIVARY_GLANDS,
    "sacrum": L.BONE,
    "skull": L.BONE,
    "sternum": L.BONE,
    "rectum": L.RECTUM,
}

_PATTERNS: tuple[tuple[re.Pattern[str], AnatomyLabel], ...] = (
    (re.compile(r"^lung_(upper|middle|lower)_lobe_(left|right)$"), L.LUNGS),
    (re.compile(r"^lung_(left|right)$"), L.LUNGS),
    (re.compile(r"^vertebra(e)?_(c|t|l|s)\d{1,2}$"), L.BONE),
    (re.compile(r"^rib_(left|right)_\d{1,2}$"), L.BONE),
    (re.compile(r"^(humerus|scapula|clavicula|femur|hip|fibula|tibia|patella|radius|ulna)"
                r"_(left|right)$"), L.BONE),
)

_UNUSED: dict[str, str] = {
    "pancreas": "no canonical pancreas mask; staging treats it as soft tissue",
    "esophagus": "no physiological PSMA uptake to exclude; soft tissue for staging",
    "trachea": "airway, kept out of the lungs mask (lungs = parenchyma)",
    "thyroid_gland": "no canonical thyroid mask; soft tissue for staging",
    "costal_cartilages": "cartilage, not bone on CT; lesions there are reviewed as soft tissue",
    "spinal_cord": "inside the spinal canal; not used for staging",
    "pulmonary_vein": "vessel not used for landmarks or staging",
    "brachiocephalic_trunk": "vessel not used for landmarks or staging",
    "subclavian_artery_left": "vessel not used for landmarks or staging",
    "subclavian_artery_right": "vessel not used for landmarks or staging",
    "common_carotid_artery_left": "vessel not used for landmarks or staging",
    "common_carotid_artery_right": "vessel not used for landmarks or staging",
    "brachiocephalic_vein_left": "vessel not used for landmarks or staging",
    "brachiocephalic_vein_right": "vessel not used for landmarks or staging",
    "atrial_appendage_left": "part of the heart; not used for staging",
    "superior_vena_cava": "vessel not used for landmarks or staging",
    "inferior_vena_cava": "vein; the aorta and iliac arteries give the bifurcation levels",
    "portal_vein_and_splenic_vein": "vessel not used for landmarks or staging",
    "spinal_canal": "not used for staging",
}
_UNUSED_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(gluteus_(maximus|medius|minimus)|autochthon|iliopsoas)_(left|right)$"),
     "muscle; the rule-based landmarks use bone, not muscles"),
)

LANDMARK_ROLES: dict[str, str] = {
    "aorta": "aorta",
    "iliac_artery_left": "iliac_artery_left",
    "iliac_artery_right": "iliac_artery_right",
}
"""Provider names whose masks also locate landmarks (aortic / common-iliac bifurcation)."""


@dataclass(frozen=True, slots=True)
class NameMapping:
    """What the adapters do with one provider label name.

    ``label`` is the canonical mask the name contributes to, or ``None`` with ``reason`` saying
    why the name is not used (``known`` is ``False`` for names this table has never seen).
    """

    name: str
    label: AnatomyLabel | None
    reason: str
    known: bool = True


def map_label_name(name: str) -> NameMapping:
    """Canonical label of one TotalSegmentator / MOOSE label name (case-insensitive)."""
    key = name.strip().lower()
    if key in _EXACT:
        return NameMapping(name, _EXACT[key], f"-> {_EXACT[key].value}")
    for pattern, label in _PATTERNS:
        if pattern.match(key):
            return NameMapping(name, label, f"-> {label.value}")
    if key in _UNUSED:
        return NameMapping(name, None, _UNUSED[key])
    for pattern, reason in _UNUSED_PATTERNS:
        if pattern.match(key):
            return NameMapping(name, None, reason)
    return NameMapping(name, None, "unknown label name: not in the name table, ignored",
                       known=False)


def map_label_names(names: list[str] | tuple[str, ...]) -> dict[str, NameMapping]:
    """:func:`map_label_name` for each name."""
    return {name: map_label_name(name) for name in names}
