"""The tracer rules follow the radiopharmaceutical the study names (lesion.tracer = "auto")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imaging.lesions import tracer_from_radiopharmaceutical
from staging.config import load_config
from staging.pipeline import resolve_tracer


@pytest.mark.parametrize(("name", "tracer"), [
    ("F-18 PSMA-1007", "psma1007"),
    ("18F-PSMA-1007", "psma1007"),
    ("Piflufolastat F 18", "dcfpyl"),
    ("F-18 DCFPyL (piflufolastat)", "dcfpyl"),
    ("Ga-68 PSMA-11 (gozetotide)", "psma11"),
    ("68Ga-PSMA-HBED-CC", "psma11"),
    ("Illuccix", "psma11"),
    ("rhPSMA-7.3", None),
    ("Fludeoxyglucose", None),
    ("", None),
    (None, None),
])
def test_tracer_from_radiopharmaceutical(name: str | None, tracer: str | None) -> None:
    assert tracer_from_radiopharmaceutical(name) == tracer


def _study(name: str | None) -> SimpleNamespace:
    return SimpleNamespace(meta=SimpleNamespace(radiopharmaceutical=name))


def test_auto_tracer_is_read_from_the_header_and_saved_in_the_config() -> None:
    config = load_config()
    assert config.lesion.tracer == "auto"
    resolved, note = resolve_tracer(config, _study("F-18 PSMA-1007"))  # type: ignore[arg-type]
    assert note is None
    assert resolved.lesion.tracer == "psma1007"
    assert resolved.hash() != config.hash()
    assert "gallbladder" in {str(o) for o in resolved.lesion.excluded_organs}


@pytest.mark.parametrize("name", [None, "rhPSMA-7.3"])
def test_unknown_tracer_is_a_review_reason_not_a_silent_default(name: str | None) -> None:
    config = load_config()
    resolved, note = resolve_tracer(config, _study(name))  # type: ignore[arg-type]
    assert resolved is config
    assert note is not None
    assert "lesion.tracer" in note


def test_an_explicit_tracer_wins_over_the_header() -> None:
    config = load_config(lesion={"tracer": "psma11"})
    resolved, note = resolve_tracer(config, _study("F-18 PSMA-1007"))  # type: ignore[arg-type]
    assert resolved is config
    assert note is None
