"""The download engine's exceptions: what a caller catches."""

from __future__ import annotations


class DownloadError(RuntimeError):
    """A download failed; the message names the file, the URL and every attempt."""


class ChecksumMismatchError(DownloadError):
    """The bytes are not the expected ones (size, sha256 or dandi-etag). ``aside``: where the
    refused copy was moved (None if none was kept)."""

    aside = None
