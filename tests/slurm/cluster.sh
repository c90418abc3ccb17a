#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for `make slurm-check` and the slow SLURM tests: Debian's
# slurmctld + slurmd + munge, with their config, key, state and logs in one folder (default /tmp/dd-slurm).
#
#   tests/slurm/cluster.sh start [STATE_DIR]   install what is missing (apt-get), write slurm.conf, start the daemons,
#                                              wait for the node; prints `export SLURM_CONF=...` for the clients
#   tests/slurm/cluster.sh stop  [STATE_DIR]   stop the daemons (the folder stays, with the logs)
#
# The node is this machine (its hostname, all its cores, 80% of its memory), partition `debug`; jobs may be
# requeued (JobRequeue=1). Daemons run as root: this is a throwaway test cluster, not a deployment.
set -euo pipefail
action=${1:?usage: cluster.sh start|stop [STATE_DIR]}
state=${2:-${DD_SLURM_STATE:-/tmp/dd-slurm}}
conf=$state/slurm.conf

stop() {
  for pidfile in "$state"/run/slurmd.pid "$state"/run/slurmctld.pid "$state"/run/munged.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case $action in
stop)
  stop
  echo "slurm cluster in $state stopped"
  ;;
start)
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
      || ! command -v sbatch >/dev/null; then
    echo "installing slurmctld slurmd slurm-client munge (Debian packages) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >&2
  fi
  stop  # a cluster left from an earlier run
  mkdir -p "$state"/{run,log,ctld,spool}
  chmod 700 "$state/run"
  if [ ! -f "$state/munge.key" ]; then
    dd if=/dev/urandom of="$state/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$state/munge.key"
  munged --force --key-file="$state/munge.key" --socket="$state/run/munge.socket" \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" --seed-file="$state/run/munged.seed"

  host=$(hostname)
  cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it obeys OMP_NUM_THREADS
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat > "$conf" <<EOF
ClusterName=ddlab
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$state/run/munge.socket
CredType=cred/munge
SlurmctldPort=${DD_SLURMCTLD_PORT:-16817}
SlurmdPort=${DD_SLURMD_PORT:-16818}
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=2
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  export SLURM_CONF=$conf
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
      echo "slurm cluster up: node $host ($cpus CPUs, ${mem} MB), state in $state" >&2
      echo "export SLURM_CONF=$conf"
      exit 0
    fi
    sleep 0.3
  done
  echo "the SLURM node did not come up; logs in $state/log:" >&2
  tail -n 20 "$state"/log/*.log >&2 || true
  stop
  exit 1
  ;;
*)
  echo "usage: cluster.sh start|stop [STATE_DIR]" >&2
  exit 2
  ;;
esac
