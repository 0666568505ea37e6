"""Benchmark lesion finders and external segmentations against reference reads.

Three layers, each usable on its own:

* **pairs** — :func:`score_pair` and :func:`score_folders` score NIfTI masks against reference
  masks with :func:`imaging.metrics.score_case` (autoPET voxel metrics, autoPET-style and
  one-to-one detection), refusing masks on another grid unless resampling is asked for, and
  listing the cases missing on either side;
* **cohort runner** — :func:`run_benchmark` runs each configured pipeline method over a cohort
  (load and anatomy once per case, then each method's lesion finder and staging) and/or reads
  external masks, and scores everything against a :class:`ReferenceSet` (reference masks, truth
  lesion categories and/or a reference staging table; a phantom cohort folder is one);
* **report** — :func:`write_report` writes ``per_case.csv``, ``summary.csv``, ``timing.csv``,
  ``agreement.csv``, confusion matrices, ``bench.json``, PNG plots and ``bench.html``, all into a
  temporary folder renamed into place at the end.

Summary statistics: per-case values are averaged over the cases where they are defined (autoPET
skips NaN Dice of negative cases); 95% intervals are percentile bootstraps over cases (default
2000 resamples, fixed seed). Lesion detection is pooled (lesions summed over cases, then
divided), with the bootstrap resampling cases.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from imaging.errors import ConfigError, GeometryError, LesionError, PipelineError
from imaging.metrics import CaseScore, Instances, Rules, label_instances, score_case
from imaging.nifti import read_nifti
from imaging.resample import resample_to
from imaging.volume import Volume, same_geometry
from staging.agreement import AgreementResult, read_reference_table, staging_agreement

__all__ = [
    "BenchmarkResult",
    "CaseOutcome",
    "InputCase",
    "MethodOutput",
    "MethodSpec",
    "PairReport",
    "ReferenceCase",
    "ReferenceSet",
    "ScoringOptions",
    "bootstrap_mean_ci",
    "discover_input",
    "find_masks",
    "load_reference",
    "parse_method",
    "parse_predictions",
    "read_mask",
    "run_benchmark",
    "score_folders",
    "score_pair",
    "shared_runner",
    "stage_study_runner",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: File names taken as the lesion mask inside a per-case folder, in order of preference.
MASK_NAMES: tuple[str, ...] = ("SEG", "PRED", "lesions", "lesion_labels", "mask", "label")
#: Same for reference folders: an instance map (phantom ``LESIONS.nii.gz``, values = truth lesion
#: ids) first, so that lesions keep their ids and categories.
REFERENCE_MASK_NAMES: tuple[str, ...] = ("LESIONS", *MASK_NAMES)


# -- options and inputs ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScoringOptions:
    """How predicted masks are scored.

    Parameters
    ----------
    rules : {"autopet3", "autopet2"}
        Empty-case convention of the voxel metrics (:mod:`imaging.metrics`).
    min_iou : float
        Minimum IoU of a one-to-one lesion match (PI-CAI default 0.10).
    label : int, optional
        Mask value taken as lesion in multi-class masks (external and reference masks).
    reference_instances : {"auto", "components", "labels"}
        Lesion numbering of reference masks: ``"auto"`` uses the label values when the case has
        truth lesion categories (phantom ``truth.json``), else 18-connected components.
    prediction_instances : {"components", "labels"}
        Lesion numbering of external predicted masks (the pipeline's own label maps are always
        scored as ``"labels"``: one lesion per finder id).
    resample : bool
        Resample a prediction on another grid onto the reference grid (nearest neighbour)
        instead of refusing it.
    missing_as_empty : bool
        Score a case without prediction as an empty prediction instead of leaving it out.
    atol : float
        Grid tolerance in mm.
    """

    rules: Rules = "autopet3"
    min_iou: float = 0.10
    label: int | None = None
    reference_instances: Literal["auto", "components", "labels"] = "auto"
    prediction_instances: Instances = "components"
    resample: bool = False
    missing_as_empty: bool = False
    atol: float = 1e-3


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One method to benchmark: a pipeline configuration, or a folder of external masks.

    Build with :func:`parse_method` (``NAME=CONFIG``) or :func:`parse_predictions`
    (``NAME=FOLDER``).
    """

    name: str
    kind: Literal["pipeline", "predictions"]
    config_path: Path | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    folder: Path | None = None

    def describe(self) -> str:
        """Where the method comes from, for reports."""
        if self.kind == "predictions":
            return f"external masks in {self.folder}"
        parts = [str(self.config_path)] if self.config_path else []
        parts += [f"{s}.{k}={v}" for s, kv in self.overrides.items() for k, v in kv.items()]
        return "pipeline " + (", ".join(parts) if parts else "defaults")


def _split_name(text: str, flag: str, example: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ConfigError(f"{flag} {text!r}: expected NAME=VALUE, e.g. {flag} {example}.")
    if not all(ch.isalnum() or ch in "._-+" for ch in name):
        raise ConfigError(f"{flag} {text!r}: method name {name!r} may hold only letters, digits "
                          "and . _ - +.")
    return name, rest.strip()


def parse_method(text: str) -> MethodSpec:
    """Parse ``--method NAME=CONFIG``.

    CONFIG is a TOML configuration file, ``default``, or comma-separated ``SECTION.KEY=VALUE``
    settings (``suv4=lesion.threshold_suv=4``; ``percist=lesion.method=percist``).

    Raises
    ------
    ConfigError
        If the text is malformed or names a missing file.

    Examples
    --------
    >>> parse_method("suv4=lesion.threshold_suv=4").overrides
    {'lesion': {'threshold_suv': 4}}
    """
    from staging.config import parse_assignments

    name, rest = _split_name(text, "--method", "suv4=lesion.threshold_suv=4")
    if rest == "default":
        return MethodSpec(name=name, kind="pipeline")
    path = Path(rest)
    if rest.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--method {text!r}: configuration file {path} not found.")
        return MethodSpec(name=name, kind="pipeline", config_path=path)
    if "=" not in rest:
        raise ConfigError(f"--method {text!r}: {rest!r} is neither a TOML file, 'default', nor "
                          "SECTION.KEY=VALUE settings.")
    overrides = parse_assignments(part for part in rest.split(",") if part.strip())
    return MethodSpec(name=name, kind="pipeline", overrides=overrides)


def parse_predictions(text: str) -> MethodSpec:
    """Parse ``--predictions NAME=FOLDER`` (a folder of per-case NIfTI lesion masks).

    Raises
    ------
    ConfigError
        If the text is malformed or the folder does not exist.
    """
    name, rest = _split_name(text, "--predictions", "nnunet=/data/nnunet_out")
    folder = Path(rest)
    if not folder.is_dir():
        raise ConfigError(f"--predictions {text!r}: folder {folder} not found.")
    return MethodSpec(name=name, kind="predictions", folder=folder)


def _strip_nifti(name: str) -> str | None:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _mask_in_case_folder(folder: Path, names: Sequence[str]) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and _strip_nifti(p.name))
    nifti = folder / "nifti"
    if nifti.is_dir():
        files += sorted(p for p in nifti.iterdir() if p.is_file() and _strip_nifti(p.name))
    by_stem = {_strip_nifti(p.name): p for p in files}
    for name in names:
        if name in by_stem:
            return by_stem[name]
    direct = [p for p in files if p.parent == folder]
    if len(direct) == 1:
        return direct[0]
    if len(direct) > 1:
        raise ConfigError(f"{folder}: several NIfTI files ({[p.name for p in direct]}) and none "
                          f"named {', '.join(names)}; keep one mask per case folder.")
    return None


def find_masks(folder: Path | str, *, names: Sequence[str] = MASK_NAMES) -> dict[str, Path]:
    """Per-case lesion masks of a folder: case id -> NIfTI path.

    Accepted layouts: ``FOLDER/<case>.nii.gz`` (or ``.nii``); ``FOLDER/<case>/<mask>.nii.gz``
    with one NIfTI, or one named after ``names`` (in that order of preference);
    ``FOLDER/<case>/nifti/<name>.nii.gz`` (the phantom cohort layout).

    Raises
    ------
    ConfigError
        If the folder does not exist, a case appears twice, or a case folder is ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: mask folder not found.")
    out: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        case: str | None
        path: Path | None
        if entry.is_file():
            case, path = _strip_nifti(entry.name), entry
        elif entry.is_dir():
            case, path = entry.name, _mask_in_case_folder(entry, names)
        else:
            continue
        if case is None or path is None:
            continue
        if case in out:
            raise ConfigError(f"{folder}: case {case!r} has two masks ({out[case].name} and "
                              f"{path.relative_to(folder)}); keep one.")
        out[case] = path
    return out


def read_mask(path: Path | str) -> Volume:
    """Read a NIfTI lesion mask or label map (values kept as stored, LPS geometry).

    Raises
    ------
    PipelineError
        (``NiftiError`` or ``GeometryError``) if the file cannot be read as a 3-D image.
    """
    return read_nifti(path, unit="label")


def _align(prediction: Volume, reference: Volume, *, resample: bool, atol: float,
           where: str) -> Volume:
    if same_geometry(prediction, reference, atol=atol):
        return prediction
    if not resample:
        raise GeometryError(
            f"{where}: the prediction is on a different grid than the reference (prediction "
            f"shape {prediction.shape}, spacing {_fmt(prediction.spacing)} mm, origin "
            f"{_fmt(prediction.origin)}; reference shape {reference.shape}, spacing "
            f"{_fmt(reference.spacing)} mm, origin {_fmt(reference.origin)}). Export it on the "
            "reference grid, or pass --resample to resample it (nearest neighbour)."
        )
    logger.info("%s: resampling the prediction onto the reference grid (nearest)", where)
    return resample_to(prediction, reference, interpolation="nearest", fill=0)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def score_pair(
    prediction: Path | str | Volume, reference: Path | str | Volume, *,
    options: ScoringOptions = ScoringOptions(),
    categories: Mapping[int, str] | None = None,
    centres: Mapping[int, Sequence[float]] | None = None,
    prediction_instances: Instances | None = None,
) -> CaseScore:
    """Score one predicted mask against one reference mask.

    Parameters
    ----------
    prediction, reference : Path or Volume
        NIfTI files (or volumes) holding the masks.
    options : ScoringOptions
        Rules, matching threshold, label, numbering, resampling.
    categories : Mapping[int, str], optional
        Truth lesion id -> category, for per-category sensitivity. With
        ``reference_instances="auto"``: used directly when the reference is an instance map whose
        values are these ids; for a binary reference (e.g. the phantom's ``SEG.nii.gz``) each
        18-connected component takes the category of the truth lesion whose centre it holds
        (``centres`` needed, else categories are dropped with a warning).
    centres : Mapping[int, sequence of float], optional
        Truth lesion id -> centre (LPS mm), from ``truth.json`` ``centre_mm``.
    prediction_instances : {"components", "labels"}, optional
        Overrides ``options.prediction_instances``.

    Returns
    -------
    CaseScore

    Raises
    ------
    GeometryError
        If the grids differ and ``options.resample`` is false.
    LesionError
        If a mask is not binary and no label is chosen, or (``reference_instances="labels"``)
        the reference values are not the truth lesion ids.
    """
    where = f"{prediction} vs {reference}" if not isinstance(prediction, Volume) else "pair"
    pred = prediction if isinstance(prediction, Volume) else read_mask(prediction)
    ref = reference if isinstance(reference, Volume) else read_mask(reference)
    pred = _align(pred, ref, resample=options.resample, atol=options.atol, where=where)
    ref_inst: Instances = "components"
    if options.reference_instances == "labels":
        ref_inst = "labels"
        if categories is not None and not _ids_match(ref, categories, where=str(reference)):
            raise LesionError(
                f"{reference}: the reference mask is binary (only the value 1) but truth.json "
                f"lists {len(categories)} lesions; a binary mask cannot carry lesion ids. Use the "
                "instance map (phantom LESIONS.nii.gz) or --reference-instances auto."
            )
    elif options.reference_instances == "auto" and categories is not None:
        if _ids_match(ref, categories, where=str(reference)):
            ref_inst = "labels"
        elif centres:
            ref, categories = _categories_by_centre(ref, categories, centres,
                                                    label=options.label, where=str(reference))
            ref_inst = "labels"
        else:
            logger.warning("%s: binary reference and no lesion centres: per-category "
                           "sensitivity is not available for this case", reference)
            categories = None
    return score_case(
        pred, ref, rules=options.rules, min_iou=options.min_iou, reference_instances=ref_inst,
        prediction_instances=prediction_instances or options.prediction_instances,
        categories=categories if ref_inst == "labels" else None,
        label=options.label if ref_inst == "components" else None, atol=options.atol,
    )


def _ids_match(ref: Volume, categories: Mapping[int, str], *, where: str) -> bool:
    """True if the reference values are truth lesion ids; False if it looks binary.

    Raises
    ------
    LesionError
        If it holds values that are neither 0/1 nor truth lesion ids.
    """
    arr = np.asarray(ref.array)
    values = {int(v) for v in np.unique(arr[arr != 0])} if arr.any() else set()
    if values == {1} and len(categories) > 1:
        return False
    unknown = sorted(values - set(categories))
    if unknown:
        if values <= {1}:
            return False
        raise LesionError(
            f"{where}: reference mask values {unknown[:10]} are not lesion ids of the case's "
            f"truth.json (ids {sorted(categories)[:10]}). Use the instance map of this truth "
            "(phantom LESIONS.nii.gz), a binary mask, or --reference-instances components."
        )
    absent = sorted(set(categories) - values)
    if absent:
        logger.info("%s: truth lesions %s have no voxel on the reference grid", where, absent)
    return True


def _categories_by_centre(
    ref: Volume, categories: Mapping[int, str], centres: Mapping[int, Sequence[float]], *,
    label: int | None, where: str,
) -> tuple[Volume, dict[int, str]]:
    """Number a binary reference by components and give each the category of its truth lesion.

    A component takes the category of the truth lesion whose centre (LPS mm) falls in it (or in
    its 3x3x3 neighbourhood, for lesions of one or two voxels).
    """
    labels, _ = label_instances(ref, instances="components", label=label, what=where)
    ids = sorted(set(categories) & set(centres))
    out: dict[int, str] = {}
    if ids:
        idx = np.rint(ref.world_to_index(np.array([centres[i] for i in ids], float))).astype(int)
        padded = np.pad(labels, 1)
        for lesion_id, (k, j, i) in zip(ids, idx, strict=True):
            if not all(0 <= a < n for a, n in zip((k, j, i), labels.shape, strict=True)):
                continue
            comp = int(labels[k, j, i])
            if comp == 0:
                hood = padded[k:k + 3, j:j + 3, i:i + 3]
                hood = hood[hood > 0]
                comp = int(np.bincount(hood).argmax()) if hood.size else 0
            if comp == 0:
                logger.info("%s: truth lesion %d has no reference voxel at its centre",
                            where, lesion_id)
            elif comp in out and out[comp] != categories[lesion_id]:
                logger.warning("%s: truth lesions of categories %s and %s share one reference "
                               "component; it counts as %s", where, out[comp],
                               categories[lesion_id], out[comp])
            else:
                out.setdefault(comp, categories[lesion_id])
    return ref.with_array(labels.astype(np.int32), unit="label"), out


@dataclass(frozen=True, slots=True, eq=False)
class PairReport:
    """Scores of a folder of predictions against a folder of references."""

    table: pd.DataFrame
    missing_prediction: tuple[str, ...]
    missing_reference: tuple[str, ...]
    failed: Mapping[str, str]


def score_folders(
    predictions: Path | str, references: Path | str, *,
    options: ScoringOptions = ScoringOptions(),
) -> PairReport:
    """Score every case present in both folders (see :func:`find_masks` for layouts).

    A case that cannot be scored (bad grid, non-binary mask, unreadable file) is recorded in
    ``failed`` with its reason and the others go on.

    Raises
    ------
    ConfigError
        If a folder is missing or the two share no case.
    """
    pred = find_masks(predictions)
    ref = find_masks(references)
    common = sorted(set(pred) & set(ref))
    missing_pred = tuple(sorted(set(ref) - set(pred)))
    missing_ref = tuple(sorted(set(pred) - set(ref)))
    if not common:
        raise ConfigError(f"{predictions} and {references} share no case (predictions: "
                          f"{sorted(pred)[:5]}, references: {sorted(ref)[:5]}).")
    rows, failed = [], {}
    for case in common:
        try:
            score = score_pair(pred[case], ref[case], options=options)
        except PipelineError as err:
            failed[case] = str(err)
            logger.warning("case %s not scored: %s", case, err)
            continue
        rows.append({"case_id": case, **score.to_record()})
    if options.missing_as_empty:
        for case in missing_pred:
            ref_vol = read_mask(ref[case])
            empty = ref_vol.with_array(np.zeros(ref_vol.shape, np.uint8), unit="mask")
            rows.append({"case_id": case, "missing_prediction": True,
                         **score_pair(empty, ref_vol, options=options).to_record()})
    return PairReport(table=pd.DataFrame(rows), missing_prediction=missing_pred,
                      missing_reference=missing_ref, failed=failed)


# -- reference set ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReferenceCase:
    """Reference of one case: its lesion mask and, when known, each lesion's category/centre."""

    case_id: str
    mask_path: Path | None
    categories: Mapping[int, str] | None = None
    centres: Mapping[int, tuple[float, float, float]] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceSet:
    """Reference lesion masks (per case) and/or a reference staging table."""

    cases: Mapping[str, ReferenceCase]
    table: pd.DataFrame | None
    sources: tuple[str, ...]

    @property
    def case_ids(self) -> tuple[str, ...]:
        """Every case the reference knows (masks or table rows)."""
        ids = set(self.cases)
        if self.table is not None:
            ids |= set(self.table["patient_id"].astype(str))
        return tuple(sorted(ids))


def _truth_lesions(path: Path) -> tuple[dict[int, str], dict[int, tuple[float, float, float]]]:
    try:
        lesions = json.loads(path.read_text()).get("lesions", [])
        cats = {int(les["id"]): str(les["category"]) for les in lesions}
        centres = {int(les["id"]): (float(les["centre_mm"][0]), float(les["centre_mm"][1]),
                                    float(les["centre_mm"][2]))
                   for les in lesions if les.get("centre_mm") is not None}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ConfigError(f"{path}: cannot read lesion ids and categories ({err}).") from err
    return cats, centres


def load_reference(paths: Sequence[Path | str]) -> ReferenceSet:
    """Collect the reference from folders of masks and/or staging CSV files.

    A folder contributes its masks (:func:`find_masks`, preferring an instance map
    ``LESIONS.nii.gz`` to a binary ``SEG.nii.gz``), each case's ``truth.json`` lesion
    categories when present (``FOLDER/<case>/truth.json``), and ``FOLDER/truth.csv`` as the
    staging table when present — so a phantom cohort folder is a complete reference. A ``.csv``
    file is a reference staging table (``patient_id`` plus ``group``, ``emmett_group`` and/or
    category counts).

    Raises
    ------
    ConfigError
        If a path is missing, of an unknown kind, or two sources disagree on a case.
    """
    cases: dict[str, ReferenceCase] = {}
    tables: list[pd.DataFrame] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for case, mask in find_masks(path, names=REFERENCE_MASK_NAMES).items():
                if case in cases:
                    raise ConfigError(f"{path}: reference case {case!r} also in another source.")
                truth = path / case / "truth.json"
                if truth.is_file():
                    cats, centres = _truth_lesions(truth)
                    cases[case] = ReferenceCase(case, mask, cats, centres)
                else:
                    cases[case] = ReferenceCase(case, mask)
            if (path / "truth.csv").is_file():
                tables.append(read_reference_table(path / "truth.csv"))
        elif path.is_file() and path.suffix.lower() == ".csv":
            tables.append(read_reference_table(path))
        elif path.exists():
            raise ConfigError(f"{path}: a reference is a folder of masks or a staging CSV; to "
                              "score one mask pair use `psma-stage bench --pair PRED REF`.")
        else:
            raise ConfigError(f"{path}: reference not found.")
    table = None
    if tables:
        table = tables[0]
        for extra in tables[1:]:
            table = table.merge(extra, on="patient_id", how="outer", suffixes=("", "_dup"))
            table = table[[c for c in table.columns if not c.endswith("_dup")]]
    if not cases and table is None:
        raise ConfigError(f"reference {[str(p) for p in paths]} holds neither lesion masks nor "
                          "a staging table.")
    return ReferenceSet(cases=cases, table=table, sources=tuple(str(p) for p in paths))


# -- cohort input ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InputCase:
    """One study of the cohort to run the pipeline methods on."""

    case_id: str
    kind: Literal["dicom", "nifti"]
    dicom_dir: Path | None = None
    pet_nifti: Path | None = None
    ct_nifti: Path | None = None


def discover_input(root: Path | str, *, prefer: Literal["auto", "dicom", "nifti"] = "auto"
                   ) -> dict[str, InputCase]:
    """Cases of a cohort folder or manifest CSV.

    A folder holds one sub-folder per case with ``nifti/SUV.nii.gz`` (+ ``nifti/CTres.nii.gz``)
    and/or ``dicom/`` (the phantom cohort layout), or DICOM files directly. A manifest CSV has
    ``patient_id`` and ``dicom_dir`` or ``pet_nifti`` (+ ``ct_nifti``), paths relative to it.
    ``prefer="auto"`` takes the NIfTI pair when a case has both (same grid as the reference
    ``SEG.nii.gz``, and no DICOM parsing).

    Raises
    ------
    ConfigError
        If the input is missing, a manifest is malformed, or no case is found.
    """
    root = Path(root)
    out: dict[str, InputCase] = {}
    if root.is_file() and root.suffix.lower() == ".csv":
        table = pd.read_csv(root, dtype=str).fillna("")
        if "patient_id" not in table.columns or not (
                {"dicom_dir", "pet_nifti"} & set(table.columns)):
            raise ConfigError(f"{root}: a manifest needs patient_id and dicom_dir or pet_nifti "
                              f"columns (found {list(table.columns)}).")
        for _, row in table.iterrows():
            pid = row["patient_id"]
            pet = row.get("pet_nifti", "")
            if pet and prefer != "dicom":
                ct = row.get("ct_nifti", "")
                out[pid] = InputCase(pid, "nifti", pet_nifti=root.parent / pet,
                                     ct_nifti=(root.parent / ct) if ct else None)
            elif row.get("dicom_dir", ""):
                out[pid] = InputCase(pid, "dicom", dicom_dir=root.parent / row["dicom_dir"])
            else:
                raise ConfigError(f"{root}: patient {pid}: no dicom_dir or pet_nifti given.")
    elif root.is_dir():
        for entry in sorted(p for p in root.iterdir() if p.is_dir() and not
                            p.name.startswith(".")):
            suv = entry / "nifti" / "SUV.nii.gz"
            ct = entry / "nifti" / "CTres.nii.gz"
            dicom = entry / "dicom"
            if suv.is_file() and (prefer != "dicom" or not dicom.is_dir()):
                out[entry.name] = InputCase(entry.name, "nifti", pet_nifti=suv,
                                            ct_nifti=ct if ct.is_file() else None)
            elif dicom.is_dir():
                out[entry.name] = InputCase(entry.name, "dicom", dicom_dir=dicom)
            elif any(p.is_file() and p.suffix.lower() in ("", ".dcm") for p in entry.iterdir()):
                out[entry.name] = InputCase(entry.name, "dicom", dicom_dir=entry)
    else:
        raise ConfigError(f"{root}: input cohort not found (a folder or a manifest CSV).")
    if not out:
        raise ConfigError(f"{root}: no case found (expected <case>/nifti/SUV.nii.gz, "
                          "<case>/dicom/ or a manifest CSV).")
    return out


# -- running pipeline methods ----------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class MethodOutput:
    """What a pipeline method produced for one case.

    ``seconds`` is the method's own wall time (lesion finding and staging rules);
    ``shared_seconds`` the loading, SUV and anatomy time of the case, which every method with
    the same ``suv``/``anatomy`` settings needs (run once by :func:`shared_runner`).
    """

    labels: Volume
    staging: Mapping[str, Any] | None
    seconds: float
    shared_seconds: float = 0.0


PipelineRunner = Callable[[InputCase, Sequence[tuple[str, Any]]], Mapping[str, MethodOutput]]
"""``runner(case, [(method name, PipelineConfig), ...]) -> {method name: MethodOutput}``;
raises PipelineError when the case cannot be processed."""


def _resolve_config(spec: MethodSpec) -> Any:
    from staging.config import load_config

    return load_config(spec.config_path, **dict(spec.overrides))


def _source_of(case: InputCase) -> Any:
    from staging.models import StudySource

    if case.kind == "nifti":
        return StudySource.from_nifti(case.pet_nifti, case.ct_nifti,  # type: ignore[arg-type]
                                      patient_id=case.case_id)
    return StudySource.from_dicom(case.dicom_dir)  # type: ignore[arg-type]


def _shared_key(config: Any) -> str:
    data = config.to_dict()
    return json.dumps([data["suv"], data["anatomy"]], sort_keys=True, default=str)


def shared_runner(case: InputCase, methods: Sequence[tuple[str, Any]]
                  ) -> dict[str, MethodOutput]:
    """Run several pipeline methods on one case, loading it and labelling anatomy once.

    The stages are the pipeline's own (:func:`staging.pipeline.load_source`,
    :func:`imaging.anatomy.label_anatomy` on the PET grid, :func:`imaging.lesions.find_lesions`,
    :func:`staging.classify.classify_lesions`, :func:`staging.classify.stage_patient`), run
    once per distinct ``suv``/``anatomy`` configuration; only the lesion finder and the staging
    rules run per method. No per-case output files are written.

    Raises
    ------
    PipelineError
        Whatever a stage raises for this case.
    """
    from imaging.anatomy import label_anatomy
    from imaging.lesions import find_lesions
    from staging.classify import classify_lesions, stage_patient
    from staging.pipeline import load_source

    shared: dict[str, tuple[Any, Any, float]] = {}
    out: dict[str, MethodOutput] = {}
    source = _source_of(case)
    for name, config in methods:
        key = _shared_key(config)
        if key not in shared:
            t0 = time.perf_counter()
            study = load_source(source, config=config)
            if study.ct is None:
                raise PipelineError(f"case {case.case_id}: no CT; the anatomy needs one.")
            anatomy = label_anatomy(study.ct, pet=study.pet, reference=study.pet,
                                    config=config.anatomy)
            shared[key] = (study, anatomy, time.perf_counter() - t0)
        study, anatomy, shared_s = shared[key]
        t0 = time.perf_counter()
        result = find_lesions(study.pet, anatomy=anatomy.masks, config=config.lesion,
                              anatomy_grid=anatomy.grid)
        classified = classify_lesions(result.lesions, labels=np.asarray(result.labels.array),
                                      anatomy=anatomy, config=config.staging)
        staging = stage_patient(classified, patient_id=case.case_id, config=config.staging,
                                config_hash=config.hash())
        out[name] = MethodOutput(labels=result.labels, staging=staging.summary(),
                                 seconds=time.perf_counter() - t0, shared_seconds=shared_s)
    return out


def stage_study_runner(work_dir: Path) -> PipelineRunner:
    """A runner calling :func:`staging.pipeline.stage_study` once per method and case.

    Each run's full output (``staging.json``, ``lesions.nii.gz``, report, ...) is kept in
    ``work_dir/<method>/<case>/``. Slower than :func:`shared_runner` (anatomy is labelled again
    for every method) but exactly what ``psma-stage stage`` produces.
    """

    def run(case: InputCase, methods: Sequence[tuple[str, Any]]) -> dict[str, MethodOutput]:
        from staging.pipeline import stage_study

        out: dict[str, MethodOutput] = {}
        for name, config in methods:
            result = stage_study(_source_of(case), work_dir / name / case.case_id, config=config)
            t = result.timings_s
            out[name] = MethodOutput(
                labels=read_mask(result.outputs["lesions.nii.gz"]),
                staging=dict(result.record),
                seconds=float(t.get("lesions", 0.0) + t.get("staging", 0.0)),
                shared_seconds=float(t.get("load", 0.0) + t.get("suv", 0.0)
                                     + t.get("anatomy", 0.0)),
            )
        return out

    return run


# -- the benchmark ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """One (method, case) row before it enters the per-case table."""

    method: str
    case_id: str
    status: Literal["ok", "failed", "missing_prediction", "no_reference_mask"]
    seconds: float | None
    record: Mapping[str, Any]
    error: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class BenchmarkResult:
    """Everything a benchmark run found, ready for :func:`write_report`.

    Attributes
    ----------
    per_case : DataFrame
        One row per (method, case): status, error, seconds and every metric.
    summary : DataFrame
        One row per method (see :func:`summarize`).
    agreement : Mapping[str, AgreementResult]
        Staging agreement per method (pipeline methods with a reference staging table).
    missing : Mapping[str, Mapping[str, tuple[str, ...]]]
        Per method: ``missing_prediction`` (reference cases the method has no mask for) and
        ``missing_reference`` (predicted cases without reference).
    methods : tuple of MethodSpec
    options : ScoringOptions
    settings : Mapping[str, Any]
        Bootstrap resamples and seed, input, reference sources.
    """

    per_case: pd.DataFrame
    summary: pd.DataFrame
    agreement: Mapping[str, AgreementResult]
    missing: Mapping[str, Mapping[str, tuple[str, ...]]]
    methods: tuple[MethodSpec, ...]
    options: ScoringOptions
    settings: Mapping[str, Any]

    @property
    def n_failed(self) -> int:
        """Number of (method, case) pairs that could not be scored."""
        if self.per_case.empty:
            return 0
        return int((self.per_case["status"] == "failed").sum())


def _score_outcome(method: str, case_id: str, predicted: Volume | None, ref: ReferenceCase | None,
                   *, options: ScoringOptions, seconds: float | None,
                   prediction_instances: Instances, staging: Mapping[str, Any] | None,
                   shared_seconds: float | None = None) -> CaseOutcome:
    extra: dict[str, Any] = {}
    if shared_seconds is not None:
        extra["shared_seconds"] = shared_seconds
    if staging is not None:
        extra.update({"group": staging.get("group"), "emmett_group": staging.get("emmett_group"),
                      "lesion_count": staging.get("lesion_count")})
    if ref is None or ref.mask_path is None:
        return CaseOutcome(method, case_id, "no_reference_mask", seconds, extra)
    if predicted is None:
        return CaseOutcome(method, case_id, "missing_prediction", seconds, extra)
    score = score_pair(predicted, ref.mask_path, options=options, categories=ref.categories,
                       centres=ref.centres,
                       prediction_instances=prediction_instances)
    return CaseOutcome(method, case_id, "ok", seconds, {**extra, **score.to_record()})


def run_benchmark(
    *, reference: ReferenceSet, methods: Sequence[MethodSpec],
    cases: Mapping[str, InputCase] | None = None,
    options: ScoringOptions = ScoringOptions(),
    runner: PipelineRunner | None = None, n_bootstrap: int = 2000, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Run and score every method against the reference.

    Parameters
    ----------
    reference : ReferenceSet
        Reference masks and/or staging table (:func:`load_reference`).
    methods : sequence of MethodSpec
        Pipeline methods (need ``cases``) and/or folders of external masks.
    cases : mapping of case id to InputCase, optional
        The cohort the pipeline methods run on (:func:`discover_input`).
    options : ScoringOptions
        Scoring settings.
    runner : callable, optional
        Runs the pipeline methods of one case (default :func:`shared_runner`; see also
        :func:`stage_study_runner`).
    n_bootstrap, seed : int
        Bootstrap of the summary intervals and kappa intervals.
    progress : callable, optional
        Called with a short message after each case (the CLI shows it).

    Returns
    -------
    BenchmarkResult

    Raises
    ------
    ConfigError
        If no method is given, names repeat, pipeline methods come without input cases, or a
        method's configuration is invalid.
    """
    if not methods:
        raise ConfigError("no method to benchmark: give --method NAME=CONFIG and/or "
                          "--predictions NAME=FOLDER.")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must be unique, got {names}.")
    pipeline = [m for m in methods if m.kind == "pipeline"]
    if pipeline and not cases:
        raise ConfigError("pipeline methods (--method) need an INPUT cohort to run on.")
    configs = [(m.name, _resolve_config(m)) for m in pipeline]
    runner = runner or shared_runner
    outcomes: list[CaseOutcome] = []
    missing: dict[str, dict[str, tuple[str, ...]]] = {}
    staging_rows: dict[str, list[Mapping[str, Any]]] = {m.name: [] for m in pipeline}
    ref_ids = set(reference.cases)

    if pipeline and cases:
        for name in (m.name for m in pipeline):
            missing[name] = {
                "missing_prediction": tuple(sorted(ref_ids - set(cases))),
                "missing_reference": tuple(sorted(set(cases) - set(reference.case_ids))),
            }
        for n, (case_id, case) in enumerate(sorted(cases.items()), start=1):
            try:
                produced = runner(case, configs)
            except PipelineError as err:
                logger.warning("case %s failed: %s", case_id, err)
                outcomes += [CaseOutcome(name, case_id, "failed", None, {}, str(err))
                             for name, _ in configs]
                continue
            for name, _ in configs:
                got = produced[name]
                if got.staging is not None:
                    staging_rows[name].append(got.staging)
                try:
                    outcomes.append(_score_outcome(
                        name, case_id, got.labels, reference.cases.get(case_id),
                        options=options, seconds=got.seconds, prediction_instances="labels",
                        staging=got.staging, shared_seconds=got.shared_seconds))
                except PipelineError as err:
                    outcomes.append(CaseOutcome(name, case_id, "failed", got.seconds, {},
                                                str(err)))
            if progress:
                progress(f"{n}/{len(cases)} {case_id}")

    for spec in (m for m in methods if m.kind == "predictions"):
        assert spec.folder is not None
        masks = find_masks(spec.folder)
        missing[spec.name] = {"missing_prediction": tuple(sorted(ref_ids - set(masks))),
                              "missing_reference": tuple(sorted(set(masks) - ref_ids))}
        for case_id in sorted(ref_ids):
            ref = reference.cases[case_id]
            try:
                if case_id in masks:
                    t0 = time.perf_counter()
                    pred: Volume | None = read_mask(masks[case_id])
                    seconds: float | None = time.perf_counter() - t0
                elif options.missing_as_empty and ref.mask_path is not None:
                    ref_vol = read_mask(ref.mask_path)
                    pred, seconds = ref_vol.with_array(np.zeros(ref_vol.shape, np.uint8),
                                                       unit="mask"), None
                else:
                    pred, seconds = None, None
                outcomes.append(_score_outcome(
                    spec.name, case_id, pred, ref, options=options, seconds=seconds,
                    prediction_instances=options.prediction_instances, staging=None))
            except PipelineError as err:
                logger.warning("%s / %s not scored: %s", spec.name, case_id, err)
                outcomes.append(CaseOutcome(spec.name, case_id, "failed", None, {}, str(err)))

    per_case = pd.DataFrame([{"method": o.method, "case_id": o.case_id, "status": o.status,
                              "error": o.error, "seconds": o.seconds, **o.record}
                             for o in outcomes])
    agreement: dict[str, AgreementResult] = {}
    if reference.table is not None:
        from staging.agreement import staging_table

        for name, rows in staging_rows.items():
            if rows:
                try:
                    agreement[name] = staging_agreement(
                        staging_table(rows), reference.table, n_bootstrap=n_bootstrap,
                        seed=seed, predicted_source=f"method {name}",
                        reference_source="reference table")
                except ConfigError as err:
                    logger.warning("staging agreement of %s not computed: %s", name, err)
    summary = summarize(per_case, methods=names, agreement=agreement, n_bootstrap=n_bootstrap,
                        seed=seed)
    return BenchmarkResult(
        per_case=per_case, summary=summary, agreement=agreement, missing=missing,
        methods=tuple(methods), options=options,
        settings={"n_bootstrap": n_bootstrap, "seed": seed,
                  "reference": list(reference.sources),
                  "n_cases_input": len(cases) if cases else 0,
                  "n_reference_masks": len(reference.cases)},
    )


# -- summary ---------------------------------------------------------------------------------
def bootstrap_mean_ci(values: Iterable[float], *, n_bootstrap: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the finite values.

    Returns ``(nan, nan)`` for no finite value (undefined, e.g. Dice of a negative-only set).

    Examples
    --------
    >>> bootstrap_mean_ci([2.0, 2.0, 2.0])
    (2.0, 2.0)
    """
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_bootstrap, arr.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _pooled_ci(num: NDArray[np.float64], den: NDArray[np.float64], *, n_bootstrap: int,
               seed: int) -> tuple[float, float]:
    """Percentile bootstrap (cases resampled) of ``Σ num / Σ den``."""
    if num.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_bootstrap, num.size))
    n, d = num[idx].sum(axis=1), den[idx].sum(axis=1)
    ratio = np.divide(n, d, out=np.full(n.shape, np.nan), where=d > 0)
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(ratio, [0.025, 0.975])
    return float(lo), float(hi)


def _f1(sensitivity: float, precision: float) -> float:
    if not (math.isfinite(sensitivity) and math.isfinite(precision)):
        return math.nan
    total = sensitivity + precision
    return 2.0 * sensitivity * precision / total if total > 0 else 0.0


def _col(frame: pd.DataFrame, name: str) -> NDArray[np.float64]:
    if name not in frame.columns:
        return np.zeros(len(frame))
    values = pd.to_numeric(frame[name], errors="coerce").fillna(0)
    return np.asarray(values.to_numpy(dtype=np.float64), dtype=np.float64)


def summarize(per_case: pd.DataFrame, *, methods: Sequence[str],
              agreement: Mapping[str, AgreementResult] | None = None, n_bootstrap: int = 2000,
              seed: int = 0) -> pd.DataFrame:
    """Per-method summary of a per-case table.

    Columns: case counts by status; mean, median and bootstrap CI of Dice, FP volume and FN
    volume (FP volume also over reference-negative cases alone); pooled lesion sensitivity,
    precision, F1 and FP per scan for one-to-one (``hungarian_*``) and autoPET-style
    (``autopet_*``) detection with bootstrap CIs; per-category sensitivity; seconds per case;
    staging accuracy and kappa when available.
    """
    rows = []
    for method in methods:
        sub = per_case[per_case["method"] == method] if not per_case.empty else per_case
        ok = sub[sub["status"] == "ok"] if not sub.empty else sub
        row: dict[str, Any] = {"method": method, "n_scored": len(ok)}
        for status in ("failed", "missing_prediction", "no_reference_mask"):
            row[f"n_{status}"] = int((sub["status"] == status).sum()) if not sub.empty else 0
        for metric in ("dice", "fp_volume_ml", "fn_volume_ml"):
            values = pd.to_numeric(ok[metric], errors="coerce") if metric in ok else pd.Series(
                dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{metric}_n"] = len(finite)
            row[f"{metric}_mean"] = float(finite.mean()) if len(finite) else math.nan
            row[f"{metric}_median"] = float(finite.median()) if len(finite) else math.nan
            lo, hi = bootstrap_mean_ci(finite, n_bootstrap=n_bootstrap, seed=seed)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = lo, hi
        if "n_reference_lesions" in ok:
            neg = ok[_col(ok, "n_reference_lesions") == 0]
            row["n_negative_cases"] = len(neg)
            row["fp_volume_ml_negative_mean"] = (
                float(_col(neg, "fp_volume_ml").mean()) if len(neg) else math.nan)
        for kind in ("hungarian", "autopet"):
            tp, fp = _col(ok, f"{kind}_tp"), _col(ok, f"{kind}_fp")
            n_ref, n_pred = _col(ok, "n_reference_lesions"), _col(ok, "n_predicted_lesions")
            tp_pred = n_pred - fp
            sens = tp.sum() / n_ref.sum() if n_ref.sum() else math.nan
            prec = tp_pred.sum() / n_pred.sum() if n_pred.sum() else math.nan
            row[f"{kind}_sensitivity"] = sens
            row[f"{kind}_sensitivity_ci_low"], row[f"{kind}_sensitivity_ci_high"] = _pooled_ci(
                tp, n_ref, n_bootstrap=n_bootstrap, seed=seed)
            row[f"{kind}_precision"] = prec
            row[f"{kind}_f1"] = _f1(sens, prec)
            row[f"{kind}_fp_per_scan"] = fp.sum() / len(ok) if len(ok) else math.nan
            row[f"{kind}_fp_per_scan_ci_low"], row[f"{kind}_fp_per_scan_ci_high"] = _pooled_ci(
                fp, np.ones_like(fp), n_bootstrap=n_bootstrap, seed=seed)
        for col in sorted(c for c in ok.columns if c.startswith("n_ref_")):
            cat = col[len("n_ref_"):]
            n = _col(ok, col).sum()
            hits = _col(ok, f"hungarian_tp_{cat}").sum()
            row[f"sensitivity_{cat}"] = hits / n if n else math.nan
            row[f"n_ref_{cat}"] = int(n)
        secs = pd.to_numeric(sub["seconds"], errors="coerce").dropna() if "seconds" in sub else []
        row["seconds_mean"] = float(np.mean(secs)) if len(secs) else math.nan
        row["seconds_median"] = float(np.median(secs)) if len(secs) else math.nan
        row["seconds_total"] = float(np.sum(secs)) if len(secs) else math.nan
        shared = (pd.to_numeric(sub["shared_seconds"], errors="coerce").dropna()
                  if "shared_seconds" in sub else [])
        row["shared_seconds_mean"] = float(np.mean(shared)) if len(shared) else math.nan
        if agreement and method in agreement:
            res = agreement[method]
            for var, c in res.classes.items():
                row[f"{var}_accuracy"] = c.accuracy.value
                row[f"{var}_kappa"] = c.kappa.value
                row[f"{var}_kappa_ci_low"] = c.kappa.ci_low
                row[f"{var}_kappa_ci_high"] = c.kappa.ci_high
                row[f"{var}_kappa_{c.weights}"] = c.weighted_kappa.value
        rows.append(row)
    return pd.DataFrame(rows)


# -- report ----------------------------------------------------------------------------------
def _plots(result: BenchmarkResult, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    ok = result.per_case[result.per_case["status"] == "ok"] if not result.per_case.empty else (
        result.per_case)
    names = [m.name for m in result.methods]
    if not ok.empty:
        fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 4.2), constrained_layout=True)
        for ax, (metric, title) in zip(axes, (("dice", "Dice (cases with lesions)"),
                                              ("fp_volume_ml", "False-positive volume (mL)"),
                                              ("fn_volume_ml", "False-negative volume (mL)")),
                                       strict=True):
            data = []
            for name in names:
                vals = pd.to_numeric(ok.loc[ok["method"] == name, metric], errors="coerce")
                data.append(vals[np.isfinite(vals)].to_numpy())
            ax.boxplot(data, tick_labels=names, showmeans=True)
            for n, vals in enumerate(data, start=1):
                jitter = np.random.default_rng(n).uniform(-0.12, 0.12, size=len(vals))
                ax.scatter(n + jitter, vals, s=8, alpha=0.5, color="tab:blue")
            ax.set_title(title)
            if metric != "dice":
                ax.set_yscale("symlog", linthresh=0.1)
            ax.tick_params(axis="x", rotation=30)
        fig.savefig(folder / "voxel_metrics_box.png", dpi=110)
        plt.close(fig)
        files["voxel_metrics_box"] = "voxel_metrics_box.png"
    summary = result.summary
    if not summary.empty and "hungarian_sensitivity" in summary:
        fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
        for n, row in summary.reset_index(drop=True).iterrows():
            color = f"C{int(str(n)) % 10}"
            for kind, marker, fill in (("hungarian", "o", color), ("autopet", "s", "none")):
                x, y = row[f"{kind}_fp_per_scan"], row[f"{kind}_sensitivity"]
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                xerr = [[max(x - row[f"{kind}_fp_per_scan_ci_low"], 0)],
                        [max(row[f"{kind}_fp_per_scan_ci_high"] - x, 0)]]
                yerr = [[max(y - row[f"{kind}_sensitivity_ci_low"], 0)],
                        [max(row[f"{kind}_sensitivity_ci_high"] - y, 0)]]
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color,
                            markerfacecolor=fill, capsize=3,
                            label=f"{row['method']} ({_KIND_LABEL[kind]})")
        ax.set_xlabel("false-positive lesions per scan")
        ax.set_ylabel("lesion sensitivity")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title("Detection: sensitivity vs false positives per scan (95% CI)")
        fig.savefig(folder / "sensitivity_vs_fp.png", dpi=110)
        plt.close(fig)
        files["sensitivity_vs_fp"] = "sensitivity_vs_fp.png"
    return files


_KIND_LABEL = {"hungarian": "one-to-one, IoU", "autopet": "autoPET, >= 1 voxel"}

_SUMMARY_COLUMNS = (
    "method", "n_scored", "n_failed", "n_missing_prediction", "dice_mean", "dice_median",
    "dice_ci_low", "dice_ci_high", "fp_volume_ml_mean", "fp_volume_ml_median",
    "fn_volume_ml_mean", "fn_volume_ml_median", "hungarian_sensitivity", "hungarian_precision",
    "hungarian_f1", "hungarian_fp_per_scan", "autopet_sensitivity", "autopet_fp_per_scan",
    "group_accuracy", "group_kappa", "group_kappa_linear", "emmett_group_accuracy",
    "seconds_mean",
)


def _html(result: BenchmarkResult, plots: Mapping[str, str]) -> str:
    esc = html.escape
    summary = result.summary
    cols = [c for c in _SUMMARY_COLUMNS if c in summary.columns]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>psma-stage benchmark</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
        "collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:right}th{background:#eee}img{max-width:100%}</style></head><body>",
        "<h1>Method benchmark</h1>",
        f"<p>Reference: {esc(', '.join(result.settings.get('reference', [])))}. Voxel metrics "
        f"follow the {esc(result.options.rules)} rules (18-connected components); detection "
        f"one-to-one with IoU &ge; {result.options.min_iou:g} (PI-CAI style) and autoPET-style "
        f"(&ge; 1 voxel). Intervals: percentile bootstrap over cases "
        f"(B={result.settings.get('n_bootstrap')}, seed {result.settings.get('seed')}).</p>",
        "<h2>Methods</h2><ul>",
        *[f"<li><b>{esc(m.name)}</b>: {esc(m.describe())}</li>" for m in result.methods],
        "</ul><h2>Summary</h2>",
        summary[cols].to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="—"),
    ]
    for key, title in (("voxel_metrics_box", "Voxel metrics per case"),
                       ("sensitivity_vs_fp", "Lesion detection")):
        if key in plots:
            parts.append(f"<h2>{title}</h2><img src='{esc(plots[key])}' alt='{title}'>")
    cat_cols = [c for c in summary.columns if c.startswith("sensitivity_")]
    if cat_cols:
        parts += ["<h2>Per-category lesion sensitivity (one-to-one)</h2>",
                  summary[["method", *cat_cols]].to_html(index=False, na_rep="—",
                                                         float_format=lambda v: f"{v:.3g}")]
    for name, res in result.agreement.items():
        parts.append(f"<h2>Staging agreement: {esc(name)}</h2>")
        parts.append(res.summary.to_html(index=False, na_rep="—",
                                         float_format=lambda v: f"{v:.3g}"))
        for var, c in res.classes.items():
            parts.append(f"<p>{esc(var)} (rows reference, columns method)</p>")
            parts.append(c.confusion.to_html())
        if res.missing_in_prediction or res.missing_in_reference:
            parts.append(f"<p>Only in reference: {esc(', '.join(res.missing_in_prediction))}; "
                         f"only in method: {esc(', '.join(res.missing_in_reference))}</p>")
    parts.append("<h2>Missing and failed cases</h2><ul>")
    for name, miss in result.missing.items():
        parts.append(f"<li>{esc(name)}: no prediction for "
                     f"{esc(', '.join(miss['missing_prediction']) or 'none')}; no reference for "
                     f"{esc(', '.join(miss['missing_reference']) or 'none')}</li>")
    if not result.per_case.empty:
        for _, row in result.per_case[result.per_case["status"] == "failed"].iterrows():
            parts.append(f"<li>{esc(str(row['method']))} / {esc(str(row['case_id']))}: failed: "
                         f"{esc(str(row['error']))}</li>")
    parts.append("</ul><p>Per-case values: <a href='per_case.csv'>per_case.csv</a>; summary: "
                 "<a href='summary.csv'>summary.csv</a>.</p></body></html>")
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_report(result: BenchmarkResult, out_dir: Path | str, *, overwrite: bool = False,
                 runs_dir: Path | None = None) -> dict[str, Path]:
    """Write the benchmark's files into ``out_dir`` (created whole, or not at all).

    Files: ``per_case.csv``, ``summary.csv``, ``timing.csv``, ``agreement.csv``,
    ``confusion_<method>_<variable>.csv``, ``bench.json``, ``voxel_metrics_box.png``,
    ``sensitivity_vs_fp.png`` and ``bench.html``; ``runs/`` when ``runs_dir`` (the per-run
    outputs of :func:`stage_study_runner`) is given, moved in.

    Raises
    ------
    ConfigError
        If ``out_dir`` exists and is not empty while ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: output folder exists and is not empty; choose another "
                          "-o or pass --overwrite.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        result.per_case.to_csv(tmp / "per_case.csv", index=False)
        result.summary.to_csv(tmp / "summary.csv", index=False)
        timing_cols = [c for c in ("method", "n_scored", "seconds_mean", "seconds_median",
                                   "seconds_total", "shared_seconds_mean")
                       if c in result.summary.columns]
        result.summary[timing_cols].to_csv(tmp / "timing.csv", index=False)
        agreement_rows = []
        for name, res in result.agreement.items():
            agreement_rows.append(res.summary.assign(method=name))
            for var, c in res.classes.items():
                c.confusion.to_csv(tmp / f"confusion_{name}_{var}.csv")
        if agreement_rows:
            pd.concat(agreement_rows).to_csv(tmp / "agreement.csv", index=False)
        plots = _plots(result, tmp)
        (tmp / "bench.html").write_text(_html(result, plots))
        payload = {
            "settings": result.settings,
            "options": {f: getattr(result.options, f) for f in ScoringOptions.__slots__},
            "methods": [{"name": m.name, "kind": m.kind, "source": m.describe()}
                        for m in result.methods],
            "missing": result.missing,
            "summary": result.summary.to_dict(orient="records"),
        }
        (tmp / "bench.json").write_text(json.dumps(_jsonable(payload), indent=2, default=str))
        if runs_dir is not None and runs_dir.is_dir():
            shutil.move(str(runs_dir), str(tmp / "runs"))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {p.name: p for p in sorted(out_dir.iterdir())}
