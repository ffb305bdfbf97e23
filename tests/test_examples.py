"""config/examples/: every spec resolves on the demo catalogue it is meant for.

The examples name real session ids, genotypes and areas, so they run on the realistic demo
(``config/demo_realistic.yaml``: the 58 real sessions); the ones marked DEFAULT_DEMO also select
something on the default two-session demo. The catalogues are fetched from the real fake
warehouse over HTTP, as the workflow fetches them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecephys_pipeline import config, layout, selection, sources

fake = pytest.importorskip("ecephys_pipeline.fake")
synth = pytest.importorskip("ecephys_pipeline.synth")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "config/examples").glob("*.yaml"))
# the examples whose query the default demo's synthetic catalogue also answers
DEFAULT_DEMO = {
    "brain_observatory_sessions.yaml",
    "complete_dataset_with_lfp.yaml",
    "functional_connectivity_sessions.yaml",
    "visp_sessions.yaml",
}
# the realistic demo has the real ids, types, genotypes and areas but synthetic unit counts
# (tens per session): "> 900 units" selects a session on the real service only
REAL_DATA_ONLY = {"wt_brain_observatory_over_900_units.yaml"}


def catalogue(dataset: Path) -> dict:
    with fake.FakeWarehouse(dataset) as warehouse:
        source = sources.Source(kind="warehouse", url=warehouse.url)
        return {t: sources.fetch_table(source, t) for t in layout.TABLES}


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    dataset = tmp_path_factory.mktemp("realistic") / "dataset"
    synth.make_dataset(dataset, seed=0, realistic=True, files="lazy")
    return catalogue(dataset)


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    dataset = tmp_path_factory.mktemp("default") / "dataset"
    synth.make_dataset(dataset, seed=0, sessions=2)
    return catalogue(dataset)


def test_the_realistic_demo_config_is_the_demo_with_real_ids():
    cfg = config.load_workflow_config(REPO / "config/demo_realistic.yaml")
    assert cfg["demo"]["enabled"] and cfg["demo"]["realistic"]
    default = config.load_workflow_config(REPO / "config/demo.yaml")
    assert cfg["cache_dir"] != default["cache_dir"], "its tables never mix with the default's"
    assert Path(cfg["demo"]["dataset_dir"]).parent != Path(default["demo"]["dataset_dir"]).parent


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_selects_sessions_on_the_realistic_demo(example, realistic):
    spec = config.load_spec(example)
    if example.name in REAL_DATA_ONLY:
        with pytest.raises(selection.SelectionError, match="filter 'unit_count' removed"):
            selection.resolve(spec, realistic)
        return
    chosen = selection.resolve(spec, realistic).to_dict()
    assert chosen["sessions"], f"{example.name} selects nothing on the realistic demo"
    raw = yaml.safe_load(example.read_text()) or {}
    if raw.get("limit"):
        assert len(chosen["sessions"]) <= raw["limit"]
    ids = raw.get("session_ids", {}).get("include")
    if ids:
        assert [s["session_id"] for s in chosen["sessions"]] == ids


def test_one_session_is_the_tutorials_session(realistic):
    chosen = selection.resolve(
        config.load_spec(REPO / "config/examples/one_session.yaml"), realistic
    ).to_dict()
    assert [s["session_id"] for s in chosen["sessions"]] == [756029989]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_which_examples_run_on_the_default_demo(example, default_demo):
    spec = config.load_spec(example)
    if example.name in DEFAULT_DEMO:
        assert selection.resolve(spec, default_demo).to_dict()["sessions"]
    else:
        with pytest.raises((selection.SelectionError, ValueError)):
            selection.resolve(spec, default_demo)
