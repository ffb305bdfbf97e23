"""The retry policy: after each failed attempt, one decision — retry after N seconds, or stop.

Attempts that take the ``.part`` further than ever before in this call are not counted (a server
that drops every few hundred MB still finishes); ``max_attempts`` attempts in a row without
progress stop the transfer, so do ``MAX_VERIFY_FAILURES`` restarts from zero (bad bytes, or a
server contradicting itself), and any fatal failure (HTTP 404, a failed disk write, a remote file
that changed since the lock file). The total is bounded by ``4 * max_attempts`` plus the
verification restarts. Waits back off exponentially with full jitter; ``Retry-After`` is honoured
(capped at ``backoff_max_s``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

MAX_VERIFY_FAILURES = 3  # whole-file restarts after a failed verification (bad sha, not HDF5, ...)


class AttemptFailed(Exception):
    """One attempt failed; what it means for the next one."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        fatal: bool = False,
        verify: bool = False,
        bad_bytes: bool = False,
        refused: bool = False,
        aside: Path | None = None,
    ):
        super().__init__(reason)
        self.aside = aside  # where the refused copy was moved
        self.reason, self.retry_after, self.fatal = reason, retry_after, fatal
        self.verify = verify or bad_bytes  # counts toward MAX_VERIFY_FAILURES
        self.bad_bytes = bad_bytes or refused  # the bytes (or their announced size) were wrong
        # the server sent the whole file, of the expected size, with another sha256: it serves
        # other bytes than the expected ones, and asking again gets the same answer
        self.refused = refused
        self.fatal = fatal or refused


class RangesUnsupported(Exception):
    """The server does not serve byte ranges: a parallel transfer falls back to one stream."""


class RetryPolicy:
    """Keeps the history of one transfer's failed attempts and decides about the next one."""

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        start_bytes: int = 0,
        rand: Callable[[], float] = random.random,
    ):
        self.max_attempts = max_attempts
        self.base, self.cap = backoff_base_s, backoff_max_s
        self.rand = rand
        self.best = start_bytes  # the most bytes the .part has held in this call
        self.history: list[str] = []
        self.failures = 0  # consecutive attempts that did not take the .part past its best
        self.verify_failures = 0
        self.bad_bytes = False  # some attempt got wrong bytes: the end is a checksum error
        self.last: AttemptFailed | None = None

    @property
    def attempt_cap(self) -> int:
        return 4 * self.max_attempts + MAX_VERIFY_FAILURES

    def after(self, fail: AttemptFailed, have: int, total: int | None) -> float | None:
        """Record ``fail`` (the .part now holds ``have`` of ``total`` bytes); return the seconds
        to wait before the next attempt, or None to stop."""
        # Progress = the .part got further than ever before in this call. A server that sends
        # the same too-short body again and again (then forces a restart) makes none.
        progressed = have > self.best and not fail.verify
        self.best = max(self.best, have)
        self.history.append(
            f"attempt {len(self.history) + 1}: {fail.reason}; .part has {have}"
            + (f" of {total}" if total is not None else "")
            + " bytes"
        )
        self.last = fail
        self.verify_failures += fail.verify
        self.bad_bytes = self.bad_bytes or fail.bad_bytes
        self.failures = 0 if progressed else self.failures + 1
        if (
            fail.fatal
            or self.failures >= self.max_attempts
            or self.verify_failures >= MAX_VERIFY_FAILURES
            or len(self.history) >= self.attempt_cap
        ):
            return None
        if fail.retry_after is not None:
            return min(fail.retry_after, self.cap)
        if progressed:
            return min(self.base, self.cap) * self.rand()
        return self.rand() * min(self.cap, self.base * 2 ** (self.failures - 1))

    @property
    def wrong_bytes(self) -> bool:
        """Whether the transfer ended for wrong bytes (a checksum error), not another failure."""
        last = self.last
        return self.bad_bytes and not (last is not None and last.fatal and not last.refused)
