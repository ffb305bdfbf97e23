"""The report stage: figures and tables of a run, made from its Parquet and its records.

Every figure function takes tables (pandas DataFrames, as read from the Parquet datasets, the
cached metadata tables or the run's JSON artifacts) and returns a matplotlib ``Figure``; nothing
here reads an NWB file. :func:`save` writes a figure with deterministic bytes (fixed SVG hash
salt, no date or software stamp), so a rerun on the same inputs writes the same files.

The unit-filter and quality-metric figures need every unit of a session, also those that fail
the filters; the Parquet holds only the units the spec keeps, so those two figures take the
session's units from the cached catalogue (``units.csv`` joined with ``channels.csv``, the
tables the selection counted) and mark the units that were extracted.

Figures use matplotlib's object API (``matplotlib.figure.Figure``), never ``pyplot``: no global
state, no backend choice, nothing opens a window.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import atomic, unit_filters

DPI = 100
HASH_SALT = "ecephys-pipeline"
#: figure name -> (file suffix, (width, height) in inches); pixels = inches * DPI (PNG),
#: points = inches * 72 (SVG width/height attributes)
SESSION_FIGURES: dict[str, tuple[str, tuple[float, float]]] = {
    "unit_filters": ("svg", (12.0, 6.0)),
    "quality_metrics": ("svg", (12.0, 6.0)),
    "waveforms": ("svg", (12.0, 8.0)),
    "raster_psth": ("png", (12.0, 8.0)),
    "channel_maps": ("svg", (12.0, 8.0)),
}
RUN_FIGURES: dict[str, tuple[str, tuple[float, float]]] = {
    "selection_counts": ("svg", (8.0, 4.0)),
}
#: the stimuli a raster is drawn around, in order of preference (short, repeated, every session)
RASTER_STIMULI = ("flashes", "drifting_gratings", "static_gratings", "drifting_gratings_contrast")
RASTER_UNITS = 6
FILTER_TITLES = {
    "quality": "quality",
    "amplitude_cutoff": "amplitude cutoff",
    "presence_ratio": "presence ratio",
    "isi_violations": "ISI violations",
    "valid": "valid data",
    "in_brain": "in the brain",
}
FAIL_COLOUR = "#d9d9d9"
NO_AREA = "(none)"

# ------------------------------------------------------------------------------ areas, colours

_GROUPS = (  # (test on the acronym, colormap): cortex, hippocampal formation, thalamus, midbrain
    (lambda a: a.startswith("VIS"), "Blues"),
    (lambda a: a.startswith(("CA", "DG", "SUB", "ProS", "POST", "PRE", "HPF", "ENT")), "Oranges"),
    (
        lambda a: (
            a
            in {
                "LGd",
                "LGv",
                "LP",
                "PO",
                "POL",
                "TH",
                "Eth",
                "SGN",
                "MGd",
                "MGv",
                "MGm",
                "LD",
                "RT",
            }
            or a.startswith(("IGL", "IntG", "LG", "MG", "VP", "VL", "PIL"))
        ),
        "Greens",
    ),
    (
        lambda a: a in {"APN", "MB", "NOT", "MRN", "PPT", "OP", "SCig", "SCiw", "SCop", "SCsg"},
        "Purples",
    ),
)


def area_group(acronym: str | None) -> int:
    if acronym is None or acronym == NO_AREA:
        return len(_GROUPS) + 1
    for i, (test, _cmap) in enumerate(_GROUPS):
        if test(acronym):
            return i
    return len(_GROUPS)


def area_colour(acronym: str | None) -> tuple[float, float, float, float]:
    """A stable colour per brain area: the group's colormap, a shade from the name's CRC32."""
    group = area_group(acronym)
    if group > len(_GROUPS):
        return (0.6, 0.6, 0.6, 1.0)
    shade = 0.45 + 0.45 * (zlib.crc32(str(acronym).encode()) % 1000) / 1000
    cmap = "Greys" if group == len(_GROUPS) else _GROUPS[group][1]
    return matplotlib.colormaps[cmap](shade)


def area_order(acronyms) -> list[str]:
    """Areas grouped (cortex, hippocampus, thalamus, midbrain, other, none), by name inside."""
    return sorted(set(acronyms), key=lambda a: (area_group(a), a))


def _areas(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), NO_AREA).astype(str)


# ------------------------------------------------------------------------------ tables


def catalogue_units(
    units: pd.DataFrame, channels: pd.DataFrame, probes: pd.DataFrame, session_id: int
) -> pd.DataFrame:
    """A session's units from the cached metadata tables (indexed by id, as
    ``metadata.read_table`` returns them), with probe, area and peak-channel position."""
    chan = channels[
        ["ecephys_probe_id", "ecephys_structure_acronym", "probe_vertical_position"]
    ].join(probes[["ecephys_session_id", "name"]], on="ecephys_probe_id")
    out = units.join(chan, on="ecephys_channel_id")
    out = out[out["ecephys_session_id"] == session_id].copy()
    out.index.name = "unit_id"
    return out.reset_index()


def filter_table(
    catalogue: pd.DataFrame, filters: Mapping[str, Any] | None, extracted: pd.DataFrame
) -> pd.DataFrame:
    """Per area: units, how many pass each filter alone and all of them (catalogue), and how
    many units the Parquet holds. Rows in :func:`area_order`."""
    masks = unit_filters.filter_masks(
        quality=catalogue["quality"],
        amplitude_cutoff=catalogue["amplitude_cutoff"],
        presence_ratio=catalogue["presence_ratio"],
        isi_violations=catalogue["isi_violations"],
        in_brain=catalogue["ecephys_structure_acronym"].notna(),
        filters=filters,
    )
    frame = pd.DataFrame(masks, index=catalogue.index)
    frame["all filters"] = np.logical_and.reduce(list(masks.values()))
    frame["area"] = _areas(catalogue["ecephys_structure_acronym"])
    table = frame.groupby("area").sum()
    table.insert(0, "units", frame.groupby("area").size())
    table["extracted"] = (
        _areas(extracted["ecephys_structure_acronym"]).value_counts().reindex(table.index)
    )
    table["extracted"] = table["extracted"].fillna(0).astype(int)
    return table.loc[area_order(table.index)]


# ------------------------------------------------------------------------------ figures


def _figure(name: str, table: Mapping[str, tuple[str, tuple[float, float]]]) -> Figure:
    return Figure(figsize=table[name][1], dpi=DPI, layout="constrained")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_axis_off()


def unit_filters_figure(table: pd.DataFrame, session_id: int) -> Figure:
    """One panel per filter (and all of them): per area, units passing (area colour) and failing
    (grey); the last panel marks the units the Parquet holds."""
    fig = _figure("unit_filters", SESSION_FIGURES)
    columns = [c for c in table.columns if c not in ("units", "extracted")]
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    y = np.arange(len(table))[::-1]
    colours = [area_colour(a) for a in table.index]
    for ax, column in zip(axes, columns, strict=True):
        passed = table[column].to_numpy()
        failed = table["units"].to_numpy() - passed
        ax.barh(y, passed, color=colours, edgecolor="none")
        ax.barh(y, failed, left=passed, color=FAIL_COLOUR, edgecolor="none")
        total_pass, total = int(passed.sum()), int(table["units"].sum())
        ax.set_title(
            f"{FILTER_TITLES.get(column, column)}\n{total_pass} of {total} pass", fontsize=9
        )
        ax.set_xlabel("units")
        ax.tick_params(labelsize=8)
        if column == "all filters":
            ax.scatter(table["extracted"], y, marker="|", s=120, color="black", zorder=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yticks(y, table.index)
    fig.legend(
        handles=[
            Patch(color="0.35", label="pass (bar in the area's colour)"),
            Patch(color=FAIL_COLOUR, label="fail"),
            Line2D([], [], marker="|", ls="", ms=10, color="black", label="units in the Parquet"),
        ],
        fontsize=8,
        loc="outside lower center",
        ncols=3,
    )
    fig.suptitle(f"session {session_id}: units per area, passing and failing each unit filter")
    return fig


QC_PANELS = (  # column, title, log x, filter key whose threshold is drawn
    ("firing_rate", "firing rate (Hz)", True, None),
    ("snr", "SNR", False, None),
    ("amplitude_cutoff", "amplitude cutoff", False, "amplitude_cutoff_maximum"),
    ("presence_ratio", "presence ratio", False, "presence_ratio_minimum"),
    ("isi_violations", "ISI violations", False, "isi_violations_maximum"),
    ("d_prime", "d'", False, None),
)


def quality_metrics_figure(
    catalogue: pd.DataFrame,
    extracted: pd.DataFrame,
    filters: Mapping[str, Any] | None,
    session_id: int,
) -> Figure:
    """Histograms of firing rate and the quality metrics: every unit of the session (grey), the
    extracted ones (blue), the spec's thresholds as dashed red lines."""
    f = unit_filters.normalise_filters(filters)
    fig = _figure("quality_metrics", SESSION_FIGURES)
    axes = fig.subplots(2, 3).ravel()
    for ax, (column, title, log, key) in zip(axes, QC_PANELS, strict=True):
        every = pd.to_numeric(catalogue.get(column), errors="coerce").dropna().to_numpy()
        kept = pd.to_numeric(extracted.get(column), errors="coerce").dropna().to_numpy()
        if log:
            every, kept = every[every > 0], kept[kept > 0]
        if every.size == 0:
            _empty(ax, f"no {title}")
            continue
        lo, hi = np.percentile(every, [0, 99]) if not log else (every.min(), every.max())
        hi = max(hi, lo + 1e-9)
        bins = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi, 31)
        ax.hist(np.clip(every, lo, hi), bins=bins, color="0.75", label=f"all units ({every.size})")
        ax.hist(
            np.clip(kept, lo, hi),
            bins=bins,
            color="tab:blue",
            alpha=0.8,
            label=f"in the Parquet ({kept.size})",
        )
        if log:
            ax.set_xscale("log")
        if key is not None and f[key] is not None:
            ax.axvline(f[key], color="tab:red", ls="--", lw=1.5, label=f"threshold {f[key]:g}")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("units")
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"session {session_id}: firing rate and quality metrics (catalogue units.csv)")
    return fig


def waveforms_figure(units: pd.DataFrame, waveforms: pd.DataFrame, session_id: int) -> Figure:
    """Peak-channel mean waveforms, one panel per area: every unit (thin) and their mean."""
    fig = _figure("waveforms", SESSION_FIGURES)
    peak = waveforms[waveforms["is_peak_channel"]].merge(
        units[["unit_id", "ecephys_structure_acronym"]], on="unit_id", how="left"
    )
    if peak.empty:
        _empty(fig.subplots(), "no waveforms")
        return fig
    peak["area"] = _areas(peak["ecephys_structure_acronym"])
    areas = area_order(peak["area"])
    ncols = min(6, len(areas))
    nrows = math.ceil(len(areas) / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, area in zip(axes, areas, strict=False):
        rows = peak[peak["area"] == area]
        block = np.vstack([np.asarray(w, dtype=float) for w in rows["waveform"]])
        t_ms = np.arange(block.shape[1]) / float(rows["sample_rate"].iloc[0]) * 1e3
        colour = area_colour(area)
        for trace in block:
            ax.plot(t_ms, trace, color=colour, lw=0.6, alpha=0.6)
        ax.plot(t_ms, block.mean(axis=0), color="black", lw=1.4)
        ax.set_title(f"{area} ({len(block)} unit{'s' * (len(block) != 1)})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(areas) :]:
        ax.set_axis_off()
    fig.supxlabel("time (ms)")
    fig.supylabel("peak-channel mean waveform (µV)")
    fig.suptitle(f"session {session_id}: peak-channel mean waveforms by area")
    return fig


def raster_stimulus(stimulus: pd.DataFrame) -> str | None:
    """The stimulus the raster is drawn around: the first of RASTER_STIMULI the session shows,
    else its most frequent one other than spontaneous."""
    names = stimulus["stimulus_name"].dropna()
    for name in RASTER_STIMULI:
        if (names == name).any():
            return name
    counts = names[names != "spontaneous"].value_counts()
    return None if counts.empty else str(counts.index[0])


def raster_units(units: pd.DataFrame, n: int = RASTER_UNITS) -> pd.DataFrame:
    """A few good units: those passing the default filters, highest SNR first (ties by id)."""
    good = units[units["passes_default_filters"].fillna(False).astype(bool)]
    return good.sort_values(["snr", "unit_id"], ascending=[False, True]).head(n)


def raster_psth_figure(
    units: pd.DataFrame, spikes: pd.DataFrame, stimulus: pd.DataFrame, session_id: int
) -> Figure:
    """Raster (one row per presentation) and PSTH (20 ms bins) of a few good units around the
    onsets of one stimulus; the stimulus' median duration shaded."""
    fig = _figure("raster_psth", SESSION_FIGURES)
    name = raster_stimulus(stimulus)
    chosen = raster_units(units)
    if name is None or chosen.empty:
        _empty(fig.subplots(), "no stimulus or no unit passing the filters")
        return fig
    shown = stimulus[stimulus["stimulus_name"] == name].sort_values("start_time")
    onsets = shown["start_time"].to_numpy(dtype=float)
    duration = float(np.nanmedian(shown["stop_time"] - shown["start_time"]))
    pre, post = 0.5, duration + 0.5
    bins = np.arange(-pre, post + 1e-9, 0.02)
    ncols = 3
    nrows = math.ceil(len(chosen) / ncols)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[2, 1] * nrows)
    for i, unit in enumerate(chosen.itertuples(index=False)):
        r, c = 2 * (i // ncols), i % ncols
        times = np.sort(spikes.loc[spikes["unit_id"] == unit.unit_id, "spike_time"].to_numpy())
        lo = np.searchsorted(times, onsets - pre)
        hi = np.searchsorted(times, onsets + post)
        rel = [times[a:b] - t for a, b, t in zip(lo, hi, onsets, strict=True)]
        ax_r = fig.add_subplot(grid[r, c])
        ax_p = fig.add_subplot(grid[r + 1, c], sharex=ax_r)
        colour = area_colour(unit.ecephys_structure_acronym)
        ax_r.eventplot(rel, colors=[colour], linelengths=0.8, linewidths=1.0)
        ax_r.axvspan(0, duration, color="0.9", zorder=0)
        ax_r.set_ylim(-0.5, len(onsets) - 0.5)
        ax_r.set_title(
            f"unit {unit.unit_id} ({unit.ecephys_structure_acronym}), SNR {unit.snr:.1f}",
            fontsize=9,
        )
        ax_r.set_ylabel("presentation", fontsize=8)
        ax_r.tick_params(labelbottom=False, labelsize=7)
        counts = np.histogram(np.concatenate(rel) if rel else [], bins=bins)[0]
        rate = counts / max(len(onsets), 1) / 0.02
        ax_p.axvspan(0, duration, color="0.9", zorder=0)
        ax_p.stairs(rate, bins, color=colour, fill=True)
        ax_p.set_ylabel("Hz", fontsize=8)
        ax_p.set_xlabel("time from onset (s)", fontsize=8)
        ax_p.tick_params(labelsize=7)
    fig.suptitle(
        f"session {session_id}: spikes around {len(onsets)} '{name}' onsets "
        f"(shaded: median duration {duration:.2f} s)"
    )
    return fig


def channel_maps_figure(
    channels: pd.DataFrame, probes: pd.DataFrame, units: pd.DataFrame, session_id: int
) -> Figure:
    """Each probe's channels (catalogue positions) coloured by area, area names along the
    shank, and the peak channels of the extracted units (black) beside them."""
    fig = _figure("channel_maps", SESSION_FIGURES)
    session_probes = probes[probes["ecephys_session_id"] == session_id].sort_values("name")
    if session_probes.empty:
        _empty(fig.subplots(), "no probes")
        return fig
    axes = fig.subplots(1, len(session_probes), sharey=True, squeeze=False)[0]
    for ax, (probe_id, probe) in zip(axes, session_probes.iterrows(), strict=True):
        chan = channels[channels["ecephys_probe_id"] == probe_id].sort_values(
            "probe_vertical_position"
        )
        areas = _areas(chan["ecephys_structure_acronym"])
        ax.scatter(
            chan["probe_horizontal_position"],
            chan["probe_vertical_position"],
            c=[area_colour(a) for a in areas],
            s=6,
            marker="s",
            linewidths=0,
        )
        # one label per run of consecutive channels in the same area
        runs = (areas != areas.shift()).cumsum()
        for _run, group in chan.groupby(runs.to_numpy(), sort=True):
            area = areas.loc[group.index[0]]
            mid = group["probe_vertical_position"].median()
            ax.text(75, mid, area, fontsize=7, va="center", color=area_colour(area))
        on_probe = units[units["probe_id"] == probe_id]
        ax.scatter(
            on_probe["probe_horizontal_position"],
            on_probe["probe_vertical_position"],
            s=24,
            facecolors="none",
            edgecolors="black",
            linewidths=0.7,
        )
        ax.set_xlim(-10, 130)
        ax.set_xticks([0, 60])
        ax.set_title(f"{probe['name']}\n{len(on_probe)} units", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("position along the shank from the tip (µm)")
    fig.supxlabel("across the shank (µm); o = peak channels of the units in the Parquet")
    fig.suptitle(f"session {session_id}: channel maps coloured by brain area")
    return fig


def selection_counts_figure(counts: Sequence[Mapping[str, Any]]) -> Figure:
    """Sessions left after each step of the selection (selection.json ``counts``)."""
    fig = _figure("selection_counts", RUN_FIGURES)
    ax = fig.subplots()
    names = [str(c["filter"]) for c in counts]
    left = [int(c["sessions_left"]) for c in counts]
    y = np.arange(len(names))[::-1]
    ax.barh(y, left, color="tab:blue")
    for yi, n in zip(y, left, strict=True):
        ax.text(n, yi, f" {n}", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlabel("sessions left")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(left + [1]) * 1.15)
    ax.set_title("selection: sessions left after each filter of the spec")
    return fig


# ------------------------------------------------------------------------------ HTML tables

_STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:12px}"
    "table{border-collapse:collapse;width:100%}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#eee}td.n{text-align:right;white-space:nowrap}"
    "code{font-size:12px;word-break:break-all}"
)


def _html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h2>{html.escape(title)}</h2>\n{body}</body></html>\n"
    )


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric=()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = [f"<table><tr>{head}</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="n">{v}</td>' if i in numeric else f"<td>{v}</td>"
            for i, v in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>\n")
    return "\n".join(lines)


def verification(config: Mapping[str, Any]) -> str:
    """What a file's record certifies under this config (a record is written only then)."""
    checks = ["size", "sha256"]
    if config.get("download", {}).get("verify_hdf5", True):
        checks.append("opens as HDF5")
    if config.get("lock_file"):
        checks.append(f"matches {config['lock_file']}")
    return ", ".join(checks)


def files_html(lock: Mapping[str, Any], records: Sequence[Mapping[str, Any]], config) -> str:
    """Every input file of the run: size, sha256, source URL, what was verified, and when the
    file was put in place (its record's ``mtime_ns``, UTC)."""
    by_name = {}
    for record in records:
        for rel in lock["files"]:
            if str(record.get("path", "")).endswith(rel):
                by_name[rel] = record
    rows = []
    checks = html.escape(verification(config))
    for rel, entry in sorted(lock["files"].items()):
        record = by_name.get(rel, {})
        when = record.get("mtime_ns")
        stamp = (
            datetime.datetime.fromtimestamp(when / 1e9, tz=datetime.UTC).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            )
            if when
            else ""
        )
        rows.append(
            [
                f"<code>{html.escape(rel)}</code>",
                f"{entry['size']:,}",
                f"<code>{html.escape(entry['sha256'])}</code>",
                f"<code>{html.escape(str(entry.get('url', '')))}</code>",
                checks,
                stamp,
            ]
        )
    total = sum(int(e["size"]) for e in lock["files"].values())
    body = (
        f"<p>{len(rows)} files, {total:,} bytes ({total / 1e9:.2f} GB), every one verified "
        f"before it was accepted (<code>results/ecephys.lock.json</code>).</p>\n"
        + _html_table(
            ["file", "bytes", "sha256", "source", "verified", "in place since"], rows, numeric={1}
        )
    )
    return _html_page("Input files", body)


def run_html(manifest: Mapping[str, Any], selection: Mapping[str, Any], config, spec) -> str:
    """What the run was: versions, hashes, config, spec, the selection's per-filter counts."""
    sessions = selection.get("sessions", [])
    facts = [
        ("pipeline version", manifest.get("pipeline_version", "")),
        ("config sha256", manifest.get("config_sha256", "")),
        ("spec sha256", manifest.get("spec_sha256", "")),
        ("selection sha256", manifest.get("selection_sha256", "")),
        ("sessions", ", ".join(str(s["session_id"]) for s in sessions)),
        ("input files", len(manifest.get("inputs", {}))),
        ("output files", len(manifest.get("outputs", {}))),
    ]
    body = _html_table(
        ["", ""], [(html.escape(k), f"<code>{html.escape(str(v))}</code>") for k, v in facts]
    )
    body += "<h3>Selection: sessions left after each filter</h3>\n" + _html_table(
        ["filter", "sessions left"],
        [(html.escape(str(c["filter"])), c["sessions_left"]) for c in selection.get("counts", [])],
        numeric={1},
    )
    body += "<h3>Software</h3>\n" + _html_table(
        ["package", "version"],
        [
            (html.escape(k), html.escape(str(v)))
            for k, v in sorted(manifest.get("software", {}).items())
        ],
    )
    for title, obj in (("Config", config), ("Selection spec", spec)):
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        body += f"<h3>{title}</h3>\n<pre>{html.escape(text)}</pre>\n"
    return _html_page("The run", body)


# ------------------------------------------------------------------------------ writing


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as SVG or PNG (by suffix), atomically, with deterministic bytes."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with (
        matplotlib.rc_context({"svg.hashsalt": HASH_SALT, "svg.fonttype": "path"}),
        atomic.output_path(path) as tmp,
    ):
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    return path


# ------------------------------------------------------------------------------ one session


def session_figures(
    *,
    session_id: int,
    units: pd.DataFrame,
    waveforms: pd.DataFrame,
    spikes: pd.DataFrame,
    stimulus: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    filters: Mapping[str, Any] | None,
) -> dict[str, Figure]:
    """Every figure of one session, by name (the keys of :data:`SESSION_FIGURES`).

    ``units``, ``waveforms``, ``spikes``, ``stimulus``: the session's Parquet partitions;
    ``tables``: the cached metadata tables (``metadata.read_table``), keyed by table name.
    """
    catalogue = catalogue_units(tables["units"], tables["channels"], tables["probes"], session_id)
    return {
        "unit_filters": unit_filters_figure(filter_table(catalogue, filters, units), session_id),
        "quality_metrics": quality_metrics_figure(catalogue, units, filters, session_id),
        "waveforms": waveforms_figure(units, waveforms, session_id),
        "raster_psth": raster_psth_figure(units, spikes, stimulus, session_id),
        "channel_maps": channel_maps_figure(
            tables["channels"], tables["probes"], units, session_id
        ),
    }


def read_session(
    *, units: Path, waveforms: Path, spikes: Path, stimulus: Path
) -> dict[str, pd.DataFrame]:
    """A session's Parquet partitions; spikes only of the units a raster shows."""
    unit_table = pd.read_parquet(units)
    shown = raster_units(unit_table)["unit_id"].tolist()
    return {
        "units": unit_table,
        "waveforms": pd.read_parquet(waveforms, filters=[("is_peak_channel", "==", True)]),
        "spikes": pd.read_parquet(
            spikes, columns=["unit_id", "spike_time"], filters=[("unit_id", "in", shown or [-1])]
        ),
        "stimulus": pd.read_parquet(stimulus, columns=["stimulus_name", "start_time", "stop_time"]),
    }
