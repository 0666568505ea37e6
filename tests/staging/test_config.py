"""Pipeline configuration: TOML sections, precedence, validation, hash, saved form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imaging.errors import ConfigError
from imaging.vocabulary import AnatomyLabel
from staging.config import SECTIONS, PipelineConfig, load_config, parse_assignments

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "fixtures" / "configs").glob("*.toml"))


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, PipelineConfig)
    assert config.anatomy.pelvic_boundary == config.staging.pelvic_boundary


def test_defaults_without_file() -> None:
    config = load_config()
    assert config == PipelineConfig()
    assert config.lesion.threshold_suv == 3.0
    assert config.staging.pelvic_boundary == "aortic_bifurcation"
    assert set(config.to_dict()) == {"suv", "anatomy", "lesion", "staging"}


def test_file_overrides_defaults_and_command_line_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[lesion]\nthreshold_suv = 4.0\nmin_volume_ml = 0.5\n")
    from_file = load_config(path)
    assert (from_file.lesion.threshold_suv, from_file.lesion.min_volume_ml) == (4.0, 0.5)
    both = load_config(path, lesion={"threshold_suv": 2.5})
    assert (both.lesion.threshold_suv, both.lesion.min_volume_ml) == (2.5, 0.5)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[lesion]\nthreshhold_suv = 4.0\n")
    with pytest.raises(ConfigError, match=r"'threshhold_suv'.*\[lesion\].*threshold_suv") as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "min_volume_ml" in str(err.value)


def test_unknown_section_lists_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[lesions]\nthreshold_suv = 4.0\n")
    with pytest.raises(ConfigError, match="valid sections are: suv, anatomy, lesion, staging"):
        load_config(path)


def test_top_level_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("threshold_suv = 4.0\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(path)


def test_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(lesion=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "match"), [
    ("[lesion]\nthreshold_suv = \"high\"\n", "threshold_suv must be a number"),
    ("[lesion]\nsplit = 1\n", "split must be true or false"),
    ("[lesion]\nconnectivity = 18.5\n", "connectivity must be an integer"),
    ("[lesion]\nconnectivity = 10\n", "connectivity must be 6, 18 or 26"),
    ("[lesion]\nexclude = [\"spleen\", \"pancreas\"]\n", "pancreas"),
    ("[lesion]\nexclude = \"spleen\"\n", "exclude must be a list"),
    ("[lesion]\npreset = \"magic\"\n", "preset 'magic' is unknown"),
    ("[anatomy]\nbladder_hu = [1.0]\n", "list of 2 values"),
    ("[anatomy]\nprovider = \"moose\"\n", "needs provider_path"),
    ("[suv]\nsuv_type = \"sul\"\n", "suv_type = 'sul' is not allowed"),
    ("[staging]\npelvic_boundary = \"L5\"\n", "pelvic_boundary = 'L5' is not allowed"),
    ("[staging]\nbone_min_fraction = 2.0\n", "bone_min_fraction"),
    ("[staging]\nvisceral_organs = [\"liver\", \"pancreas\"]\n", "pancreas"),
    ("[staging]\nunlocalised = \"drop\"\n", "unlocalised"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[lesion\nthreshold_suv = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_preset_then_keys_on_top(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[lesion]\npreset = \"qpsma\"\nmin_volume_ml = 0.3\n")
    config = load_config(path)
    assert (config.lesion.method, config.lesion.min_volume_ml) == ("qpsma-split", 0.3)


def test_types_are_coerced() -> None:
    config = load_config(lesion={"threshold_suv": 4, "exclude": ["kidneys"]},
                         anatomy={"bladder_hu": [0, 30], "provider": "totalsegmentator",
                                  "provider_path": "/data/ts.nii.gz"})
    assert isinstance(config.lesion.threshold_suv, float)
    assert config.lesion.exclude == (AnatomyLabel.KIDNEYS,)
    assert config.anatomy.bladder_hu == (0.0, 30.0)
    assert config.anatomy.provider_path == Path("/data/ts.nii.gz")


def test_pelvic_boundary_set_once_reaches_anatomy_and_staging() -> None:
    from_staging = load_config(staging={"pelvic_boundary": "common_iliac_bifurcation"})
    from_anatomy = load_config(anatomy={"pelvic_boundary": "common_iliac_bifurcation"})
    for config in (from_staging, from_anatomy):
        assert config.anatomy.pelvic_boundary == "common_iliac_bifurcation"
        assert config.staging.pelvic_boundary == "common_iliac_bifurcation"


def test_pelvic_boundary_conflict_in_one_layer_is_an_error() -> None:
    with pytest.raises(ConfigError, match="set it once"):
        load_config(staging={"pelvic_boundary": "common_iliac_bifurcation"},
                    anatomy={"pelvic_boundary": "aortic_bifurcation"})


def test_later_layer_wins_for_the_pelvic_boundary(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[staging]\npelvic_boundary = \"common_iliac_bifurcation\"\n")
    config = load_config(path, anatomy={"pelvic_boundary": "aortic_bifurcation"})
    assert config.staging.pelvic_boundary == config.anatomy.pelvic_boundary == "aortic_bifurcation"


def test_direct_construction_rejects_disagreeing_boundaries() -> None:
    from staging.models import StagingConfig

    with pytest.raises(ConfigError, match="must agree"):
        PipelineConfig(staging=StagingConfig(pelvic_boundary="common_iliac_bifurcation"))


def test_hash_is_stable_and_changes_with_any_value() -> None:
    a, b = load_config(), load_config()
    assert a.hash() == b.hash()
    assert re.fullmatch(r"[0-9a-f]{16}", a.hash())
    assert load_config(lesion={"min_volume_ml": 0.11}).hash() != a.hash()
    assert load_config(suv={"strict": True}).hash() != a.hash()


@pytest.mark.parametrize("path", [None, *CONFIGS], ids=["defaults", *[p.name for p in CONFIGS]])
def test_saved_toml_reads_back_to_the_same_config(tmp_path: Path, path: Path | None) -> None:
    config = load_config(path)
    saved = tmp_path / "resolved.toml"
    saved.write_text(config.to_toml())
    again = load_config(saved)
    assert again == config
    assert again.hash() == config.hash()
    assert config.hash() in saved.read_text().splitlines()[0]


def test_parse_assignments() -> None:
    got = parse_assignments(["lesion.threshold_suv=4.5", "lesion.split=true",
                             "staging.pelvic_boundary=common_iliac_bifurcation",
                             "lesion.exclude=[\"kidneys\"]"])
    assert got == {"lesion": {"threshold_suv": 4.5, "split": True, "exclude": ["kidneys"]},
                   "staging": {"pelvic_boundary": "common_iliac_bifurcation"}}
    config = load_config(**got)
    assert config.staging.pelvic_boundary == "common_iliac_bifurcation"
    for bad in ("threshold_suv=4", "lesion.threshold_suv", "=4", "lesion.=4"):
        with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
            parse_assignments([bad])


def test_suv_settings_become_loader_overrides() -> None:
    config = load_config(suv={"use_nominal_half_life": True, "dose_unit": "MBq"})
    overrides = config.suv.overrides()
    assert overrides.use_nominal_half_life
    assert overrides.dose_unit == "MBq"
    assert overrides.injected_dose_bq is None


def test_every_suv_and_staging_key_is_documented() -> None:
    # [anatomy] and [lesion] keys are documented by their own stages (docs/anatomy.md,
    # docs/lesions.md); --show-config lists every key of every section.
    doc = (ROOT / "docs" / "configuration.md").read_text()
    from dataclasses import fields

    missing = [f"{section}.{f.name}" for section in ("suv", "staging")
               for f in fields(SECTIONS[section]) if f"`{f.name}`" not in doc]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_a_setting_switched_off_is_saved_as_none_and_reads_back(tmp_path: Path) -> None:
    config = load_config(lesion={"detect_suv": "none", "min_contrast_noise": None})
    assert config.lesion.detect_suv is None
    assert config.lesion.min_contrast_noise is None
    saved = tmp_path / "resolved.toml"
    saved.write_text(config.to_toml())
    assert 'detect_suv = "none"' in saved.read_text()
    assert load_config(saved) == config
    assert "isocontour_fraction" not in saved.read_text()  # None is its default: left out


def test_none_for_a_setting_that_cannot_be_off_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigError, match="min_volume_ml"):
        load_config(lesion={"min_volume_ml": "none"})
