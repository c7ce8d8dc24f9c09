"""The static HTML report of a run (`rewardlab report RUN`): answers first, then the evidence."""

from rewardlab.report.html import build_report

__all__ = ["build_report"]
