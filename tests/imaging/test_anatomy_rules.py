"""Rule-based anatomy on analytic volumes with known answers (no phantom generator needed)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.anatomy import AnatomyConfig, AnatomyMap, label_anatomy
from imaging.anatomy.model import LandmarkFinding
from imaging.errors import AnatomyError, ConfigError
from imaging.vocabulary import ANATOMY_LABEL_VALUES, AnatomyLabel, Landmark, NodalRegion
from imaging.volume import Volume

SPACING = (4.0, 4.0, 4.0)


def _torso(*, flip_z: bool = False, flip_x: bool = False) -> tuple[Volume, dict[str, float]]:
    """A 320 x 240 x 300 mm torso: soft-tissue cylinder, spine rod, two lungs, couch plate.

    Built on an ascending LPS grid (x, y, z) and then stored in HFS (z descending) or FFS
    (x flipped) array order, so both orientations describe the same physical object.
    """
    xs = np.arange(-160, 160, SPACING[2]) + 2.0
    ys = np.arange(-120, 140, SPACING[1]) + 2.0
    zs = np.arange(0, 300, SPACING[0]) + 2.0
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    body = (x / 150.0) ** 2 + (y / 100.0) ** 2 <= 1.0
    hu[body] = 40.0
    for cx in (-70.0, 70.0):  # lungs in the upper 120 mm
        lung = ((x - cx) / 50.0) ** 2 + ((y + 5) / 60.0) ** 2 + ((z - 220.0) / 70.0) ** 2 <= 1
        hu[lung] = -850.0
    spine = ((x / 18.0) ** 2 + ((y - 60.0) / 18.0) ** 2 <= 1.0)
    hu[spine] = 250.0  # marrow
    cortex = spine & ~((x / 13.0) ** 2 + ((y - 60.0) / 13.0) ** 2 <= 1.0)
    hu[cortex] = 900.0
    couch = (y >= 112.0) & (y <= 124.0) & (np.abs(x) <= 150)
    hu[couch] = 300.0
    arr = hu
    origin = [xs[0], ys[0], zs[0]]
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    if flip_z:
        arr = arr[::-1]
        origin[2] = zs[-1]
        direction[:, 0] = [0.0, 0.0, -1.0]
    if flip_x:
        arr = arr[:, :, ::-1]
        origin[0] = xs[-1]
        direction[:, 2] = [-1.0, 0.0, 0.0]
    vol = Volume(np.ascontiguousarray(arr), spacing=SPACING, origin=tuple(origin),
                 direction=direction, unit="HU")
    truth = {"lung_ml": float(np.count_nonzero(hu == -850.0)) * 0.064,
             "bone_ml": float(np.count_nonzero(spine)) * 0.064,
             "body_ml": float(np.count_nonzero(body)) * 0.064}
    return vol, truth


@pytest.fixture(scope="module")
def torso() -> tuple[Volume, dict[str, float], AnatomyMap]:
    ct, truth = _torso()
    return ct, truth, label_anatomy(ct)


def test_body_lungs_bone_volumes_match_the_analytic_torso(torso) -> None:
    ct, truth, anatomy = torso
    vox = ct.voxel_volume_ml
    assert anatomy.mask(AnatomyLabel.BODY).sum() * vox == pytest.approx(truth["body_ml"],
                                                                        rel=0.05)
    assert anatomy.mask(AnatomyLabel.LUNGS).sum() * vox == pytest.approx(truth["lung_ml"],
                                                                         rel=0.1)
    assert anatomy.mask(AnatomyLabel.BONE).sum() * vox == pytest.approx(truth["bone_ml"],
                                                                        rel=0.25)


def test_couch_is_not_body(torso) -> None:
    ct, _, anatomy = torso
    couch_point = (0.0, 118.0, 150.0)
    k, j, i = np.rint(ct.world_to_index(couch_point)).astype(int)
    assert ct.array[k, j, i] == 300.0
    assert not anatomy.mask(AnatomyLabel.BODY)[k, j, i]
    assert AnatomyLabel.BODY in anatomy.labels_at_point((0.0, 0.0, 150.0)).labels


@pytest.mark.parametrize(("flip_z", "flip_x"), [(True, False), (False, True), (True, True)])
def test_result_is_the_same_in_physical_space_for_any_orientation(torso, flip_z: bool,
                                                                  flip_x: bool) -> None:
    _, _, ref = torso
    ct, _ = _torso(flip_z=flip_z, flip_x=flip_x)
    other = label_anatomy(ct)
    for point in [(-70.0, 0.0, 220.0), (70.0, 0.0, 220.0), (0.0, 60.0, 100.0),
                  (0.0, -60.0, 100.0), (0.0, 118.0, 150.0)]:
        assert other.labels_at_point(point).labels == ref.labels_at_point(point).labels, point


def test_results_come_on_the_reference_grid(torso) -> None:
    ct, _, _ = torso
    pet = Volume(np.zeros((50, 40, 50), dtype=np.float32), spacing=(6.0, 6.5, 6.5),
                 origin=(-160.0, -120.0, 0.0), unit="g/ml")
    anatomy = label_anatomy(ct, pet=pet)
    assert anatomy.grid.shape == pet.shape
    assert all(m.shape == pet.shape for m in anatomy.masks.values())
    label_map = anatomy.to_label_volume()
    assert label_map.shape == pet.shape
    assert set(np.unique(label_map.array)) <= {0, *ANATOMY_LABEL_VALUES.values()}


def test_a_ct_without_pelvis_says_why_each_pelvic_landmark_is_missing(torso) -> None:
    _, _, anatomy = torso
    assert "pelvis_not_in_ct" in anatomy.flags
    for lm in (Landmark.FEMORAL_HEAD_LEFT, Landmark.PUBIC_SYMPHYSIS_SUPERIOR,
               Landmark.SACRAL_PROMONTORY, Landmark.AORTIC_BIFURCATION):
        finding = anatomy.landmarks[lm]
        assert finding.position_mm is None
        assert finding.confidence == 0.0
        assert finding.reason
    assert anatomy.pelvic_boundary_z_mm is None
    assert anatomy.mask_info["prostate_fossa"].confidence == 0.0
    with pytest.raises(AnatomyError, match="femoral_head_left"):
        anatomy.require(Landmark.FEMORAL_HEAD_LEFT)
    with pytest.raises(AnatomyError, match="prostate_fossa"):
        anatomy.require(AnatomyLabel.PROSTATE_FOSSA)


def test_require_pelvis_raises_a_clear_error(torso) -> None:
    ct, _, _ = torso
    with pytest.raises(AnatomyError, match="covers the pelvis"):
        label_anatomy(ct, config=AnatomyConfig(require_pelvis=True))


def test_wrong_unit_and_empty_ct_are_rejected() -> None:
    ct, _ = _torso()
    with pytest.raises(AnatomyError, match="HU"):
        label_anatomy(ct.with_array(ct.array, unit="g/ml"))
    with pytest.raises(AnatomyError, match="No body"):
        label_anatomy(ct.with_array(np.full(ct.shape, -1000.0, dtype=np.float32)))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"provider": "nnunet"}, "provider"),
    ({"provider": "totalsegmentator"}, "provider_path"),
    ({"pelvic_boundary": "l5"}, "pelvic_boundary"),
    ({"working_spacing_mm": 20.0}, "working_spacing_mm"),
    ({"bowel_fragment_ratio": -1.0}, "bowel_fragment_ratio"),
    ({"bowel_peak_ratio": float("nan")}, "bowel_peak_ratio"),
    ({"bowel_round_core_ratio": 0.0}, "bowel_round_core_ratio"),
    ({"bowel_round_core_max_ml": -2.0}, "bowel_round_core_max_ml"),
    ({"ureter_hilum_mm": 0.0}, "ureter_hilum_mm"),
    ({"ureter_path_mm": -6.0}, "ureter_path_mm"),
    ({"ureter_course_max_ml": float("inf")}, "ureter_course_max_ml"),
    ({"ureter_course_floor_suv": 0.0}, "ureter_course_floor_suv"),
    ({"ureter_course": "yes"}, "ureter_course"),
    ({"ureter_base_course": 1}, "ureter_base_course"),
    ({"ureter_chain_needs_track": "yes"}, "ureter_chain_needs_track"),
    ({"ureter_base_midline_mm": -20.0}, "ureter_base_midline_mm"),
    ({"ureter_peak_midline_mm": 0.0}, "ureter_peak_midline_mm"),
    ({"ureter_side_node_saddle": 0.0}, "ureter_side_node_saddle"),
    ({"ureter_side_node_max_ml": -1.0}, "ureter_side_node_max_ml"),
    ({"bowel_fat_loop_hu": float("inf")}, "bowel_fat_loop_hu"),
    ({"bowel_fat_loop_hu": "fat"}, "bowel_fat_loop_hu"),
    ({"bowel_fat_loop_band": "on"}, "bowel_fat_loop_band"),
    ({"bowel_fat_loop_band_half_width_mm": 0.0}, "bowel_fat_loop_band_half_width_mm"),
    ({"fossa_rectum_wall": 1}, "fossa_rectum_wall"),
    ({"rectum_midline_mm": -10.0}, "rectum_midline_mm"),
    ({"rectum_search_mm": float("nan")}, "rectum_search_mm"),
    ({"rectum_max_width_mm": 0.0}, "rectum_max_width_mm"),
    ({"rectum_min_length_mm": -25.0}, "rectum_min_length_mm"),
    ({"pelvic_floor_regions": "yes"}, "pelvic_floor_regions"),
    ({"ureter_urine_ratio": -2.0}, "ureter_urine_ratio"),
    ({"ureter_min_urine_suv": 0.0}, "ureter_min_urine_suv"),
    ({"lumen_min_soft_rim": 1.5}, "lumen_min_soft_rim"),
    ({"lumen_core_mm": (9.0, 0.0)}, "lumen_core_mm"),
    ({"fine_bone_hu": -5.0}, "fine_bone_hu"),
    ({"bone_min_native_peak_hu": 0.0}, "bone_min_native_peak_hu"),
    ({"bone_min_native_peak_hu": float("nan")}, "bone_min_native_peak_hu"),
    ({"fine_bone_edge_fraction": 1.0}, "fine_bone_edge_fraction"),
    ({"fine_marrow_bridge_mm": 0.0}, "fine_marrow_bridge_mm"),
    ({"fine_marrow_window_mm": -7.0}, "fine_marrow_window_mm"),
    ({"fine_marrow_min_hu": float("nan")}, "fine_marrow_min_hu"),
])
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AnatomyConfig(**kwargs)  # type: ignore[arg-type]


def _tiny_map(boundary: str) -> AnatomyMap:
    grid = Volume(np.zeros((4, 4, 4), dtype=np.uint8), spacing=(10.0, 10.0, 10.0),
                  origin=(0.0, 0.0, 0.0), unit="mask")
    ci = np.zeros((4, 4, 4), dtype=bool)
    ci[2:] = True
    obt = ~ci
    bone = np.zeros((4, 4, 4), dtype=bool)
    bone[0, 0, 0] = True
    return AnatomyMap(grid=grid, masks={AnatomyLabel.BONE: bone},
                      nodal_regions={NodalRegion.COMMON_ILIAC_LEFT: ci,
                                     NodalRegion.OBTURATOR_LEFT: obt},
                      landmarks={lm: LandmarkFinding(None, 0.0, "test") for lm in Landmark},
                      mask_info={}, pelvic_boundary=boundary,  # type: ignore[arg-type]
                      pelvic_boundary_z_mm=None)


def test_common_iliac_is_pelvic_only_under_the_promise_boundary() -> None:
    promise = _tiny_map("aortic_bifurcation")
    ajcc = _tiny_map("common_iliac_bifurcation")
    assert promise.is_pelvic(NodalRegion.COMMON_ILIAC_LEFT)
    assert not ajcc.is_pelvic(NodalRegion.COMMON_ILIAC_LEFT)
    assert ajcc.is_pelvic(NodalRegion.OBTURATOR_LEFT)
    assert not ajcc.is_pelvic(NodalRegion.INGUINAL_LEFT)
    # grid default direction: k -> z, so z = 25 mm is slice 2 (common iliac)
    assert promise.region_of_point((0.0, 0.0, 25.0)) is NodalRegion.COMMON_ILIAC_LEFT
    assert promise.region_of_point((0.0, 0.0, 0.0)) is NodalRegion.OBTURATOR_LEFT
    assert promise.region_of_point((0.0, 0.0, 500.0)) is None
    hit = promise.labels_at_point((0.0, 0.0, 0.0))
    assert hit.label is AnatomyLabel.BONE
    assert hit.pelvic is True
    values = promise.to_label_volume().array
    assert values[0, 0, 0] == ANATOMY_LABEL_VALUES["bone"]
    assert values[3, 3, 3] == ANATOMY_LABEL_VALUES["common_iliac_left"]
    upper = np.zeros((4, 4, 4), dtype=bool)
    upper[3] = True
    assert promise.region_of_mask(upper) is NodalRegion.COMMON_ILIAC_LEFT
    corner = np.zeros((4, 4, 4), dtype=bool)
    corner[0, 0, 0] = True
    assert promise.fractions_of_mask(corner) == {"bone": 1.0}


def test_anatomy_map_rejects_masks_of_the_wrong_shape() -> None:
    grid = Volume(np.zeros((4, 4, 4), dtype=np.uint8), spacing=(1.0, 1.0, 1.0),
                  origin=(0.0, 0.0, 0.0), unit="mask")
    with pytest.raises(AnatomyError, match="grid shape"):
        AnatomyMap(grid=grid, masks={AnatomyLabel.BONE: np.zeros((3, 4, 4), bool)},
                   nodal_regions={}, landmarks={}, mask_info={},
                   pelvic_boundary="aortic_bifurcation", pelvic_boundary_z_mm=None)


@pytest.mark.parametrize("size", [(1, 3, 3), (3, 3, 3), (5, 5, 5), (1, 1, 7), (11, 3, 1),
                                  (13, 13, 13), (2, 2, 2)])
def test_box_morphology_matches_scipy_min_max_filters(size: tuple[int, int, int]) -> None:
    from scipy import ndimage as ndi

    from imaging.anatomy.tissues import _dilate, _erode

    rng = np.random.default_rng(3)
    for shape in ((7, 9, 11), (1, 5, 4), (30, 23, 20)):
        a = rng.random(shape) > 0.4
        u8 = a.view(np.uint8)
        assert np.array_equal(_erode(a, size), ndi.minimum_filter(
            u8, size=size, mode="constant", cval=1).astype(bool))
        assert np.array_equal(_dilate(a, size), ndi.maximum_filter(
            u8, size=size, mode="constant", cval=0).astype(bool))


def test_fill_holes_per_slice_matches_2d_fill_and_labels_each_hole() -> None:
    from scipy import ndimage as ndi

    from imaging.anatomy.tissues import fill_holes_per_slice

    rng = np.random.default_rng(4)
    a = rng.random((12, 40, 30)) < 0.6
    filled, holes = fill_holes_per_slice(a)
    eight = np.ones((3, 3), dtype=bool)
    for k in range(a.shape[0]):
        background, _ = ndi.label(~a[k], structure=eight)
        border = np.unique(np.r_[background[0], background[-1], background[:, 0],
                                 background[:, -1]])
        expect = a[k] | (~a[k] & ~np.isin(background, border))
        assert np.array_equal(filled[k], expect)
    assert np.array_equal(holes > 0, filled & ~a)
    # a hole never spans two slices
    for lab in np.unique(holes[holes > 0]):
        assert np.unique(np.nonzero(holes == lab)[0]).size == 1


def test_slice_labels_stay_on_the_mask_and_match_scipy_on_many_random_masks() -> None:
    """cc3d 4.1 labels some voxels off the mask of a stacked 2-D image (a few in a hundred
    random masks); a hole label on a mask voxel inflated the marrow-fill hole areas."""
    from scipy import ndimage as ndi

    from imaging.anatomy.tissues import fill_holes_per_slice, label_slices

    rng = np.random.default_rng(2)
    eight = np.ones((3, 3), dtype=bool)
    for _ in range(120):
        shape = (int(rng.integers(2, 12)), int(rng.integers(5, 40)), int(rng.integers(5, 40)))
        a = rng.random(shape) < rng.uniform(0.2, 0.8)
        labels, n = label_slices(a)
        assert not labels[~a].any()
        assert n == labels.max()
        _filled, holes = fill_holes_per_slice(a)
        assert not holes[a].any()
        for k in range(shape[0]):
            # each of the slice's components has one label of its own; only components on the
            # slice's first or last row may share theirs (joined through the next slice)
            ref, n_ref = ndi.label(a[k], structure=eight)
            edge = set(np.unique(np.r_[ref[0], ref[-1]]).tolist())
            label_of = {}
            for r in range(1, n_ref + 1):
                own = np.unique(labels[k][ref == r])
                assert own.size == 1
                assert own[0] > 0
                label_of[r] = int(own[0])
            inner = [r for r in label_of if r not in edge]
            others = [label_of[r] for r in label_of]
            for r in inner:
                assert others.count(label_of[r]) == 1


def test_fill_holes_matches_scipy_and_the_per_slice_fill() -> None:
    from scipy import ndimage as ndi

    from imaging.anatomy.tissues import fill_holes, fill_holes_per_slice

    rng = np.random.default_rng(6)
    for shape in ((12, 40, 30), (1, 9, 8), (7, 1, 5), (20, 21, 22)):
        a = ndi.binary_dilation(rng.random(shape) < 0.25)
        assert np.array_equal(fill_holes(a), ndi.binary_fill_holes(a))
        assert np.array_equal(fill_holes(a, per_slice=True), fill_holes_per_slice(a)[0])
    empty = np.zeros((0, 3, 3), dtype=bool)
    assert fill_holes(empty).shape == (0, 3, 3)


def test_to_reference_matches_simpleitk_nearest_neighbour_on_axis_aligned_grids() -> None:
    import SimpleITK as sitk

    from imaging.anatomy.grid import WorkGrid, to_reference, to_reference_box

    grid = WorkGrid(shape=(20, 17, 15), spacing_mm=3.0, origin_mm=(-20.0, -25.0, 100.0))
    arr = np.random.default_rng(5).integers(1, 2**31, size=grid.shape, dtype=np.uint32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((3.0,) * 3)
    img.SetOrigin(grid.origin_mm)
    flips = (np.eye(3)[:, ::-1], np.diag([1.0, 1.0, -1.0])[:, ::-1],
             np.diag([-1.0, -1.0, 1.0])[:, ::-1])
    for direction in flips:
        # 4.07 x 3.3 x 2.9 mm voxels, partly outside the working grid, no exact ties (where
        # SimpleITK breaks ties by floating-point noise and to_reference towards +index)
        ref = Volume(np.zeros((25, 19, 16), dtype=np.float32), (2.9, 3.3, 4.07),
                     (-31.37, -33.23, 95.21) if direction[2, 0] > 0 else (-31.37, -33.23, 170.21),
                     direction, "1")
        ref_img = ref.to_sitk()
        expect = sitk.GetArrayFromImage(sitk.Resample(img, ref_img, sitk.Transform(),
                                                      sitk.sitkNearestNeighbor, 0))
        assert np.array_equal(to_reference(arr, grid, ref), expect)
        # the covered box holds every voxel the working grid reaches
        values, box = to_reference_box(arr, grid, ref)
        assert np.array_equal(values, expect[box])
        outside = np.ones(ref.shape, dtype=bool)
        outside[box] = False
        assert not expect[outside].any()
        assert values.size < expect.size


def _spine_and_aorta(*, tube_hu: float, nz: int = 40) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """3 mm grid: soft-tissue trunk, vertebrae (900 HU cortex, 250 HU marrow, 30 mm tall,
    6 mm discs) and a 24 mm tube of ``tube_hu`` lying against their anterior cortex."""
    z, y, x = np.meshgrid(np.arange(nz) * 3.0, np.arange(-120, 120, 3.0) + 1.5,
                          np.arange(-150, 150, 3.0) + 1.5, indexing="ij")
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[(x / 140.0) ** 2 + (y / 110.0) ** 2 <= 1.0] = 40.0
    disc = (z % 36.0) >= 30.0
    r = np.hypot(x, y - 50.0)
    vertebra = (r <= 18.0) & ~disc
    hu[vertebra] = 250.0
    hu[vertebra & (r > 14.0)] = 900.0
    hu[(r <= 18.0) & disc] = 90.0
    tube = np.hypot(x, y - 50.0 + 18.0 + 12.0) <= 12.0  # touches the cortex at y = 32 mm
    hu[tube] = tube_hu
    return hu, vertebra, tube


@pytest.mark.parametrize("tube_hu", [200.0, 380.0])
def test_contrast_filled_tube_against_a_vertebra_is_not_bone(tube_hu: float) -> None:
    from imaging.anatomy.tissues import segment_tissues

    hu, vertebra, tube = _spine_and_aorta(tube_hu=tube_hu)
    bone = segment_tissues(hu, 3.0, config=AnatomyConfig()).bone
    assert np.count_nonzero(bone & tube) <= 0.02 * tube.sum()
    assert np.count_nonzero(bone & vertebra) >= 0.95 * vertebra.sum()


def test_marrow_of_blood_density_inside_cortex_is_not_a_lumen() -> None:
    from imaging.anatomy.tissues import contrast_lumina

    hu, vertebra, tube = _spine_and_aorta(tube_hu=200.0)
    lumina = contrast_lumina(hu, hu >= 120.0, 3.0, config=AnatomyConfig(bone_hu=120.0))
    assert not (lumina & vertebra).any()
    assert np.count_nonzero(lumina & tube) >= 0.9 * tube.sum()
    # a short blob of blood density (shorter than a vertebral body, inside the scan) is left to
    # the bone rule's other checks
    short = hu.copy()
    short[:10] = 40.0
    short[20:] = 40.0
    assert not contrast_lumina(short, short >= 120.0, 3.0,
                               config=AnatomyConfig(bone_hu=120.0)).any()


def test_thin_rib_cut_off_by_the_half_maximum_edge_stays_bone() -> None:
    """A rib on a coarse CT: a 500 HU bar joined to a vertebra's 900 HU cortex through a
    partial-volume neck of 200 HU. The half-maximum edge removes the neck (below 40 % of the
    way to the brighter bone beside each of its voxels), which leaves the bar as a 0.5 mL
    piece (the closing, which would bridge a gap this short, is off here; on a real coarse CT
    the gaps the edge leaves along a rib are longer): it was one bone with the
    vertebra and stays bone; a calcification of the same size and density alone does not."""
    from imaging.anatomy.tissues import segment_tissues

    hu, vertebra, _ = _spine_and_aorta(tube_hu=40.0)
    z, y, x = np.meshgrid(np.arange(hu.shape[0]) * 3.0, np.arange(-120, 120, 3.0) + 1.5,
                          np.arange(-150, 150, 3.0) + 1.5, indexing="ij")
    row = (z == 12.0) & (np.abs(y - 50.0) < 1.6)
    neck = row & (x > 18.0) & (x < 24.0)
    rib = row & (x > 24.0) & (x < 54.0)
    calcification = (z == 12.0) & (np.abs(y + 40.0) < 1.6) & (np.abs(x + 80.0) < 15.0)
    hu[neck] = 200.0
    hu[rib | calcification] = 500.0
    bone = segment_tissues(hu, 3.0, config=AnatomyConfig(bone_closing_mm=0.0)).bone
    assert not (bone & neck).any()  # the half-maximum edge did cut the neck
    assert (bone & rib).sum() == rib.sum()
    assert not (bone & calcification).any()
    assert np.count_nonzero(bone & vertebra) >= 0.95 * vertebra.sum()


def test_a_provider_rectum_mask_gives_the_anterior_rectal_wall_near_the_midline() -> None:
    from types import SimpleNamespace

    from imaging.anatomy.grid import WorkGrid
    from imaging.anatomy.regions import rectum_front

    # 3 mm grid, x and y from 0: a rectum tube (radius 15 mm) around x = 60, y = 90 on slices
    # 5-14, and a stray piece of the mask 40 mm off the midline further forward
    grid = WorkGrid(shape=(20, 50, 40), spacing_mm=3.0, origin_mm=(0.0, 0.0, 0.0))
    zz, yy, xx = np.mgrid[:20, :50, :40]
    rectum = (np.hypot(yy * 3.0 - 90.0, xx * 3.0 - 60.0) <= 15.0) & (zz >= 5) & (zz < 15)
    rectum |= (np.abs(yy * 3.0 - 30.0) <= 3.0) & (np.abs(xx * 3.0 - 102.0) <= 3.0) & (zz == 8)
    frame = SimpleNamespace(x_mid_mm=60.0)
    front, why = rectum_front(np.zeros(rectum.shape, dtype=np.float32), None, grid,  # type: ignore[arg-type]
                              frame, None, rectum, config=AnatomyConfig())  # type: ignore[arg-type]
    assert "provider" in why
    assert np.isnan(front[:5]).all()
    assert np.isnan(front[15:]).all()
    assert np.allclose(front[5:15], 75.0)  # the tube's front, not the stray piece at y = 30


def _fine_ct_with_rib_and_vessel() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A 1 x 1 x 2 mm CT (as the real DICOM example): soft-tissue trunk, a rib running through
    the scan (oval, 1 mm cortex of 640 HU around 150 HU marrow, 10 x 7 mm) and an 8 mm vessel
    of venous contrast (250 HU, its noise peaking at 460 HU)."""
    nz, ny, nx = 30, 160, 200
    z, y, x = np.meshgrid(np.arange(nz) * 2.0, np.arange(ny) + 0.5 - ny / 2,
                          np.arange(nx) + 0.5 - nx / 2, indexing="ij")
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[(x / 95.0) ** 2 + (y / 75.0) ** 2 <= 1.0] = 40.0
    oval = ((x - 50.0) / 5.0) ** 2 + ((y + 40.0) / 3.5) ** 2
    rib = oval <= 1.0
    hu[rib] = 640.0
    hu[((x - 50.0) / 4.0) ** 2 + ((y + 40.0) / 2.5) ** 2 <= 1.0] = 150.0
    vessel = np.hypot(x + 40.0, y - 10.0) <= 4.0
    hu[vessel] = 250.0
    hu[vessel & (np.hypot(x + 40.0, y - 10.0) <= 1.0) & (z % 10.0 == 0.0)] = 460.0
    ct = Volume(array=hu, spacing=(2.0, 1.0, 1.0), origin=(-nx / 2 + 0.5, -ny / 2 + 0.5, 0.0),
                unit="HU")
    return ct, rib, vessel


@pytest.mark.parametrize("native", [True, False])
def test_a_thin_rib_keeps_its_density_at_the_ct_s_own_resolution(native: bool) -> None:
    """A rib whose 1 mm cortex, block-averaged and resampled onto the 3 mm working grid, stays
    under the 300 HU peak check (the whole of one rib of the real DICOM example was lost so)
    is bone by the peak of the CT as acquired; a vessel of venous contrast is not."""
    from imaging.anatomy.grid import (
        crop_to_content,
        make_work_grid,
        peak_for,
        resample_image,
        shrink_for,
    )
    from imaging.anatomy.tissues import segment_tissues

    ct, rib, vessel = _fine_ct_with_rib_and_vessel()
    grid = make_work_grid(ct, 3.0)
    img = shrink_for(ct, grid)
    grid = crop_to_content(grid, img, above=-500.0)
    hu = resample_image(img, grid, fill=-1024.0)
    peak = peak_for(ct, grid)
    assert peak is not None
    world = ct.index_to_world(np.argwhere(rib)[::7].astype(float))
    rib_w = np.zeros(grid.shape, dtype=bool)
    rib_w[tuple(np.array([grid.to_index(tuple(p)) for p in world]).T)] = True
    world = ct.index_to_world(np.argwhere(vessel)[::7].astype(float))
    vessel_w = np.zeros(grid.shape, dtype=bool)
    vessel_w[tuple(np.array([grid.to_index(tuple(p)) for p in world]).T)] = True
    assert hu[rib_w].max() < 300.0 <= peak[rib_w].max()  # the case the native peak is for
    bone = segment_tissues(hu, 3.0, config=AnatomyConfig(),
                           peak_hu=peak if native else None).bone
    assert not (bone & vessel_w).any()
    if native:
        assert np.count_nonzero(bone & rib_w) >= 0.6 * rib_w.sum()
    else:
        assert not (bone & rib_w).any()
    # a CT no finer than the working grid has no separate native peak
    coarse = Volume(array=hu, spacing=(3.0, 3.0, 3.0), origin=grid.origin_mm, unit="HU")
    assert peak_for(coarse, grid) is None


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("factors", [(1, 3, 3), (2, 3, 3), (3, 1, 2)])
def test_block_mean_and_maximum_match_a_reshaped_reduction(dtype: type,
                                                           factors: tuple[int, int, int]) -> None:
    """The slab-wise strided reductions behind the working image and its native peaks equal
    the plain reshaped mean and maximum over whole blocks (trailing partial blocks dropped),
    and sit at the blocks' centres."""
    from imaging.anatomy.grid import _block_max, _block_mean

    a = np.random.default_rng(0).normal(0.0, 500.0, (37, 65, 66)).astype(dtype)
    volume = Volume(array=a, spacing=(1.0, 0.98, 0.98), origin=(1.0, 2.0, 3.0), unit="HU")
    n = [s // f for s, f in zip(a.shape, factors, strict=True)]
    blocks = a[: n[0] * factors[0], : n[1] * factors[1], : n[2] * factors[2]].reshape(
        n[0], factors[0], n[1], factors[1], n[2], factors[2]).astype(np.float64)
    mean, peak = _block_mean(volume, factors), _block_max(volume, factors)
    assert np.allclose(mean.array, blocks.mean(axis=(1, 3, 5)), atol=1e-3)
    assert np.array_equal(peak.array, blocks.max(axis=(1, 3, 5)).astype(np.float32))
    centre = volume.index_to_world((np.asarray(factors) - 1) / 2.0)
    assert np.allclose(peak.origin, centre)
    assert np.allclose(peak.spacing, np.asarray(volume.spacing) * factors)
