"""Result and configuration types of the anatomy labeller."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imaging.errors import AnatomyError, ConfigError
from imaging.vocabulary import (
    ANATOMY_LABEL_VALUES,
    PELVIC_NODAL_REGIONS,
    AnatomyLabel,
    Landmark,
    NodalRegion,
)
from imaging.volume import Volume

__all__ = [
    "LABEL_PRIORITY",
    "AnatomyConfig",
    "AnatomyMap",
    "LandmarkFinding",
    "MaskInfo",
    "PointRegion",
]

PelvicBoundary = Literal["aortic_bifurcation", "common_iliac_bifurcation"]
ProviderName = Literal["rule", "totalsegmentator", "moose"]

LABEL_PRIORITY: tuple[AnatomyLabel, ...] = (
    AnatomyLabel.METAL,
    AnatomyLabel.BONE,
    AnatomyLabel.URINARY_BLADDER,
    AnatomyLabel.KIDNEYS,
    AnatomyLabel.URETERS,
    AnatomyLabel.PROSTATE,
    AnatomyLabel.RECTUM,
    AnatomyLabel.BOWEL,
    AnatomyLabel.GALLBLADDER,
    AnatomyLabel.LIVER,
    AnatomyLabel.SPLEEN,
    AnatomyLabel.ADRENALS,
    AnatomyLabel.SALIVARY_GLANDS,
    AnatomyLabel.LACRIMAL_GLANDS,
    AnatomyLabel.AORTA,
    AnatomyLabel.ILIAC_VESSELS,
    AnatomyLabel.HEART,
    AnatomyLabel.BRAIN,
    AnatomyLabel.LUNGS,
    AnatomyLabel.PROSTATE_FOSSA,
    AnatomyLabel.BODY,
)
"""Order in which overlapping masks are written into one label volume (first wins)."""


@dataclass(frozen=True, slots=True)
class AnatomyConfig:
    """Settings of the anatomy labeller (domain.md 3; every [D] default is here).

    Parameters
    ----------
    provider : {"rule", "totalsegmentator", "moose"}
        Which provider makes the organ masks. Model providers read ``provider_path`` (a
        multilabel NIfTI with its label names, or a folder of per-class NIfTIs); their masks
        replace the rule-based ones they cover, the rule-based provider fills in the rest.
    provider_path : Path or None
        Output of the model provider, on the CT's frame of reference.
    pelvic_boundary : {"aortic_bifurcation", "common_iliac_bifurcation"}
        PROMISE (default) or AJCC pelvic / extrapelvic boundary (domain.md 1.2).
    working_spacing_mm : float
        Isotropic spacing of the internal working grid; masks are computed there, then put on
        the reference grid.
    """

    provider: ProviderName = "rule"
    provider_path: Path | None = None
    pelvic_boundary: PelvicBoundary = "aortic_bifurcation"
    working_spacing_mm: float = 3.0
    require_pelvis: bool = False
    # body
    body_hu: float = -500.0
    body_opening_mm: float = 6.0
    body_min_ml: float = 100.0
    # lungs
    lung_hu: float = -400.0
    lung_min_ml: float = 300.0
    trachea_max_area_cm2: float = 12.0
    lung_closing_mm: float = 15.0
    # bone
    bone_hu: float = 120.0
    bone_closing_mm: float = 3.0
    bone_edge_hu: float = 0.0
    bone_edge_fraction: float = 0.4
    bone_edge_soft_hu: float = 40.0
    bone_min_ml: float = 5.0
    bone_min_peak_hu: float = 300.0
    # ... or this at the CT's own resolution, when finer than the working grid (a thin rib's
    # cortex, 600 HU at 1 mm, stays below 300 HU at 3 mm; venous contrast reaches ~460 HU)
    bone_min_native_peak_hu: float = 550.0
    # contrast-filled lumina kept out of bone (arterial-phase blood against the spine)
    lumen_max_hu: float = 450.0
    lumen_core_mm: tuple[float, float] = (9.0, 15.0)
    lumen_min_soft_rim: float = 0.4
    lumen_min_length_mm: float = 75.0
    # bone edge placed again on output grids finer than the working grid (domain.md 3.1)
    # (threshold; the edge at the half maximum, which 1 mm voxels resolve; marrow enclosed by
    # cortex whose gaps up to ``fine_marrow_bridge_mm`` (vascular foramina) are bridged, kept
    # per in-plane piece whose median in-plane mean over ``fine_marrow_window_mm`` reaches
    # cancellous bone density ``fine_marrow_min_hu`` or is fat (``fatty_marrow_max_hu``): an
    # intervertebral disc, 70-100 HU, stays out)
    fine_bone_hu: float = 150.0
    fine_bone_edge_fraction: float = 0.5
    fine_marrow_bridge_mm: float = 3.0
    fine_marrow_min_hu: float = 100.0
    fine_marrow_window_mm: float = 7.0
    marrow_fill_max_cm2: float = 40.0
    marrow_min_hu: float = 60.0
    fatty_marrow_max_cm2: float = 8.0
    fatty_marrow_max_hu: float = -20.0
    metal_hu: float = 2500.0
    metal_min_ml: float = 1.0
    # bladder and PET organs
    bladder_suv: float = 15.0
    bladder_hu: tuple[float, float] = (-10.0, 40.0)
    bladder_search_mm: float = 10.0
    bladder_rim_fraction: float = 0.5
    bladder_rim_mm: float = 8.0
    kidney_suv: float = 10.0
    salivary_suv: float = 6.0
    salivary_rim_fraction: float = 0.3
    organ_suv: float = 3.0
    # liver and spleen: seeded under the lung bases, grown through similar CT and PET
    liver_depth_mm: float = 300.0
    organ_hu: tuple[float, float] = (20.0, 200.0)
    organ_seed_below_lung_mm: tuple[float, float] = (9.0, 45.0)
    liver_seed_lateral_mm: float = 30.0
    spleen_seed_lateral_mm: float = 45.0
    organ_hu_tol: float = 30.0
    organ_suv_ratio: tuple[float, float] = (0.5, 1.6)
    kidney_over_liver: float = 1.4
    organ_rim_mm: float = 9.0
    liver_min_ml: float = 300.0
    spleen_ml: tuple[float, float] = (30.0, 1500.0)
    # heart (blood pool between the lungs)
    heart_hu: tuple[float, float] = (-20.0, 300.0)
    heart_height_mm: float = 160.0
    heart_opening_mm: float = 15.0
    heart_min_ml: float = 150.0
    heart_suv_fraction: float = 0.6
    # lacrimal glands
    lacrimal_suv: float = 2.5
    lacrimal_max_ml: float = 6.0
    lacrimal_lateral_mm: tuple[float, float] = (12.0, 60.0)
    lacrimal_below_vertex_mm: tuple[float, float] = (50.0, 170.0)
    lacrimal_anterior_fraction: float = 0.4
    lacrimal_min_head_mm: float = 200.0
    # adrenal regions (superomedial to each kidney's upper pole; imaging.anatomy.adrenals)
    adrenal_offset_mm: tuple[float, float, float] = (10.0, 10.0, 10.0)
    adrenal_semi_axes_mm: tuple[float, float, float] = (12.0, 18.0, 25.0)
    adrenal_hu: tuple[float, float] = (-30.0, 100.0)
    adrenal_pole_mm: float = 20.0
    # bowel (stomach, small bowel, colon)
    bowel_suv: float = 1.8
    bowel_hu: tuple[float, float] = (-150.0, 200.0)
    bowel_min_ml: float = 10.0
    bowel_min_tubularity: float = 2.0
    bowel_fat_loop_hu: float | None = -50.0
    bowel_fat_loop_band: bool = True
    bowel_fat_loop_band_half_width_mm: float = 35.0
    bowel_peak_ratio: float | None = 1.8
    bowel_band_peak_ratio: float | None = None
    bowel_band_rim: int = 2
    bowel_fragment_ml: float = 1.5
    bowel_fragment_ratio: float | None = 1.2
    bowel_fragment_kidney_mm: float = 30.0
    bowel_focus_max_mm: float = 15.0
    bowel_core_max_ml: float = 12.0
    bowel_round_core_ratio: float | None = 3.0
    bowel_round_core_max_ml: float = 5.0
    # a soft-tissue nodule alone in the fat inside a loop's uptake, hotter than the loop
    bowel_nodule_ratio: float | None = 1.5
    # a focus against a loop on CT denser than the loop's content, hotter than the loop
    bowel_nodule_hu: tuple[float, float] | None = (34.0, 100.0)
    bowel_nodule_min_ml: float = 0.15
    bowel_gas_hu: float = -400.0
    bowel_gas_min_ml: float = 0.3
    bowel_gas_reach_mm: float = 12.0
    bowel_wall_hu: tuple[float, float] = (-40.0, 45.0)
    bowel_wall_depth_mm: float = 15.0
    bowel_above_diaphragm_mm: float = 60.0
    bowel_keepout_half_width_mm: float = 70.0
    bowel_keepout_front_mm: float = 35.0
    bowel_sidewall_mm: float = 10.0
    # ureters
    # outlined only when the bladder's urine (median SUV of the bladder mask) reaches this: a
    # tracer excreted mostly through the bile ([18F]PSMA-1007) leaves urine as faint as soft
    # tissue, and tracks drawn to the hottest voxels then run through nodes (None: always)
    ureter_min_urine_suv: float | None = 15.0
    ureter_suv: float = 2.5
    ureter_lateral_mm: tuple[float, float] = (10.0, 110.0)
    ureter_peak_midline_mm: float = 20.0
    ureter_min_length_mm: float = 20.0
    ureter_min_elongation: float = 2.5
    ureter_max_width_mm: float = 15.0
    ureter_contrast_suv: float = 1.5
    ureter_course_mm: float = 8.0
    ureter_chain_step_mm: float = 50.0
    ureter_chain_slope: float = 1.0
    ureter_bolus_max_ml: float = 1.0
    # a chain of short pieces is ureter only when it holds a track found by its shape: the
    # nodes of the iliac chains line up along z beside the ureters as boluses do
    ureter_chain_needs_track: bool = True
    ureter_hilum_mm: float = 15.0
    # the cheapest kidney-to-bladder path on PET and the hot pieces on it
    ureter_course: bool = True
    ureter_base_course: bool = True
    ureter_base_midline_mm: float = 20.0
    ureter_path_mm: float = 6.0
    ureter_course_max_ml: float = 2.0
    ureter_course_floor_suv: float = 0.05
    ureter_side_node_saddle: float | None = 0.5
    ureter_side_node_max_ml: float = 6.0
    ureter_urine_ratio: float | None = 2.0
    # short hot pieces in the gap between two stretches of a ureter's track (None: off)
    ureter_gap_mm: float | None = 60.0
    # gallbladder (fluid-density sac against the liver's undersurface, from the CT alone)
    gallbladder_hu: tuple[float, float] = (-20.0, 22.0)
    gallbladder_reach_mm: float = 20.0
    gallbladder_ml: tuple[float, float] = (4.0, 250.0)
    # fossa box (domain.md 3.3)
    fossa_below_symphysis_mm: float = 10.0
    fossa_above_symphysis_mm: float = 40.0
    fossa_rectum_allowance_mm: float = 30.0
    fossa_rectum_wall: bool = True
    rectum_midline_mm: float = 10.0
    rectum_search_mm: float = 70.0
    rectum_max_width_mm: float = 55.0
    rectum_min_length_mm: float = 25.0
    fossa_bladder_wall_mm: float = 15.0
    fossa_obturator_internus_mm: float = 15.0
    # nodal regions (domain.md 3.4)
    intercristal_to_aortic_bifurcation_mm: float = -5.0
    presacral_half_width_mm: float = 20.0
    presacral_depth_mm: float = 20.0
    retroperitoneal_half_width_mm: float = 80.0
    inguinal_top_rel_femoral_head_mm: float = -30.0
    pelvic_floor_regions: bool = True
    inguinal_depth_mm: float = 200.0
    inguinal_anterior_mm: float = 0.0
    inguinal_min_lateral_mm: float = 40.0
    external_internal_split_mm: float = 5.0
    obturator_above_femoral_head_mm: float = 10.0
    obturator_front_mm: float = 25.0
    obturator_back_mm: float = 12.0
    promontory_to_s3_mm: float = 55.0
    intercristal_to_promontory_mm: float = 52.0
    promontory_search_mm: float = 20.0
    lumbosacral_step_mm: float = 3.0
    promontory_to_common_iliac_bifurcation_mm: float = 14.0
    common_iliac_bifurcation_lateral_mm: float = 44.0
    aortic_bifurcation_anterior_mm: float = 20.0
    aortic_bifurcation_left_mm: float = 7.0
    femoral_head_lateral_correction_mm: float = 10.0
    femoral_head_min_radius_mm: float = 15.0
    perirectal_half_width_mm: float = 35.0
    perirectal_depth_mm: float = 60.0

    def __post_init__(self) -> None:
        if self.provider not in ("rule", "totalsegmentator", "moose"):
            raise ConfigError(
                f"anatomy.provider must be 'rule', 'totalsegmentator' or 'moose', got "
                f"{self.provider!r}."
            )
        if self.provider != "rule" and self.provider_path is None:
            raise ConfigError(
                f"anatomy.provider {self.provider!r} needs provider_path (its output NIfTI or "
                "folder); give it or use provider='rule'."
            )
        if self.pelvic_boundary not in ("aortic_bifurcation", "common_iliac_bifurcation"):
            raise ConfigError(
                "anatomy.pelvic_boundary must be 'aortic_bifurcation' (PROMISE) or "
                f"'common_iliac_bifurcation' (AJCC), got {self.pelvic_boundary!r}."
            )
        if not 0.5 <= self.working_spacing_mm <= 8.0:
            raise ConfigError(
                f"anatomy.working_spacing_mm must be in [0.5, 8] mm, got "
                f"{self.working_spacing_mm}."
            )
        positive = ("bowel_fragment_ml", "bowel_fragment_kidney_mm", "ureter_hilum_mm",
                    "bone_min_native_peak_hu",
                    "lumen_max_hu", "lumen_min_length_mm", "fine_bone_hu",
                    "fine_marrow_bridge_mm", "fine_marrow_window_mm",
                    "ureter_course_floor_suv", "ureter_course_max_ml",
                    "ureter_path_mm", "ureter_base_midline_mm", "bowel_round_core_max_ml",
                    "ureter_peak_midline_mm", "ureter_side_node_max_ml",
                    "bowel_fat_loop_band_half_width_mm", "rectum_midline_mm",
                    "rectum_search_mm", "rectum_max_width_mm", "rectum_min_length_mm",
                    "bowel_nodule_min_ml")
        optional_positive = ("bowel_peak_ratio", "bowel_band_peak_ratio", "bowel_fragment_ratio",
                             "bowel_round_core_ratio", "ureter_side_node_saddle",
                             "ureter_urine_ratio", "bowel_nodule_ratio", "ureter_gap_mm",
                             "ureter_min_urine_suv")
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"anatomy.{name} must be a positive number"
                                  f"{' or none' if name in optional_positive else ''}, "
                                  f"got {value!r}.")
        for flag in ("ureter_course", "ureter_base_course", "ureter_chain_needs_track",
                     "fossa_rectum_wall", "pelvic_floor_regions", "bowel_fat_loop_band"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"anatomy.{flag} must be true or false, got "
                                  f"{getattr(self, flag)!r}.")
        if not 0.0 < self.fine_bone_edge_fraction < 1.0:
            raise ConfigError(f"anatomy.fine_bone_edge_fraction is a share of the way from soft "
                              f"tissue to the local peak, in (0, 1) (0.5: the half maximum); got "
                              f"{self.fine_bone_edge_fraction!r}.")
        if self.bowel_fat_loop_hu is not None and not (
                isinstance(self.bowel_fat_loop_hu, int | float)
                and math.isfinite(self.bowel_fat_loop_hu)):
            raise ConfigError(f"anatomy.bowel_fat_loop_hu must be a finite HU value or none, got "
                              f"{self.bowel_fat_loop_hu!r}.")
        if self.bowel_nodule_hu is not None and not (
                len(self.bowel_nodule_hu) == 2
                and all(isinstance(v, int | float) and math.isfinite(v)
                        for v in self.bowel_nodule_hu)
                and self.bowel_nodule_hu[0] < self.bowel_nodule_hu[1]):
            raise ConfigError(f"anatomy.bowel_nodule_hu must be an HU range [low, high] with low "
                              f"< high, or none; got {self.bowel_nodule_hu!r}.")
        if not (isinstance(self.fine_marrow_min_hu, int | float)
                and math.isfinite(self.fine_marrow_min_hu)):
            raise ConfigError(f"anatomy.fine_marrow_min_hu must be a finite HU value, got "
                              f"{self.fine_marrow_min_hu!r}.")
        if not 0.0 <= self.lumen_min_soft_rim <= 1.0:
            raise ConfigError(f"anatomy.lumen_min_soft_rim is a share of the outline, in [0, 1]; "
                              f"got {self.lumen_min_soft_rim!r}.")
        if len(self.lumen_core_mm) != 2 or min(self.lumen_core_mm) <= 0:
            raise ConfigError(f"anatomy.lumen_core_mm must be two positive sizes (in-plane, "
                              f"along z) in mm, got {self.lumen_core_mm!r}.")


@dataclass(frozen=True, slots=True)
class LandmarkFinding:
    """One landmark: where it is (LPS mm) or why it could not be found.

    ``confidence`` is in [0, 1]; 0 with ``position_mm`` None when not found. ``method`` says
    how it was located (e.g. ``"bone"``, ``"vessels"``, ``"intercristal_plane"``).
    """

    position_mm: tuple[float, float, float] | None
    confidence: float
    reason: str
    method: str = ""

    @property
    def found(self) -> bool:
        """True when a position is known."""
        return self.position_mm is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "position_mm": None if self.position_mm is None else [round(v, 2) for v in
                                                                  self.position_mm],
            "confidence": round(self.confidence, 3),
            "method": self.method,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class MaskInfo:
    """Who made a mask, how much to trust it, and why (or why it is empty)."""

    provider: str
    confidence: float
    reason: str
    volume_ml: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"provider": self.provider, "confidence": round(self.confidence, 3),
                "volume_ml": round(self.volume_ml, 2), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PointRegion:
    """What lies at one point: the masks containing it and its nodal region."""

    labels: tuple[AnatomyLabel, ...]
    nodal_region: NodalRegion | None
    pelvic: bool | None

    @property
    def label(self) -> AnatomyLabel | None:
        """Highest-priority mask at the point (see :data:`LABEL_PRIORITY`), or None."""
        return self.labels[0] if self.labels else None


def _freeze(mapping: Mapping[Any, NDArray[Any]]) -> Mapping[Any, NDArray[Any]]:
    for arr in mapping.values():
        arr.setflags(write=False)
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True, eq=False)
class AnatomyMap:
    """Anatomy of one study on one grid (normally the PET grid).

    Attributes
    ----------
    grid : Volume
        Geometry of every mask (its array is an all-zero placeholder, unit ``"mask"``).
    masks : Mapping[AnatomyLabel, ndarray of bool, shape (K, J, I)]
        Organ and tissue masks; labels that could not be found are absent (see ``mask_info``).
    nodal_regions : Mapping[NodalRegion, ndarray of bool]
        Non-overlapping nodal regions covering the soft tissue of the body.
    landmarks : Mapping[Landmark, LandmarkFinding]
        Every :class:`Landmark`, found or with the reason it was not.
    mask_info : Mapping[str, MaskInfo]
        Keyed by anatomy label / nodal region value: provider, confidence, reason.
    pelvic_boundary : str
        ``"aortic_bifurcation"`` or ``"common_iliac_bifurcation"``.
    pelvic_boundary_z_mm : float or None
        LPS z of that boundary; None when it could not be located.
    flags : tuple of str
        Conditions a reader must know (``"hip_prosthesis_left"``, ``"pelvis_not_in_ct"``, ...).
    """

    grid: Volume
    masks: Mapping[AnatomyLabel, NDArray[np.bool_]]
    nodal_regions: Mapping[NodalRegion, NDArray[np.bool_]]
    landmarks: Mapping[Landmark, LandmarkFinding]
    mask_info: Mapping[str, MaskInfo]
    pelvic_boundary: PelvicBoundary
    pelvic_boundary_z_mm: float | None
    provider: str = "rule"
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = self.grid.shape
        for name, arr in [*self.masks.items(), *self.nodal_regions.items()]:
            if arr.shape != shape or arr.dtype != np.bool_:
                raise AnatomyError(
                    f"Mask {name} must be bool of the grid shape {shape}, got {arr.dtype} "
                    f"{arr.shape}."
                )
        object.__setattr__(self, "masks", _freeze(self.masks))
        object.__setattr__(self, "nodal_regions", _freeze(self.nodal_regions))
        object.__setattr__(self, "landmarks", MappingProxyType(dict(self.landmarks)))
        object.__setattr__(self, "mask_info", MappingProxyType(dict(self.mask_info)))

    # -- queries -----------------------------------------------------------------------------
    def mask(self, label: AnatomyLabel) -> NDArray[np.bool_]:
        """The mask of ``label``; an all-False array when it was not found."""
        found = self.masks.get(label)
        return found if found is not None else np.zeros(self.grid.shape, dtype=bool)

    def require(self, label: AnatomyLabel | Landmark) -> None:
        """Raise :class:`AnatomyError` if a mask or landmark the caller needs is missing."""
        if isinstance(label, Landmark):
            finding = self.landmarks[label]
            if not finding.found:
                raise AnatomyError(
                    f"Landmark {label.value} could not be located: {finding.reason}"
                )
            return
        if label not in self.masks:
            info = self.mask_info.get(label.value)
            why = info.reason if info else "no provider produced it"
            raise AnatomyError(f"Anatomy mask {label.value} is missing: {why}")

    def is_pelvic(self, region: NodalRegion) -> bool:
        """Whether a nodal region is pelvic (miN) under this map's boundary convention."""
        if region in (NodalRegion.COMMON_ILIAC_LEFT, NodalRegion.COMMON_ILIAC_RIGHT):
            return self.pelvic_boundary == "aortic_bifurcation"
        return region in PELVIC_NODAL_REGIONS

    def _index(self, xyz_mm: ArrayLike) -> tuple[int, int, int] | None:
        idx = np.rint(self.grid.world_to_index(np.asarray(xyz_mm, dtype=float))).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(self.grid.shape)):
            return None
        return (int(idx[0]), int(idx[1]), int(idx[2]))

    def region_of_point(self, xyz_mm: ArrayLike) -> NodalRegion | None:
        """Nodal region at an LPS point (nearest grid voxel); None outside every region."""
        at = self._index(xyz_mm)
        if at is None:
            return None
        return next((r for r, m in self.nodal_regions.items() if m[at]), None)

    def labels_at_point(self, xyz_mm: ArrayLike) -> PointRegion:
        """Masks (in :data:`LABEL_PRIORITY` order) and nodal region at an LPS point."""
        at = self._index(xyz_mm)
        if at is None:
            return PointRegion(labels=(), nodal_region=None, pelvic=None)
        labels = tuple(lab for lab in LABEL_PRIORITY if lab in self.masks and self.masks[lab][at])
        region = next((r for r, m in self.nodal_regions.items() if m[at]), None)
        return PointRegion(labels=labels, nodal_region=region,
                           pelvic=None if region is None else self.is_pelvic(region))

    def region_of_mask(self, mask: NDArray[np.bool_]) -> NodalRegion | None:
        """Nodal region holding most voxels of ``mask`` (same grid), or None if none does."""
        best, best_n = None, 0
        for region, m in self.nodal_regions.items():
            n = int(np.count_nonzero(m & mask))
            if n > best_n:
                best, best_n = region, n
        return best

    def fractions_of_mask(self, mask: NDArray[np.bool_]) -> dict[str, float]:
        """Fraction of ``mask`` voxels inside each anatomy mask (label value -> fraction)."""
        n = int(np.count_nonzero(mask))
        if n == 0:
            return {}
        return {lab.value: float(np.count_nonzero(m & mask)) / n for lab, m in self.masks.items()}

    def to_label_volume(self, *, include_nodal_regions: bool = True) -> Volume:
        """One uint8 label volume (values :data:`ANATOMY_LABEL_VALUES`) on the grid.

        Overlaps are resolved by :data:`LABEL_PRIORITY`; nodal regions fill the body voxels
        that no organ mask (other than body) claims.
        """
        out = np.zeros(self.grid.shape, dtype=np.uint8)
        if include_nodal_regions:
            for region, m in self.nodal_regions.items():
                out[m] = ANATOMY_LABEL_VALUES[region.value]
        for lab in reversed(LABEL_PRIORITY):
            found = self.masks.get(lab)
            if found is None or (lab is AnatomyLabel.BODY and include_nodal_regions):
                continue
            out[found] = ANATOMY_LABEL_VALUES[lab.value]
        if include_nodal_regions and AnatomyLabel.BODY in self.masks:
            body_only = self.masks[AnatomyLabel.BODY] & (out == 0)
            out[body_only] = ANATOMY_LABEL_VALUES[AnatomyLabel.BODY.value]
        return self.grid.with_array(out, unit="label")

    def landmarks_dict(self) -> dict[str, Any]:
        """JSON-ready landmarks, mask info, flags and boundary."""
        return {
            "provider": self.provider,
            "pelvic_boundary": self.pelvic_boundary,
            "pelvic_boundary_z_mm": None if self.pelvic_boundary_z_mm is None
            else round(self.pelvic_boundary_z_mm, 2),
            "flags": list(self.flags),
            "landmarks": {lm.value: f.to_dict() for lm, f in self.landmarks.items()},
            "masks": {name: info.to_dict() for name, info in self.mask_info.items()},
        }
