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


def _extent_mm(volume: Volume) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LPS (x, y, z) box, in mm, spanned by the outer voxel faces of ``volume``."""
    nk, nj, ni = volume.shape
    corners = np.array([[k, j, i] for k in (-0.5, nk - 0.5) for j in (-0.5, nj - 0.5)
                        for i in (-0.5, ni - 0.5)], dtype=np.float64)
    world = volume.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _check_overlap(path: Path, kind: str, extents: list[tuple[NDArray[np.float64],
                                                               NDArray[np.float64]]],
                   ct: Volume) -> None:
    """Raise when no provider image overlaps the CT's box."""
    ct_lo, ct_hi = _extent_mm(ct)
    if any(bool(np.all(lo <= ct_hi) and np.all(ct_lo <= hi)) for lo, hi in extents):
        return

    def box(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> str:
        return ", ".join(f"{axis} {a:.1f}..{b:.1f}" for axis, a, b in zip("xyz", lo, hi,
                                                                           strict=True))

    lo = np.min([e[0] for e in extents], axis=0)
    hi = np.max([e[1] for e in extents], axis=0)
    raise AnatomyError(
        f"{path}: the {kind} output covers LPS {box(lo, hi)} mm but the CT covers LPS "
        f"{box(ct_lo, ct_hi)} mm; they do not overlap, so it was not run on this CT (or its "
        f"NIfTI affine is wrong). Give the {kind} output of this study's CT, or rerun {kind} "
        "on it."
    )


@dataclass(slots=True)
class _Stack:
    """Per-class masks of one source geometry packed into label layers (one value per file).

    Classes that do not overlap share a layer, so one nearest-neighbour resampling of a layer
    puts all of them on the working grid: a voxel takes the value of the source voxel it is
    nearest to, whatever that value is, so ``layer == value`` on the working grid is exactly
    the class's own mask resampled alone.
    """

    volume: Volume
    layers: list[NDArray[np.uint8]]
    counts: list[int]

    def add(self, mask: NDArray[np.bool_]) -> tuple[int, int]:
        """Store ``mask``; its (layer, value)."""
        for n, layer in enumerate(self.layers):
            if self.counts[n] < 255 and not layer[mask].any():
                break
        else:
            self.layers.append(np.zeros(mask.shape, dtype=np.uint8))
            self.counts.append(0)
            n = len(self.layers) - 1
        self.counts[n] += 1
        self.layers[n][mask] = self.counts[n]
        return n, self.counts[n]


def load_provider_masks(path: Path, *, kind: str, grid: WorkGrid, ct: Volume) -> ProviderMasks:
    """Read a TotalSegmentator / MOOSE output and map its classes to canonical masks.

    Parameters
    ----------
    path : Path
        A multilabel NIfTI with label names, or a folder of per-class ``<class>.nii.gz``.
    kind : str
        Provider name (``"totalsegmentator"`` or ``"moose"``), used in messages.
    grid : WorkGrid
        The labeller's working grid; every mask is put on it by nearest neighbour.
    ct : Volume
        The CT the provider is supposed to have segmented; only its extent is read.

    Returns
    -------
    ProviderMasks
        Masks ``(nz, ny, nx)`` bool on ``grid``; ``sources`` lists, per label and in file-name
        order, the classes whose mask has a voxel on the grid; ``roles`` holds the landmark
        classes' own masks.

    Raises
    ------
    AnatomyError
        If the path is missing, holds no NIfTI, has no label names, does not overlap the CT
        (no provider image box meets the CT's box), or no class maps to a canonical label
        inside the working grid.

    Notes
    -----
    A folder is read one file at a time; files of one source geometry are packed into uint8
    label layers (a file per value; a file that overlaps an earlier one goes to a new layer),
    so nearest-neighbour resampling runs once per layer, not once per file. The result is the
    same as resampling every file alone and OR-ing by canonical label.
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
        # each file is read once and packed into label layers per source geometry; a layer is
        # resampled once and every class, canonical mask and role is cut from it (see _Stack)
        stacks: dict[tuple[object, ...], _Stack] = {}
        placed: list[tuple[str, _Stack, int, int]] = []
        for f in files:
            vol = _read(f)
            key = (vol.shape, tuple(vol.spacing), tuple(vol.origin),
                   np.asarray(vol.direction).tobytes())
            if key not in stacks:
                stacks[key] = _Stack(vol, [], [])
            n, value = stacks[key].add(np.asarray(vol.array) > 0)
            placed.append((f.name.removesuffix(".gz").removesuffix(".nii"), stacks[key], n,
                           value))
        del vol
        _check_overlap(path, kind, [_extent_mm(s.volume) for s in stacks.values()], ct)
        on_grid = {id(s): [resample_onto(s.volume.with_array(layer, unit="label"), grid, fill=0,
                                         nearest=True).astype(np.uint8) for layer in s.layers]
                   for s in stacks.values()}
        hits = {id(s): [np.bincount(a.ravel(), minlength=256) for a in on_grid[id(s)]]
                for s in stacks.values()}
        parts: dict[AnatomyLabel, list[tuple[int, int, int]]] = {}
        for name, stack, n, value in placed:
            m = map_label_name(name)
            mapping[name] = m
            if not m.known:
                logger.warning("%s label %r is not in the name table; ignored", kind, name)
            if name.lower() in LANDMARK_ROLES:
                roles[LANDMARK_ROLES[name.lower()]] = on_grid[id(stack)][n] == value
            if m.label is None or not hits[id(stack)][n][value]:
                continue
            parts.setdefault(m.label, []).append((id(stack), n, value))
            sources.setdefault(m.label, []).append(name)
        for label, where in parts.items():
            mask = np.zeros(grid.shape, dtype=bool)
            for sid, n in dict.fromkeys((sid, n) for sid, n, _ in where):
                lut = np.zeros(256, dtype=bool)
                lut[[v for s, k, v in where if (s, k) == (sid, n)]] = True
                mask |= lut[on_grid[sid][n]]
            masks[label] = mask
    else:
        names = label_names_from_nifti(path)
        vol = _read(path)
        _check_overlap(path, kind, [_extent_mm(vol)], ct)
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
    return ProviderMasks(name=kind, masks=masks, sources=sources, roles=roles, mapping=mapping)
