#!/usr/bin/env bash
# A single-node Slurm on this machine, for the tests of train_stageN.sh (tests/test_cluster_launchers.py):
#   slurm/local.sh start DIR   # writes DIR/slurm.conf, starts munged (if none runs), slurmctld and slurmd
#   slurm/local.sh stop DIR    # stops what start started
# Needs root and Debian's slurm-wlm + munge (scripts/test.sh installs them). Clients use it with
# SLURM_CONF=DIR/slurm.conf. Ports: SLURMCTLD_PORT / SLURMD_PORT (default 16817 / 16818).
set -euo pipefail
cmd=${1:?start|stop}
dir=$(realpath -m "${2:?DIR}")
export SLURM_CONF="$dir/slurm.conf"

case "$cmd" in
start)
  mkdir -p "$dir/state" "$dir/spool"
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$dir/started_munged"
  fi
  host=$(hostname -s)
  cat > "$SLURM_CONF" <<CONF
ClusterName=facecomp
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
  /usr/sbin/slurmctld -c   # -c: a clean state, no jobs of an earlier run
  /usr/sbin/slurmd
  for _ in $(seq 30); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && exit 0
    sleep 1
  done
  echo "slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
  ;;
stop)
  # jobs first (their batch scripts tear Ray down on the signal), then the daemons
  scancel --full --signal=TERM --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
  pids=()
  for daemon in slurmd slurmctld; do
    if [ -f "$dir/$daemon.pid" ]; then pids+=("$(cat "$dir/$daemon.pid")"); fi
  done
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 10); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 1; done
  kill -9 "${pids[@]}" 2>/dev/null || true
  if [ -f "$dir/started_munged" ]; then
    kill "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null || true
    rm -f "$dir/started_munged"
  fi
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
