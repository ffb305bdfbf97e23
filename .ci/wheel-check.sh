#!/usr/bin/env bash
# What a user does: build the wheel, install it with its dependencies (pinned by constraints.txt)
# into a fresh virtualenv, and run the product from a directory outside the checkout: the
# installed library must find everything it needs (its JSON Schemas, the synth spec) inside
# itself. Prints one line; on failure, the failing step's output, and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/log"
start=$SECONDS

step() {  # step <description> <command...>: run quietly, show the output only on failure
    local what=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "wheel check FAILED: $what" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# build from a copy, so that the build leaves nothing behind in the checkout
mkdir -p "$work/src"
cp -r src/ecephys_pipeline "$work/src/"
cp pyproject.toml README.md "$work/"
step "build the wheel" python3 -m pip wheel --no-deps --quiet -w "$work/dist" "$work"
wheel=$(ls "$work"/dist/ecephys_pipeline-*.whl)

step "create a fresh virtualenv" python3 -m venv "$work/venv"
venv="$work/venv/bin"
step "install the wheel and its dependencies" \
    "$venv/pip" install --quiet --disable-pip-version-check -c constraints.txt "$wheel"

# outside the checkout, with nothing of it on sys.path
mkdir -p "$work/run"
cp -r config "$work/run/"
cd "$work/run"
unset PYTHONPATH
step "the installed package is the wheel's" "$venv/python" -c "
import ecephys_pipeline, sys
assert ecephys_pipeline.__file__.startswith('$work/venv/'), ecephys_pipeline.__file__
assert not [p for p in sys.path if p.startswith('$repo')], sys.path
from ecephys_pipeline import selection
assert selection.load_spec({})['unit_filters']['quality'] == 'good'
"
step "ecephys-pipeline plan --configfile config/demo.yaml" \
    "$venv/ecephys-pipeline" plan --configfile config/demo.yaml
nwb=$(find resources/fake_warehouse/dataset -name 'session_*.nwb' | sort | head -n 1)
step "python -m ecephys_pipeline extract --nwb $nwb" \
    "$venv/python" -m ecephys_pipeline extract --nwb "$nwb" --out parquet --unit-filters '{}'
step "the extracted units table" "$venv/python" -c "
import pyarrow.parquet as pq
assert pq.read_table('parquet/units').num_rows > 0
"
echo "wheel check passed: $(basename "$wheel") installed with its dependencies into a fresh" \
    "virtualenv; plan and extract ran outside the checkout ($((SECONDS - start)) s)"
