"""Regenerate the figures of docs/suv.md and docs/loading.md from the bundled public fixtures.

Run: .venv/bin/python docs/img/foundation/make_figures.py
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from imaging.errors import DicomWarning
from imaging.loading import load_study
from imaging.resample import resample_to

ROOT = Path(__file__).resolve().parents[3]
PUBLIC = ROOT / "fixtures" / "public"
OUT = Path(__file__).resolve().parent


def suv_dro_figure() -> None:
    cases = sorted(p.name for p in (PUBLIC / "suv-dro").iterdir() if p.is_dir())
    fig, axes = plt.subplots(2, len(cases), figsize=(2.1 * len(cases), 4.6))
    for col, case in enumerate(cases):
        study = load_study(PUBLIC / "suv-dro" / case / "PT", ct="skip")
        suv = study.pet.array
        mask = np.asarray(nib.load(str(PUBLIC / "suv-dro" / case / "mask" / "DRO_mask.nii.gz"))
                          .dataobj).transpose(2, 1, 0) > 0
        k = int(np.unravel_index(np.argmax(np.where(mask, suv, 0)), suv.shape)[0])
        ax = axes[0, col]
        ax.imshow(suv[k], cmap="gray_r", vmin=0, vmax=4.5)
        ax.contour(mask[k], levels=[0.5], colors="tab:red", linewidths=0.6)
        ax.set_title(case, fontsize=8)
        ax.axis("off")
        vals = suv[mask]
        ax = axes[1, col]
        ax.hist(vals, bins=80, color="tab:blue", log=True)
        for ref in (0.2, 1.0, 4.0):
            ax.axvline(ref, color="tab:red", lw=0.6)
        ax.set_title(f"{vals.min():.3f} / {np.median(vals):.3f} / {vals.max():.3f}", fontsize=7)
        ax.set_yticks([])
        ax.set_xlabel("SUVbw", fontsize=6)
        ax.tick_params(labelsize=6)
    fig.suptitle("SUVbw of the 9 OncoRay/IBSI DROs inside their masks (red lines: 0.2 / 1.0 / "
                 "4.0 expected); titles: min / median / max measured", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "suv_dro.png", dpi=110)
    plt.close(fig)


def ibsi_overlay_figure() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, case in zip(axes, ("STS_001", "STS_002"), strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DicomWarning)
            study = load_study(PUBLIC / "ibsi-sts-petct" / "dicom" / case)
        assert study.ct is not None
        pet_on_ct = resample_to(study.pet, study.ct)
        k = int(np.argmax(pet_on_ct.array.max(axis=(1, 2))))
        ax.imshow(study.ct.array[k], cmap="gray", vmin=-200, vmax=300)
        hot = np.ma.masked_less(pet_on_ct.array[k], 1.0)
        im = ax.imshow(hot, cmap="hot", alpha=0.6, vmin=1, vmax=float(pet_on_ct.array.max()))
        z = study.ct.index_to_world([k, 0, 0])[2]
        ax.set_title(f"{case}: PET SUVbw on the CT grid\nz = {z:.1f} mm", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.04, label="SUVbw")
    fig.tight_layout()
    fig.savefig(OUT / "ibsi_pet_on_ct.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    suv_dro_figure()
    ibsi_overlay_figure()
