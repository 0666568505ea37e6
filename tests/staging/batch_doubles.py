"""A test double of ``stage_study`` for the batch machinery (orchestration, resume, crashes).

The double reads a small JSON "PET" file describing the study and writes a staging.json-shaped
record (plus a lesions.csv) into ``out_dir``, exactly where the real pipeline writes. It lets
the tests exercise crash safety and the database semantics in seconds; the real pipeline on
phantom cohorts is tested in ``test_batch_cohort.py``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.errors import SuvError
from staging.models import StudySource


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """Stands in for PipelineConfig: the batch needs only hash() and to_dict()."""

    threshold: float = 3.0

    def hash(self) -> str:
        return f"fake-{self.threshold}"

    def to_dict(self) -> dict[str, Any]:
        return {"lesion": {"threshold": self.threshold}}


def fake_stage(source: StudySource, out_dir: Path, *, config: FakeConfig) -> None:
    """Write staging.json + lesions.csv for the study a JSON file describes."""
    assert source.pet_nifti is not None
    spec = json.loads(source.pet_nifti.read_text())
    time.sleep(float(spec.get("sleep", 0.0)))
    if spec.get("die"):
        os._exit(3)  # a worker dying (e.g. killed by the OOM killer)
    if spec.get("fail"):
        raise SuvError(spec["fail"], path=source.pet_nifti)
    n = int(spec.get("lesions", 0))
    lesions = [{"id": i + 1, "category": "bone" if i % 2 else "node_pelvic",
                "region": "pelvis", "suv_max": 10.0 + i, "suv_mean": 5.0, "suv_peak": 8.0,
                "volume_ml": 1.5, "tl_psma": 7.5, "centroid_mm": [1.0, 2.0, 3.0 + i],
                "mipsma_score": 2, "equivocal": False} for i in range(n)]
    counts = {c: sum(le["category"] == c for le in lesions)
              for c in ("fossa", "node_pelvic", "node_extrapelvic", "bone", "visceral",
                        "equivocal")}
    group = "T0N0M0" if n == 0 else ("M1b-M1c" if counts["bone"] else "N1/M1a")
    record = {
        "schema_version": "1", "patient_id": spec["patient_id"],
        "study_instance_uid": spec["study_uid"], "mitnm": "miT0N0M0" if n == 0 else "miTrN1M1b",
        "group": group, "emmett_group": "negative" if n == 0 else "extra_fossa",
        "lesion_count": n, "lesion_count_bin": "0" if n == 0 else "1" if n == 1 else "2-3",
        "counts_by_category": counts, "psma_tv_ml": 1.5 * n, "tl_psma": 7.5 * n,
        "max_mipsma_score": 2 if n else None, "bone_pattern": "none", "needs_review": False,
        "reference_suv": {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0},
        "suv_provenance": {}, "config": config.to_dict(), "config_hash": config.hash(),
        "software_version": "test", "series": {"pet": "1.2.3.1", "ct": "1.2.3.2"},
        "anatomy_provider": "rules", "lesions": lesions,
    }
    out_dir.mkdir(parents=True)
    (out_dir / "lesions.csv").write_text(
        "id,category\n" + "".join(f"{le['id']},{le['category']}\n" for le in lesions))
    (out_dir / "staging.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def write_fake_cohort(root: Path, specs: list[dict[str, Any]]) -> Path:
    """Write one JSON 'PET' + one 'CT' file per spec and a manifest; return the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["patient_id,pet,ct,study_uid"]
    for number, spec in enumerate(specs):
        folder = root / f"case{number:03d}"
        folder.mkdir(exist_ok=True)
        (folder / "pet.json").write_text(json.dumps(spec))
        ct = "" if spec.get("no_ct") else f"case{number:03d}/ct.json"
        if ct:
            (folder / "ct.json").write_text("{}")
        lines.append(f"{spec['patient_id']},case{number:03d}/pet.json,{ct},{spec['study_uid']}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
