"""Warehouse records of the synthetic dataset (the six RMA models of docs/architecture.md §1).

Everything here is a pure function of the seed and the size knobs. The NWB writers
(``synth.nwb_writer``) only read these records (after their JSON round trip) plus the seed, so a
lazily generated file equals an eagerly generated one.

Field values follow docs/allen-warehouse.md §2 / §5 and docs/allen-nwb.md §7: realistic id
ranges, NP1.0 geometry, probe names A..F, valid-channel counts 358-374 of 384, quality metrics
with realistic spreads, and a few units chosen to fail each default AllenSDK filter.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from . import catalog_real as real

N_CHANNELS = 384
# NP1.0 reference channels (not recorded; valid_data False in every probe).
REFERENCE_CHANNELS = (36, 75, 112, 151, 188, 227, 264, 303, 340, 379)
HORIZONTAL_PATTERN = (43, 11, 59, 27)  # µm, NP1.0 checkerboard (allen-warehouse.md §2.3 rows)
PROBE_NAMES = ("probeA", "probeB", "probeC", "probeD", "probeE", "probeF")
# Cortical target per probe slot (allen-warehouse.md §2.2: A=AM, B=PM, C=V1, D=LM, E=AL, F=RL).
PROBE_TARGETS = ("VISam", "VISpm", "VISp", "VISl", "VISal", "VISrl")

# Allen CCF structure ids for the acronyms used: the warehouse's Structure rows, which give the
# channels' ecephys_structure_id (allen-warehouse.md §2.3). The ids are those of the acronym map
# older AllenSDK versions had; 2.16.2 has none (allen-nwb.md §1.2).
STRUCTURES: dict[str, tuple[int, str]] = {
    "grey": (8, "Basic cell groups and regions"),
    "APN": (215, "Anterior pretectal nucleus"),
    "CA1": (382, "Field CA1"),
    "CA3": (463, "Field CA3"),
    "DG": (726, "Dentate gyrus"),
    "LGd": (170, "Dorsal part of the lateral geniculate complex"),
    "LGv": (178, "Ventral part of the lateral geniculate complex"),
    "LP": (218, "Lateral posterior nucleus of the thalamus"),
    "MB": (313, "Midbrain"),
    "PO": (1020, "Posterior complex of the thalamus"),
    "ProS": (484682470, "Prosubiculum"),
    "SUB": (502, "Subiculum"),
    "TH": (549, "Thalamus"),
    "VISal": (402, "Anterolateral visual area"),
    "VISam": (394, "Anteromedial visual area"),
    "VISl": (409, "Lateral visual area"),
    "VISp": (385, "Primary visual area"),
    "VISpm": (533, "posteromedial visual area"),
    "VISrl": (417, "Rostrolateral visual area"),
}
DEEP_STRUCTURES = ("LP", "LGd", "APN", "PO", "LGv", "MB", "TH")
HIPPOCAMPUS = ("DG", "CA3", "CA1", "ProS", "SUB")

UNIT_METRICS = (
    "snr", "firing_rate", "isi_violations", "presence_ratio", "amplitude_cutoff",
    "isolation_distance", "l_ratio", "d_prime", "nn_hit_rate", "nn_miss_rate", "silhouette_score",
    "max_drift", "cumulative_drift", "duration", "halfwidth", "PT_ratio", "repolarization_slope",
    "recovery_slope", "amplitude", "spread", "velocity_above", "velocity_below",
)  # fmt: skip

NWB_WKF_TYPE = {"id": 1026122572, "name": "EcephysNwb"}  # type ids UNCONFIRMED (made up)
LFP_WKF_TYPE = {"id": 1026122573, "name": "EcephysLfpNwb"}


@dataclass(frozen=True)
class Knobs:
    """Size knobs; stored in ``dataset.json`` under ``params``."""

    sessions: int = 2
    probes_per_session: int = 3
    units_per_probe: int = 24
    duration_s: float = 300.0
    lfp_duration_s: float = 4.0
    index_dtype: str | None = None
    all_nan_metric_as_str: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rng_for(*parts: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints/strings (stable across processes and platforms)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(np.frombuffer(h, dtype=np.uint32))


def _r(x: float, nd: int = 6) -> float | None:
    """Round like the warehouse does (finite values), NaN -> None (JSON null)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(round(float(x), nd))


def channel_geometry(local_index: np.ndarray | int) -> tuple[Any, Any]:
    """NP1.0 (vertical, horizontal) position in µm of a channel number."""
    li = np.asarray(local_index)
    vert = 20 * (li // 2 + 1)
    horiz = np.asarray(HORIZONTAL_PATTERN)[li % 4]
    return vert, horiz


# ------------------------------------------------------------------------------------------------
# probe-level layout: structures along the shank


def probe_layout(seed: int, probe_id: int, slot: int) -> dict[str, Any]:
    """Structure bands, surface channel and valid flags of one probe (all 384 channels)."""
    rng = rng_for(seed, "probe-layout", probe_id)
    surface = int(rng.integers(300, 372))  # first channel above the brain surface
    cortex_n = int(rng.integers(70, 100))
    hippo_n = int(rng.integers(60, 110))
    ctx = PROBE_TARGETS[slot % len(PROBE_TARGETS)]
    acr = np.empty(N_CHANNELS, dtype=object)
    acr[:] = ""
    i = surface
    # cortex (with a thin unannotated "grey" band at the white matter)
    acr[i - cortex_n : i] = ctx
    i -= cortex_n
    acr[i - 6 : i] = "grey"
    i -= 6
    hip = [h for h in HIPPOCAMPUS if rng.random() < 0.8] or ["CA1"]
    sizes = rng.multinomial(hippo_n, np.ones(len(hip)) / len(hip))
    for name, n in zip(reversed(hip), sizes, strict=True):
        acr[max(i - n, 0) : i] = name
        i = max(i - n, 0)
    deep = list(rng.choice(DEEP_STRUCTURES, size=3, replace=False))
    while i > 0:
        n = int(rng.integers(25, 70))
        acr[max(i - n, 0) : i] = deep[0]
        deep = deep[1:] + deep[:1]
        i = max(i - n, 0)
    # valid channels: all but the reference channels and a few bad ones
    n_valid = int(rng.integers(real.VALID_CHANNELS_RANGE[0], real.VALID_CHANNELS_RANGE[1] + 1))
    valid = np.ones(N_CHANNELS, dtype=bool)
    valid[list(REFERENCE_CHANNELS)] = False
    candidates = np.flatnonzero(valid)
    n_bad = int(valid.sum()) - n_valid
    valid[rng.choice(candidates, size=n_bad, replace=False)] = False
    # CCF track: tip deep, surface shallow (µm); out-of-brain channels get NaN
    ap0 = float(rng.uniform(7000, 9500))
    lr0 = float(rng.uniform(6500, 9800))
    dv_tip = float(rng.uniform(3800, 4600))
    vert, _ = channel_geometry(np.arange(N_CHANNELS))
    dv = dv_tip - vert * 0.9
    ap = ap0 + vert * float(rng.uniform(-0.2, 0.2))
    lr = lr0 + vert * float(rng.uniform(-0.3, 0.3))
    ccf = np.stack([np.round(ap), np.round(dv), np.round(lr)], axis=1)
    ccf[surface:] = np.nan
    return {"acronyms": acr, "valid": valid, "surface": surface, "ccf": ccf}


# ------------------------------------------------------------------------------------------------
# units


def _unit_metrics(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    """Quality and waveform metrics of one unit; ``kind`` forces a default-filter failure."""
    m: dict[str, Any] = {}
    m["quality"] = "noise" if kind == "noise" else "good"
    m["firing_rate"] = float(np.clip(rng.lognormal(np.log(4.0), 0.9), 0.05, 60.0))
    m["snr"] = float(rng.uniform(1.0, 6.0)) if rng.random() > 0.03 else math.nan
    m["isi_violations"] = float(rng.exponential(0.08))
    m["presence_ratio"] = float(min(0.99, round(rng.uniform(0.95, 1.0), 2)))
    m["amplitude_cutoff"] = float(np.clip(rng.exponential(0.02), 0.0005, 0.1))
    if kind == "isi":
        m["isi_violations"] = float(rng.uniform(0.6, 3.0))
    elif kind == "presence":
        m["presence_ratio"] = float(round(rng.uniform(0.5, 0.94), 2))
    elif kind == "amplitude":
        m["amplitude_cutoff"] = float(rng.uniform(0.11, 0.5))
    pc_nan = rng.random() < 0.02
    m["isolation_distance"] = math.nan if pc_nan else float(rng.uniform(10, 150))
    m["l_ratio"] = math.nan if pc_nan else float(rng.exponential(0.05))
    m["d_prime"] = math.nan if pc_nan else float(rng.uniform(1, 10))
    m["nn_hit_rate"] = math.nan if pc_nan else float(rng.uniform(0.3, 1.0))
    m["nn_miss_rate"] = math.nan if pc_nan else float(rng.uniform(0.0, 0.05))
    m["silhouette_score"] = math.nan if rng.random() < 0.05 else float(rng.uniform(-0.05, 0.4))
    m["max_drift"] = float(round(rng.uniform(5, 80), 2))
    m["cumulative_drift"] = float(round(rng.uniform(20, 700), 2))
    fs = rng.random() < 0.25  # fast-spiking
    m["duration"] = float(rng.uniform(0.15, 0.35) if fs else rng.uniform(0.45, 0.9))
    m["halfwidth"] = float(rng.uniform(0.1, 0.2) if fs else rng.uniform(0.2, 0.45))
    m["PT_ratio"] = float(rng.uniform(0.2, 0.9))
    m["repolarization_slope"] = float(rng.uniform(0.1, 1.2))
    m["recovery_slope"] = float(rng.uniform(-0.4, -0.01))
    m["amplitude"] = float(rng.uniform(40, 400))
    m["spread"] = float(rng.integers(2, 20) * 10)
    vel_nan = rng.random() < 0.3
    m["velocity_above"] = math.nan if vel_nan else float(rng.uniform(-1.0, 2.0))
    m["velocity_below"] = math.nan if rng.random() < 0.3 else float(rng.uniform(-1.0, 2.0))
    return m


# Forced unit kinds, one of each per probe (first units of the probe, shuffled).
FORCED_KINDS = ("noise", "amplitude", "presence", "isi", "out_of_brain")


# ------------------------------------------------------------------------------------------------
# sessions


@dataclass
class SessionPlan:
    session_id: int
    session_type: str
    specimen_id: int
    donor_id: int
    genotype: str
    sex: str
    age_days: int
    date_of_acquisition: datetime
    probe_ids: list[int]
    no_lfp: set[int]
    nwb_wkf_id: int


def _plan_synthetic(seed: int, knobs: Knobs) -> list[SessionPlan]:
    rng = rng_for(seed, "sessions")
    n = knobs.sessions
    sids_set: set[int] = set()
    while len(sids_set) < n:
        sids_set.add(int(rng.integers(715_000_000, 847_000_000)))
    sids = sorted(sids_set)
    genos = [real.WT, real.SST, real.PVALB, real.VIP]
    plans = []
    for i, sid in enumerate(sids):
        stype = real.BO if i % 2 == 0 else real.FC
        base = int(rng.integers(730_000_000, 810_000_000)) // 2 * 2 + (i % 2)
        pids = [base + 2 * k for k in range(knobs.probes_per_session)]
        no_lfp = set()
        if knobs.probes_per_session >= 2 and i == 0:
            no_lfp = {pids[-1]}
        specimen = sid - int(rng.integers(8_000_000, 20_000_000))
        plans.append(
            SessionPlan(
                session_id=sid,
                session_type=stype,
                specimen_id=specimen,
                donor_id=specimen + 1,
                genotype=genos[i % len(genos)] if i else real.SST,
                sex="M" if rng.random() < 0.7 else "F",
                age_days=int(rng.integers(real.AGE_RANGE_DAYS[0], real.AGE_RANGE_DAYS[1] + 1)),
                date_of_acquisition=_acq_date(sid, rng),
                probe_ids=pids,
                no_lfp=no_lfp,
                nwb_wkf_id=1026123000 + int(rng.integers(0, 2000)),
            )
        )
    _dedupe_wkf(plans)
    return plans


def _dedupe_wkf(plans: list[SessionPlan]) -> None:
    seen: set[int] = set()
    for p in plans:
        while p.nwb_wkf_id in seen:
            p.nwb_wkf_id += 1
        seen.add(p.nwb_wkf_id)


def _acq_date(sid: int, rng: np.random.Generator) -> datetime:
    # Session ids grow with time: 715e6 ~ 2018-06, 847e6 ~ 2019-04 (UNCONFIRMED mapping).
    frac = (sid - 715_000_000) / (847_000_000 - 715_000_000)
    day = datetime(2018, 6, 1, tzinfo=UTC) + timedelta(days=int(frac * 300))
    return day + timedelta(seconds=int(rng.integers(15 * 3600, 23 * 3600)))


def _plan_realistic(seed: int) -> list[SessionPlan]:
    rng = rng_for(seed, "realistic")
    sids = list(real.SESSION_IDS)
    # genotypes: counts 30/12/8/8, known ones fixed, the rest shuffled deterministically
    pool: list[str] = []
    for g, c in real.GENOTYPE_COUNTS.items():
        pool += [g] * (c - sum(1 for v in real.KNOWN_GENOTYPES.values() if v == g))
    pool = [pool[i] for i in rng.permutation(len(pool))]
    # five-probe sessions: 732592105, 839557629, 719161530 (listed with A-E), the rest chosen
    fixed5 = set(real.FIVE_PROBE_SESSIONS_CONFIRMED) | {
        s for s, ps in real.KNOWN_PROBES.items() if len(ps) == 5
    }
    six_fixed = {s for s, ps in real.KNOWN_PROBES.items() if len(ps) == 6}
    cands = [s for s in sids if s not in fixed5 and s not in six_fixed]
    extra = rng.choice(cands, size=real.N_FIVE_PROBE_SESSIONS - len(fixed5), replace=False)
    five = fixed5 | {int(x) for x in extra}
    used_probe_ids: set[int] = set()
    plans = []
    gi = 0
    for i, sid in enumerate(sids):
        if sid in real.KNOWN_GENOTYPES:
            geno = real.KNOWN_GENOTYPES[sid]
        else:
            geno = pool[gi]
            gi += 1
        n_probes = 5 if sid in five else 6
        if sid in real.KNOWN_PROBES:
            pids = list(real.KNOWN_PROBES[sid])
        else:
            pids = _realistic_probe_ids(sid, n_probes, rng, used_probe_ids)
        used_probe_ids.update(pids)
        specimen = real.KNOWN_SPECIMENS.get(sid) or real.UNASSIGNED_SPECIMEN_IDS.get(sid)
        if specimen is None:
            specimen = sid - int(rng.integers(8_000_000, 20_000_000))
        plans.append(
            SessionPlan(
                session_id=sid,
                session_type=real.SESSION_TYPES[sid],
                specimen_id=specimen,
                donor_id=real.KNOWN_DONORS.get(sid, specimen - real.DONOR_BELOW_SPECIMEN),
                genotype=geno,
                sex=real.KNOWN_SEXES.get(sid, "M" if rng.random() < 0.75 else "F"),
                age_days=real.KNOWN_AGES.get(
                    sid, int(rng.integers(real.AGE_RANGE_DAYS[0], real.AGE_RANGE_DAYS[1] + 1))
                ),
                date_of_acquisition=_acq_date(sid, rng),
                probe_ids=pids,
                no_lfp=set(real.NO_LFP_PROBES.get(sid, ())),
                nwb_wkf_id=real.SESSION_NWB_WKF_IDS[i],
            )
        )
    return plans


def _realistic_probe_ids(sid: int, n: int, rng: np.random.Generator, used: set[int]) -> list[int]:
    partial = real.KNOWN_PROBE_IDS_PARTIAL.get(sid, ())
    if partial:
        lo = min(partial)
        # fill the +2 sequence around the known ids, keeping their parity where it fits
        ids = sorted(set(partial))
        k = lo
        while len(ids) < n:
            k -= 2
            if k not in ids:
                ids.append(k)
        ids = sorted(ids)[:n]
        return ids
    # probe ids are a little above the session's acquisition-time ids (~7.3e8 - 8.5e8)
    while True:
        base = int(sid + rng.integers(5_000_000, 40_000_000))
        ids = [base + 2 * k for k in range(n)]
        if not used.intersection(ids):
            return ids


# ------------------------------------------------------------------------------------------------
# records


def build_records(seed: int, knobs: Knobs, realistic: bool) -> dict[str, list[dict[str, Any]]]:
    """All warehouse rows, keyed by model name (JSON-ready: NaN is None)."""
    plans = _plan_realistic(seed) if realistic else _plan_synthetic(seed, knobs)
    sessions: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    units: list[dict[str, Any]] = []
    wkfs: list[dict[str, Any]] = []
    used_structures: set[str] = set()
    rng_ids = rng_for(seed, "ids")
    channel_base = int(rng_ids.integers(849_000_000, 849_700_000)) // 2 * 2
    unit_base = int(rng_ids.integers(915_000_000, 920_000_000))
    lfp_wkf_next = 1026124000 + int(rng_ids.integers(0, 100)) * 10
    # ids that generated records must not take: the real ones pinned in catalog_real
    used_wkf_ids = {p.nwb_wkf_id for p in plans} | set(real.KNOWN_LFP_WKF_IDS.values())
    reserved_channels = [(b, b + 2 * N_CHANNELS) for b in real.KNOWN_CHANNEL_BASES.values()]

    for plan in plans:
        sid = plan.session_id
        donor_name = _specimen_name(plan)
        # keys in alphabetical order, as the warehouse returns them (allen-warehouse.md §2.1)
        sessions.append(
            {
                "date_of_acquisition": plan.date_of_acquisition.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "fail_eye_tracking": bool(rng_for(seed, "eye", sid).random() < 0.15),
                "id": sid,
                "isi_experiment_id": sid
                - 40_000_000
                + int(rng_for(seed, "isi", sid).integers(10**6)),
                "published_at": real.PUBLISHED_AT,
                "specimen": {
                    "id": plan.specimen_id,
                    "name": donor_name,
                    "donor": {
                        "id": plan.donor_id,
                        "name": donor_name,
                        "sex": plan.sex,
                        "full_genotype": plan.genotype,
                        "age": {
                            "id": 1000 + plan.age_days,
                            "name": f"P{plan.age_days}",
                            "days": plan.age_days,
                        },
                    },
                },
                "specimen_id": plan.specimen_id,
                "stimulus_name": plan.session_type,
            }
        )
        wkfs.append(
            {
                "attachable_id": sid,
                "attachable_type": "EcephysSession",
                "download_link": f"/api/v2/well_known_file_download/{plan.nwb_wkf_id}",
                "id": plan.nwb_wkf_id,
                "path": f"/allen/programs/braintv/production/visualbehavior/prod0/specimen_"
                f"{plan.specimen_id}/ecephys_session_{sid}/ecephys_session_{sid}.nwb",
                "well_known_file_type": dict(NWB_WKF_TYPE),
                "well_known_file_type_id": NWB_WKF_TYPE["id"],
            }
        )
        unit_next = real.KNOWN_UNIT_ID_START.get(sid, unit_base)
        for slot, pid in enumerate(plan.probe_ids):
            prng = rng_for(seed, "probe", pid)
            sr, lsr = real.KNOWN_PROBE_RATES.get(
                pid,
                (
                    round(30000.0 + float(prng.normal(0, 0.03)), 6),
                    round(1250.0 + float(prng.normal(0, 0.0015)), 6),
                ),
            )
            phase = real.KNOWN_PROBE_PHASES.get(pid, "3a" if sid < 800_000_000 else "PXI")
            has_lfp = pid not in plan.no_lfp
            probes.append(
                {
                    "ecephys_session_id": sid,
                    "id": pid,
                    "lfp_sampling_rate": lsr,
                    "name": PROBE_NAMES[slot],
                    "phase": phase,
                    "sampling_rate": sr,
                    "use_lfp_data": has_lfp,
                }
            )
            if has_lfp:
                wid = real.KNOWN_LFP_WKF_IDS.get(pid)
                if wid is None:
                    while lfp_wkf_next in used_wkf_ids:
                        lfp_wkf_next += 7
                    wid = lfp_wkf_next
                    used_wkf_ids.add(wid)
                    lfp_wkf_next += 7
                wkfs.append(
                    {
                        "attachable_id": pid,
                        "attachable_type": "EcephysProbe",
                        "download_link": f"/api/v2/well_known_file_download/{wid}",
                        "id": wid,
                        "path": f"/allen/programs/braintv/production/visualbehavior/prod0/"
                        f"specimen_{plan.specimen_id}/ecephys_session_{sid}/"
                        f"probe_{pid}_lfp.nwb",
                        "well_known_file_type": dict(LFP_WKF_TYPE),
                        "well_known_file_type_id": LFP_WKF_TYPE["id"],
                    }
                )
            layout = probe_layout(seed, pid, slot)
            cbase = real.KNOWN_CHANNEL_BASES.get(pid)
            if cbase is None:  # a generated probe: its id block must not overlap a real one
                cbase = channel_base
                for start, end in sorted(reserved_channels):
                    if cbase < end and start < cbase + 2 * N_CHANNELS:
                        cbase = end
                channel_base = cbase + 2 * N_CHANNELS + 2 * int(prng.integers(0, 50))
            vert, horiz = channel_geometry(np.arange(N_CHANNELS))
            valid_ids = []
            for li in range(N_CHANNELS):
                if not layout["valid"][li]:
                    continue
                acr = layout["acronyms"][li]
                if acr:
                    used_structures.add(acr)
                cid = cbase + 2 * li
                valid_ids.append((li, cid))
                ap, dv, lr = (_r(v, 1) for v in layout["ccf"][li])
                channels.append(
                    {
                        "id": cid,
                        "ecephys_probe_id": pid,
                        "local_index": li,
                        "probe_horizontal_position": int(horiz[li]),
                        "probe_vertical_position": int(vert[li]),
                        "anterior_posterior_ccf_coordinate": ap,
                        "dorsal_ventral_ccf_coordinate": dv,
                        "left_right_ccf_coordinate": lr,
                        "structure_id": STRUCTURES[acr][0] if acr else None,
                        "valid_data": True,
                    }
                )
            # units of this probe
            urng = rng_for(seed, "units", pid)
            n_units = knobs.units_per_probe
            kinds = ["normal"] * n_units
            forced = list(FORCED_KINDS)[: max(0, min(len(FORCED_KINDS), n_units - 1))]
            pos = urng.permutation(n_units)[: len(forced)]
            for k, p in zip(forced, pos, strict=True):
                kinds[int(p)] = k
            in_brain = [(li, cid) for li, cid in valid_ids if layout["acronyms"][li]]
            out_brain = [(li, cid) for li, cid in valid_ids if not layout["acronyms"][li]]
            for k in range(n_units):
                unit_next += int(urng.integers(1, 4))
                uid = unit_next
                if kinds[k] == "out_of_brain" and out_brain:
                    li, cid = out_brain[int(urng.integers(len(out_brain)))]
                else:
                    li, cid = in_brain[int(urng.integers(len(in_brain)))]
                m = _unit_metrics(rng_for(seed, "metrics", uid), kinds[k])
                if knobs.all_nan_metric_as_str:
                    m["silhouette_score"] = math.nan
                row: dict[str, Any] = {"id": uid, "ecephys_channel_id": cid}
                row["quality"] = m.pop("quality")
                for name in UNIT_METRICS:
                    row[name] = _r(m[name])
                row["epoch_name_quality_metrics"] = "complete_session"
                row["epoch_name_waveform_metrics"] = "complete_session"
                units.append(dict(sorted(row.items(), key=lambda kv: kv[0].lower())))
        unit_base = unit_next + int(rng_ids.integers(1000, 50_000))

    structures = [
        {"acronym": a, "id": STRUCTURES[a][0], "name": STRUCTURES[a][1]}
        for a in sorted(used_structures | {"grey"}, key=lambda a: STRUCTURES[a][0])
    ]
    return {
        "EcephysSession": sessions,
        "EcephysProbe": probes,
        "EcephysChannel": channels,
        "Structure": structures,
        "EcephysUnit": units,
        "WellKnownFile": wkfs,
    }


def _specimen_name(plan: SessionPlan) -> str:
    line = {real.WT: "C57BL6J", real.SST: "Sst-IRES-Cre;Ai32", real.PVALB: "Pvalb-IRES-Cre;Ai32"}
    prefix = line.get(plan.genotype, "Vip-IRES-Cre;Ai32")
    return f"{prefix}-{plan.specimen_id % 1_000_000:06d}"
