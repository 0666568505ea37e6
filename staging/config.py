"""The pipeline configuration: one TOML file with sections ``suv``, ``anatomy``, ``lesion`` and
``staging``; defaults < file < command line; the resolved settings and their hash are saved with
every result.

Each imaging stage owns its options (:class:`imaging.anatomy.AnatomyConfig`,
:class:`imaging.lesions.LesionConfig`, the SUV policy of :mod:`imaging.suv`);
:class:`PipelineConfig` composes them with :class:`staging.models.StagingConfig`. Every key of a
section is a field of its dataclass; an unknown key or section raises :class:`ConfigError` that
lists the valid ones. See ``docs/configuration.md``.

Example
-------
.. code-block:: toml

    [suv]
    suv_type = "bw"

    [anatomy]
    provider = "rule"

    [lesion]
    preset = "qpsma"          # a named preset, then single keys on top of it
    min_volume_ml = 0.2

    [staging]
    pelvic_boundary = "common_iliac_bifurcation"   # AJCC; the anatomy section follows
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from imaging.anatomy import AnatomyConfig
from imaging.errors import ConfigError
from imaging.lesions import PRESETS as LESION_PRESETS
from imaging.lesions import LesionConfig
from imaging.suv import SUV_TYPES, SuvOverrides, SuvType
from staging.models import StagingConfig

__all__ = [
    "SECTIONS",
    "PipelineConfig",
    "SuvSettings",
    "load_config",
    "parse_assignments",
]

logger = logging.getLogger(__name__)

CONFIG_SCHEMA_VERSION = "1"


@dataclass(frozen=True, slots=True)
class SuvSettings:
    """SUV policy of the loader (the ``[suv]`` section).

    Per-patient values (injected dose, weight, times) are not configuration: a cohort-wide
    value would be wrong for every other patient; fix those in the data or per study.

    Parameters
    ----------
    suv_type : {"bw", "lbm", "lbm-james", "bsa", "ibw"}
        SUV normalisation (body weight by default; QIBA).
    strict : bool
        Turn tolerated DICOM deviations (``DicomWarning``) into errors.
    use_nominal_half_life : bool
        Use the nominal half-life of the radionuclide code when the header has none.
    dose_unit : {"auto", "Bq", "MBq"}
        Unit of the stored injected dose (``auto`` reads values < 1e5 as MBq, and says so).
    decay_correction_none : {"error", "acquisition"}
        Series with DecayCorrection NONE: fail, or decay the dose to each acquisition time.
    """

    suv_type: SuvType = "bw"
    strict: bool = False
    use_nominal_half_life: bool = False
    dose_unit: Literal["auto", "Bq", "MBq"] = "auto"
    decay_correction_none: Literal["error", "acquisition"] = "error"

    def __post_init__(self) -> None:
        if self.suv_type not in SUV_TYPES:
            raise ConfigError(
                f"suv.suv_type {self.suv_type!r} is unknown; valid types are {list(SUV_TYPES)}."
            )
        try:
            self.overrides()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"[suv] settings are invalid: {err}") from err

    def overrides(self) -> SuvOverrides:
        """The :class:`imaging.suv.SuvOverrides` carrying this policy."""
        return SuvOverrides(
            use_nominal_half_life=self.use_nominal_half_life,
            dose_unit=self.dose_unit,
            decay_correction_none=self.decay_correction_none,
        )


SECTIONS: dict[str, type] = {
    "suv": SuvSettings,
    "anatomy": AnatomyConfig,
    "lesion": LesionConfig,
    "staging": StagingConfig,
}
"""Section name -> options dataclass (one TOML table each)."""

# keys that are accepted in a section but are not fields of its dataclass
_SPECIAL_KEYS: dict[str, tuple[str, ...]] = {"lesion": ("preset",)}
# the pelvic boundary is one setting shared by the anatomy labeller and the staging rules
_SHARED_KEYS: tuple[tuple[str, str, str], ...] = (
    ("pelvic_boundary", "anatomy", "staging"),
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _section_dict(obj: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(obj, f.name)) for f in fields(obj)}


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The resolved settings of every stage (valid once constructed).

    Build with :func:`load_config`. ``to_dict()`` is saved in ``staging.json`` and ``hash()``
    identifies it (a rerun with an equal hash gives the same result).
    """

    suv: SuvSettings = field(default_factory=SuvSettings)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    lesion: LesionConfig = field(default_factory=LesionConfig)
    staging: StagingConfig = field(default_factory=StagingConfig)

    def __post_init__(self) -> None:
        for key, first, second in _SHARED_KEYS:
            a, b = getattr(getattr(self, first), key), getattr(getattr(self, second), key)
            if a != b:
                raise ConfigError(
                    f"{first}.{key} = {a!r} but {second}.{key} = {b!r}; they must agree. Set it "
                    f"once (in either section) and the other follows."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{section: {key: value}}`` with every key, defaults included."""
        return {name: _section_dict(getattr(self, name)) for name in SECTIONS}

    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        """The resolved configuration as a TOML file that :func:`load_config` reads back.

        TOML has no null: a None value is left out where None is the key's default and
        written as ``"none"`` where it switches a setting off (``detect_suv = "none"``).
        """
        import tomli_w

        defaults = {name: {f.name: f.default for f in fields(cls)}
                    for name, cls in SECTIONS.items()}
        data = {
            section: {k: ("none" if v is None else v) for k, v in values.items()
                      if v is not None or defaults[section].get(k) is not None}
            for section, values in self.to_dict().items()
        }
        header = (f"# psma-stage resolved configuration (schema {CONFIG_SCHEMA_VERSION}), "
                  f"hash {self.hash()}\n")
        return header + tomli_w.dumps(data)


# -- coercion of TOML / command-line values ----------------------------------------------------
def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or value == "none"):
            return None  # "none": TOML's spelling of an optional setting switched off
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} is not a valid {_describe(tp)}.")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} = {value!r} is not allowed; valid values are {list(args)}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{n}]") for n, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}.")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{where}[{n}]") for n, (v, a) in pairs)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where} = {value!r} is not allowed; valid values are "
                              f"{[m.value for m in tp]}.") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{where} must be a finite number, got {value!r}.")
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}.")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{where} must be a path, got {value!r}.")
    return value


def _build_section(name: str, base: Any, values: Mapping[str, Any], source: str) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    allowed = set(valid) | set(_SPECIAL_KEYS.get(name, ()))
    unknown = sorted(set(values) - allowed)
    if unknown:
        listing = ", ".join(sorted(allowed))
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(repr(u) for u in unknown)} in section "
            f"[{name}]; valid keys are: {listing}."
        )
    values = dict(values)
    if "preset" in values:
        preset = values.pop("preset")
        if preset not in LESION_PRESETS:
            raise ConfigError(f"{source}: [lesion] preset {preset!r} is unknown; valid presets "
                              f"are {sorted(LESION_PRESETS)}.")
        base = LESION_PRESETS[preset]
    coerced = {key: _coerce(v, hints[key], f"{source}: [{name}] {key}")
               for key, v in values.items()}
    try:
        return replace(base, **coerced)
    except ConfigError as err:
        raise ConfigError(f"{source}: [{name}] {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: [{name}] invalid settings: {err}") from None


def _sync_shared(layer: dict[str, dict[str, Any]], source: str) -> None:
    for key, first, second in _SHARED_KEYS:
        a = layer.get(first, {}).get(key)
        b = layer.get(second, {}).get(key)
        if a is not None and b is not None and a != b:
            raise ConfigError(
                f"{source}: [{first}] {key} = {a!r} but [{second}] {key} = {b!r}; set it once."
            )
        if a is not None or b is not None:
            value = a if a is not None else b
            layer.setdefault(first, {})[key] = value
            layer.setdefault(second, {})[key] = value


def _check_layer(layer: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    unknown = sorted(set(layer) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(repr(u) for u in unknown)}; valid sections "
            f"are: {', '.join(SECTIONS)}. Each key belongs in one section, e.g. [lesion] "
            "threshold_suv = 3.0."
        )
    out: dict[str, dict[str, Any]] = {}
    for name, values in layer.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table of key = value settings, "
                              f"got {values!r}.")
        out[name] = dict(values)
    _sync_shared(out, source)
    return out


def load_config(path: Path | str | None = None, **overrides: Mapping[str, Any]) -> PipelineConfig:
    """Resolve the pipeline configuration: defaults < TOML file < overrides.

    Parameters
    ----------
    path : Path, optional
        A TOML file with any of the sections ``[suv]``, ``[anatomy]``, ``[lesion]``,
        ``[staging]``.
    **overrides : mapping
        Per-section settings that win over the file, e.g.
        ``load_config(path, staging={"pelvic_boundary": "common_iliac_bifurcation"})``
        (the command line passes its flags this way).

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, a section or key is unknown (the message lists the
        valid ones), or a value has the wrong type or range.

    Examples
    --------
    >>> cfg = load_config(lesion={"threshold_suv": 4})
    >>> cfg.lesion.threshold_suv
    4.0
    """
    layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found.") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder; --config needs a TOML file.") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err}).") from None
        layers.append((str(path), _check_layer(data, str(path))))
    if overrides:
        layers.append(("command line", _check_layer(overrides, "command line")))
    sections = {name: getattr(PipelineConfig(), name) for name in SECTIONS}
    for source, layer in layers:
        for name, values in layer.items():
            if not values:
                continue
            sections[name] = _build_section(name, sections[name], values, source)
    config = PipelineConfig(**sections)
    logger.debug("configuration resolved, hash %s", config.hash())
    return config


def parse_assignments(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse command-line ``SECTION.KEY=VALUE`` settings into :func:`load_config` overrides.

    The value is read as a TOML value when it parses as one (``4``, ``true``, ``[1, 2]``,
    ``"text"``), else as a bare string.

    Examples
    --------
    >>> parse_assignments(["lesion.threshold_suv=4", "staging.pelvic_boundary=aortic_bifurcation"])
    {'lesion': {'threshold_suv': 4}, 'staging': {'pelvic_boundary': 'aortic_bifurcation'}}
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(
                f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. lesion.threshold_suv=4; "
                f"sections are {', '.join(SECTIONS)}."
            )
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(section, {})[name] = value
    return out


def _field_defaults(cls: type) -> dict[str, Any]:
    """Defaults of a section (for the documentation generator and tests)."""
    out = {}
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default_factory())
    return out
