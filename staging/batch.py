"""Batch staging of a whole cohort: discovery, parallel staging, resume and crash safety.

:func:`discover_batch` turns a folder tree (any layout) or a manifest CSV into
:class:`BatchItem` s; :func:`run_batch` stages them over a process pool into
``OUTDIR/<patient>/<study>/`` and records each in the study database (:mod:`staging.database`).

Crash safety (see ``docs/batch.md``): workers only ever write into a private temporary folder
under ``OUTDIR/.psma-stage/staging/``. The parent process alone touches the results: it renames
a finished study folder into place (one atomic ``rename``), then commits the study's rows in one
database transaction. A database row is therefore never visible before its folder is complete.
At every start, :func:`recover_output_folder` restores the invariant
"a study folder exists if and only if its rows exist and match it": temporary folders are
deleted, rows whose folder is missing or differs are deleted, and folders without matching
rows are deleted; the studies concerned are simply staged again. A ``kill -9`` at any instant
leaves one of those states, so rerunning the same command completes the rest, without
duplicates.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from imaging import __version__
from imaging.errors import ConfigError, PipelineError
from staging import database as db
from staging.models import StudySource

__all__ = [
    "BatchEvent",
    "BatchItem",
    "BatchSummary",
    "PlannedItem",
    "StageFunction",
    "discover_batch",
    "input_hash",
    "plan_batch",
    "read_manifest",
    "recover_output_folder",
    "run_batch",
    "study_key",
]

logger = logging.getLogger(__name__)

_STATE_DIR = ".psma-stage"
_DEFAULT_DB = "results.db"


class StageFunction(Protocol):
    """``stage_study(source, out_dir, *, config)``; writes ``out_dir/staging.json`` and more."""

    def __call__(self, source: Any, out_dir: Path, /, *, config: Any) -> Any: ...


class _Config(Protocol):
    def hash(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One study to stage, or a set of files that cannot be staged (``problem`` set).

    Attributes
    ----------
    label : str
        How messages name the item: its key when known, otherwise its source path.
    key : str or None
        ``"<patient folder>/<study folder>"`` (both made safe by ``safe_path_component``),
        the study's folder under OUTDIR and its database key; None when discovery could not
        tell which study the files are.
    patient_id, study_instance_uid : str or None
        The identifiers as the data gives them (stored in the database; never used as paths).
    source : StudySource or None
        What ``stage_study`` reads.
    files : tuple of Path
        The input files (hashed for ``--resume``; for DICOM also what the study's private
        input folder links to).
    problem : str or None
        Why it cannot be staged, found at discovery (no CT, missing dose, unreadable file ...).
    """

    label: str
    key: str | None
    patient_id: str | None
    study_instance_uid: str | None
    source: StudySource | None
    files: tuple[Path, ...] = ()
    problem: str | None = None
    problem_type: str = "DiscoveryError"
    pet_files: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """What a run will do with an item: ``stage``, ``skip`` (unchanged) or ``fail``."""

    item: BatchItem
    action: Literal["stage", "skip", "fail"]
    reason: str
    input_hash: str | None = None


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """Progress of a run, sent to the ``progress`` callback after each item."""

    kind: Literal["start", "staged", "skipped", "failed"]
    label: str
    total: int
    staged: int
    skipped: int
    failed: int
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        """Items finished (staged, skipped or failed)."""
        return self.staged + self.skipped + self.failed


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The outcome of :func:`run_batch`.

    ``failures`` lists ``(label, error_type, message)`` of the items that failed in this run;
    ``not_attempted`` counts the items left undone by ``--fail-fast``.
    """

    run_id: int
    out_dir: Path
    database_url: str
    n_items: int
    n_staged: int
    n_skipped: int
    n_failed: int
    not_attempted: int
    elapsed_s: float
    failures: tuple[tuple[str, str, str], ...] = ()
    recovered: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 0 if self.n_failed == 0 and self.not_attempted == 0 else 1


# --------------------------------------------------------------------------------------------
# Identity and hashing
# --------------------------------------------------------------------------------------------

def _safe(text: str) -> str:
    from imaging.dicom import safe_path_component

    part = safe_path_component(text)
    # guard: a folder name must never be hidden (recovery and `ls` would skip it)
    return "_" + part if part.startswith(".") else part


def study_key(patient_id: str, study_instance_uid: str) -> str:
    """The study's folder under OUTDIR: ``<safe patient_id>/<safe study_uid>``.

    Both parts go through ``imaging.dicom.safe_path_component``: no separators, no ``..``, no
    leading dot, and a short hash suffix whenever the identifier had to be altered, so two
    different identifiers never share a folder.
    """
    return f"{_safe(patient_id)}/{_safe(study_instance_uid)}"


def input_hash(files: Iterable[Path], *, root: Path | None = None) -> str:
    """Fingerprint of a study's input files: sha256 over (relative path, size, mtime) of each.

    Reading every byte of a 500-patient export on each resume would cost minutes; size and
    modification time change whenever a file is rewritten or replaced, and a copy that does not
    keep times (``cp`` without ``-p``) only costs a restage. ``root`` makes paths relative so
    that moving the whole input tree keeps the hash.
    """
    digest = hashlib.sha256()
    entries = []
    for path in files:
        st = path.stat()
        name = str(path.relative_to(root)) if root is not None else str(path)
        entries.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------

def discover_batch(input_path: Path, *, manifest: Path | None = None) -> list[BatchItem]:
    """Find every study to stage, from a folder tree or a manifest CSV.

    Parameters
    ----------
    input_path : Path
        A folder tree of DICOM files (any layout), or a manifest ``.csv``.
    manifest : Path, optional
        A manifest CSV (same as passing it as ``input_path``).

    Returns
    -------
    list of BatchItem
        Sorted by key (items without a key last); items that cannot be staged carry their
        ``problem``.

    Raises
    ------
    ConfigError
        If the input does not exist, or the manifest is malformed.
    """
    if manifest is None and input_path.suffix.lower() == ".csv" and input_path.is_file():
        manifest = input_path
    if manifest is not None:
        items = read_manifest(manifest)
    else:
        if not input_path.is_dir():
            raise ConfigError(
                f"Input {input_path} is neither a folder nor a manifest .csv file; give the "
                "folder holding the DICOM export, or a manifest CSV.")
        items = _discover_dicom_tree(input_path)
    return sorted(_mark_duplicates(items), key=lambda it: (it.key is None, it.key or it.label))


def _mark_duplicates(items: Sequence[BatchItem]) -> list[BatchItem]:
    seen: dict[str, BatchItem] = {}
    out = []
    for item in items:
        if item.key is not None and item.problem is None and item.key in seen:
            first = seen[item.key]
            out.append(BatchItem(
                label=f"{item.key} (second copy)", key=None, patient_id=item.patient_id,
                study_instance_uid=item.study_instance_uid, source=item.source,
                files=item.files,
                problem=(f"the same study (patient folder and StudyInstanceUID {item.key}) is "
                         f"also in {_describe(first)}; it is staged once, from there. Remove "
                         "the duplicate copy from the input."),
                problem_type="DuplicateStudy"))
            continue
        if item.key is not None and item.problem is None:
            seen[item.key] = item
        out.append(item)
    return out


def _describe(item: BatchItem) -> str:
    return item.source.describe() if item.source is not None else item.label


def _discover_dicom_tree(root: Path) -> list[BatchItem]:
    from imaging import dicom

    inventory = dicom.discover(root)
    if inventory.skipped:
        logger.info("%s: skipped %s", root, ", ".join(
            f"{n} {reason} file(s)" for reason, n in sorted(inventory.skipped.items())))
    return [_item_from_study(root, study) for study in inventory.studies]


def _item_from_study(root: Path, study: Any) -> BatchItem:
    """A batch item from one ``imaging.dicom.StudyInventory``."""
    pet, ct = study.pet, study.ct
    pet_files = tuple(pet.files) if pet is not None else ()
    files = tuple(sorted(set(pet_files) | set(ct.files if ct is not None else ())))
    every = [f for s in study.series for f in s.files]
    folder = Path(os.path.commonpath([str(f.parent) for f in (files or every)])) if (
        files or every) else root
    key = study_key(study.patient_id, study.study_instance_uid)
    problem = None
    if pet is None or ct is None:
        missing = "no usable PET series" if pet is None else "no usable CT series for the PET"
        why = "; ".join(f"series {uid[-12:]}: {reason}"
                        for uid, reason in sorted(study.reasons.items()))
        problem = f"{missing} in {folder}" + (f" ({why})" if why else "")
    source = (StudySource.from_dicom(folder, pet_series_uid=pet.series_instance_uid)
              if problem is None and pet is not None else None)
    return BatchItem(label=key, key=key, patient_id=study.patient_id,
                     study_instance_uid=study.study_instance_uid, source=source, files=files,
                     problem=problem, problem_type="NoUsableSeriesError", pet_files=pet_files)


_MANIFEST_HELP = (
    "A manifest has a header row and, per study, either a `path` column (a DICOM folder of one "
    "study) or `pet` and `ct` columns (NIfTI: PET already in SUV, CT in HU); `patient_id` is "
    "required for NIfTI rows, and an optional `study_uid` column names the study folder. "
    "Relative paths are relative to the manifest's folder."
)


def read_manifest(path: Path) -> list[BatchItem]:
    """Read a manifest CSV into batch items.

    Columns: ``patient_id``, and either ``path`` (a DICOM folder holding one study; optional
    ``pet_series_uid``) or ``pet`` and ``ct`` (NIfTI files). Optional ``study_uid`` names the
    study folder (NIfTI rows without it use ``nifti-`` and a hash of the PET path). Relative
    paths are relative to the manifest's folder.

    Raises
    ------
    ConfigError
        If the file is missing, lacks the needed columns, or a row names no input.
    """
    if not path.is_file():
        raise ConfigError(f"Manifest {path} does not exist.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if "path" not in columns and not {"pet", "ct"} <= set(columns):
        raise ConfigError(f"{path}: columns {columns} name no input. {_MANIFEST_HELP}")
    base = path.parent
    items: list[BatchItem] = []
    for number, row in enumerate(rows, start=2):
        patient_id = row.get("patient_id") or None
        study_uid = row.get("study_uid") or None
        where = f"{path.name} row {number}"
        if row.get("path"):
            folder = (base / row["path"]).resolve()
            items.extend(_manifest_dicom(folder, patient_id, study_uid,
                                         row.get("pet_series_uid") or None, where))
        elif row.get("pet"):
            pet = (base / row["pet"]).resolve()
            ct = (base / row["ct"]).resolve() if row.get("ct") else None
            items.append(_manifest_nifti(pet, ct, patient_id, study_uid, base, where))
        else:
            raise ConfigError(f"{where}: neither `path` nor `pet` is filled in. "
                              f"{_MANIFEST_HELP}")
    return items


def _manifest_nifti(pet: Path, ct: Path | None, patient_id: str | None, study_uid: str | None,
                    base: Path, where: str) -> BatchItem:
    if patient_id is None:
        raise ConfigError(f"{where}: a NIfTI row needs a patient_id. {_MANIFEST_HELP}")
    if study_uid is None:
        rel = str(pet.relative_to(base)) if pet.is_relative_to(base) else str(pet)
        study_uid = "nifti-" + hashlib.sha256(rel.encode()).hexdigest()[:12]
    key = study_key(patient_id, study_uid)
    missing = [str(p) for p in (pet, ct) if p is not None and not p.is_file()]
    problem = None
    if missing:
        problem = f"{where}: file(s) not found: {', '.join(missing)}"
    elif ct is None:
        problem = f"{where}: no CT given (`ct` column empty); staging needs the CT for anatomy."
    return BatchItem(label=key, key=key, patient_id=patient_id, study_instance_uid=study_uid,
                     source=None if problem else StudySource.from_nifti(
                         pet, ct, patient_id=patient_id),
                     files=tuple(p for p in (pet, ct) if p is not None and p.is_file()),
                     problem=problem, problem_type="ManifestError")


def _manifest_dicom(folder: Path, patient_id: str | None, study_uid: str | None,
                    pet_series_uid: str | None, where: str) -> list[BatchItem]:
    if not folder.is_dir():
        return [BatchItem(label=str(folder), key=None, patient_id=patient_id,
                          study_instance_uid=study_uid, source=None,
                          problem=f"{where}: folder {folder} does not exist.",
                          problem_type="ManifestError")]
    found = _discover_dicom_tree(folder)
    if pet_series_uid is not None:
        found = [it for it in found if it.source is not None
                 and it.source.pet_series_uid == pet_series_uid] or found
    if study_uid is not None:
        found = [it for it in found if it.study_instance_uid == study_uid] or found
    if len(found) == 1:
        return found
    if not found:
        return [BatchItem(label=str(folder), key=None, patient_id=patient_id,
                          study_instance_uid=study_uid, source=None,
                          problem=f"{where}: no DICOM PET/CT study found in {folder}.",
                          problem_type="NoUsableSeriesError")]
    return [BatchItem(label=str(folder), key=None, patient_id=patient_id,
                      study_instance_uid=study_uid, source=None,
                      problem=(f"{where}: {folder} holds {len(found)} studies; add `study_uid` "
                               "or `pet_series_uid` to the row, or give the folder tree as "
                               "INPUT."), problem_type="ManifestError")]


# --------------------------------------------------------------------------------------------
# The output folder: identity, lock, recovery
# --------------------------------------------------------------------------------------------

def _state(out_dir: Path) -> Path:
    return out_dir / _STATE_DIR


def _db_label(db_url: str | None, out_dir: Path) -> str:
    """How the output folder remembers its database (no passwords; default is relative)."""
    if db_url is None:
        return "default"
    url = db.database_url(db_url)
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _open_output_folder(out_dir: Path, db_url: str | None) -> str:
    """Create or check OUTDIR's identity file; return its id.

    Raises
    ------
    ConfigError
        If OUTDIR holds other files but no earlier run, or was staged into another database.
    """
    state = _state(out_dir)
    ident = state / "outdir.json"
    label = _db_label(db_url, out_dir)
    if ident.is_file():
        info = json.loads(ident.read_text())
        if info.get("database") != label:
            raise ConfigError(
                f"{out_dir} was staged into database {info.get('database')!r} "
                f"({'OUTDIR/results.db' if info.get('database') == 'default' else '--db'}); "
                f"this run names {label!r}. Pass the same --db, or use a new output folder.")
        return str(info["outdir_id"])
    if out_dir.exists() and any(p.name != _DEFAULT_DB for p in out_dir.iterdir()):
        raise ConfigError(
            f"Output folder {out_dir} is not empty and holds no earlier psma-stage run; choose a "
            "new or empty folder (psma-stage deletes incomplete results in its output folder "
            "and must not touch anything else).")
    state.mkdir(parents=True, exist_ok=True)
    outdir_id = str(uuid.uuid4())
    tmp = state / "outdir.json.tmp"
    tmp.write_text(json.dumps({"outdir_id": outdir_id, "database": label,
                               "software_version": __version__}, indent=2))
    os.replace(tmp, ident)
    return outdir_id


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    state = _state(out_dir)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"Another psma-stage run (pid {holder}) is using {out_dir}; wait for it to "
                "finish, or stage into another folder.") from err
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _study_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_matches(folder: Path, stored: db.StoredStudy) -> bool:
    staging_json = folder / "staging.json"
    if not staging_json.is_file() or _digest(staging_json) != stored.result_digest:
        return False
    for name, size in stored.files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _study_folders(out_dir: Path) -> Iterator[Path]:
    for patient in sorted(out_dir.iterdir()):
        if not patient.is_dir() or patient.name.startswith("."):
            continue
        for study in sorted(patient.iterdir()):
            if study.is_dir() and not study.name.startswith("."):
                yield study


def recover_output_folder(out_dir: Path, engine: Engine) -> list[str]:
    """Restore "folder exists if and only if its rows exist and match" after a crash.

    Deletes temporary folders; deletes the rows of studies whose folder is missing or differs
    from what the rows record (staging.json digest, file sizes); deletes study folders (those
    holding a staging.json) without matching rows; marks runs left ``running`` as
    ``interrupted``. Must run under the output folder's lock.

    Returns
    -------
    list of str
        Keys of the studies whose incomplete result was removed (they will be staged again).
    """
    state = _state(out_dir)
    for sub in ("staging", "trash"):
        _remove_tree(state / sub)
    interrupted = db.mark_interrupted_runs(engine)
    if interrupted:
        logger.warning("%d earlier run(s) ended without finishing (killed or crashed); "
                       "recovering their output", interrupted)
    removed: list[str] = []
    trash = state / "trash"
    trash.mkdir(parents=True, exist_ok=True)
    stored = db.stored_studies(engine)
    good: set[str] = set()
    for key, record in stored.items():
        folder = out_dir / key
        if folder.is_dir() and _folder_matches(folder, record):
            good.add(key)
            continue
        db.delete_study(engine, key)
        removed.append(key)
        logger.warning("%s: result incomplete after an interruption; it will be staged again",
                       key)
    for folder in list(_study_folders(out_dir)):
        key = f"{folder.parent.name}/{folder.name}"
        if key in good:
            continue
        if (folder / "staging.json").is_file():
            os.rename(folder, trash / uuid.uuid4().hex)
            if key not in removed:
                removed.append(key)
                logger.warning("%s: study folder without database rows (interrupted before "
                               "its commit); it will be staged again", key)
        else:
            logger.warning("%s: folder without staging.json left untouched; it is not a "
                           "psma-stage result", folder)
    for patient in out_dir.iterdir():
        if patient.is_dir() and not patient.name.startswith(".") and not any(patient.iterdir()):
            patient.rmdir()
    _remove_tree(trash)
    return removed


# --------------------------------------------------------------------------------------------
# Planning (also the --validate dry run)
# --------------------------------------------------------------------------------------------

def _header_problem(item: BatchItem, config: Any) -> tuple[str, str] | None:
    """Check the PET headers SUV needs, without pixel data (the ``--validate`` dry run)."""
    if not item.pet_files:
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    from imaging.suv import compute_suv_factors

    try:
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in item.pet_files]
    except (InvalidDicomError, OSError) as err:
        return type(err).__name__, f"a PET file cannot be read: {err}"
    suv_type = "bw"
    overrides = None
    suv_section = getattr(config, "suv", None)
    if suv_section is not None:
        suv_type = getattr(suv_section, "suv_type", getattr(suv_section, "type", "bw")) or "bw"
        to_overrides = getattr(suv_section, "overrides", None)
        overrides = to_overrides() if callable(to_overrides) else to_overrides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_suv_factors(headers, suv_type=suv_type, overrides=overrides,
                                paths=list(item.pet_files))
    except PipelineError as err:
        return type(err).__name__, str(err)
    return None


def _item_hash(item: BatchItem) -> str:
    if item.source is not None and item.source.kind == "dicom":
        root = item.source.dicom_dir
        assert root is not None
        return input_hash(item.files or _files_under(root), root=root)
    return input_hash(item.files)


def plan_batch(items: Sequence[BatchItem], *, stored: Mapping[str, db.StoredStudy],
               config_hash: str, force: bool = False, check_headers: bool = False,
               config: Any = None) -> list[PlannedItem]:
    """Decide per item: ``stage``, ``skip`` (inputs and configuration unchanged) or ``fail``.

    Parameters
    ----------
    items : sequence of BatchItem
    stored : mapping
        The studies already in the database (:func:`staging.database.stored_studies`).
    config_hash : str
        Hash of the configuration of this run.
    force : bool
        Stage every item even when unchanged.
    check_headers : bool
        Also check the PET headers SUV needs (``--validate``; reads headers only).
    """
    plan = []
    for item in items:
        if item.problem is not None:
            plan.append(PlannedItem(item, "fail", f"{item.problem_type}: {item.problem}"))
            continue
        try:
            digest = _item_hash(item)
        except OSError as err:
            plan.append(PlannedItem(item, "fail", f"{type(err).__name__}: input unreadable: "
                                    f"{err}"))
            continue
        if check_headers:
            problem = _header_problem(item, config)
            if problem is not None:
                plan.append(PlannedItem(item, "fail", f"{problem[0]}: {problem[1]}", digest))
                continue
        known = stored.get(item.key or "")
        if (not force and known is not None and known.input_hash == digest
                and known.config_hash == config_hash):
            plan.append(PlannedItem(item, "skip", "inputs and configuration unchanged", digest))
        elif known is None:
            plan.append(PlannedItem(item, "stage", "new", digest))
        elif force:
            plan.append(PlannedItem(item, "stage", "--force", digest))
        elif known.input_hash != digest:
            plan.append(PlannedItem(item, "stage", "inputs changed", digest))
        else:
            plan.append(PlannedItem(item, "stage", "configuration changed", digest))
    return plan


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Job:
    key: str
    source: StudySource
    work_dir: Path
    config: Any
    stage_fn: StageFunction | None
    link_files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class _Outcome:
    key: str
    ok: bool
    record: dict[str, Any] | None
    error_type: str
    message: str
    elapsed_s: float


def _watch_parent(pid: int) -> None:
    """Exit this worker as soon as the batch process ``pid`` is gone (killed with -9 too).

    A pool worker blocks on its task queue forever once the batch process is gone, and under
    the forkserver its parent is the fork server (which itself waits for the workers), so
    ``PR_SET_PDEATHSIG`` alone cannot end it.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):  # no pidfd (old kernel): poll
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                continue
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(1)


def _init_worker(log_level: int, parent_pid: int) -> None:
    """Worker set-up: die with the batch process, log to stderr, warnings through logging."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="psma-stage-parent-watch").start()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # parent already gone between fork and prctl
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # the parent reports each study; a worker adds its warnings, or everything under -vv
    root.setLevel(log_level if log_level <= logging.DEBUG else max(log_level, logging.WARNING))
    logging.captureWarnings(True)


def _link_inputs(files: Sequence[Path], root: Path, target: Path) -> Path:
    """A private input folder of symlinks to exactly this study's files (same relative paths).

    In a flat or mixed export the study's folder also holds other studies; the loader then
    reads only this study's files, and a message naming ``target/<rel>`` maps back to
    ``root/<rel>``.
    """
    for path in files:
        link = target / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), link)
    return target


def _stage_worker(job: _Job) -> _Outcome:
    """Stage one study into ``job.work_dir/study``; never raises for a bad study."""
    start = time.perf_counter()
    stage_fn = job.stage_fn
    try:
        if stage_fn is None:
            from staging.pipeline import stage_study

            stage_fn = stage_study
        source = job.source
        if job.link_files and source.kind == "dicom" and source.dicom_dir is not None:
            folder = _link_inputs(job.link_files, source.dicom_dir, job.work_dir / "input")
            source = StudySource.from_dicom(folder, pet_series_uid=source.pet_series_uid)
        result = stage_fn(source, job.work_dir / "study", config=job.config)
        record = getattr(result, "record", None)
        if record is None:
            record = json.loads((job.work_dir / "study" / "staging.json").read_text())
        record = json.loads(json.dumps(dict(record), default=str))
        return _Outcome(job.key, True, record, "", "", time.perf_counter() - start)
    except PipelineError as err:
        message = str(err)
        if job.source.dicom_dir is not None:  # name the user's files, not the private links
            message = message.replace(str(job.work_dir / "input"), str(job.source.dicom_dir))
        return _Outcome(job.key, False, None, type(err).__name__, message,
                        time.perf_counter() - start)
    except MemoryError:
        return _Outcome(job.key, False, None, "MemoryError",
                        "out of memory while staging; rerun with fewer --jobs",
                        time.perf_counter() - start)
    except Exception as err:
        logger.debug("%s: internal error", job.key, exc_info=True)
        return _Outcome(job.key, False, None, type(err).__name__,
                        f"internal error {type(err).__name__}: {err} (please report it; rerun "
                        "this study alone with `psma-stage stage -vv` for the traceback)",
                        time.perf_counter() - start)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes (the executor has no public way to do it)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(OSError, AttributeError):
            process.kill()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def _default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


def run_batch(items: Sequence[BatchItem], out_dir: Path, *, config: _Config,
              db_url: str | None = None, jobs: int | None = None, force: bool = False,
              fail_fast: bool = False, limit: int | None = None, input_label: str = "",
              stage_fn: StageFunction | None = None,
              progress: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
    """Stage every item into ``out_dir/<patient>/<study>/`` and record it in the database.

    Parameters
    ----------
    items : sequence of BatchItem
        From :func:`discover_batch`.
    out_dir : Path
        The output folder (created; must be new, empty, or an earlier run's).
    config : PipelineConfig
        Resolved configuration (``hash()`` and ``to_dict()`` are stored with each run).
    db_url : str, optional
        SQLAlchemy URL or SQLite path; default ``out_dir/results.db``.
    jobs : int, optional
        Worker processes (default: number of cores).
    force : bool
        Restage unchanged studies too (default: skip them).
    fail_fast : bool
        Stop at the first failure (studies already running finish and are kept).
    limit : int, optional
        Only the first ``limit`` items (in key order).
    input_label : str
        The INPUT as the user gave it (stored with the run).
    stage_fn : callable, optional
        Replaces :func:`staging.pipeline.stage_study` (must be picklable: a module-level
        function).
    progress : callable, optional
        Called with a :class:`BatchEvent` after each item.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ConfigError
        If ``jobs`` < 1, the output folder is foreign or locked by another run, or the database
        is not the one this output folder was staged into.
    DatabaseError
        If the database cannot be used.
    """
    jobs = _default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}.")
    out_dir = out_dir.resolve()
    outdir_id = _open_output_folder(out_dir, db_url)
    with _locked(out_dir):
        url = db.database_url(db_url if db_url is not None else out_dir / _DEFAULT_DB)
        engine = db.open_database(url)
        try:
            db.bind_output_folder(engine, outdir_id=outdir_id, out_dir=out_dir)
            recovered = recover_output_folder(out_dir, engine)
            chosen = list(items)[:limit] if limit is not None else list(items)
            runner = _Runner(out_dir=out_dir, engine=engine, config=config, jobs=jobs,
                             fail_fast=fail_fast, stage_fn=stage_fn, progress=progress)
            summary = runner.run(chosen, force=force, input_label=input_label)
        finally:
            engine.dispose()
    return BatchSummary(run_id=summary.run_id, out_dir=out_dir, database_url=_db_label(
        db_url, out_dir) if db_url is not None else str(out_dir / _DEFAULT_DB),
        n_items=summary.n_items, n_staged=summary.n_staged, n_skipped=summary.n_skipped,
        n_failed=summary.n_failed, not_attempted=summary.not_attempted,
        elapsed_s=summary.elapsed_s, failures=summary.failures, recovered=tuple(recovered))


class _Runner:
    """One run: plans, feeds the pool, promotes results and commits them (parent only)."""

    def __init__(self, *, out_dir: Path, engine: Engine, config: _Config, jobs: int,
                 fail_fast: bool, stage_fn: StageFunction | None,
                 progress: Callable[[BatchEvent], None] | None) -> None:
        self.out_dir = out_dir
        self.engine = engine
        self.config = config
        self.config_hash = config.hash()
        self.jobs = jobs
        self.fail_fast = fail_fast
        self.stage_fn = stage_fn
        self.progress = progress
        self.staged = self.skipped = self.failed = 0
        self.total = 0
        self.failures: list[tuple[str, str, str]] = []
        self.start = time.perf_counter()
        self.work_root = _state(out_dir) / "staging"
        self.trash = _state(out_dir) / "trash"
        self.run_id = -1
        self.sequence = 0

    # -- bookkeeping ---------------------------------------------------------------------
    def _emit(self, kind: Literal["start", "staged", "skipped", "failed"], label: str,
              message: str = "", elapsed_s: float = 0.0) -> None:
        if self.progress is not None:
            self.progress(BatchEvent(kind, label, self.total, self.staged, self.skipped,
                                     self.failed, message, elapsed_s))

    def _fail(self, item: BatchItem, error_type: str, message: str,
              digest: str | None = None) -> None:
        db.record_failure(self.engine, run_id=self.run_id,
                          item_key=item.key or f"path:{_describe(item)}",
                          source=_describe(item), error_type=error_type, message=message,
                          patient_id=item.patient_id, study_instance_uid=item.study_instance_uid,
                          input_hash=digest, config_hash=self.config_hash)
        self.failed += 1
        self.failures.append((item.label, error_type, message))
        logger.warning("%s: failed: %s: %s", item.label, error_type, message)
        self._emit("failed", item.label, f"{error_type}: {message}")

    # -- the run -------------------------------------------------------------------------
    def run(self, items: Sequence[BatchItem], *, force: bool, input_label: str) -> BatchSummary:
        self.total = len(items)
        self.run_id = db.start_run(self.engine, input=input_label, out_dir=self.out_dir,
                                   software_version=__version__, config_hash=self.config_hash,
                                   config=self.config.to_dict(), jobs=self.jobs)
        status = "interrupted"
        not_attempted = 0
        try:
            plan = plan_batch(items, stored=db.stored_studies(self.engine),
                              config_hash=self.config_hash, force=force)
            queue: deque[PlannedItem] = deque()
            for planned in plan:
                if planned.action == "fail":
                    error_type, _, message = planned.reason.partition(": ")
                    self._fail(planned.item, error_type, message, planned.input_hash)
                elif planned.action == "skip":
                    assert planned.item.key is not None
                    db.clear_failure(self.engine, planned.item.key)
                    self.skipped += 1
                    self._emit("skipped", planned.item.label, planned.reason)
                else:
                    queue.append(planned)
            self._emit("start", "")  # discovery failures and unchanged studies are done
            if self.fail_fast and self.failed:
                not_attempted = len(queue)
                queue.clear()
            not_attempted += self._stage_all(queue)
            status = "finished"
        finally:
            db.finish_run(self.engine, self.run_id, status=status, n_discovered=self.total,
                          n_staged=self.staged, n_skipped=self.skipped, n_failed=self.failed)
        return BatchSummary(run_id=self.run_id, out_dir=self.out_dir, database_url="",
                            n_items=self.total, n_staged=self.staged, n_skipped=self.skipped,
                            n_failed=self.failed, not_attempted=not_attempted,
                            elapsed_s=time.perf_counter() - self.start,
                            failures=tuple(self.failures))

    def _job(self, planned: PlannedItem) -> _Job:
        self.sequence += 1
        assert planned.item.key is not None
        assert planned.item.source is not None
        work_dir = self.work_root / f"{self.run_id}-{self.sequence:06d}"
        work_dir.mkdir(parents=True)
        link = planned.item.files if planned.item.source.kind == "dicom" else ()
        return _Job(planned.item.key, planned.item.source, work_dir, self.config, self.stage_fn,
                    link)

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver: workers start from a clean single-threaded process (no inherited locks,
        # DB connections or file descriptors such as the output-folder lock) that has this
        # module preloaded, so a pool starts in a fraction of a second
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["staging.batch"])
        return ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=context,
            initializer=_init_worker,
            initargs=(logging.getLogger().getEffectiveLevel(), os.getpid()))

    def _stage_all(self, queue: deque[PlannedItem]) -> int:
        """Stage the queue over the pool; return how many were left undone (--fail-fast)."""
        if not queue:
            return 0
        pool = self._new_pool()
        running: dict[Future[_Outcome], tuple[PlannedItem, _Job]] = {}
        stop = False
        try:
            while queue or running:
                while queue and not stop and len(running) < self.jobs:
                    planned = queue.popleft()
                    job = self._job(planned)
                    running[pool.submit(_stage_worker, job)] = (planned, job)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    planned, job = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        outcome = _Outcome(
                            job.key, False, None, "WorkerDied",
                            "the worker process died while this study was being staged "
                            "(killed, out of memory, or a crash in a native library); rerun to "
                            "retry, with fewer --jobs if memory is short", 0.0)
                    self._finish(planned, job, outcome)
                    if not outcome.ok and self.fail_fast:
                        stop = True
                if broken:
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._new_pool()
                if stop:
                    leftover = len(queue)
                    queue.clear()
                    if not running:
                        return leftover
                    for future in list(running):
                        planned, job = running.pop(future)
                        try:
                            outcome = future.result()
                        except BrokenProcessPool:
                            outcome = _Outcome(job.key, False, None, "WorkerDied",
                                               "the worker process died", 0.0)
                        self._finish(planned, job, outcome)
                    return leftover
            return 0
        except BaseException:
            # Ctrl-C or an unusable database: stop the workers now rather than after their
            # studies; what they leave is temporary and the next start removes it
            _kill_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _finish(self, planned: PlannedItem, job: _Job, outcome: _Outcome) -> None:
        item = planned.item
        try:
            if outcome.ok:
                try:
                    self._promote(planned, job, outcome)
                except db.DatabaseError:
                    raise  # the database is unusable: stop the run, recovery tidies up
                except PipelineError as err:
                    self._fail(item, type(err).__name__, str(err), planned.input_hash)
                    return
                self.staged += 1
                logger.info("%s: staged in %.1f s", item.label, outcome.elapsed_s)
                self._emit("staged", item.label, elapsed_s=outcome.elapsed_s)
            else:
                self._fail(item, outcome.error_type, outcome.message, planned.input_hash)
        finally:
            _remove_tree(job.work_dir)

    def _promote(self, planned: PlannedItem, job: _Job, outcome: _Outcome) -> None:
        """Rename the finished folder into place, then commit its rows (see module notes)."""
        item = planned.item
        assert item.key is not None
        assert outcome.record is not None
        result_dir = job.work_dir / "study"
        staging_json = result_dir / "staging.json"
        if not staging_json.is_file():
            raise PipelineError(f"staging wrote no staging.json into {result_dir}")
        record = outcome.record
        for name, expected in (("patient_id", item.patient_id),
                               ("study_instance_uid", item.study_instance_uid)):
            if expected is not None and str(record.get(name)) != expected:
                logger.warning("%s: staging.json %s differs from the one discovery read; the "
                               "folder follows discovery", item.label, name)
        files = _study_files(result_dir)
        digest = _digest(staging_json)
        final = self.out_dir / item.key
        final.parent.mkdir(parents=True, exist_ok=True)
        previous: Path | None = None
        if final.exists():
            self.trash.mkdir(parents=True, exist_ok=True)
            previous = self.trash / uuid.uuid4().hex
            os.rename(final, previous)
        os.rename(result_dir, final)
        _fsync_dir(final.parent)
        try:
            db.record_study(self.engine, run_id=self.run_id, key=item.key,
                            record={**record, "patient_id": record.get("patient_id")
                                    or item.patient_id},
                            source=_describe(item), input_hash=planned.input_hash or "",
                            config_hash=self.config_hash, result_digest=digest, files=files,
                            elapsed_s=outcome.elapsed_s)
        except (SQLAlchemyError, KeyError, TypeError, ValueError) as err:
            # put the folder back as it was, so folder and rows still agree
            os.rename(final, job.work_dir / "rejected")
            if previous is not None:
                os.rename(previous, final)
            if isinstance(err, SQLAlchemyError):
                raise db.DatabaseError(
                    f"{item.label}: writing the study's rows failed: {err}") from err
            raise PipelineError(
                f"staging.json of {item.label} lacks or mistypes a field the database needs "
                f"({type(err).__name__}: {err})") from err
        if previous is not None:
            _remove_tree(previous)
