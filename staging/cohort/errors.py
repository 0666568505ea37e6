"""Errors and warning categories of the cohort statistics.

Statistical caveats are warnings (a category per caveat, so that a caller can filter exactly the
ones it has understood); each is also recorded in the result object that raised it, so that it
reaches ``summary.json`` and the report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from imaging.errors import PipelineError, PipelineWarning

__all__ = [
    "CohortError",
    "CohortNote",
    "CohortWarning",
    "EmptyGroupWarning",
    "FewEventsInArmWarning",
    "LowEventsPerVariableWarning",
    "MissingCovariateWarning",
    "ModelConvergenceWarning",
    "NoEventsWarning",
    "ProportionalHazardsWarning",
    "UnmatchedPatientsWarning",
]


class CohortError(PipelineError, ValueError):
    """The cohort data cannot be analysed as given (bad values, no overlap, duplicates)."""


class CohortWarning(PipelineWarning):
    """Base of the statistical caveats of the cohort analysis."""


class UnmatchedPatientsWarning(CohortWarning):
    """Some patients are in the staging results or the clinical table, not in both."""


class EmptyGroupWarning(CohortWarning):
    """A known group has no patients; it is listed with n = 0 and left out of survival models."""


class NoEventsWarning(CohortWarning):
    """A group has no events: its median is not reached and no Cox model can be fitted in it."""


class FewEventsInArmWarning(CohortWarning):
    """A treatment arm has fewer than two events (none: its hazard ratio is not estimable)."""


class LowEventsPerVariableWarning(CohortWarning):
    """Fewer than 10 events per model variable: hazard ratios are unstable and biased."""


class ProportionalHazardsWarning(CohortWarning):
    """The Schoenfeld-residual test rejects proportional hazards for a model term."""


class ModelConvergenceWarning(CohortWarning):
    """The Cox fit reported a convergence problem (often separation or collinearity)."""


class MissingCovariateWarning(CohortWarning):
    """Patients without a value for a model variable are left out of that model."""


@dataclass(frozen=True, slots=True)
class CohortNote:
    """A recorded caveat: the warning category name, where it applies, and the message."""

    category: str
    where: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"category": self.category, "where": self.where, "message": self.message}


def _warn(
    notes: list[CohortNote], category: type[CohortWarning], where: str, message: str
) -> None:
    """Record a caveat and issue it as a warning of ``category``."""
    notes.append(CohortNote(category=category.__name__, where=where, message=message))
    warnings.warn(f"{where}: {message}", category, stacklevel=3)
