"""The HTML report renders in headless Chromium to a screenshot, with no console or load errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from imaging.volume import Volume
from staging.classify import classify_lesion, stage_patient
from staging.config import load_config
from staging.outputs import build_record, render_mip, write_report
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.chromium


class _Lesion:
    def __init__(self, lesion_id: int, overlaps: dict[str, float], *,
                 equivocal: bool = False) -> None:
        self.id, self.overlaps, self.equivocal = lesion_id, overlaps, equivocal
        self.equivocal_reason = "touches the ureter" if equivocal else None
        self.centroid_mm = (10.0 * lesion_id, 0.0, 20.0 * lesion_id)
        self.volume_ml, self.suv_max, self.suv_mean, self.suv_peak = 2.0, 14.0, 8.0, 10.0
        self.tl_psma, self.mipsma_score = 16.0, 3


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    skip_or_fail("headless Chromium is not installed (Debian package 'chromium'); "
                 "make test installs it via tools/system-deps.sh")
    raise AssertionError("unreachable")


def _report(tmp: Path) -> Path:
    shape = (40, 30, 24)
    grid = Volume(np.zeros(shape, np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0),
                  np.eye(3)[:, ::-1], "g/ml")
    rng = np.random.default_rng(11)
    suv = rng.gamma(2.0, 0.4, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    for lesion_id, (k, j, i) in enumerate([(8, 15, 12), (20, 10, 6), (30, 20, 18)], start=1):
        labels[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = lesion_id
        suv[labels == lesion_id] = 12.0
    lesions = [classify_lesion(_Lesion(1, {"prostate_fossa": 1.0})),
               classify_lesion(_Lesion(2, {"bone": 1.0})),
               classify_lesion(_Lesion(3, {"retroperitoneal": 1.0}, equivocal=True))]
    staging = stage_patient(lesions, patient_id="SYN-REPORT")
    config = load_config()
    record = build_record(staging, study_instance_uid="1.2.3", series={"pet": "1.2", "ct": "1.3"},
                          suv_provenance={"suv_type": "bw", "branch": "qiba"},
                          config=config.to_dict(), config_hash=config.hash(),
                          anatomy_provider="rule", lesion_method=config.lesion.name)
    mip = render_mip(grid.with_array(suv), grid.with_array(labels, "label"),
                     {c.id: c.category.value for c in lesions}, tmp / "mip.png",
                     title=staging.mitnm)
    return write_report(record, mip, tmp / "report.html")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    report = _report(tmp_path)
    shot = tmp_path / "screenshot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--hide-scrollbars", "--window-size=1280,1400", f"--screenshot={shot}",
           report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line
               or "Uncaught" in line or "Failed to load resource" in line]
    assert not console, console

    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1400, 1280)
    # the page is not blank: dark text, the grey MIP and the category colours are all drawn
    assert (img.min(axis=-1) < 0.2).mean() > 0.002
    fossa = np.array([0xE6, 0x9F, 0x00]) / 255
    bone = np.array([0xD5, 0x5E, 0x00]) / 255
    for colour in (fossa, bone):
        assert np.any(np.all(np.abs(img - colour) < 0.08, axis=-1)), colour
