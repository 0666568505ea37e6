"""benchmarks/validate_staging.py: the anatomy mode reaches ``stage_study`` and the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import staging.pipeline
from benchmarks import validate_staging as vs
from staging.config import PipelineConfig


class _Staged(Exception):
    """Stops the fake ``stage_study`` once it has seen its arguments."""


def _fake_stage_study(seen: dict[str, Any]) -> Any:
    def fake(source: Any, out_dir: Path, *, config: PipelineConfig) -> Any:
        path = config.anatomy.provider_path
        seen.update(provider=config.anatomy.provider, path=path,
                    files=sorted(p.name for p in Path(path).iterdir()) if path else [])
        raise _Staged
    return fake


@pytest.mark.parametrize(("mode", "provider"), [("model", "totalsegmentator"),
                                                ("rule", "rule")])
def test_anatomy_mode_reaches_stage_study(mode: str, provider: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(staging.pipeline, "stage_study", _fake_stage_study(seen))
    item = vs.plan(4, 6000)[3]  # the NIfTI input of the plan
    assert item["format"] == "nifti"
    row = vs.run_one(item, str(tmp_path), "small", mode)
    assert row["anatomy"] == mode
    assert row["error"].startswith("_Staged")
    assert seen["provider"] == provider
    if mode == "model":
        assert "kidney_left.nii.gz" in seen["files"]
        assert "urinary_bladder.nii.gz" in seen["files"]
        assert not any("ureter" in f for f in seen["files"])
    else:
        assert seen["path"] is None


def test_anatomy_overrides() -> None:
    assert vs.anatomy_overrides("rule", None) == {}
    assert vs.anatomy_overrides("model", Path("ts")) == {"provider": "totalsegmentator",
                                                          "provider_path": "ts"}
    with pytest.raises(ValueError, match="anatomy mode"):
        vs.anatomy_overrides("model", None)
    with pytest.raises(ValueError, match="anatomy mode"):
        vs.anatomy_overrides("moose", Path("x"))


def test_summary_records_the_anatomy_mode() -> None:
    row = {"error": "", "format": "nifti", "vendor": None, "true_group": "T0N0M0",
           "group": "T0N0M0", "true_emmett": "a", "emmett": "a", "true_mitnm": "m",
           "mitnm": "m", "needs_review": False, "stage_s": 1.0,
           "anatomy_provider": "totalsegmentator",
           **{c: 0 for c in vs.CATEGORIES}, **{f"true_{c}": 0 for c in vs.CATEGORIES}}
    summary = vs.summarise([row], anatomy="model")
    assert summary["anatomy"] == "model"
    assert summary["anatomy_providers"] == ["totalsegmentator"]
    assert summary["group_accuracy"] == 1.0


def test_an_unknown_anatomy_mode_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        vs.main(["--anatomy", "moose", "--out", str(tmp_path)])
    assert exc.value.code == 2
