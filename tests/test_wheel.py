"""The package as a user installs it: built into a wheel, installed into a fresh virtualenv, run
from a directory outside the checkout.

The fresh virtualenv gets the dependencies of the test interpreter's environment through a
``.pth`` line (its site-packages as a plain path: the ``.pth`` files there, among them the
editable install's link to a source tree, are not processed), never the source tree itself, so
a file the package needs but the wheel lacks (its JSON Schemas, say) fails here. CI also installs
the wheel with its dependencies from the index (``.ci/wheel-check.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]

# AllenSDK's unit filter defaults, written out (allensdk.brain_observatory.ecephys)
ALLENSDK_DEFAULTS = {
    "quality": "good",
    "amplitude_cutoff_maximum": 0.1,
    "presence_ratio_minimum": 0.95,
    "isi_violations_maximum": 0.5,
    "filter_by_validity": True,
    "filter_out_of_brain_units": True,
}


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding only the wheel, env without PYTHONPATH, a scratch dir)."""
    root = tmp_path_factory.mktemp("wheel")
    # build from a copy of what the wheel is made of, so the build leaves nothing in the checkout
    src = root / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = run(
        [*pip, "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"), str(src)], root, env
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("ecephys_pipeline-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = run(
        [*pip, "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], root, env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return python, env, work


def test_the_installed_package_is_the_wheel_and_loads_its_schemas(installed):
    python, env, work = installed
    code = (
        "import json, sys, ecephys_pipeline\n"
        "from ecephys_pipeline import selection\n"
        "spec = selection.load_spec({})\n"
        "print(json.dumps({'file': ecephys_pipeline.__file__, 'path': sys.path,"
        " 'unit_filters': spec['unit_filters'], 'fetch_lfp': spec['fetch_lfp']}))\n"
    )
    proc = run([str(python), "-c", code], work, env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert Path(got["file"]).is_relative_to(python.parents[1]), got["file"]
    assert not [p for p in got["path"] if p and Path(p).resolve() == (REPO / "src").resolve()]
    assert not [p for p in got["path"] if p.endswith("/src")], got["path"]
    assert got["unit_filters"] == ALLENSDK_DEFAULTS and got["fetch_lfp"] is False


def test_plan_and_extract_run_from_the_wheel(installed, tmp_path):
    python, env, _ = installed
    work = tmp_path / "run"
    shutil.copytree(REPO / "config", work / "config")
    proc = run(
        [str(python), "-m", "ecephys_pipeline", "plan", "--configfile", "config/demo.yaml"],
        work,
        env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sessions: 2" in proc.stdout and "files: 7" in proc.stdout, proc.stdout

    # the demo generated its dataset; extract one of its session files with the wheel
    nwb = sorted((work / "resources/fake_warehouse/dataset").rglob("session_*.nwb"))[0]
    proc = run(
        [
            str(python), "-m", "ecephys_pipeline", "extract",
            "--nwb", str(nwb), "--out", str(work / "parquet"), "--unit-filters", "{}",
        ],
        work,
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["counts"]["units"] > 0 and summary["counts"]["spikes"] > 0
    units = pq.read_table(work / "parquet" / "units").to_pandas()
    assert len(units) == summary["counts"]["units"] and units["passes_default_filters"].all()


def test_a_bad_config_is_one_line_from_the_wheel(installed, tmp_path):
    python, env, _ = installed
    work = tmp_path / "run"
    shutil.copytree(REPO / "config", work / "config")
    text = (work / "config/demo.yaml").read_text().replace("cache_dir:", "cach_dir:")
    (work / "config/typo.yaml").write_text(text)
    proc = run(
        [str(python), "-m", "ecephys_pipeline", "plan", "--configfile", "config/typo.yaml"],
        work,
        env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: config (config/typo.yaml): unknown key 'cach_dir' at the top level; "
        "did you mean 'cache_dir'?"
    ), proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
