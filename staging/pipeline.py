"""Stage one PET/CT study end to end and write its outputs atomically.

``stage_study(source, out_dir, config=...)``: load (DICOM with QIBA SUV, or a NIfTI SUV + CT
pair) -> SUV checks -> anatomy on the PET grid -> lesions -> classification and patient stage ->
outputs. Outputs are written into a temporary sibling folder and renamed into place only when
complete, so ``out_dir`` is either absent, the previous complete result, or the new complete
result; never half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imaging.anatomy import AnatomyMap, label_anatomy
from imaging.errors import AnatomyError, NoUsableSeriesError, PipelineError, SuvError
from imaging.lesions import LesionResult, find_lesions, tracer_from_radiopharmaceutical
from imaging.vocabulary import Landmark, LesionCategory
from imaging.volume import PetCtStudy
from staging.classify import classify_lesions, stage_patient
from staging.config import PipelineConfig
from staging.models import PatientStaging, StagingResult, StudySource

__all__ = ["OUTPUT_FILES", "STAGES", "StudySource", "load_source", "stage_study"]

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("load", "suv", "anatomy", "lesions", "staging", "outputs")
"""Stages timed in ``StagingResult.timings_s`` and ``staging.json`` ``timings_s``."""

OUTPUT_FILES: tuple[str, ...] = (
    "staging.json", "lesions.csv", "lesions.nii.gz", "anatomy.nii.gz", "suv.nii.gz",
    "lesions_seg.dcm", "mip.png", "report.html", "config.toml",
)
"""Files a complete output folder holds (``lesions_seg.dcm`` only for DICOM input with lesions)."""

_MARKER = "staging.json"


class OutputFolderError(PipelineError, ValueError):
    """The output folder exists and holds something that is not a psma-stage result."""


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# -- input ------------------------------------------------------------------------------------
def load_source(source: StudySource, *, config: PipelineConfig) -> PetCtStudy:
    """Load a study from DICOM (SUV computed by the loader) or from a NIfTI SUV + CT pair.

    Raises
    ------
    NoUsableSeriesError
        No PET, or a PET without CT (staging needs the CT for anatomy).
    DicomError, SuvError, GeometryError
        From the loaders: a corrupt or inconsistent series, missing SUV inputs, bad NIfTI.
    """
    if source.kind == "dicom":
        from imaging.loading import load_study

        assert source.dicom_dir is not None
        if not source.dicom_dir.is_dir():
            raise NoUsableSeriesError("input folder does not exist or is not a folder; give "
                                      "the folder holding the study's DICOM files.",
                                      path=source.dicom_dir)
        return load_study(
            source.dicom_dir,
            pet_series_uid=source.pet_series_uid,
            suv_type=config.suv.suv_type,
            strict=config.suv.strict,
            overrides=config.suv.overrides(),
            ct="required",
        )
    from imaging.nifti import load_nifti_study

    assert source.pet_nifti is not None
    for path in source.input_paths():
        if not path.is_file():
            raise NoUsableSeriesError("file not found; give an existing NIfTI file.", path=path)
    if source.ct_nifti is None:
        raise NoUsableSeriesError(
            "PET given without CT: staging needs the CT for bone, organs, the prostate fossa "
            "and the nodal regions; add --ct CT.nii.gz.", path=source.pet_nifti)
    return load_nifti_study(source.pet_nifti, source.ct_nifti, patient_id=source.patient_id)


def resolve_tracer(config: PipelineConfig, study: PetCtStudy) -> tuple[PipelineConfig, str | None]:
    """Replace ``lesion.tracer = "auto"`` by the tracer named in the study's DICOM header.

    Returns the configuration the study is staged with (saved with the result, so the hash
    says which tracer rules applied) and, when the tracer stays unknown, the review reason.
    """
    if config.lesion.tracer != "auto":
        return config, None
    name = study.meta.radiopharmaceutical
    tracer = tracer_from_radiopharmaceutical(name)
    if tracer is None:
        stated = f"Radiopharmaceutical {name!r} is not a known PSMA tracer" if name else (
            "the input does not name the radiopharmaceutical")
        return config, (f"tracer unknown ({stated}): staged as a urinary-excretion tracer "
                        "(PSMA-11 / DCFPyL); set lesion.tracer (psma11, dcfpyl, psma1007)")
    logger.info("tracer %s from the DICOM Radiopharmaceutical", tracer)
    return replace(config, lesion=replace(config.lesion, tracer=tracer)), None


def _check_suv(study: PetCtStudy, where: str) -> None:
    pet = np.asarray(study.pet.array)
    finite = np.isfinite(pet)
    if not finite.all():
        raise SuvError(f"{where}: the SUV image holds {int((~finite).sum())} non-finite voxels "
                       "(NaN or infinity); the series is damaged. Re-export the PET.")
    top = float(pet.max())
    if top <= 0:
        raise SuvError(f"{where}: the SUV image is empty (maximum {top:g}); check the PET series.")
    if study.ct is None:
        raise NoUsableSeriesError(f"{where}: the study has no CT; staging needs the CT.")


def _require_pelvis(anatomy: AnatomyMap, study: PetCtStudy, where: str) -> None:
    finding = anatomy.landmarks.get(Landmark.PUBIC_SYMPHYSIS_SUPERIOR)
    found = finding is not None and finding.position_mm is not None
    if "pelvis_not_in_ct" in anatomy.flags or not found:
        assert study.ct is not None
        lo, hi = study.ct.z_extent_mm()
        reason = finding.reason if finding is not None else "not located"
        raise AnatomyError(
            f"{where}: the CT (z {lo:.0f} to {hi:.0f} mm LPS) does not cover the pelvis "
            f"(pubic symphysis: {reason}); staging needs the prostate fossa and the pelvic "
            "nodes. Use a CT from the skull base to the mid-thigh."
        )


def _review_from_anatomy(anatomy: AnatomyMap, lesion_categories: set[LesionCategory]) -> list[str]:
    reasons = []
    nodes = {LesionCategory.NODE_PELVIC, LesionCategory.NODE_EXTRAPELVIC}
    if anatomy.pelvic_boundary_z_mm is None and lesion_categories & nodes:
        reasons.append(f"the pelvic boundary ({anatomy.pelvic_boundary}) was not located; "
                       "check the N1 / M1a label of nodes near it")
    for flag in anatomy.flags:
        if flag.startswith("hip_prosthesis"):
            reasons.append(f"anatomy flag {flag}: pelvic bone and nodes near the metal are "
                           "less reliable")
    return reasons


def _source_pet_headers(source: StudySource, series_uid: str | None) -> list[Any]:
    from imaging.dicom import discover, read_series_headers
    from imaging.loading import select_study

    assert source.dicom_dir is not None
    study = select_study(discover(source.dicom_dir), pet_series_uid=series_uid)
    assert study.pet is not None
    return read_series_headers(list(study.pet.files))


# -- output folder ----------------------------------------------------------------------------
def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir}: exists and is a file; give a folder for the outputs.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / _MARKER).is_file():
        raise OutputFolderError(
            f"{out_dir}: exists, is not empty and holds no {_MARKER}; refusing to replace a "
            "folder that is not a psma-stage result. Give a new or empty folder."
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished temporary folder into place (replacing an earlier result)."""
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "result")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:  # put the earlier result back
            os.replace(old / "result", out_dir)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the pipeline -----------------------------------------------------------------------------
def _write_outputs(
    tmp: Path,
    *,
    study: PetCtStudy,
    source: StudySource,
    anatomy: AnatomyMap,
    lesions: LesionResult,
    staging: PatientStaging,
    config: PipelineConfig,
    timings: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Path], dict[str, str]]:
    from imaging.nifti import write_nifti
    from staging.outputs import (
        build_record,
        render_mip,
        write_dicom_seg,
        write_lesions_csv,
        write_report,
    )

    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    labels = lesions.labels.with_array(np.asarray(lesions.labels.array, dtype=np.uint16), "label")
    written["lesions.nii.gz"] = write_nifti(labels, tmp / "lesions.nii.gz")
    written["anatomy.nii.gz"] = write_nifti(anatomy.to_label_volume(), tmp / "anatomy.nii.gz")
    suv = study.pet.with_array(np.asarray(study.pet.array, dtype=np.float32))
    written["suv.nii.gz"] = write_nifti(suv, tmp / "suv.nii.gz")
    categories = {c.id: c.category.value for c in staging.lesions}
    if source.kind != "dicom":
        skipped["lesions_seg.dcm"] = "NIfTI input: no source DICOM PET series to reference"
    elif not categories:
        skipped["lesions_seg.dcm"] = "no lesions: a DICOM Segmentation needs at least one segment"
    else:
        headers = study.pet_headers or _source_pet_headers(
            source, study.meta.pet_series_instance_uid)
        written["lesions_seg.dcm"] = write_dicom_seg(labels, categories, headers,
                                                     tmp / "lesions_seg.dcm")
    title = f"{staging.patient_id}: {staging.mitnm}  ({staging.group})"
    written["mip.png"] = render_mip(suv, labels, categories, tmp / "mip.png", title=title)
    (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    written["config.toml"] = tmp / "config.toml"
    names = [*written, "staging.json", "lesions.csv", "report.html"]
    record = build_record(
        staging,
        study_instance_uid=study.meta.study_instance_uid,
        series={"pet": study.meta.pet_series_instance_uid,
                "ct": study.meta.ct_series_instance_uid},
        suv_provenance=study.suv_provenance,
        config=config.to_dict(),
        config_hash=config.hash(),
        reference=lesions.reference,
        anatomy_provider=anatomy.provider,
        anatomy_flags=anatomy.flags,
        lesion_method=config.lesion.name,
        source_kind=source.kind,
        timings_s=timings,
        outputs=sorted(names),
        skipped_outputs=skipped,
    )
    written["lesions.csv"] = write_lesions_csv(record, tmp / "lesions.csv")
    written["report.html"] = write_report(record, written["mip.png"], tmp / "report.html")
    return record, written, skipped


def stage_study(
    source: StudySource,
    out_dir: Path | str,
    *,
    config: PipelineConfig | None = None,
) -> StagingResult:
    """Stage one study and write its outputs into ``out_dir`` atomically.

    Parameters
    ----------
    source : StudySource
        ``StudySource.from_dicom(folder, pet_series_uid=...)`` or
        ``StudySource.from_nifti(pet_suv, ct, patient_id=...)``.
    out_dir : Path
        Output folder; created, or replaced if it holds an earlier psma-stage result.
    config : PipelineConfig, optional
        Resolved configuration (:func:`staging.config.load_config`); defaults if None.

    Returns
    -------
    StagingResult
        The patient stage, the ``staging.json`` record (exactly the file's JSON content: plain
        dicts, lists, strings, numbers, None), the output paths (in ``out_dir``),
        outputs not written with the reason, and per-stage wall times.

    Raises
    ------
    NoUsableSeriesError
        No PET in the folder, or a PET without CT.
    DicomError, SuvError, GeometryError
        A corrupt or inconsistent series, or SUV inputs missing.
    AnatomyError
        The CT does not cover the pelvis, or holds no body.
    OutputFolderError
        ``out_dir`` is a file, or a non-empty folder that is not a psma-stage result.
    """
    config = config if config is not None else PipelineConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    where = source.describe()
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        study = load_source(source, config=config)
    with _timed(timings, "suv"):
        _check_suv(study, where)
    config, tracer_note = resolve_tracer(config, study)
    assert study.ct is not None
    with _timed(timings, "anatomy"):
        anatomy = label_anatomy(study.ct, pet=study.pet, reference=study.pet,
                                config=config.anatomy)
        _require_pelvis(anatomy, study, where)
    with _timed(timings, "lesions"):
        lesions = find_lesions(study.pet, anatomy=anatomy.masks, config=config.lesion)
    with _timed(timings, "staging"):
        classified = classify_lesions(lesions.lesions, labels=np.asarray(lesions.labels.array),
                                      anatomy=anatomy, config=config.staging)
        review = _review_from_anatomy(anatomy, {c.category for c in classified})
        if tracer_note:
            review.append(tracer_note)
        staging = stage_patient(classified, patient_id=study.meta.patient_id,
                                config=config.staging, review_reasons=review,
                                config_hash=config.hash())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        from staging.outputs import write_json

        start = time.perf_counter()
        record, written, skipped = _write_outputs(
            tmp, study=study, source=source, anatomy=anatomy, lesions=lesions,
            staging=staging, config=config, timings=timings)
        timings["outputs"] = time.perf_counter() - start
        record["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        written["staging.json"] = write_json(record, tmp / "staging.json")
        record = json.loads(written["staging.json"].read_text(encoding="utf-8"))  # plain JSON
        timings["outputs"] = time.perf_counter() - start
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    outputs: Mapping[str, Path] = {name: out_dir / path.name for name, path in written.items()}
    logger.info("staged %s: %s %s, %d lesions (%d equivocal) in %.1f s", staging.patient_id,
                staging.mitnm, staging.group, staging.lesion_count,
                staging.counts_by_category.get("equivocal", 0), sum(timings.values()))
    return StagingResult(staging=staging, record=record, out_dir=out_dir, outputs=outputs,
                         timings_s=dict(timings), skipped_outputs=skipped)
