#!/usr/bin/env bash
# Runs the molecule scenarios (converge, idempotence, verify) on this machine.
#   scripts/engine-molecule.sh                 # every scenario
#   scripts/engine-molecule.sh converge        # one
# Molecule calls ansible-config etc. by name, so the venv's bin must lead PATH;
# podman's netavark lives in /usr/sbin.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:/usr/local/sbin:/usr/sbin:/sbin:$PATH
if [ $# -eq 0 ]; then
    set -- $(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' | xargs -n1 basename | sort)
fi
for scenario in "$@"; do
    molecule test -s "$scenario"
done
