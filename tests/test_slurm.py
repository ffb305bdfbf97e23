"""The workflow on a real SLURM cluster: real sbatch jobs through a real slurmctld and slurmd.

`.ci/slurm/run-test.sh` brings a single-node cluster up on this machine (`.ci/slurm/up.sh`), runs
these tests (`pytest -m slurm tests/test_slurm.py`) and stops the cluster again. Without an idle
SLURM node (a laptop, a CI job that is not root) every test here is skipped with the reason.

The runs use the CI profile `.ci/slurm/profile` as `--workflow-profile`, so `profiles/default`
is not applied on top of it (it would be with `--profile`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CI_PROFILE = REPO / ".ci" / "slurm" / "profile"
WORKFLOW_PARTS = ["Snakefile", "workflow", "config", "profiles"]
RUN_TIMEOUT_S = int(os.environ.get("SLURM_TEST_RUN_TIMEOUT_S", "600"))  # per snakemake run

# Lines the main Snakemake process logs (Snakemake 9.27, snakemake-executor-plugin-slurm 2.8).
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
RUN_ID = re.compile(r"SLURM run ID: (\S+)")
REMOTE_RULE = re.compile(r"^rule (\w+):$", re.MULTILINE)  # local jobs log "localrule <name>:"
LOCAL_RULE = re.compile(r"^localrule (\w+):$", re.MULTILINE)


@dataclass(frozen=True)
class Cluster:
    accounting: bool  # sacct works (up.sh variant B); otherwise the plugin must poll squeue

    @property
    def extra_args(self) -> list[str]:
        # Without accounting the plugin's default status command (sacct) fails and the run
        # never ends: see .ci/slurm/profile/config.yaml.
        return [] if self.accounting else ["--slurm-status-command", "squeue"]


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM client (sinfo) on PATH; start a local cluster with .ci/slurm/up.sh")
    try:
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer within 15 s: no slurmctld running (.ci/slurm/up.sh)")
    states = sinfo.stdout.split()
    if sinfo.returncode != 0 or "idle" not in states:
        pytest.skip(
            f"no idle SLURM node (sinfo exit {sinfo.returncode}, states {states or 'none'}, "
            f"{sinfo.stderr.strip()!r}); start a local cluster with .ci/slurm/up.sh"
        )
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True, timeout=30
    )
    return Cluster(accounting=sacct.returncode == 0)


# ----------------------------------------------------------------------------------------------
# Helpers


def run_snakemake(workdir: Path, *args: str) -> str:
    """Run Snakemake from this interpreter's environment in `workdir`; return its log.

    Bounded with SIGINT: the SLURM plugin ignores SIGTERM (and a stuck status loop never ends).
    Snakemake must get exactly one SIGINT: a second one interrupts its `scancel` of the
    submitted jobs. Hence its own session (no signal sent to our process group reaches it) and
    `timeout --foreground` (plain `timeout` signals the child and then its whole group again).
    """
    cmd = ["timeout", "--foreground", "-s", "INT", "-k", "60", str(RUN_TIMEOUT_S)]
    cmd += [sys.executable, "-m", "snakemake", *args]
    started = time.monotonic()
    logfile = workdir / "snakemake-run.log"
    with logfile.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C, the CI timeout): let Snakemake cancel its SLURM jobs and stop
            # the demo's server (`subprocess.run` would SIGKILL it). timeout passes SIGINT on.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    log = logfile.read_text()
    assert returncode == 0, (
        f"{' '.join(args)} exited {returncode} after {time.monotonic() - started:.0f} s "
        f"(124/130 = timeout):\n{log[-6000:]}"
    )
    return log


def run_on_slurm(workdir: Path, cluster: Cluster, *args: str) -> str:
    return run_snakemake(workdir, "--workflow-profile", str(CI_PROFILE), *cluster.extra_args, *args)


def sacct_rows(job_ids: list[str], timeout_s: float = 60) -> dict[str, dict[str, str]]:
    """sacct -X rows for the jobs, once every one of them has reached a final state.

    slurmctld hands finished jobs to slurmdbd asynchronously, so poll briefly.
    """
    fields = ["JobID", "JobName", "State", "Comment", "Start", "End", "ExitCode"]
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", ",".join(fields), "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        rows = {}
        for line in out.splitlines():
            row = dict(zip(fields, line.split("|"), strict=True))
            rows[row["JobID"]] = row
        final = all(
            jid in rows and rows[jid]["State"] not in ("PENDING", "RUNNING", "COMPLETING")
            for jid in job_ids
        )
        if final or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def check_slurm_jobs(workdir: Path, log: str, cluster: Cluster) -> list[dict[str, str]]:
    """Every non-local job ran as its own sbatch job, completed, and left its SLURM log.

    Returns one record per submitted job: jobid, rule, and (with accounting) the sacct row.
    """
    submitted = SUBMITTED.findall(log)
    remote_rules = collections.Counter(REMOTE_RULE.findall(log))
    assert submitted, f"no job was submitted to SLURM:\n{log[-4000:]}"
    # One sbatch per job Snakemake did not run locally (localrules log "localrule <name>:").
    assert len(submitted) == sum(remote_rules.values()), (remote_rules, submitted)

    jobs = []
    for _snakemake_id, jobid, logfile in submitted:
        path = Path(logfile)
        path = path if path.is_absolute() else workdir / path
        assert path.name == f"{jobid}.log" and path.is_file(), path
        rel = path.relative_to(workdir / ".snakemake" / "slurm_logs")
        jobs.append({"jobid": jobid, "rule": rel.parts[0].removeprefix("rule_"), "log": path})
    assert collections.Counter(j["rule"] for j in jobs) == remote_rules

    if cluster.accounting:
        run_id = RUN_ID.search(log).group(1)
        rows = sacct_rows([j["jobid"] for j in jobs])
        for job in jobs:
            row = rows.get(job["jobid"])
            assert row is not None, f"sacct does not know job {job['jobid']}: {rows}"
            assert row["State"] == "COMPLETED", row
            assert row["JobName"] == run_id, row
            assert row["Comment"].startswith(f"rule_{job['rule']}"), row
            job["sacct"] = row
    return jobs


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def digests(workdir: Path, under: str, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((workdir / under).rglob(pattern))
    }


# ----------------------------------------------------------------------------------------------
# A throwaway workflow: proves the cluster, the CI profile and the global resource cap.

TOY_SNAKEFILE = """
localrules:
    all,


rule all:
    input:
        "summary.txt",
    shell:
        'echo "all ${{SLURM_JOB_ID:-local}}" >> {input}'


rule make_data:
    output:
        "data/{i}.txt",
    resources:
        downloads=1,
        mem_mb=100,
        runtime=2,
    shell:
        'echo "make_data {wildcards.i} ${{SLURM_JOB_ID:-local}}" > {output}'


rule combine:
    input:
        expand("data/{i}.txt", i=[1, 2, 3]),
    output:
        "summary.txt",
    resources:
        mem_mb=100,
        runtime=2,
    shell:
        'cat {input} > {output} && echo "combine ${{SLURM_JOB_ID:-local}}" >> {output}'
"""


def test_toy_workflow_runs_as_slurm_jobs(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    # downloads=1: the three make_data jobs must never overlap, even though the node has room.
    log = run_on_slurm(tmp_path, cluster, "--resources", "downloads=1")

    jobs = check_slurm_jobs(tmp_path, log, cluster)
    assert collections.Counter(j["rule"] for j in jobs) == {"make_data": 3, "combine": 1}
    assert LOCAL_RULE.findall(log) == ["all"]

    # Each output was written inside the SLURM job Snakemake says it submitted for it.
    lines = (tmp_path / "summary.txt").read_text().split("\n")
    by_rule = collections.defaultdict(set)
    for job in jobs:
        by_rule[job["rule"]].add(job["jobid"])
    assert {line.split()[-1] for line in lines[:3]} == by_rule["make_data"]
    assert lines[3].split() == ["combine", *by_rule["combine"]]
    assert lines[4] == "all local"  # the local rule ran in the main process, not in a job

    if cluster.accounting:
        spans = sorted(
            (j["sacct"]["Start"], j["sacct"]["End"]) for j in jobs if j["rule"] == "make_data"
        )
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"make_data jobs overlapped despite downloads=1: {spans}"


# ----------------------------------------------------------------------------------------------
# The real offline demo: on SLURM and locally, byte-identical Parquet.


def test_demo_on_slurm_matches_local_run(cluster: Cluster, tmp_path: Path) -> None:
    demo = ["--configfile", "config/demo.yaml"]
    on_slurm = copy_workflow(tmp_path / "slurm")
    local = copy_workflow(tmp_path / "local")

    slurm_log = run_on_slurm(on_slurm, cluster, *demo)
    jobs = check_slurm_jobs(on_slurm, slurm_log, cluster)
    rules = {j["rule"] for j in jobs}
    assert {"download_session_nwb", "extract_session"} <= rules, rules

    run_snakemake(local, "--cores", "2", *demo)
    assert "has been submitted with SLURM jobid" not in (local / "snakemake-run.log").read_text()

    # Same inputs first (the synthetic dataset and the downloaded copies), or a Parquet
    # difference would say nothing about SLURM.
    nwb_here = digests(local, "resources", "*.nwb")
    assert nwb_here, "the local demo run has no NWB files under resources/"
    nwb_cluster = digests(on_slurm, "resources", "*.nwb")
    assert nwb_cluster == nwb_here, "the two runs had different NWB files (dataset changed?)"

    here = digests(local, "results", "*.parquet")
    on_cluster = digests(on_slurm, "results", "*.parquet")
    assert here, "the local demo run wrote no Parquet"
    assert on_cluster.keys() == here.keys()
    differing = [name for name in here if on_cluster[name] != here[name]]
    assert not differing, f"Parquet differs between the SLURM and the local run: {differing}"


def test_lfp_downloads_can_be_grouped(cluster: Cluster, tmp_path: Path) -> None:
    """profiles/slurm's commented grouping: every 2 LFP downloads are one sbatch job."""
    workdir = copy_workflow(tmp_path / "grouped")
    args = ["--configfile", "config/demo.yaml", "--groups", "download_lfp_nwb=lfp"]
    log = run_on_slurm(workdir, cluster, *args, "--group-components", "lfp=2")
    group_jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*group_lfp_\S*\)", log)
    selection = json.loads((workdir / "results/selection/selection.json").read_text())
    n_lfp = sum(p["download_lfp"] for s in selection["sessions"] for p in s["probes"])
    assert n_lfp >= 3 and len(group_jobs) == (n_lfp + 1) // 2, (n_lfp, group_jobs)
    if cluster.accounting:
        rows = sacct_rows(group_jobs)
        assert all(rows[j]["State"] == "COMPLETED" for j in group_jobs), rows
    lock = json.loads((workdir / "results/ecephys.lock.json").read_text())
    assert sum(k.endswith("_lfp.nwb") for k in lock["files"]) == n_lfp
