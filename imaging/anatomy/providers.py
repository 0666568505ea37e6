"""Model providers: TotalSegmentator and MOOSE output mapped by NAME to canonical masks.

Accepted layouts (domain.md 3.5):

* a multilabel NIfTI whose label names are in its header (TotalSegmentator ``--ml`` writes a
  CaretExtension XML label table) or in a JSON file ``{id: name}`` beside it
  (``<file>.json`` or ``label_names.json``);
* a folder of per-class NIfTIs named ``<class>.nii.gz`` (TotalSegmentator default output,
  MOOSE ``segmentations/`` with per-class files).

Masks are put on the labeller's working grid (nearest neighbour, physical space), so a provider
run on the CT grid, a resampled CT or a cropped CT all work.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from imaging.anatomy.grid import WorkGrid, resample_onto
from imaging.anatomy.names import LANDMARK_ROLES, NameMapping, map_label_name
from imaging.errors import AnatomyError, PipelineError
from imaging.nifti import read_nifti
from imaging.vocabulary import AnatomyLabel
from imaging.volume import Volume

__all__ = ["ProviderMasks", "label_names_from_nifti", "load_provider_masks"]

logger = logging.getLogger(__name__)

_LABEL_RE = re.compile(r'<Label\s+Key="(\d+)"[^>]*>\s*(?:<!\[CDATA\[)?([^<\]]+)')


@dataclass(frozen=True, slots=True)
class ProviderMasks:
    """Canonical masks from a model provider, on the working grid."""

    name: str
    masks: dict[AnatomyLabel, NDArray[np.bool_]]
    sources: dict[AnatomyLabel, list[str]]
    roles: dict[str, NDArray[np.bool_]]
    mapping: dict[str, NameMapping]


def label_names_from_nifti(path: Path) -> dict[int, str]:
    """Label id -> name from a multilabel NIfTI's header table or a JSON file beside it.

    Raises
    ------
    AnatomyError
        If no label names can be found (indices are never guessed).
    """
    import nibabel as nib

    img = nib.load(str(path))
    for ext in getattr(img.header, "extensions", ()):
        text = ext.get_content()
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        found = {int(k): v.strip() for k, v in _LABEL_RE.findall(str(text))}
        if found:
            return found
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    for candidate in (path.with_name(stem + ".json"), path.with_name("label_names.json")):
        if candidate.is_file():
            try:
                raw = json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise AnatomyError(f"{candidate}: not valid JSON ({err}); expected "
                                   '{"1": "spleen", ...}.') from err
            return {int(k): str(v) for k, v in raw.items()}
    raise AnatomyError(
        f"{path}: a multilabel NIfTI without label names (no label table in its header and no "
        f"{stem}.json or label_names.json beside it). Labels are mapped by name, never by "
        "index: rerun TotalSegmentator with --ml (it writes the names) or add the JSON."
    )


def _read(path: Path) -> Volume:
    try:
        return read_nifti(path, unit="label")
    except PipelineError as err:
        raise AnatomyError(f"Cannot read provider output {path}: {err}") from err


def load_provider_masks(path: Path, *, kind: str, grid: WorkGrid, ct: Volume) -> ProviderMasks:
    """Read a TotalSegmentator / MOOSE output and map its classes to canonical masks.

    Raises
    ------
    AnatomyError
        If the path is missing, holds no NIfTI, has no label names, or does not overlap the CT.
    """
    path = Path(path)
    if not path.exists():
        raise AnatomyError(f"{kind} output {path} does not exist; give the multilabel NIfTI "
                           "or the folder of per-class NIfTIs.")
    masks: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    sources: dict[AnatomyLabel, list[str]] = {}
    roles: dict[str, NDArray[np.bool_]] = {}
    mapping: dict[str, NameMapping] = {}

    def add(name: str, mask: NDArray[np.bool_]) -> None:
        m = map_label_name(name)
        mapping[name] = m
        if not m.known:
            logger.warning("%s label %r is not in the name table; ignored", kind, name)
        if name.lower() in LANDMARK_ROLES:
            roles[LANDMARK_ROLES[name.lower()]] = mask
        if m.label is None or not mask.any():
            return
        masks[m.label] = masks[m.label] | mask if m.label in masks else mask
        sources.setdefault(m.label, []).append(name)

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise AnatomyError(f"{path}: no .nii / .nii.gz files in the {kind} output folder.")
        for f in files:
            vol = _read(f)
            name = f.name.removesuffix(".gz").removesuffix(".nii")
            binary = vol.with_array((np.asarray(vol.array) > 0).astype(np.uint8), unit="mask")
            arr = resample_onto(binary, grid, fill=0, nearest=True)
            add(name, arr > 0.5)
    else:
        names = label_names_from_nifti(path)
        vol = _read(path)
        arr = resample_onto(vol, grid, fill=0, nearest=True).astype(np.int32)
        present = set(np.unique(arr).tolist()) - {0}
        for value, name in sorted(names.items()):
            if value in present:
                add(name, arr == value)
            else:
                mapping[name] = map_label_name(name)
        unnamed = present - set(names)
        if unnamed:
            logger.warning("%s: label values %s have no name; ignored", path, sorted(unnamed))
    if not masks:
        raise AnatomyError(f"{path}: no {kind} class maps to a canonical label inside the CT "
                           "field of view; check that it was run on this CT.")
    del ct
    return ProviderMasks(name=kind, masks=masks, sources=sources, roles=roles, mapping=mapping)
