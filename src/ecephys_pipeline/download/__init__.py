"""One verified, resumable HTTP transfer: ``download_file(url, dest)`` is the only way bytes reach
the cache.

Guarantees:

* Nothing half-written is ever at ``dest``: bytes stream into ``dest.part`` next to a sidecar
  ``dest.part.json`` ({url, etag, last_modified, size}); the file is verified (byte count against
  Content-Length and the expected size, sha256 computed in the same pass, opened as HDF5) and only
  then renamed to ``dest``. A record ``dest.download.json`` ({path, size, sha256, url, etag,
  last_modified, mtime_ns}) says what was verified; a rerun trusts a file whose size and mtime
  still match its record without hashing it again.
* A ``.part`` left by a dropped connection, a stalled socket or a killed process is resumed with
  ``Range`` guarded by ``If-Range`` (or by the total size when the server sends no validator); a
  server that answers 200 instead of 206 restarts the file from zero. Resumed files are re-hashed
  in full (prefix from disk, then the hash continues over the streamed bytes).
* Each socket read has a timeout (a stalled transfer is noticed in seconds, not never), a
  connection that trickles below a floor rate is dropped and resumed, failed attempts back off
  exponentially with full jitter, ``Retry-After`` is honoured (capped), and the final
  ``DownloadError`` lists what happened on every attempt.
* A file that differs from the expected size or sha256 (e.g. a lock file's entry) is renamed to
  ``dest.mismatch-<sha8>`` and never used; one that is not HDF5 to ``dest.invalid-<sha8>``.
* Two processes never write the same ``.part`` (an advisory lock, ``dest.part.lock``).

AllenSDK does none of this (allen-warehouse.md §1.6, §3.2): it writes straight to the final path
with no read timeout, no resume and no checksum.

The package, along its seams: ``digests`` (sha256 of files and streams), ``record`` (the
``.download.json``), ``state`` (the ``.part``, its sidecar, verification, placement), ``http``
(headers, remote size, status codes), ``retry`` (the one retry decision), ``transfer`` (one
stream or parallel ranges), ``engine`` (``download_file``, ``adopt_existing``), ``options``.
"""

from .digests import sha256_file
from .engine import adopt_existing, download_file, remote_size_retried, verified_file
from .errors import ChecksumMismatchError, DownloadError
from .http import remote_info, remote_size
from .options import Options
from .record import DownloadRecord, changed_since_verified, read_record, record_path
from .state import PartState, part_path, resumable_bytes, verify

__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadRecord",
    "Options",
    "PartState",
    "adopt_existing",
    "changed_since_verified",
    "download_file",
    "part_path",
    "read_record",
    "record_path",
    "remote_info",
    "remote_size",
    "remote_size_retried",
    "resumable_bytes",
    "sha256_file",
    "verified_file",
    "verify",
]
