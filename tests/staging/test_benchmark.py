"""The benchmark runner, its report and the ``bench`` command on masks with known answers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from imaging.errors import ConfigError, GeometryError
from imaging.nifti import write_nifti
from imaging.volume import Volume
from staging.benchmark import (
    InputCase,
    MethodOutput,
    ScoringOptions,
    bootstrap_mean_ci,
    discover_input,
    find_masks,
    load_reference,
    parse_method,
    parse_predictions,
    run_benchmark,
    score_pair,
    write_report,
)
from staging.cli import main

SHAPE = (16, 20, 20)
SPACING = (3.0, 4.0, 4.0)  # 0.048 mL per voxel
ORIGIN = (-40.0, -40.0, -600.0)


def _volume(array: NDArray[Any], origin: tuple[float, float, float] = ORIGIN) -> Volume:
    return Volume(np.asarray(array), spacing=SPACING, origin=origin, unit="label")


def _ball(centre: tuple[int, int, int], radius: float) -> NDArray[np.bool_]:
    k, j, i = np.indices(SHAPE)
    d2 = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    return np.asarray(d2 <= radius**2)


def _reference_labels(n_lesions: int) -> NDArray[np.uint16]:
    """Instance label map with lesion ids 1..n (values = truth ids)."""
    lab = np.zeros(SHAPE, np.uint16)
    for n in range(n_lesions):
        lab[_ball(_CENTRES[n], 2.2)] = n + 1
    return lab


_CENTRES = [(4, 5, 5), (11, 14, 14), (4, 14, 5), (11, 5, 14)]


_CATS = ["bone", "node_pelvic", "fossa", "visceral"]
_GROUP = {0: ("T0N0M0", "negative"), 1: ("M1b-M1c", "extra_fossa"),
          2: ("M1b-M1c", "extra_fossa"), 3: ("M1b-M1c", "extra_fossa"),
          4: ("M1b-M1c", "extra_fossa")}


def _write_phantom_like_cohort(root: Path, n_lesions: Sequence[int]) -> dict[str, NDArray[Any]]:
    """Reference cohort in the phantom layout: <pid>/nifti/{SEG,LESIONS}.nii.gz, truth.json,
    truth.csv (SEG binary as autoPET, LESIONS = truth lesion ids)."""
    labels = {}
    rows = []
    for n, count in enumerate(n_lesions):
        pid = f"P{n:03d}"
        lab = _reference_labels(count)
        labels[pid] = lab
        write_nifti(_volume((lab > 0).astype(np.uint8)), root / pid / "nifti" / "SEG.nii.gz")
        write_nifti(_volume(lab), root / pid / "nifti" / "LESIONS.nii.gz")
        truth = {"patient_id": pid,
                 "lesions": [{"id": i + 1, "category": _CATS[i],
                              "centre_mm": _volume(lab).index_to_world(_CENTRES[i]).tolist()}
                             for i in range(count)]}
        (root / pid / "truth.json").write_text(json.dumps(truth))
        counts = {c: int(c in _CATS[:count]) for c in
                  ("fossa", "node_pelvic", "node_extrapelvic", "bone", "visceral")}
        group, emmett = _GROUP[count]
        rows.append({"patient_id": pid, "group": group, "emmett_group": emmett, **counts})
    pd.DataFrame(rows).to_csv(root / "truth.csv", index=False)
    return labels


# -- --pair ------------------------------------------------------------------------------------
def test_pair_of_identical_files_scores_perfectly(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    mask = _ball((8, 10, 10), 3).astype(np.uint8)
    write_nifti(_volume(mask), tmp_path / "pred.nii.gz")
    write_nifti(_volume(mask), tmp_path / "ref.nii.gz")
    code = main(["bench", "--pair", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"),
                 "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"] == 1.0
    assert out["fp_volume_ml"] == 0.0
    assert out["reference_volume_ml"] == pytest.approx(mask.sum() * 0.048)
    assert out["hungarian_f1"] == 1.0


def test_pair_on_another_grid_is_refused_then_resampled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = _ball((8, 10, 10), 4).astype(np.uint8)
    ref_path = write_nifti(_volume(mask), tmp_path / "ref.nii.gz")
    # the same lesion, stored on a grid shifted by exactly 2 slices (6 mm)
    shifted = np.zeros(SHAPE, np.uint8)
    shifted[:-2] = mask[2:]
    moved = _volume(shifted, origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 6.0))
    pred_path = write_nifti(moved, tmp_path / "pred.nii.gz")
    code = main(["bench", "--pair", str(pred_path), str(ref_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "different grid" in err
    assert "--resample" in err
    with pytest.raises(GeometryError, match="different grid"):
        score_pair(pred_path, ref_path)
    assert main(["bench", "--pair", str(pred_path), str(ref_path), "--resample", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"] == pytest.approx(1.0)  # resampled back onto the reference voxels


def test_pair_with_non_binary_mask_needs_a_label(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    multi = np.zeros(SHAPE, np.uint8)
    multi[_ball((8, 10, 10), 3)] = 1
    multi[_ball((3, 3, 3), 2)] = 2  # "normal uptake" class
    p = write_nifti(_volume(multi), tmp_path / "pred.nii.gz")
    r = write_nifti(_volume((multi == 1).astype(np.uint8)), tmp_path / "ref.nii.gz")
    assert main(["bench", "--pair", str(p), str(r)]) == 1
    assert "not binary" in capsys.readouterr().err
    assert main(["bench", "--pair", str(p), str(r), "--label", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == 1.0


def test_pair_of_folders_lists_missing_cases(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    mask = _ball((8, 10, 10), 3).astype(np.uint8)
    for case in ("a", "b", "c"):
        write_nifti(_volume(mask), tmp_path / "ref" / f"{case}.nii.gz")
    for case in ("a", "b", "x"):
        write_nifti(_volume(mask), tmp_path / "pred" / case / "PRED.nii.gz")
    code = main(["bench", "--pair", str(tmp_path / "pred"), str(tmp_path / "ref"),
                 "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0
    assert "no prediction for 1 reference case(s): c" in captured.err
    assert "no reference for 1 predicted case(s): x" in captured.err
    table = pd.read_csv(tmp_path / "out" / "per_case.csv")
    assert table["case_id"].tolist() == ["a", "b"]
    assert table["dice"].tolist() == [1.0, 1.0]


def test_pair_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--pair", str(tmp_path / "no.nii.gz"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "-o", str(tmp_path / "o"), "--method", "a=default"]) == 2
    assert "--reference" in capsys.readouterr().err


# -- parsing -----------------------------------------------------------------------------------
def test_parse_method_forms(tmp_path: Path) -> None:
    assert parse_method("base=default").overrides == {}
    spec = parse_method("suv4=lesion.threshold_suv=4,lesion.min_volume_ml=0.2")
    assert spec.overrides == {"lesion": {"threshold_suv": 4, "min_volume_ml": 0.2}}
    toml = tmp_path / "m.toml"
    toml.write_text("[lesion]\nmethod = 'percist'\n")
    assert parse_method(f"p={toml}").config_path == toml
    with pytest.raises(ConfigError, match="not found"):
        parse_method(f"p={tmp_path / 'missing.toml'}")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_method("suv4")
    with pytest.raises(ConfigError, match="method name"):
        parse_method("a b=default")
    with pytest.raises(ConfigError, match="neither a TOML file"):
        parse_method("x=percist")
    with pytest.raises(ConfigError, match="folder"):
        parse_predictions(f"nn={tmp_path / 'nope'}")


def test_find_masks_layouts_and_ambiguity(tmp_path: Path) -> None:
    mask = _volume(_ball((8, 10, 10), 3).astype(np.uint8))
    write_nifti(mask, tmp_path / "a.nii.gz")
    write_nifti(mask, tmp_path / "b" / "anything.nii.gz")
    write_nifti(mask, tmp_path / "c" / "nifti" / "SEG.nii.gz")
    write_nifti(mask, tmp_path / "c" / "nifti" / "SUV.nii.gz")
    found = find_masks(tmp_path)
    assert sorted(found) == ["a", "b", "c"]
    assert found["c"].name == "SEG.nii.gz"
    write_nifti(mask, tmp_path / "d" / "one.nii.gz")
    write_nifti(mask, tmp_path / "d" / "two.nii.gz")
    with pytest.raises(ConfigError, match="several NIfTI files"):
        find_masks(tmp_path)


# -- cohort runner -----------------------------------------------------------------------------
def _prediction_folders(tmp_path: Path, labels: Mapping[str, NDArray[Any]]) -> tuple[Path, Path]:
    perfect, partial = tmp_path / "perfect", tmp_path / "partial"
    for n, (pid, lab) in enumerate(sorted(labels.items())):
        write_nifti(_volume((lab > 0).astype(np.uint8)), perfect / f"{pid}.nii.gz")
        if n == 0:
            continue  # partial has no mask for the first case
        part = (lab == 1).astype(np.uint8)  # finds only lesion 1 ...
        part[_ball((8, 2, 18), 1.5)] = 1  # ... and adds one false positive
        write_nifti(_volume(part), partial / f"{pid}.nii.gz")
    return perfect, partial


def test_runner_scores_external_masks_against_phantom_truth(tmp_path: Path) -> None:
    labels = _write_phantom_like_cohort(tmp_path / "cohort", [0, 1, 2, 3, 4, 2])
    perfect, partial = _prediction_folders(tmp_path, labels)
    reference = load_reference([tmp_path / "cohort"])
    assert reference.table is not None
    assert reference.cases["P003"].mask_path is not None
    assert reference.cases["P003"].mask_path.name == "LESIONS.nii.gz"
    assert reference.cases["P003"].categories == {1: "bone", 2: "node_pelvic", 3: "fossa"}
    result = run_benchmark(
        reference=reference,
        methods=[parse_predictions(f"perfect={perfect}"), parse_predictions(f"partial={partial}")],
        n_bootstrap=200)
    s = result.summary.set_index("method")
    assert s.loc["perfect", "n_scored"] == 6
    assert s.loc["perfect", "dice_mean"] == 1.0
    assert s.loc["perfect", "dice_n"] == 5  # the negative case has undefined Dice (autoPET III)
    assert s.loc["perfect", "hungarian_sensitivity"] == 1.0
    assert s.loc["perfect", "hungarian_fp_per_scan"] == 0.0
    assert s.loc["perfect", "sensitivity_visceral"] == 1.0
    # partial: 5 cases scored, 1 missing; finds lesion 1 (the bone one) in each positive case
    assert s.loc["partial", "n_scored"] == 5
    assert s.loc["partial", "n_missing_prediction"] == 1
    n_ref = 1 + 2 + 3 + 4 + 2  # lesions in P001..P005
    assert s.loc["partial", "hungarian_sensitivity"] == pytest.approx(5 / n_ref)
    assert s.loc["partial", "hungarian_fp_per_scan"] == pytest.approx(1.0)
    assert s.loc["partial", "sensitivity_bone"] == 1.0
    assert s.loc["partial", "sensitivity_node_pelvic"] == 0.0
    assert (s.loc["partial", "hungarian_sensitivity_ci_low"] <= 5 / n_ref
            <= s.loc["partial", "hungarian_sensitivity_ci_high"])
    assert result.missing["partial"]["missing_prediction"] == ("P000",)
    # the negative case's FP volume is reported separately
    assert s.loc["partial", "n_negative_cases"] == 0  # P000 is the one it has no mask for
    assert s.loc["perfect", "n_negative_cases"] == 1
    assert s.loc["perfect", "fp_volume_ml_negative_mean"] == 0.0


def test_bench_command_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = _write_phantom_like_cohort(tmp_path / "cohort", [0, 1, 2, 3])
    perfect, partial = _prediction_folders(tmp_path, labels)
    out = tmp_path / "bench"
    code = main(["bench", "--reference", str(tmp_path / "cohort"), "-o", str(out),
                 "--predictions", f"perfect={perfect}", "--predictions", f"partial={partial}",
                 "--bootstrap", "100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "partial: no prediction for P000" in captured.err
    for name in ("per_case.csv", "summary.csv", "timing.csv", "bench.html", "bench.json",
                 "voxel_metrics_box.png", "sensitivity_vs_fp.png"):
        assert (out / name).is_file(), name
    page = (out / "bench.html").read_text()
    assert "sensitivity_vs_fp.png" in page
    assert "P000" in page  # the missing case is listed
    per_case = pd.read_csv(out / "per_case.csv")
    assert set(per_case["status"]) == {"ok", "missing_prediction"}
    # a second run into the same folder needs --overwrite; nothing half-written is left
    assert main(["bench", "--reference", str(tmp_path / "cohort"), "-o", str(out),
                 "--predictions", f"perfect={perfect}"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bench")]


def test_runner_with_pipeline_methods_reports_staging_agreement(tmp_path: Path) -> None:
    labels = _write_phantom_like_cohort(tmp_path / "cohort", [0, 1, 2, 3, 0, 1])
    cases = {pid: InputCase(pid, "nifti", pet_nifti=tmp_path / f"{pid}.nii.gz")
             for pid in labels}
    seen: list[tuple[str, list[str]]] = []

    def runner(case: InputCase, methods: Sequence[tuple[str, Any]]) -> dict[str, MethodOutput]:
        seen.append((case.case_id, [name for name, _ in methods]))
        lab = labels[case.case_id]
        out = {}
        for name, config in methods:
            # "strict" misses every lesion but the first: one threshold per method
            keep = lab if config.lesion.threshold_suv < 4 else np.where(lab == 1, lab, 0)
            n = int(np.unique(keep[keep > 0]).size)
            group = "T0N0M0" if n == 0 else "M1b-M1c"
            out[name] = MethodOutput(
                labels=_volume(keep.astype(np.uint16)),
                staging={"patient_id": case.case_id, "group": group,
                         "emmett_group": "negative" if n == 0 else "extra_fossa",
                         "counts_by_category": {"fossa": int(n >= 3), "node_pelvic": int(n >= 2),
                                                "node_extrapelvic": 0, "bone": int(n >= 1),
                                                "visceral": 0}},
                seconds=0.5)
        return out

    result = run_benchmark(
        reference=load_reference([tmp_path / "cohort"]), cases=cases, runner=runner,
        methods=[parse_method("loose=lesion.threshold_suv=3"),
                 parse_method("strict=lesion.threshold_suv=4")], n_bootstrap=200)
    assert [names for _, names in seen] == [["loose", "strict"]] * 6
    s = result.summary.set_index("method")
    assert s.loc["loose", "hungarian_sensitivity"] == 1.0
    assert s.loc["strict", "hungarian_sensitivity"] == pytest.approx(4 / 7)
    assert s.loc["loose", "group_accuracy"] == 1.0
    assert s.loc["loose", "seconds_mean"] == 0.5
    strict = result.agreement["strict"]
    assert strict.classes["group"].accuracy.value == 1.0  # any lesion -> M1b-M1c either way
    assert strict.presence["node_pelvic"].fn == 2  # P002, P003 have a pelvic node reference
    assert strict.presence["node_pelvic"].sensitivity.value == 0.0
    files = write_report(result, tmp_path / "report")
    assert (files["confusion_strict_group.csv"]).is_file()
    assert "Staging agreement: strict" in files["bench.html"].read_text()


def test_staging_csv_alone_is_a_reference(tmp_path: Path) -> None:
    labels = _write_phantom_like_cohort(tmp_path / "cohort", [0, 2])
    cases = {pid: InputCase(pid, "nifti", pet_nifti=tmp_path / "x.nii.gz") for pid in labels}

    def runner(case: InputCase, methods: Sequence[tuple[str, Any]]) -> dict[str, MethodOutput]:
        group = "T0N0M0" if case.case_id == "P000" else "N1/M1a"
        return {name: MethodOutput(_volume(labels[case.case_id]), {
            "patient_id": case.case_id, "group": group, "emmett_group": "negative"}, 0.1)
            for name, _ in methods}

    result = run_benchmark(reference=load_reference([tmp_path / "cohort" / "truth.csv"]),
                           cases=cases, runner=runner, methods=[parse_method("a=default")],
                           n_bootstrap=50)
    assert set(result.per_case["status"]) == {"no_reference_mask"}
    group = result.agreement["a"].classes["group"]
    assert group.accuracy.value == 0.5  # P001 is M1b-M1c in the reference
    assert group.confusion.loc["M1b-M1c", "N1/M1a"] == 1
    assert result.summary.loc[0, "group_accuracy"] == 0.5


def test_runner_records_a_failing_case_and_goes_on(tmp_path: Path) -> None:
    from imaging.errors import SuvError

    labels = _write_phantom_like_cohort(tmp_path / "cohort", [1, 2])
    cases = {pid: InputCase(pid, "nifti", pet_nifti=tmp_path / "x.nii.gz") for pid in labels}

    def runner(case: InputCase, methods: Sequence[tuple[str, Any]]) -> dict[str, MethodOutput]:
        if case.case_id == "P000":
            raise SuvError("injected dose missing", path=case.pet_nifti)
        return {name: MethodOutput(_volume(labels[case.case_id]), None, 0.1)
                for name, _ in methods}

    result = run_benchmark(reference=load_reference([tmp_path / "cohort"]), cases=cases,
                           runner=runner, methods=[parse_method("a=default")], n_bootstrap=50)
    assert result.n_failed == 1
    row = result.per_case.set_index("case_id").loc["P000"]
    assert row["status"] == "failed"
    assert "injected dose missing" in row["error"]
    assert result.summary.loc[0, "n_scored"] == 1


def test_binary_reference_takes_categories_from_truth_centres(tmp_path: Path) -> None:
    from imaging.errors import LesionError

    labels = _write_phantom_like_cohort(tmp_path / "cohort", [2])
    folder = tmp_path / "cohort" / "P000"
    seg, lesions = folder / "nifti" / "SEG.nii.gz", folder / "nifti" / "LESIONS.nii.gz"
    cats = {1: "bone", 2: "node_pelvic"}
    truth = json.loads((folder / "truth.json").read_text())
    centres = {les["id"]: les["centre_mm"] for les in truth["lesions"]}
    finds_bone = _volume((labels["P000"] == 1).astype(np.uint8))
    # binary SEG.nii.gz: each component takes the category of the truth centre it holds
    score = score_pair(finds_bone, seg, categories=cats, centres=centres)
    assert score.hungarian.per_category() == {"bone": (1, 1), "node_pelvic": (1, 0)}
    # the instance map gives the same, and a truth lesion absent from the grid is only logged
    same = score_pair(finds_bone, lesions, categories={**cats, 3: "visceral"})
    assert same.hungarian.per_category() == score.hungarian.per_category()
    # without centres a binary reference still scores, without categories
    plain = score_pair(finds_bone, seg, categories=cats)
    assert plain.hungarian.per_category() == {}
    assert plain.hungarian.tp_reference == 1
    # forcing label numbering on a binary mask, or ids that are not the truth's, is refused
    with pytest.raises(LesionError, match="binary"):
        score_pair(finds_bone, seg, categories=cats,
                   options=ScoringOptions(reference_instances="labels"))
    with pytest.raises(LesionError, match="not lesion ids"):
        score_pair(seg, lesions, categories={1: "bone", 5: "visceral"})


def test_runner_and_inputs_reject_bad_setups(tmp_path: Path) -> None:
    _write_phantom_like_cohort(tmp_path / "cohort", [1])
    ref = load_reference([tmp_path / "cohort"])
    with pytest.raises(ConfigError, match="no method"):
        run_benchmark(reference=ref, methods=[])
    with pytest.raises(ConfigError, match="need an INPUT"):
        run_benchmark(reference=ref, methods=[parse_method("a=default")])
    with pytest.raises(ConfigError, match="unique"):
        run_benchmark(reference=ref, methods=[parse_predictions(f"a={tmp_path}"),
                                              parse_predictions(f"a={tmp_path}")])
    with pytest.raises(ConfigError, match="not found"):
        load_reference([tmp_path / "nothing"])
    with pytest.raises(ConfigError, match="--pair"):
        load_reference([tmp_path / "cohort" / "P000" / "nifti" / "SEG.nii.gz"])
    with pytest.raises(ConfigError, match="no case found"):
        discover_input(tmp_path / "cohort")  # masks only: nothing to run a pipeline on


def test_discover_input_reads_phantom_layout_and_manifest(tmp_path: Path) -> None:
    for pid in ("A", "B"):
        (tmp_path / "c" / pid / "nifti").mkdir(parents=True)
        (tmp_path / "c" / pid / "nifti" / "SUV.nii.gz").write_bytes(b"")
        (tmp_path / "c" / pid / "nifti" / "CTres.nii.gz").write_bytes(b"")
    (tmp_path / "c" / "B" / "dicom").mkdir()
    auto = discover_input(tmp_path / "c")
    assert auto["B"].kind == "nifti"
    assert auto["A"].ct_nifti == tmp_path / "c" / "A" / "nifti" / "CTres.nii.gz"
    assert discover_input(tmp_path / "c", prefer="dicom")["B"].kind == "dicom"
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,pet_nifti,ct_nifti\nA,c/A/nifti/SUV.nii.gz,\n")
    got = discover_input(manifest)
    assert got["A"].pet_nifti == tmp_path / "c" / "A" / "nifti" / "SUV.nii.gz"
    assert got["A"].ct_nifti is None
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x\n1,2\n")
    with pytest.raises(ConfigError, match="manifest needs"):
        discover_input(bad)


def test_bootstrap_mean_ci_brackets_the_mean() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(10, 2, size=80)
    lo, hi = bootstrap_mean_ci(values, n_bootstrap=500, seed=1)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 2 / math.sqrt(80), rel=0.3)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([math.nan]))


def test_scoring_options_default_to_autopet3_and_pi_cai_threshold() -> None:
    opts = ScoringOptions()
    assert (opts.rules, opts.min_iou, opts.resample) == ("autopet3", 0.10, False)


@pytest.mark.slow
def test_shared_runner_on_a_phantom_runs_the_real_pipeline(tmp_path: Path) -> None:
    from fixtures.phantom import generate_patient, write_patient
    from staging.benchmark import shared_runner
    from staging.config import load_config
    from staging.models import GROUPS

    patient = generate_patient(5, size="small", stage="N1/M1a")
    folder = write_patient(patient, tmp_path / "cohort", format="nifti")
    case = discover_input(tmp_path / "cohort")[patient.patient_id]
    assert case.kind == "nifti"
    methods = [parse_method("suv3=lesion.preset=suv3"), parse_method("suv4=lesion.preset=suv4")]
    produced = shared_runner(case, [(m.name, load_config(**m.overrides)) for m in methods])
    assert set(produced) == {"suv3", "suv4"}
    # load and anatomy ran once: both methods carry the same shared time
    assert produced["suv3"].shared_seconds == produced["suv4"].shared_seconds > 0
    truth = json.loads((folder / "truth.json").read_text())
    cats = {int(les["id"]): les["category"] for les in truth["lesions"]}
    for name, out in produced.items():
        assert out.staging is not None
        assert out.staging["group"] in GROUPS, name
        score = score_pair(out.labels, folder / "nifti" / "LESIONS.nii.gz", categories=cats,
                           prediction_instances="labels")
        assert score.hungarian.n_reference == len(cats)
        found = np.asarray(out.labels.array)
        assert score.hungarian.n_predicted == np.unique(found[found > 0]).size
        assert score.voxel.reference_volume_ml == pytest.approx(
            sum(les["volume_ml"] for les in truth["lesions"]), rel=0.5)
