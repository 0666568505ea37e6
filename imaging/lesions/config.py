"""Configuration of the lesion finder: method, thresholds, exclusions and measurement geometry.

Every number here is a configurable default; the tags say where it comes from (``[R]`` from a
paper, ``[V]`` checked against the source, ``[D]`` design decision of this project); see
``docs/lesions.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from imaging.errors import ConfigError
from imaging.vocabulary import AnatomyLabel

__all__ = ["PRESETS", "LesionConfig", "Method", "SoftTissueRule", "Tracer"]

Method = Literal["fixed", "percist", "qpsma-split"]
SoftTissueRule = Literal["qpsma", "percist"]
Tracer = Literal["auto", "psma11", "dcfpyl", "psma1007"]

_METHODS: tuple[str, ...] = ("fixed", "percist", "qpsma-split")
_SOFT_RULES: tuple[str, ...] = ("qpsma", "percist")
_TRACERS: tuple[str, ...] = ("auto", "psma11", "dcfpyl", "psma1007")

# Hard exclusion : organs whose uptake is physiological excretion or
# secretion; a lesion inside them cannot be told from the organ by an SUV threshold.
_DEFAULT_EXCLUDE: tuple[AnatomyLabel, ...] = (
    AnatomyLabel.KIDNEYS,
    AnatomyLabel.URINARY_BLADDER,
    AnatomyLabel.URETERS,
    AnatomyLabel.SALIVARY_GLANDS,
    AnatomyLabel.LACRIMAL_GLANDS,
    AnatomyLabel.BOWEL,
)
# Organ-adaptive threshold: visceral metastases must stay findable.
# Blood-pool structures are added because their noise tail crosses low fixed thresholds; the
# organ-adaptive rule there is max(T_soft, mean + 3 SD), which rarely exceeds T_soft.
_DEFAULT_ADAPTIVE: tuple[AnatomyLabel, ...] = (
    AnatomyLabel.LIVER,
    AnatomyLabel.SPLEEN,
    AnatomyLabel.LUNGS,
    AnatomyLabel.ADRENALS,
    AnatomyLabel.HEART,
    AnatomyLabel.AORTA,
    AnatomyLabel.ILIAC_VESSELS,
    AnatomyLabel.BONE,
)
_DEFAULT_EQUIVOCAL_TOUCH: tuple[AnatomyLabel, ...] = (
    AnatomyLabel.URINARY_BLADDER,
    AnatomyLabel.URETERS,
    AnatomyLabel.KIDNEYS,
)
# the urine-filled organs, whose exclusion margin is equivocal_margin_mm when they are in
# equivocal_touch: a lesion abutting them keeps its voxels
_URINE_SPACES = (AnatomyLabel.URINARY_BLADDER, AnatomyLabel.URETERS)


@dataclass(frozen=True, slots=True)
class LesionConfig:
    """Settings of :func:`imaging.lesions.find_lesions`.

    Parameters
    ----------
    method : {"fixed", "percist", "qpsma-split"}
        Candidate threshold. ``"fixed"``: ``threshold_suv`` everywhere. ``"percist"``:
        ``1.5 x liver SUVmean + 2 SD`` (3-cm liver sphere), or ``2.0 x blood pool + 2 SD`` when
        the liver reference is not found (Wahl 2009). ``"qpsma-split"``: bone voxels
        ``>= bone_threshold_suv`` and soft tissue a liver-based threshold (Gafita 2019).
    threshold_suv : float
        Fixed threshold (SUV). Presets 2.5 / 3.0 / 4.0; default 3.0 [D].
    bone_threshold_suv : float
        Bone threshold of ``"qpsma-split"`` (SUV 3, qPSMA [V abstract]).
    soft_tissue_rule : {"qpsma", "percist"}
        Soft-tissue threshold of ``"qpsma-split"``: ``qpsma_liver_factor / L x (L + SD)``
        ([R], formula not verified in the paper's methods) or the PERCIST liver threshold.
    qpsma_liver_factor : float
        The 4.30 of the qPSMA soft-tissue formula [R].
    percist_liver_factor, percist_liver_sd_factor : float
        1.5 and 2 of the PERCIST liver threshold [R].
    percist_blood_pool_factor, percist_blood_pool_sd_factor : float
        2.0 and 2 of the PERCIST blood-pool fallback [R].
    isocontour_fraction : float or None
        Per-lesion refinement at this fraction of the lesion SUVmax (0.41 or 0.50, EANM FDG
        guideline [R]); ``None`` keeps the threshold segmentation.
    isocontour_background : bool
        Background-adapted isocontour: level = ``B + fraction x (SUVmax - B)`` with ``B`` the
        median SUV in the ring around the lesion (the A50% variant of the EANM guideline [R]);
        ``False`` gives the plain ``fraction x SUVmax``.
    isocontour_margin_mm : float
        The refined lesion may grow at most this far beyond the thresholded component [D].
    isocontour_iterative : bool
        Iterative thresholding method (ITM, Jentzen et al., J Nucl Med 2007;48:108-114): the
        background-corrected fraction follows the lesion volume through a calibration curve
        ``f(V)`` computed for the image's PSF and voxel grid (uniform spheres blurred by a
        Gaussian PSF of ``psf_fwhm_mm``, or of the PSF fitted on a hot organ), iterating
        ``volume -> fraction -> volume`` from ``isocontour_fraction`` until the volume no longer
        changes. Within organ-adaptive zones the region stays above the organ's own noise bound
        ``centre + k x spread`` instead of the detection threshold. Needs
        ``isocontour_fraction`` (the starting fraction) [R].
    isocontour_sphere_fit : bool
        After the iterative method, fit a uniform sphere blurred by the PSF on a linear
        background to the lesion's patch (least squares; Kessler et al., J Comput Assist Tomogr
        1984;8:514-522; Chen et al., J Nucl Med 1999;40:118-130; the sphere's voxel fractions
        blurred on the voxel grid, as the image holds them) and keep the isocontour whose
        voxel count holds the fitted sphere's volume; the threshold segmentation stays where
        the fit fails. Needs ``isocontour_iterative`` (its PSF and starting radius) [D].
    isocontour_max_iterations : int
        Segmentations per lesion at most in the iterative method; a lesion whose volume still
        changes then keeps the last one and ``LesionResult.notes`` says so [D].
    split : bool
        Split touching lesions at SUV local maxima (marker-based watershed) [D].
    split_prominence_suv : float
        A local maximum seeds its own lesion only if it rises at least this much (SUV) above
        the saddle to any higher maximum (h-maxima) [D].
    min_volume_ml : float
        Components smaller than this are dropped (0.1 mL ~ 2 PET voxels) [D].
    connectivity : {6, 18, 26}
        Voxel connectivity of connected components; 18 as autoPET [V].
    tracer : {"auto", "psma11", "dcfpyl", "psma1007"}
        ``"psma1007"`` (hepatobiliary excretion) adds the gallbladder to the hard exclusion and
        uses the spleen instead of the liver as the miPSMA score-2 reference (PROMISE V2 [V]).
        ``"auto"`` (default): the pipeline reads the tracer from the DICOM Radiopharmaceutical
        (:func:`tracer_from_radiopharmaceutical`); where it cannot (NIfTI input, an unknown
        name), the finder treats the study as a urinary-excretion tracer (PSMA-11 / DCFPyL) and
        says so in ``LesionResult.notes``.
    spill_prominence_noise_sd : float
        Where the scan's noise is known (liver VOI), a maximum next to an excluded organ is the
        component's own only if it rises this many noise SDs (at its SUV) above the saddle, so
        the noise bumps of a hot organ's halo are not taken for lesions [D].
    spill_hotter_ratio : float
        A component touching an excluded organ with SUVmax above this multiple of the organ's
        uptake beside it (90th percentile) cannot be its spill and is kept whole [D].
    min_contrast_noise : float or None
        A component is kept only if ``(SUVmax - bg) / (c sqrt(bg)) >=`` this (Rose criterion,
        5 [D]): ``bg`` is the upper-quartile SUV 2-3 voxels around it, ``c`` the scan's noise
        coefficient (SD / sqrt(mean) in the liver reference VOI). Removes the noise maxima of
        moderately avid tissue (stomach, marrow, heart) that a fixed threshold admits. ``None``
        switches the test off.
    contrast_noise_floor_suv : float
        Lowest background level used in the noise term (SUV), so that a focus in fat is not
        judged against a near-zero noise [D].
    detect_suv : float or None
        SUVmax a soft-tissue component needs to be called a lesion; its extent is still
        delineated at the soft-tissue threshold (hysteresis: detect at SUV 4, delineate at
        SUV 3, both usual fixed thresholds [V]); on the synthetic cohort the foci peaking at
        SUV 3.3-3.5 in two voxels were noise maxima of ureters, the aorta and the stomach wall.
        A component whose SUVmax lies in bone keeps the bone threshold (qPSMA: bone SUV >= 3).
        ``None`` switches the test off [D].
    exclude : tuple of AnatomyLabel
        Hard-excluded organs .
    exclusion_margin_mm : float
        Hard-excluded masks are grown by this distance (mask misregistration; the organ's
        partial-volume halo is handled by ``spill_correction``). Small, because nodes lie a few
        millimetres from bowel loops [D].
    adaptive_margin_mm : float
        Organ-adaptive masks are grown by this distance (two PET voxels in-plane) so the organ's
        own edge voxels, and its partial-volume spill beyond a mask drawn slightly small, get
        its threshold [D].
    adaptive_organs : tuple of AnatomyLabel
        Organs (liver, spleen, lungs, adrenals; heart and large vessels for their noise tail;
        the skeleton, whose marrow is avid with [18F]PSMA-1007) where the threshold is
        ``max(T_soft, centre + adaptive_sd_factor x spread)`` of the organ's own SUV (robust:
        median and 1.4826 x MAD; ``T_bone`` instead of ``T_soft`` for the skeleton) [D].
    adaptive_sd_factor : float or None
        The k of the organ-adaptive threshold ``centre + k x spread`` [D]. ``None`` (default):
        ``k = max(3, sqrt(2 ln n))`` for an organ of ``n`` voxels, the expected maximum of ``n``
        Gaussian noise values (the "universal threshold"), so that noise alone rarely crosses
        it however large the organ.
    spill_margin_max_mm : float
        The margin of a hard-excluded organ grows ring by ring (one voxel) while the median SUV
        of the next ring still reaches the threshold, up to this distance; what spill remains
        beyond it is removed by ``spill_drop`` [D].
    spill_correction : bool
        Model the partial-volume spill of hot excluded organs (bladder, kidneys, glands, bowel)
        as ``a x (PSF * mask) + b`` fitted in a shell around each organ, and subtract it before
        thresholding, so that a lesion abutting the bladder stands out of the bladder's halo.
        Without it (or when a fit fails) the organ's margin grows ring by ring instead [D].
    psf_fwhm_mm : float or None
        Gaussian PSF FWHM (mm) of the spill model; ``None`` fits it on the most compact hot
        excluded organ (candidates 3.5-10.6 mm) [D].
    organ_fringe_drop : bool
        Drop a component that touches voxels an organ-adaptive threshold removed, when its
        SUVmax is below that organ's threshold and exceeds the uptake it touches by less than
        ``spill_prominence_suv``: it has no maximum of its own, it is the fringe of the organ's
        physiological uptake cut by the edge of the adaptive zone (a spleen tip or dome the
        organ mask missed) [D].
    spill_drop : bool
        Remove the partial-volume spill of hard-excluded organs from the components touching
        them: a watershed on SUV with the organ and the component's own maxima as markers keeps
        what drains to a maximum of its own and drops what drains to the organ [D].
    spill_prominence_suv : float
        Prominence (SUV) a maximum needs to count as a focus of its own next to an organ [D].
    equivocal_touch : tuple of AnatomyLabel
        Lesions within ``equivocal_touch_mm`` of these organs' excluded zones (mask plus
        margin) are kept and flagged equivocal: the bladder and ureters (urine) and the
        kidneys (a focus against a kidney may be its renal pelvis or the first centimetres of
        the ureter, which leave the kidney where no ureter track is seen yet) [D].
    equivocal_touch_mm : float
        Distance (mm) from the zone that counts as touching (5 mm: the adjacent PET voxels) [D].
    equivocal_hotter_ratio : float or None
        A lesion touching an ``equivocal_touch`` organ is not equivocal when its SUVmax exceeds
        this many times the organ's urine activity (the 99th percentile of SUV in the organ's
        mask): urine cannot be hotter than the urine it belongs to, so a node of SUV 23 beside
        an [18F]PSMA-1007 ureter of SUV 5 is a node. ``None``: every touching lesion is
        equivocal [D].
    equivocal_margin_mm : float
        Exclusion margin of the urine spaces among the ``equivocal_touch`` organs (bladder,
        ureters) when they are also hard-excluded: 0, so that a lesion abutting the bladder
        keeps its voxels and is reported as equivocal rather than cut away. The kidneys keep
        ``exclusion_margin_mm`` (their spill is cut away as before) [D].
    ganglion_max_suv, ganglion_max_volume_ml, ganglion_bone_distance_mm : float
        A soft-tissue focus with SUVmax below ``ganglion_max_suv``, smaller than
        ``ganglion_max_volume_ml`` and within ``ganglion_bone_distance_mm`` of the vertebral
        column / bone mask (but not in it) looks like a sympathetic ganglion and is flagged
        equivocal [D]. Set ``ganglion_max_suv=0`` to disable.
    liver_sphere_diameter_mm, spleen_sphere_diameter_mm : float
        Reference spheres (PERCIST 3 cm [R]; spleen 2-3 cm [D]).
    blood_pool_diameter_mm, blood_pool_length_mm : float
        Descending-aorta cylinder (PERCIST 1 x 2 cm [R]).
    parotid_isocontour : float
        Whole-gland parotid VOI: voxels >= this fraction of each gland's SUVmax [R].
    suv_peak_volume_ml : float
        Volume of the SUVpeak sphere (1 cm^3, PERCIST [R]).
    max_plausible_suv : float
        An "SUV" image with a higher maximum is rejected as probably Bq/ml [D].
    """

    method: Method = "fixed"
    threshold_suv: float = 3.0
    bone_threshold_suv: float = 3.0
    soft_tissue_rule: SoftTissueRule = "qpsma"
    qpsma_liver_factor: float = 4.30
    percist_liver_factor: float = 1.5
    percist_liver_sd_factor: float = 2.0
    percist_blood_pool_factor: float = 2.0
    percist_blood_pool_sd_factor: float = 2.0
    isocontour_fraction: float | None = None
    isocontour_margin_mm: float = 10.0
    isocontour_background: bool = True
    isocontour_iterative: bool = False
    isocontour_max_iterations: int = 20
    isocontour_sphere_fit: bool = False
    split: bool = False
    split_prominence_suv: float = 1.0
    min_volume_ml: float = 0.1
    connectivity: int = 18
    tracer: Tracer = "auto"
    exclude: tuple[AnatomyLabel, ...] = _DEFAULT_EXCLUDE
    exclusion_margin_mm: float = 3.0
    adaptive_margin_mm: float = 10.0
    adaptive_organs: tuple[AnatomyLabel, ...] = _DEFAULT_ADAPTIVE
    adaptive_sd_factor: float | None = None
    organ_fringe_drop: bool = True
    spill_drop: bool = True
    spill_correction: bool = True
    psf_fwhm_mm: float | None = None
    spill_prominence_suv: float = 1.0
    spill_prominence_noise_sd: float = 3.0
    spill_hotter_ratio: float = 1.5
    min_contrast_noise: float | None = 5.0
    contrast_noise_floor_suv: float = 0.5
    detect_suv: float | None = 4.0
    equivocal_touch: tuple[AnatomyLabel, ...] = _DEFAULT_EQUIVOCAL_TOUCH
    equivocal_touch_mm: float = 5.0
    equivocal_hotter_ratio: float | None = 2.0
    equivocal_margin_mm: float = 0.0
    spill_margin_max_mm: float = 12.0
    ganglion_max_suv: float = 4.0
    ganglion_max_volume_ml: float = 0.5
    ganglion_bone_distance_mm: float = 10.0
    liver_sphere_diameter_mm: float = 30.0
    spleen_sphere_diameter_mm: float = 25.0
    blood_pool_diameter_mm: float = 10.0
    blood_pool_length_mm: float = 20.0
    parotid_isocontour: float = 0.5
    suv_peak_volume_ml: float = 1.0
    max_plausible_suv: float = 1000.0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ConfigError(
                f"lesion method {self.method!r} is unknown; valid methods are {list(_METHODS)}."
            )
        if self.soft_tissue_rule not in _SOFT_RULES:
            raise ConfigError(
                f"soft_tissue_rule {self.soft_tissue_rule!r} is unknown; valid rules are "
                f"{list(_SOFT_RULES)}."
            )
        if self.tracer not in _TRACERS:
            raise ConfigError(
                f"tracer {self.tracer!r} is unknown; valid tracers are {list(_TRACERS)}."
            )
        if self.connectivity not in (6, 18, 26):
            raise ConfigError(
                f"connectivity must be 6, 18 or 26, got {self.connectivity!r}."
            )
        if self.isocontour_fraction is not None and not 0.0 < self.isocontour_fraction < 1.0:
            raise ConfigError(
                f"isocontour_fraction must be in (0, 1) (e.g. 0.41 or 0.50) or None, got "
                f"{self.isocontour_fraction!r}."
            )
        if not isinstance(self.isocontour_iterative, bool):
            raise ConfigError(
                f"isocontour_iterative must be true or false, got {self.isocontour_iterative!r}."
            )
        if self.isocontour_iterative and self.isocontour_fraction is None:
            raise ConfigError(
                "isocontour_iterative needs isocontour_fraction as its starting fraction (e.g. "
                "0.41); set both, or switch the iterative method off."
            )
        for flag in ("organ_fringe_drop", "spill_drop", "spill_correction"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}.")
        if not isinstance(self.isocontour_sphere_fit, bool):
            raise ConfigError(
                f"isocontour_sphere_fit must be true or false, got {self.isocontour_sphere_fit!r}."
            )
        if self.isocontour_sphere_fit and not self.isocontour_iterative:
            raise ConfigError(
                "isocontour_sphere_fit needs isocontour_iterative = true (the fit takes its PSF "
                "and starting radius from the iterative method); set both."
            )
        if (isinstance(self.isocontour_max_iterations, bool)
                or not isinstance(self.isocontour_max_iterations, int)
                or self.isocontour_max_iterations < 2):
            raise ConfigError(
                f"isocontour_max_iterations must be an integer >= 2, got "
                f"{self.isocontour_max_iterations!r}."
            )
        if not 0.0 < self.parotid_isocontour < 1.0:
            raise ConfigError(
                f"parotid_isocontour must be in (0, 1), got {self.parotid_isocontour!r}."
            )
        positive = (
            "threshold_suv", "bone_threshold_suv", "qpsma_liver_factor", "percist_liver_factor",
            "percist_blood_pool_factor", "liver_sphere_diameter_mm", "spleen_sphere_diameter_mm",
            "blood_pool_diameter_mm", "blood_pool_length_mm", "suv_peak_volume_ml",
            "max_plausible_suv", "split_prominence_suv", "spill_prominence_suv",
            "contrast_noise_floor_suv", "spill_prominence_noise_sd", "spill_hotter_ratio",
        ) + (("equivocal_hotter_ratio",) if self.equivocal_hotter_ratio is not None else ())
        non_negative = (
            "percist_liver_sd_factor", "percist_blood_pool_sd_factor", "isocontour_margin_mm",
            "min_volume_ml", "exclusion_margin_mm", "adaptive_margin_mm",
            "equivocal_touch_mm", "equivocal_margin_mm", "spill_margin_max_mm",
            "ganglion_max_suv", "ganglion_max_volume_ml", "ganglion_bone_distance_mm",
        )
        optional = tuple(name for name in ("min_contrast_noise", "detect_suv")
                         if getattr(self, name) is not None)
        for name in positive + non_negative + optional:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"lesion setting {name} must be a number, got {value!r}.")
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                need = "positive" if name in positive else "zero or positive"
                raise ConfigError(f"lesion setting {name} must be {need} and finite, got {value}.")
        if self.psf_fwhm_mm is not None and not (
                isinstance(self.psf_fwhm_mm, int | float) and math.isfinite(self.psf_fwhm_mm)
                and self.psf_fwhm_mm > 0):
            raise ConfigError(f"psf_fwhm_mm must be a positive number or None, got "
                              f"{self.psf_fwhm_mm!r}.")
        if self.adaptive_sd_factor is not None and (
                isinstance(self.adaptive_sd_factor, bool)
                or not isinstance(self.adaptive_sd_factor, int | float)
                or not math.isfinite(self.adaptive_sd_factor) or self.adaptive_sd_factor < 0):
            raise ConfigError(
                f"adaptive_sd_factor must be a finite number >= 0 or None (automatic), got "
                f"{self.adaptive_sd_factor!r}."
            )
        for name in ("exclude", "adaptive_organs", "equivocal_touch"):
            labels = getattr(self, name)
            try:
                converted = tuple(AnatomyLabel(v) for v in labels)
            except ValueError as err:
                raise ConfigError(
                    f"lesion setting {name} holds an unknown anatomy label ({err}); valid labels "
                    f"are {[a.value for a in AnatomyLabel]}."
                ) from None
            object.__setattr__(self, name, converted)

    @property
    def excluded_organs(self) -> tuple[AnatomyLabel, ...]:
        """Hard-excluded organs, with the gallbladder added for PSMA-1007."""
        extra = (AnatomyLabel.GALLBLADDER,) if self.tracer == "psma1007" else ()
        return tuple(dict.fromkeys(self.exclude + extra))

    def margin_mm(self, organ: AnatomyLabel) -> float:
        """Exclusion margin of a hard-excluded organ."""
        if organ in self.equivocal_touch and organ in _URINE_SPACES:
            return self.equivocal_margin_mm
        return self.exclusion_margin_mm

    @property
    def name(self) -> str:
        """Short human-readable name of the method, e.g. ``"fixed SUV 3.0 + 41% isocontour"``."""
        if self.method == "fixed":
            text = f"fixed SUV {self.threshold_suv:g}"
        elif self.method == "percist":
            text = "PERCIST liver"
        else:
            text = f"qPSMA split (bone {self.bone_threshold_suv:g}, soft {self.soft_tissue_rule})"
        if self.isocontour_iterative:
            text += " + iterative isocontour (ITM)"
            if self.isocontour_sphere_fit:
                text += " + sphere fit"
        elif self.isocontour_fraction is not None:
            text += f" + {round(self.isocontour_fraction * 100):d}% isocontour"
        if self.split:
            text += " + split"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (anatomy labels as their string values)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [str(v) for v in value] if isinstance(value, tuple) else value
        return out

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LesionConfig:
        """A named preset of :data:`PRESETS` with optional field overrides."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"lesion preset {name!r} is unknown; valid presets are {sorted(PRESETS)}."
            ) from None
        return replace(base, **overrides)


PRESETS: dict[str, LesionConfig] = {
    "suv2.5": LesionConfig(method="fixed", threshold_suv=2.5),
    "suv3": LesionConfig(method="fixed", threshold_suv=3.0),
    "suv4": LesionConfig(method="fixed", threshold_suv=4.0),
    "percist": LesionConfig(method="percist"),
    "qpsma": LesionConfig(method="qpsma-split", soft_tissue_rule="qpsma"),
    "qpsma-percist": LesionConfig(method="qpsma-split", soft_tissue_rule="percist"),
    "suv3-iso41": LesionConfig(method="fixed", threshold_suv=3.0, isocontour_fraction=0.41),
    "suv3-iso50": LesionConfig(method="fixed", threshold_suv=3.0, isocontour_fraction=0.50),
    "suv3-split": LesionConfig(method="fixed", threshold_suv=3.0, split=True),
    "suv3-itm": LesionConfig(method="fixed", threshold_suv=3.0, isocontour_fraction=0.41,
                             isocontour_iterative=True),
    "suv3-fit": LesionConfig(method="fixed", threshold_suv=3.0, isocontour_fraction=0.41,
                             isocontour_iterative=True, isocontour_sphere_fit=True),
}
"""Named configurations compared in ``docs/lesions.md`` (``benchmarks/validate_lesions.py``)."""


_TRACER_NAMES: tuple[tuple[str, Tracer], ...] = (
    ("1007", "psma1007"),
    ("dcfpyl", "dcfpyl"), ("piflufolastat", "dcfpyl"), ("pylarify", "dcfpyl"),
    ("psma-11", "psma11"), ("psma11", "psma11"), ("psma 11", "psma11"), ("hbed", "psma11"),
    ("gozetotide", "psma11"), ("illuccix", "psma11"), ("locametz", "psma11"),
)


def tracer_from_radiopharmaceutical(name: str | None) -> Tracer | None:
    """The tracer family of a DICOM Radiopharmaceutical (0018,0031) text, or None if unknown.

    Matches the generic, chemical and trade names case-insensitively, e.g.
    ``"F-18 PSMA-1007"`` -> ``"psma1007"``, ``"Piflufolastat F 18"`` -> ``"dcfpyl"``,
    ``"Ga-68 gozetotide"`` -> ``"psma11"``. Other PSMA ligands (rhPSMA-7.3, PSMA-I&T, ...)
    return None: their excretion differs, so the caller must set the tracer explicitly.
    """
    if not name:
        return None
    text = name.lower()
    for key, tracer in _TRACER_NAMES:
        if key in text:
            return tracer
    return None

