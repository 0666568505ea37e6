"""Patient-level staging agreement between a method and reference reads.

Compares, patient by patient, the study ``group`` (4 ordered classes), the ``emmett_group``
(3 ordered classes) and the presence of each lesion category (fossa, pelvic node, extrapelvic
node, bone, visceral) with a reference table, and reports confusion matrices, accuracy, Cohen's
kappa, weighted kappa and per-category sensitivity and specificity.

Confidence intervals
--------------------
* Accuracy, sensitivity and specificity: Wilson score interval
  (:meth:`scipy.stats.binomtest(...).proportion_ci <scipy.stats.BinomTestResult.proportion_ci>`).
* Kappa and weighted kappa: **percentile bootstrap over patients** (default 2000 resamples,
  fixed seed, so results are reproducible). Resamples in which kappa is undefined (both readers
  put every resampled patient in one class) are left out; the number used is reported.

Kappa is ``1 - Σ w·O / Σ w·E`` with ``O`` the observed and ``E`` the chance-expected joint
proportions and ``w`` the disagreement weights: 1 off the diagonal (Cohen's kappa), ``|i-j|/(K-1)``
(linear) or ``((i-j)/(K-1))²`` (quadratic) for the ordered groups. A ratio that is 0/0 (kappa when
chance agreement is 1, sensitivity without reference positives) is NaN: undefined, not a failure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import binomtest

from imaging.errors import ConfigError
from staging.models import COUNTED_CATEGORIES, EMMETT_GROUPS, GROUPS

__all__ = [
    "CATEGORY_NAMES",
    "ORDERED_VARIABLES",
    "AgreementResult",
    "ClassAgreement",
    "Estimate",
    "PresenceAgreement",
    "cohen_kappa",
    "presence_table",
    "read_reference_table",
    "staging_agreement",
    "staging_table",
]

logger = logging.getLogger(__name__)

Weights = Literal["linear", "quadratic"]

#: Ordered class variables compared, with their classes lowest first.
ORDERED_VARIABLES: dict[str, tuple[str, ...]] = {"group": GROUPS, "emmett_group": EMMETT_GROUPS}
#: Lesion categories whose per-patient presence is compared.
CATEGORY_NAMES: tuple[str, ...] = tuple(c.value for c in COUNTED_CATEGORIES)
_COUNT_PREFIXES = ("", "n_", "count_", "counts_", "counts_by_category.", "has_")


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its confidence interval and how the interval was made."""

    value: float
    ci_low: float
    ci_high: float
    method: str

    def as_dict(self, prefix: str) -> dict[str, float | str]:
        """``{prefix: value, prefix_ci_low: ..., prefix_ci_high: ...}``."""
        return {prefix: self.value, f"{prefix}_ci_low": self.ci_low,
                f"{prefix}_ci_high": self.ci_high}


@dataclass(frozen=True, slots=True, eq=False)
class ClassAgreement:
    """Agreement on one ordered class variable (``group`` or ``emmett_group``).

    ``confusion`` has the reference classes as rows and the method's as columns, in the fixed
    order of :data:`ORDERED_VARIABLES` (classes nobody used included, as zero rows/columns).
    """

    variable: str
    classes: tuple[str, ...]
    confusion: pd.DataFrame
    n: int
    accuracy: Estimate
    kappa: Estimate
    weighted_kappa: Estimate
    weights: str
    bootstrap_used: int


@dataclass(frozen=True, slots=True)
class PresenceAgreement:
    """Agreement on whether a patient has at least one lesion of a category."""

    category: str
    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: Estimate
    specificity: Estimate
    kappa: Estimate


@dataclass(frozen=True, slots=True, eq=False)
class AgreementResult:
    """Staging agreement of one method with the reference, with the patients compared.

    Attributes
    ----------
    n_patients : int
        Patients present in both tables.
    missing_in_prediction, missing_in_reference : tuple of str
        Patient ids present only in the reference, or only in the method's table.
    classes : Mapping[str, ClassAgreement]
        ``"group"`` and/or ``"emmett_group"``, for those present in both tables.
    presence : Mapping[str, PresenceAgreement]
        Per lesion category, when both tables carry category counts or flags.
    """

    n_patients: int
    missing_in_prediction: tuple[str, ...]
    missing_in_reference: tuple[str, ...]
    classes: Mapping[str, ClassAgreement] = field(default_factory=dict)
    presence: Mapping[str, PresenceAgreement] = field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per compared variable: n, accuracy/kappa or sensitivity/specificity, CIs."""
        rows: list[dict[str, Any]] = []
        for name, c in self.classes.items():
            rows.append({"variable": name, "n": c.n, **c.accuracy.as_dict("accuracy"),
                         **c.kappa.as_dict("kappa"),
                         **c.weighted_kappa.as_dict(f"kappa_{c.weights}")})
        for name, p in self.presence.items():
            n = p.tp + p.fp + p.fn + p.tn
            rows.append({"variable": f"has_{name}", "n": n,
                         "accuracy": _ratio(p.tp + p.tn, n),
                         **p.kappa.as_dict("kappa"), **p.sensitivity.as_dict("sensitivity"),
                         **p.specificity.as_dict("specificity")})
        return pd.DataFrame(rows)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _wilson(successes: int, n: int, *, confidence: float) -> Estimate:
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, "wilson")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence,
                                                         method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), "wilson")


def _weight_matrix(k: int, weights: str) -> NDArray[np.float64]:
    i, j = np.indices((k, k))
    if weights == "unweighted":
        return np.asarray(i != j, dtype=np.float64)
    scale = max(k - 1, 1)
    if weights == "linear":
        return np.asarray(np.abs(i - j) / scale, dtype=np.float64)
    if weights == "quadratic":
        return np.asarray(((i - j) / scale) ** 2, dtype=np.float64)
    raise ValueError(f"weights must be 'linear' or 'quadratic', got {weights!r}.")


def _kappa_from_counts(conf: NDArray[Any], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Kappa of one (K, K) or a stack (B, K, K) of confusion count matrices."""
    conf = np.asarray(conf, dtype=np.float64)
    n = conf.sum(axis=(-2, -1), keepdims=True)
    observed = conf / n
    expected = observed.sum(axis=-1, keepdims=True) * observed.sum(axis=-2, keepdims=True)
    num = (w * observed).sum(axis=(-2, -1))
    den = (w * expected).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), np.nan)
    # round off floating-point residue (1 - x/x = -2e-16 must read as 0)
    return np.asarray(np.round(out, 12) + 0.0, dtype=np.float64)  # + 0.0 turns -0.0 into 0.0


def cohen_kappa(reference: Sequence[int] | NDArray[np.integer], predicted: Sequence[int] |
                NDArray[np.integer], *, n_classes: int, weights: str = "unweighted") -> float:
    """Cohen's kappa (or weighted kappa) of two class codes 0..n_classes-1.

    Parameters
    ----------
    reference, predicted : sequence of int, shape (n,)
        Class codes of the same patients.
    n_classes : int
        Number of ordered classes.
    weights : {"unweighted", "linear", "quadratic"}
        Disagreement weights.

    Returns
    -------
    float
        Kappa in [-1, 1]; NaN when chance agreement is 1 (undefined).

    Raises
    ------
    ValueError
        If the sequences differ in length or hold codes outside 0..n_classes-1.

    Examples
    --------
    >>> cohen_kappa([0] * 25 + [1] * 25, [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15, n_classes=2)
    0.4
    """
    r = np.asarray(reference, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    _check_codes(r, p, n_classes)
    conf = np.bincount(r * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)
    return float(_kappa_from_counts(conf, _weight_matrix(n_classes, weights)))


def _check_codes(r: NDArray[np.int64], p: NDArray[np.int64], k: int) -> None:
    if r.shape != p.shape or r.ndim != 1:
        raise ValueError(f"reference and predicted need the same 1-D shape, got {r.shape} "
                         f"and {p.shape}.")
    for name, codes in (("reference", r), ("predicted", p)):
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise ValueError(f"{name} codes must lie in 0..{k - 1}, found {codes.min()}.."
                             f"{codes.max()}.")


def _bootstrap_kappas(r: NDArray[np.int64], p: NDArray[np.int64], k: int,
                      ws: Sequence[NDArray[np.float64]], *, n_bootstrap: int, seed: int
                      ) -> list[NDArray[np.float64]]:
    """Kappa of every bootstrap resample for each weight matrix (vectorised, one bincount)."""
    n = r.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    codes = (np.arange(n_bootstrap)[:, None] * (k * k) + r[idx] * k + p[idx]).reshape(-1)
    conf = np.bincount(codes, minlength=n_bootstrap * k * k).reshape(n_bootstrap, k, k)
    return [_kappa_from_counts(conf, w) for w in ws]


def _percentile_ci(values: NDArray[np.float64], confidence: float) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(finite.size)


def _class_agreement(variable: str, classes: tuple[str, ...], ref: pd.Series, pred: pd.Series,
                     *, weights: str, n_bootstrap: int, seed: int, confidence: float
                     ) -> ClassAgreement:
    k = len(classes)
    code = {c: n for n, c in enumerate(classes)}
    r = ref.map(code).to_numpy(dtype=np.int64)
    p = pred.map(code).to_numpy(dtype=np.int64)
    conf = np.bincount(r * k + p, minlength=k * k).reshape(k, k)
    w_unw, w_ord = _weight_matrix(k, "unweighted"), _weight_matrix(k, weights)
    kappa = float(_kappa_from_counts(conf, w_unw))
    wkappa = float(_kappa_from_counts(conf, w_ord))
    boot_k, boot_w = _bootstrap_kappas(r, p, k, (w_unw, w_ord), n_bootstrap=n_bootstrap,
                                       seed=seed)
    lo_k, hi_k, used = _percentile_ci(boot_k, confidence)
    lo_w, hi_w, _ = _percentile_ci(boot_w, confidence)
    method = f"percentile bootstrap over patients (B={n_bootstrap}, seed={seed})"
    frame = pd.DataFrame(conf, index=pd.Index(classes, name=f"reference {variable}"),
                         columns=pd.Index(classes, name=f"method {variable}"))
    return ClassAgreement(
        variable=variable, classes=classes, confusion=frame, n=int(r.size),
        accuracy=_wilson(int(np.trace(conf)), int(r.size), confidence=confidence),
        kappa=Estimate(kappa, lo_k, hi_k, method),
        weighted_kappa=Estimate(wkappa, lo_w, hi_w, method),
        weights=weights, bootstrap_used=used,
    )


def _presence_agreement(category: str, ref: pd.Series, pred: pd.Series, *, n_bootstrap: int,
                        seed: int, confidence: float) -> PresenceAgreement:
    r = ref.to_numpy(dtype=bool)
    p = pred.to_numpy(dtype=bool)
    tp, fp = int((r & p).sum()), int((~r & p).sum())
    fn, tn = int((r & ~p).sum()), int((~r & ~p).sum())
    conf = np.array([[tn, fp], [fn, tp]])
    w = _weight_matrix(2, "unweighted")
    (boot,) = _bootstrap_kappas(r.astype(np.int64), p.astype(np.int64), 2, (w,),
                                n_bootstrap=n_bootstrap, seed=seed)
    lo, hi, _ = _percentile_ci(boot, confidence)
    return PresenceAgreement(
        category=category, tp=tp, fp=fp, fn=fn, tn=tn,
        sensitivity=_wilson(tp, tp + fn, confidence=confidence),
        specificity=_wilson(tn, tn + fp, confidence=confidence),
        kappa=Estimate(float(_kappa_from_counts(conf, w)), lo, hi,
                       f"percentile bootstrap over patients (B={n_bootstrap}, seed={seed})"),
    )


# -- tables ----------------------------------------------------------------------------------
def presence_table(table: pd.DataFrame, *, source: str = "table") -> pd.DataFrame | None:
    """Per-patient presence (bool) of each lesion category, from counts or flags.

    A category is read from the first column found among ``<cat>``, ``n_<cat>``,
    ``count_<cat>``, ``counts_<cat>``, ``counts_by_category.<cat>`` and ``has_<cat>`` (count > 0
    or a true flag means present).

    Parameters
    ----------
    table : DataFrame
        Indexed by patient id.
    source : str
        Name of the table in error messages.

    Returns
    -------
    DataFrame or None
        Columns :data:`CATEGORY_NAMES` (bool), or None if the table has none of them.

    Raises
    ------
    ConfigError
        If only some categories are present, or a value is neither a count nor a flag.
    """
    found: dict[str, pd.Series] = {}
    for cat in CATEGORY_NAMES:
        for prefix in _COUNT_PREFIXES:
            if f"{prefix}{cat}" in table.columns:
                found[cat] = table[f"{prefix}{cat}"]
                break
    if not found:
        return None
    missing = [c for c in CATEGORY_NAMES if c not in found]
    if missing:
        raise ConfigError(f"{source}: category columns {missing} are missing while "
                          f"{sorted(found)} are present; give all of {list(CATEGORY_NAMES)}.")
    out = {}
    for cat, col in found.items():
        values = col.map(_as_presence)
        bad = values.isna()
        if bad.any():
            pid = values.index[bad][0]
            raise ConfigError(f"{source}: patient {pid}: column for {cat!r} holds "
                              f"{col[pid]!r}; expected a lesion count or true/false.")
        out[cat] = values.astype(bool)
    return pd.DataFrame(out, index=table.index)


def _as_presence(value: Any) -> bool | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in {"true", "yes", "1"}:
            return True
        if low in {"false", "no", "0"}:
            return False
        try:
            return float(low) > 0
        except ValueError:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number > 0


def _index_by_patient(table: pd.DataFrame, source: str) -> pd.DataFrame:
    if "patient_id" not in table.columns:
        raise ConfigError(f"{source}: no patient_id column (columns: {list(table.columns)}).")
    ids = table["patient_id"].astype(str)
    dup = ids[ids.duplicated()]
    if not dup.empty:
        raise ConfigError(f"{source}: patient_id {dup.iloc[0]!r} appears more than once; "
                          "give one row per patient.")
    return table.assign(patient_id=ids).set_index("patient_id")


def _check_classes(series: pd.Series, classes: tuple[str, ...], source: str, variable: str
                   ) -> None:
    bad = ~series.isin(classes)
    if bad.any():
        pid = series.index[bad][0]
        raise ConfigError(f"{source}: patient {pid}: {variable} = {series[pid]!r} is not one of "
                          f"{list(classes)}.")


def read_reference_table(path: Path | str) -> pd.DataFrame:
    """Read a reference staging CSV (``patient_id`` plus group columns and/or category counts).

    The phantom cohort's ``truth.csv`` is such a table.

    Raises
    ------
    ConfigError
        If the file cannot be read or has no ``patient_id`` column.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"patient_id": str})
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the reference table: {err}") from err
    if "patient_id" not in table.columns:
        raise ConfigError(f"{path}: no patient_id column (columns: {list(table.columns)}); a "
                          "reference table needs patient_id and group, emmett_group or "
                          "per-category counts.")
    return table


def staging_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Patient table (patient_id, group, emmett_group, category counts) from staging.json dicts."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {"patient_id": str(rec["patient_id"])}
        for key in ("group", "emmett_group", "mitnm", "lesion_count"):
            if key in rec:
                row[key] = rec[key]
        counts = rec.get("counts_by_category") or {}
        for cat in CATEGORY_NAMES:
            if cat in counts:
                row[cat] = int(counts[cat])
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["patient_id"])


# -- the comparison --------------------------------------------------------------------------
def staging_agreement(
    predicted: pd.DataFrame, reference: pd.DataFrame, *, weights: Weights = "linear",
    n_bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95,
    predicted_source: str = "method", reference_source: str = "reference",
) -> AgreementResult:
    """Per-patient agreement of a method's staging with reference reads.

    Parameters
    ----------
    predicted, reference : DataFrame
        One row per patient, with ``patient_id`` and any of ``group``, ``emmett_group`` and
        category counts/flags (see :func:`presence_table`). Compared on the patients in both.
    weights : {"linear", "quadratic"}
        Disagreement weights of the weighted kappa of the ordered groups.
    n_bootstrap : int
        Bootstrap resamples for the kappa intervals.
    seed : int
        Seed of the bootstrap.
    confidence : float
        Confidence level of every interval.
    predicted_source, reference_source : str
        Names of the tables in error messages.

    Returns
    -------
    AgreementResult

    Raises
    ------
    ConfigError
        If a table lacks ``patient_id``, repeats a patient, holds an unknown class, or the two
        tables share no patient or no comparable column.
    ValueError
        If ``n_bootstrap`` < 1, ``confidence`` is not in (0, 1) or ``weights`` is unknown.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    _weight_matrix(2, weights)
    pred = _index_by_patient(predicted, predicted_source)
    ref = _index_by_patient(reference, reference_source)
    common = ref.index.intersection(pred.index, sort=False)
    missing_pred = tuple(sorted(set(ref.index) - set(pred.index)))
    missing_ref = tuple(sorted(set(pred.index) - set(ref.index)))
    if missing_pred or missing_ref:
        logger.warning("staging agreement: %d patient(s) only in the reference, %d only in the "
                       "method's table", len(missing_pred), len(missing_ref))
    if len(common) == 0:
        raise ConfigError(f"{predicted_source} and {reference_source} share no patient_id "
                          f"(e.g. {list(pred.index[:3])} vs {list(ref.index[:3])}).")
    pred, ref = pred.loc[common], ref.loc[common]
    classes: dict[str, ClassAgreement] = {}
    for variable, labels in ORDERED_VARIABLES.items():
        if variable in pred.columns and variable in ref.columns:
            _check_classes(ref[variable], labels, reference_source, variable)
            _check_classes(pred[variable], labels, predicted_source, variable)
            classes[variable] = _class_agreement(
                variable, labels, ref[variable], pred[variable], weights=weights,
                n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    presence: dict[str, PresenceAgreement] = {}
    pred_p = presence_table(pred, source=predicted_source)
    ref_p = presence_table(ref, source=reference_source)
    if pred_p is not None and ref_p is not None:
        for cat in CATEGORY_NAMES:
            presence[cat] = _presence_agreement(cat, ref_p[cat], pred_p[cat],
                                                n_bootstrap=n_bootstrap, seed=seed,
                                                confidence=confidence)
    if not classes and not presence:
        raise ConfigError(
            f"{predicted_source} and {reference_source} have no column to compare: need "
            f"group, emmett_group or the category counts {list(CATEGORY_NAMES)} in both "
            f"(method columns {list(pred.columns)}, reference columns {list(ref.columns)})."
        )
    return AgreementResult(
        n_patients=len(common), missing_in_prediction=missing_pred,
        missing_in_reference=missing_ref, classes=classes, presence=presence,
    )
