#!/usr/bin/env bash
# Stand up a throwaway single-node SLURM cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd) in DIR, as root,
# from Debian 12's packages. Everything lives in DIR: configs, state, spool, logs, the database, the munge key.
#
#   bash .ci/slurm/up.sh DIR      # then: source DIR/env (SLURM_CONF, SINDER_SLURM_CONF) ... bash .ci/slurm/down.sh DIR
#
# DIR/pids lists each daemon's PID (one "name pid" a line) for down.sh; if the cluster does not come up (a daemon
# dies, sinfo never shows the node idle within SINDER_SLURM_UP_TIMEOUT_S), up.sh says which and why (the tail of
# that daemon's log), stops what it started, and exits 1. .ci/slurm/run.sh wraps up, a command and down.
set -euo pipefail

DIR=${1:?usage: up.sh DIR, a new or empty folder for the cluster files}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
TIMEOUT_S=${SINDER_SLURM_UP_TIMEOUT_S:-120}

[ "$(id -u)" -eq 0 ] || { echo "up.sh: run as root (it installs packages and runs the daemons as root)" >&2; exit 1; }
say() { echo "[slurm-up $(date -u +%H:%M:%S)] $*"; }
fail() {
    echo "[slurm-up] FAILED: $*" >&2
    exit 1
}
# Whatever stops this script before the node is idle (a failed check, a failed command under set -e, Ctrl-C)
# stops what it started.
up=0
cleanup() {
    local code=$?
    if [ "$up" -ne 1 ]; then
        echo "[slurm-up] not up (exit $code): stopping what was started" >&2
        bash "$HERE/down.sh" "$DIR" >&2 || true
        [ "$code" -ne 0 ] || code=1
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'echo "[slurm-up] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM
started=$(date +%s)

# --- packages (Debian 12: slurm-wlm 22.05; no daemon starts on install, the policy-rc.d of a container denies it)
need=()
for cmd in slurmctld slurmd slurmdbd sacctmgr munged mariadbd mariadb-install-db; do
    command -v "$cmd" >/dev/null || need=(slurm-wlm munge slurmdbd mariadb-server)
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No system daemon may start from the install (munge, mariadb): only this script's, stopped by PID, run.
    # A policy-rc.d that denies every start (Debian's invoke-rc.d policy), unless the image has one already.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    installed=0
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >"$DIR/apt.log" 2>&1 &&
        installed=1
    [ "$own_policy" -eq 0 ] || rm -f "$policy"
    [ "$installed" -eq 1 ] || fail "apt-get install ${need[*]} failed: $(tail -5 "$DIR/apt.log" 2>/dev/null)"
fi

# --- layout, ports, host
mkdir -p "$DIR"/{etc,state,spool,log,run,munge,mysql}
: >"$DIR/pids"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT=$(free_port) SLURMD_PORT=$(free_port) DBD_PORT=$(free_port) DB_PORT=$(free_port)
HOST=$(hostname -s)
CPUS=$(nproc)
# RealMemory in MB, a little under the machine's so slurmd accepts it (a job's --mem is checked against it).
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
SOCK=$DIR/munge/munge.socket

# --- configs
cat >"$DIR/etc/slurm.conf" <<CONF
ClusterName=sinderci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# With slurmdbd, AccountingStoragePass names the munge socket its connections use (slurm.conf(5)); AuthInfo
# alone does not reach them.
AccountingStoragePass=$SOCK
AccountingStorageEnforce=associations,limits
# Quick turnover for tests: a finished job leaves squeue after 5 s (sacct keeps it); scancel kills at once
# (SIGKILL right after SIGTERM, which submitit ignores; its checkpoint signal is USR2, --signal before the limit).
MinJobAge=5
InactiveLimit=0
KillWait=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$DIR/etc/slurmdbd.conf" <<CONF
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"  # slurmdbd refuses a config others can read (it holds the password)
# Not used by proctrack/linuxproc + task/none; written so no daemon reads the system's /etc/slurm/cgroup.conf.
cat >"$DIR/etc/cgroup.conf" <<CONF
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
CONF
export SLURM_CONF=$DIR/etc/slurm.conf  # every client and slurmdbd (slurmdbd.conf beside it) reads this
cat >"$DIR/env" <<CONF
export SLURM_CONF=$SLURM_CONF
export SINDER_SLURM_CONF=$SLURM_CONF
CONF

start() {  # name, command...: run a daemon in the foreground mode, in the background, log to DIR/log/name.out
    local name=$1
    shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$DIR/pids"
}
alive() { kill -0 "$(awk -v n="$1" '$1 == n {print $2}' "$DIR/pids")" 2>/dev/null; }
wait_for() {  # name, seconds, test command...: until the test passes, or fail with the daemon's log
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    until "$@" >"$DIR/log/check.out" 2>&1; do
        alive "$name" || fail "$name exited: $(tail -n 15 "$DIR/log/$name.out" "$DIR/log/$name.log" 2>/dev/null)"
        [ $(($(date +%s) - t0)) -lt "$limit" ] || fail "$name not ready after ${limit}s ($* said: \
$(tail -n 5 "$DIR/log/check.out")): $(tail -n 15 "$DIR/log/$name.out" "$DIR/log/$name.log" 2>/dev/null)"
        sleep 0.5
    done
}

# --- munge: its own key and socket
mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024 >/dev/null 2>&1 ||
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=128 count=1 status=none
chmod 700 "$DIR/munge" && chmod 400 "$DIR/munge/munge.key"
start munged munged --foreground --force --key-file="$DIR/munge/munge.key" --socket="$SOCK" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
wait_for munged 20 bash -c "munge -n -S '$SOCK' | unmunge -S '$SOCK'"
say "munged up"

# --- MariaDB: a throwaway datadir, TCP on 127.0.0.1 only
mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.out" 2>&1 ||
    fail "mariadb-install-db failed: $(tail -n 15 "$DIR/log/mariadb-install.out")"
start mariadbd mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" \
    --pid-file="$DIR/run/mariadbd.pid" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M
wait_for mariadbd 60 mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -uroot -e "SELECT 1"
mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -uroot -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail "could not create the database user"
say "mariadb up (port $DB_PORT)"

# --- slurmdbd, then the accounts (AccountingStorageEnforce=associations: root needs one to submit)
start slurmdbd slurmdbd -D
wait_for slurmdbd 60 sacctmgr -i list cluster
sacctmgr -i add cluster sinderci >/dev/null
sacctmgr -i add account sinder Cluster=sinderci Description=ci Organization=ci >/dev/null
sacctmgr -i add user root Account=sinder DefaultAccount=sinder Cluster=sinderci >/dev/null
say "slurmdbd up (port $DBD_PORT), cluster sinderci, account sinder"

# --- slurmctld and slurmd
start slurmctld slurmctld -D -i -f "$SLURM_CONF"
wait_for slurmctld 60 scontrol ping
start slurmd slurmd -D -f "$SLURM_CONF"
idle() { sinfo -h -N -n "$HOST" -o %t | grep -qx idle; }
wait_for slurmd "$TIMEOUT_S" idle
up=1
say "node $HOST idle ($CPUS CPUs, ${MEM_MB} MB), partition cpu; up in $(($(date +%s) - started)) s"
say "use it with: source $DIR/env"
