"""The static HTML report of a run (`rewardlab report RUN`): answers first, then the evidence.

`report.html` renders the page from the stages' typed sections; `report.figures` draws every figure,
for the page and for the stages that save them, so this package does not import `report.html` up
front (the stages import `report.figures`, and `report.html` imports the stages).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    """`build_report`, from `report.html` on first use."""
    if name == "build_report":
        from rewardlab.report.html import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
