"""Validate the lesion finder against the truth of synthetic patients, per method.

For each synthetic patient (``fixtures.phantom.generate_patient``) and each method preset
(``imaging.lesions.PRESETS``) the finder runs on the SUV image with, as anatomy input, the
truth organ masks (``--anatomy truth``) and/or the CT labeller's masks (``--anatomy labeller``,
``imaging.anatomy.label_anatomy``). It reports, lesion-wise with autoPET matching (a truth lesion
is detected if at least one voxel overlaps a found lesion; a found lesion overlapping no truth
lesion is a false positive):

* sensitivity for truth lesions >= 0.5 mL with SUVmax >= 4 (the acceptance set), and overall;
* false positives per scan, non-equivocal and equivocal, and how many of them sit in a
  physiological high-uptake organ (kidneys, bladder, ureters, salivary/lacrimal glands, bowel,
  liver, spleen, gallbladder);
* for truth lesions >= 1 mL: the relative volume and SUVmax errors of the found lesion that
  overlaps them most (share within 20% and 5%, median absolute error).

Writes a markdown table (stdout and ``--out``), a JSON file of all figures and, with
``--figures DIR``, a bar chart per method and a MIP picture of one patient.

Run (about 10 s per small patient for generation, cached with ``--cache``)::

    .venv/bin/python benchmarks/validate_lesions.py --patients 24 --size small \\
        --cache /tmp/psma-phantoms --out docs/lesions_validation.json --figures docs/figures
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imaging.errors import ConfigError
from imaging.lesions import PRESETS, LesionConfig, LesionResult, find_lesions
from imaging.vocabulary import AnatomyLabel

STAGES = ["N1/M1a", "M1b-M1c", "TrN0M0", "T0N0M0"]
PHYSIOLOGICAL = (
    AnatomyLabel.KIDNEYS, AnatomyLabel.URINARY_BLADDER, AnatomyLabel.URETERS,
    AnatomyLabel.SALIVARY_GLANDS, AnatomyLabel.LACRIMAL_GLANDS, AnatomyLabel.BOWEL,
    AnatomyLabel.LIVER, AnatomyLabel.SPLEEN, AnatomyLabel.GALLBLADDER,
)
DEFAULT_METHODS = ["suv3", "suv2.5", "suv4", "percist", "qpsma", "qpsma-percist", "suv3-iso41",
                   "suv3-iso50", "suv3-itm", "suv3-fit", "suv3-split"]


RICH_SITES = ["fossa", "node_external_iliac", "node_internal_iliac", "node_obturator",
              "node_common_iliac", "node_presacral", "node_perirectal", "node_retroperitoneal",
              "node_mediastinal", "node_supraclavicular", "node_inguinal", "bone_vertebra",
              "bone_pelvis", "bone_sacrum", "bone_rib", "bone_femur", "visceral_lung",
              "visceral_liver", "visceral_adrenal"]


def rich_specs(seed: int, n: int = 8) -> list[Any]:
    """``n`` lesions at distinct random sites; fossa lesions abut the bladder half the time."""
    from fixtures.phantom import LesionSpec

    rng = np.random.default_rng(seed)
    sites = rng.choice(RICH_SITES, size=n, replace=False)
    specs = []
    for site in sites:
        abut = None
        if site == "fossa" and rng.random() < 0.5:
            abut = "urinary_bladder"
        elif site in ("node_internal_iliac", "node_retroperitoneal") and rng.random() < 0.3:
            abut = "ureters"
        specs.append(LesionSpec(site=str(site), abut=abut))
    return specs


def load_patient(seed: int, size: str, cache: Path | None, design: str = "rich") -> Any:
    """Generate (or read from the cache) the synthetic patient of ``seed``.

    ``design="stages"`` cycles the four study groups with the phantom's own lesion mix;
    ``design="rich"`` asks for 8 lesions at distinct sites (more lesions per scan to measure
    sensitivity on).
    """
    from fixtures.phantom import generate_patient
    from fixtures.phantom.patient import GENERATOR_VERSION

    # the generator version is in the name: a cache of an older phantom is never reused
    path = (cache / f"patient-v{GENERATOR_VERSION}-{size}-{design}-{seed}.pkl" if cache
            else None)
    if path is not None and path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh)
    if design == "rich":
        patient = generate_patient(seed, size=size, lesions=rich_specs(seed))  # type: ignore[arg-type]
    else:
        patient = generate_patient(seed, size=size,  # type: ignore[arg-type]
                                   stage=STAGES[seed % len(STAGES)])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(patient, fh)
        tmp.replace(path)
    return patient


def truth_masks(patient: Any) -> dict[AnatomyLabel, NDArray[np.bool_]]:
    """Truth canonical organ masks on the PET grid."""
    out: dict[AnatomyLabel, NDArray[np.bool_]] = {}
    for label in AnatomyLabel:
        try:
            mask = patient.canonical_mask(label, grid="pet")
        except (KeyError, ValueError):
            continue
        if mask.any():
            out[label] = mask
    return out


def labeller_masks(patient: Any) -> dict[AnatomyLabel, NDArray[np.bool_]] | None:
    """Masks of the CT labeller on the PET grid, or ``None`` if it is not available."""
    try:
        from imaging.anatomy import label_anatomy
    except ImportError:
        return None
    amap = label_anatomy(patient.ct, pet=patient.pet_suv)
    return {AnatomyLabel(k): np.asarray(v, dtype=bool) for k, v in amap.masks.items()}


def score(result: LesionResult, patient: Any,
          organs: Mapping[AnatomyLabel, NDArray[np.bool_]]) -> dict[str, Any]:
    """Lesion-wise comparison of one result with the patient's truth (one labelled pass)."""
    truth_lab = np.asarray(patient.lesions_pet.array, dtype=np.int64).reshape(-1)
    pred_lab = np.asarray(result.labels.array, dtype=np.int64).reshape(-1)
    n_pred = len(result.lesions)
    lesions = patient.truth["lesions"]
    n_truth = int(max([les["id"] for les in lesions], default=0))
    both = np.flatnonzero((truth_lab > 0) | (pred_lab > 0))
    pairs = np.bincount(truth_lab[both] * (n_pred + 1) + pred_lab[both],
                        minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)
    overlap = pairs[1:, 1:]  # voxels shared by truth t and prediction p
    detected = overlap.sum(axis=1) > 0
    pred_true = overlap.sum(axis=0) > 0
    equivocal = np.array([les.equivocal for les in result.lesions], dtype=bool)
    # Physiological organ under the found lesion's SUVmax voxel (or most of its voxels).
    organ_fp = 0
    fp_details = []
    for p, les in enumerate(result.lesions):
        if pred_true[p]:
            continue
        idx = tuple(np.round(result.labels.world_to_index(les.suv_max_position_mm)).astype(int))
        where = [o.value for o in PHYSIOLOGICAL if o in organs and organs[o][idx]]
        frac = {o.value: les.overlaps.get(o.value, 0.0) for o in PHYSIOLOGICAL}
        if where or max(frac.values(), default=0.0) > 0.5:
            organ_fp += 1
        fp_details.append({"suv_max": round(les.suv_max, 2), "volume_ml": round(les.volume_ml, 3),
                           "equivocal": les.equivocal, "organ": where})
    rows = []
    for les in lesions:
        t = int(les["id"]) - 1
        row = {"id": les["id"], "category": les["category"], "volume_ml": les["volume_ml"],
               "suv_max": les["suv_max"], "suv_intended": les.get("suv_intended"),
               "near": les.get("near", []), "patient_id": patient.patient_id,
               "detected": bool(detected[t])}
        if detected[t]:
            p = int(np.argmax(overlap[t]))
            found = result.lesions[p]
            row.update(found_volume_ml=found.volume_ml, found_suv_max=found.suv_max,
                       found_equivocal=found.equivocal,
                       shared_with=int(np.count_nonzero(overlap[:, p])))
        rows.append(row)
    return {
        "truth": rows,
        "n_pred": n_pred,
        "fp": int(np.count_nonzero(~pred_true & ~equivocal)),
        "fp_equivocal": int(np.count_nonzero(~pred_true & equivocal)),
        "fp_organ": organ_fp,
        "fp_details": fp_details,
        "equivocal_true": int(np.count_nonzero(pred_true & equivocal)),
    }


def summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-scan scores of one method."""
    truth = [row for s in scores for row in s["truth"]]
    acc = [r for r in truth if r["volume_ml"] >= 0.5 and r["suv_max"] >= 4.0]
    big = [r for r in truth if r["volume_ml"] >= 1.0 and r["detected"]]
    vol_err = np.array([r["found_volume_ml"] / r["volume_ml"] - 1 for r in big])
    suv_err = np.array([r["found_suv_max"] / r["suv_max"] - 1 for r in big])
    n = len(scores)

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "scans": n,
        "truth_lesions": len(truth),
        "acceptance_lesions": len(acc),
        "sensitivity_acceptance": ratio(sum(r["detected"] for r in acc), len(acc)),
        "sensitivity_all": ratio(sum(r["detected"] for r in truth), len(truth)),
        "missed_acceptance": [{k: r[k] for k in ("patient_id", "category", "volume_ml",
                                                 "suv_max", "suv_intended", "near")}
                              for r in acc if not r["detected"]],
        "equivocal_share_of_detected": ratio(
            sum(bool(r.get("found_equivocal")) for r in truth if r["detected"]),
            sum(r["detected"] for r in truth)),
        "fp_per_scan": sum(s["fp"] for s in scores) / n,
        "fp_equivocal_per_scan": sum(s["fp_equivocal"] for s in scores) / n,
        "fp_in_physiological_organ": sum(s["fp_organ"] for s in scores),
        "lesions_ge_1ml": len(big),
        "volume_within_20pct": ratio(int(np.sum(np.abs(vol_err) <= 0.20)), len(big)),
        "suvmax_within_5pct": ratio(int(np.sum(np.abs(suv_err) <= 0.05)), len(big)),
        "volume_median_abs_err": float(np.median(np.abs(vol_err))) if big else None,
        "suvmax_median_abs_err": float(np.median(np.abs(suv_err))) if big else None,
        "volume_errors": [round(float(v), 4) for v in vol_err],
        "suvmax_errors": [round(float(v), 4) for v in suv_err],
    }


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def markdown(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One table row per (anatomy source, method)."""
    lines = ["| anatomy | method | sens. (>=0.5 mL, SUVmax>=4) | sens. (all) | FP/scan | "
             "equivocal FP/scan | FP in organ | vol. within 20% (>=1 mL) | SUVmax within 5% "
             "| median vol. err | median SUVmax err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, methods in summary.items():
        for name, s in methods.items():
            sens = s["sensitivity_acceptance"]
            lines.append(
                f"| {source} | {PRESETS[name].name} (`{name}`) | {_fmt(sens, True)} "
                f"({s['acceptance_lesions']}) | {_fmt(s['sensitivity_all'], True)} "
                f"({s['truth_lesions']}) | {_fmt(s['fp_per_scan'])} | "
                f"{_fmt(s['fp_equivocal_per_scan'])} | {s['fp_in_physiological_organ']} | "
                f"{_fmt(s['volume_within_20pct'], True)} ({s['lesions_ge_1ml']}) | "
                f"{_fmt(s['suvmax_within_5pct'], True)} | "
                f"{_fmt(s['volume_median_abs_err'], True)} | "
                f"{_fmt(s['suvmax_median_abs_err'], True)} |")
    return "\n".join(lines)


def figures(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], patient: Any,
            result: LesionResult, out_dir: Path) -> list[Path]:
    """Bar chart of sensitivity / FP per method and a MIP of one patient with its lesions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, methods in summary.items():
        names = list(methods)
        sens = [100 * (methods[n]["sensitivity_acceptance"] or 0) for n in names]
        fp = [methods[n]["fp_per_scan"] for n in names]
        vol = [100 * (methods[n]["volume_within_20pct"] or 0) for n in names]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
        y = np.arange(len(names))
        axes[0].barh(y, sens, color="#3a7")
        axes[0].axvline(95, color="k", ls="--", lw=1)
        axes[0].set_title("sensitivity, lesions >= 0.5 mL & SUVmax >= 4 (%)")
        axes[1].barh(y, fp, color="#c54")
        axes[1].axvline(0.5, color="k", ls="--", lw=1)
        axes[1].set_title("non-equivocal false positives / scan")
        axes[2].barh(y, vol, color="#57b")
        axes[2].axvline(100, color="k", ls=":", lw=1)
        axes[2].set_title("volume within 20% of truth, >= 1 mL (%)")
        for ax in axes:
            ax.set_yticks(y, names if ax is axes[0] else [""] * len(names))
            ax.invert_yaxis()
        fig.suptitle(f"Lesion finder on synthetic patients, anatomy = {source}")
        path = out_dir / f"lesions_methods_{source}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    # MIP (coronal, LPS x horizontal, z vertical) of the SUV with truth and found lesions.
    suv = patient.pet_suv
    arr = np.asarray(suv.array)
    # Axis of the volume closest to LPS y (anterior-posterior) is projected away.
    ap_axis = int(np.argmax(np.abs(suv.direction[1, :])))
    mip = arr.max(axis=ap_axis)
    truth_mip = (np.asarray(patient.lesions_pet.array) > 0).any(axis=ap_axis)
    found_mip = (np.asarray(result.labels.array) > 0).any(axis=ap_axis)
    rest = [a for a in range(3) if a != ap_axis]
    # Orient: rows = z descending (head up), columns = x (patient right on the viewer's left).
    z_axis = rest[int(np.argmax([abs(suv.direction[2, a]) for a in rest]))]
    x_axis = rest[0] if rest[1] == z_axis else rest[1]
    order = [rest.index(z_axis), rest.index(x_axis)]
    img, tm, fm = (np.transpose(m, order) for m in (mip, truth_mip, found_mip))
    if suv.direction[2, z_axis] > 0:
        img, tm, fm = img[::-1], tm[::-1], fm[::-1]
    if suv.direction[0, x_axis] < 0:
        img, tm, fm = img[:, ::-1], tm[:, ::-1], fm[:, ::-1]
    aspect = suv.spacing[z_axis] / suv.spacing[x_axis]
    fig, ax = plt.subplots(1, 2, figsize=(9, 8), constrained_layout=True)
    for a in ax:
        a.imshow(img, cmap="gray_r", vmin=0, vmax=10, aspect=aspect, interpolation="nearest")
        a.axis("off")
    ax[1].contour(tm, levels=[0.5], colors="lime", linewidths=1.2)
    ax[1].contour(fm, levels=[0.5], colors="red", linewidths=0.8)
    ax[0].set_title("SUV MIP (0-10), anterior view")
    ax[1].set_title(f"truth lesions (green), found (red): {result.config.name}")
    path = out_dir / "lesions_mip.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Validate the lesion finder on synthetic patients with truth, per method.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--patients", type=int, default=24, help="number of patients (seeds)")
    parser.add_argument("--first-seed", type=int, default=100, help="first patient seed")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        choices=sorted(PRESETS), help="method presets to compare")
    parser.add_argument("--design", choices=["rich", "stages"], default="rich",
                        help="rich: 8 lesions at distinct sites per patient; stages: the "
                        "phantom's stage mix cycled over the four study groups")
    parser.add_argument("--anatomy", choices=["truth", "labeller", "both"], default="truth")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder to keep generated patients in (pickles)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for all figures")
    parser.add_argument("--figures", type=Path, default=None, help="folder for PNG figures")
    parser.add_argument("--psf-fwhm-mm", type=float, default=None, metavar="MM",
                        help="the scanner's PSF FWHM (mm), as known from its acceptance tests "
                        "(LesionConfig.psf_fwhm_mm) for every method; default: each method "
                        "fits it on a hot organ's halo where it needs it")
    args = parser.parse_args(argv)
    try:
        configs = {m: LesionConfig.preset(m, psf_fwhm_mm=args.psf_fwhm_mm)
                   for m in args.methods}
    except ConfigError as err:
        parser.error(str(err))

    sources = ["truth", "labeller"] if args.anatomy == "both" else [args.anatomy]
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {m: [] for m in args.methods} for s in sources}
    timings: dict[str, list[float]] = {m: [] for m in args.methods}
    picture: tuple[Any, LesionResult] | None = None
    skipped: list[int] = []
    for n in range(args.patients):
        seed = args.first_seed + n
        t0 = time.perf_counter()
        try:
            patient = load_patient(seed, args.size, args.cache, args.design)
        except ConfigError as err:  # the phantom could not place a lesion for this seed
            print(f"patient seed {seed} skipped: {err}", file=sys.stderr)
            skipped.append(seed)
            continue
        organs = truth_masks(patient)
        t_gen = time.perf_counter() - t0
        for source in sources:
            anatomy = organs if source == "truth" else labeller_masks(patient)
            if anatomy is None:
                print("imaging.anatomy.label_anatomy is not available; skipping the labeller "
                      "source", file=sys.stderr)
                continue
            for method in args.methods:
                t1 = time.perf_counter()
                result = find_lesions(patient.pet_suv, anatomy=anatomy,
                                      config=configs[method])
                timings[method].append(time.perf_counter() - t1)
                scores[source][method].append(score(result, patient, organs))
                if (picture is None and source == "truth" and method == args.methods[0]
                        and len(patient.truth["lesions"]) >= 3):
                    picture = (patient, result)
        first = scores[sources[0]][args.methods[0]][-1] if scores[sources[0]][args.methods[0]] \
            else None
        print(f"patient seed {seed} ({len(patient.truth['lesions'])} truth lesions, "
              f"{t_gen:.1f} s to load): {args.methods[0]} found "
              f"{first['n_pred'] if first else '?'}, FP {first['fp'] if first else '?'}",
              file=sys.stderr, flush=True)
    summary = {s: {m: summarise(v) for m, v in ms.items() if v} for s, ms in scores.items()}
    summary = {s: ms for s, ms in summary.items() if ms}
    table = markdown(summary)
    print(table)
    report = {
        "command": " ".join(["benchmarks/validate_lesions.py", *(argv or sys.argv[1:])]),
        "size": args.size, "design": args.design, "psf_fwhm_mm": args.psf_fwhm_mm,
        "seeds": [args.first_seed, args.first_seed + args.patients - 1],
        "stages_cycled": STAGES, "seeds_skipped_by_phantom": skipped,
        "median_seconds_per_scan": {m: float(np.median(t)) for m, t in timings.items() if t},
        "summary": summary, "table": table,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    if args.figures and picture is not None:
        for path in figures(summary, picture[0], picture[1], args.figures):
            print(f"figure: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
