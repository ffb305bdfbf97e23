"""Logging set-up shared by the workflow's scripts and the command line."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def to_file(path: str) -> None:
    """Send stderr and the ``logging`` records of this process to a rule's log file."""
    sys.stderr = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=FORMAT, force=True)
