"""Typed results of staging: classified lesions, the patient stage, and one study's result.

Everything here is a frozen, slotted dataclass that is valid once constructed. The staging rules
that produce these objects live in :mod:`staging.classify`; the writers that turn them into
files live in :mod:`staging.outputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from imaging.errors import ConfigError
from imaging.vocabulary import LesionCategory

__all__ = [
    "COUNTED_CATEGORIES",
    "EMMETT_GROUPS",
    "GROUPS",
    "LESION_COUNT_BINS",
    "PELVIC_BOUNDARIES",
    "BonePattern",
    "ClassifiedLesion",
    "LesionLike",
    "PatientStaging",
    "StagingConfig",
    "StagingResult",
    "StudySource",
]

PelvicBoundary = Literal["aortic_bifurcation", "common_iliac_bifurcation"]
PELVIC_BOUNDARIES: tuple[str, ...] = ("aortic_bifurcation", "common_iliac_bifurcation")
"""The two pelvic/extrapelvic nodal boundary conventions (domain.md 1.2): PROMISE, AJCC."""

BonePattern = Literal["none", "unifocal", "oligometastatic", "disseminated"]

GROUPS: tuple[str, ...] = ("T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c")
"""Study groups of the post-prostatectomy salvage cohort (domain.md 1.4), lowest first."""

EMMETT_GROUPS: tuple[str, ...] = ("negative", "fossa_confined", "extra_fossa")
"""Groups of the 3-year freedom-from-progression study (domain.md 1.4)."""

LESION_COUNT_BINS: tuple[str, ...] = ("0", "1", "2-3", "4-5", "6+")
"""Lesion-count bins of the cohort study (domain.md 0)."""

COUNTED_CATEGORIES: tuple[LesionCategory, ...] = (
    LesionCategory.FOSSA,
    LesionCategory.NODE_PELVIC,
    LesionCategory.NODE_EXTRAPELVIC,
    LesionCategory.BONE,
    LesionCategory.VISCERAL,
)
"""Categories that decide the stage; ``equivocal`` is counted beside them, never in them."""


class LesionLike(Protocol):
    """What classification needs of a lesion (``imaging.lesions.Lesion`` satisfies it)."""

    @property
    def id(self) -> int: ...
    @property
    def volume_ml(self) -> float: ...
    @property
    def suv_max(self) -> float: ...
    @property
    def suv_mean(self) -> float: ...
    @property
    def suv_peak(self) -> float: ...
    @property
    def tl_psma(self) -> float: ...
    @property
    def centroid_mm(self) -> Any: ...
    @property
    def mipsma_score(self) -> int | None: ...
    @property
    def overlaps(self) -> Mapping[str, float]: ...
    @property
    def equivocal(self) -> bool: ...
    @property
    def equivocal_reason(self) -> str | None: ...


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(
            f"staging.{name} must be a fraction between 0 and 1, got {value!r}; "
            "set it in the [staging] section of the configuration file."
        )


@dataclass(frozen=True, slots=True)
class StagingConfig:
    """Options of the staging rules (the ``[staging]`` section of the configuration file).

    Parameters
    ----------
    pelvic_boundary : {"aortic_bifurcation", "common_iliac_bifurcation"}
        Nodal boundary convention (domain.md 1.2). ``aortic_bifurcation`` (PROMISE miTNM,
        default): common-iliac nodes are regional (miN). ``common_iliac_bifurcation`` (AJCC 8th):
        common-iliac nodes are distant (miM1a). The study groups do not depend on it.
    bone_min_fraction : float
        A lesion is ``bone`` when at least this fraction of its voxels lies in the bone mask.
    organ_min_fraction : float
        A lesion is ``visceral`` (organ named) when at least this fraction lies in one of
        ``visceral_organs``.
    fossa_min_fraction : float
        A lesion is ``fossa`` when at least this fraction lies in the prostate-fossa region.
    node_min_fraction : float
        A lesion takes the nodal region it overlaps most when that overlap reaches this fraction;
        otherwise the region is looked up at the lesion centroid.
    visceral_organs : tuple of str
        Anatomy labels whose lesions are miM1c (canonical names of ``AnatomyLabel``).
    unlocalised : {"visceral", "equivocal"}
        What a soft-tissue focus outside every organ, fossa and nodal region becomes. Either way
        the patient gets ``needs_review``.
    fossa_at_bladder : {"fossa", "equivocal"}
        A lesion in the prostate-fossa region whose only equivocal reason is that it touches
        the bladder: ``"fossa"`` (default) counts it as a local recurrence (miTr) and sets
        ``needs_review`` — recurrences sit at the vesicourethral anastomosis, against the bladder
        base, and calling every one of them equivocal would stage no such patient miTr;
        ``"equivocal"`` keeps it out of the stage [D].
    bone_at_bladder : {"bone", "equivocal"}
        A bone lesion (``bone_min_fraction`` of it in bone) whose only equivocal reason is that
        it touches the bladder: ``"bone"`` (default) counts it (miM1b) and sets
        ``needs_review`` — urine does not lie in bone, and a full bladder reaches the sacrum
        and the pubic bones, where metastases are common; ``"equivocal"`` keeps it out of the
        stage [D].
    equivocal_in_group : bool
        Count equivocal lesions at their provisional category in the stage (default False:
        equivocal lesions are reported and counted, never staged).
    oligometastatic_max : int
        Up to this many bone lesions the bone pattern is ``oligometastatic`` (2..N); more is
        ``disseminated``; one is ``unifocal`` (PROMISE v1 Table 5).
    """

    pelvic_boundary: PelvicBoundary = "aortic_bifurcation"
    bone_min_fraction: float = 0.5
    organ_min_fraction: float = 0.5
    fossa_min_fraction: float = 0.5
    node_min_fraction: float = 0.1
    visceral_organs: tuple[str, ...] = ("lungs", "liver", "adrenals", "brain", "spleen")
    unlocalised: Literal["visceral", "equivocal"] = "visceral"
    fossa_at_bladder: Literal["fossa", "equivocal"] = "fossa"
    bone_at_bladder: Literal["bone", "equivocal"] = "bone"
    equivocal_in_group: bool = False
    oligometastatic_max: int = 3

    def __post_init__(self) -> None:
        if self.pelvic_boundary not in PELVIC_BOUNDARIES:
            raise ConfigError(
                f"staging.pelvic_boundary must be one of {list(PELVIC_BOUNDARIES)}, got "
                f"{self.pelvic_boundary!r}."
            )
        for name in ("bone_min_fraction", "organ_min_fraction", "fossa_min_fraction",
                     "node_min_fraction"):
            _check_fraction(name, getattr(self, name))
        for name, counted in (("fossa_at_bladder", "fossa"), ("bone_at_bladder", "bone"),
                              ("unlocalised", "visceral")):
            value = getattr(self, name)
            if value not in (counted, "equivocal"):
                raise ConfigError(
                    f"staging.{name} must be '{counted}' or 'equivocal', got {value!r}."
                )
        from imaging.vocabulary import AnatomyLabel

        known = {label.value for label in AnatomyLabel}
        organs = tuple(str(o) for o in self.visceral_organs)
        unknown = sorted(set(organs) - known)
        if unknown:
            raise ConfigError(
                f"staging.visceral_organs has unknown anatomy labels {unknown}; valid labels are "
                f"{sorted(known)}."
            )
        object.__setattr__(self, "visceral_organs", organs)
        if isinstance(self.oligometastatic_max, bool) or int(self.oligometastatic_max) < 2:
            raise ConfigError(
                f"staging.oligometastatic_max must be an integer >= 2, got "
                f"{self.oligometastatic_max!r}."
            )


@dataclass(frozen=True, slots=True)
class ClassifiedLesion:
    """One lesion with its category, region and measures.

    ``category`` is what the stage uses; an equivocal lesion has category ``equivocal`` and keeps
    the category the rules would otherwise have given it in ``provisional_category``.
    """

    id: int
    category: LesionCategory
    region: str
    provisional_category: LesionCategory
    reason: str
    suv_max: float
    suv_mean: float
    suv_peak: float
    volume_ml: float
    tl_psma: float
    centroid_mm: tuple[float, float, float]
    mipsma_score: int | None = None
    equivocal: bool = False
    equivocal_reason: str | None = None
    unlocalised: bool = False
    overlaps: Mapping[str, float] = field(default_factory=dict)
    review_reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", LesionCategory(self.category))
        object.__setattr__(self, "provisional_category", LesionCategory(self.provisional_category))
        if self.provisional_category is LesionCategory.EQUIVOCAL:
            raise ValueError(f"Lesion {self.id}: provisional_category cannot be 'equivocal'.")
        if self.equivocal != (self.category is LesionCategory.EQUIVOCAL):
            raise ValueError(
                f"Lesion {self.id}: equivocal={self.equivocal} but category={self.category.value}."
            )
        c = tuple(float(v) for v in self.centroid_mm)
        if len(c) != 3:
            raise ValueError(f"Lesion {self.id}: centroid_mm needs 3 values, got {c}.")
        object.__setattr__(self, "centroid_mm", c)
        object.__setattr__(self, "overlaps", MappingProxyType(dict(self.overlaps)))

    def to_dict(self) -> dict[str, Any]:
        """The lesion's row in ``staging.json`` / ``lesions.csv``."""
        return {
            "id": int(self.id),
            "category": self.category.value,
            "region": self.region,
            "provisional_category": self.provisional_category.value,
            "suv_max": float(self.suv_max),
            "suv_mean": float(self.suv_mean),
            "suv_peak": float(self.suv_peak),
            "volume_ml": float(self.volume_ml),
            "tl_psma": float(self.tl_psma),
            "centroid_mm": [float(v) for v in self.centroid_mm],
            "mipsma_score": None if self.mipsma_score is None else int(self.mipsma_score),
            "equivocal": bool(self.equivocal),
            "equivocal_reason": self.equivocal_reason,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class PatientStaging:
    """The stage of one patient from their classified lesions (domain.md 1.1-1.4).

    ``t``, ``n`` and ``m`` are the components of ``mitnm`` without the ``mi`` prefix
    (``"Tr"``, ``"N1a"``, ``"M1ab"``).
    """

    patient_id: str
    t: str
    n: str
    m: str
    mitnm: str
    group: str
    emmett_group: str
    counts_by_category: Mapping[str, int]
    lesion_count: int
    lesion_count_bin: str
    psma_tv_ml: float
    tl_psma: float
    max_mipsma_score: int | None
    bone_pattern: BonePattern
    pelvic_node_regions: tuple[str, ...]
    needs_review: bool
    review_reasons: tuple[str, ...]
    pelvic_boundary: str
    lesions: tuple[ClassifiedLesion, ...]
    config_hash: str | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {self.group!r}.")
        if self.emmett_group not in EMMETT_GROUPS:
            raise ValueError(f"emmett_group must be one of {EMMETT_GROUPS}, got "
                             f"{self.emmett_group!r}.")
        if self.lesion_count_bin not in LESION_COUNT_BINS:
            raise ValueError(f"lesion_count_bin must be one of {LESION_COUNT_BINS}.")
        if self.needs_review != bool(self.review_reasons):
            raise ValueError("needs_review must be True exactly when review_reasons is non-empty.")
        object.__setattr__(self, "counts_by_category",
                           MappingProxyType(dict(self.counts_by_category)))

    def summary(self) -> dict[str, Any]:
        """The patient-level keys of ``staging.json`` (no lesions)."""
        return {
            "patient_id": self.patient_id,
            "mitnm": self.mitnm,
            "group": self.group,
            "emmett_group": self.emmett_group,
            "lesion_count": int(self.lesion_count),
            "lesion_count_bin": self.lesion_count_bin,
            "counts_by_category": {k: int(v) for k, v in self.counts_by_category.items()},
            "psma_tv_ml": float(self.psma_tv_ml),
            "tl_psma": float(self.tl_psma),
            "max_mipsma_score": self.max_mipsma_score,
            "bone_pattern": self.bone_pattern,
            "pelvic_node_regions": list(self.pelvic_node_regions),
            "pelvic_boundary": self.pelvic_boundary,
            "needs_review": bool(self.needs_review),
            "review_reasons": list(self.review_reasons),
        }


@dataclass(frozen=True, slots=True)
class StudySource:
    """Where one study comes from: a DICOM folder (one study) or a NIfTI PET (SUV) + CT pair.

    Build with :meth:`from_dicom` or :meth:`from_nifti`.
    """

    kind: Literal["dicom", "nifti"]
    dicom_dir: Path | None = None
    pet_series_uid: str | None = None
    pet_nifti: Path | None = None
    ct_nifti: Path | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "dicom":
            if self.dicom_dir is None:
                raise ValueError("A DICOM StudySource needs dicom_dir.")
            object.__setattr__(self, "dicom_dir", Path(self.dicom_dir))
        elif self.kind == "nifti":
            if self.pet_nifti is None:
                raise ValueError("A NIfTI StudySource needs pet_nifti (the SUV image).")
            object.__setattr__(self, "pet_nifti", Path(self.pet_nifti))
            if self.ct_nifti is not None:
                object.__setattr__(self, "ct_nifti", Path(self.ct_nifti))
        else:
            raise ValueError(f"StudySource.kind must be 'dicom' or 'nifti', got {self.kind!r}.")

    @classmethod
    def from_dicom(cls, path: Path | str, *, pet_series_uid: str | None = None) -> StudySource:
        """A folder holding one patient's PET/CT DICOM (optionally naming the PET series)."""
        return cls(kind="dicom", dicom_dir=Path(path), pet_series_uid=pet_series_uid)

    @classmethod
    def from_nifti(cls, pet: Path | str, ct: Path | str | None, *,
                   patient_id: str | None = None) -> StudySource:
        """A PET NIfTI already in SUV (g/ml) and its CT NIfTI (HU)."""
        return cls(kind="nifti", pet_nifti=Path(pet),
                   ct_nifti=None if ct is None else Path(ct), patient_id=patient_id)

    def describe(self) -> str:
        """Where the study comes from, for messages (paths only; no identifiers)."""
        if self.kind == "dicom":
            return str(self.dicom_dir)
        return f"{self.pet_nifti} + {self.ct_nifti}"

    def input_paths(self) -> tuple[Path, ...]:
        """The files or folders this study is read from."""
        if self.kind == "dicom":
            assert self.dicom_dir is not None
            return (self.dicom_dir,)
        paths = [p for p in (self.pet_nifti, self.ct_nifti) if p is not None]
        return tuple(paths)


@dataclass(frozen=True, slots=True)
class StagingResult:
    """What :func:`staging.pipeline.stage_study` returns.

    ``record`` is exactly the content of ``staging.json``; ``outputs`` maps each output name
    (``"staging.json"``, ``"report.html"``, ...) to its final path; ``timings_s`` holds the wall
    time of each stage (load, suv, anatomy, lesions, staging, outputs) in seconds.
    """

    staging: PatientStaging
    record: Mapping[str, Any]
    out_dir: Path
    outputs: Mapping[str, Path]
    timings_s: Mapping[str, float]
    skipped_outputs: Mapping[str, str] = field(default_factory=dict)
