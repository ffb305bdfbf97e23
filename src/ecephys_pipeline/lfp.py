"""LFP as chunked arrays: one per-probe LFP NWB -> one Zarr store, read with xarray (issue 16).

:func:`convert_lfp` streams ``/acquisition/probe_<pid>_lfp/probe_<pid>_lfp_data`` (allen-nwb.md
§3) block by block into a Zarr (format 2) store, so peak memory is a few blocks whatever the
file's size:

* the root group is the full-rate ``lfp(time, channel)`` with its coordinates: ``time`` (s,
  master clock, the stored timestamps), ``channel`` (channel id), the channel's probe positions,
  structure acronym, CCF coordinates, ``valid_data`` and local index (from the LFP file's own
  electrodes table, which holds all of them); the session's ``/intervals/invalid_times`` are
  attributes (AllenSDK masks LFP with them; :func:`mask_invalid` does the same on any slice);
* ``overview`` holds the same array decimated by ``overview_factor`` (1250 Hz -> 125 Hz by
  default) after a linear-phase Kaiser-windowed FIR anti-alias filter, computed block-wise with
  the filter's overlap, so it equals :func:`decimate` of the whole array;
* ``csd`` holds ``/processing/current_source_density`` as AllenSDK's
  ``get_current_source_density`` returns it: ``csd(virtual_channel_index, time)``.

Readers: ``xarray.open_zarr(store)`` (full rate), ``open_zarr(store, group="overview")``,
``open_zarr(store, group="csd")``; :func:`get_lfp` and :func:`get_current_source_density` mirror
AllenSDK's methods of the same names. The layout is documented in docs/SCHEMA.md ("LFP stores");
the codec and chunk shape were chosen by bench/bench_lfp_codec.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import __version__, atomic, nwb
from .nwb import NwbError

log = logging.getLogger(__name__)

TIME_CHUNK = 16384
"""Samples per chunk along time (13.1 s at 1250 Hz)."""
CHANNEL_CHUNK = 32
"""Channels per chunk (95 LFP channels -> 3 chunks)."""
OVERVIEW_FACTOR = 10
"""Decimation factor of the overview level (1250 Hz -> 125 Hz)."""
BLOCK_CHUNKS = 4
"""Time chunks read from the NWB and written per step (bounds peak memory)."""
FIR_HALF_WIDTH = 10
"""The anti-alias FIR has ``2 * FIR_HALF_WIDTH * factor + 1`` taps (scipy.signal.decimate's
length for its FIR filter)."""
KAISER_BETA = 8.0
"""Kaiser window beta of the FIR: about 80 dB stopband attenuation."""
STORE_SUFFIX = ".zarr"
DIMENSIONS = "_ARRAY_DIMENSIONS"  # xarray's dimension-name attribute in Zarr format 2

CHANNEL_COORDS = (
    "probe_vertical_position",
    "probe_horizontal_position",
    "ecephys_structure_acronym",
    "anterior_posterior_ccf_coordinate",
    "dorsal_ventral_ccf_coordinate",
    "left_right_ccf_coordinate",
    "valid_data",
    "channel_local_index",
)


def compressor() -> Any:
    """Blosc zstd level 3 without shuffle: the LFP values are int16 counts x 0.195 µV, a small
    alphabet of float32 bit patterns that zstd matches whole; byte shuffling splits them and
    compresses worse (bench/README.md)."""
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.NOSHUFFLE)


# --------------------------------------------------------------------------------------------
# anti-alias filter and decimation


def antialias_taps(factor: int) -> np.ndarray:
    """Linear-phase low-pass FIR (float32, unit DC gain) cutting at the new Nyquist frequency
    (``fs / (2 * factor)``): a windowed sinc with a Kaiser window (:data:`KAISER_BETA`)."""
    if factor < 2:
        raise ValueError(f"overview factor must be >= 2, not {factor}")
    half = FIR_HALF_WIDTH * factor
    n = np.arange(-half, half + 1)
    h = np.sinc(n / factor) * np.kaiser(2 * half + 1, KAISER_BETA)
    return (h / h.sum()).astype(np.float32)


def _fir_decimate(padded: np.ndarray, taps: np.ndarray, factor: int, n_out: int) -> np.ndarray:
    """Output j = sum_t taps[t] * padded[factor * j + t], for j < n_out (float32)."""
    if n_out <= 0:
        return np.empty((0, padded.shape[1]), dtype=np.float32)
    windows = sliding_window_view(padded, len(taps), axis=0)[: factor * (n_out - 1) + 1 : factor]
    return np.einsum("ocl,l->oc", windows, taps).astype(np.float32, copy=False)


def decimate(x: np.ndarray, factor: int) -> np.ndarray:
    """Whole-array reference: low-pass :func:`antialias_taps` (zero phase: output sample k is
    centred on input sample ``factor * k``; the ends are extended with the first and last
    sample), keeping every ``factor``-th sample: ``ceil(n / factor)`` rows."""
    taps = antialias_taps(factor)
    half = len(taps) // 2
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        return np.empty((0, x.shape[1]), dtype=np.float32)
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)])
    return _fir_decimate(padded, taps, factor, -(-x.shape[0] // factor))


class Decimator:
    """:func:`decimate` computed block by block: :meth:`push` each consecutive block of the
    ``n_total`` rows; it returns the output rows that block completes. Holds at most one block
    plus the filter's overlap."""

    def __init__(self, factor: int, n_total: int):
        self.factor = factor
        self.taps = antialias_taps(factor)
        self.half = len(self.taps) // 2
        self.n_total = n_total
        self.n_out = -(-n_total // factor)
        self.seen = 0
        self.next_out = 0
        self.buf: np.ndarray | None = None  # padded rows from padded index self.start
        self.start = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        parts = [] if self.buf is None else [self.buf]
        if self.seen == 0 and len(x):
            parts.append(np.repeat(x[:1], self.half, 0))
        parts.append(x)
        self.seen += len(x)
        if self.seen > self.n_total:
            raise ValueError(f"pushed {self.seen} rows, expected {self.n_total}")
        if self.seen == self.n_total and len(x):
            parts.append(np.repeat(x[-1:], self.half, 0))
        buf = np.concatenate(parts)
        end = self.start + len(buf)  # padded rows available: [start, end)
        width = len(self.taps)
        stop = min(self.n_out, (end - width) // self.factor + 1) if end >= width else 0
        first = self.factor * self.next_out - self.start
        out = _fir_decimate(buf[first:], self.taps, self.factor, stop - self.next_out)
        self.next_out = max(stop, self.next_out)
        drop = self.factor * self.next_out - self.start
        self.buf = buf[drop:].copy()
        self.start += drop
        return out


# --------------------------------------------------------------------------------------------
# reading the NWB side


@dataclass
class LfpSource:
    """What a store is built from: the LFP file's series and channels, the session's probe
    name and invalid intervals."""

    path: Path
    session_path: Path
    probe_id: int
    session_id: int
    probe_name: str
    sampling_rate: float
    channels: dict[str, np.ndarray]  # channel id + CHANNEL_COORDS, in data column order
    invalid_times: list[nwb.InvalidInterval]


def read_source(lfp_nwb: str | os.PathLike, session_nwb: str | os.PathLike) -> LfpSource:
    """Channel metadata and invalid times for one probe; :class:`NwbError` names a bad file."""
    info = nwb.open_lfp(lfp_nwb)
    with nwb.open_session(session_nwb) as session:
        sid = session.session_id
        probes = session.probes()
        invalid = session.invalid_times()
    if info.session_id is not None and info.session_id != sid:
        raise NwbError(
            f"{info.path} belongs to session {info.session_id}, not to {session_nwb} "
            f"(session {sid}): pass the LFP file's own session NWB"
        )
    names = dict(zip(probes.probe_id.tolist(), probes.name.tolist(), strict=True))
    if info.probe_id not in names:
        raise NwbError(
            f"{session_nwb} (session {sid}) has no probe {info.probe_id}, the probe of {info.path}"
        )
    with h5py.File(info.path, "r") as f:
        series = f[_series_path(info.probe_id)]
        el = nwb.read_electrodes(f, info.path)
        region = series["electrodes"][()].astype(np.int64) if "electrodes" in series else None
        if region is None:
            region = np.arange(len(el), dtype=np.int64)
        if region.shape != (info.n_channels,) or (
            region.size and (region.min() < 0 or region.max() >= len(el))
        ):
            raise NwbError(
                f"{info.path}: the LFP series' electrodes region does not index its "
                f"{info.n_channels} data columns into the {len(el)}-row electrodes table"
            )
    acr = np.array(["" if a is None else a for a in el.structure_acronym[region]], dtype=object)
    channels = {
        "channel": el.channel_id[region],
        "probe_vertical_position": el.probe_vertical_position[region],
        "probe_horizontal_position": el.probe_horizontal_position[region],
        "ecephys_structure_acronym": acr,
        "anterior_posterior_ccf_coordinate": el.anterior_posterior_ccf_coordinate[region],
        "dorsal_ventral_ccf_coordinate": el.dorsal_ventral_ccf_coordinate[region],
        "left_right_ccf_coordinate": el.left_right_ccf_coordinate[region],
        "valid_data": el.valid_data[region],
        "channel_local_index": el.local_index[region],
    }
    rate = info.lfp_sampling_rate
    if not np.isfinite(rate):
        rate = float(probes.lfp_sampling_rate[list(names).index(info.probe_id)])
    return LfpSource(
        path=info.path,
        session_path=Path(session_nwb),
        probe_id=info.probe_id,
        session_id=sid,
        probe_name=str(names[info.probe_id]),
        sampling_rate=float(rate),
        channels=channels,
        invalid_times=invalid,
    )


def _series_path(probe_id: int) -> str:
    return f"acquisition/probe_{probe_id}_lfp/probe_{probe_id}_lfp_data"


def mask_tags(probe_name: str) -> list[str]:
    """The invalid_times labels that mask a probe's LFP in AllenSDK's ``get_lfp``."""
    return ["all_probes", probe_name]


# --------------------------------------------------------------------------------------------
# writing


def _array(group: Any, name: str, data: np.ndarray, dims: list[str], attrs: dict | None = None,
           chunks: tuple[int, ...] | None = None) -> Any:  # fmt: skip
    """A small array written at once (coordinates, CSD)."""
    text = data.dtype == object
    arr = _empty_array(
        group, name, data.shape, chunks or data.shape or (1,), str if text else data.dtype, dims,
        attrs, compressed=not text,
    )  # fmt: skip
    if data.size:
        arr[...] = data
    return arr


def _empty_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                 dtype: Any, dims: list[str], attrs: dict | None = None, *,
                 compressed: bool = True) -> Any:  # fmt: skip
    """An array of the store (the one codec, every chunk written), to be filled by the caller."""
    return group.create_array(
        name=name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=compressor() if compressed else None,
        fill_value=None,
        attributes={DIMENSIONS: dims, **(attrs or {})},
        config={"write_empty_chunks": True},
    )


def _channel_coords(group: Any, channels: dict[str, np.ndarray]) -> None:
    _array(group, "channel", channels["channel"], ["channel"], {"long_name": "channel id"})
    units = {
        "probe_vertical_position": "um",
        "probe_horizontal_position": "um",
        "anterior_posterior_ccf_coordinate": "um",
        "dorsal_ventral_ccf_coordinate": "um",
        "left_right_ccf_coordinate": "um",
    }
    for name in CHANNEL_COORDS:
        attrs = {"units": units[name]} if name in units else {}
        _array(group, name, channels[name], ["channel"], attrs)


def _series_attrs(src: LfpSource) -> dict[str, Any]:
    """Attributes of both ``lfp`` arrays: every slice of them carries the invalid times."""
    return {
        "units": "V",
        "session_id": src.session_id,
        "probe_id": src.probe_id,
        "probe_name": src.probe_name,
        "coordinates": " ".join(CHANNEL_COORDS),
        "invalid_times": [
            {"start_time": i.start_time, "stop_time": i.stop_time, "tags": i.tags}
            for i in src.invalid_times
        ],
        "invalid_time_mask_tags": mask_tags(src.probe_name),
    }


def convert_lfp(
    lfp_nwb: str | os.PathLike,
    session_nwb: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source_sha256: str | None = None,
    time_chunk: int = TIME_CHUNK,
    channel_chunk: int = CHANNEL_CHUNK,
    overview_factor: int = OVERVIEW_FACTOR,
    block_chunks: int = BLOCK_CHUNKS,
) -> Path:
    """Write the Zarr store of one probe's LFP NWB at ``out`` (a ``.zarr`` directory).

    ``session_nwb`` is the probe's session file (probe name, ``/intervals/invalid_times``).
    The store is built in a temporary directory next to ``out`` and renamed into place; an
    existing store at ``out`` is replaced. Returns ``out``.
    """
    import zarr

    out = Path(out)
    if time_chunk < 1 or channel_chunk < 1 or block_chunks < 1 or overview_factor < 2:
        raise ValueError(
            "time_chunk, channel_chunk and block_chunks must be >= 1, overview_factor >= 2"
        )
    src = read_source(lfp_nwb, session_nwb)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        # 64 MiB chunk cache: a row of the NWB's HDF5 chunks across all channels stays cached, so
        # a chunk straddling two blocks is decompressed once
        with h5py.File(src.path, "r", rdcc_nbytes=64 << 20, rdcc_nslots=100_003) as f:
            series = f[_series_path(src.probe_id)]
            data, timestamps = series["data"], series["timestamps"]
            n, n_ch = data.shape
            if timestamps.shape != (n,):
                raise NwbError(
                    f"{src.path}: LFP timestamps have shape {timestamps.shape}, data {data.shape}"
                )
            root = zarr.open_group(store=str(tmp), mode="w", zarr_format=2)
            root.attrs.update(_root_attrs(src, source_sha256, n))
            chunks = (min(time_chunk, max(n, 1)), min(channel_chunk, max(n_ch, 1)))
            full = _empty_array(
                root, "lfp", (n, n_ch), chunks, data.dtype, ["time", "channel"], _series_attrs(src)
            )
            time = _empty_array(
                root, "time", (n,), (min(time_chunk * 64, max(n, 1)),), np.float64, ["time"],
                {"units": "s", "long_name": "master clock"},
            )  # fmt: skip
            _channel_coords(root, src.channels)
            over_group = root.create_group("overview")
            over_group.attrs.update(_overview_attrs(src, overview_factor))
            n_over = -(-n // overview_factor)
            over = _empty_array(
                over_group, "lfp", (n_over, n_ch), (min(time_chunk, max(n_over, 1)), chunks[1]),
                np.float32, ["time", "channel"], _series_attrs(src),
            )  # fmt: skip
            over_time = _empty_array(
                over_group, "time", (n_over,), (min(time_chunk * 64, max(n_over, 1)),),
                np.float64, ["time"], {"units": "s"},
            )  # fmt: skip
            _channel_coords(over_group, src.channels)
            decimator = Decimator(overview_factor, n)
            time_rows, over_rows = ChunkRows(time), ChunkRows(over)
            over_time_rows = ChunkRows(over_time)
            blocks = _read_ahead(src.path, data, timestamps, time_chunk * block_chunks)
            with closing(blocks):
                for a, x, t in blocks:
                    full[a : a + len(x)] = x  # whole time chunks: each is encoded once
                    time_rows.append(t)
                    # the overview's sample k is centred on full-rate sample factor * k
                    over_time_rows.append(t[(-a) % overview_factor :: overview_factor])
                    over_rows.append(decimator.push(x))
            time_rows.close()
            if over_rows.close() != n_over or over_time_rows.close() != n_over:
                raise AssertionError(
                    f"overview has {over_rows.rows} rows and {over_time_rows.rows} times, "
                    f"expected {n_over}"
                )
            _write_csd(f, root, src)
        zarr.consolidate_metadata(str(tmp))
        _fix_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        atomic.fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s -> %s (%d x %d samples)", src.path.name, out, n, n_ch)
    return out


def _read_ahead(
    path: Path, data: Any, timestamps: Any, block: int
) -> Iterator[tuple[int, Any, Any]]:
    """``(start, data rows, float64 timestamps)`` of consecutive blocks of ``block`` rows; the
    next block is read (h5py releases the GIL while HDF5 reads and decompresses) in a thread
    while the caller encodes and writes this one: this block and the next are held here (and
    the previous one until the caller lets it go). A block HDF5 cannot read or decompress is an
    :class:`NwbError` naming the rows."""
    n = data.shape[0]

    def read(a: int) -> tuple[int, Any, Any]:
        b = min(a + block, n)
        try:
            return a, data[a:b], timestamps[a:b].astype(np.float64, copy=False)
        except OSError as e:
            raise NwbError(
                f"{path}: LFP rows {a}-{b} do not decode (h5py: {e}); the file is corrupt: "
                "delete it and download it again"
            ) from e

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfp-read") as pool:
        pending = pool.submit(read, 0) if n else None
        while pending is not None:
            a, x, t = pending.result()
            pending = pool.submit(read, a + block) if a + block < n else None
            yield a, x, t


class ChunkRows:
    """Rows appended to a Zarr array from its first row on, written a whole time chunk at a time
    (a partial chunk written twice would be read back, decoded and encoded again); the rest on
    :meth:`close`. Holds less than one chunk plus the last appended rows."""

    def __init__(self, array: Any):
        self.array = array
        self.chunk = array.chunks[0]
        self.rows = 0  # rows written
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def append(self, rows: np.ndarray) -> None:
        if rows.base is not None:
            rows = rows.copy()  # a view held here would keep its whole base array alive
        self.pending.append(rows)
        self.n_pending += len(rows)
        if self.n_pending >= self.chunk:
            self._write(self.n_pending - self.n_pending % self.chunk)

    def close(self) -> int:
        """Write what is left; the number of rows written in all."""
        self._write(self.n_pending)
        return self.rows

    def _write(self, k: int) -> None:
        if k == 0:
            return
        rows = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.array[self.rows : self.rows + k] = rows[:k]
        self.rows += k
        self.pending = [rows[k:].copy()] if k < len(rows) else []
        self.n_pending = len(rows) - k


def _fix_permissions(root: Path) -> None:
    os.chmod(root, 0o755)  # mkdtemp makes 0700; a final store has ordinary permissions


def _root_attrs(src: LfpSource, source_sha256: str | None, n: int) -> dict[str, Any]:
    return {
        "title": f"LFP of probe {src.probe_id} ({src.probe_name}), session {src.session_id}",
        "session_id": src.session_id,
        "probe_id": src.probe_id,
        "probe_name": src.probe_name,
        "sampling_rate": src.sampling_rate,
        "n_samples": n,
        "source_file": src.path.name,
        "source_sha256": source_sha256,
        "session_file": src.session_path.name,
        "ecephys_pipeline_version": __version__,
    }


def _overview_attrs(src: LfpSource, factor: int) -> dict[str, Any]:
    taps = antialias_taps(factor)
    return {
        "title": f"LFP overview of probe {src.probe_id}: every {factor}th sample, anti-aliased",
        "decimation_factor": factor,
        "sampling_rate": src.sampling_rate / factor,
        "filter": (
            f"linear-phase FIR, {len(taps)} taps, windowed sinc cut at the new Nyquist "
            f"frequency, Kaiser window beta {KAISER_BETA}; sample k is centred on full-rate "
            f"sample {factor}k (time = its timestamp); ends extended with the edge sample"
        ),
    }


def _write_csd(f: h5py.File, root: Any, src: LfpSource) -> None:
    g = f.get("processing/current_source_density/ecephys_csd")
    if g is None:
        log.warning("%s: no /processing/current_source_density/ecephys_csd", src.path)
        return
    ts = g["current_source_density"]
    data = ts["data"][()]
    if data.ndim != 2 or ts["timestamps"].shape != (data.shape[0],):
        raise NwbError(f"{src.path}: CSD data {data.shape} does not match its timestamps")
    csd = root.create_group("csd")
    csd.attrs.update({"title": f"current source density of probe {src.probe_id}"})
    n_virtual = data.shape[1]
    unit = nwb._attr_str(ts["data"], "unit") or ""
    coords = "vertical_position horizontal_position"
    _array(csd, "csd", np.ascontiguousarray(data.T), ["virtual_channel_index", "time"],
           {"units": unit, "coordinates": coords})  # fmt: skip
    _array(csd, "time", ts["timestamps"][()], ["time"],
           {"units": "s", "long_name": "time relative to flash onset"})  # fmt: skip
    _array(csd, "virtual_channel_index", np.arange(n_virtual, dtype=np.int64),
           ["virtual_channel_index"])  # fmt: skip
    for name, key in (("vertical_position", "y"), ("horizontal_position", "x")):
        ds = g[f"virtual_electrode_{key}_positions"]
        _array(csd, name, ds[()], ["virtual_channel_index"],
               {"units": nwb._attr_str(ds, "unit") or "um"})  # fmt: skip


# --------------------------------------------------------------------------------------------
# reading the store


def open_store(store: str | os.PathLike, group: str | None = None) -> Any:
    """The store as an :class:`xarray.Dataset`: the full-rate root, ``"overview"`` or ``"csd"``
    (lazily indexed: nothing is read until values are used)."""
    import xarray as xr

    path = Path(store)
    if not (path / ".zgroup").is_file():
        raise FileNotFoundError(f"{path} is not an LFP store (no .zgroup); build it with lfp")
    return xr.open_zarr(path, group=group, consolidated=True, chunks=None)


def invalid_intervals(attrs: dict[str, Any]) -> list[tuple[float, float]]:
    """The (start, stop) intervals that mask this probe, chosen as AllenSDK chooses them: rows
    of invalid_times with any tag in ``invalid_time_mask_tags`` (``all_probes`` or the probe)."""
    tags = attrs["invalid_time_mask_tags"]
    return [
        (float(i["start_time"]), float(i["stop_time"]))
        for i in attrs["invalid_times"]
        if any(t in i["tags"] for t in tags)
    ]


def mask_invalid(lfp: Any) -> Any:
    """NaN wherever ``start <= time <= stop`` for an interval of :func:`invalid_intervals` (as
    AllenSDK's ``get_lfp(mask_invalid_intervals=True)``); works on any slice of an ``lfp``
    array, whose attributes hold the intervals."""
    t = lfp["time"].values
    valid = np.ones(t.shape, dtype=bool)
    for start, stop in invalid_intervals(lfp.attrs):
        valid &= ~((t >= start) & (t <= stop))
    if valid.all():
        return lfp
    import xarray as xr

    return lfp.where(xr.DataArray(valid, dims=["time"], coords={"time": lfp["time"]}))


def get_lfp(store: str | os.PathLike, mask_invalid_intervals: bool = True) -> Any:
    """The whole full-rate LFP as a DataArray ``(time, channel)``, like AllenSDK's
    ``session.get_lfp(probe_id, mask_invalid_intervals)`` (which also loads it all); for a
    slice, select on ``open_store(store).lfp`` first and :func:`mask_invalid` the result."""
    lfp = open_store(store)["lfp"]
    return mask_invalid(lfp) if mask_invalid_intervals else lfp


def get_current_source_density(store: str | os.PathLike) -> Any:
    """``csd(virtual_channel_index, time)`` with ``vertical_position``/``horizontal_position``,
    like AllenSDK's ``session.get_current_source_density(probe_id)``."""
    return open_store(store, group="csd")["csd"]
