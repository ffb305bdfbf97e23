"""LFP codec and chunk-shape benchmark (not run in CI): how the LFP Zarr stores are encoded.

On real-looking LFP (float32 volts: int16 counts x 0.195e-6 V, as the Allen files hold them; a
1/f-shaped field shared across depth with a depth-dependent gain, per-channel 1/f noise and
white noise, 95 channels at 1250 Hz) it compares Zarr (format 2) encodings:

* codecs: Blosc zstd levels 1/3/5/9 with byte shuffle, zstd 3 with bit shuffle, Blosc lz4 with
  byte shuffle, plain zstd 3 (no shuffle), and the NWB's own gzip 9 (h5py) for reference;
* chunk shapes (time x channel): 8192/32768/65536/131072 x 95 and 32768 x 24;

and for each: compression ratio, write MB/s (uncompressed MB per second, one thread), full
decode MB/s, and the time to read 10 s of 24 adjacent channels at a random offset (median of 20).

Usage::

    .venv/bin/python bench/bench_lfp_codec.py [--seconds 120] [--workdir /tmp/lfp_codec]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import zarr

FS = 1250.0
N_CH = 95


def realistic_lfp(seconds: float, seed: int = 0) -> np.ndarray:
    """(n, 95) float32 volts with a 1/f spectrum, correlated across depth, int16-quantized."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    freqs = np.fft.rfftfreq(n, 1 / FS)
    shape = 1 / np.maximum(freqs, 0.5)  # 1/f amplitude
    shape[freqs > 500] *= np.exp(-(freqs[freqs > 500] - 500) / 50)  # the 1 kHz low-pass region

    def pink(k: int) -> np.ndarray:
        spec = (rng.normal(size=(len(freqs), k)) + 1j * rng.normal(size=(len(freqs), k))) * shape[
            :, None
        ]
        x = np.fft.irfft(spec, n=n, axis=0)
        return x / x.std(axis=0)

    common = pink(3)  # three shared sources, mixed with depth-dependent gains
    depth = np.linspace(0, 1, N_CH)
    gains = np.stack([np.sin(np.pi * depth), np.cos(np.pi * depth), depth])  # (3, 95)
    field = common @ gains * 150.0  # µV
    local = pink(N_CH) * 20.0
    white = rng.normal(0, 8.0, (n, N_CH))
    counts = np.round((field + local + white) / 0.195)
    return (counts * 0.195e-6).astype(np.float32)


CODECS = (
    "blosc-zstd1-shuffle",
    "blosc-zstd3-shuffle",
    "blosc-zstd5-shuffle",
    "blosc-zstd9-shuffle",
    "blosc-zstd3-bitshuffle",
    "blosc-lz4-shuffle",
    "blosc-zstd3-noshuffle",
    "blosc-zstd5-noshuffle",
    "blosc-lz4-noshuffle",
    "zstd1",
    "zstd3",
    "zstd5",
    "zstd9",
    "zlib1",
)


CHUNK_SHAPES = (
    (8192, N_CH),
    (16384, N_CH),
    (32768, N_CH),
    (65536, N_CH),
    (131072, N_CH),
    (32768, 24),
    (16384, 32),
    (16384, 48),
    (32768, 48),
)
CHUNK_SWEEP_CODEC = "blosc-zstd3-noshuffle"  # the chunk shapes are compared with this codec


def v2_compressor(name: str):
    """The numcodecs compressor a codec name above stands for."""
    from numcodecs import Blosc, Zlib, Zstd

    if name.startswith("blosc"):
        _, codec, shuffle = name.split("-")
        cname = "zstd" if codec.startswith("zstd") else "lz4"
        level = int(codec.removeprefix("zstd")) if cname == "zstd" else 5
        modes = {"shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        mode = modes.get(shuffle, Blosc.NOSHUFFLE)
        return Blosc(cname=cname, clevel=level, shuffle=mode)
    if name.startswith("zlib"):
        return Zlib(level=int(name.removeprefix("zlib")))
    return Zstd(level=int(name.removeprefix("zstd")))


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_zarr(data: np.ndarray, path: Path, name: str, chunks: tuple[int, int]) -> dict:
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    arr = zarr.create_array(
        store=str(path),
        shape=data.shape,
        chunks=chunks,
        dtype="float32",
        zarr_format=2,
        compressors=v2_compressor(name),
        filters=None,
    )
    block = chunks[0] * 4
    for a in range(0, data.shape[0], block):
        arr[a : a + block] = data[a : a + block]
    t_write = time.perf_counter() - t0
    size = store_bytes(path)
    arr = zarr.open_array(str(path), mode="r")
    t0 = time.perf_counter()
    back = arr[:]
    t_read = time.perf_counter() - t0
    assert np.array_equal(back, data)
    rng = np.random.default_rng(1)
    times = []
    win = int(10 * FS)
    for _ in range(20):
        a = int(rng.integers(0, data.shape[0] - win))
        c = int(rng.integers(0, N_CH - 24))
        t0 = time.perf_counter()
        arr[a : a + win, c : c + 24]
        times.append(time.perf_counter() - t0)
    mb = data.nbytes / 1e6
    return {
        "ratio": data.nbytes / size,
        "write": mb / t_write,
        "read": mb / t_read,
        "slice_ms": statistics.median(times) * 1e3,
    }


def bench_gzip(data: np.ndarray, path: Path) -> dict:
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, compression="gzip", compression_opts=9)
    t_write = time.perf_counter() - t0
    with h5py.File(path, "r") as f:
        ds = f["data"]
        t0 = time.perf_counter()
        ds[()]
        t_read = time.perf_counter() - t0
        chunks = ds.chunks
    mb = data.nbytes / 1e6
    return {
        "ratio": data.nbytes / path.stat().st_size,
        "write": mb / t_write,
        "read": mb / t_read,
        "slice_ms": float("nan"),
        "chunks": chunks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lfp_codec"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = realistic_lfp(args.seconds)
    print(f"data: {data.shape} float32, {data.nbytes / 1e6:.1f} MB")
    g = bench_gzip(data, args.workdir / "gzip9.h5")
    print(f"| NWB-style h5py gzip 9, chunks {g['chunks']} | {g['ratio']:.2f} | {g['write']:.0f} "
          f"| {g['read']:.0f} | |")  # fmt: skip
    print("| codec | chunks | ratio | write MB/s | decode MB/s | 10 s x 24 ch (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in CODECS:
        r = bench_zarr(data, args.workdir / "c.zarr", name, (32768, N_CH))
        print(f"| {name} | 32768 x 95 | {r['ratio']:.2f} | {r['write']:.0f} | {r['read']:.0f} "
              f"| {r['slice_ms']:.1f} |")  # fmt: skip
    for chunks in CHUNK_SHAPES:
        r = bench_zarr(data, args.workdir / "c.zarr", CHUNK_SWEEP_CODEC, chunks)
        print(f"| {CHUNK_SWEEP_CODEC} | {chunks[0]} x {chunks[1]} | {r['ratio']:.2f} "
              f"| {r['write']:.0f} | {r['read']:.0f} | {r['slice_ms']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
