"""The ``Retry-After`` header, read once for every request the package makes (metadata pages,
listings, downloads): delta-seconds or an HTTP date (RFC 9110, section 10.2.3)."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds the header asks to wait (never negative); None when absent or unreadable. A date
    without a zone is taken as UTC."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
