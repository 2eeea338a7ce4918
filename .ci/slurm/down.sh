#!/usr/bin/env bash
# Stop the cluster up.sh started in DIR: SIGTERM to each daemon by its recorded PID (in reverse start order),
# SIGKILL after a grace period, then check that none of them is left. Exit 1 if one is.
set -uo pipefail

DIR=${1:?usage: down.sh DIR}
[ -f "$DIR/pids" ] || { echo "[slurm-down] no $DIR/pids: nothing was started"; exit 0; }
export SLURM_CONF=$DIR/etc/slurm.conf
# Jobs first (slurmd's job steps are children of slurmstepd, which is not in pids): cancel them while slurmctld
# still answers, then give slurmd a moment to kill the steps.
if command -v scancel >/dev/null && scontrol ping >/dev/null 2>&1; then
    scancel --full --quiet --user=root 2>/dev/null || true
    for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi
mapfile -t lines < <(tac "$DIR/pids")
# Every descendant of the daemons (slurmstepd and the job processes under it, which outlive slurmd once it is
# gone and are reparented): collected before the daemons stop, killed after, so nothing of the cluster is left.
descendants() {  # pids...: all descendants, from /proc (ps may be absent)
    local -A parent=()
    local proc ppid out=() queue=("$@") p
    for proc in /proc/[0-9]*; do
        ppid=$(awk '{print $4}' "$proc/stat" 2>/dev/null) && parent[${proc#/proc/}]=$ppid
    done
    while [ ${#queue[@]} -gt 0 ]; do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for child in "${!parent[@]}"; do
            [ "${parent[$child]}" = "$p" ] && { out+=("$child"); queue+=("$child"); }
        done
    done
    echo "${out[@]}"
}
daemons=()
for line in "${lines[@]}"; do read -r name pid <<<"$line"; daemons+=("$pid"); done
mapfile -t children < <(descendants "${daemons[@]}" | tr ' ' '\n' | grep .)
for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    kill -TERM "$pid" 2>/dev/null && echo "[slurm-down] stopping $name (pid $pid)"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { echo "[slurm-down] $name (pid $pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; }
done
for pid in "${children[@]}"; do
    kill -KILL "$pid" 2>/dev/null && echo "[slurm-down] killed leftover pid $pid (a job or its slurmstepd)"
done
sleep 0.2
left=()
for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    kill -0 "$pid" 2>/dev/null && left+=("$name($pid)")
done
for pid in "${children[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("child($pid)"); done
if [ ${#left[@]} -gt 0 ]; then
    echo "[slurm-down] still running: ${left[*]}" >&2
    exit 1
fi
echo "[slurm-down] all stopped"
