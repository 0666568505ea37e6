"""psma-stage staging layer: categories, patient stage, pipeline, batch, database, cohort, CLI."""

from __future__ import annotations

__all__: list[str] = []
