#!/usr/bin/env bash
# Stand up the single-node SLURM cluster (up.sh) in a temp folder, run a command against it (default: the
# slurm-marked tests), and stop the cluster whatever happens (down.sh on EXIT). Exit status: the command's, or
# 1 when the cluster did not come up or did not stop cleanly.
#
#   bash .ci/slurm/run.sh                                   # .venv/bin/python -m pytest -q -m slurm
#   bash .ci/slurm/run.sh sinder-bench run --suite table3 --profile smoke --launcher slurm --partition cpu --wait
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=$(mktemp -d /tmp/sinder-slurm.XXXXXX)
stop() {
    local code=$?
    if [ "$code" -ne 0 ] && [ -d "$DIR/log" ]; then  # the daemons' last words, before the folder goes
        tail -n 20 "$DIR"/log/*.log 2>/dev/null || true
    fi
    bash "$HERE/down.sh" "$DIR" || code=1
    rm -rf "$DIR"
    exit "$code"
}
trap stop EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
bash "$HERE/up.sh" "$DIR"
echo "[slurm] cluster up in $(($(date +%s) - t0)) s"
# shellcheck disable=SC1091
source "$DIR/env"
t1=$(date +%s)
status=0
if [ $# -gt 0 ]; then
    "$@" || status=$?
else
    (cd "$REPO" && "${SINDER_PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider -m slurm tests) || status=$?
fi
echo "[slurm] command done in $(($(date +%s) - t1)) s (exit $status)"
exit "$status"
