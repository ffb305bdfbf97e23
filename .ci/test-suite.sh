#!/usr/bin/env bash
# The test suite behind `make test`: pytest over everything, then the real-SLURM end-to-end test
# on a single-node cluster brought up on this machine (needs root and apt; skipped otherwise),
# then the wheel check (.ci/wheel-check.sh: the package as a user installs it, one line).
# The last two lines are each step's exit status and the combined count of both pytest runs;
# any failure fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
reports=$(mktemp -d)
status=0
slurm=0
steps=()
# run_step NAME CMD...: run CMD, record "NAME N" for the summary, remember a failure.
run_step() {
    local name=$1 rc=0
    shift
    "$@" || rc=$?
    steps+=("$name $rc")
    if [ "$rc" != 0 ]; then
        echo "[test-suite] step '$name' failed with exit $rc" >&2
        status=1
    fi
}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    slurm=1
    # Up before the main suite: once slurm-client is installed, the SLURM executor plugin runs
    # `scontrol show config` whenever snakemake starts, which stalls ~10 s per run while no
    # slurmctld answers. run-test.sh's up.sh is then a no-op, and its exit trap stops the cluster.
    trap 'bash .ci/slurm/down.sh >/dev/null 2>&1' EXIT  # normally already down (run-test.sh)
    run_step slurm-up bash .ci/slurm/up.sh
else
    echo "SLURM end-to-end test skipped: it installs and starts slurmctld/slurmd, which needs root and apt"
fi
run_step pytest pytest -m "not slurm" --junitxml="$reports/main.xml"
if [ "$slurm" = 1 ]; then
    run_step slurm-test env SLURM_JUNITXML="$reports/slurm.xml" bash .ci/slurm/run-test.sh
fi
run_step wheel-check bash .ci/wheel-check.sh
echo "steps (exit status): $(IFS=,; echo "${steps[*]}" | sed 's/,/, /g')"
python3 - "$reports" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
failed = counts["failures"] + counts["errors"]
passed = counts["tests"] - failed - counts["skipped"]
print(f"{passed} passed, {failed} failed, {counts['skipped']} skipped")
PY
rm -rf "$reports"
exit "$status"
