"""Tests for the selection spec (ecephys_pipeline.selection).

Two catalogues are built here, written to CSV and read back the way AllenSDK reads its cache:

* ``tiny``: 4 sessions whose counts are worked out by hand below (AllenSDK semantics);
* ``catalogue``: a deterministic 58-session catalogue shaped like the real one (real session
  ids where known, 5-6 probes, real session types / genotypes / acronyms, ~1,700 raw units per
  session) on which every example spec is checked against the pandas expression it mirrors,
  written the way the tutorials write it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ecephys_pipeline import layout
from ecephys_pipeline import selection as S

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "config" / "examples"
NAN = np.nan
SST = "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
PVALB = "Pvalb-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
VIP = "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt"
BO, FC = "brain_observatory_1.1", "functional_connectivity"
FILTERS_OFF = {
    "quality": None,
    "amplitude_cutoff_maximum": None,
    "presence_ratio_minimum": None,
    "isi_violations_maximum": None,
}


def write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / f"{name}.csv")  # index label "id", as AllenSDK writes its cache
    return out


# --------------------------------------------------------------------------- tiny catalogue
#
# sessions 101 (BO, M, Sst), 102 (BO, F, wt), 103 (FC, M, Pvalb), 104 (FC, M, wt; no probes)
# probes   201 s101 probeA lfp, 202 s101 probeB no-lfp, 203 s102 probeA lfp, 204 s103 probeC lfp,
#          299 -> session 999 (not in sessions.csv: dropped by the join)
# channels 301 VISp, 302 NaN, 303 VISl, 304 VISp (p201); 305 CA1 (p202); 306 VISp, 307 LGd
#          (p203); 308 CA1, 309 NaN (p204); 398 VISam (p299, orphan); 399 VISp (probe 777: none)
# units    401 ch301 pass; 402 ch301 exactly on every threshold (inclusive: pass); 403 ch303
#          quality noise; 404 ch302 out-of-brain channel (AllenSDK still counts it); 405 ch305
#          amplitude_cutoff 0.2; 406 ch306 presence 0.5; 407 ch307 isi 0.6; 408 ch308
#          amplitude_cutoff NaN (dropped even with filters off); 409 ch309 pass; 410 ch398,
#          411 ch399, 412 ch12345: orphans, never counted.
# default filters: unit_count 101=3 (401,402,404), 102=0, 103=1 (409), 104=0
# filters off:     unit_count 101=5 (+403,405), 102=2 (406,407), 103=1 (408 NaN), 104=0


def tiny_tables() -> dict[str, pd.DataFrame]:
    sessions = pd.DataFrame(
        {
            "id": [101, 102, 103, 104],
            "date_of_acquisition": [f"2019-01-0{i}T10:00:00-08:00" for i in range(1, 5)],
            "published_at": ["2019-10-03T00:00:00Z"] * 3 + ["2020-01-01T00:00:00Z"],
            "specimen_id": [9001, 9002, 9003, 9004],
            "session_type": [BO, BO, FC, FC],
            "isi_experiment_id": [1, 2, 3, 4],
            "age_in_days": [118.0, 100.0, 125.0, 110.0],
            "sex": ["M", "F", "M", "M"],
            "genotype": [SST, "wt/wt", PVALB, "wt/wt"],
            "has_nwb": [True] * 4,
        }
    ).set_index("id")
    probes = pd.DataFrame(
        {
            "id": [201, 202, 203, 204, 299],
            "ecephys_session_id": [101, 101, 102, 103, 999],
            "lfp_sampling_rate": [1249.99, 1250.0, 1250.01, 1250.0, 1250.0],
            "name": ["probeA", "probeB", "probeA", "probeC", "probeA"],
            "phase": ["3a", "3a", "PXI", "PXI", "3a"],
            "sampling_rate": [29999.9, 30000.0, 30000.1, 30000.0, 30000.0],
            "has_lfp_data": [True, False, True, True, True],
        }
    ).set_index("id")
    channels = pd.DataFrame(
        {
            "id": [301, 302, 303, 304, 305, 306, 307, 308, 309, 398, 399],
            "ecephys_probe_id": [201, 201, 201, 201, 202, 203, 203, 204, 204, 299, 777],
            "local_index": [0, 1, 2, 3, 0, 0, 1, 0, 1, 0, 0],
            "probe_horizontal_position": [43, 11, 59, 27, 43, 43, 11, 43, 11, 43, 43],
            "probe_vertical_position": [20, 20, 40, 40, 20, 20, 20, 20, 20, 20, 20],
            "anterior_posterior_ccf_coordinate": [8000.0] * 11,
            "dorsal_ventral_ccf_coordinate": [3000.0] * 11,
            "left_right_ccf_coordinate": [7000.0] * 11,
            "ecephys_structure_id": [385, NAN, 409, 385, 382, 385, 170, 382, NAN, 394, 385],
            "ecephys_structure_acronym": [
                "VISp",
                NAN,
                "VISl",
                "VISp",
                "CA1",
                "VISp",
                "LGd",
                "CA1",
                NAN,
                "VISam",
                "VISp",
            ],
        }
    ).set_index("id")
    n = 12
    units = pd.DataFrame(
        {
            "id": list(range(401, 401 + n)),
            "ecephys_channel_id": [301, 301, 303, 302, 305, 306, 307, 308, 309, 398, 399, 12345],
            "quality": ["good", "good", "noise"] + ["good"] * 9,
            "snr": [3.0] * n,
            "firing_rate": [5.0] * n,
            "isi_violations": [0.1, 0.5, 0.1, 0.1, 0.1, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1],
            "presence_ratio": [
                0.99,
                0.95,
                0.99,
                0.99,
                0.99,
                0.5,
                0.99,
                0.99,
                0.99,
                0.99,
                0.99,
                0.99,
            ],
            "amplitude_cutoff": [
                0.05,
                0.1,
                0.05,
                0.05,
                0.2,
                0.05,
                0.05,
                NAN,
                0.05,
                0.05,
                0.05,
                0.05,
            ],
            "epoch_name_quality_metrics": ["complete_session"] * n,
            "epoch_name_waveform_metrics": ["complete_session"] * n,
            "duration": [0.5] * n,
            "PT_ratio": [0.6] * n,
            "amplitude": [100.0] * n,
        }
    ).set_index("id")
    return {"sessions": sessions, "probes": probes, "channels": channels, "units": units}


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    return write_tables(tmp_path / "tiny", tiny_tables())


@pytest.fixture
def tiny(tiny_dir) -> dict[str, pd.DataFrame]:
    return S.load_tables(tiny_dir)


def test_session_table_matches_allensdk_semantics(tiny):
    st = S.session_table(tiny)
    assert list(st.columns) == [
        "published_at",
        "specimen_id",
        "session_type",
        "age_in_days",
        "sex",
        "full_genotype",
        "unit_count",
        "channel_count",
        "probe_count",
        "ecephys_structure_acronyms",
    ]
    assert st.index.name == "id"
    assert st["unit_count"].to_dict() == {101: 3, 102: 0, 103: 1, 104: 0}
    assert st["channel_count"].to_dict() == {101: 5, 102: 2, 103: 2, 104: 0}
    assert st["probe_count"].to_dict() == {101: 2, 102: 1, 103: 1, 104: 0}
    assert str(st["unit_count"].dtype) == "int64"
    acr = st["ecephys_structure_acronyms"]
    # first-appearance order over channels.csv rows, NaN kept (AllenSDK: groupby(...).unique())
    assert acr[101][0] == "VISp" and pd.isna(acr[101][1]) and acr[101][2:] == ["VISl", "CA1"]
    assert acr[102] == ["VISp", "LGd"]
    assert acr[103][0] == "CA1" and pd.isna(acr[103][1]) and len(acr[103]) == 2
    assert acr[104] == []
    off = S.session_table(tiny, FILTERS_OFF)
    assert off["unit_count"].to_dict() == {101: 5, 102: 2, 103: 1, 104: 0}


def test_probe_table_matches_allensdk_semantics(tiny):
    pt = S.probe_table(tiny)
    assert list(pt.index) == [201, 202, 203, 204]  # 299's session is not in sessions.csv
    assert list(pt.columns) == [
        "ecephys_session_id",
        "lfp_sampling_rate",
        "name",
        "phase",
        "sampling_rate",
        "has_lfp_data",
        "unit_count",
        "channel_count",
        "ecephys_structure_acronyms",
    ]
    assert pt["unit_count"].to_dict() == {201: 3, 202: 0, 203: 0, 204: 1}
    assert pt["channel_count"].to_dict() == {201: 4, 202: 1, 203: 2, 204: 2}
    assert pt.loc[203, "ecephys_structure_acronyms"] == ["VISp", "LGd"]
    assert pt.loc[201, "ecephys_structure_acronyms"][2] == "VISl"


def test_unit_filter_thresholds_are_inclusive_and_switchable(tiny):
    st = S.session_table(tiny, {"quality": None})
    assert st.loc[101, "unit_count"] == 4  # + 403 (noise)
    st = S.session_table(tiny, {"amplitude_cutoff_maximum": None})
    assert st.loc[101, "unit_count"] == 4  # + 405; 408 (NaN) still out, as in AllenSDK
    assert st.loc[103, "unit_count"] == 1
    st = S.session_table(tiny, {"amplitude_cutoff_maximum": 0.0999})
    assert st.loc[101, "unit_count"] == 2  # 402 sits exactly on 0.1


def test_load_tables_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"channels\.csv, units\.csv"):
        write_tables(
            tmp_path, {k: v for k, v in tiny_tables().items() if k in ("sessions", "probes")}
        )
        S.load_tables(tmp_path)


def test_defaults_are_allensdk_defaults():
    spec = S.load_spec({})
    assert spec["unit_filters"] == S.DEFAULT_UNIT_FILTERS
    assert spec["fetch_lfp"] is False and spec["limit"] is None
    assert spec["areas"] == {"any": [], "all": [], "none": []}
    assert spec["session_ids"] == {"include": [], "exclude": []}
    assert spec["order_by"] == {"column": "session_id", "descending": False}


def test_schema_has_description_and_default_everywhere():
    schema = S.load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, path):
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" or "properties" in node:
            assert node.get("additionalProperties") is False, path
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}.{key} has no description"
            assert "default" in sub, f"{path}.{key} has no default"
            walk(S._resolve_ref(sub, schema), f"{path}.{key}")
        for key, sub in node.get("$defs", {}).items():
            walk(sub, f"$defs.{key}")

    walk(schema, "spec")


# --------------------------------------------------------------------------- errors


def problems_of(spec) -> list[str]:
    with pytest.raises(S.SpecError) as exc:
        S.load_spec(spec)
    return exc.value.problems


def test_unknown_key_names_key_place_and_nearest():
    (p,) = problems_of({"sesion_types": [BO]})
    assert "unknown key 'sesion_types' at the top level" in p
    assert "did you mean 'session_types'?" in p
    (p,) = problems_of({"areas": {"anyy": ["VISp"]}})
    assert "unknown key 'anyy' under 'areas'" in p and "did you mean 'any'?" in p
    (p,) = problems_of({"unit_filters": {"amplitude_cutoff_max": 0.2}})
    assert "under 'unit_filters'" in p and "'amplitude_cutoff_maximum'" in p


def test_wrong_type_names_key_expected_type_and_allowed_values():
    (p,) = problems_of({"limit": "ten"})
    assert "'limit' must be an integer or null, got string \"ten\"" in p
    (p,) = problems_of({"fetch_lfp": "yes"})
    assert "'fetch_lfp' must be true/false, got string" in p
    (p,) = problems_of({"order_by": {"column": "units"}})
    assert "'order_by.column'" in p and "allowed: session_id, specimen_id" in p
    (p,) = problems_of({"areas": {"any": "VISp"}})
    assert "'areas.any' must be a list, got string" in p


def test_all_problems_reported_at_once_without_traceback_noise():
    with pytest.raises(S.SpecError) as exc:
        S.load_spec({"limit": 0, "sex": 3, "bogus": 1, "probes": {"has_lfp": "no"}})
    msg = str(exc.value)
    assert msg.startswith("selection spec has 4 problems:")
    assert "'limit' must be >= 1" in msg and "unknown key 'bogus'" in msg
    assert "'sex' must be" in msg and "'probes.has_lfp' must be true/false or null" in msg
    assert "Failed validating" not in msg and "jsonschema" not in msg


def test_semantic_spec_errors():
    assert (
        "can never match: min 5 and max 2" in problems_of({"unit_count": {"min": 5, "max": 2}})[0]
    )
    assert "can never match: gt 3 and lt 3" in problems_of({"probe_count": {"gt": 3, "lt": 3}})[0]
    assert "not an ISO 8601 date" in problems_of({"published_at": "last year"})[0]
    assert "not a valid regular expression" in problems_of({"genotype": {"matches": "Sst("}})[0]
    assert (
        "both included and excluded"
        in problems_of({"session_ids": {"include": [1], "exclude": [1]}})[0]
    )
    assert "gives no bound" in problems_of({"age_in_days": {}})[0]


def test_yaml_file_errors(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("session_types: [brain_observatory_1.1\n")
    with pytest.raises(S.SpecError, match="not valid YAML"):
        S.load_spec(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(S.SpecError, match="must be a mapping"):
        S.load_spec(path)
    with pytest.raises(S.SpecError, match="does not exist"):
        S.load_spec(tmp_path / "nope.yaml")
    path.write_text("published_at: 2019-10-03\n")  # YAML date -> ISO string
    assert S.load_spec(path)["published_at"] == "2019-10-03"


def test_unknown_values_list_allowed_values(tiny):
    with pytest.raises(S.SpecError) as exc:
        S.resolve(
            {
                "session_types": ["brain_observatory_1.2"],
                "areas": {"any": ["VISP"], "none": ["VSl"]},
                "probes": {"names": ["probeZ"]},
                "session_ids": {"include": [105]},
                "specimen_ids": [1],
            },
            tiny,
        )
    msg = str(exc.value)
    assert len(exc.value.problems) == 6
    assert "session id 105 in 'session_ids.include' is not in the sessions table" in msg
    assert "specimen id 1 in 'specimen_ids' is not in the sessions table" in msg
    assert (
        "unknown session type 'brain_observatory_1.2' in 'session_types'" in msg
        and "did you mean 'brain_observatory_1.1'?" in msg
        and "allowed: brain_observatory_1.1, functional_connectivity" in msg
    )
    assert "unknown brain area 'VISP' in 'areas.any'" in msg and "did you mean 'VISp'" in msg
    assert (
        "unknown brain area 'VSl' in 'areas.none'" in msg and "allowed: CA1, LGd, VISl, VISp" in msg
    )
    assert (
        "unknown probe name 'probeZ' in 'probes.names'" in msg and "probeA, probeB, probeC" in msg
    )


def test_empty_selection_names_the_culprit(tiny):
    spec = {"session_types": [FC], "sex": "M", "areas": {"all": ["VISp"]}}
    with pytest.raises(S.SelectionError) as exc:
        S.resolve(spec, tiny)
    msg = str(exc.value)
    assert "filter 'areas.all' removed the last 2 sessions" in msg
    assert [(c["filter"], c["sessions_left"]) for c in exc.value.counts] == [
        ("all_sessions", 4),
        ("session_types", 2),
        ("sex", 2),
        ("areas.all", 0),
    ]
    assert "session_types      2" in msg.replace("  ", "  ")
    assert "<- removed the last sessions" in msg


# --------------------------------------------------------------------------- resolution


def test_filters_and_counts_in_application_order(tiny):
    sel = S.resolve(
        {
            "session_ids": {"exclude": [104]},
            "genotype": {"contains": "wt", "ignore_case": True},
            "age_in_days": {"min": 100, "lt": 125},
            "unit_count": {"min": 0},
            "areas": {"any": ["VISp", "CA1"], "none": ["LGd"]},
        },
        tiny,
    )
    assert sel.session_ids == [101]
    assert [c["filter"] for c in sel.counts] == [
        "all_sessions",
        "session_ids.exclude",
        "genotype",
        "age_in_days",
        "unit_count",
        "areas.any",
        "areas.none",
    ]
    assert [c["sessions_left"] for c in sel.counts] == [4, 3, 3, 2, 2, 2, 1]


def test_more_than_is_exclusive(tiny):
    assert S.resolve({"unit_count": {"gt": 1}}, tiny).session_ids == [101]
    assert S.resolve({"unit_count": {"min": 1}}, tiny).session_ids == [101, 103]
    assert S.resolve({"unit_count": 3}, tiny).session_ids == [101]


def test_text_filters(tiny):
    assert S.resolve({"sex": "F"}, tiny).session_ids == [102]
    assert S.resolve({"sex": ["F", "M"]}, tiny).session_ids == [101, 102, 103, 104]
    assert S.resolve({"genotype": {"matches": "^Pvalb"}}, tiny).session_ids == [103]
    assert S.resolve(
        {"genotype": {"matches": "^pvalb", "ignore_case": True}}, tiny
    ).session_ids == [103]
    with pytest.raises(S.SelectionError):
        S.resolve({"genotype": {"contains": "sst"}}, tiny)  # case-sensitive by default
    assert S.resolve({"genotype": {"equals": "WT/WT", "ignore_case": True}}, tiny).session_ids == [
        102,
        104,
    ]


def test_published_at(tiny):
    assert S.resolve({"published_at": "2019-10-03"}, tiny).session_ids == [101, 102, 103]
    assert S.resolve({"published_at": {"min": "2019-12-01"}}, tiny).session_ids == [104]


def test_include_restricts_and_other_filters_still_apply(tiny):
    sel = S.resolve({"session_ids": {"include": [102, 103]}, "session_types": BO}, tiny)
    assert sel.session_ids == [102]
    assert [c["filter"] for c in sel.counts] == [
        "all_sessions",
        "session_ids.include",
        "session_types",
    ]


def test_probe_filters_and_lfp_flags(tiny):
    sel = S.resolve({"fetch_lfp": True, "session_types": [BO]}, tiny)
    art = sel.to_dict()
    s101 = art["sessions"][0]
    assert s101["probes"] == [
        {"probe_id": 201, "name": "probeA", "has_lfp_data": True, "download_lfp": True},
        {"probe_id": 202, "name": "probeB", "has_lfp_data": False, "download_lfp": False},
    ]
    sel = S.resolve({"probes": {"has_lfp": False}}, tiny)
    assert sel.session_ids == [101] and sel.probe_ids == [202]
    sel = S.resolve({"probes": {"names": ["probeA"]}}, tiny)
    assert sel.session_ids == [101, 102] and sel.probe_ids == [201, 203]
    assert sel.counts[-1] == {"filter": "probes", "sessions_left": 2}
    assert S.resolve({}, tiny).to_dict()["sessions"][0]["probes"][0]["download_lfp"] is False


def test_limit_is_deterministic(tiny):
    sel = S.resolve({"limit": 2}, tiny)
    assert sel.session_ids == [101, 102]
    assert sel.counts[-1] == {"filter": "limit", "sessions_left": 2}
    shuffled = {k: v.sample(frac=1.0, random_state=3) for k, v in tiny.items()}
    assert S.resolve({"limit": 2}, shuffled).session_ids == [101, 102]
    by_units = {"limit": 2, "order_by": {"column": "unit_count", "descending": True}}
    assert S.resolve(by_units, tiny).session_ids == [101, 103]
    # ties (102 and 104 have 0 units) broken by session id ascending
    assert S.resolve({"limit": 3, "order_by": {"column": "unit_count"}}, tiny).session_ids == [
        102,
        103,
        104,
    ]
    assert S.resolve({"limit": 10}, tiny).counts[-1] == {"filter": "limit", "sessions_left": 4}


def test_spec_hash_stable_and_sensitive(tmp_path, tiny):
    a = S.load_spec({"session_types": [BO], "limit": 1})
    b = S.load_spec({"limit": 1, "session_types": [BO]})
    assert S.spec_sha256(a) == S.spec_sha256(b)
    path = tmp_path / "s.yaml"
    path.write_text("limit: 1\nsession_types: [brain_observatory_1.1]\nfetch_lfp: false\n")
    assert S.spec_sha256(S.load_spec(path)) == S.spec_sha256(a)
    assert S.spec_sha256(S.load_spec({"session_types": [BO], "limit": 2})) != S.spec_sha256(a)
    assert S.spec_sha256(S.load_spec({"limit": 1, "unit_filters": {"quality": None}})) != (
        S.spec_sha256(S.load_spec({"limit": 1}))
    )


def test_artifact_shape_and_determinism(tmp_path, tiny):
    spec = S.load_spec({"fetch_lfp": True, "areas": {"any": ["VISp", "CA1"]}})
    p1 = S.resolve(spec, tiny).to_json(tmp_path / "a" / "selection.json")
    shuffled = {k: v.sample(frac=1.0, random_state=1) for k, v in tiny.items()}
    p2 = S.resolve(spec, shuffled).to_json(tmp_path / "b" / "selection.json")
    assert p1.read_bytes() == p2.read_bytes()
    text = p1.read_text()
    assert text.endswith("}\n")
    art = json.loads(text)
    assert set(art) == {"spec_sha256", "fetch_lfp", "unit_filters", "sessions", "counts"}
    assert art["spec_sha256"] == S.spec_sha256(spec) and len(art["spec_sha256"]) == 64
    assert art["fetch_lfp"] is True
    assert art["unit_filters"] == S.DEFAULT_UNIT_FILTERS
    assert [s["session_id"] for s in art["sessions"]] == [101, 102, 103]
    for s in art["sessions"]:
        assert set(s) == {"session_id", "session_type", "probes"}
        assert isinstance(s["session_id"], int)
        for p in s["probes"]:
            assert set(p) == {"probe_id", "name", "has_lfp_data", "download_lfp"}
            assert isinstance(p["probe_id"], int) and isinstance(p["has_lfp_data"], bool)
    assert art["counts"] == [
        {"filter": "all_sessions", "sessions_left": 4},
        {"filter": "areas.any", "sessions_left": 3},
    ]
    assert text == json.dumps(art, sort_keys=True, indent=2) + "\n"


def test_resolve_accepts_a_yaml_path(tmp_path, tiny):
    path = tmp_path / "spec.yaml"
    path.write_text("session_types: functional_connectivity\nprobe_count: {min: 1}\n")
    assert S.resolve(path, tiny).session_ids == [103]


# --------------------------------------------------------------------------- realistic catalogue

REAL_SESSION_IDS = [
    715093703, 719161530, 721123822, 732592105, 737581020, 746083955, 751348571, 755434585,
    756029989, 759883607, 760693773, 763673393, 773418906, 774875821, 779839471, 791319847,
    797828357, 798911424, 799864342, 831882777, 839557629,
]  # fmt: skip
AREAS_BY_PROBE = {  # target area first, then what a probe track passes through
    "probeA": ["VISam", "CA1", "DG", "LP", "APN", "SUB", "POL"],
    "probeB": ["VISpm", "CA1", "CA3", "DG", "LP", "TH", "ProS"],
    "probeC": ["VISp", "CA1", "DG", "LGd", "LP", "CA3", "MB"],
    "probeD": ["VISl", "CA1", "DG", "LGd", "LGv", "CA2", "ZI"],
    "probeE": ["VISal", "CA1", "DG", "CA3", "PO", "Eth"],
    "probeF": ["VISrl", "CA1", "DG", "LP", "TH", "POL"],
}


def make_catalogue(seed: int = 7, n_sessions: int = 58) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    extra = [790000000 + 1000 * i + int(rng.integers(0, 999)) for i in range(n_sessions)]
    ids = sorted(set(REAL_SESSION_IDS) | set(extra[: n_sessions - len(REAL_SESSION_IDS)]))
    genotypes = np.array(["wt/wt"] * 30 + [SST] * 12 + [PVALB] * 8 + [VIP] * 8)
    rng.shuffle(genotypes)
    types = np.array([BO] * 32 + [FC] * 26)
    rng.shuffle(types)
    sessions = pd.DataFrame(
        {
            "id": ids,
            "published_at": "2019-10-03T00:00:00Z",
            "specimen_id": [700000000 + i * 37 for i in range(n_sessions)],
            "session_type": types,
            "age_in_days": rng.integers(96, 130, n_sessions).astype(float),
            "sex": rng.choice(["M", "F"], n_sessions, p=[0.7, 0.3]),
            "genotype": genotypes,
            "has_nwb": True,
        }
    ).set_index("id")
    prow, crow, urow = [], [], []
    pid, cid, uid = 800000000, 849000000, 950000000
    for sid in ids:
        names = list(AREAS_BY_PROBE)[: 6 if rng.random() < 0.85 else 5]
        for name in names:
            pid += 2
            prow.append(
                (pid, sid, 1250.0, name, rng.choice(["3a", "PXI"]), 30000.0, rng.random() > 0.03)
            )
            pool = AREAS_BY_PROBE[name]
            hit_target = rng.random() < 0.8
            areas = ([pool[0]] if hit_target else []) + list(
                rng.choice(pool[1:], size=int(rng.integers(2, 5)), replace=False)
            )
            n_ch = 40
            per = rng.multinomial(n_ch - 4, [1 / len(areas)] * len(areas))
            acr = [None] * 4 + [a for a, k in zip(areas, per, strict=True) for _ in range(k)]
            for i, a in enumerate(acr):
                cid += 2
                crow.append((cid, pid, i, a))
            n_units = int(rng.integers(150, 330))
            ch_ids = [c[0] for c in crow[-n_ch:]]
            for ch in rng.choice(ch_ids, size=n_units):
                uid += 1
                urow.append((uid, int(ch)))
    probes = pd.DataFrame(
        prow,
        columns=["id", "ecephys_session_id", "lfp_sampling_rate", "name", "phase", "sampling_rate",
                 "has_lfp_data"],
    ).set_index("id")  # fmt: skip
    channels = pd.DataFrame(
        crow, columns=["id", "ecephys_probe_id", "local_index", "ecephys_structure_acronym"]
    ).set_index("id")
    channels["ecephys_structure_id"] = channels["ecephys_structure_acronym"].map(
        lambda a: float(abs(hash(a)) % 1000) if isinstance(a, str) else NAN
    )
    n = len(urow)
    units = pd.DataFrame(
        {
            "id": [u for u, _ in urow],
            "ecephys_channel_id": [c for _, c in urow],
            "quality": rng.choice(["good", "noise"], n, p=[0.93, 0.07]),
            "isi_violations": rng.exponential(0.25, n),
            "presence_ratio": np.clip(rng.normal(0.975, 0.03, n), 0, 0.99),
            "amplitude_cutoff": np.where(rng.random(n) < 0.01, NAN, rng.exponential(0.05, n)),
            "snr": rng.gamma(2.0, 1.5, n),
        }
    ).set_index("id")
    return {"sessions": sessions, "probes": probes, "channels": channels, "units": units}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = write_tables(tmp_path_factory.mktemp("catalogue"), make_catalogue())
    return S.load_tables(out)


def tutorial_expressions(sessions: pd.DataFrame) -> dict[str, list[int]]:
    """The tutorials' pandas expressions, verbatim, over a session table."""
    out = {}
    # AllenSDK ecephys_quickstart.ipynb
    brain_observatory_type_sessions = sessions[sessions["session_type"] == "brain_observatory_1.1"]
    out["brain_observatory_sessions"] = list(brain_observatory_type_sessions.index)
    # AllenSDK ecephys_data_access.ipynb, verbatim except that the list comprehension is wrapped
    # in np.array(): pandas 3 no longer accepts `Series & list` (pandas GH#52264), so the
    # notebook's expression raises TypeError as written.
    filtered_sessions = sessions[(sessions.sex == 'M') & \
                                 (sessions.full_genotype.str.find('Sst') > -1) & \
                                 (sessions.session_type == 'brain_observatory_1.1') & \
                                 np.array(['VISl' in acronyms for acronyms in
                                           sessions.ecephys_structure_acronyms])]  # fmt: skip
    out["male_sst_visl_brain_observatory"] = list(filtered_sessions.index)
    out["unfiltered_units_first_male_sst_visl"] = list(filtered_sessions.index.values[:1])
    out["complete_dataset_with_lfp"] = list(sessions.index)
    out["functional_connectivity_sessions"] = list(
        sessions[sessions["session_type"] == "functional_connectivity"].index
    )
    # AllenSDK ecephys_optotagging.ipynb
    pvalb_sessions = sessions[sessions.full_genotype.str.match('Pvalb')]  # fmt: skip
    out["pvalb_sessions"] = list(pvalb_sessions.index)
    # SWDB 2023 databook, visual-coding-np/vcnp-data-access.md
    try:
        session_id = sessions[(sessions.unit_count>900)&(sessions.session_type=='brain_observatory_1.1')  # noqa: E501
                              &(sessions.full_genotype=='wt/wt')].index[0]  # fmt: skip
        out["wt_brain_observatory_over_900_units"] = [session_id]
    except IndexError:  # no such session: the spec must then select nothing
        out["wt_brain_observatory_over_900_units"] = []
    out["visp_sessions"] = [
        index for index, row in sessions.iterrows() if "VISp" in row.ecephys_structure_acronyms
    ]
    # AllenSDK ecephys_session.ipynb / SWDB 2023 vcnp-session.md
    out["one_session"] = [756029989] if 756029989 in sessions.index else []
    return out


EXAMPLE_NAMES = [
    "brain_observatory_sessions",
    "male_sst_visl_brain_observatory",
    "unfiltered_units_first_male_sst_visl",
    "complete_dataset_with_lfp",
    "functional_connectivity_sessions",
    "pvalb_sessions",
    "wt_brain_observatory_over_900_units",
    "visp_sessions",
    "one_session",
]


def test_every_example_has_a_test():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_selects_what_the_tutorial_expression_selects(name, catalogue):
    path = EXAMPLES / f"{name}.yaml"
    text = path.read_text()
    assert "Source:" in text and "pandas:" in text, "each example cites its notebook and expression"
    spec = S.load_spec(path)
    sel = S.resolve(spec, catalogue)
    # the tutorials filter AllenSDK's session table, which always uses the default unit filters
    expected = tutorial_expressions(S.session_table(catalogue))[name]
    assert len(expected) > 0, "catalogue too small to exercise this example"
    assert sel.session_ids == sorted(int(i) for i in expected)


def test_catalogue_matches_real_sizes(catalogue):
    st = S.session_table(catalogue)
    assert len(st) == 58 and st["probe_count"].between(5, 6).all()
    assert 20_000 < st["unit_count"].sum() < 60_000
    assert st["unit_count"].max() > 900


def test_default_config_spec_is_valid(catalogue):
    spec = S.load_spec(ROOT / "config" / "selection.yaml")
    sel = S.resolve(spec, catalogue)
    assert 1 <= len(sel.session_ids) <= 3


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    synth = pytest.importorskip("ecephys_pipeline.synth")
    out = tmp_path_factory.mktemp("synth") / "dataset"
    synth.make_dataset(out, seed=0, realistic=True, files="lazy")
    return out / "s3"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_on_synthetic_catalogue(name, synth_dir):
    """Same check on synth.make_dataset(realistic=True); an empty expression must raise."""
    tables = S.load_tables(synth_dir)
    expected = tutorial_expressions(S.session_table(tables))[name]
    spec = S.load_spec(EXAMPLES / f"{name}.yaml")
    if name == "one_session" and 756029989 not in tables["sessions"].index:
        with pytest.raises(S.SpecError, match="session id 756029989 in 'session_ids.include'"):
            S.resolve(spec, tables)
    elif not expected:
        with pytest.raises(S.SelectionError, match="matches no session"):
            S.resolve(spec, tables)
    else:
        assert S.resolve(spec, tables).session_ids == sorted(int(i) for i in expected)


def test_synthetic_catalogue_shape(synth_dir):
    tables = S.load_tables(synth_dir)
    st = S.session_table(tables)
    assert len(st) == 58
    assert st["session_type"].value_counts().to_dict() == {BO: 32, FC: 26}
    sel = S.resolve(S.load_spec(ROOT / "config" / "selection.yaml"), tables)
    assert len(sel.session_ids) == 2 and sel.fetch_lfp
    assert all(p["download_lfp"] == p["has_lfp_data"] for s in sel.to_dict()["sessions"]
               for p in s["probes"])  # fmt: skip


# --------------------------------------------------------------------------- AllenSDK oracle

ALLENSDK_PYTHON = os.environ.get("ALLENSDK_PYTHON", "/opt/allensdk-venv/bin/python")

ORACLE = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import pandas as pd
    from allensdk.brain_observatory.ecephys.ecephys_project_api import EcephysProjectFixedApi
    from allensdk.brain_observatory.ecephys.ecephys_project_api.http_engine import (
        write_from_stream,
    )
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache
    # EcephysProjectCache.fixed(manifest=...) is what we mean, but in AllenSDK 2.16.2 it raises
    # AttributeError ('EcephysProjectFixedApi' object has no attribute 'rma_engine'): __init__
    # evaluates `stream_writer or self.fetch_api.rma_engine.write_bytes` eagerly. Passing a
    # stream_writer builds the same fixed (offline, read-only) cache.
    cache = EcephysProjectCache(
        fetch_api=EcephysProjectFixedApi(), manifest=sys.argv[1], stream_writer=write_from_stream
    )
    def dump(df):
        out = {}
        for i, row in df.iterrows():
            d = {}
            for k, v in row.items():
                if k == "ecephys_structure_acronyms" and hasattr(v, "__iter__"):
                    v = [None if (isinstance(x, float) and x != x) else x for x in list(v)]
                elif hasattr(v, "item"):
                    v = v.item()
                if isinstance(v, float) and v != v:
                    v = None
                d[k] = v
            out[str(int(i))] = d
        return {"columns": list(df.columns), "index_name": df.index.name, "rows": out}
    tables = {"sessions": dump(cache.get_session_table()), "probes": dump(cache.get_probes())}
    print(json.dumps(tables))
    """
)


def allensdk_manifest() -> dict:
    entries = [{"type": "manifest_version", "value": "0.3.0"}]
    entries.append({"key": "BASEDIR", "type": "dir", "spec": "."})
    for key in ("sessions", "probes", "channels", "units"):
        entries.append({"key": key, "type": "file", "spec": f"{key}.csv", "parent_key": "BASEDIR"})
    entries += [
        {"key": "session_data", "type": "dir", "spec": "session_%d", "parent_key": "BASEDIR"},
        {"key": "session_nwb", "type": "file", "spec": "session_%d.nwb",
         "parent_key": "session_data"},
        {"key": "session_analysis_metrics", "type": "file",
         "spec": "session_%d_analysis_metrics.csv", "parent_key": "session_data"},
        {"key": "probe_lfp_nwb", "type": "file", "spec": "probe_%d_lfp.nwb",
         "parent_key": "session_data"},
        {"key": "movie_dir", "type": "dir", "spec": "natural_movie_templates",
         "parent_key": "BASEDIR"},
        {"key": "typewise_analysis_metrics", "type": "file", "spec": "%s_analysis_metrics.csv",
         "parent_key": "BASEDIR"},
        {"key": "natural_movie", "type": "file", "spec": "natural_movie_%d.h5",
         "parent_key": "movie_dir"},
        {"key": "natural_scene_dir", "type": "dir", "spec": "natural_scene_templates",
         "parent_key": "BASEDIR"},
        {"key": "natural_scene", "type": "file", "spec": "natural_scene_%d.tiff",
         "parent_key": "natural_scene_dir"},
    ]  # fmt: skip
    return {"manifest": entries}


def run_oracle(cache_dir: Path) -> dict:
    (cache_dir / "manifest.json").write_text(json.dumps(allensdk_manifest(), indent=2))
    proc = subprocess.run(
        [ALLENSDK_PYTHON, "-c", ORACLE, str(cache_dir / "manifest.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(df: pd.DataFrame) -> dict:
    rows = {}
    for i, row in df.iterrows():
        d = {}
        for k, v in row.items():
            if k == "ecephys_structure_acronyms":
                v = [None if (isinstance(x, float) and x != x) else x for x in v]
            elif hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and v != v:
                v = None
            d[k] = v
        rows[str(int(i))] = d
    return {"columns": list(df.columns), "index_name": df.index.name, "rows": rows}


def compare_with_allensdk(cache_dir: Path, skip_empty_acronyms: bool = False) -> None:
    oracle = run_oracle(cache_dir)
    tables = S.load_tables(cache_dir)
    for name, mine in (("sessions", S.session_table(tables)), ("probes", S.probe_table(tables))):
        theirs, mine = oracle[name], ours(mine)
        assert mine["columns"] == theirs["columns"], name
        assert mine["index_name"] == theirs["index_name"], name
        assert mine["rows"].keys() == theirs["rows"].keys(), name
        for rid, row in theirs["rows"].items():
            for col, value in row.items():
                got = mine["rows"][rid][col]
                if col == "ecephys_structure_acronyms" and value == 0:
                    assert got == [], (name, rid)  # AllenSDK puts 0 when there are no channels
                    continue
                if isinstance(value, float):
                    assert got == pytest.approx(value), (name, rid, col)
                else:
                    assert got == value, (name, rid, col)


needs_allensdk = pytest.mark.skipif(
    not Path(ALLENSDK_PYTHON).exists(),
    reason=f"AllenSDK oracle python not found: {ALLENSDK_PYTHON}",
)


@pytest.mark.allensdk
@needs_allensdk
def test_tiny_tables_match_allensdk(tmp_path):
    compare_with_allensdk(write_tables(tmp_path, tiny_tables()))


@pytest.mark.allensdk
@needs_allensdk
def test_catalogue_matches_allensdk(tmp_path):
    compare_with_allensdk(write_tables(tmp_path, make_catalogue()))


@pytest.mark.allensdk
@needs_allensdk
def test_synthetic_catalogue_matches_allensdk(synth_dir, tmp_path):
    for table in layout.TABLES:
        (tmp_path / f"{table}.csv").write_bytes((synth_dir / f"{table}.csv").read_bytes())
    compare_with_allensdk(tmp_path)


def test_module_runs_without_allensdk_installed():
    assert "allensdk" not in sys.modules
    assert yaml.safe_load("a: 1") == {"a": 1}


def test_readme_yaml_examples_are_valid_specs():
    text = (ROOT / "config" / "README.md").read_text()
    section = text.split("## Selection spec", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```yaml\n")[1:]
    assert len(blocks) >= 6
    for block in blocks:
        S.load_spec(yaml.safe_load(block.split("```", 1)[0]))
