"""Benchmark: load a realistic PET/CT study from DICOM to SUV plus the CT on the PET grid.

Generates (into a temporary folder) a PET of 200 x 200 x 400 voxels at 4 x 4 x 3 mm and a CT of
512 x 512 x 400 at 0.98 x 0.98 x 3 mm, 16-bit, one file per slice, with a per-slice PET
RescaleSlope. Then, in a fresh subprocess per repeat, times ``load_study`` + ``resample_to``
(CT -> PET grid) and records the peak resident memory (``ru_maxrss``) above the
after-import baseline. If ``dcm2niix`` is installed it converts the same two series in the same
run for comparison.

Run:  .venv/bin/python benchmarks/bench_load.py [--repeats 2] [--keep DIR]
Targets (issue 2): load time <= dcm2niix time for the same two series; peak memory above the
baseline < 2.5 x the decoded voxel data (PET + CT at 16 bit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SHAPE = (400, 200, 200)
PET_SPACING = (3.0, 4.0, 4.0)
CT_SHAPE = (400, 512, 512)
CT_SPACING = (3.0, 0.98, 0.98)

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import imaging.loading, imaging.resample  # imports outside the timed region
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c0 = time.process_time()
t0 = time.perf_counter()
study = imaging.loading.load_study(Path(sys.argv[1]))
t1 = time.perf_counter()
c1 = time.process_time()
ct_on_pet = imaging.resample.resample_to(study.ct, study.pet)
t2 = time.perf_counter()
c2 = time.process_time()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"load_s": t1 - t0, "resample_s": t2 - t1, "total_s": t2 - t0,
                  "load_cpu_s": c1 - c0, "resample_cpu_s": c2 - c1,
                  "baseline_rss_mb": base / 1024, "peak_rss_mb": peak / 1024,
                  "pet_dtype": str(study.pet.array.dtype), "ct_dtype": str(study.ct.array.dtype),
                  "ct_on_pet_shape": list(ct_on_pet.shape),
                  "suv_factor": study.suv_provenance["factor"]}))
"""


def _dataset(modality: str, sop_class: str, study: str, series: str, frame: str, k: int,
             shape: tuple[int, int, int], spacing: tuple[float, float, float],
             origin: tuple[float, float, float]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "BENCH-001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate = "20250304", "20250304", "20250304"
    ds.SeriesTime, ds.AcquisitionTime = "100000", "100000"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    z = origin[2] + k * spacing[0]
    ds.ImagePositionPatient = [f"{origin[0]:.3f}", f"{origin[1]:.3f}", f"{z:.3f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
    ds.SliceThickness = f"{spacing[0]:g}"
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def generate_study(root: Path, *, seed: int = 2026) -> dict[str, float]:
    """Write the PET and CT series under ``root/PT`` and ``root/CT``; return sizes in MB."""
    rng = np.random.default_rng(seed)
    study, frame = generate_uid(), generate_uid()
    pet_uid, ct_uid = generate_uid(), generate_uid()
    (root / "PT").mkdir(parents=True)
    (root / "CT").mkdir(parents=True)
    # CT: body ellipse of soft tissue with noise, air outside
    j, i = np.mgrid[:CT_SHAPE[1], :CT_SHAPE[2]]
    body = ((i - 256) / 220.0) ** 2 + ((j - 256) / 150.0) ** 2 < 1
    ct_origin = (-250.9, -250.9, -1200.0)
    for k in range(CT_SHAPE[0]):
        ds = _dataset("CT", "1.2.840.10008.5.1.4.1.1.2", study, ct_uid, frame, k, CT_SHAPE,
                      CT_SPACING, ct_origin)
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        hu = np.where(body, 40, -1000) + rng.integers(-20, 21, size=body.shape)
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(root / "CT" / f"{k:05d}", enforce_file_format=True)
    # PET: activity in the body, hot spots, per-slice slope
    pj, pi = np.mgrid[:PET_SHAPE[1], :PET_SHAPE[2]]
    pbody = ((pi - 100) / 55.0) ** 2 + ((pj - 100) / 38.0) ** 2 < 1
    pet_origin = (-398.0, -398.0, -1200.0)
    for k in range(PET_SHAPE[0]):
        ds = _dataset("PT", "1.2.840.10008.5.1.4.1.1.128", study, pet_uid, frame, k, PET_SHAPE,
                      PET_SPACING, pet_origin)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Units, ds.DecayCorrection = "BQML", "START"
        ds.CorrectedImage = ["ATTN", "DECY", "SCAT"]
        ds.PatientWeight, ds.PatientSex, ds.PatientSize = "80", "M", "1.8"
        item = Dataset()
        item.RadiopharmaceuticalStartDateTime = "20250304090000"
        item.RadionuclideTotalDose, item.RadionuclideHalfLife = "2.5e8", "4062"
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        act = np.where(pbody, 5000.0, 0.0) * (1 + 0.2 * rng.random(pbody.shape))
        act[90:95, 90:95] = 40000.0 * (1 + k / PET_SHAPE[0])
        slope = act.max() / 32000.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", "0"
        ds.PixelData = np.round(act / slope).astype(np.int16).tobytes()
        ds.save_as(root / "PT" / f"{k:05d}", enforce_file_format=True)
    return {
        "pet_voxels_mb": float(np.prod(PET_SHAPE)) * 2 / 2**20,
        "ct_voxels_mb": float(np.prod(CT_SHAPE)) * 2 / 2**20,
    }


def _drop_caches_hint(root: Path) -> None:
    # Read every file once so both tools start with the same (warm) page cache.
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()


def run(root: Path, repeats: int) -> dict[str, object]:
    sizes = generate_study(root)
    _drop_caches_hint(root)
    repo = Path(__file__).resolve().parents[1]
    dcm2niix = shutil.which("dcm2niix")
    ours: list[dict[str, float]] = []
    theirs: list[float] = []
    theirs_cpu: list[float] = []
    # Interleaved (ours, dcm2niix, ours, ...) so that both see the same machine load.
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(root)], cwd=repo, check=True,
                             capture_output=True, text=True)
        ours.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if dcm2niix:
            with tempfile.TemporaryDirectory() as out_dir:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                for series in ("PT", "CT"):
                    subprocess.run([dcm2niix, "-z", "n", "-b", "n", "-o", out_dir,
                                    str(root / series)], check=True, capture_output=True)
                theirs.append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                theirs_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime
                                  - before.ru_stime)
    decoded = sizes["pet_voxels_mb"] + sizes["ct_voxels_mb"]
    best = min(ours, key=lambda r: float(r["total_s"]))
    peak_above = max(float(r["peak_rss_mb"]) - float(r["baseline_rss_mb"]) for r in ours)
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "load_average": os.getloadavg(),
        "decoded_voxel_mb": decoded,
        "ours_runs": ours,
        "ours_best_total_s": best["total_s"],
        "ours_best_load_s": best["load_s"],
        "ours_best_resample_s": best["resample_s"],
        "peak_rss_above_baseline_mb": peak_above,
        "peak_ratio_to_decoded": peak_above / decoded,
        "dcm2niix": dcm2niix,
        "dcm2niix_runs_s": theirs,
        "dcm2niix_best_s": min(theirs) if theirs else None,
        "dcm2niix_median_s": float(np.median(theirs)) if theirs else None,
        "ours_median_load_s": float(np.median([float(r["load_s"]) for r in ours])),
        "ours_median_total_s": float(np.median([float(r["total_s"]) for r in ours])),
        "dcm2niix_cpu_runs_s": theirs_cpu,
        "ours_best_load_cpu_s": min(float(r["load_cpu_s"]) for r in ours),
        "target_time_met_load": (min(theirs) >= float(best["load_s"])) if theirs else None,
        "target_time_met_load_plus_resample": (
            (min(theirs) >= float(best["total_s"])) if theirs else None),
        "target_memory_met": peak_above < 2.5 * decoded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="write the study here and keep it")
    args = parser.parse_args(argv)
    if args.keep is not None:
        result = run(args.keep, args.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="psma-bench-") as tmp:
            result = run(Path(tmp) / "study", args.repeats)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
