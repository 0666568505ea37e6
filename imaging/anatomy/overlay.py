"""A picture of what the labeller sees: regions and landmarks on coronal and sagittal CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from imaging.anatomy.grid import make_work_grid, resample_onto
from imaging.anatomy.model import AnatomyMap
from imaging.vocabulary import ANATOMY_LABEL_VALUES, Landmark
from imaging.volume import Volume

__all__ = ["plot_anatomy_overlay"]

_COLOURS = {
    "bone": "#f5f5dc", "lungs": "#4f9fe0", "urinary_bladder": "#ffd700", "kidneys": "#ff8c00",
    "liver": "#a0522d", "spleen": "#8b008b", "salivary_glands": "#ff69b4",
    "prostate_fossa": "#ff0000", "metal": "#00ffff", "aorta": "#dc143c",
    "iliac_vessels": "#dc143c", "bowel": "#9acd32",
}


def _region_colour(name: str) -> str:
    if name.startswith(("common_iliac", "external_iliac", "internal_iliac", "obturator",
                        "presacral", "perirectal")):
        shades = ["#2e8b57", "#3cb371", "#66cdaa", "#20b2aa", "#008080", "#006400"]
        return shades[hash(name.rsplit("_", 1)[0]) % len(shades)]
    return {"retroperitoneal": "#6a5acd", "supradiaphragmatic": "#483d8b",
            "inguinal_left": "#b8860b", "inguinal_right": "#b8860b"}.get(name, "none")


def plot_anatomy_overlay(ct: Volume, anatomy: AnatomyMap, path: Path | str, *,
                         title: str | None = None, spacing_mm: float = 2.0) -> Path:
    """Write a PNG: coronal and sagittal CT with the labelled regions and landmarks.

    Parameters
    ----------
    ct : Volume
        The CT the map was made from (HU).
    anatomy : AnatomyMap
        Result of :func:`~imaging.anatomy.label_anatomy`.
    path : Path
        Output PNG.
    title : str, optional
        Figure title (use a pseudonymised ID, never a name).
    spacing_mm : float
        Display resolution.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    grid = make_work_grid(anatomy.grid, spacing_mm)
    hu = resample_onto(ct, grid, fill=-1024.0)
    labels = resample_onto(anatomy.to_label_volume(), grid, fill=0, nearest=True).astype(int)
    x_mid = _x_mid(anatomy)
    y_cor = _y_coronal(anatomy, hu, grid.y_mm())
    i_sag = int(np.clip(round((x_mid - grid.origin_mm[0]) / spacing_mm), 0, grid.shape[2] - 1))
    j_cor = int(np.clip(round((y_cor - grid.origin_mm[1]) / spacing_mm), 0, grid.shape[1] - 1))
    names = {v: k for k, v in ANATOMY_LABEL_VALUES.items()}
    lut = ["none"] * 256
    for value, name in names.items():
        lut[value] = _COLOURS.get(name, _region_colour(name))
    lut[ANATOMY_LABEL_VALUES["body"]] = "none"
    cmap = ListedColormap(lut)
    fig = Figure(figsize=(12, 8), dpi=100)
    axes = fig.subplots(1, 2)
    z0, z1 = grid.z_mm()[0], grid.z_mm()[-1]
    views = (
        ("coronal", hu[:, j_cor, :], labels[:, j_cor, :], (grid.x_mm()[0], grid.x_mm()[-1]), 0),
        ("sagittal", hu[:, :, i_sag], labels[:, :, i_sag], (grid.y_mm()[0], grid.y_mm()[-1]), 1),
    )
    for ax, (name, img, lab, (h0, h1), axis) in zip(axes, views, strict=True):
        ext = (h0, h1, z0, z1)
        ax.imshow(img, cmap="gray", vmin=-250, vmax=600, origin="lower", extent=ext)
        ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=255, alpha=0.45,
                  origin="lower", extent=ext, interpolation="nearest")
        for lm, f in anatomy.landmarks.items():
            if f.position_mm is None:
                continue
            h = f.position_mm[0] if axis == 0 else f.position_mm[1]
            ax.plot(h, f.position_mm[2], marker="+" if f.confidence >= 0.6 else "x",
                    color="yellow", markersize=10, mew=2)
            ax.annotate(_short(lm), (h, f.position_mm[2]), color="yellow", fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        if anatomy.pelvic_boundary_z_mm is not None:
            ax.axhline(anatomy.pelvic_boundary_z_mm, color="red", lw=0.8, ls="--")
        ax.set_title(f"{name} at {'y' if axis == 0 else 'x'} = "
                     f"{(y_cor if axis == 0 else x_mid):.0f} mm")
        ax.set_xlabel("x (mm, patient left +)" if axis == 0 else "y (mm, posterior +)")
        ax.set_ylabel("z (mm, superior +)")
        # radiological convention: patient right (-x) on the viewer's left, anterior left
    present = sorted({names[v] for v in np.unique(labels) if v in names and v != 1})
    handles = [Patch(color=lut[ANATOMY_LABEL_VALUES[n]], label=n) for n in present
               if lut[ANATOMY_LABEL_VALUES[n]] != "none"]
    fig.subplots_adjust(bottom=0.2)
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(title or f"anatomy ({anatomy.provider}); boundary: {anatomy.pelvic_boundary} "
                 "(red dashed); flags: " + (", ".join(anatomy.flags) or "none"), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _short(lm: Landmark) -> str:
    return {"femoral_head_left": "FH L", "femoral_head_right": "FH R",
            "pubic_symphysis_superior": "PS sup", "pubic_symphysis_inferior": "PS inf",
            "sacral_promontory": "prom", "iliac_crest_left": "crest L",
            "iliac_crest_right": "crest R", "aortic_bifurcation": "AoB",
            "common_iliac_bifurcation_left": "CIB L", "common_iliac_bifurcation_right": "CIB R",
            "liver_dome": "dome"}[lm.value]


def _x_mid(anatomy: AnatomyMap) -> float:
    heads = [anatomy.landmarks[lm].position_mm for lm in (Landmark.FEMORAL_HEAD_LEFT,
                                                           Landmark.FEMORAL_HEAD_RIGHT)]
    found = [h for h in heads if h is not None]
    if len(found) == 2:
        return float((found[0][0] + found[1][0]) / 2)
    centre = anatomy.grid.index_to_world(np.asarray(anatomy.grid.shape, dtype=float) / 2)
    return float(centre[0])


def _y_coronal(anatomy: AnatomyMap, hu: NDArray[np.float32], ys: NDArray[np.float64]) -> float:
    heads = [anatomy.landmarks[lm].position_mm for lm in (Landmark.FEMORAL_HEAD_LEFT,
                                                           Landmark.FEMORAL_HEAD_RIGHT)]
    found = [h for h in heads if h is not None]
    if found:
        return float(np.mean([h[1] for h in found]))
    prof = (hu > -500).sum(axis=(0, 2)).astype(float)
    return float((prof * ys).sum() / max(prof.sum(), 1.0))
