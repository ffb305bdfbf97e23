"""The offline demo's services: a synthetic dataset and the fake warehouse serving it.

The demo is wrapped around the product, never inside it: the workflow calls :func:`start_for`
from its ``onstart`` handler and :func:`stop_for` from ``onsuccess``/``onerror``, and the
command line runs a command inside :func:`serving`. The server runs as a separate process on a
free loopback port and writes its address to the config's ``source.url_file``, where the jobs
read it (``Source.from_config``), so the port never appears in a rule's params and never
triggers a rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A JSON list of faults (see fake_warehouse) the demo server starts with: how the tests make a
# run slow or flaky at a chosen stage, e.g. to kill it mid-download.
FAULTS_ENV = "ECEPHYS_DEMO_FAULTS"
PID_FILE = "pid"
LOG_FILE = "fake_warehouse.log"


def run_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir).parent


def ensure_dataset(dataset_dir: str | Path, *, seed: int, sessions: int, realistic: bool) -> Path:
    """Generate the synthetic dataset once; regenerate only if its parameters changed."""
    from .. import synth

    dataset_dir = Path(dataset_dir)
    marker = dataset_dir / "dataset.json"
    wanted = {"seed": seed, "sessions": sessions, "realistic": realistic}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get("demo", {}).get(k) for k in wanted} == wanted:
            return dataset_dir
    tmp = dataset_dir.with_name(dataset_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if realistic:
        synth.make_dataset(tmp, seed=seed, realistic=True, files="lazy")
    else:
        synth.make_dataset(tmp, seed=seed, sessions=sessions)
    info = json.loads((tmp / "dataset.json").read_text())
    info["demo"] = wanted
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    os.replace(tmp, dataset_dir)
    return dataset_dir


def start(dataset_dir: str | Path, url_file: str | Path, *, timeout: float = 60.0) -> str:
    """Start the fake warehouse for ``dataset_dir`` on a free loopback port; return its URL,
    which it also writes to ``url_file``."""
    stop(dataset_dir, url_file)
    rdir = run_dir(dataset_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    url_path = Path(url_file)
    url_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "ecephys_pipeline.fake",
        "--data",
        str(dataset_dir),
        "--port",
        "0",
        "--port-file",
        str(url_path),
    ]
    for fault in json.loads(os.environ.get(FAULTS_ENV) or "[]"):
        command += ["--fault", json.dumps(fault)]
    log = open(rdir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (rdir / PID_FILE).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if url_path.exists() and url_path.read_text().strip():
            return url_path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(
                f"the fake warehouse exited with code {proc.returncode} before it was ready; "
                f"see {rdir / LOG_FILE}"
            )
        time.sleep(0.05)
    stop(dataset_dir, url_file)
    raise RuntimeError(
        f"the fake warehouse did not start within {timeout} s; see {rdir / LOG_FILE}"
    )


def stop(dataset_dir: str | Path, url_file: str | Path, *, timeout: float = 10.0) -> None:
    """Stop the fake warehouse started by :func:`start` (by PID), if it is running."""
    rdir = run_dir(dataset_dir)
    pid_path = rdir / PID_FILE
    if not pid_path.exists():
        return
    pid = int(pid_path.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll its existence instead
                os.kill(pid, 0)
                finished = 0
            if finished:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_path.unlink(missing_ok=True)
    Path(url_file).unlink(missing_ok=True)


# ------------------------------------------------------------------------- wrapped around a run


def _settings(config: dict) -> dict | None:
    """The config's ``demo`` section if the demo is on (checked: it needs ``source.url_file``)."""
    demo = config.get("demo") or {}
    if not demo.get("enabled"):
        return None
    url_file = (config.get("source") or {}).get("url_file")
    if not url_file:
        raise RuntimeError(
            "demo.enabled needs source.url_file: the file where the fake warehouse writes its "
            "address (config/demo.yaml sets resources/fake_warehouse/url)"
        )
    return {**demo, "url_file": url_file}


def start_for(config: dict) -> str | None:
    """Prepare the dataset and start the server if ``config`` enables the demo; its URL."""
    demo = _settings(config)
    if demo is None:
        return None
    ensure_dataset(
        demo["dataset_dir"],
        seed=demo["seed"],
        sessions=demo["sessions"],
        realistic=demo["realistic"],
    )
    return start(demo["dataset_dir"], demo["url_file"])


def stop_for(config: dict) -> None:
    demo = _settings(config)
    if demo is not None:
        stop(demo["dataset_dir"], demo["url_file"])


@contextmanager
def serving(config: dict) -> Iterator[str | None]:
    """Run the demo's server (if ``config`` enables it) for the duration of the block."""
    url = start_for(config)
    try:
        yield url
    finally:
        stop_for(config)
