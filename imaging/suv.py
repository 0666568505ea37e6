"""SUV scale factors: the QIBA vendor-neutral algorithm plus vendor branches.

Every conversion returns an :class:`SuvConversion`: one factor per instance (applied to the
modality-LUT value ``stored * RescaleSlope + RescaleIntercept``), the output unit and a JSON-ready
provenance record holding every input value, the branch taken, the factor and the warnings.
Nothing is defaulted silently: a missing dose, weight, half-life or time raises
:class:`~imaging.errors.SuvError` (or :class:`~imaging.errors.MissingAttributeError`) naming the
attribute and the fix, usually a field of :class:`SuvOverrides`.

See ``docs/suv.md`` for the algorithm, the branches and the references.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from imaging.dicom import median, raw_text, raw_value
from imaging.errors import MissingAttributeError, SuvError

__all__ = [
    "NOMINAL_HALF_LIFE_S",
    "SUV_TYPES",
    "SuvConversion",
    "SuvOverrides",
    "SuvType",
    "body_surface_area_m2",
    "compute_suv_factors",
    "ideal_body_weight_kg",
    "lean_body_mass_kg",
    "parse_da",
    "parse_dt",
    "parse_tm",
]

logger = logging.getLogger(__name__)

SuvType = Literal["bw", "lbm", "lbm-james", "bsa", "ibw"]
SUV_TYPES: tuple[str, ...] = ("bw", "lbm", "lbm-james", "bsa", "ibw")

#: Nominal half-lives (s) by radionuclide code value (CID 4020), used ONLY when the user opts in
#: with ``SuvOverrides(use_nominal_half_life=True)``.
NOMINAL_HALF_LIFE_S: Mapping[str, float] = {
    "C-111A1": 6586.2,  # 18F
    "C-131A1": 4062.0,  # 68Ga (67.7 min)
    "C-128A2": 1220.0,  # 11C (20.3 min)
}

# (keyword, tag) of every attribute the SUV maths reads, for messages.
_TAGS: Mapping[str, str] = {
    "Units": "(0054,1001)",
    "DecayCorrection": "(0054,1102)",
    "CorrectedImage": "(0028,0051)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
    "PatientWeight": "(0010,1030)",
    "PatientSize": "(0010,1020)",
    "PatientSex": "(0010,0040)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "SUVType": "(0054,1006)",
}

_GE_PRIVATE_CREATOR = "GEMS_PETD_01"
_PHILIPS_PRIVATE_CREATOR = "Philips PET Private Group"


def _tag(keyword: str) -> str:
    return f"{keyword} {_TAGS.get(keyword, '')}".rstrip()


# ------------------------------------------------------------------------------------------
# Overrides and results
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SuvOverrides:
    """Values a user supplies when the DICOM header lacks or misstates them.

    Every field defaults to "not overridden"; an overridden value replaces the header value and
    is listed under ``overrides_used`` in the provenance record.

    Parameters
    ----------
    injected_dose_bq : float, optional
        Injected activity in Bq (replaces RadionuclideTotalDose (0018,1074)).
    patient_weight_kg : float, optional
        Body weight in kg (replaces PatientWeight (0010,1030)).
    patient_size_m : float, optional
        Height in metres (replaces PatientSize (0010,1020)); needed by lbm, bsa and ibw.
    patient_sex : {"M", "F"}, optional
        Replaces PatientSex (0010,0040); needed by lbm and ibw.
    half_life_s : float, optional
        Radionuclide half-life in s (replaces RadionuclideHalfLife (0018,1075)).
    use_nominal_half_life : bool
        If the half-life is absent, take the nominal value of the radionuclide code
        (:data:`NOMINAL_HALF_LIFE_S`) instead of failing.
    injection_datetime : datetime, optional
        Start of injection (replaces RadiopharmaceuticalStartDateTime / StartTime).
    scan_datetime : datetime, optional
        Decay-correction reference time of the series (replaces the series/acquisition rule).
    dose_unit : {"auto", "Bq", "MBq"}
        Unit of the stored RadionuclideTotalDose. ``"auto"`` (default) reads values below
        1e5 as MBq (a human PET injection is 1e7..2e9 Bq) and says so in the provenance.
    decay_correction_none : {"error", "acquisition"}
        What to do with DecayCorrection NONE: fail (default) or decay the dose to each
        instance's AcquisitionDate/Time (activity not decay corrected, measured then).
    """

    injected_dose_bq: float | None = None
    patient_weight_kg: float | None = None
    patient_size_m: float | None = None
    patient_sex: str | None = None
    half_life_s: float | None = None
    use_nominal_half_life: bool = False
    injection_datetime: datetime | None = None
    scan_datetime: datetime | None = None
    dose_unit: Literal["auto", "Bq", "MBq"] = "auto"
    decay_correction_none: Literal["error", "acquisition"] = "error"

    def used(self) -> dict[str, Any]:
        """The fields that differ from their defaults (JSON-ready)."""
        out: dict[str, Any] = {}
        defaults = SuvOverrides()
        for key, value in asdict(self).items():
            if value != getattr(defaults, key):
                out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True, eq=False)
class SuvConversion:
    """Per-instance SUV scale factors and how they were obtained.

    Attributes
    ----------
    factors : ndarray, shape (N,)
        One factor per input instance, in input order; SUV = (stored * RescaleSlope +
        RescaleIntercept) * factor.
    unit : {"g/ml", "cm2/ml"}
        Unit of the resulting SUV.
    provenance : dict
        Every input value, the branch taken, the factor and warnings (JSON-ready).
    """

    factors: NDArray[np.float64]
    unit: Literal["g/ml", "cm2/ml"]
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def factor(self) -> float:
        """The series factor (the median of the per-instance factors)."""
        return median(self.factors)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings recorded in the provenance."""
        return tuple(self.provenance.get("warnings", ()))


# ------------------------------------------------------------------------------------------
# Body-size formulas
# ------------------------------------------------------------------------------------------
def lean_body_mass_kg(
    weight_kg: float, height_m: float, sex: str, *, formula: Literal["janma", "james"] = "janma"
) -> float:
    """Lean body mass (kg).

    Notes
    -----
    Janmahasatian (2005): male ``9270 W / (6680 + 216 BMI)``, female
    ``9270 W / (8780 + 244 BMI)``. James (1976): male ``1.10 W - 120 (W / H_cm)^2``, female
    ``1.07 W - 148 (W / H_cm)^2``.

    Examples
    --------
    >>> round(lean_body_mass_kg(70.0, 1.75, "M"), 2)
    55.86
    """
    bmi = weight_kg / (height_m * height_m)
    if formula == "james":
        h_cm = height_m * 100.0
        if sex == "M":
            return 1.10 * weight_kg - 120.0 * (weight_kg / h_cm) ** 2
        return 1.07 * weight_kg - 148.0 * (weight_kg / h_cm) ** 2
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)


def body_surface_area_m2(weight_kg: float, height_m: float) -> float:
    """Du Bois body surface area ``0.007184 H_cm^0.725 W^0.425`` (m^2).

    Examples
    --------
    >>> round(body_surface_area_m2(70.0, 1.75), 3)
    1.848
    """
    return float(0.007184 * (height_m * 100.0) ** 0.725 * weight_kg**0.425)


def ideal_body_weight_kg(height_m: float, sex: str) -> float:
    """Devine ideal body weight: 50 kg (male) or 45.5 kg (female) + 0.9055 kg per cm over 152.4.

    Examples
    --------
    >>> round(ideal_body_weight_kg(1.75, "M"), 2)
    70.46
    """
    base = 50.0 if sex == "M" else 45.5
    return base + 0.9055 * (height_m * 100.0 - 152.4)


# ------------------------------------------------------------------------------------------
# DICOM date/time parsing
# ------------------------------------------------------------------------------------------
_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT_RE = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$"
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip().strip("\x00").strip()


def parse_tm(value: Any) -> timedelta:
    """Parse a DICOM TM (``HHMMSS.FFFFFF``, also ``HH:MM:SS``) into time since midnight.

    Raises
    ------
    ValueError
        If the value is not a DICOM time.
    """
    text = _text(value).replace(":", "")
    m = _TM_RE.match(text)
    if not m:
        raise ValueError(f"not a DICOM time (TM): {value!r}")
    hh, mm, ss, frac = m.groups()
    hours, minutes, seconds = int(hh), int(mm or 0), int(ss or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        raise ValueError(f"not a DICOM time (TM): {value!r}")
    micro = int((frac or "0").ljust(6, "0"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)


def parse_da(value: Any) -> datetime:
    """Parse a DICOM DA (``YYYYMMDD``; ``YYYY.MM.DD`` tolerated) into a datetime at midnight.

    Raises
    ------
    ValueError
        If the value is not a DICOM date.
    """
    text = _text(value).replace(".", "").replace("-", "")
    m = _DA_RE.match(text)
    if not m:
        raise ValueError(f"not a DICOM date (DA): {value!r}")
    return datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def parse_dt(value: Any) -> datetime:
    """Parse a DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) into a naive datetime.

    A UTC offset suffix is ignored (all times of one study share it).

    Raises
    ------
    ValueError
        If the value is not a DICOM date-time.
    """
    text = _text(value)
    m = _DT_RE.match(text)
    if not m:
        raise ValueError(f"not a DICOM date-time (DT): {value!r}")
    y, mo, d, hh, mi, ss, frac, _tz = m.groups()
    return datetime(
        int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0),
        int((frac or "0").ljust(6, "0")),
    )


# ------------------------------------------------------------------------------------------
# Header access helpers
# ------------------------------------------------------------------------------------------
def _where(paths: Sequence[Path | None] | None, index: int) -> Path | None:
    if paths is None or index >= len(paths):
        return None
    return paths[index]


def _get(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword, None)
    if value is None:
        return None
    if isinstance(value, str | bytes) and _text(value) == "":
        return None
    return value


def _float(value: Any, keyword: str, path: Path | None) -> float:
    try:
        out = float(_text(value)) if isinstance(value, str | bytes) else float(value)
    except (TypeError, ValueError) as err:
        raise SuvError(
            f"{_tag(keyword)} = {value!r} is not a number; fix the header or pass an override.",
            path=path,
        ) from err
    if not math.isfinite(out):
        raise SuvError(f"{_tag(keyword)} = {value!r} is not finite.", path=path)
    return out


def _radiopharm_item(ds: Dataset) -> Dataset | None:
    seq = ds.get("RadiopharmaceuticalInformationSequence", None)
    if not seq:
        return None
    return seq[0]  # type: ignore[no-any-return]


def _private_value(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    """Value of a private element: via its creator block, else at the conventional 0x10xx slot."""
    try:
        return ds.private_block(group, creator)[offset].value
    except KeyError:
        pass
    elem = ds.get((group, 0x1000 + offset), None)
    return None if elem is None else elem.value


def _header_datetime(
    ds: Dataset, date_kw: str, time_kw: str, path: Path | None
) -> datetime | None:
    date_v, time_v = raw_text(ds, date_kw), raw_text(ds, time_kw)
    if time_v is None or date_v is None:
        return None
    try:
        return parse_da(date_v) + parse_tm(time_v)
    except ValueError as err:
        raise SuvError(
            f"{_tag(date_kw)} / {_tag(time_kw)} = {date_v!r} / {time_v!r} cannot be read as a "
            f"date and time ({err}); fix the header or pass SuvOverrides(scan_datetime=...).",
            path=path,
        ) from err


# ------------------------------------------------------------------------------------------
# The algorithm
# ------------------------------------------------------------------------------------------
_SERIES_LEVEL = (
    "Units", "DecayCorrection", "PatientWeight", "PatientSize", "PatientSex", "SeriesDate",
    "SeriesTime",
)


def _check_single_series(headers: Sequence[Dataset], paths: Sequence[Path | None] | None) -> None:
    """Every instance shares the series-level values of the first (exact text comparison).

    Fast path: instances whose undecoded element bytes equal those of the second instance are
    equal to it, and the second is compared with the first exactly.
    """
    if len(headers) < 2:
        return
    keys = (*_SERIES_LEVEL, "RadiopharmaceuticalInformationSequence")
    # taken before the exact check below decodes (and so replaces) the second's elements
    ref = [raw_value(headers[1], kw) for kw in keys]
    _check_instance(headers[0], headers[1], paths, 1)
    for i, ds in enumerate(headers[2:], start=2):
        if any(raw_value(ds, kw) != r for kw, r in zip(keys, ref, strict=True)):
            _check_instance(headers[0], ds, paths, i)


def _check_instance(first: Dataset, ds: Dataset, paths: Sequence[Path | None] | None,
                    i: int) -> None:
    for kw in _SERIES_LEVEL:
        ref, val = raw_text(first, kw), raw_text(ds, kw)
        if val != ref:
            raise SuvError(
                f"{_tag(kw)} = {val!r} differs from {ref!r} in {_where(paths, 0)}; every "
                "instance of a PET series must share its series-level attributes. Check "
                "that the folder holds one series only.",
                path=_where(paths, i),
            )
    ref_item, item = _radiopharm_item(first), _radiopharm_item(ds)
    for kw in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
               "RadiopharmaceuticalStartDateTime"):
        a = None if ref_item is None else raw_text(ref_item, kw)
        b = None if item is None else raw_text(item, kw)
        if a != b:
            raise SuvError(
                f"{_tag(kw)} = {b!r} differs from {a!r} in {_where(paths, 0)}; every instance "
                "of a PET series must share the radiopharmaceutical information.",
                path=_where(paths, i),
            )


def _patient_sex(ds: Dataset, ov: SuvOverrides, path: Path | None, suv_type: str) -> str:
    sex = ov.patient_sex if ov.patient_sex is not None else _get(ds, "PatientSex")
    sex = None if sex is None else _text(sex).upper()
    if sex not in ("M", "F"):
        raise MissingAttributeError(
            f"{_tag('PatientSex')} = {sex!r}; SUV type {suv_type!r} needs the sex M or F. "
            "Pass SuvOverrides(patient_sex='M'|'F') (CLI --sex) or use --suv-type bw.",
            path=path,
        )
    return str(sex)


def _patient_size(ds: Dataset, ov: SuvOverrides, path: Path | None, suv_type: str) -> float:
    if ov.patient_size_m is not None:
        size = float(ov.patient_size_m)
    else:
        raw = _get(ds, "PatientSize")
        if raw is None:
            raise MissingAttributeError(
                f"{_tag('PatientSize')} is absent; SUV type {suv_type!r} needs the height. "
                "Pass SuvOverrides(patient_size_m=...) (CLI --height-m) or use --suv-type bw.",
                path=path,
            )
        size = _float(raw, "PatientSize", path)
    if size > 3.0 and size < 300.0:
        raise SuvError(
            f"{_tag('PatientSize')} = {size} looks like centimetres; DICOM stores metres. "
            "Pass SuvOverrides(patient_size_m=...) with the height in metres.",
            path=path,
        )
    if not 0.3 <= size <= 3.0:
        raise SuvError(
            f"{_tag('PatientSize')} = {size} m is not a plausible height; pass "
            "SuvOverrides(patient_size_m=...).",
            path=path,
        )
    return size


def _patient_weight(ds: Dataset, ov: SuvOverrides, path: Path | None) -> float:
    if ov.patient_weight_kg is not None:
        weight = float(ov.patient_weight_kg)
    else:
        raw = _get(ds, "PatientWeight")
        if raw is None:
            raise MissingAttributeError(
                f"{_tag('PatientWeight')} is absent; SUV needs the body weight. Re-export with "
                "the patient study module or pass SuvOverrides(patient_weight_kg=...) "
                "(CLI --weight-kg).",
                path=path,
            )
        weight = _float(raw, "PatientWeight", path)
    if not 1.0 <= weight <= 500.0:
        raise SuvError(
            f"{_tag('PatientWeight')} = {weight} kg is not a plausible body weight (1..500 kg); "
            "pass SuvOverrides(patient_weight_kg=...) (CLI --weight-kg).",
            path=path,
        )
    return weight


def _suv_mass(
    suv_type: str, ds: Dataset, ov: SuvOverrides, path: Path | None, weight_kg: float,
    prov: dict[str, Any],
) -> tuple[float, Literal["g/ml", "cm2/ml"]]:
    """The body-size numerator: grams (bw, lbm, ibw) or cm^2 (bsa)."""
    if suv_type == "bw":
        return weight_kg * 1000.0, "g/ml"
    height = _patient_size(ds, ov, path, suv_type)
    prov["patient_size_m"] = height
    if suv_type == "bsa":
        bsa = body_surface_area_m2(weight_kg, height)
        prov["body_surface_area_m2"] = bsa
        return bsa * 1e4, "cm2/ml"
    sex = _patient_sex(ds, ov, path, suv_type)
    prov["patient_sex"] = sex
    if suv_type in ("lbm", "lbm-james"):
        formula: Literal["janma", "james"] = "james" if suv_type == "lbm-james" else "janma"
        lbm = lean_body_mass_kg(weight_kg, height, sex, formula=formula)
        if lbm <= 0:
            raise SuvError(
                f"lean body mass by the {formula} formula is {lbm:.1f} kg for weight "
                f"{weight_kg} kg and height {height} m; use --suv-type lbm (Janmahasatian).",
                path=path,
            )
        prov["lean_body_mass_kg"] = lbm
        prov["lean_body_mass_formula"] = (
            "Janmahasatian 2005" if formula == "janma" else "James 1976"
        )
        return lbm * 1000.0, "g/ml"
    if suv_type == "ibw":
        ibw = ideal_body_weight_kg(height, sex)
        prov["ideal_body_weight_kg"] = ibw
        prov["ideal_body_weight_formula"] = "Devine 1974"
        return ibw * 1000.0, "g/ml"
    raise SuvError(f"unknown SUV type {suv_type!r}; choose one of {', '.join(SUV_TYPES)}.")


def _half_life(item: Dataset | None, ov: SuvOverrides, path: Path | None,
               prov: dict[str, Any]) -> float:
    if ov.half_life_s is not None:
        hl = float(ov.half_life_s)
        prov["half_life_source"] = "override"
    else:
        raw = None if item is None else _get(item, "RadionuclideHalfLife")
        if raw is not None:
            hl = _float(raw, "RadionuclideHalfLife", path)
            prov["half_life_source"] = "RadionuclideHalfLife"
        else:
            code = _radionuclide_code(item)
            if ov.use_nominal_half_life and code is not None and code in NOMINAL_HALF_LIFE_S:
                hl = NOMINAL_HALF_LIFE_S[code]
                prov["half_life_source"] = f"nominal for radionuclide code {code}"
                prov["warnings"].append(
                    f"RadionuclideHalfLife absent: nominal {hl} s of {code} used (opt-in)."
                )
            else:
                raise MissingAttributeError(
                    f"{_tag('RadionuclideHalfLife')} is absent from "
                    f"{_tag('RadiopharmaceuticalInformationSequence')}; SUV needs the "
                    "half-life. Pass SuvOverrides(half_life_s=...) (CLI --half-life-s), or "
                    "use_nominal_half_life=True (CLI --nominal-half-life) to take the nominal "
                    f"value of the radionuclide (code found: {code!r}).",
                    path=path,
                )
    if hl <= 0:
        raise SuvError(
            f"{_tag('RadionuclideHalfLife')} = {hl} s must be positive; pass "
            "SuvOverrides(half_life_s=...).",
            path=path,
        )
    prov["half_life_s"] = hl
    return hl


def _radionuclide_code(item: Dataset | None) -> str | None:
    if item is None:
        return None
    seq = item.get("RadionuclideCodeSequence", None)
    if not seq:
        return None
    code = seq[0].get("CodeValue", None)
    return None if code is None else str(code)


def _injected_dose(item: Dataset | None, ov: SuvOverrides, path: Path | None,
                   prov: dict[str, Any]) -> float:
    if ov.injected_dose_bq is not None:
        dose = float(ov.injected_dose_bq)
        prov["injected_dose_source"] = "override"
    else:
        raw = None if item is None else _get(item, "RadionuclideTotalDose")
        if raw is None:
            raise MissingAttributeError(
                f"{_tag('RadionuclideTotalDose')} is absent; SUV needs the injected dose. "
                "Re-export with the radiopharmaceutical module or pass "
                "SuvOverrides(injected_dose_bq=...) (CLI --injected-dose-mbq).",
                path=path,
            )
        stored = _float(raw, "RadionuclideTotalDose", path)
        prov["injected_dose_as_stored"] = stored
        dose = stored
        if ov.dose_unit == "MBq" or (ov.dose_unit == "auto" and 0 < stored < 1e5):
            dose = stored * 1e6
            prov["injected_dose_unit_detected"] = "MBq"
            if ov.dose_unit == "auto":
                prov["warnings"].append(
                    f"RadionuclideTotalDose (0018,1074) = {stored} is below 1e5 and was read as "
                    f"MBq ({dose:.6g} Bq); DICOM specifies Bq. Pass dose_unit='Bq' to refuse."
                )
        else:
            prov["injected_dose_unit_detected"] = "Bq"
        prov["injected_dose_source"] = "RadionuclideTotalDose"
    if dose <= 0:
        raise SuvError(
            f"{_tag('RadionuclideTotalDose')} = {dose} Bq must be positive; pass "
            "SuvOverrides(injected_dose_bq=...) (CLI --injected-dose-mbq).",
            path=path,
        )
    prov["injected_dose_bq"] = dose
    return dose


def _injection_datetime(
    item: Dataset | None, ds: Dataset, ov: SuvOverrides, path: Path | None,
    scan: datetime | None, prov: dict[str, Any],
) -> datetime:
    if ov.injection_datetime is not None:
        prov["injection_time_source"] = "override"
        return ov.injection_datetime
    dt_raw = None if item is None else _get(item, "RadiopharmaceuticalStartDateTime")
    if dt_raw is not None:
        try:
            start = parse_dt(dt_raw)
        except ValueError as err:
            raise SuvError(
                f"{_tag('RadiopharmaceuticalStartDateTime')} = {dt_raw!r} is not a DICOM "
                "date-time; pass SuvOverrides(injection_datetime=...) (CLI --injection-time).",
                path=path,
            ) from err
        prov["injection_time_source"] = "RadiopharmaceuticalStartDateTime"
        return start
    tm_raw = None if item is None else _get(item, "RadiopharmaceuticalStartTime")
    if tm_raw is None:
        raise MissingAttributeError(
            f"neither {_tag('RadiopharmaceuticalStartDateTime')} nor "
            f"{_tag('RadiopharmaceuticalStartTime')} is present; SUV needs the injection "
            "time. Pass SuvOverrides(injection_datetime=...) (CLI --injection-time).",
            path=path,
        )
    date_raw = _get(ds, "SeriesDate")
    if date_raw is None:
        raise MissingAttributeError(
            f"{_tag('RadiopharmaceuticalStartTime')} has no date and {_tag('SeriesDate')} is "
            "absent; pass SuvOverrides(injection_datetime=...) (CLI --injection-time).",
            path=path,
        )
    try:
        start = parse_da(date_raw) + parse_tm(tm_raw)
    except ValueError as err:
        raise SuvError(
            f"{_tag('RadiopharmaceuticalStartTime')} = {tm_raw!r} with {_tag('SeriesDate')} = "
            f"{date_raw!r} cannot be read ({err}); pass SuvOverrides(injection_datetime=...).",
            path=path,
        ) from err
    prov["injection_time_source"] = "RadiopharmaceuticalStartTime + SeriesDate"
    if scan is not None and start > scan:
        # Time only: injection before midnight, scan after it.
        start -= timedelta(days=1)
        prov["warnings"].append(
            "RadiopharmaceuticalStartTime is later than the scan time of day: injection taken "
            "as the day before SeriesDate (scan after midnight)."
        )
    return start


def _scan_datetime(
    headers: Sequence[Dataset], ov: SuvOverrides, paths: Sequence[Path | None] | None,
    prov: dict[str, Any],
) -> datetime:
    """QIBA: SeriesDate/Time unless after the earliest AcquisitionDate/Time."""
    if ov.scan_datetime is not None:
        prov["scan_time_source"] = "override"
        return ov.scan_datetime
    first = headers[0]
    p0 = _where(paths, 0)
    series = _header_datetime(first, "SeriesDate", "SeriesTime", p0)
    acquisitions = [
        a for i, ds in enumerate(headers)
        if (a := _header_datetime(ds, "AcquisitionDate", "AcquisitionTime", _where(paths, i)))
        is not None
    ]
    earliest = min(acquisitions) if acquisitions else None
    prov["series_datetime"] = None if series is None else series.isoformat()
    prov["earliest_acquisition_datetime"] = None if earliest is None else earliest.isoformat()
    if series is not None and (earliest is None or series <= earliest):
        prov["scan_time_source"] = "SeriesDate/SeriesTime"
        return series
    if series is None and earliest is None:
        raise MissingAttributeError(
            f"{_tag('SeriesDate')}/{_tag('SeriesTime')} and {_tag('AcquisitionDate')}/"
            f"{_tag('AcquisitionTime')} are absent; SUV needs the scan time. Pass "
            "SuvOverrides(scan_datetime=...) (CLI --scan-time).",
            path=p0,
        )
    ge = _private_value(first, 0x0009, _GE_PRIVATE_CREATOR, 0x0D)
    if ge is not None and _text(ge):
        try:
            ge_dt = parse_dt(ge)
        except ValueError as err:
            raise SuvError(
                f"GE private scan date-time (0009,100D) [{_GE_PRIVATE_CREATOR}] = {ge!r} is "
                "not a DICOM date-time; pass SuvOverrides(scan_datetime=...).",
                path=p0,
            ) from err
        prov["ge_private_scan_datetime"] = ge_dt.isoformat()
        prov["scan_time_source"] = f"GE private (0009,100D) {_GE_PRIVATE_CREATOR}"
        return ge_dt
    assert earliest is not None  # series is None or after earliest
    prov["scan_time_source"] = (
        "earliest AcquisitionDate/AcquisitionTime (SeriesTime is after it: post-processed series)"
        if series is not None
        else "earliest AcquisitionDate/AcquisitionTime (no SeriesDate/SeriesTime)"
    )
    return earliest


def _decay_factor(
    scan: datetime, start: datetime, half_life: float, path: Path | None, prov: dict[str, Any],
    warn_early: bool = True,
) -> tuple[float, float]:
    decay_s = (scan - start).total_seconds()
    if decay_s < 0:
        raise SuvError(
            f"decay time is negative ({decay_s:.1f} s): scan time {scan.isoformat()} is before "
            f"the injection {start.isoformat()} ({_tag('RadiopharmaceuticalStartDateTime')}). "
            "Check the dates and times or pass SuvOverrides(injection_datetime=..., "
            "scan_datetime=...).",
            path=path,
        )
    if warn_early and decay_s < 1800:
        prov["warnings"].append(
            f"scan starts {decay_s / 60:.1f} min after injection (< 30 min): uptake may not "
            "be at plateau; check the injection and series times."
        )
    return decay_s, 2.0 ** (-decay_s / half_life)


def compute_suv_factors(
    headers: Sequence[Dataset],
    *,
    suv_type: str = "bw",
    overrides: SuvOverrides | None = None,
    paths: Sequence[Path | None] | None = None,
) -> SuvConversion:
    """SUV scale factors of one PET series (QIBA vendor-neutral algorithm + vendor branches).

    Parameters
    ----------
    headers : sequence of pydicom.Dataset
        The instances of one PET series (pixel data not needed).
    suv_type : {"bw", "lbm", "lbm-james", "bsa", "ibw"}
        Body-weight (default), lean-body-mass (Janmahasatian, or James), body-surface-area or
        ideal-body-weight SUV.
    overrides : SuvOverrides, optional
        User-supplied values that replace or complete the header.
    paths : sequence of Path, optional
        The file of each header, for error messages.

    Returns
    -------
    SuvConversion
        Per-instance factors (SUV = modality value * factor), unit and provenance.

    Raises
    ------
    MissingAttributeError
        If a required attribute (dose, weight, half-life, injection time, Units, height or sex
        for the SUV type) is absent.
    SuvError
        If a value is invalid (negative decay time, unknown Units, DecayCorrection NONE,
        Philips CNTS without private factors, missing ATTN/DECY, inconsistent series).

    Notes
    -----
    BQML: ``factor = mass_g / (dose_Bq * 2 ** (-(t_scan - t_injection) / T_half))``, with
    ``t_scan`` = SeriesDate/Time unless after the earliest AcquisitionDate/Time (then GE's
    private (0009,100D) or that earliest acquisition time); DecayCorrection ADMIN gives a decay
    time of 0. CNTS (Philips): (7053,1000) is the SUVbw factor; else (7053,1009) converts to
    Bq/ml and the BQML branch follows. GML: factor 1 (already SUVbw). CM2ML: factor 1 for
    SUVbsa.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset()
    >>> ds.Units, ds.DecayCorrection, ds.CorrectedImage = "BQML", "START", ["ATTN", "DECY"]
    >>> ds.SeriesDate, ds.SeriesTime, ds.PatientWeight = "20250101", "110000", 70
    >>> item = Dataset()
    >>> item.RadiopharmaceuticalStartDateTime = "20250101100000"
    >>> item.RadionuclideTotalDose, item.RadionuclideHalfLife = 368080000, 6586.2
    >>> ds.RadiopharmaceuticalInformationSequence = [item]
    >>> round(compute_suv_factors([ds]).factor * 1e4, 4)
    2.7778
    """
    if not headers:
        raise SuvError("no PET instances given to compute SUV from.")
    if suv_type not in SUV_TYPES:
        raise SuvError(f"unknown SUV type {suv_type!r}; choose one of {', '.join(SUV_TYPES)}.")
    ov = overrides or SuvOverrides()
    first = headers[0]
    p0 = _where(paths, 0)
    prov: dict[str, Any] = {
        "algorithm": "QIBA vendor-neutral SUV (2018-06-26) with vendor branches",
        "suv_type": suv_type,
        "n_instances": len(headers),
        "manufacturer": None if _get(first, "Manufacturer") is None else str(first.Manufacturer),
        "overrides_used": ov.used(),
        "warnings": [],
    }
    _check_single_series(headers, paths)

    units_raw = _get(first, "Units")
    if units_raw is None:
        raise MissingAttributeError(
            f"{_tag('Units')} is absent; SUV needs to know whether pixels are BQML, CNTS, GML "
            "or CM2ML. Re-export the series with the PET image module.",
            path=p0,
        )
    units = _text(units_raw).upper()
    prov["Units"] = units
    corrected = first.get("CorrectedImage", None)
    if corrected is None:
        corrected_list: list[str] = []
    elif isinstance(corrected, str | bytes):
        corrected_list = [_text(corrected).upper()]
    else:
        corrected_list = [_text(c).upper() for c in corrected]
    prov["CorrectedImage"] = corrected_list
    decay_corr = _get(first, "DecayCorrection")
    decay_corr = None if decay_corr is None else _text(decay_corr).upper()
    prov["DecayCorrection"] = decay_corr
    prov["SUVType_tag"] = None if _get(first, "SUVType") is None else _text(first.SUVType)

    if units in ("GML", "CM2ML"):
        return _already_suv(units, headers, suv_type, ov, paths, prov)

    if units not in ("BQML", "CNTS"):
        raise SuvError(
            f"{_tag('Units')} = {units!r} is not one of BQML, CNTS, GML, CM2ML; this series "
            "cannot be converted to SUV (e.g. uncalibrated or non-PET units). Re-export the "
            "PET series in Bq/ml.",
            path=p0,
        )
    if corrected is None:
        prov["warnings"].append(
            "CorrectedImage (0028,0051) absent: attenuation and decay correction assumed."
        )
    elif "ATTN" not in corrected_list or "DECY" not in corrected_list:
        raise SuvError(
            f"{_tag('CorrectedImage')} = {corrected_list} lacks ATTN and/or DECY; SUV needs an "
            "attenuation- and decay-corrected PET. Choose the corrected series (--series UID).",
            path=p0,
        )

    weight = _patient_weight(first, ov, p0)
    prov["patient_weight_kg"] = weight
    mass, unit = _suv_mass(suv_type, first, ov, p0, weight, prov)
    prov["mass_numerator"] = mass

    if units == "CNTS":
        suv_scale = _private_value(first, 0x7053, _PHILIPS_PRIVATE_CREATOR, 0x00)
        act_scale = _private_value(first, 0x7053, _PHILIPS_PRIVATE_CREATOR, 0x09)
        suv_scale_f = None if suv_scale is None or _text(suv_scale) == "" else _float(
            suv_scale, "Philips SUV scale factor (7053,1000)", p0)
        act_scale_f = None if act_scale is None or _text(act_scale) == "" else _float(
            act_scale, "Philips activity concentration scale factor (7053,1009)", p0)
        prov["philips_suv_scale_factor_7053_1000"] = suv_scale_f
        prov["philips_activity_scale_factor_7053_1009"] = act_scale_f
        if suv_scale_f is not None and suv_scale_f > 0:
            if suv_type != "bw":
                factor = suv_scale_f * mass / (weight * 1000.0)
                prov["branch"] = f"CNTS/Philips (7053,1000) SUVbw factor x {suv_type} mass ratio"
            else:
                factor = suv_scale_f
                prov["branch"] = "CNTS/Philips (7053,1000) SUV scale factor"
            _check_per_instance_private(headers, paths, suv_scale_f)
            prov["factor"] = factor
            return SuvConversion(np.full(len(headers), factor), unit, _finish(prov))
        if act_scale_f is None or act_scale_f <= 0:
            raise SuvError(
                f"{_tag('Units')} = CNTS but neither the Philips SUV scale factor (7053,1000) "
                "nor the activity concentration scale factor (7053,1009) is present (found "
                f"{suv_scale!r}, {act_scale!r}); counts cannot be converted to SUV. Re-export "
                "the series from the scanner in BQML.",
                path=p0,
            )
        bq_per_modality_value = act_scale_f
        prov["branch_units"] = "CNTS/Philips (7053,1009) -> Bq/ml, then as BQML"
    else:
        bq_per_modality_value = 1.0
        prov["branch_units"] = "BQML"

    item = _radiopharm_item(first)
    if item is None and ov.injected_dose_bq is None:
        raise MissingAttributeError(
            f"{_tag('RadiopharmaceuticalInformationSequence')} is absent; SUV needs the "
            "injected dose, injection time and half-life. Re-export with the radiopharmaceutical "
            "module or pass SuvOverrides (CLI --injected-dose-mbq, --injection-time, "
            "--half-life-s).",
            path=p0,
        )
    dose = _injected_dose(item, ov, p0, prov)
    half_life = _half_life(item, ov, p0, prov)
    prov["radiopharmaceutical"] = (
        None if item is None or _get(item, "Radiopharmaceutical") is None
        else _text(item.Radiopharmaceutical)
    )
    prov["radionuclide_code"] = _radionuclide_code(item)

    if decay_corr is None:
        raise MissingAttributeError(
            f"{_tag('DecayCorrection')} is absent; SUV needs to know the decay-correction "
            "reference (START, ADMIN or NONE). Re-export the series with the PET series module.",
            path=p0,
        )
    n = len(headers)
    if decay_corr == "START":
        scan = _scan_datetime(headers, ov, paths, prov)
        start = _injection_datetime(item, first, ov, p0, scan, prov)
        decay_s, decay = _decay_factor(scan, start, half_life, p0, prov)
        prov["scan_datetime"] = scan.isoformat()
        prov["injection_datetime"] = start.isoformat()
        prov["decay_time_s"] = decay_s
        factors = np.full(n, mass / (dose * decay))
        prov["branch"] = f"{prov['branch_units']}/DecayCorrection START"
    elif decay_corr == "ADMIN":
        # Already decay-corrected to the administration time: no decay of the dose.
        prov["decay_time_s"] = 0.0
        try:
            scan = _scan_datetime(headers, ov, paths, prov)
            start = _injection_datetime(item, first, ov, p0, scan, prov)
            prov["scan_datetime"] = scan.isoformat()
            prov["injection_datetime"] = start.isoformat()
            prov["elapsed_time_s_for_information"] = (scan - start).total_seconds()
        except (SuvError, MissingAttributeError) as err:
            prov["warnings"].append(f"scan/injection time not available ({err}); not needed.")
        factors = np.full(n, mass / dose)
        prov["branch"] = f"{prov['branch_units']}/DecayCorrection ADMIN (decay time 0)"
    elif decay_corr == "NONE":
        if ov.decay_correction_none != "acquisition":
            raise SuvError(
                f"{_tag('DecayCorrection')} = NONE: the pixels are not decay corrected and the "
                "QIBA algorithm does not define SUV for them. If the activity was measured at "
                "each instance's AcquisitionDate/Time, pass SuvOverrides("
                "decay_correction_none='acquisition') (CLI --decay-none-at-acquisition).",
                path=p0,
            )
        factors = np.empty(n)
        decays = []
        start = None
        for i, ds in enumerate(headers):
            acq = _header_datetime(ds, "AcquisitionDate", "AcquisitionTime", _where(paths, i))
            if acq is None:
                raise MissingAttributeError(
                    f"{_tag('AcquisitionDate')}/{_tag('AcquisitionTime')} absent; "
                    "DecayCorrection NONE with decay to acquisition needs them per instance.",
                    path=_where(paths, i),
                )
            if start is None:
                start = _injection_datetime(item, first, ov, p0, acq, prov)
            decay_s, decay = _decay_factor(acq, start, half_life, _where(paths, i), prov,
                                           warn_early=(i == 0))
            decays.append(decay_s)
            factors[i] = mass / (dose * decay)
        assert start is not None
        prov["injection_datetime"] = start.isoformat()
        prov["decay_time_s"] = median(decays)
        prov["decay_time_s_range"] = [float(min(decays)), float(max(decays))]
        prov["branch"] = (
            f"{prov['branch_units']}/DecayCorrection NONE (override: dose decayed to each "
            "instance's acquisition time)"
        )
    else:
        raise SuvError(
            f"{_tag('DecayCorrection')} = {decay_corr!r} is not START, ADMIN or NONE; fix the "
            "header.",
            path=p0,
        )
    factors = factors * bq_per_modality_value
    prov["factor"] = median(factors)
    return SuvConversion(factors, unit, _finish(prov, factors))


def _check_per_instance_private(
    headers: Sequence[Dataset], paths: Sequence[Path | None] | None, ref: float
) -> None:
    for i, ds in enumerate(headers[1:], start=1):
        val = _private_value(ds, 0x7053, _PHILIPS_PRIVATE_CREATOR, 0x00)
        if val is None or abs(float(_text(val)) - ref) > 1e-12 * max(1.0, abs(ref)):
            raise SuvError(
                f"Philips SUV scale factor (7053,1000) = {val!r} differs from {ref} of the "
                "first instance; one series must share it.",
                path=_where(paths, i),
            )


def _already_suv(
    units: str, headers: Sequence[Dataset], suv_type: str, ov: SuvOverrides,
    paths: Sequence[Path | None] | None, prov: dict[str, Any],
) -> SuvConversion:
    """Units GML (SUVbw, or the SUVType tag) or CM2ML (SUVbsa): factor 1 for the same type."""
    first = headers[0]
    p0 = _where(paths, 0)
    stored_type = _text(first.SUVType).upper() if _get(first, "SUVType") is not None else None
    native = "bsa" if units == "CM2ML" else {
        None: "bw", "BW": "bw", "LBM": "lbm-james", "LBMJAMES128": "lbm-james",
        "LBMJANMA": "lbm", "IBW": "ibw", "BSA": "bsa",
    }.get(stored_type, "unknown")
    prov["stored_suv_type"] = native
    n = len(headers)
    if native == suv_type:
        prov["branch"] = f"{units}: already SUV{suv_type}, factor 1"
        prov["factor"] = 1.0
        unit: Literal["g/ml", "cm2/ml"] = "cm2/ml" if units == "CM2ML" else "g/ml"
        return SuvConversion(np.ones(n), unit, _finish(prov))
    if native == "bw" and suv_type in ("lbm", "lbm-james", "ibw", "bsa"):
        weight = _patient_weight(first, ov, p0)
        prov["patient_weight_kg"] = weight
        mass, unit = _suv_mass(suv_type, first, ov, p0, weight, prov)
        factor = mass / (weight * 1000.0)
        size = "area" if unit == "cm2/ml" else "mass"
        prov["branch"] = f"GML (SUVbw) x {suv_type} {size} / body weight"
        prov["factor"] = factor
        return SuvConversion(np.full(n, factor), unit, _finish(prov))
    raise SuvError(
        f"{_tag('Units')} = {units} holds SUV of type {native!r} "
        f"({_tag('SUVType')} = {stored_type!r}); converting it to {suv_type!r} is not "
        f"supported. Use --suv-type {native if native in SUV_TYPES else 'bw'}.",
        path=p0,
    )


def _finish(prov: dict[str, Any], factors: NDArray[np.float64] | None = None) -> dict[str, Any]:
    if factors is not None and len(factors) > 1:
        lo, hi = float(np.min(factors)), float(np.max(factors))
        prov["factor_min"], prov["factor_max"] = lo, hi
        if hi - lo > 1e-9 * max(abs(hi), 1e-30):
            prov["per_instance_factors_differ"] = True
            prov["warnings"].append(
                f"per-instance SUV factors differ ({lo:.6g}..{hi:.6g}); applied per slice."
            )
    for w in prov["warnings"]:
        logger.warning("SUV: %s", w)
    logger.info("SUV %s branch %s factor %.6g", prov["suv_type"], prov.get("branch"),
                prov.get("factor", float("nan")))
    return prov
