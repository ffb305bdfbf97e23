"""Write-out of a download's bytes while it goes on, so the fsync before placement finds little
left to write (verify before place: the fsync stays; this only starts the disk early).

Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: start writing the range's dirty pages, do not
wait for them. Elsewhere (or without it in the C library) nothing is done and the fsync does it
all, as before.
"""

from __future__ import annotations

import ctypes
import sys

STEP = 32 << 20  # bytes written between two write-out requests
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


class Writeback:
    """Follows one file descriptor's writes at increasing offsets; every :data:`STEP` bytes it
    asks the kernel to start writing them out (no wait; a failure is ignored: the fsync before
    placement is the guarantee and reports errors)."""

    def __init__(self, fd: int, offset: int):
        self.fd, self.flushed = fd, offset

    def wrote_up_to(self, end: int) -> None:
        """The bytes before ``end`` are written; start the write-out if a STEP has gathered."""
        if _sync_file_range is not None and end - self.flushed >= STEP:
            _sync_file_range(self.fd, self.flushed, end - self.flushed, _SYNC_FILE_RANGE_WRITE)
            self.flushed = end
