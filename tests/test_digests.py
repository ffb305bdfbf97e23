"""The engine's one hasher gives both digests DANDI publishes, whatever the read sizes."""

import hashlib
import os

import pytest

from ecephys_pipeline.download.digests import Digester

MiB = 1 << 20


def etag_by_definition(data: bytes, part: int = 64 * MiB) -> str:
    """docs/dandi.md §4, written out: md5 of the parts' md5s, then the number of parts."""
    parts = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


@pytest.mark.parametrize("size", [0, 1, 64 * MiB - 1, 64 * MiB, 64 * MiB + 1, 129 * MiB + 7])
def test_sha256_and_dandi_etag_of_a_stream_in_odd_blocks(tmp_path, size):
    data = os.urandom(size)
    d = Digester()
    for i in range(0, size, 3_000_017):  # blocks that straddle the 64 MiB part boundaries
        d.update(memoryview(data)[i : i + 3_000_017])
    assert d.size == size
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.dandi_etag == etag_by_definition(data)
    path = tmp_path / "f"
    path.write_bytes(data)
    whole = Digester.of_file(path)
    assert (whole.sha256, whole.dandi_etag) == (d.sha256, d.dandi_etag)


@pytest.mark.parametrize("size", [0, 64 * MiB + 1, 129 * MiB + 7])
def test_in_two_threads_gives_the_same_digests_from_a_reused_buffer(size):
    data = os.urandom(size)
    d = Digester()
    buf = bytearray(3_000_017)
    with d.in_two_threads():
        for i in range(0, size, len(buf)):
            block = data[i : i + len(buf)]
            buf[: len(block)] = block
            d.update(memoryview(buf)[: len(block)])  # the caller overwrites it right after
        buf[:] = bytes(len(buf))
    assert d.size == size
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.dandi_etag == etag_by_definition(data)


def test_dandi_etag_is_refused_while_the_md5_thread_may_still_hash():
    data = os.urandom(5 * MiB)
    d = Digester()
    with d.in_two_threads():
        d.update(data)
        with pytest.raises(RuntimeError, match="after in_two_threads"):
            d.dandi_etag  # noqa: B018 - the property is what is tested
    assert d.dandi_etag == etag_by_definition(data)
