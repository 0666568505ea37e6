"""Kaplan-Meier figures: one curve per group with its confidence band, censoring marks, and
the number at risk in a table under the time axis (lifelines ``add_at_risk_counts``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lifelines.plotting import add_at_risk_counts
from matplotlib import colormaps
from matplotlib.figure import Figure
from numpy.typing import NDArray

from staging.cohort.survival import SurvivalSummary

__all__ = ["plot_km"]

logger = logging.getLogger(__name__)


def _xticks(t_max: float, unit: str) -> NDArray[np.float64]:
    if unit.startswith("month"):
        step = 12.0 if t_max <= 120 else 24.0
    else:
        raw = t_max / 6.0
        mag = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
        step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    return np.arange(0.0, t_max + 1e-9, step)


def plot_km(
    survival: SurvivalSummary,
    paths: Sequence[Path],
    *,
    levels: Sequence[str] | None = None,
    title: str | None = None,
    time_unit: str = "months",
    endpoint: str | None = None,
) -> None:
    """Draw Kaplan-Meier curves with confidence bands and a number-at-risk table; save them.

    Parameters
    ----------
    survival : SurvivalSummary
        Result of :func:`staging.cohort.survival.summarize_survival`.
    paths : sequence of Path
        Files to write (format from the suffix, e.g. ``.png`` and ``.svg``).
    levels : sequence of str, optional
        Curves to draw (default: every level with patients, without ``All patients``; pass
        ``["All patients"]`` for the overall curve).
    title, time_unit, endpoint : str, optional
        Figure title, x-axis unit, and y-axis endpoint name (default: the event column).
    """
    names = list(levels) if levels is not None else [
        k for k in survival.fitters if k != "All patients"
    ]
    fitters = [survival.fitters[k] for k in names]
    t_max = max(float(f.durations.max()) for f in fitters)
    # a bare Figure (no pyplot state, no GUI backend): safe in batch workers and servers
    fig = Figure(figsize=(7.5, 5.2 + 0.22 * len(names)))
    ax = fig.add_subplot()
    try:
        colors = colormaps["tab10"].colors  # type: ignore[attr-defined]
        for i, (name, kmf) in enumerate(zip(names, fitters, strict=True)):
            color = colors[i % len(colors)]
            s = kmf.survival_function_.iloc[:, 0]
            ci = survival.confidence_intervals[name]
            n, ev = len(kmf.durations), int(kmf.event_observed.sum())
            ax.step(s.index, s.to_numpy(), where="post", color=color, lw=1.8,
                    label=f"{name} (n={n}, events={ev})")
            ax.fill_between(ci.index, ci["lower"].to_numpy(), ci["upper"].to_numpy(),
                            step="post", color=color, alpha=0.18, lw=0)
            censored = kmf.event_table.index[kmf.event_table["censored"] > 0]
            censored = censored[censored > 0]
            ax.plot(censored, s.reindex(censored, method="ffill").to_numpy(), "|",
                    color=color, ms=6, mew=1.0)
        ticks = _xticks(t_max, time_unit)
        ax.set_xlim(0, ticks[-1] if ticks[-1] >= t_max else t_max)
        ax.set_xticks(ticks)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(endpoint or f"Probability without {survival.event_col}")
        ax.set_xlabel(f"Time ({time_unit})")
        ax.grid(alpha=0.3)
        for t in survival.at:
            ax.axvline(t, color="0.5", lw=0.8, ls=":")
        band = f"{100 * (1 - survival.alpha):g}% CI ({survival.ci_method})"
        text = f"shaded: {band}"
        if survival.logrank and levels is None:
            text += f"\nlog-rank p = {survival.logrank['p']:.3g}"
        # top right: survival curves start at 1 on the left and fall, so this corner stays free
        ax.text(0.99, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                color="0.3", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.legend(loc="lower left", fontsize=8, frameon=False)
        if title:
            ax.set_title(title)
        add_at_risk_counts(*fitters, labels=names, rows_to_show=["At risk"], ax=ax, fig=fig,
                           xticks=ticks)
        fig.tight_layout()
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight")
            logger.debug("wrote %s", path)
    finally:
        fig.clear()
