"""Loading and checking the workflow config and the selection spec (ecephys_pipeline.config):
real YAML files, the package's own schemas, and the messages a person sees from the CLI and from
a real ``snakemake -n``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import workflow_helpers as helpers
from ecephys_pipeline import config as C
from ecephys_pipeline.layout import TABLES

REPO = Path(__file__).resolve().parents[1]
VALID_TOP_KEYS = (
    "analysis, cache_dir, dandi, demo, download, download_on_submit_host, lfp_arrays, lock_file, "
    "mirrors, selection, source"
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A directory with the repository's config/ (relative paths resolve against it)."""
    (tmp_path / "config").mkdir()
    for name in ("config.yaml", "demo.yaml", "selection.yaml"):
        (tmp_path / "config" / name).write_text((REPO / "config" / name).read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def demo_with(workdir: Path, old: str, new: str, name: str = "bad.yaml") -> str:
    text = (workdir / "config/demo.yaml").read_text()
    assert old in text
    (workdir / "config" / name).write_text(text.replace(old, new, 1))
    return f"config/{name}"


# --------------------------------------------------------------------------------- schemas


def test_schemas_ship_in_the_package_and_the_workflow_reads_the_same_files():
    for name in C.SCHEMAS:
        path = C.schema_path(name)
        assert path.parent == REPO / "src/ecephys_pipeline/schemas", path
        assert (REPO / "workflow/schemas" / path.name).resolve() == path.resolve()
        assert C.load_schema(name) == yaml.safe_load(path.read_text())
    assert "schemas/*.yaml" in (REPO / "pyproject.toml").read_text()


def test_config_schema_has_description_and_default_everywhere():
    schema = C.load_schema("config")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, path):
        extra = node.get("additionalProperties")
        if node.get("type") == "object" or "properties" in node:
            # a closed mapping, or a mapping of free names (e.g. stimulus -> bins) to one schema
            assert extra is False or isinstance(extra, dict), path
        required = set(node.get("required", ()))
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}.{key} has no description"
            assert "default" in sub or key in required, f"{path}.{key} has no default"
            walk(sub, f"{path}.{key}")
        if isinstance(extra, dict):
            walk(extra, f"{path}.<name>")

    walk(schema, "config")


def leaf_keys(node, prefix=""):
    """(dotted key, schema) of every key that is not a mapping of further keys."""
    for key, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from leaf_keys(sub, f"{prefix}{key}.")
        else:
            yield prefix + key, sub


@pytest.mark.parametrize(("name", "default_column"), [("config", 1), ("selection", 2)])
def test_readme_documents_every_key_with_the_schema_default(name, default_column):
    rows = {}
    for line in (REPO / "config/README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > default_column and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), cells[default_column])
    for key, sub in leaf_keys(C.load_schema(name)):
        assert key in rows, f"config/README.md does not document {name} key {key}"
        assert yaml.safe_load(rows[key].strip("`")) == sub["default"], (key, rows[key])


# ---------------------------------------------------------------------------- config errors


def test_workflow_config_is_the_demo_with_defaults(workdir):
    config = C.load_workflow_config("config/demo.yaml")
    assert config["cache_dir"] == "resources/allen_cache" and config["demo"]["enabled"] is True
    assert config["source"]["url"] == "https://api.brain-map.org"  # from config/config.yaml
    assert config["download"]["max_attempts"] == 8  # a schema default


def test_misspelt_config_key_names_file_key_and_nearest(workdir):
    bad = demo_with(workdir, "cache_dir:", "cach_dir:")
    with pytest.raises(C.ConfigError) as exc:
        C.load_workflow_config(bad)
    assert str(exc.value) == (
        "config (config/bad.yaml): unknown key 'cach_dir' at the top level; did you mean "
        f"'cache_dir'? (valid keys: {VALID_TOP_KEYS})"
    )
    assert isinstance(exc.value, ValueError)


def test_every_config_problem_at_once_one_line_each(workdir):
    bad = demo_with(
        workdir,
        "  read_timeout_s: 30\n  connections_per_file: 1\n",
        "  read_timeout_s: 0\n  connections_per_file: 20\n  max_attemps: 3\n",
    )
    with pytest.raises(C.ConfigError) as exc:
        C.load_workflow_config(bad)
    assert exc.value.problems == [
        "unknown key 'max_attemps' under 'download'; did you mean 'max_attempts'? (valid keys: "
        "connections_per_file, max_attempts, preflight, read_timeout_s, reserve_free_gb, "
        "verify_hdf5)",
        "'download.connections_per_file' must be <= 16, got 20",
        "'download.read_timeout_s' must be > 0, got 0",
    ]
    assert str(exc.value).startswith("config (config/bad.yaml) has 3 problems:\n  - unknown")
    assert "Failed validating" not in str(exc.value) and "{" not in str(exc.value)


def test_config_type_and_enum_errors(workdir):
    bad = demo_with(workdir, "kind: warehouse", "kind: warehous")
    with pytest.raises(C.ConfigError, match=r"'source.kind' is \"warehous\", not an allowed "):
        C.load_workflow_config(bad)
    bad = demo_with(workdir, "seed: 0", "seed: zero")
    with pytest.raises(C.ConfigError, match=r"'demo.seed' must be an integer, got string \"zero\""):
        C.load_workflow_config(bad)


def test_a_required_key_missing_is_named():
    with pytest.raises(C.ConfigError) as exc:
        C.check_config({"source": {}, "selection": "s.yaml"})
    (problem,) = exc.value.problems
    assert problem.startswith("key 'cache_dir' is required at the top level (Directory of")


def test_command_line_values_are_blamed_on_config(workdir):
    merged = C.merge(yaml.safe_load(Path("config/demo.yaml").read_text()), {"cach_dir": "x"})
    with pytest.raises(C.ConfigError, match=r"^config \(--config\): unknown key 'cach_dir'"):
        C.check_config(merged, files=["config/demo.yaml"], command_line={"cach_dir": "x"})


def test_missing_config_file(workdir):
    with pytest.raises(
        C.ConfigError, match=r"^config \(nope.yaml\): file nope.yaml does not exist"
    ):
        C.load_workflow_config("nope.yaml")


# ----------------------------------------------------------------------------- duplicate keys


def test_a_repeated_key_is_refused_with_its_lines(workdir):
    bad = demo_with(workdir, "lock_file: null\n", "lock_file: null\ncache_dir: elsewhere\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load_workflow_config(bad)
    lines = Path(bad).read_text().splitlines()
    first, second = [i + 1 for i, line in enumerate(lines) if line.startswith("cache_dir:")]
    assert str(exc.value) == (
        f"config (config/bad.yaml): line {second}: key 'cache_dir' appears twice (first on line "
        f"{first}); keep one"
    )


def test_a_repeated_nested_key_and_in_a_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("unit_filters:\n  quality: good\n  quality: null\nlimit: 1\n")
    with pytest.raises(C.SpecError) as exc:
        C.load_spec(path)
    assert str(exc.value) == (
        f"selection spec ({path}): line 3: key 'quality' appears twice (first on line 2); keep one"
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert C.read_yaml(path) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


def test_a_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("session_types: [brain_observatory_1.1\n")
    with pytest.raises(C.SpecError) as exc:
        C.load_spec(path)
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"selection spec ({path}): not valid YAML: line 2, column 1")


# ------------------------------------------------------- what a person sees: CLI, snakemake


def plan(workdir: Path, configfile: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecephys_pipeline", "plan", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_one_error_line_and_exits_2(workdir):
    proc = plan(workdir, demo_with(workdir, "cache_dir:", "cach_dir:"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "error: config (config/bad.yaml): unknown key 'cach_dir' at the top level; did you mean "
        f"'cache_dir'? (valid keys: {VALID_TOP_KEYS})\n"
    )
    (workdir / "config/spec.yaml").write_text("sesion_types: [brain_observatory_1.1]\n")
    proc = plan(workdir, demo_with(workdir, "config/selection.yaml", "config/spec.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: selection spec (config/spec.yaml): unknown key 'sesion_types' at the top level; "
        "did you mean 'session_types'?"
    )
    assert len(proc.stderr.splitlines()) == 1
    assert not (workdir / "resources").exists(), "the demo was started for a bad spec"


def snakemake_dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*helpers.SNAKEMAKE, "-n", *args], cwd=workdir, capture_output=True, text=True, timeout=300
    )


def test_snakemake_stops_on_a_bad_config_or_spec_with_one_line(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    bad = demo_with(workdir, "cache_dir:", "cach_dir:")
    proc = snakemake_dry_run(workdir, "--configfile", bad)
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if not line.startswith(("Using ", "Config "))]
    assert err == [
        "error: config (config/bad.yaml): unknown key 'cach_dir' at the top level; did you mean "
        f"'cache_dir'? (valid keys: {VALID_TOP_KEYS})"
    ], proc.stderr

    (workdir / "config/spec.yaml").write_text("limit: 1\nfetch_lfp: true\nlimit: 2\n")
    args = ("--configfile", "config/demo.yaml", "--config", "selection=config/spec.yaml")
    proc = snakemake_dry_run(workdir, *args)
    assert proc.returncode == 1
    assert (
        "error: selection spec (config/spec.yaml): line 3: key 'limit' appears twice "
        "(first on line 1); keep one\n"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr

    proc = snakemake_dry_run(workdir, "--configfile", "config/demo.yaml")
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------ hostile input (issue 12 items 8, 9, 10)


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def spec_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(C.SpecError) as err:
        C.load_spec(spec_file(tmp_path, text))
    return str(err.value)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "fetch_lfp: true\n"])
def test_a_spec_file_that_narrows_nothing_is_refused(tmp_path, text):
    message = spec_error(tmp_path, text)
    assert "would select the whole dataset" in message and "'all: true'" in message
    assert len(message.splitlines()) == 1


def test_all_true_selects_everything_and_excludes_filters(tmp_path):
    assert C.load_spec(spec_file(tmp_path, "all: true\nfetch_lfp: true\n"))["all"] is True
    message = spec_error(tmp_path, "all: true\nlimit: 2\n")
    assert "'all: true' selects every session, but the spec also narrows it with limit" in message
    assert C.load_spec({})["limit"] is None, "a mapping in code is taken as it is"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "limit: 2\nunit_filters: {amplitude_cutoff_maximum: .nan}\n",
            "'unit_filters.amplitude_cutoff_maximum' is nan, not a number; use null",
        ),
        (
            "limit: 2\nunit_filters: {isi_violations_maximum: .inf}\n",
            "'unit_filters.isi_violations_maximum' is inf, not a number",
        ),
        (
            "limit: 2\nunit_filters: {presence_ratio_minimum: 5}\n",
            "'unit_filters.presence_ratio_minimum' must be <= 1, got 5",
        ),
        ("limit: 1.0\n", "'limit' must be an integer or null, got number 1.0"),
    ],
)
def test_numbers_a_filter_cannot_mean_are_refused(tmp_path, text, expected):
    assert expected in spec_error(tmp_path, text)


def test_an_unknown_quality_label_is_refused_against_the_units_table(tmp_path):
    from ecephys_pipeline import selection, synth

    dataset = synth.make_dataset(tmp_path / "ds", seed=0, sessions=2, files="lazy")
    tables = {t: selection.metadata.read_table(dataset / "s3" / f"{t}.csv") for t in TABLES}
    spec = spec_file(tmp_path, "limit: 2\nunit_filters: {quality: goood}\n")
    with pytest.raises(C.SpecError) as err:
        selection.resolve(spec, tables)
    assert "unknown unit quality label 'goood' in 'unit_filters.quality'" in str(err.value)
    assert "did you mean 'good'?" in str(err.value)


def test_filters_that_remove_every_unit_say_so(tmp_path, caplog):
    from ecephys_pipeline import selection, synth

    dataset = synth.make_dataset(tmp_path / "ds", seed=0, sessions=2, files="lazy")
    tables = {t: selection.metadata.read_table(dataset / "s3" / f"{t}.csv") for t in TABLES}
    spec = spec_file(tmp_path, "limit: 2\nunit_filters: {amplitude_cutoff_maximum: 0}\n")
    with caplog.at_level("WARNING", logger="ecephys_pipeline.selection"):
        chosen = selection.resolve(spec, tables)
    assert len(chosen.session_ids) == 2
    assert "the unit filters leave no unit in 2 of the 2 selected session(s)" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('""', "'cache_dir' must not be an empty string"),
        ("resources/{x}", "'cache_dir' is \"resources/{x}\": it holds a brace; Snakemake reads"),
    ],
)
def test_cache_dir_is_a_usable_path(workdir, value, expected):
    bad = demo_with(workdir, "cache_dir: resources/allen_cache", f"cache_dir: {value}")
    with pytest.raises(C.ConfigError) as err:
        C.load_workflow_config(bad)
    assert f"config (config/bad.yaml): {expected}" in str(err.value)


def test_snakemake_refuses_an_empty_spec_in_one_line(tmp_path):
    workdir = helpers.copy_workflow(tmp_path / "wf")
    (workdir / "config/spec.yaml").write_text("")
    args = ("--configfile", "config/demo.yaml", "--config", "selection=config/spec.yaml")
    proc = snakemake_dry_run(workdir, *args)
    assert proc.returncode == 1
    assert "error: selection spec (config/spec.yaml): the spec names no filter" in proc.stderr
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr
