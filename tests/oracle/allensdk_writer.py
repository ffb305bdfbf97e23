"""Write a session NWB and its LFP NWB files with AllenSDK 2.16.2's own ecephys writer; run BY
the AllenSDK interpreter, never imported by pytest or by the product.

    <allensdk python> tests/oracle/allensdk_writer.py OUT_DIR

Builds, from a fixed seed, the intermediate products AllenSDK's writer
(``allensdk.brain_observatory.ecephys.write_nwb``) reads — a stimulus table CSV, per probe the
Kilosort ``.npy`` files (spike times, clusters, amplitudes, templates, inverse whitening matrix),
mean waveforms, the LFP (raw int16 file, timestamps, channel list), a CSD ``.h5``, the running
speed ``.h5``, an optotagging table, invalid epochs and session metadata — writes the input
JSON its ``VCNInputSchema`` validates, and runs the module's ``main()`` on it. Output:

    OUT_DIR/inputs/...                     the generated inputs and input.json
    OUT_DIR/session_<sid>.nwb              the session file
    OUT_DIR/probe_<pid>_lfp.nwb            one per probe with LFP (probeB has none)
    OUT_DIR/truth.json                     what was put in (ids, counts) for the tests

The session is small on purpose: 2 probes × 384 channels, 21 units, 60 s, spontaneous, flashes
(bin windows reaching into the next flash), drifting gratings (with blank sweeps), natural
scenes (blank frame -1), static gratings (a phase column mixing strings and NaN), presentations
without a spike, a unit whose spikes fall in no presentation, a noise unit, units peaking on an
invalid and an out-of-brain channel, spikes before time 0, float32 mean waveforms, 8 LFP
channels at 1250 Hz on probeA (CSD too; probeB has no LFP), optotagging pulses and two
invalid epochs.

AllenSDK 2.16.2's VCN writer cannot run as released outside the Allen Institute; three of its
calls are replaced here, each with the smallest stand-in (nothing else is touched):

1. ``Presentations._add_is_image_novel`` asks LIMS (the Institute's database) which images the
   mouse saw before — a Visual Behavior column; a VCN table has no ``image_name``. No-op here.
2. ``Probe.to_nwb`` (called for the session file) builds a throw-away LFP file object from
   ``BehaviorEcephysMetadata.from_nwb(session file)``, which needs Visual Behavior metadata a
   VCN file lacks; the session file only needs its ``_add_probe_to_nwb`` part, which is what
   it returns, so the stand-in calls just that.
3. ``write_probe_lfp_file`` reads ``BehaviorEcephysMetadata.from_json(session_metadata)``
   (Visual Behavior keys). The stand-in writes the VCN metadata with the module's own
   ``add_metadata_to_nwbfile``, as the 2020 writer did for the released LFP files.

Everything else — the schema, the stimulus table, probes, channels, units, ragged columns,
running speed, invalid times, the LFP and CSD writing — is AllenSDK's code as installed.
"""

import json
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SEED = 20260
SESSION_ID = 790000001
START = "2019-03-07T10:11:12-08:00"
DURATION_S = 60.0
N_CHANNELS = 384
N_SAMPLES_WF = 82
LFP_RATE = 2500.0  # the writer divides by temporal_subsampling_factor (2): 1250 Hz
LFP_CHANNELS = np.arange(0, N_CHANNELS, 48)  # 8 channels (probe channel numbers)
PROBES = [
    {"id": 790000101, "name": "probeA", "lfp": True, "n_units": 11},
    {"id": 790000102, "name": "probeB", "lfp": False, "n_units": 10},
]
STRUCTURES = ["VISp", "VISp", "CA1", "LP", "APN", "grey"]


def channel_rows(probe: dict, k: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for ch in range(N_CHANNELS):
        in_brain = ch < 320
        ccf = [float(rng.uniform(6000, 9000)) for _ in range(3)] if in_brain and k == 0 else None
        rows.append(
            {
                # channel ids are not in channel order (a reader must look them up)
                "id": 850000000 + k * 1000 + (ch * 149) % N_CHANNELS,
                "probe_id": probe["id"],
                "valid_data": ch not in (191, 37),  # a reference channel and a bad one
                "probe_channel_number": ch,
                "probe_vertical_position": 20 * (ch // 2) + 20,
                "probe_horizontal_position": [43, 11, 59, 27][ch % 4],
                "structure_id": (385 + ch // 64) if in_brain else None,
                # outside the brain: pynwb 2.8 refuses None and "" as an electrode location
                # (the released files hold ""); "None" is what both readers take for missing
                "structure_acronym": STRUCTURES[ch // 64] if in_brain else "None",
                "anterior_posterior_ccf_coordinate": ccf[0] if ccf else None,
                "dorsal_ventral_ccf_coordinate": ccf[1] if ccf else None,
                "left_right_ccf_coordinate": ccf[2] if ccf else None,
            }
        )
    return rows


def stimulus_table() -> pd.DataFrame:
    """Presentations in time order, as the Allen stimulus CSV names them (Start/End)."""
    rows = [{"stimulus_name": "spontaneous", "Start": 0.5, "End": 5.0}]
    t = 5.0
    for i in range(12):  # 0.25 s flashes every 0.3 s: 10 ms bins to 0.35 s reach the next one
        rows.append({"stimulus_name": "flashes", "Start": t, "End": t + 0.25,
                     "color": [-1.0, 1.0][i % 2], "stimulus_block": 1.0, "stimulus_index": 1.0,
                     "size": "[300.0, 300.0]", "contrast": 0.8})  # fmt: skip
        t = round(t + 0.3, 6)
    t = 10.0
    for i in range(10):  # 2 s gratings, 1 s apart; two blank sweeps (no orientation)
        blank = i in (3, 7)
        rows.append({"stimulus_name": "drifting_gratings", "Start": t, "End": t + 2.0,
                     "orientation": np.nan if blank else [0.0, 90.0][i % 2],
                     "temporal_frequency": np.nan if blank else [1.0, 2.0][(i // 2) % 2],
                     "spatial_frequency": np.nan if blank else 0.04, "contrast": 0.8,
                     "stimulus_block": 2.0, "stimulus_index": 2.0,
                     "size": "[250.0, 250.0]"})  # fmt: skip
        t += 3.0
    t = 39.2
    for i in range(7):  # back to back 0.25 s images; frame -1 is the blank
        rows.append({"stimulus_name": "natural_scenes", "Start": t, "End": t + 0.25,
                     "frame": [5.0, -1.0, 17.0, 5.0, 117.0, -1.0, 17.0][i],
                     "stimulus_block": 2.5, "stimulus_index": 4.0})  # fmt: skip
        t = round(t + 0.25, 6)
    t = 41.0
    for i in range(24):  # back to back 0.25 s static gratings; phase as text, NaN for blanks
        blank = i % 8 == 5
        rows.append({"stimulus_name": "static_gratings", "Start": t, "End": t + 0.25,
                     "orientation": np.nan if blank else [0.0, 60.0, 120.0][i % 3],
                     "spatial_frequency": np.nan if blank else [0.02, 0.08][i % 2],
                     "phase": np.nan if blank else ["[0.0, 0.0]", "[0.5, 0.5]"][(i // 3) % 2],
                     "contrast": 0.8, "stimulus_block": 3.0, "stimulus_index": 3.0,
                     "size": "[250.0, 250.0]", "color": "[1.0, 1.0, 1.0]"})  # fmt: skip
        t = round(t + 0.25, 6)
    rows.append({"stimulus_name": "spontaneous", "Start": 48.0, "End": 58.0})
    df = pd.DataFrame(rows)
    df["End"] = df["End"].round(6)
    # The triplets make ``color`` a text column (flashes: "-1.0", "1.0"). With only numbers it is
    # a float column, and AllenSDK 2.16.2 cannot read its own writer's file (its reader matches
    # ``color`` against an RGB pattern: "Cannot mask with non-boolean array containing NA").
    # columns the writer drops (they are in every real table)
    df["colorSpace"] = "rgb"
    df["depth"] = 0.0
    return df


def spikes_for(n_units: int, stim: pd.DataFrame, rng: np.random.Generator):
    """Per unit spike times (the last unit fires only outside every presentation)."""
    out = []
    quiet = stim[stim["stimulus_name"] == "flashes"].iloc[[3, 8]]  # no spike in these two
    for u in range(n_units):
        if u == n_units - 1:
            t = rng.uniform(58.5, 59.9, 40)  # after the last presentation
        else:
            rate = rng.uniform(2, 40)
            t = rng.uniform(0, DURATION_S, rng.poisson(rate * DURATION_S))
            # evoked spikes in the gratings and flashes
            for _, p in stim[stim["stimulus_name"] != "spontaneous"].iterrows():
                t = np.concatenate([t, rng.uniform(p["Start"], p["End"], rng.poisson(3))])
        for _, p in quiet.iterrows():
            t = t[(t < p["Start"] - 0.1) | (t >= p["End"] + 0.36)]
        out.append(np.sort(t))
    # Kilosort times before the session clock's zero (the writer drops t < 0)
    out[0] = np.concatenate([out[0], [-0.25, -0.125]])
    return out


def main(out: Path) -> int:
    rng = np.random.default_rng(SEED)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    stim = stimulus_table()
    stim_path = inputs / "stimulus_table.csv"
    stim.to_csv(stim_path, index=False)
    truth = {"session_id": SESSION_ID, "probes": {}, "units": {}, "n_presentations": len(stim)}

    probes = []
    for k, p in enumerate(PROBES):
        d = inputs / p["name"]
        d.mkdir(exist_ok=True)
        channels = channel_rows(p, k, rng)
        n = p["n_units"]
        cluster_ids = np.arange(n) + 2 * (np.arange(n) >= 4)  # clusters 4, 5 are not units
        n_clusters = int(cluster_ids.max()) + 1
        spike_lists = spikes_for(n, stim, rng)
        times = np.concatenate(spike_lists)
        clusters = np.concatenate(
            [np.full(len(s), c) for s, c in zip(spike_lists, cluster_ids, strict=True)]
        )
        # spikes of the two clusters that are not units (the writer must drop them)
        extra = rng.uniform(0, DURATION_S, 50)
        times = np.concatenate([times, extra])
        clusters = np.concatenate([clusters, np.full(50, 4)])
        order = rng.permutation(times.size)  # Kilosort output is not grouped by unit
        times, clusters = times[order], clusters[order]
        n_templates = n_clusters
        templates = rng.normal(0, 1, (n_templates, N_SAMPLES_WF, N_CHANNELS)).astype(np.float32)
        spike_templates = clusters.copy()
        amplitudes = rng.uniform(5, 40, times.size)
        whitening = np.eye(N_CHANNELS) * rng.uniform(0.5, 2.0, N_CHANNELS)
        # float32, as ecephys_spike_sorting writes them (the synthetic files hold float64)
        waveforms = rng.normal(0, 10, (n_clusters, N_CHANNELS, N_SAMPLES_WF)).astype(np.float32)
        files = {
            "spike_times_path": ("spike_times.npy", times[:, None]),  # Kilosort's (n, 1)
            "spike_clusters_file": ("spike_clusters.npy", clusters.astype(np.int32)),
            "spike_amplitudes_path": ("amplitudes.npy", amplitudes[:, None]),
            "spike_templates_path": ("spike_templates.npy", spike_templates.astype(np.uint32)),
            "templates_path": ("templates.npy", templates),
            "inverse_whitening_matrix_path": ("whitening_mat_inv.npy", whitening),
            "mean_waveforms_path": ("mean_waveforms.npy", waveforms),
        }
        paths = {}
        for key, (name, arr) in files.items():
            np.save(d / name, arr)
            paths[key] = str(d / name)
        units = []
        id_order = rng.permutation(n)
        for u, c in enumerate(cluster_ids):
            # unit 3 peaks on an invalid channel, unit 6 outside the brain (both fail AllenSDK's
            # default filters whatever their metrics)
            peak = {3: 37, 6: 350}.get(u, int(rng.integers(40, 320)))
            uid = 950000000 + k * 1000 + int(id_order[u]) * 7  # ids not in record order
            nan_metrics = u == 2  # a unit without principal-component metrics
            units.append({
                "id": uid, "peak_channel_id": channels[peak]["id"], "local_index": u,
                "cluster_id": int(c), "quality": "noise" if u == 5 else "good",
                "firing_rate": float(len(spike_lists[u]) / DURATION_S),
                "snr": float(rng.uniform(1, 5)),
                "isi_violations": float(rng.uniform(0, 0.8)),
                "presence_ratio": float(rng.choice([0.9, 0.96, 0.99])),
                "amplitude_cutoff": float(rng.uniform(0, 0.2)),
                **{m: None if nan_metrics else float(rng.uniform(0, 1)) for m in (
                    "isolation_distance", "l_ratio", "d_prime", "nn_hit_rate", "nn_miss_rate",
                    "silhouette_score")},
                **{m: float(rng.uniform(0, 1)) for m in (
                    "max_drift", "cumulative_drift", "waveform_duration", "waveform_halfwidth",
                    "PT_ratio", "repolarization_slope", "recovery_slope", "amplitude", "spread")},
                "velocity_above": None, "velocity_below": float(rng.uniform(-1, 1)),
            })  # fmt: skip
            kept = int((spike_lists[u] >= 0).sum())
            truth["units"][str(uid)] = {"spikes": kept, "probe": p["id"]}
        probe = {
            "id": p["id"], "name": p["name"], **paths, "channels": channels, "units": units,
            "sampling_rate": 29999.9512, "lfp_sampling_rate": LFP_RATE,
            "temporal_subsampling_factor": 2.0, "lfp": None, "csd_path": None,
        }  # fmt: skip
        truth["probes"][str(p["id"])] = {"name": p["name"], "lfp": p["lfp"]}
        if p["lfp"]:
            n_t = int(DURATION_S * LFP_RATE / 2)
            lfp_raw = rng.normal(0, 200, (n_t, LFP_CHANNELS.size)).astype(np.int16)
            lfp_raw.tofile(d / "lfp_band.dat")
            lfp_times = 0.7 + np.arange(n_t) / (LFP_RATE / 2)
            np.save(d / "lfp_timestamps.npy", lfp_times)
            np.save(d / "lfp_channels.npy", LFP_CHANNELS)
            with h5py.File(d / "csd.h5", "w") as f:
                n_virtual, n_csd = 48, 100
                f["current_source_density"] = rng.normal(0, 1e3, (n_virtual, n_csd))
                f["timestamps"] = np.linspace(-0.1, 0.2496, n_csd)
                f["csd_locations"] = np.stack(
                    [np.full(n_virtual, 35.0), np.arange(n_virtual) * 80.0 + 20.0], axis=1
                )
            out_lfp = out / f"probe_{p['id']}_lfp.nwb"
            probe["lfp"] = {
                "input_data_path": str(d / "lfp_band.dat"),
                "input_timestamps_path": str(d / "lfp_timestamps.npy"),
                "input_channels_path": str(d / "lfp_channels.npy"),
                "output_path": str(out_lfp),
            }
            probe["csd_path"] = str(d / "csd.h5")
        probes.append(probe)

    # running speed: the writer's running_speed and raw_data frames (60 Hz)
    start = np.arange(0.2, DURATION_S - 0.2, 1 / 60)
    running = pd.DataFrame({"start_time": start, "end_time": start + 1 / 60,
                            "velocity": rng.normal(10, 4, start.size),
                            "net_rotation": rng.normal(0, 0.05, start.size)})  # fmt: skip
    raw = pd.DataFrame({"frame_time": start, "dx": rng.normal(0, 1, start.size),
                        "vsig": rng.uniform(0, 5, start.size),
                        "vin": np.full(start.size, 5.0)})  # fmt: skip
    running_path = inputs / "running_speed.h5"
    running.to_hdf(running_path, key="running_speed")
    raw.to_hdf(running_path, key="raw_data")
    # optotagging (Cre sessions): pulses after the last presentation
    opto_start = 58.6 + 0.2 * np.arange(5)
    opto = pd.DataFrame({"start_time": opto_start, "stop_time": opto_start + 0.01,
                         "condition": "a single square pulse", "level": [0.5, 1.0, 1.5, 0.5, 1.0],
                         "stimulus_name": "pulse", "duration": 0.01})  # fmt: skip
    opto_path = inputs / "optotagging.csv"
    opto.to_csv(opto_path, index=False)
    sync = inputs / "session.sync"  # required and must be readable; read only for eye tracking
    sync.write_bytes(b"")

    session_nwb = out / f"session_{SESSION_ID}.nwb"
    spec = {
        "output_path": str(session_nwb),
        "session_id": SESSION_ID,
        "session_start_time": START,
        "stimulus_table_path": str(stim_path),
        "invalid_epochs": [
            {
                "id": PROBES[0]["id"],
                "type": "EcephysProbe",
                "label": "probeA",
                "start_time": 20.0,
                "end_time": 21.5,
            },
            {
                "id": SESSION_ID,
                "type": "EcephysSession",
                "label": "all_probes",
                "start_time": 33.25,
                "end_time": 33.75,
            },
        ],  # fmt: skip
        "probes": probes,
        "running_speed_path": str(running_path),
        "optotagging_table_path": str(opto_path),
        "session_sync_path": str(sync),
        "pool_size": 1,
        "session_metadata": {
            "specimen_name": "Vip-IRES-Cre;Ai32-421338",
            "age_in_days": 112.0,
            "full_genotype": "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
            "strain": "C57BL/6J",
            "sex": "M",
            "stimulus_name": "brain_observatory_1.1",
            "species": "Mus musculus",
            "donor_id": 421338,
        },  # fmt: skip
        "log_level": "WARNING",
    }
    input_json = inputs / "input.json"
    input_json.write_text(json.dumps(spec, indent=1))
    run_writer(input_json, out / "output.json")
    truth["invalid_epochs"] = spec["invalid_epochs"]
    truth["session_nwb"] = str(session_nwb)
    truth["lfp_nwb"] = {str(p["id"]): p["lfp"]["output_path"] for p in probes if p["lfp"]}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return 0


def run_writer(input_json: Path, output_json: Path) -> None:
    """AllenSDK's write_nwb main() on the input JSON, with the three stand-ins of the docstring."""
    from allensdk.brain_observatory.behavior.data_objects.stimuli.presentations import (
        Presentations,
    )
    from allensdk.brain_observatory.ecephys._probe import Probe
    from allensdk.brain_observatory.ecephys.write_nwb import __main__ as writer

    Presentations._add_is_image_novel = classmethod(lambda cls, **kwargs: None)

    def probe_to_nwb(self, nwbfile):
        return self._add_probe_to_nwb(nwbfile=nwbfile), None

    Probe.to_nwb = probe_to_nwb

    class VcnMetadata:
        """session_metadata written the VCN way (EcephysSpecimen), not as Visual Behavior."""

        def __init__(self, metadata):
            self.metadata = metadata

        def to_nwb(self, nwbfile):
            return writer.add_metadata_to_nwbfile(nwbfile, self.metadata)

    class Metadata:
        @staticmethod
        def from_json(dict_repr):
            return VcnMetadata(dict_repr)

    writer.BehaviorEcephysMetadata = Metadata
    sys.argv = [writer.__file__, "--input_json", str(input_json),
                "--output_json", str(output_json)]  # fmt: skip
    writer.main()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
