"""The RMA client, the AllenSDK-shaped tables and the sources, against the real fake warehouse."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import requests

from ecephys_pipeline import layout, metadata, rma, sources, synth
from ecephys_pipeline.fake import FakeWarehouse

FAST = rma.RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05, read_timeout=10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.make_dataset(tmp_path_factory.mktemp("dataset") / "ds", seed=3)


@pytest.fixture()
def warehouse(dataset):
    with FakeWarehouse(dataset) as server:
        yield server


def records(dataset, model):
    return json.loads((dataset / "warehouse" / f"{model}.json").read_text())


# The strings EcephysProjectCache sends (allen-warehouse.md §1.4), copied verbatim.
DOC_QUERIES = {
    "sessions": "criteria=model::EcephysSession,rma::include,specimen(donor(age)),"
    "well_known_files(well_known_file_type)",
    "probes": "criteria=model::EcephysProbe",
    "channels": "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq"
    "'ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,"
    "probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,"
    "left_right_ccf_coordinate,structures.id as ecephys_structure_id,structures.acronym as "
    "ecephys_structure_acronym']",
    "units": "criteria=model::EcephysUnit",
}


def test_queries_are_the_ones_allensdk_sends():
    assert rma.TABLE_QUERIES == DOC_QUERIES
    assert rma.session_nwb_query(715093703) == (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb']"
        "[attachable_type$eq'EcephysSession'][attachable_id$eq715093703]"
    )
    assert rma.probe_lfp_query(810755797) == (
        "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb']"
        "[attachable_type$eq'EcephysProbe'][attachable_id$eq810755797]"
    )


def test_channels_page_url_on_the_wire_matches_allensdk():
    url = rma.page_url("http://api.brain-map.org", rma.TABLE_QUERIES["channels"], 0)
    wire = requests.Request("GET", url).prepare().url
    # the example recorded in allen-warehouse.md §1.2 (requests' percent-encoding)
    assert wire.startswith(
        "http://api.brain-map.org/api/v2/data/query.json?criteria=model::EcephysChannel,"
        "rma::include,structure,rma::options%5Btabular$eq'ecephys_channels.id,"
    )
    assert "structures.id%20as%20ecephys_structure_id" in wire
    assert wire.endswith(",rma::options%5Bstart_row$eq0%5D%5Bnum_rows$eq5000%5D%5Border$eq'id'%5D")


@pytest.mark.parametrize("table", layout.TABLES)
def test_tables_have_allensdk_columns(warehouse, dataset, table):
    df = metadata.fetch_table(table, warehouse.url, policy=FAST)
    assert df.index.name == "id"
    expected_rows = {
        "sessions": "EcephysSession",
        "probes": "EcephysProbe",
        "channels": "EcephysChannel",
        "units": "EcephysUnit",
    }[table]
    raw = records(dataset, expected_rows)
    if table == "channels":  # the warehouse serves valid channels only
        raw = [r for r in raw if r.get("valid_data", True)]
    assert sorted(df.index) == sorted(r["id"] for r in raw)
    columns = set(df.columns)
    if table == "sessions":
        assert {"session_type", "age_in_days", "sex", "genotype", "has_nwb"} <= columns
        assert not {"specimen", "well_known_files", "fail_eye_tracking", "stimulus_name"} & columns
        assert df["has_nwb"].all()
        assert set(df["session_type"]) == {"brain_observatory_1.1", "functional_connectivity"}
    elif table == "probes":
        assert {"ecephys_session_id", "name", "has_lfp_data", "sampling_rate"} <= columns
        assert "use_lfp_data" not in columns
        assert (~df["has_lfp_data"]).any(), "the synthetic dataset has a probe without LFP"
    elif table == "channels":
        assert list(df.columns) == [c.split(" as ")[-1] for c in rma.CHANNEL_COLUMNS[1:]]
    else:
        assert {"ecephys_channel_id", "quality", "amplitude_cutoff", "PT_ratio"} <= columns


def test_paging_gives_the_same_rows_as_one_page(warehouse):
    whole = rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], policy=FAST)
    paged = rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], page_size=7, policy=FAST)
    assert paged == whole
    starts = [r["path"] + r.get("query", "") for r in warehouse.requests if "EcephysUnit" in str(r)]
    assert len(starts) >= 1 + (len(whole) + 6) // 7


def test_csv_round_trip_is_what_allensdk_reads(warehouse, tmp_path):
    df = metadata.fetch_table("sessions", warehouse.url, policy=FAST)
    path = tmp_path / "sessions.csv"
    metadata.write_table_csv(df, path)
    back = metadata.read_table(path)
    pd.testing.assert_frame_equal(back, pd.read_csv(path, index_col="id"))
    assert list(back.columns) == list(df.columns)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_cache_manifest_is_allensdk_0_3_0(tmp_path):
    path = metadata.write_cache_manifest(tmp_path)
    manifest = json.loads(path.read_text())["manifest"]
    assert manifest[0] == {"type": "manifest_version", "value": "0.3.0"}
    keys = {e["key"]: e for e in manifest[1:]}
    assert keys["session_nwb"] == {
        "key": "session_nwb",
        "type": "file",
        "spec": "session_%d.nwb",
        "parent_key": "session_data",
    }
    assert keys["probe_lfp_nwb"]["spec"] == "probe_%d_lfp.nwb"
    assert path.read_text().startswith('{\n  "manifest": [\n')


def test_refused_query_is_a_clear_error(warehouse):
    warehouse.set_faults([{"kind": "rma_error", "match": "query.json", "msg": "boom: bad field"}])
    with pytest.raises(rma.RmaError, match="boom: bad field"):
        metadata.fetch_table("probes", warehouse.url, policy=FAST)


def test_zero_row_page_is_an_error_not_an_endless_loop(warehouse):
    warehouse.set_faults([{"kind": "rma_zero_rows", "match": "query.json"}])
    with pytest.raises(rma.RmaError, match="(no rows|loop forever)"):
        rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], page_size=5, policy=FAST)


def test_server_errors_are_retried(warehouse):
    warehouse.set_faults(
        [{"kind": "status", "match": "query.json", "code": 503, "retry_after": 0, "times": 2}]
    )
    df = metadata.fetch_table("probes", warehouse.url, policy=FAST)
    assert len(df) > 0
    statuses = [r["status"] for r in warehouse.requests if "query.json" in r["path"]]
    assert statuses[:3] == [503, 503, 200]


def test_persistent_server_errors_name_the_url_and_each_attempt(warehouse):
    warehouse.set_faults([{"kind": "status", "match": "query.json", "code": 500}])
    with pytest.raises(rma.RmaError) as err:
        metadata.fetch_table("probes", warehouse.url, policy=FAST)
    message = str(err.value)
    assert "EcephysProbe" in message and message.count("HTTP 500") == FAST.attempts


def test_warehouse_file_urls_are_allensdk_double_slash_links(warehouse, dataset):
    source = sources.Source("warehouse", warehouse.url)
    session = records(dataset, "EcephysSession")[0]
    url = sources.nwb_url(source, session["id"], policy=FAST)
    assert url.startswith(warehouse.url + "//api/v2/well_known_file_download/")
    response = requests.head(url, timeout=10)
    assert response.status_code == 200 and int(response.headers["Content-Length"]) > 0


def test_probe_without_lfp_is_named(warehouse, dataset):
    source = sources.Source("warehouse", warehouse.url)
    probe = next(p for p in records(dataset, "EcephysProbe") if not p["use_lfp_data"])
    with pytest.raises(sources.SourceError, match=f"probe {probe['id']}.*has_lfp_data"):
        sources.nwb_url(source, probe["ecephys_session_id"], probe["id"], policy=FAST)


def test_s3_and_local_sources_give_the_warehouse_tables(warehouse, dataset):
    from_warehouse = sources.fetch_table(sources.Source("warehouse", warehouse.url), "units")
    from_s3 = sources.fetch_table(sources.Source("s3", warehouse.url), "units")
    from_local = sources.fetch_table(sources.Source("local", str(dataset / "s3")), "units")
    for other in (from_s3, from_local):
        pd.testing.assert_frame_equal(
            other.sort_index(), from_warehouse.sort_index(), check_dtype=False
        )
