"""Staging rules, one test per branch, on hand-built lesion lists (domain.md 1.1-1.4, 3.4)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from imaging.errors import ConfigError, GeometryError
from imaging.vocabulary import Landmark, LesionCategory, NodalRegion
from staging.classify import (
    bone_pattern,
    classify_lesion,
    classify_lesions,
    compute_overlaps,
    is_pelvic_region,
    lesion_count_bin,
    stage_patient,
)
from staging.models import ClassifiedLesion, StagingConfig

AJCC = StagingConfig(pelvic_boundary="common_iliac_bifurcation")


@dataclass(frozen=True)
class _Lesion:
    id: int
    overlaps: Mapping[str, float]
    equivocal: bool = False
    equivocal_reason: str | None = None
    volume_ml: float = 1.0
    suv_max: float = 10.0
    suv_mean: float = 6.0
    suv_peak: float = 8.0
    tl_psma: float = 6.0
    centroid_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mipsma_score: int | None = 2


_SITE_OVERLAPS: dict[str, dict[str, float]] = {
    "fossa": {"prostate_fossa": 0.9, "body": 1.0},
    "bone": {"bone": 0.8, "body": 1.0},
    "liver": {"liver": 0.95, "body": 1.0},
    "lung": {"lungs": 1.0, "body": 1.0},
    "retroperitoneal": {"retroperitoneal": 0.7, "body": 1.0},
    "supradiaphragmatic": {"supradiaphragmatic": 0.9, "body": 1.0},
    "obturator_left": {"obturator_left": 0.9, "body": 1.0},
    "obturator_right": {"obturator_right": 0.8, "body": 1.0},
    "external_iliac_left": {"external_iliac_left": 1.0, "body": 1.0},
    "common_iliac_left": {"common_iliac_left": 0.85, "body": 1.0},
}


def lesion(site: str, lesion_id: int = 1, **kwargs: object) -> _Lesion:
    return _Lesion(id=lesion_id, overlaps=_SITE_OVERLAPS[site], **kwargs)  # type: ignore[arg-type]


def stage(sites: list[str], config: StagingConfig = StagingConfig(), **kw: object):  # noqa: B008
    lesions = [lesion(s, i + 1) for i, s in enumerate(sites)]
    classified = [classify_lesion(les, config=config) for les in lesions]
    return stage_patient(classified, patient_id="P1", config=config, **kw)  # type: ignore[arg-type]


# -- single-lesion categorisation order -------------------------------------------------------
def test_bone_wins_over_organ_and_node_when_half_the_voxels_are_bone() -> None:
    c = classify_lesion(_Lesion(1, {"bone": 0.5, "liver": 0.5, "obturator_left": 0.5}))
    assert c.category is LesionCategory.BONE
    assert c.region == "bone"


def test_organ_when_bone_below_threshold() -> None:
    c = classify_lesion(_Lesion(1, {"bone": 0.3, "liver": 0.7}))
    assert (c.category, c.region) == (LesionCategory.VISCERAL, "liver")


def test_non_visceral_organ_is_not_visceral() -> None:
    # kidneys are not in the visceral list: a lesion there falls through to nodal/unlocalised
    c = classify_lesion(_Lesion(1, {"kidneys": 0.9, "retroperitoneal": 0.3}))
    assert (c.category, c.region) == (LesionCategory.NODE_EXTRAPELVIC, "retroperitoneal")


def test_fossa_before_nodal_regions() -> None:
    c = classify_lesion(_Lesion(1, {"prostate_fossa": 0.6, "perirectal": 0.4}))
    assert (c.category, c.region) == (LesionCategory.FOSSA, "prostate_fossa")


def test_intact_prostate_counts_as_local() -> None:
    c = classify_lesion(_Lesion(1, {"prostate": 0.9}))
    assert (c.category, c.region) == (LesionCategory.FOSSA, "prostate")


def test_fossa_below_threshold_goes_to_node() -> None:
    c = classify_lesion(_Lesion(1, {"prostate_fossa": 0.4, "perirectal": 0.6}))
    assert (c.category, c.region) == (LesionCategory.NODE_PELVIC, "perirectal")


def test_node_takes_region_of_largest_overlap() -> None:
    c = classify_lesion(_Lesion(1, {"obturator_left": 0.3, "external_iliac_left": 0.6}))
    assert (c.category, c.region) == (LesionCategory.NODE_PELVIC, "external_iliac_left")


def test_node_region_from_centroid_when_overlap_too_small() -> None:
    c = classify_lesion(_Lesion(1, {"presacral": 0.05}), region_at_centroid="inguinal_right")
    assert (c.category, c.region) == (LesionCategory.NODE_EXTRAPELVIC, "inguinal_right")
    assert "centroid" in c.reason


def test_unlocalised_soft_tissue_is_visceral_other_and_needs_review() -> None:
    c = classify_lesion(_Lesion(1, {"body": 1.0}))
    assert (c.category, c.region, c.unlocalised) == (
        LesionCategory.VISCERAL, "other_soft_tissue", True)
    s = stage_patient([c], patient_id="P")
    assert s.group == "M1b-M1c"
    assert s.needs_review
    assert "outside every organ" in s.review_reasons[0]


def test_unlocalised_can_be_made_equivocal() -> None:
    config = StagingConfig(unlocalised="equivocal")
    c = classify_lesion(_Lesion(1, {"body": 1.0}), config=config)
    assert c.category is LesionCategory.EQUIVOCAL
    assert c.provisional_category is LesionCategory.VISCERAL
    s = stage_patient([c], patient_id="P", config=config)
    assert (s.group, s.mitnm, s.needs_review) == ("T0N0M0", "miT0N0M0", True)


def test_equivocal_lesion_keeps_provisional_category() -> None:
    c = classify_lesion(_Lesion(1, {"obturator_left": 1.0}, equivocal=True,
                                equivocal_reason="touches the ureter"))
    assert c.category is LesionCategory.EQUIVOCAL
    assert c.provisional_category is LesionCategory.NODE_PELVIC
    assert c.equivocal_reason == "touches the ureter"
    assert c.to_dict()["category"] == "equivocal"


def test_bone_site_from_landmarks() -> None:
    landmarks = {
        Landmark.ILIAC_CREST_LEFT: SimpleNamespace(position_mm=(50.0, 0.0, 100.0)),
        Landmark.ILIAC_CREST_RIGHT: SimpleNamespace(position_mm=(-50.0, 0.0, 102.0)),
        Landmark.FEMORAL_HEAD_LEFT: SimpleNamespace(position_mm=(80.0, 0.0, 0.0)),
        Landmark.FEMORAL_HEAD_RIGHT: SimpleNamespace(position_mm=None),
    }
    anatomy = SimpleNamespace(masks={}, nodal_regions={}, landmarks=landmarks)
    sites = [
        _Lesion(1, {"bone": 1.0}, centroid_mm=(0.0, 0.0, 50.0)),
        _Lesion(2, {"bone": 1.0}, centroid_mm=(0.0, 0.0, 300.0)),
        _Lesion(3, {"bone": 1.0}, centroid_mm=(80.0, 0.0, -100.0)),
    ]
    out = classify_lesions(sites, anatomy=anatomy)  # type: ignore[arg-type]
    assert [c.region for c in out] == ["pelvis", "trunk_skeleton", "lower_limb"]


# -- the boundary switch ----------------------------------------------------------------------
def test_is_pelvic_region_under_both_conventions() -> None:
    assert is_pelvic_region("common_iliac_right", boundary="aortic_bifurcation")
    assert not is_pelvic_region("common_iliac_right", boundary="common_iliac_bifurcation")
    assert is_pelvic_region("obturator_left", boundary="common_iliac_bifurcation")
    assert not is_pelvic_region("retroperitoneal", boundary="aortic_bifurcation")
    with pytest.raises(ValueError, match="not a nodal region"):
        is_pelvic_region("liver", boundary="aortic_bifurcation")
    with pytest.raises(ValueError, match="Unknown pelvic boundary"):
        is_pelvic_region("presacral", boundary="L5")


def test_boundary_switch_turns_common_iliac_node_from_n1_into_m1a() -> None:
    promise = stage(["common_iliac_left"])
    ajcc = stage(["common_iliac_left"], AJCC)
    assert promise.lesions[0].category is LesionCategory.NODE_PELVIC
    assert ajcc.lesions[0].category is LesionCategory.NODE_EXTRAPELVIC
    assert ajcc.lesions[0].region == promise.lesions[0].region == "common_iliac_left"
    assert promise.mitnm == "miT0N1aM0"
    assert ajcc.mitnm == "miT0N0M1a"
    # the study groups do not depend on the convention (domain.md 1.2)
    assert promise.group == ajcc.group == "N1/M1a"
    assert promise.emmett_group == ajcc.emmett_group == "extra_fossa"
    assert "distant under the common_iliac_bifurcation" in ajcc.lesions[0].reason


def test_boundary_switch_changes_n1b_to_n1a_plus_m1a() -> None:
    assert stage(["common_iliac_left", "obturator_left"]).mitnm == "miT0N1bM0"
    assert stage(["common_iliac_left", "obturator_left"], AJCC).mitnm == "miT0N1aM1a"


def test_boundary_switch_leaves_other_pelvic_nodes_alone() -> None:
    assert stage(["obturator_left"], AJCC).mitnm == "miT0N1aM0"


# -- every T / N / M combination --------------------------------------------------------------
_N_SITES = {"N0": [], "N1a": ["obturator_left", "obturator_left"],
            "N1b": ["obturator_left", "external_iliac_left", "obturator_right"]}
_M_SITES = {"a": ["retroperitoneal"], "b": ["bone"], "c": ["liver"]}
_M_COMBOS = ["", "a", "b", "c", "ab", "ac", "bc", "abc"]


@pytest.mark.parametrize(("t", "n", "m"), list(itertools.product(
    ["T0", "Tr"], list(_N_SITES), _M_COMBOS)))
def test_every_mitnm_combination(t: str, n: str, m: str) -> None:
    sites = (["fossa"] if t == "Tr" else []) + _N_SITES[n]
    sites += [s for letter in m for s in _M_SITES[letter]]
    s = stage(sites)
    expected_m = f"M1{m}" if m else "M0"
    assert s.mitnm == f"mi{t}{n}{expected_m}"
    assert (s.t, s.n, s.m) == (t, n, expected_m)
    if "b" in m or "c" in m:
        group = "M1b-M1c"
    elif n != "N0" or "a" in m:
        group = "N1/M1a"
    elif t == "Tr":
        group = "TrN0M0"
    else:
        group = "T0N0M0"
    assert s.group == group
    if not sites:
        assert s.emmett_group == "negative"
    elif sites == ["fossa"]:
        assert s.emmett_group == "fossa_confined"
    else:
        assert s.emmett_group == "extra_fossa"
    assert s.lesion_count == len(sites)
    assert not s.needs_review


def test_two_lesions_in_one_region_are_n1a_and_left_right_are_n1b() -> None:
    assert stage(["obturator_left", "obturator_left"]).n == "N1a"
    both = stage(["obturator_left", "obturator_right"])
    assert both.n == "N1b"
    assert both.pelvic_node_regions == ("obturator_left", "obturator_right")


def test_lung_lesion_is_m1c() -> None:
    s = stage(["lung"])
    assert (s.mitnm, s.lesions[0].region) == ("miT0N0M1c", "lungs")


def test_supradiaphragmatic_node_is_m1a() -> None:
    assert stage(["supradiaphragmatic"]).mitnm == "miT0N0M1a"


# -- equivocal lesions and needs_review ------------------------------------------------------
def _equivocal(site: str, lesion_id: int) -> ClassifiedLesion:
    return classify_lesion(lesion(site, lesion_id, equivocal=True,
                                  equivocal_reason="abuts the urinary bladder"))


def test_equivocal_only_patient_is_negative_and_needs_review() -> None:
    s = stage_patient([_equivocal("fossa", 1), _equivocal("obturator_left", 2)], patient_id="P")
    assert (s.mitnm, s.group, s.emmett_group) == ("miT0N0M0", "T0N0M0", "negative")
    assert s.lesion_count == 0
    assert s.lesion_count_bin == "0"
    assert s.counts_by_category["equivocal"] == 2
    assert sum(v for k, v in s.counts_by_category.items() if k != "equivocal") == 0
    assert s.needs_review
    assert "N1/M1a" in s.review_reasons[0]
    assert s.psma_tv_ml == 0.0
    assert s.max_mipsma_score is None


def test_equivocal_fossa_only_would_change_negative_to_tr() -> None:
    s = stage_patient([_equivocal("fossa", 1)], patient_id="P")
    assert s.group == "T0N0M0"
    assert s.needs_review
    assert "TrN0M0" in s.review_reasons[0]


def test_equivocal_that_cannot_change_the_group_needs_no_review() -> None:
    bone = classify_lesion(lesion("bone", 1))
    s = stage_patient([bone, _equivocal("obturator_left", 2)], patient_id="P")
    assert (s.group, s.mitnm) == ("M1b-M1c", "miT0N0M1b")
    assert not s.needs_review
    assert s.counts_by_category["equivocal"] == 1


def test_equivocal_changing_only_emmett_group_needs_review() -> None:
    # fossa_confined vs extra_fossa: the Emmett group depends on the equivocal node even though
    # the Nikitas group would move too; both are reported
    fossa = classify_lesion(lesion("fossa", 1))
    s = stage_patient([fossa, _equivocal("obturator_left", 2)], patient_id="P")
    assert (s.group, s.emmett_group, s.needs_review) == ("TrN0M0", "fossa_confined", True)


def test_equivocal_in_group_counts_them_at_provisional_category() -> None:
    config = StagingConfig(equivocal_in_group=True)
    s = stage_patient([_equivocal("obturator_left", 1)], patient_id="P", config=config)
    assert (s.mitnm, s.group) == ("miT0N1aM0", "N1/M1a")
    assert s.counts_by_category["equivocal"] == 0
    assert s.counts_by_category["node_pelvic"] == 1
    assert not s.needs_review


def test_upstream_review_reasons_are_kept() -> None:
    s = stage([], review_reasons=["aortic bifurcation not located"])
    assert s.needs_review
    assert s.review_reasons == ("aortic bifurcation not located",)


# -- burden, bins and patterns ----------------------------------------------------------------
@pytest.mark.parametrize(("n", "expected"), [(0, "0"), (1, "1"), (2, "2-3"), (3, "2-3"),
                                             (4, "4-5"), (5, "4-5"), (6, "6+"), (40, "6+")])
def test_lesion_count_bin(n: int, expected: str) -> None:
    assert lesion_count_bin(n) == expected


def test_lesion_count_bin_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        lesion_count_bin(-1)


@pytest.mark.parametrize(("n", "expected"), [(0, "none"), (1, "unifocal"), (2, "oligometastatic"),
                                             (3, "oligometastatic"), (4, "disseminated")])
def test_bone_pattern(n: int, expected: str) -> None:
    assert bone_pattern(n) == expected
    assert stage(["bone"] * n).bone_pattern == expected


def test_bone_pattern_threshold_is_configurable() -> None:
    assert bone_pattern(4, oligometastatic_max=5) == "oligometastatic"


def test_burden_sums_staged_lesions_only() -> None:
    lesions = [
        classify_lesion(_Lesion(1, {"bone": 1.0}, volume_ml=2.0, tl_psma=20.0, mipsma_score=1)),
        classify_lesion(_Lesion(2, {"liver": 1.0}, volume_ml=3.0, tl_psma=15.0, mipsma_score=3)),
        classify_lesion(_Lesion(3, {"presacral": 1.0}, volume_ml=50.0, tl_psma=500.0,
                                mipsma_score=3, equivocal=True, equivocal_reason="ganglion")),
        classify_lesion(_Lesion(4, {"presacral": 1.0}, volume_ml=1.0, tl_psma=4.0,
                                mipsma_score=None)),
    ]
    s = stage_patient(lesions, patient_id="P")
    assert s.psma_tv_ml == pytest.approx(6.0)
    assert s.tl_psma == pytest.approx(39.0)
    assert s.max_mipsma_score == 3
    assert s.lesion_count == 3
    assert s.lesion_count_bin == "2-3"
    assert s.summary()["counts_by_category"] == {
        "fossa": 0, "node_pelvic": 1, "node_extrapelvic": 0, "bone": 1, "visceral": 1,
        "equivocal": 1}


# -- overlaps from label maps and anatomy -----------------------------------------------------
def test_compute_overlaps_fractions() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint16)
    labels[0, 0, :4] = 1
    labels[3, 3, :2] = 2
    bone = np.zeros_like(labels, dtype=bool)
    bone[0, 0, :3] = True
    region = np.zeros_like(bone)
    region[3, 3, 1] = True
    out = compute_overlaps(labels, {"bone": bone, "presacral": region})
    assert out == {1: {"bone": 0.75}, 2: {"presacral": 0.5}}
    assert compute_overlaps(np.zeros((2, 2, 2), dtype=np.uint8), {"bone": bone}) == {}


def test_compute_overlaps_rejects_mask_on_other_grid() -> None:
    labels = np.ones((2, 2, 2), dtype=np.uint16)
    with pytest.raises(GeometryError, match="resample the anatomy"):
        compute_overlaps(labels, {"bone": np.ones((3, 2, 2), dtype=bool)})


def test_classify_lesions_measures_overlaps_from_anatomy() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint16)
    labels[1, 1, 1:3] = 1  # in the common iliac region
    labels[4, 4, 4] = 2  # in no mask, but the centroid lookup says inguinal
    ci = np.zeros(labels.shape, dtype=bool)
    ci[1, 1, :] = True
    anatomy = SimpleNamespace(
        masks={"bone": np.zeros(labels.shape, dtype=bool)},
        nodal_regions={NodalRegion.COMMON_ILIAC_RIGHT: ci},
        landmarks={},
        region_of_point=lambda p: NodalRegion.INGUINAL_LEFT if p[2] > 3 else None,
    )
    lesions = [_Lesion(1, {}, centroid_mm=(1.0, 1.0, 1.5)),
               _Lesion(2, {}, centroid_mm=(4.0, 4.0, 4.0))]
    promise = classify_lesions(lesions, labels=labels, anatomy=anatomy)  # type: ignore[arg-type]
    assert [(c.category.value, c.region) for c in promise] == [
        ("node_pelvic", "common_iliac_right"), ("node_extrapelvic", "inguinal_left")]
    ajcc = classify_lesions(lesions, labels=labels, anatomy=anatomy,  # type: ignore[arg-type]
                            config=AJCC)
    assert ajcc[0].category is LesionCategory.NODE_EXTRAPELVIC


# -- config validation ------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pelvic_boundary": "L5"}, "pelvic_boundary"),
    ({"bone_min_fraction": 1.5}, "bone_min_fraction"),
    ({"visceral_organs": ("liver", "pancreas")}, "pancreas"),
    ({"unlocalised": "ignore"}, "unlocalised"),
    ({"oligometastatic_max": 1}, "oligometastatic_max"),
])
def test_staging_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StagingConfig(**kwargs)  # type: ignore[arg-type]


# -- fossa recurrences against the bladder base ------------------------------------------------
def _at_bladder(site: str, lesion_id: int = 1, reason: str = "touches urinary_bladder"
                ) -> _Lesion:
    return lesion(site, lesion_id, equivocal=True, equivocal_reason=reason)


@pytest.mark.parametrize(("site", "category", "stage", "review"), [
    ("fossa", LesionCategory.FOSSA, ("miTrN0M0", "TrN0M0", "fossa_confined"),
     "fossa recurrence against the bladder base"),
    ("bone", LesionCategory.BONE, ("miT0N0M1b", "M1b-M1c", "extra_fossa"),
     "bone lesion against the bladder"),
])
def test_fossa_or_bone_lesion_touching_only_the_bladder_is_counted_and_needs_review(
        site: str, category: LesionCategory, stage: tuple[str, str, str], review: str) -> None:
    c = classify_lesion(_at_bladder(site))
    assert (c.category, c.equivocal, c.equivocal_reason) == (category, False, None)
    assert "against the bladder" in c.reason
    s = stage_patient([c], patient_id="P")
    assert (s.mitnm, s.group, s.emmett_group) == stage
    assert s.needs_review
    assert any(review in r for r in s.review_reasons)


def test_fossa_at_bladder_can_stay_equivocal() -> None:
    config = StagingConfig(fossa_at_bladder="equivocal")
    c = classify_lesion(_at_bladder("fossa"), config=config)
    assert c.category is LesionCategory.EQUIVOCAL
    assert stage_patient([c], patient_id="P", config=config).group == "T0N0M0"


@pytest.mark.parametrize("reason", ["touches urinary_bladder; touches ureters", "touches ureters",
                                    "sympathetic-ganglion-like (SUVmax < 4)"])
def test_fossa_lesion_with_another_equivocal_reason_stays_equivocal(reason: str) -> None:
    c = classify_lesion(_at_bladder("fossa", reason=reason))
    assert c.category is LesionCategory.EQUIVOCAL


def test_a_node_touching_the_bladder_stays_equivocal() -> None:
    c = classify_lesion(_at_bladder("obturator_left"))
    assert c.category is LesionCategory.EQUIVOCAL
    assert c.provisional_category is LesionCategory.NODE_PELVIC


def test_fossa_at_bladder_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="fossa_at_bladder"):
        StagingConfig(fossa_at_bladder="maybe")  # type: ignore[arg-type]


# -- bone lesions against the bladder ----------------------------------------------------------
def test_bone_at_bladder_can_stay_equivocal() -> None:
    config = StagingConfig(bone_at_bladder="equivocal")
    c = classify_lesion(_at_bladder("bone"), config=config)
    assert c.category is LesionCategory.EQUIVOCAL
    assert c.provisional_category is LesionCategory.BONE
    assert stage_patient([c], patient_id="P", config=config).group == "T0N0M0"


@pytest.mark.parametrize("reason", ["touches urinary_bladder; touches ureters",
                                    "touches kidneys"])
def test_bone_lesion_with_another_equivocal_reason_stays_equivocal(reason: str) -> None:
    assert classify_lesion(_at_bladder("bone", reason=reason)).category is LesionCategory.EQUIVOCAL


def test_bone_at_bladder_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="bone_at_bladder"):
        StagingConfig(bone_at_bladder="maybe")  # type: ignore[arg-type]
