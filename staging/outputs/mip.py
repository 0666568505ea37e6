"""Anterior and lateral PET maximum-intensity projections with lesions outlined by category.

Projections are taken in patient space: the volume is first put in ``(z, y, x)`` LPS order
(axis permutation and flips only, from the direction cosines), so head-first and feet-first,
supine and prone studies all come out head up. The anterior view shows the patient's right on
the viewer's left (as when facing the patient); the lateral view has anterior on the left.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imaging.vocabulary import LesionCategory
from imaging.volume import Volume

__all__ = ["CATEGORY_COLORS", "CATEGORY_LABELS", "canonical_zyx", "mip_images", "render_mip"]

# Okabe-Ito colour-blind-safe palette
CATEGORY_COLORS: dict[str, str] = {
    LesionCategory.FOSSA.value: "#E69F00",
    LesionCategory.NODE_PELVIC.value: "#0072B2",
    LesionCategory.NODE_EXTRAPELVIC.value: "#56B4E9",
    LesionCategory.BONE.value: "#D55E00",
    LesionCategory.VISCERAL.value: "#CC79A7",
    LesionCategory.EQUIVOCAL.value: "#009E73",
}
"""Display colour of each lesion category (MIP outlines, report table, SEG segments)."""

CATEGORY_LABELS: dict[str, str] = {
    LesionCategory.FOSSA.value: "prostate fossa (miTr)",
    LesionCategory.NODE_PELVIC.value: "pelvic node (miN1)",
    LesionCategory.NODE_EXTRAPELVIC.value: "extrapelvic node (miM1a)",
    LesionCategory.BONE.value: "bone (miM1b)",
    LesionCategory.VISCERAL.value: "visceral (miM1c)",
    LesionCategory.EQUIVOCAL.value: "equivocal (not staged)",
}


def canonical_zyx(volume: Volume) -> tuple[NDArray[Any], tuple[float, float, float]]:
    """The volume's array as ``(z, y, x)`` with indices increasing along +LPS, and its spacing.

    Only permutes and flips axes (the nearest LPS axis of each array axis): a display
    transform, exact for axial acquisitions, approximate for oblique ones.
    """
    direction = np.asarray(volume.direction)
    world_axis = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    if sorted(world_axis) != [0, 1, 2]:  # degenerate oblique case: fall back to array order
        world_axis = [2, 1, 0]
    array = np.asarray(volume.array)
    spacing = np.asarray(volume.spacing, dtype=float)
    for a in range(3):
        if direction[world_axis[a], a] < 0:
            array = np.flip(array, axis=a)
    # array axis a holds world axis world_axis[a]; we want world order (z, y, x) = (2, 1, 0)
    order = [world_axis.index(w) for w in (2, 1, 0)]
    array = np.transpose(array, order)
    zyx_spacing = tuple(float(spacing[a]) for a in order)
    return array, zyx_spacing  # type: ignore[return-value]


def _extent(hit: NDArray[np.bool_]) -> slice:
    """The slice from the first to the last True of a 1-D mask (which has one)."""
    return slice(int(np.argmax(hit)), hit.size - int(np.argmax(hit[::-1])))


def mip_images(
    suv: Volume, labels: Volume
) -> dict[str, tuple[NDArray[np.float32], NDArray[np.int64], tuple[float, float]]]:
    """Anterior and lateral MIPs of ``suv`` and the matching lesion-id projection.

    Returns
    -------
    dict
        ``{"anterior": (mip (z, x), lesion ids (z, x), (dz, dx) mm), "lateral": (mip (z, y),
        lesion ids (z, y), (dz, dy) mm)}``; the lesion id of a pixel is that of the lesion with
        the highest SUV along the ray (0 if none).
    """
    s, sp = canonical_zyx(suv)
    lab, _ = canonical_zyx(labels)
    s = np.asarray(s, dtype=np.float32)
    lesion = lab > 0
    # Lesion voxels lie in their bounding box: rays outside it carry no lesion, and along a
    # ray through it the lesion with the highest SUV is the same within the box as overall.
    box = tuple(_extent(np.asarray(lesion.any(axis=other)))
                for other in ((1, 2), (0, 2), (0, 1))) if lesion.any() else None
    out = {}
    for name, axis in (("anterior", 1), ("lateral", 2)):
        mip = s.max(axis=axis)
        ids = np.zeros(mip.shape, dtype=np.int64)
        if box is not None:
            sub_lab = lab[box]
            lesion_suv = np.where(lesion[box], s[box], -np.inf)
            arg = np.argmax(lesion_suv, axis=axis)
            sub_ids = np.take_along_axis(sub_lab, np.expand_dims(arg, axis), axis=axis
                                         ).squeeze(axis)
            plane = tuple(b for a, b in enumerate(box) if a != axis)
            ids[plane] = np.where(np.isfinite(np.max(lesion_suv, axis=axis)), sub_ids, 0)
        pix = (sp[0], sp[2] if axis == 1 else sp[1])
        out[name] = (mip, ids, pix)
    return out


def render_mip(
    suv: Volume,
    labels: Volume,
    categories: Mapping[int, str],
    path: Path,
    *,
    title: str = "",
    suv_max_display: float = 10.0,
    dpi: int = 100,
) -> Path:
    """Write ``mip.png``: anterior and lateral PET MIPs, lesions outlined by category colour.

    Parameters
    ----------
    suv : Volume
        PET in SUV.
    labels : Volume
        Lesion ids on the same grid.
    categories : mapping
        Lesion id -> category value (keys of :data:`CATEGORY_COLORS`).
    path : Path
        Output PNG.
    title : str
        Shown above the images (e.g. the miTNM stage).
    suv_max_display : float
        SUV shown black (inverted grey scale, 0 white).

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    images = mip_images(suv, labels)
    ant_mip = images["anterior"][0]
    lat_mip = images["lateral"][0]
    nz = ant_mip.shape[0]
    dz = images["anterior"][2][0]
    widths_mm = [ant_mip.shape[1] * images["anterior"][2][1],
                 lat_mip.shape[1] * images["lateral"][2][1]]
    height_mm = nz * dz
    fig_h = 8.0
    fig_w = max(4.0, fig_h * sum(widths_mm) / height_mm * 0.95 + 0.5)
    fig = Figure(figsize=(fig_w, fig_h + 1.0), dpi=dpi)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths_mm})
    present: set[str] = set()
    for ax, name in zip(axes, ("anterior", "lateral"), strict=True):
        mip, ids, (pz, px) = images[name]
        extent = (0.0, mip.shape[1] * px, 0.0, mip.shape[0] * pz)
        ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=suv_max_display, origin="lower",
                  extent=extent, interpolation="bilinear", aspect="equal")
        yy = (np.arange(mip.shape[0]) + 0.5) * pz
        xx = (np.arange(mip.shape[1]) + 0.5) * px
        for category, colour in CATEGORY_COLORS.items():
            lesion_ids = [i for i, c in categories.items() if c == category]
            if not lesion_ids:
                continue
            mask = np.isin(ids, lesion_ids)
            if not mask.any():
                continue
            present.add(category)
            padded = np.pad(mask.astype(float), 1)
            ypad = np.concatenate([[yy[0] - pz], yy, [yy[-1] + pz]])
            xpad = np.concatenate([[xx[0] - px], xx, [xx[-1] + px]])
            ax.contour(xpad, ypad, padded, levels=[0.5], colors=[colour], linewidths=1.4)
        for lesion_id in np.unique(ids[ids > 0]):
            r, c = np.argwhere(ids == lesion_id).mean(axis=0)
            colour = CATEGORY_COLORS.get(categories.get(int(lesion_id), ""), "#000000")
            ax.annotate(str(int(lesion_id)), ((c + 0.5) * px, (r + 0.5) * pz),
                        xytext=(6, 4), textcoords="offset points", color=colour, fontsize=7,
                        fontweight="bold")
        ax.set_xticks([])
        ax.set_yticks([])
        left, right = ("R", "L") if name == "anterior" else ("A", "P")
        ax.set_title(f"{name}   {left} \u2190 \u2192 {right}", fontsize=9)
    handles = [Line2D([0], [0], color=CATEGORY_COLORS[c], lw=2, label=CATEGORY_LABELS[c])
               for c in CATEGORY_COLORS if c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.text(0.99, 0.005, f"SUV 0-{suv_max_display:g}, inverted grey", ha="right", va="bottom",
             fontsize=7, color="#555555")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.08, wspace=0.04)
    fig.savefig(path, format="png")
    return path
