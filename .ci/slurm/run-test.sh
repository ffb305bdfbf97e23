#!/usr/bin/env bash
# The SLURM end-to-end test, start to finish: bring up a single-node cluster on this machine,
# run tests/test_slurm.py against it, and always stop every daemon again (trap), even when the
# test fails or the whole thing is interrupted. Needs root (apt, daemons). Called by
# .ci/test-suite.sh; run it by hand the same way:  bash .ci/slurm/run-test.sh
#
#   SLURM_TEST_TIMEOUT_S   upper bound for the pytest run (default 1500 s)
#   SLURM_TEST_TMP         pytest --basetemp: the runs' work directories are left there for
#                          inspection (default /tmp/ecephys-slurm-test; emptied at each start)
#   PYTHON                 interpreter with the project and pytest installed (default: .venv's,
#                          else python3 on PATH); Snakemake runs from the same environment
set -euo pipefail
cd "$(dirname "$0")/../.."

TIMEOUT_S="${SLURM_TEST_TIMEOUT_S:-1500}"
BASETEMP="${SLURM_TEST_TMP:-/tmp/ecephys-slurm-test}"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
T0=$EPOCHREALTIME
since() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}'; }

cleanup() {
    local status=$?
    echo "[slurm-test +$(since)s] stopping the cluster"
    bash .ci/slurm/down.sh || status=1
    echo "[slurm-test +$(since)s] done, exit $status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash .ci/slurm/up.sh
echo "[slurm-test +$(since)s] cluster up; running pytest -m slurm (timeout ${TIMEOUT_S}s)"

# SIGINT, not SIGTERM: Snakemake with the SLURM plugin ignores SIGTERM. pytest runs in the
# background so that a signal to this script (Ctrl-C, an outer timeout) is handled at once:
# it is passed on as one SIGINT, pytest's Snakemake runs cancel their SLURM jobs, then the EXIT
# trap stops the cluster. Its own session + `timeout --foreground`: pytest gets exactly one
# SIGINT (a group-wide signal, or plain timeout's second one to its group, would interrupt the
# clean-up in tests/test_slurm.py).
setsid timeout --foreground -s INT -k 120 "$TIMEOUT_S" "$PYTHON" -m pytest -m slurm \
    -p no:cacheprovider --basetemp="$BASETEMP" -v ${SLURM_JUNITXML:+--junitxml="$SLURM_JUNITXML"} \
    tests/test_slurm.py &
pytest_pid=$!
on_signal() {
    echo "[slurm-test +$(since)s] $1: interrupting pytest (pid $pytest_pid)" >&2
    kill -INT "$pytest_pid" 2>/dev/null || true
    wait "$pytest_pid" || true
    exit "$2"
}
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
wait "$pytest_pid"
trap 'exit 130' INT
trap 'exit 143' TERM
echo "[slurm-test +$(since)s] pytest passed"
if [[ $(sacct -X -n -o JobID 2>/dev/null | wc -l) -gt 0 ]]; then
    echo "[slurm-test] jobs in sacct (last 12):"
    sacct -X -P -o JobID,JobName%40,State,Comment%60,Elapsed | tail -n 12
fi
