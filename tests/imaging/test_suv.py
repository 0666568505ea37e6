"""SUV: QIBA algorithm, vendor branches and every failure branch, against known answers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from imaging.errors import MissingAttributeError, SuvError
from imaging.suv import (
    SuvOverrides,
    body_surface_area_m2,
    compute_suv_factors,
    ideal_body_weight_kg,
    lean_body_mass_kg,
    parse_da,
    parse_dt,
    parse_tm,
)
from tests.imaging.dicom_builders import (
    Geometry,
    PetSpec,
    activity_volume,
    dataset_from_header_json,
    expected_suvbw_factor,
    pet_dataset,
    uid,
)

PUBLIC = Path(__file__).resolve().parents[2] / "fixtures" / "public"
VENDOR = PUBLIC / "suv-vendor-headers"
ACRIN = PUBLIC / "acrin-flt-pt-slices"

_GEOM = Geometry(shape=(3, 4, 4))


def headers(spec: PetSpec, n: int = 3, mutate=None) -> list[Dataset]:
    act = activity_volume(_GEOM)
    out = []
    for k in range(n):
        ds = pet_dataset(spec, _GEOM, k, act[k], study_uid=uid("s"), series_uid=uid("pet"),
                         for_uid=uid("f"))
        if mutate is not None:
            mutate(k, ds)
        out.append(ds)
    return out


# -- public reference headers ---------------------------------------------------------------
_EXPECTED = json.loads((VENDOR / "expected_suvbw.json").read_text())


@pytest.mark.parametrize("name", sorted(k for k in _EXPECTED if not k.startswith("_")))
def test_vendor_headers_give_expected_suvbw_factor(name: str) -> None:
    instances = json.loads((VENDOR / "metadata" / f"{name}-instances.json").read_text())
    result = compute_suv_factors([dataset_from_header_json(i) for i in instances])
    assert result.factors.shape == (len(instances),)
    assert np.all(np.abs(result.factors - _EXPECTED[name]) < 1e-6)
    assert result.factor == pytest.approx(_EXPECTED[name], rel=1e-9)
    assert result.unit == "g/ml"


def test_vendor_header_acquisition_before_series_uses_earliest_acquisition() -> None:
    instances = json.loads(
        (VENDOR / "metadata" / "BQML_AC_DT_lessThan_S_DT_SIEMENS-instances.json").read_text())
    prov = compute_suv_factors([dataset_from_header_json(i) for i in instances]).provenance
    assert prov["scan_time_source"].startswith("earliest AcquisitionDate")
    assert prov["scan_datetime"] == "2020-12-17T12:35:14.999995"


@pytest.mark.parametrize(
    ("name", "weight", "dose", "scan", "inj"),
    [
        # 028: SeriesTime 11:19:59.109 (before AcquisitionTime 11:35:59) -> series time is used
        ("ACRIN-FLT-Breast_028_PT_slice.dcm", 82.174, 173529998.7793, 11 * 3600 + 19 * 60
         + 59.109, 11 * 3600 + 19 * 60 + 59),
        ("ACRIN-FLT-Breast_029_PT_slice.dcm", 69.7344, 178340011.59668, 15 * 3600 + 23 * 60
         + 16.921, 14 * 3600 + 17 * 60),
    ],
)
def test_acrin_real_slices_read_with_correct_suv_factor(
    name: str, weight: float, dose: float, scan: float, inj: float
) -> None:
    ds = pydicom.dcmread(ACRIN / name)
    result = compute_suv_factors([ds], paths=[ACRIN / name])
    expected = weight * 1000 / (dose * 2 ** (-(scan - inj) / 6586.2))
    assert result.factor == pytest.approx(expected, rel=1e-9)
    assert result.provenance["scan_time_source"] == "SeriesDate/SeriesTime"
    suv = ds.pixel_array * float(ds.RescaleSlope) * result.factor
    assert 0 < suv.max() < 50  # FLT uptake in SUV, not Bq/ml
    if name.endswith("028_PT_slice.dcm"):
        assert any("< 30 min" in w for w in result.warnings)


# -- synthetic: every branch ---------------------------------------------------------------
def test_bqml_start_matches_formula_and_records_inputs() -> None:
    spec = PetSpec()
    result = compute_suv_factors(headers(spec))
    assert result.factor == pytest.approx(expected_suvbw_factor(spec), rel=1e-12)
    prov = result.provenance
    assert prov["branch"] == "BQML/DecayCorrection START"
    assert prov["decay_time_s"] == 3600.0
    assert prov["injected_dose_bq"] == 300e6
    assert prov["patient_weight_kg"] == 80.0
    assert prov["half_life_s"] == 6586.2
    assert prov["injection_time_source"] == "RadiopharmaceuticalStartDateTime"
    assert prov["warnings"] == []
    json.dumps(prov)  # JSON-ready


def test_injection_time_only_uses_series_date() -> None:
    spec = PetSpec(injection_as="time")
    result = compute_suv_factors(headers(spec))
    assert result.factor == pytest.approx(expected_suvbw_factor(spec), rel=1e-12)
    assert result.provenance["injection_time_source"].startswith("RadiopharmaceuticalStartTime")


def test_injection_before_midnight_scan_after() -> None:
    spec = PetSpec(injection=datetime(2025, 3, 4, 23, 30), injection_as="time",
                   series_time=datetime(2025, 3, 5, 0, 45))
    result = compute_suv_factors(headers(spec))
    assert result.provenance["decay_time_s"] == 4500.0
    assert result.factor == pytest.approx(expected_suvbw_factor(spec), rel=1e-12)
    assert any("day before" in w for w in result.warnings)


def test_injection_datetime_on_previous_day_is_honoured() -> None:
    spec = PetSpec(injection=datetime(2025, 3, 3, 23, 30), series_time=datetime(2025, 3, 4, 1))
    result = compute_suv_factors(headers(spec))
    assert result.provenance["decay_time_s"] == 5400.0


def test_series_after_acquisition_uses_earliest_acquisition() -> None:
    spec = PetSpec(series_time=datetime(2025, 3, 4, 10, 30),
                   acquisition_time=datetime(2025, 3, 4, 10, 0))

    def later(k: int, ds: Dataset) -> None:
        ds.AcquisitionTime = f"10{k:02d}00"  # 10:00, 10:01, 10:02

    result = compute_suv_factors(headers(spec, mutate=later))
    assert result.provenance["decay_time_s"] == 3600.0
    assert "earliest" in result.provenance["scan_time_source"]


def test_ge_private_scan_time_used_when_series_after_acquisition() -> None:
    spec = PetSpec(
        manufacturer="GE MEDICAL SYSTEMS",
        series_time=datetime(2025, 3, 4, 10, 30), acquisition_time=datetime(2025, 3, 4, 10, 5),
        private_creators={0x0009: (0x0010, "GEMS_PETD_01")},
        private={(0x0009, 0x100D): ("DT", "20250304100000.00")},
    )
    result = compute_suv_factors(headers(spec))
    assert result.provenance["decay_time_s"] == 3600.0
    assert result.provenance["scan_time_source"].startswith("GE private (0009,100D)")


def test_decay_correction_admin_uses_no_decay() -> None:
    spec = PetSpec(decay_correction="ADMIN")
    result = compute_suv_factors(headers(spec))
    assert result.factor == pytest.approx(80_000 / 300e6, rel=1e-12)
    assert result.provenance["decay_time_s"] == 0.0


def test_units_gml_returns_stored_values_unchanged() -> None:
    result = compute_suv_factors(headers(PetSpec(units="GML", dose_bq=None)))
    assert np.array_equal(result.factors, np.ones(3))
    assert result.unit == "g/ml"


def test_units_gml_to_lbm_scales_by_mass_ratio() -> None:
    result = compute_suv_factors(headers(PetSpec(units="GML")), suv_type="lbm")
    assert result.factor == pytest.approx(lean_body_mass_kg(80, 1.8, "M") / 80, rel=1e-12)


def test_units_gml_to_bsa_scales_by_area_per_gram() -> None:
    result = compute_suv_factors(headers(PetSpec(units="GML")), suv_type="bsa")
    assert result.unit == "cm2/ml"
    assert result.factor == pytest.approx(body_surface_area_m2(80, 1.8) * 1e4 / 80_000,
                                          rel=1e-12)


def test_units_cm2ml_is_suvbsa() -> None:
    result = compute_suv_factors(headers(PetSpec(units="CM2ML")), suv_type="bsa")
    assert result.unit == "cm2/ml"
    assert result.factor == 1.0
    with pytest.raises(SuvError, match="CM2ML"):
        compute_suv_factors(headers(PetSpec(units="CM2ML")), suv_type="bw")


def test_philips_cnts_suv_scale_factor() -> None:
    spec = PetSpec(units="CNTS", manufacturer="Philips Medical Systems",
                   private_creators={0x7053: (0x0010, "Philips PET Private Group")},
                   private={(0x7053, 0x1000): ("DS", "0.000512")})
    result = compute_suv_factors(headers(spec))
    assert result.factor == 0.000512
    assert "7053,1000" in result.provenance["branch"]


def test_philips_cnts_activity_factor_then_bqml() -> None:
    spec = PetSpec(units="CNTS", manufacturer="Philips Medical Systems",
                   private_creators={0x7053: (0x0010, "Philips PET Private Group")},
                   private={(0x7053, 0x1009): ("DS", "4.5")})
    result = compute_suv_factors(headers(spec))
    assert result.factor == pytest.approx(4.5 * expected_suvbw_factor(spec), rel=1e-12)


def test_philips_cnts_without_private_factors_fails() -> None:
    with pytest.raises(SuvError, match=r"CNTS.*\(7053,1000\).*\(7053,1009\)"):
        compute_suv_factors(headers(PetSpec(units="CNTS")))


def test_dose_in_mbq_detected_and_reported() -> None:
    spec = PetSpec(dose_bq="300")
    result = compute_suv_factors(headers(spec))
    assert result.factor == pytest.approx(expected_suvbw_factor(PetSpec()), rel=1e-12)
    assert result.provenance["injected_dose_unit_detected"] == "MBq"
    assert any("MBq" in w for w in result.warnings)
    # dose_unit="Bq" refuses the rescaling: the stored 300 is then taken as 300 Bq
    as_bq = compute_suv_factors(headers(spec), overrides=SuvOverrides(dose_unit="Bq"))
    assert as_bq.factor == pytest.approx(1e6 * result.factor, rel=1e-12)


@pytest.mark.parametrize(
    ("suv_type", "mass_g"),
    [
        ("bw", 80_000.0),
        ("lbm", 9270 * 80 / (6680 + 216 * 80 / 1.8**2) * 1000),
        ("lbm-james", (1.10 * 80 - 120 * (80 / 180) ** 2) * 1000),
        ("ibw", (50 + 0.9055 * (180 - 152.4)) * 1000),
        ("bsa", 0.007184 * 180**0.725 * 80**0.425 * 1e4),
    ],
)
def test_suv_types(suv_type: str, mass_g: float) -> None:
    spec = PetSpec()
    result = compute_suv_factors(headers(spec), suv_type=suv_type)
    assert result.factor == pytest.approx(mass_g / (80_000 / expected_suvbw_factor(spec)),
                                          rel=1e-12)
    assert result.unit == ("cm2/ml" if suv_type == "bsa" else "g/ml")


def test_body_formulas_female() -> None:
    assert lean_body_mass_kg(60, 1.6, "F") == pytest.approx(9270 * 60 / (8780 + 244 * 60 / 2.56))
    assert lean_body_mass_kg(60, 1.6, "F", formula="james") == pytest.approx(
        1.07 * 60 - 148 * (60 / 160) ** 2)
    assert ideal_body_weight_kg(1.6, "F") == pytest.approx(45.5 + 0.9055 * 7.6)
    assert body_surface_area_m2(60, 1.6) == pytest.approx(0.007184 * 160**0.725 * 60**0.425)


def test_overrides_fill_missing_values_and_are_recorded() -> None:
    spec = PetSpec(weight_kg=None, dose_bq=None)
    result = compute_suv_factors(
        headers(spec), overrides=SuvOverrides(patient_weight_kg=80.0, injected_dose_bq=300e6))
    assert result.factor == pytest.approx(expected_suvbw_factor(PetSpec()), rel=1e-12)
    assert result.provenance["overrides_used"] == {"patient_weight_kg": 80.0,
                                                   "injected_dose_bq": 300e6}


def test_nominal_half_life_only_on_opt_in() -> None:
    spec = PetSpec(half_life_s=None)
    result = compute_suv_factors(headers(spec),
                                 overrides=SuvOverrides(use_nominal_half_life=True))
    assert result.provenance["half_life_s"] == 6586.2
    assert "nominal" in result.provenance["half_life_source"]


def test_decay_none_with_override_decays_to_each_acquisition() -> None:
    spec = PetSpec(decay_correction="NONE")

    def stagger(k: int, ds: Dataset) -> None:
        ds.AcquisitionTime = f"10{2 * k:02d}00"

    result = compute_suv_factors(
        headers(spec, mutate=stagger),
        overrides=SuvOverrides(decay_correction_none="acquisition"))
    expected = [80_000 / (300e6 * 2 ** (-(3600 + 120 * k) / 6586.2)) for k in range(3)]
    np.testing.assert_allclose(result.factors, expected, rtol=1e-12)
    assert result.provenance["per_instance_factors_differ"] is True


# -- failures: one typed error per broken input ----------------------------------------------
def _drop_rp(kw: str):
    def mutate(k: int, ds: Dataset) -> None:
        delattr(ds.RadiopharmaceuticalInformationSequence[0], kw)
    return mutate


def _bad_start_datetime(k: int, ds: Dataset) -> None:
    tag = 0x00181078  # RadiopharmaceuticalStartDateTime
    ds.RadiopharmaceuticalInformationSequence[0][tag] = DataElement(
        tag, "DT", "2025-3-4", validation_mode=pydicom.config.IGNORE)


@pytest.mark.parametrize(
    ("spec", "mutate", "error", "pattern"),
    [
        (PetSpec(dose_bq=None), None, MissingAttributeError,
         r"RadionuclideTotalDose \(0018,1074\) is absent.*--injected-dose-mbq"),
        (PetSpec(weight_kg=None), None, MissingAttributeError,
         r"PatientWeight \(0010,1030\) is absent.*--weight-kg"),
        (PetSpec(weight_kg=0.0), None, SuvError, r"PatientWeight \(0010,1030\) = 0.0 kg"),
        (PetSpec(half_life_s=None), None, MissingAttributeError,
         r"RadionuclideHalfLife \(0018,1075\) is absent.*--half-life-s"),
        (PetSpec(injection=None), None, MissingAttributeError,
         r"RadiopharmaceuticalStartDateTime \(0018,1078\).*RadiopharmaceuticalStartTime "
         r"\(0018,1072\).*--injection-time"),
        (PetSpec(injection=datetime(2025, 3, 4, 11, 0)), None, SuvError,
         r"decay time is negative \(-3600.0 s\)"),
        (PetSpec(decay_correction="NONE"), None, SuvError,
         r"DecayCorrection \(0054,1102\) = NONE.*decay_correction_none"),
        (PetSpec(units="PROPCNTS"), None, SuvError, r"Units \(0054,1001\) = 'PROPCNTS'"),
        (PetSpec(units="CNTS"), None, SuvError, r"Philips SUV scale factor \(7053,1000\)"),
        (PetSpec(corrected_image=("NORM", "DECY")), None, SuvError,
         r"CorrectedImage \(0028,0051\) = \['NORM', 'DECY'\] lacks ATTN"),
        (PetSpec(half_life_s=-5.0), None, SuvError, r"RadionuclideHalfLife .* must be positive"),
        (PetSpec(), lambda k, ds: setattr(ds, "PatientWeight", "81") if k == 2 else None,
         SuvError, r"PatientWeight \(0010,1030\) = '81' differs"),
        (PetSpec(), lambda k, ds: delattr(ds, "RadiopharmaceuticalInformationSequence"),
         MissingAttributeError, r"RadiopharmaceuticalInformationSequence \(0054,0016\)"),
        (PetSpec(), lambda k, ds: delattr(ds, "Units"), MissingAttributeError,
         r"Units \(0054,1001\) is absent"),
        (PetSpec(), _drop_rp("RadiopharmaceuticalStartDateTime"), MissingAttributeError,
         r"injection time"),
        (PetSpec(), _bad_start_datetime, SuvError,
         r"RadiopharmaceuticalStartDateTime \(0018,1078\) = "),
    ],
    ids=[
        "missing-dose", "missing-weight", "zero-weight", "missing-half-life",
        "missing-injection-time", "negative-decay-time", "decay-none-without-override",
        "unknown-units", "philips-cnts-without-private-factors", "not-attenuation-corrected",
        "negative-half-life", "inconsistent-series", "no-radiopharmaceutical-sequence",
        "missing-units", "no-start-time", "bad-datetime",
    ],
)
def test_broken_headers_raise_typed_errors(spec, mutate, error, pattern) -> None:
    with pytest.raises(error, match=pattern) as info:
        compute_suv_factors(headers(spec, mutate=mutate), paths=[Path(f"IM{k}") for k in range(3)])
    assert str(info.value).startswith("IM")  # names the file


@pytest.mark.parametrize(
    ("suv_type", "spec", "pattern"),
    [
        ("lbm", PetSpec(sex="O"), r"PatientSex \(0010,0040\) = 'O'.*--sex"),
        ("ibw", PetSpec(sex=None), r"PatientSex \(0010,0040\)"),
        ("bsa", PetSpec(size_m=None), r"PatientSize \(0010,1020\) is absent.*--height-m"),
        ("lbm", PetSpec(size_m=180.0),
         r"PatientSize \(0010,1020\) = 180.0 looks like centimetres"),
    ],
)
def test_suv_types_require_their_attributes(suv_type: str, spec: PetSpec, pattern: str) -> None:
    with pytest.raises((MissingAttributeError, SuvError), match=pattern):
        compute_suv_factors(headers(spec), suv_type=suv_type)


def test_unknown_suv_type() -> None:
    with pytest.raises(SuvError, match="unknown SUV type 'lean'"):
        compute_suv_factors(headers(PetSpec()), suv_type="lean")


# -- date/time parsing -----------------------------------------------------------------------
def test_parse_dicom_times() -> None:
    assert parse_tm("123514.999995") == timedelta(hours=12, minutes=35, seconds=14,
                                                  microseconds=999995)
    assert parse_tm("0930") == timedelta(hours=9, minutes=30)
    assert parse_tm("10:19:00") == timedelta(hours=10, minutes=19)
    assert parse_da("20201217") == datetime(2020, 12, 17)
    assert parse_dt("20201217084500.00 ") == datetime(2020, 12, 17, 8, 45)
    assert parse_dt("20201217084500+0100") == datetime(2020, 12, 17, 8, 45)
    for bad in ("2561", "ab", "251212"):
        with pytest.raises(ValueError, match="not a DICOM"):
            parse_tm(bad) if len(bad) != 6 else parse_da(bad)
