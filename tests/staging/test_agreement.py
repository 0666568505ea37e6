"""Staging agreement: confusion matrices, kappa and weighted kappa, per-category presence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imaging.errors import ConfigError
from staging.agreement import (
    CATEGORY_NAMES,
    cohen_kappa,
    presence_table,
    read_reference_table,
    staging_agreement,
    staging_table,
)
from staging.models import GROUPS


def _plain_weighted_kappa(r: list[int], p: list[int], k: int, weights: str) -> float:
    """Textbook weighted kappa written with explicit sums (independent of the module)."""
    n = len(r)
    obs = [[0.0] * k for _ in range(k)]
    for a, b in zip(r, p, strict=True):
        obs[a][b] += 1.0 / n
    row = [sum(obs[i]) for i in range(k)]
    col = [sum(obs[i][j] for i in range(k)) for j in range(k)]

    def w(i: int, j: int) -> float:
        if weights == "unweighted":
            return float(i != j)
        d = abs(i - j) / (k - 1)
        return d if weights == "linear" else d * d

    num = sum(w(i, j) * obs[i][j] for i in range(k) for j in range(k))
    den = sum(w(i, j) * row[i] * col[j] for i in range(k) for j in range(k))
    return 1.0 - num / den


def test_cohen_kappa_textbook_example() -> None:
    # 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> po 0.7, pe 0.5, kappa 0.4
    ref = [1] * 25 + [0] * 25
    pred = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(ref, pred, n_classes=2) == pytest.approx(0.4)
    assert cohen_kappa(ref, ref, n_classes=2) == 1.0
    assert math.isnan(cohen_kappa([0, 0], [0, 0], n_classes=2))  # chance agreement 1
    # a method that puts everyone in one class has kappa exactly 0, not -2e-16
    constant = cohen_kappa([0, 1, 1, 2], [1, 1, 1, 1], n_classes=3)
    assert constant == 0.0
    assert math.copysign(1.0, constant) == 1.0  # not -0.0
    with pytest.raises(ValueError, match="codes must lie"):
        cohen_kappa([0, 3], [0, 1], n_classes=2)
    with pytest.raises(ValueError, match="same 1-D shape"):
        cohen_kappa([0, 1], [0], n_classes=2)
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa([0, 1], [0, 1], n_classes=2, weights="cubic")


@pytest.mark.parametrize("weights", ["unweighted", "linear", "quadratic"])
def test_weighted_kappa_matches_plain_formula(weights: str) -> None:
    rng = np.random.default_rng(3)
    r = rng.integers(0, 4, size=60)
    p = np.clip(r + rng.integers(-1, 2, size=60), 0, 3)
    expected = _plain_weighted_kappa(r.tolist(), p.tolist(), 4, weights)
    assert cohen_kappa(r, p, n_classes=4, weights=weights) == pytest.approx(expected)


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    ref = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6", "p7"],
        "group": ["T0N0M0", "TrN0M0", "N1/M1a", "M1b-M1c", "T0N0M0", "N1/M1a", "M1b-M1c"],
        "emmett_group": ["negative", "fossa_confined", "extra_fossa", "extra_fossa", "negative",
                         "extra_fossa", "extra_fossa"],
        "fossa": [0, 1, 0, 0, 0, 1, 0], "node_pelvic": [0, 0, 2, 0, 0, 1, 1],
        "node_extrapelvic": [0] * 7, "bone": [0, 0, 0, 3, 0, 0, 1], "visceral": [0] * 7,
    })
    pred = pd.DataFrame({
        "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6", "p8"],
        "group": ["T0N0M0", "T0N0M0", "N1/M1a", "M1b-M1c", "TrN0M0", "N1/M1a", "T0N0M0"],
        "emmett_group": ["negative", "negative", "extra_fossa", "extra_fossa",
                         "fossa_confined", "extra_fossa", "negative"],
        "n_fossa": [0, 0, 0, 0, 1, 1, 0], "n_node_pelvic": [0, 0, 1, 0, 0, 1, 0],
        "n_node_extrapelvic": [0] * 7, "n_bone": [0, 0, 0, 2, 0, 0, 0],
        "n_visceral": [0] * 7,
    })
    return pred, ref


def test_staging_agreement_confusion_accuracy_and_missing_patients() -> None:
    pred, ref = _tables()
    res = staging_agreement(pred, ref, n_bootstrap=300, seed=1)
    assert res.n_patients == 6
    assert res.missing_in_prediction == ("p7",)
    assert res.missing_in_reference == ("p8",)
    g = res.classes["group"]
    assert g.confusion.index.tolist() == list(GROUPS)
    assert g.confusion.loc["TrN0M0", "T0N0M0"] == 1  # reference fossa recurrence missed
    assert g.confusion.loc["T0N0M0", "TrN0M0"] == 1
    assert int(g.confusion.to_numpy().sum()) == 6
    assert g.accuracy.value == pytest.approx(4 / 6)
    codes = {c: n for n, c in enumerate(GROUPS)}
    r = [codes[x] for x in ref.set_index("patient_id").loc[["p1", "p2", "p3", "p4", "p5", "p6"],
                                                         "group"]]
    p = [codes[x] for x in pred["group"][:6]]
    assert g.kappa.value == pytest.approx(_plain_weighted_kappa(r, p, 4, "unweighted"))
    assert g.weighted_kappa.value == pytest.approx(_plain_weighted_kappa(r, p, 4, "linear"))
    assert g.kappa.ci_low <= g.kappa.value <= g.kappa.ci_high
    assert "bootstrap" in g.kappa.method
    assert g.accuracy.method == "wilson"
    assert res.classes["emmett_group"].confusion.shape == (3, 3)
    # reproducible with the seed
    again = staging_agreement(pred, ref, n_bootstrap=300, seed=1)
    assert again.classes["group"].kappa == g.kappa


def test_per_category_presence_sensitivity_specificity() -> None:
    pred, ref = _tables()
    res = staging_agreement(pred, ref, n_bootstrap=200)
    fossa = res.presence["fossa"]
    # reference fossa in p2, p6; method in p5, p6 (over p1..p6)
    assert (fossa.tp, fossa.fp, fossa.fn, fossa.tn) == (1, 1, 1, 3)
    assert fossa.sensitivity.value == 0.5
    assert fossa.specificity.value == 0.75
    bone = res.presence["bone"]
    assert (bone.tp, bone.fn) == (1, 0)
    assert bone.sensitivity.value == 1.0
    assert math.isnan(res.presence["visceral"].sensitivity.value)  # no reference positives
    assert res.presence["visceral"].specificity.value == 1.0
    summary = res.summary
    assert set(summary["variable"]) == {"group", "emmett_group",
                                        *(f"has_{c}" for c in CATEGORY_NAMES)}
    assert "kappa_linear" in summary.columns


def test_wilson_interval_known_value() -> None:
    ids = [f"p{i}" for i in range(10)]
    ref = pd.DataFrame({"patient_id": ids, **{c: [1] * 10 for c in CATEGORY_NAMES}})
    pred = pd.DataFrame({"patient_id": ids, **{c: [1] * 8 + [0] * 2 for c in CATEGORY_NAMES}})
    sens = staging_agreement(pred, ref, n_bootstrap=50).presence["bone"].sensitivity
    assert sens.value == 0.8
    assert (sens.ci_low, sens.ci_high) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_bad_tables_raise_config_error(tmp_path: Path) -> None:
    pred, ref = _tables()
    with pytest.raises(ConfigError, match="no patient_id"):
        staging_agreement(pred.drop(columns="patient_id"), ref)
    bad = ref.copy()
    bad.loc[1, "group"] = "N2"
    with pytest.raises(ConfigError, match=r"patient p2: group = 'N2' is not one of"):
        staging_agreement(pred, bad)
    dup = pd.concat([ref, ref.iloc[:1]])
    with pytest.raises(ConfigError, match="appears more than once"):
        staging_agreement(pred, dup)
    other = ref.assign(patient_id=[f"x{i}" for i in range(7)])
    with pytest.raises(ConfigError, match="share no patient_id"):
        staging_agreement(pred, other)
    with pytest.raises(ConfigError, match="no column to compare"):
        staging_agreement(pred[["patient_id"]], ref[["patient_id", "group"]])
    with pytest.raises(ConfigError, match="category columns"):
        presence_table(ref.set_index("patient_id").drop(columns="bone"))
    weird = ref.assign(bone=["x", 0, 0, 0, 0, 0, 0]).set_index("patient_id")
    with pytest.raises(ConfigError, match=r"patient p1.*'bone'"):
        presence_table(weird)
    csv = tmp_path / "ref.csv"
    csv.write_text("id,group\n1,T0N0M0\n")
    with pytest.raises(ConfigError, match="no patient_id column"):
        read_reference_table(csv)
    with pytest.raises(ValueError, match="n_bootstrap"):
        staging_agreement(pred, ref, n_bootstrap=0)


def test_staging_table_flattens_records_and_reads_flags(tmp_path: Path) -> None:
    records = [
        {"patient_id": "a", "group": "N1/M1a", "emmett_group": "extra_fossa",
         "counts_by_category": {"fossa": 0, "node_pelvic": 2, "node_extrapelvic": 0, "bone": 0,
                                "visceral": 0, "equivocal": 1}},
        {"patient_id": "b", "group": "T0N0M0", "emmett_group": "negative",
         "counts_by_category": dict.fromkeys(CATEGORY_NAMES, 0)},
    ]
    table = staging_table(records)
    assert table.loc[0, "node_pelvic"] == 2
    assert "equivocal" not in table.columns
    csv = tmp_path / "ref.csv"
    csv.write_text("patient_id,group,has_fossa,has_node_pelvic,has_node_extrapelvic,has_bone,"
                   "has_visceral\na,N1/M1a,false,true,false,false,false\n"
                   "b,TrN0M0,true,false,false,false,false\n")
    ref = read_reference_table(csv)
    res = staging_agreement(table, ref, n_bootstrap=50)
    assert res.presence["node_pelvic"].tp == 1
    assert res.presence["fossa"].fn == 1
    assert res.classes["group"].accuracy.value == 0.5
