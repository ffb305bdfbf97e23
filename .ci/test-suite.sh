#!/usr/bin/env bash
# The test suite behind `make test`: pytest over everything, then the real-SLURM end-to-end test
# on a single-node cluster brought up on this machine (needs root and apt; skipped otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
pytest -m "not slurm" || status=$?
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    bash .ci/slurm/run-test.sh || status=$?
else
    echo "SLURM end-to-end test skipped: it installs and starts slurmctld/slurmd, which needs root and apt"
fi
exit "$status"
