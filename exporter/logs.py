"""Logging set-up shared by the commands."""

from __future__ import annotations

import logging


def setup_logging(level: str = "info") -> None:
    """One line per event, with time, level and logger."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # APScheduler logs every job run at INFO; that is noise for an exporter's operators.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
