"""``lesions_seg.dcm``: a DICOM Segmentation (highdicom) of the lesions on the source PET series.

One segment per lesion category present (fossa, pelvic node, extrapelvic node, bone, visceral,
equivocal). Frames are built per source PET instance by sampling the lesion label map at the
LPS centre of every pixel of that instance, so the segmentation overlays the PET in any viewer
whatever the loader's internal axis order (head-first or feet-first, any in-plane orientation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from imaging import __version__
from imaging.dicom import raw_floats
from imaging.errors import DicomError
from imaging.vocabulary import LesionCategory
from imaging.volume import Volume
from staging.outputs.mip import CATEGORY_COLORS, CATEGORY_LABELS

__all__ = ["SEGMENT_ORDER", "frame_masks", "write_dicom_seg"]

logger = logging.getLogger(__name__)

SEGMENT_ORDER: tuple[str, ...] = tuple(c.value for c in LesionCategory)
"""Categories in segment order; only categories with lesions get a segment (numbered 1..)."""


def _floats(ds: Dataset, keyword: str, n: int) -> NDArray[np.float64]:
    """A numeric attribute of a source image as ``n`` floats (from its undecoded value)."""
    try:
        value = raw_floats(ds, keyword)
    except ValueError as err:
        raise DicomError(f"source PET image: {keyword} is not numeric ({err}).") from err
    if value is None or value.shape != (n,):
        raise DicomError(f"source PET image: {keyword} is absent or does not hold {n} values.")
    return value


def _index_steps(ds: Dataset, grid: Volume
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Continuous ``(k, j, i)`` index of pixel (0, 0) of one image, and the index steps of one
    column to the right and one row down.

    Pixel ``(r, c)`` lies at ``IPP + c * dc * row_dir + r * dr * col_dir`` (LPS mm); the map to
    continuous voxel indices is affine.
    """
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    row_spacing, col_spacing = _floats(ds, "PixelSpacing", 2)
    start = grid.world_to_index(ipp)
    to_index = np.asarray(grid.direction) / np.asarray(grid.spacing)[None, :]
    return start, (col_spacing * iop[:3]) @ to_index, (row_spacing * iop[3:]) @ to_index


def _slice_index_grid(ds: Dataset, grid: Volume) -> NDArray[np.int64]:
    """Nearest ``(k, j, i)`` voxel of ``grid`` for every pixel centre of one image.

    Returns
    -------
    ndarray of int64, shape (rows, columns, 3)
    """
    start, step_c, step_r = _index_steps(ds, grid)
    r = np.arange(int(ds.Rows), dtype=np.float64)[:, None, None]
    c = np.arange(int(ds.Columns), dtype=np.float64)[None, :, None]
    return np.rint(start + r * step_r + c * step_c).astype(np.int64)


def _integer_indices(start: NDArray[np.float64], step_c: NDArray[np.float64],
                     step_r: NDArray[np.float64], rows: int, columns: int
                     ) -> list[NDArray[np.int64]] | None:
    """The nearest-voxel indices per axis, shape (rows, columns), by integer arithmetic.

    Exact (the same indices as rounding the continuous ones) when pixel (0, 0) lies within
    rounding distance of a voxel centre and the steps are whole voxels: the usual case of a
    segmentation on the grid the PET was loaded to. ``None`` otherwise.
    """
    s0, sc, sr = np.rint(start), np.rint(step_c), np.rint(step_r)
    error = (np.abs(start - s0) + (columns - 1) * np.abs(step_c - sc)
             + (rows - 1) * np.abs(step_r - sr))
    if np.any(error >= 0.49):
        return None
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(columns, dtype=np.int64)[None, :]
    return [int(s0[a]) + r * int(sr[a]) + c * int(sc[a]) for a in range(3)]


def frame_masks(label_map: NDArray[np.integer[Any]], grid: Volume,
                source_images: Sequence[Dataset]) -> NDArray[Any]:
    """Sample a label map (on ``grid``) at the pixels of each source image.

    Returns
    -------
    ndarray, shape (n_images, rows, columns)
        Label value at each pixel centre (nearest voxel; 0 outside the grid).
    """
    first = source_images[0]
    rows, columns = int(first.Rows), int(first.Columns)
    out = np.zeros((len(source_images), rows, columns), dtype=label_map.dtype)
    shape = grid.shape
    for n, ds in enumerate(source_images):
        start, step_c, step_r = _index_steps(ds, grid)
        idx = _integer_indices(start, step_c, step_r, int(ds.Rows), int(ds.Columns))
        if idx is None:
            grid_idx = _slice_index_grid(ds, grid)
            idx = [grid_idx[..., a] for a in range(3)]
        inside = ((idx[0] >= 0) & (idx[0] < shape[0]) & (idx[1] >= 0) & (idx[1] < shape[1])
                  & (idx[2] >= 0) & (idx[2] < shape[2]))
        if inside.all():
            out[n] = label_map[idx[0], idx[1], idx[2]]
        elif inside.any():
            k, j, i = (np.where(inside, a, 0) for a in idx)
            out[n] = np.where(inside, label_map[k, j, i], 0)
    return out


def _segment_map(ids: NDArray[np.integer[Any]], lut: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """``lut[ids]``, computed only inside the bounding box of the nonzero ids (zeros outside)."""
    present = ids > 0
    out = np.zeros(ids.shape, dtype=np.uint8)
    if not present.any():
        return out
    box = tuple(_extent(np.asarray(present.any(axis=other)))
                for other in ((1, 2), (0, 2), (0, 1)))
    out[box] = lut[ids[box]]
    return out


def _extent(hit: NDArray[np.bool_]) -> slice:
    """The slice from the first to the last True of a 1-D mask (which has one)."""
    return slice(int(np.argmax(hit)), hit.size - int(np.argmax(hit[::-1])))


def _images_through_lesions(segment_map: NDArray[Any], grid: Volume,
                            source_images: Sequence[Dataset]) -> list[int]:
    """Indices of the source images whose plane passes through a lesion voxel.

    A pixel samples its nearest voxel, so an image can only hold lesion pixels if a lesion
    voxel centre lies within half a voxel (measured along the image normal) of its plane.
    """
    present = segment_map > 0
    if not present.any():
        return []
    box = tuple(_extent(np.asarray(present.any(axis=other)))
                for other in ((1, 2), (0, 2), (0, 1)))
    corner = np.array([b.start for b in box])
    points = grid.index_to_world(np.argwhere(present[box]) + corner)
    steps = np.asarray(grid.direction) * np.asarray(grid.spacing)[None, :]
    by_normal: dict[tuple[float, ...], list[tuple[int, NDArray[np.float64]]]] = {}
    for n, ds in enumerate(source_images):
        iop = _floats(ds, "ImageOrientationPatient", 6)
        normal = np.cross(iop[:3], iop[3:])
        by_normal.setdefault(tuple(np.round(normal, 6)), []).append(
            (n, _floats(ds, "ImagePositionPatient", 3)))
    keep: list[int] = []
    for key, members in by_normal.items():
        normal = np.asarray(key)
        half = 0.5 * float(np.abs(normal @ steps).sum()) + 1e-3
        offsets = np.sort(points @ normal)
        planes = np.array([ipp for _, ipp in members]) @ normal
        lo = np.searchsorted(offsets, planes - half, side="left")
        hi = np.searchsorted(offsets, planes + half, side="right")
        keep.extend(n for (n, _), a, b in zip(members, lo, hi, strict=True) if b > a)
    return sorted(keep)


def write_dicom_seg(
    labels: Volume,
    categories: Mapping[int, str],
    source_images: Sequence[Dataset],
    path: Path,
    *,
    series_number: int = 901,
) -> Path:
    """Write the lesions as a DICOM Segmentation referencing ``source_images``.

    Parameters
    ----------
    labels : Volume
        Lesion ids (uint16) on the PET grid.
    categories : mapping
        Lesion id -> category value.
    source_images : sequence of pydicom Dataset
        Headers of the source PET series (pixel data not needed).
    path : Path
        Output file.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If there is no lesion to segment (a segmentation needs at least one segment).
    DicomError
        If the source headers cannot carry a segmentation (highdicom's reason is included).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = [c for c in SEGMENT_ORDER if c in set(categories.values())]
    if not present:
        raise ValueError("No lesions: a DICOM Segmentation needs at least one segment.")
    segment_of = {c: n + 1 for n, c in enumerate(present)}
    ids = np.asarray(labels.array)
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint8)
    for lesion_id, category in categories.items():
        if 0 < lesion_id < lut.size:
            lut[lesion_id] = segment_of[category]
    segment_map = _segment_map(ids, lut)
    images = sorted(source_images, key=lambda ds: int(getattr(ds, "InstanceNumber", 0) or 0))
    # only the instances a lesion passes through carry frames: the SEG references those
    candidates = [images[n] for n in _images_through_lesions(segment_map, labels, images)]
    sampled = frame_masks(segment_map, labels, candidates) if candidates else None
    hit = [] if sampled is None else [n for n in range(len(candidates)) if sampled[n].any()]
    if sampled is None or not hit:
        raise ValueError("No lesion voxel falls on a pixel of the source PET images; the label "
                         "map is not on the PET series' frame of reference.")
    images = [candidates[n] for n in hit]
    frames = sampled[hit]
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name="psma-stage SUV threshold", version=__version__,
        family=codes.cid7162.HistogramAnalysis,
    )
    for category in present:
        colour = CATEGORY_COLORS[category].lstrip("#")
        rgb = tuple(int(colour[n:n + 2], 16) for n in (0, 2, 4))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=segment_of[category],
            segment_label=CATEGORY_LABELS[category],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=category,
            tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))
    try:
        seg = hd.seg.Segmentation(
            source_images=images,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="psma-stage",
            manufacturer_model_name="psma-stage",
            software_versions=__version__,
            device_serial_number="none",
            series_description="psma-stage lesions by category",
            content_label="LESIONS",
            content_description="PSMA-avid lesions by staging category",
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise DicomError(
            f"cannot build the DICOM Segmentation on the PET series ({type(err).__name__}: {err})."
        ) from err
    seg.save_as(path)
    logger.debug("wrote SEG with %d segments", len(present))
    return path
