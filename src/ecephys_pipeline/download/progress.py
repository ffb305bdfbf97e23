"""Progress lines of a transfer or a hash: "name: done/total (pct) at MB/s, ETA"."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

PROGRESS_INTERVAL = 5.0  # seconds between progress lines


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "? bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def fmt_secs(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Logs "name: done/total (pct) at MB/s, ETA" at most every ``interval`` seconds.

    ``update`` is called per chunk and only compares a monotonic clock; formatting happens when a
    line is due. ``sink`` is a logger, or a callable ``sink(done_bytes, total_bytes)``.
    """

    def __init__(
        self,
        name: str,
        total: int | None,
        sink: Any,
        *,
        start: int = 0,
        interval: float | None = None,
        what: str = "downloaded",
    ):
        interval = PROGRESS_INTERVAL if interval is None else interval
        self.name, self.total, self.interval, self.what = name, total, interval, what
        self.sink = sink
        self.t0 = time.monotonic()
        self.next_at = self.t0 + interval
        self.start = start
        self.done = start

    @property
    def to_logger(self) -> bool:
        return isinstance(self.sink, logging.Logger)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.interval
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.to_logger:
            self.sink(self.done, self.total)
            return
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.sink.info(
                "%s: %s %s of %s (%.1f%%) at %.1f MB/s, ETA %s",
                self.name,
                self.what,
                fmt_bytes(self.done),
                fmt_bytes(self.total),
                100.0 * self.done / self.total,
                rate / 1e6,
                fmt_secs(eta),
            )
        else:
            self.sink.info(
                "%s: %s %s at %.1f MB/s", self.name, self.what, fmt_bytes(self.done), rate / 1e6
            )
