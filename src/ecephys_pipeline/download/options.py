"""How a file is transferred: one immutable object, built once from the config's ``download:``.

The defaults of the settings the config exposes are the config schema's defaults
(a test reads the schema and compares), so a setting has one default whether
the engine is called by the workflow, the command line or a benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PLAN_KEYS = frozenset({"preflight"})
"""Keys of the config's ``download:`` section that belong to the plan, not to a transfer."""


@dataclass(frozen=True)
class Options:
    """Settings of one transfer.

    ``max_attempts``: attempts that add no bytes; an attempt that makes progress is not counted
    (a server that drops every few hundred MB still finishes), but the total is bounded by
    ``4 * max_attempts`` plus the verification restarts. ``connections_per_file > 1``: fetch that
    many byte ranges in parallel (one stream when the server ignores ranges). Failed attempts
    wait a random time up to ``backoff_base_s * 2**(n-1)``, at most ``backoff_max_s``.
    """

    read_timeout_s: float = 60
    connect_timeout_s: float = 10
    max_attempts: int = 8
    connections_per_file: int = 1
    verify_hdf5: bool = True
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60
    reserve_free_gb: float = 1  # a body of unknown length stops before the disk has less free

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.connections_per_file < 1:
            raise ValueError(
                f"download options: max_attempts ({self.max_attempts}) and "
                f"connections_per_file ({self.connections_per_file}) must be at least 1"
            )
        if self.read_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("download options: the timeouts must be positive")

    @property
    def timeout(self) -> tuple[float, float]:
        """``requests``' (connect, read) timeout."""
        return (self.connect_timeout_s, self.read_timeout_s)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Options:
        """From the config's ``download:`` section (the plan's keys in it are ignored); a key
        the engine does not know is an error naming it."""
        section = dict(section or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - names - PLAN_KEYS)
        if unknown:
            raise ValueError(
                f"download: unknown setting(s) {', '.join(unknown)}; known: "
                + ", ".join(sorted(names | PLAN_KEYS))
            )
        return cls(**{k: v for k, v in section.items() if k in names})
