"""The RMA client, the AllenSDK-shaped tables and the sources, against the real fake warehouse."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from email.utils import formatdate

import pandas as pd
import pytest
import requests
import yaml

import workflow_helpers as helpers
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


def test_s3_table_errors_name_the_url_and_each_attempt(warehouse):
    warehouse.set_faults([{"kind": "status", "match": "units.csv", "code": 503, "retry_after": 0}])
    with pytest.raises(sources.SourceError) as err:
        sources.fetch_table(sources.Source("s3", warehouse.url), "units", policy=FAST)
    message = str(err.value)
    assert "ecephys-cache/units.csv" in message and message.count("HTTP 503") == FAST.attempts


def test_s3_table_missing_is_not_retried(warehouse):
    warehouse.set_faults([{"kind": "status", "match": "units.csv", "code": 404}])
    with pytest.raises(sources.SourceError, match="HTTP 404"):
        sources.fetch_table(sources.Source("s3", warehouse.url), "units", policy=FAST)
    assert [r["status"] for r in warehouse.requests if "units.csv" in r["path"]] == [404]


# ------------------------------------------------------------------ timeouts, deadline, backoff


def test_retry_policy_defaults_are_the_config_schema_defaults():
    schema = yaml.safe_load((helpers.REPO / "workflow/schemas/config.schema.yaml").read_text())
    download = schema["properties"]["download"]["properties"]
    default = rma.RetryPolicy()
    assert default.attempts == download["max_attempts"]["default"]
    assert default.read_timeout == download["read_timeout_s"]["default"]
    policy = rma.RetryPolicy.from_config({"download": {"max_attempts": 3, "read_timeout_s": 7.5}})
    assert (policy.attempts, policy.read_timeout) == (3, 7.5)
    slow = rma.RetryPolicy.from_config({"download": {"max_attempts": 3, "read_timeout_s": 600}})
    assert slow.deadline > slow.read_timeout, "the deadline never cuts before one read timeout"


@pytest.mark.parametrize("kind", ["warehouse", "s3"])
def test_trickling_server_is_cut_at_the_deadline(warehouse, kind):
    # one byte every 0.2 s: every read is quick, only an overall deadline ends the request
    match = "EcephysProbe" if kind == "warehouse" else "probes.csv"
    warehouse.set_faults([{"kind": "bandwidth", "bytes_per_second": 5, "match": match}])
    policy = dataclasses.replace(FAST, attempts=2, read_timeout=2, deadline=1)
    started = time.monotonic()
    with pytest.raises((rma.RmaError, sources.SourceError)) as err:
        sources.fetch_table(sources.Source(kind, warehouse.url), "probes", policy=policy)
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert message.count("deadline of 1 s") == 2, message
    assert "\n" not in message
    assert elapsed < 10, f"{elapsed:.1f} s: the body alone would take minutes at 5 B/s"


def test_stalled_server_costs_the_policy_read_timeout(warehouse):
    warehouse.set_faults(
        [{"kind": "stall", "after_bytes": 10, "seconds": 30, "match": "EcephysProbe"}]
    )
    policy = dataclasses.replace(FAST, attempts=2, read_timeout=0.3)
    with pytest.raises(rma.RmaError) as err:
        metadata.fetch_table("probes", warehouse.url, policy=policy)
    assert str(err.value).count("read timeout of 0.3 s") == 2, str(err.value)


def test_retry_after_is_honoured_in_both_forms_and_capped(warehouse, caplog):
    caplog.set_level(logging.WARNING)
    for form in ("seconds", "date"):
        retry_after = 1 if form == "seconds" else formatdate(time.time() + 2.5, usegmt=True)
        warehouse.set_faults(
            [{"kind": "status", "match": "EcephysProbe", "code": 503, "retry_after": retry_after,
              "times": 1}]
        )  # fmt: skip
        started = time.monotonic()
        assert len(metadata.fetch_table("probes", warehouse.url, policy=FAST)) > 0
        assert time.monotonic() - started >= 0.9, f"Retry-After {retry_after} not honoured"
    assert "retrying in" in caplog.text and "HTTP 503" in caplog.text, "retries are not silent"
    warehouse.set_faults(
        [{"kind": "status", "match": "EcephysProbe", "code": 429, "retry_after": 3600, "times": 1}]
    )
    started = time.monotonic()
    capped = dataclasses.replace(FAST, retry_after_max=0.2)
    assert len(metadata.fetch_table("probes", warehouse.url, policy=capped)) > 0
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("url", ["api.brain-map.org", "ftp://api.brain-map.org"])
def test_a_source_url_that_is_no_url_is_not_retried(url, caplog):
    with pytest.raises(rma.RmaError, match="not a URL .*check source.url"):
        metadata.fetch_table("units", url, policy=dataclasses.replace(FAST, backoff_base=10))
    assert "retrying" not in caplog.text


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert rma.parse_retry_after("120", now=now) == 120
    assert rma.parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30
    assert rma.parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0
    for junk in (None, "", "soon", "-5", "1.5e9999"):
        assert rma.parse_retry_after(junk, now=now) is None


# ------------------------------------------------------------------------------- paging guard


def test_a_page_that_repeats_rows_is_an_error(warehouse):
    warehouse.set_faults([{"kind": "rma_repeat_page", "total_rows": 40, "match": "EcephysUnit"}])
    with pytest.raises(rma.RmaError, match="repeats rows already received"):
        rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], page_size=5, policy=FAST)


def test_absurd_total_rows_is_an_error_not_a_billion_requests(warehouse):
    warehouse.set_faults([{"kind": "rma_repeat_page", "match": "EcephysUnit"}])  # 10**9 rows
    with pytest.raises(rma.RmaError, match="total_rows=1000000000"):
        rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], page_size=5, policy=FAST)
    assert len([r for r in warehouse.requests if "EcephysUnit" in r["query"]]) == 1


def test_total_rows_that_changes_between_pages_is_an_error(warehouse):
    n = len(rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], policy=FAST))
    warehouse.set_faults(
        [{"kind": "rma_total_rows", "total_rows": n + 5, "match": "EcephysUnit", "times": 1}]
    )
    with pytest.raises(rma.RmaError, match=f"total_rows changed from {n + 5} to {n}"):
        rma.fetch_rows(warehouse.url, rma.TABLE_QUERIES["units"], page_size=5, policy=FAST)


# ------------------------------------------------------------------------------- hostile rows

HOSTILE_IDS = ["../../etc", -715093703, 715093703.5, "715093703x", 0]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_session_ids_are_one_line(warehouse, bad):
    warehouse.set_faults([{"kind": "rma_row", "index": 1, "set": {"id": bad}, "match": "Session"}])
    with pytest.raises(metadata.MetadataError) as err:
        metadata.fetch_table("sessions", warehouse.url, policy=FAST)
    message = str(err.value)
    assert message.startswith("the source's sessions table has a row with id")
    assert repr(bad) in message and "\n" not in message


@pytest.mark.parametrize(
    "table, model, column",
    [
        ("probes", "EcephysProbe", "id"),
        ("probes", "EcephysProbe", "ecephys_session_id"),
        ("channels", "EcephysChannel", "ecephys_probe_id"),
        ("units", "EcephysUnit", "id"),
        ("units", "EcephysUnit", "ecephys_channel_id"),
    ],
)
def test_hostile_ids_in_any_table_are_one_line(warehouse, table, model, column):
    warehouse.set_faults([{"kind": "rma_row", "set": {column: "../../etc"}, "match": model}])
    with pytest.raises(metadata.MetadataError) as err:
        metadata.fetch_table(table, warehouse.url, policy=FAST)
    message = str(err.value)
    assert f"{table} table" in message and column in message and "'../../etc'" in message


@pytest.mark.parametrize(
    "drop",
    ["specimen", "specimen.donor", "specimen.donor.age", "specimen.donor.age.days",
     "well_known_files"],
)  # fmt: skip
def test_session_rows_without_nested_fields_are_one_line(warehouse, dataset, drop):
    sid = sorted(r["id"] for r in records(dataset, "EcephysSession"))[1]
    warehouse.set_faults([{"kind": "rma_row", "index": 1, "drop": [drop], "match": "Session"}])
    with pytest.raises(metadata.MetadataError) as err:
        metadata.fetch_table("sessions", warehouse.url, policy=FAST)
    message = str(err.value)
    assert f"sessions table has a row (id {sid}) without {drop}" in message, message


def _no_id_column(df, path):
    df.reset_index(drop=True).to_csv(path, index=False)


def _hostile_id(df, path):
    df.rename(index={df.index[0]: "../../etc"}).to_csv(path)


def _another_catalogue(df, path):  # the columns of some other table
    df.drop(columns=["ecephys_channel_id"]).to_csv(path)


def _empty(df, path):
    path.write_text("")


def _binary(df, path):
    path.write_bytes(bytes(range(256)) * 4)


@pytest.mark.parametrize(
    "write, needle",
    [
        (_no_id_column, "no 'id' column"),
        (_hostile_id, "'../../etc'"),
        (_another_catalogue, "ecephys_channel_id"),
        (_empty, "empty"),
        (_binary, "not a CSV"),
    ],
)
def test_stale_cached_tables_name_the_file_and_the_fix(warehouse, tmp_path, write, needle):
    units = metadata.fetch_table("units", warehouse.url, policy=FAST)
    path = tmp_path / "units.csv"
    write(units, path)
    with pytest.raises(metadata.MetadataError) as err:
        metadata.read_table(path)
    message = str(err.value)
    assert str(path) in message and needle in message and "delete" in message, message
    assert "\n" not in message


def test_hostile_s3_csv_is_one_line(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset / "warehouse", copy / "warehouse")
    shutil.copytree(dataset / "s3", copy / "s3")
    shutil.copy2(dataset / "dataset.json", copy / "dataset.json")
    probes = pd.read_csv(copy / "s3/probes.csv", index_col="id")
    probes.rename(index={probes.index[0]: -715093703}).to_csv(copy / "s3/probes.csv")
    with FakeWarehouse(copy) as server:
        with pytest.raises(metadata.MetadataError) as err:
            sources.fetch_table(sources.Source("s3", server.url), "probes", policy=FAST)
    message = str(err.value)
    assert "probes.csv" in message and "-715093703" in message and "\n" not in message


# ---------------------------------------------------------------- the rule script and the CLI


def _workflow_config(workdir, url: str, **download) -> str:
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    config["demo"]["enabled"] = False
    config["source"] = {"kind": "warehouse", "url": url}
    config["mirrors"] = None  # the source alone
    config["dandi"] = {"verify_digests": False}
    config["download"].update(download)
    (workdir / "config/test.yaml").write_text(yaml.safe_dump(config))
    return "config/test.yaml"


@pytest.mark.e2e
def test_metadata_rule_uses_the_config_and_fails_in_one_line(warehouse, tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    configfile = _workflow_config(workdir, warehouse.url, read_timeout_s=0.5, max_attempts=2)

    def fetch(table: str) -> str:
        proc = subprocess.run(
            [*helpers.SNAKEMAKE, f"resources/allen_cache/{table}.csv", "--configfile", configfile],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0
        assert not (workdir / f"resources/allen_cache/{table}.csv").exists()
        log = (workdir / f"logs/metadata/{table}.log").read_text()
        assert "Traceback" not in log, log
        return log.strip().splitlines()[-1]

    warehouse.set_faults([{"kind": "stall", "after_bytes": 0, "seconds": 30, "match": "Probe"}])
    last = fetch("probes")
    assert last.startswith("error: RMA query") and "failed 2 times" in last, last
    assert last.count("read timeout of 0.5 s") == 2, last
    warehouse.set_faults([{"kind": "rma_row", "set": {"id": "../../etc"}, "match": "Session"}])
    last = fetch("sessions")
    assert last.startswith("error: the source's sessions table has a row with id '../../etc'")


@pytest.mark.e2e
def test_plan_on_an_unreachable_source_exits_2_with_one_line(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configfile = _workflow_config(workdir, f"http://127.0.0.1:{port}", max_attempts=2)
    proc = subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "plan", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: RMA query") and f"127.0.0.1:{port}" in last, last
    assert "connection refused" in last.lower(), last
