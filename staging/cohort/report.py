"""Write a cohort analysis: summary.json, CSV + Markdown tables, KM figures, cohort.html.

The output folder is written atomically: everything goes to a temporary sibling folder that is
renamed into place at the end, so a failed run never leaves half a report behind.
"""

from __future__ import annotations

import html
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imaging import __version__
from imaging.errors import ConfigError
from staging.cohort.analysis import CohortAnalysis, GroupingAnalysis
from staging.cohort.plots import plot_km
from staging.cohort.stratify import OVERALL

__all__ = ["SCHEMA_VERSION", "summary_dict", "write_cohort_report"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"


def _num(x: Any) -> Any:
    """JSON-safe number: NaN -> None, inf -> "inf" is not JSON either, so None too."""
    if x is None:
        return None
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _num(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _grouping_dict(g: GroupingAnalysis, spec_at: Sequence[float]) -> dict[str, Any]:
    strat, surv, eff = g.stratification, g.survival, g.effects
    km: dict[str, Any] = {}
    for _, m in surv.medians.iterrows():
        level = str(m["level"])
        at_rows = surv.table.loc[surv.table["level"] == level]
        km[level] = {
            "n": int(m["n"]),
            "events": int(m["events"]),
            "median": {
                "estimate": _num(m["median"]), "lower": _num(m["median_lower"]),
                "upper": _num(m["median_upper"]),
                "reached": bool(math.isfinite(m["median"])),
            },
            "median_follow_up": {
                "estimate": _num(m["median_follow_up"]),
                "lower": _num(m["median_follow_up_lower"]),
                "upper": _num(m["median_follow_up_upper"]),
                "method": "reverse Kaplan-Meier",
            },
            "at": [
                {"time": _num(r["time"]), "survival": _num(r["survival"]),
                 "lower": _num(r["lower"]), "upper": _num(r["upper"]),
                 "at_risk": int(r["at_risk"]), "events_by_time": int(r["events_by_time"]),
                 **({"reason": r["reason"]} if r["reason"] else {})}
                for _, r in at_rows.iterrows()
            ],
        }
    out: dict[str, Any] = {
        "levels": list(strat.levels),
        "counts": _records(strat.table),
        "lesion_count_distribution": (
            None if strat.lesion_counts is None else
            {str(i): {str(c): int(v) for c, v in row.items()}
             for i, row in strat.lesion_counts.iterrows()}
        ),
        "table1": _records(strat.table1),
        "table1_values": _records(strat.table1_values),
        "kaplan_meier": km,
        "logrank": {
            "overall": {k: _num(v) for k, v in surv.logrank.items()} or None,
            "pairwise": _records(surv.pairwise),
            "pairwise_adjustment": "Holm",
        },
        "cox": None,
    }
    if eff is not None:
        models: dict[str, Any] = {}
        for name, m in eff.models.items():
            rows = eff.summary.loc[eff.summary["model"] == name]
            models[name] = {
                "status": m.status,
                "reason": m.reason or None,
                "strata": eff.by if name.startswith("stratified") else None,
                "n": m.n,
                "events": m.events,
                "events_per_variable": _num(m.events_per_variable),
                "terms_fitted": list(m.terms),
                "terms_dropped": dict(m.dropped),
                "excluded_missing": list(m.excluded_missing),
                "hazard_ratios": [
                    {k: _num(r[k]) for k in ("term", "role", "status", "hr", "hr_lower",
                                             "hr_upper", "p", "coef", "se", "ph_p")}
                    | {"reason": r["reason"] or None}
                    for _, r in rows.iterrows()
                ],
                "ph_test": None if m.ph_test is None else _records(m.ph_test),
                "log_likelihood": (None if m.fitter is None
                                   else _num(m.fitter.log_likelihood_)),
                "concordance": None if m.fitter is None else _num(m.fitter.concordance_index_),
            }
        out["cox"] = {"ties": "efron", "ph_test": "Schoenfeld residuals, rank time transform",
                      "models": models}
    return out


def summary_dict(analysis: CohortAnalysis, *, sources: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The machine-readable summary (the content of summary.json; see docs/outputs.md)."""
    cohort, spec = analysis.cohort, analysis.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "software_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": spec.to_dict() | {
            "ci_method_description": (
                "log(-log S) transform of Greenwood's variance (lifelines default)"
                if spec.ci_method == "log-log" else
                "log S transform of Greenwood's variance (R survfit default)"),
            "cox_model": "lifelines CoxPHFitter, Efron ties, Wald intervals",
            "events_per_variable_threshold": 10,
        },
        "inputs": {
            **(dict(sources) if sources else {}),
            "n_patients_analysed": cohort.n_patients,
            "only_in_staging": list(cohort.only_in_staging),
            "only_in_clinical": list(cohort.only_in_clinical),
        },
        "groupings": {by: _grouping_dict(g, spec.at) for by, g in analysis.groupings.items()},
        "warnings": [n.to_dict() for n in analysis.notes],
    }


# ----------------------------------------------------------------------------------------------
# tables


def _ci_text(est: float, lo: float, hi: float, *, pct: bool, reason: str = "") -> str:
    """``est (lo-hi)``; survival in %, times in units. Infinite time = not reached (NR)."""
    if not math.isfinite(est):
        return reason or "not estimable"

    def f(v: float) -> str:
        if math.isinf(v):
            return "NR"
        if math.isnan(v):
            return "n/a"
        return f"{100 * v:.1f}" if pct else f"{v:.1f}"

    return f"{f(est)} ({f(lo)}-{f(hi)})"


def survival_table(g: GroupingAnalysis, *, time_unit: str) -> pd.DataFrame:
    """Paper-style survival table: n, events, median (CI), S(t) % (CI) at each landmark."""
    surv = g.survival
    level = f"{100 * (1 - surv.alpha):g}%"
    rows = []
    for _, m in surv.medians.iterrows():
        row: dict[str, Any] = {surv.by: m["level"], "n": int(m["n"]), "events": int(m["events"])}
        med = m["median"]
        row[f"median, {time_unit} ({level} CI)"] = (
            "not reached" + (f" (lower {m['median_lower']:.1f})"
                             if math.isfinite(m["median_lower"]) else "")
            if not math.isfinite(med) else
            _ci_text(med, m["median_lower"], m["median_upper"], pct=False))
        for _, r in surv.table.loc[surv.table["level"] == m["level"]].iterrows():
            row[f"{r['time']:g} {time_unit}, % ({level} CI)"] = _ci_text(
                r["survival"], r["lower"], r["upper"], pct=True, reason=r["reason"])
            row[f"at risk at {r['time']:g}"] = int(r["at_risk"])
        row[f"median follow-up, {time_unit}"] = (
            f"{m['median_follow_up']:.1f}" if math.isfinite(m["median_follow_up"]) else "NR")
        rows.append(row)
    return pd.DataFrame(rows)


def cox_table(g: GroupingAnalysis) -> pd.DataFrame:
    """Paper-style hazard-ratio table."""
    assert g.effects is not None
    eff = g.effects
    level = f"{100 * (1 - eff.alpha):g}%"
    rows = []
    for _, r in eff.summary.iterrows():
        fitted = r["status"] == "fitted"
        rows.append({
            "model": r["model"], "term": r["term"], "n": int(r["n"]),
            "events": int(r["events"]),
            f"HR ({level} CI)": (f"{r['hr']:.2f} ({r['hr_lower']:.2f}-{r['hr_upper']:.2f})"
                                 if fitted else "not estimable"),
            "p": f"{r['p']:.3g}" if fitted else "",
            "events/variable": ("" if r["events_per_variable"] is None
                                or not math.isfinite(r["events_per_variable"])
                                else f"{r['events_per_variable']:.1f}"),
            "PH test p": f"{r['ph_p']:.3g}" if fitted and math.isfinite(r["ph_p"]) else "",
            "note": r["reason"],
        })
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame, *, index: bool = False) -> str:
    df = frame.reset_index() if index else frame
    cells = [[str(c) for c in df.columns]] + [
        ["" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in row]
        for row in df.itertuples(index=False)
    ]
    esc = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in esc[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines) + "\n"


def _write_table(frame: pd.DataFrame, folder: Path, stem: str, *, title: str,
                 index: bool = False) -> tuple[str, str]:
    frame.to_csv(folder / f"{stem}.csv", index=index)
    (folder / f"{stem}.md").write_text(f"### {title}\n\n{_markdown(frame, index=index)}",
                                       encoding="utf-8")
    return f"{stem}.csv", f"{stem}.md"


# ----------------------------------------------------------------------------------------------
# html


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:4px 10px;margin:3px 0}
img{max-width:100%}"""


def _html(analysis: CohortAnalysis, tables: Mapping[str, Mapping[str, pd.DataFrame]],
          figures: Mapping[str, str], summary: Mapping[str, Any]) -> str:
    spec = analysis.spec
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Cohort analysis: {html.escape(spec.endpoint)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Cohort analysis: {html.escape(spec.endpoint)}</h1>",
        f"<p>{analysis.cohort.n_patients} patients analysed; endpoint "
        f"<code>{html.escape(spec.time_col)}</code> / <code>{html.escape(spec.event_col)}</code>"
        f" ({html.escape(spec.time_unit)}); Kaplan-Meier {100 * (1 - spec.alpha):g}% intervals: "
        f"{html.escape(summary['settings']['ci_method_description'])}; "
        f"psma-stage {html.escape(__version__)}.</p>",
    ]
    inputs = summary["inputs"]
    for key, label in (("only_in_staging", "staged but without clinical data"),
                       ("only_in_clinical", "with clinical data but not staged")):
        if inputs[key]:
            parts.append(f"<p class='warn'>{len(inputs[key])} patient(s) {label} (left out): "
                         f"{html.escape(', '.join(inputs[key][:20]))}</p>")
    if analysis.notes:
        parts.append("<h2>Caveats</h2>")
        parts += [f"<div class='warn'><b>{html.escape(n.category)}</b> "
                  f"{html.escape(n.where)}: {html.escape(n.message)}</div>"
                  for n in analysis.notes]
    parts.append("<h2>Overall</h2>")
    parts.append(f"<img src='{figures['overall']}.svg' alt='Kaplan-Meier, all patients'>")
    for by, named in tables.items():
        parts.append(f"<h2>By {html.escape(by)}</h2>")
        parts.append(f"<img src='{figures[by]}.svg' alt='Kaplan-Meier by {html.escape(by)}'>")
        for title, frame in named.items():
            parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append(frame.to_html(index=False, na_rep="", border=0, escape=True))
    parts.append("<p>Machine-readable results: <a href='summary.json'>summary.json</a>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------


def write_cohort_report(
    analysis: CohortAnalysis,
    out_dir: Path,
    *,
    sources: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write summary.json, tables (CSV + Markdown), KM figures (PNG + SVG) and cohort.html.

    Parameters
    ----------
    analysis : CohortAnalysis
    out_dir : Path
        Output folder; created atomically (temporary sibling folder, then rename).
    sources : mapping, optional
        Description of the inputs recorded in summary.json (paths, database URL without
        password).
    overwrite : bool
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ConfigError
        If ``out_dir`` exists, is not empty and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ConfigError(f"{out_dir}: output folder exists and is not empty; choose another "
                          "folder or pass --overwrite.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        spec = analysis.spec
        summary = summary_dict(analysis, sources=sources)
        files: dict[str, list[str]] = {}
        tables: dict[str, dict[str, pd.DataFrame]] = {}
        figures: dict[str, str] = {}
        first = next(iter(analysis.groupings.values()))
        plot_km(first.survival, [tmp / "km_overall.png", tmp / "km_overall.svg"],
                levels=[OVERALL], title=f"{spec.endpoint}: all patients",
                time_unit=spec.time_unit, endpoint=spec.endpoint)
        figures["overall"] = "km_overall"
        for by, g in analysis.groupings.items():
            slug = _slug(by)
            named: dict[str, pd.DataFrame] = {}
            counts = g.stratification.table.assign(
                percent=g.stratification.table["percent"].round(1)).rename(
                columns={"level": by})
            named[f"Patients per {by}"] = counts
            if g.stratification.lesion_counts is not None:
                named[f"Lesions per scan by {by}"] = g.stratification.lesion_counts.reset_index()
            named[f"Table 1 by {by}"] = g.stratification.table1
            named[f"Survival by {by}"] = survival_table(g, time_unit=spec.time_unit)
            pw = g.survival.pairwise
            if len(pw):
                named[f"Log-rank tests by {by}"] = pd.concat([
                    pd.DataFrame([{"comparison": "all levels",
                                   "chi2": round(g.survival.logrank["test_statistic"], 3),
                                   "df": int(g.survival.logrank["degrees_of_freedom"]),
                                   "p": f"{g.survival.logrank['p']:.3g}", "p (Holm)": ""}]),
                    pd.DataFrame({"comparison": pw["level_a"] + " vs " + pw["level_b"],
                                  "chi2": pw["test_statistic"].round(3), "df": 1,
                                  "p": pw["p"].map(lambda p: f"{p:.3g}"),
                                  "p (Holm)": pw["p_holm"].map(lambda p: f"{p:.3g}")}),
                ], ignore_index=True)
            if g.effects is not None:
                named[f"Cox hazard ratios by {by}"] = cox_table(g)
            stems = {
                f"Patients per {by}": f"counts_{slug}",
                f"Lesions per scan by {by}": f"lesion_counts_{slug}",
                f"Table 1 by {by}": f"table1_{slug}",
                f"Survival by {by}": f"survival_{slug}",
                f"Log-rank tests by {by}": f"logrank_{slug}",
                f"Cox hazard ratios by {by}": f"cox_{slug}",
            }
            for title, frame in named.items():
                files.setdefault("tables", []).extend(
                    _write_table(frame, tmp, stems[title], title=title))
            plot_km(g.survival, [tmp / f"km_{slug}.png", tmp / f"km_{slug}.svg"],
                    title=f"{spec.endpoint} by {by}", time_unit=spec.time_unit,
                    endpoint=spec.endpoint)
            figures[by] = f"km_{slug}"
            tables[by] = named
        files["figures"] = [f"{stem}.{ext}" for stem in figures.values()
                            for ext in ("png", "svg")]
        files["report"] = ["cohort.html"]
        summary["files"] = files
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False),
                                          encoding="utf-8")
        (tmp / "cohort.html").write_text(_html(analysis, tables, figures, summary),
                                         encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("cohort report written to %s", out_dir)
    return out_dir
