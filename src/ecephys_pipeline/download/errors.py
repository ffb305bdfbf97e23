"""The download engine's exceptions: what a caller catches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .retry import AttemptFailed


class DownloadError(RuntimeError):
    """A download failed; the message names the file, the URL and every attempt. ``failure``:
    what the failed request means for another try (an HTTP status), when it says."""

    def __init__(self, message: str, *, failure: AttemptFailed | None = None):
        super().__init__(message)
        self.failure = failure


class ChecksumMismatchError(DownloadError):
    """The bytes are not the expected ones (size, sha256 or dandi-etag). ``aside``: where the
    refused copy was moved (None if none was kept)."""

    def __init__(self, message: str, *, aside: Path | None = None):
        super().__init__(message)
        self.aside = aside
