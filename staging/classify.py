"""Lesion categories and regions, and the patient stage (miTNM, study groups, burden).

The rules follow domain.md 1.1-1.4 and 3.4 and are documented, with the exact miTNM string
format, in ``docs/staging.md``:

* **Lesion categorisation order**: bone (>= ``bone_min_fraction`` of voxels in the bone mask) ->
  visceral organ (>= ``organ_min_fraction`` in one of ``visceral_organs``) -> prostate fossa
  (>= ``fossa_min_fraction`` in the fossa region, or in an intact prostate) -> nodal region (the
  region overlapped most, else the region at the centroid) -> otherwise an *unlocalised* soft
  tissue focus (``visceral`` / ``"other_soft_tissue"`` by default) that puts the patient under
  review. Lesions the finder flagged equivocal keep this *provisional* category but are given
  the category ``equivocal``.
* **Pelvic boundary switch**: under ``aortic_bifurcation`` (PROMISE, default) common-iliac nodes
  are regional (``node_pelvic``, miN); under ``common_iliac_bifurcation`` (AJCC 8th) they are
  distant (``node_extrapelvic``, miM1a). The region name does not change.
* **Patient stage**: ``mi{T}N{N}M{M}`` with T in {T0, Tr}, N in {0, 1a, 1b} by the number of
  distinct pelvic node regions, M = ``0`` or ``1`` followed by the sorted letters of {a, b, c}
  present (extrapelvic node, bone, visceral), e.g. ``miTrN1bM1ab``. Equivocal lesions stay out
  of the stage; ``needs_review`` is set when including them would change ``group`` or
  ``emmett_group``, or when a lesion could not be localised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from imaging.errors import GeometryError
from imaging.vocabulary import (
    PELVIC_NODAL_REGIONS,
    AnatomyLabel,
    Landmark,
    LesionCategory,
    NodalRegion,
)
from staging.models import (
    COUNTED_CATEGORIES,
    BonePattern,
    ClassifiedLesion,
    LesionLike,
    PatientStaging,
    StagingConfig,
)

__all__ = [
    "bone_pattern",
    "classify_lesion",
    "classify_lesions",
    "compute_overlaps",
    "is_pelvic_region",
    "lesion_count_bin",
    "mitnm_string",
    "pelvic_regions",
    "stage_patient",
]

logger = logging.getLogger(__name__)

_COMMON_ILIAC = frozenset({NodalRegion.COMMON_ILIAC_LEFT, NodalRegion.COMMON_ILIAC_RIGHT})
_NODAL_NAMES = frozenset(r.value for r in NodalRegion)
_UNLOCALISED_REGION = "other_soft_tissue"
_TOUCHES_BLADDER = f"touches {AnatomyLabel.URINARY_BLADDER.value}"  # the finder's reason text


class AnatomyLike(Protocol):
    """What classification reads of an ``imaging.anatomy.AnatomyMap``."""

    @property
    def masks(self) -> Mapping[Any, NDArray[np.bool_]]: ...
    @property
    def nodal_regions(self) -> Mapping[Any, NDArray[np.bool_]]: ...
    @property
    def landmarks(self) -> Mapping[Any, Any]: ...


# -- boundary ---------------------------------------------------------------------------------
def pelvic_regions(boundary: str) -> frozenset[NodalRegion]:
    """The nodal regions that are regional (miN) under a pelvic boundary convention.

    Parameters
    ----------
    boundary : {"aortic_bifurcation", "common_iliac_bifurcation"}
        PROMISE (common iliac is pelvic) or AJCC 8th (common iliac is distant).

    Returns
    -------
    frozenset of NodalRegion

    Examples
    --------
    >>> NodalRegion.COMMON_ILIAC_LEFT in pelvic_regions("aortic_bifurcation")
    True
    >>> NodalRegion.COMMON_ILIAC_LEFT in pelvic_regions("common_iliac_bifurcation")
    False
    """
    if boundary == "aortic_bifurcation":
        return PELVIC_NODAL_REGIONS
    if boundary == "common_iliac_bifurcation":
        return PELVIC_NODAL_REGIONS - _COMMON_ILIAC
    raise ValueError(
        f"Unknown pelvic boundary {boundary!r}; use 'aortic_bifurcation' (PROMISE) or "
        "'common_iliac_bifurcation' (AJCC)."
    )


def is_pelvic_region(region: str, *, boundary: str) -> bool:
    """True if a nodal region is regional (miN) under ``boundary``; False if distant (miM1a)."""
    try:
        node = NodalRegion(region)
    except ValueError:
        raise ValueError(
            f"{region!r} is not a nodal region; valid regions are {sorted(_NODAL_NAMES)}."
        ) from None
    return node in pelvic_regions(boundary)


# -- overlaps ---------------------------------------------------------------------------------
def compute_overlaps(
    labels: NDArray[np.integer[Any]], masks: Mapping[str, NDArray[np.bool_]]
) -> dict[int, dict[str, float]]:
    """Fraction of each lesion's voxels inside each mask.

    Parameters
    ----------
    labels : ndarray of int, shape (K, J, I)
        Lesion label map (0 = background, lesion id otherwise).
    masks : mapping of str to ndarray of bool, shape (K, J, I)
        Named masks on the same grid.

    Returns
    -------
    dict
        ``{lesion_id: {mask_name: fraction}}``, only non-zero fractions.

    Raises
    ------
    GeometryError
        If a mask is not on the label map's grid.
    """
    labels = np.asarray(labels)
    flat = np.flatnonzero(labels)
    ids = labels.reshape(-1)[flat].astype(np.int64)
    if ids.size == 0:
        return {}
    n = int(ids.max()) + 1
    totals = np.bincount(ids, minlength=n)
    out: dict[int, dict[str, float]] = {int(i): {} for i in np.flatnonzero(totals)}
    for name, mask in masks.items():
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise GeometryError(
                f"Mask {name!r} has shape {mask.shape}, the lesion label map {labels.shape}; "
                "resample the anatomy to the PET grid first."
            )
        hits = np.bincount(ids[mask.reshape(-1)[flat]], minlength=n)
        for lesion_id in np.flatnonzero(hits):
            out[int(lesion_id)][str(name)] = float(hits[lesion_id] / totals[lesion_id])
    return out


# -- one lesion -------------------------------------------------------------------------------
def _best(overlaps: Mapping[str, float], names: Iterable[str]) -> tuple[str | None, float]:
    best_name: str | None = None
    best = 0.0
    for name in sorted(names):
        value = float(overlaps.get(name, 0.0))
        if value > best:
            best_name, best = name, value
    return best_name, best


def _counted_at_bladder(lesion: LesionLike, category: LesionCategory,
                        config: StagingConfig) -> tuple[str, str] | None:
    """A fossa or bone lesion whose only equivocal reason is that it touches the bladder, when
    the configuration counts it (``fossa_at_bladder``, ``bone_at_bladder``): what its reason
    gets added, and the patient's review reason. ``None`` when it stays equivocal."""
    if set((lesion.equivocal_reason or "").split("; ")) != {_TOUCHES_BLADDER}:
        return None
    lid = int(lesion.id)
    if category is LesionCategory.FOSSA and config.fossa_at_bladder == "fossa":
        return ("against the bladder base",
                f"lesion {lid}: fossa recurrence against the bladder base, counted as miTr; "
                "confirm it is not urine or the bladder's halo")
    if category is LesionCategory.BONE and config.bone_at_bladder == "bone":
        return ("against the bladder",
                f"lesion {lid}: bone lesion against the bladder, counted as miM1b; confirm it "
                "is not the bladder's halo")
    return None


def classify_lesion(
    lesion: LesionLike,
    *,
    region_at_centroid: str | None = None,
    bone_site: str | None = None,
    config: StagingConfig = StagingConfig(),  # noqa: B008 - frozen, immutable default
) -> ClassifiedLesion:
    """Category and region of one lesion from its anatomy overlaps.

    Parameters
    ----------
    lesion : LesionLike
        Measured lesion; ``lesion.overlaps`` maps anatomy-label and nodal-region names to the
        fraction of the lesion's voxels inside them.
    region_at_centroid : str, optional
        Nodal region at the lesion centroid, used when no nodal-region overlap reaches
        ``config.node_min_fraction``.
    bone_site : str, optional
        Coarse skeletal site to report as the region of a bone lesion (default ``"bone"``).
    config : StagingConfig
        Thresholds, visceral organs and the pelvic boundary.

    Returns
    -------
    ClassifiedLesion
    """
    ov = {str(k): float(v) for k, v in lesion.overlaps.items()}
    unlocalised = False
    bone = ov.get(AnatomyLabel.BONE.value, 0.0)
    organ, organ_fraction = _best(ov, config.visceral_organs)
    fossa = max(ov.get(AnatomyLabel.PROSTATE_FOSSA.value, 0.0),
                ov.get(AnatomyLabel.PROSTATE.value, 0.0))
    node, node_fraction = _best(ov, _NODAL_NAMES)
    if bone >= config.bone_min_fraction:
        category, region = LesionCategory.BONE, bone_site or "bone"
        reason = f"{bone:.0%} of voxels in bone"
    elif organ is not None and organ_fraction >= config.organ_min_fraction:
        category, region = LesionCategory.VISCERAL, organ
        reason = f"{organ_fraction:.0%} of voxels in {organ}"
    elif fossa >= config.fossa_min_fraction:
        in_prostate = ov.get(AnatomyLabel.PROSTATE.value, 0.0) > ov.get(
            AnatomyLabel.PROSTATE_FOSSA.value, 0.0)
        category = LesionCategory.FOSSA
        region = AnatomyLabel.PROSTATE.value if in_prostate else AnatomyLabel.PROSTATE_FOSSA.value
        reason = f"{fossa:.0%} of voxels in the {region.replace('_', ' ')} region"
    else:
        chosen: str | None = None
        if node is not None and node_fraction >= config.node_min_fraction:
            chosen = node
            reason = f"{node_fraction:.0%} of voxels in nodal region {node}"
        elif region_at_centroid is not None and str(region_at_centroid) in _NODAL_NAMES:
            chosen = str(region_at_centroid)
            reason = f"centroid in nodal region {chosen}"
        if chosen is not None:
            pelvic = is_pelvic_region(chosen, boundary=config.pelvic_boundary)
            category = LesionCategory.NODE_PELVIC if pelvic else LesionCategory.NODE_EXTRAPELVIC
            region = chosen
            if NodalRegion(chosen) in _COMMON_ILIAC:
                reason += f" ({'regional' if pelvic else 'distant'} under the "
                reason += f"{config.pelvic_boundary} boundary)"
        else:
            unlocalised = True
            region = _UNLOCALISED_REGION
            category = LesionCategory.VISCERAL
            reason = "soft-tissue focus outside every organ, the fossa and all nodal regions"
    provisional = category
    finder_equivocal = bool(lesion.equivocal)
    review_reason: str | None = None
    at_bladder = _counted_at_bladder(lesion, category, config) if finder_equivocal else None
    if at_bladder is not None:
        finder_equivocal = False
        where, review_reason = at_bladder
        reason += f"; {where}"
    equivocal = finder_equivocal or (unlocalised and config.unlocalised == "equivocal")
    equivocal_reason = lesion.equivocal_reason if finder_equivocal else None
    if equivocal and equivocal_reason is None:
        equivocal_reason = "unlocalised soft-tissue focus"
    if equivocal:
        category = LesionCategory.EQUIVOCAL
    centroid = tuple(float(v) for v in np.asarray(lesion.centroid_mm, dtype=float).reshape(3))
    score = lesion.mipsma_score
    return ClassifiedLesion(
        id=int(lesion.id),
        category=category,
        region=region,
        provisional_category=provisional,
        reason=reason,
        suv_max=float(lesion.suv_max),
        suv_mean=float(lesion.suv_mean),
        suv_peak=float(lesion.suv_peak),
        volume_ml=float(lesion.volume_ml),
        tl_psma=float(lesion.tl_psma),
        centroid_mm=centroid,  # type: ignore[arg-type]
        mipsma_score=None if score is None else int(score),
        equivocal=equivocal,
        equivocal_reason=equivocal_reason,
        unlocalised=unlocalised,
        overlaps=ov,
        review_reason=review_reason,
    )


# -- many lesions, with anatomy ---------------------------------------------------------------
class _WithOverlaps:
    """A lesion seen through a merged overlap mapping (keeps every other attribute)."""

    __slots__ = ("_lesion", "overlaps")

    def __init__(self, lesion: LesionLike, overlaps: Mapping[str, float]) -> None:
        self._lesion = lesion
        self.overlaps = overlaps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lesion, name)


def _landmark_z(anatomy: AnatomyLike, landmark: Landmark) -> float | None:
    finding = anatomy.landmarks.get(landmark) if anatomy.landmarks else None
    if finding is None:
        finding = anatomy.landmarks.get(landmark.value) if anatomy.landmarks else None
    pos = getattr(finding, "position_mm", finding)
    if pos is None:
        return None
    arr = np.asarray(pos, dtype=float).reshape(-1)
    return float(arr[2]) if arr.size == 3 and np.all(np.isfinite(arr)) else None


def _bone_site(centroid_mm: Sequence[float], anatomy: AnatomyLike | None) -> str:
    """Coarse skeletal site from the pelvic landmarks (the bone mask itself is not split)."""
    if anatomy is None:
        return "bone"
    z = float(centroid_mm[2])
    crests = [_landmark_z(anatomy, lm) for lm in (Landmark.ILIAC_CREST_LEFT,
                                                  Landmark.ILIAC_CREST_RIGHT)]
    heads = [_landmark_z(anatomy, lm) for lm in (Landmark.FEMORAL_HEAD_LEFT,
                                                 Landmark.FEMORAL_HEAD_RIGHT)]
    crest_z = [c for c in crests if c is not None]
    head_z = [h for h in heads if h is not None]
    if head_z and z < min(head_z) - 40.0:
        return "lower_limb"
    if crest_z and z <= max(crest_z):
        return "pelvis"
    if crest_z:
        return "trunk_skeleton"
    return "bone"


def _region_at(anatomy: AnatomyLike, point_mm: Sequence[float]) -> str | None:
    finder = getattr(anatomy, "region_of_point", None)
    if finder is None:
        return None
    found = finder(tuple(float(v) for v in point_mm))
    value = getattr(found, "value", found)
    return str(value) if value is not None and str(value) in _NODAL_NAMES else None


def classify_lesions(
    lesions: Sequence[LesionLike],
    *,
    labels: NDArray[np.integer[Any]] | None = None,
    anatomy: AnatomyLike | None = None,
    config: StagingConfig = StagingConfig(),  # noqa: B008 - frozen, immutable default
) -> tuple[ClassifiedLesion, ...]:
    """Classify every lesion of a patient.

    Parameters
    ----------
    lesions : sequence of LesionLike
        The finder's lesions.
    labels : ndarray of int, shape (K, J, I), optional
        Lesion label map on the anatomy grid; with ``anatomy`` it is used to measure each
        lesion's overlap with every organ mask and nodal region (these fractions replace the
        lesion's own ``overlaps`` for the same names).
    anatomy : AnatomyMap, optional
        Organ masks, nodal regions and landmarks on the PET grid.
    config : StagingConfig
        Staging options.

    Returns
    -------
    tuple of ClassifiedLesion
        In the order of ``lesions``.
    """
    measured: dict[int, dict[str, float]] = {}
    if anatomy is not None and labels is not None:
        masks: dict[str, NDArray[np.bool_]] = {}
        for key, mask in anatomy.masks.items():
            masks[str(getattr(key, "value", key))] = mask
        for key, mask in anatomy.nodal_regions.items():
            masks[str(getattr(key, "value", key))] = mask
        measured = compute_overlaps(labels, masks)
    out = []
    for lesion in lesions:
        overlaps = {str(k): float(v) for k, v in lesion.overlaps.items()}
        overlaps.update(measured.get(int(lesion.id), {}))
        view = _WithOverlaps(lesion, overlaps)
        centroid = [float(v) for v in np.asarray(lesion.centroid_mm, dtype=float).reshape(3)]
        region = _region_at(anatomy, centroid) if anatomy is not None else None
        out.append(classify_lesion(view, region_at_centroid=region,
                                   bone_site=_bone_site(centroid, anatomy), config=config))
    return tuple(out)


# -- patient ----------------------------------------------------------------------------------
def mitnm_string(t: str, n: str, m: str) -> str:
    """Join stage components into the miTNM string.

    Examples
    --------
    >>> mitnm_string("Tr", "N1a", "M1ab")
    'miTrN1aM1ab'
    """
    return f"mi{t}{n}{m}"


def lesion_count_bin(count: int) -> str:
    """Lesion-count bin of the cohort study: ``"0"``, ``"1"``, ``"2-3"``, ``"4-5"``, ``"6+"``.

    Examples
    --------
    >>> [lesion_count_bin(n) for n in (0, 1, 3, 4, 9)]
    ['0', '1', '2-3', '4-5', '6+']
    """
    if count < 0:
        raise ValueError(f"A lesion count cannot be negative, got {count}.")
    if count <= 1:
        return str(count)
    if count <= 3:
        return "2-3"
    if count <= 5:
        return "4-5"
    return "6+"


def bone_pattern(n_bone: int, *, oligometastatic_max: int = 3) -> BonePattern:
    """PROMISE bone pattern from the number of bone lesions.

    Examples
    --------
    >>> [bone_pattern(n) for n in (0, 1, 3, 4)]
    ['none', 'unifocal', 'oligometastatic', 'disseminated']
    """
    if n_bone <= 0:
        return "none"
    if n_bone == 1:
        return "unifocal"
    if n_bone <= oligometastatic_max:
        return "oligometastatic"
    return "disseminated"


def _tnm_and_groups(
    categories: Sequence[tuple[LesionCategory, str]],
) -> tuple[str, str, str, str, str, tuple[str, ...]]:
    cats = {c for c, _ in categories}
    regions = tuple(sorted({r for c, r in categories if c is LesionCategory.NODE_PELVIC}))
    has_tr = LesionCategory.FOSSA in cats
    has_node = bool(cats & {LesionCategory.NODE_PELVIC, LesionCategory.NODE_EXTRAPELVIC})
    has_m1bc = bool(cats & {LesionCategory.BONE, LesionCategory.VISCERAL})
    t = "Tr" if has_tr else "T0"
    n = "N0" if not regions else "N1a" if len(regions) == 1 else "N1b"
    letters = "".join(
        letter for letter, cat in (("a", LesionCategory.NODE_EXTRAPELVIC),
                                   ("b", LesionCategory.BONE), ("c", LesionCategory.VISCERAL))
        if cat in cats
    )
    m = f"M1{letters}" if letters else "M0"
    group = ("M1b-M1c" if has_m1bc else "N1/M1a" if has_node
             else "TrN0M0" if has_tr else "T0N0M0")
    emmett = ("negative" if not cats else "fossa_confined" if cats == {LesionCategory.FOSSA}
              else "extra_fossa")
    return t, n, m, group, emmett, regions


def stage_patient(
    lesions: Sequence[ClassifiedLesion],
    *,
    patient_id: str,
    config: StagingConfig = StagingConfig(),  # noqa: B008 - frozen, immutable default
    review_reasons: Sequence[str] = (),
    config_hash: str | None = None,
) -> PatientStaging:
    """The patient's miTNM stage, study groups, counts and burden.

    Parameters
    ----------
    lesions : sequence of ClassifiedLesion
        All the patient's lesions, equivocal ones included.
    patient_id : str
        Pseudonymised patient identifier.
    config : StagingConfig
        ``equivocal_in_group`` and ``oligometastatic_max`` are read here.
    review_reasons : sequence of str
        Reasons for review found upstream (e.g. an anatomy landmark that was not located).
    config_hash : str, optional
        Hash of the resolved pipeline configuration, kept with the result.

    Returns
    -------
    PatientStaging

    Notes
    -----
    Lesions counted in the stage are the non-equivocal ones (or all, with
    ``equivocal_in_group``). ``lesion_count``, PSMA-TV (mL), TL-PSMA (SUVmean x mL) and the
    highest miPSMA score are over those lesions.
    """
    reasons = list(review_reasons)

    def staged_category(lesion: ClassifiedLesion) -> LesionCategory:
        if lesion.equivocal and config.equivocal_in_group:
            return lesion.provisional_category
        return lesion.category

    staged = [les for les in lesions if staged_category(les) is not LesionCategory.EQUIVOCAL]
    equivocal = [les for les in lesions if staged_category(les) is LesionCategory.EQUIVOCAL]
    t, n, m, group, emmett, regions = _tnm_and_groups(
        [(staged_category(les), les.region) for les in staged])
    if equivocal:
        alt = _tnm_and_groups([(staged_category(les), les.region) for les in staged]
                              + [(les.provisional_category, les.region) for les in equivocal])
        if (alt[3], alt[4]) != (group, emmett):
            ids = ", ".join(str(les.id) for les in equivocal)
            reasons.append(
                f"group {group} / {emmett} depends on equivocal lesion(s) {ids}: counted they "
                f"would give {alt[3]} / {alt[4]} ({mitnm_string(*alt[:3])})"
            )
    for lesion in lesions:
        if lesion.review_reason:
            reasons.append(lesion.review_reason)
        if lesion.unlocalised:
            reasons.append(
                f"lesion {lesion.id} at {[round(v, 1) for v in lesion.centroid_mm]} mm LPS lies "
                "outside every organ, the fossa and all nodal regions; staged as "
                f"{staged_category(lesion).value}"
            )
    counts = {c.value: 0 for c in (*COUNTED_CATEGORIES, LesionCategory.EQUIVOCAL)}
    for lesion in lesions:
        counts[staged_category(lesion).value] += 1
    scores = [les.mipsma_score for les in staged if les.mipsma_score is not None]
    count = len(staged)
    result = PatientStaging(
        patient_id=patient_id,
        t=t,
        n=n,
        m=m,
        mitnm=mitnm_string(t, n, m),
        group=group,
        emmett_group=emmett,
        counts_by_category=counts,
        lesion_count=count,
        lesion_count_bin=lesion_count_bin(count),
        psma_tv_ml=float(sum(les.volume_ml for les in staged)),
        tl_psma=float(sum(les.tl_psma for les in staged)),
        max_mipsma_score=max(scores) if scores else None,
        bone_pattern=bone_pattern(counts[LesionCategory.BONE.value],
                                  oligometastatic_max=config.oligometastatic_max),
        pelvic_node_regions=regions,
        needs_review=bool(reasons),
        review_reasons=tuple(reasons),
        pelvic_boundary=config.pelvic_boundary,
        lesions=tuple(lesions),
        config_hash=config_hash,
    )
    logger.debug("patient staged: %s %s", result.mitnm, result.group)
    return result
