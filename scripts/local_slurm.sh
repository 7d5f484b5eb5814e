#!/usr/bin/env bash
# Start (or stop) a one-node SLURM cluster on this machine for testing profiles/slurm:
# munge + slurmctld + slurmd on localhost, partitions `debug` and `gpu`, fake GPUs as GRES.
# Needs root and Debian's slurm-wlm and munge packages (`apt-get install slurm-wlm munge`).
#   scripts/local_slurm.sh start   |   scripts/local_slurm.sh stop
# `stop` also removes the slurm.conf and gres.conf that `start` wrote: with a slurm.conf left
# behind and no slurmctld, every `scontrol` call waits ~9 s for the controller, and Snakemake's
# SLURM executor plugin runs `scontrol show config` when it is imported, i.e. on every
# `snakemake` command, dry runs included (9 of a 12-s dry run of the default config, measured).
set -euo pipefail
action=${1:-start}
HOST=$(hostname -s)
STATE=${LOCAL_SLURM_STATE:-/var/spool/ltdistill-slurm}

MARK="# written by ltdistill scripts/local_slurm.sh"
# ours: carries the marker, or is an older version's (cluster ltdistill-local, fake GPUs)
ours() { grep -qE "^($MARK|ClusterName=ltdistill-local)\$|/fakegpu" "$1"; }
stop() {
  for pid in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  # only files this script wrote: a real cluster's config stays
  for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -f "$conf" ] && ours "$conf"; then rm -f "$conf"; fi
  done
}
if [ "$action" = stop ]; then stop; exit 0; fi

[ "$(id -u)" = 0 ] || { echo "local_slurm.sh: needs root" >&2; exit 2; }
command -v slurmctld >/dev/null && command -v munged >/dev/null \
  || { echo "local_slurm.sh: install slurm-wlm and munge first" >&2; exit 2; }

NGPU=${FAKE_GPUS:-2}
CPUS=$(nproc)
# Advertise more memory than the machine has so paper-sized mem_mb requests in profiles/slurm are
# accepted; SlurmdParameters=config_overrides stops slurmd from draining the node for it.
MEM_MB=${LOCAL_SLURM_MEM_MB:-65536}
mkdir -p "$STATE/gpus"
for i in $(seq 0 $((NGPU - 1))); do touch "$STATE/gpus/fakegpu$i"; done

[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge /var/log/munge /var/lib/munge
# a socket left by a munged that is gone (machine reused, daemon killed) would be taken for a
# running one: start munged unless its pid is alive, clearing the stale files first
if ! { [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  su -s /bin/sh munge -c /usr/sbin/munged
fi
munge -n | unmunge >/dev/null

install -d -o slurm -g slurm "$STATE/ctld" /var/log/slurm
install -d "$STATE/d"
for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if [ -f "$conf" ] && ! ours "$conf"; then
    echo "local_slurm.sh: $conf exists and was not written by this script (a real cluster?);" \
         "move it away to start the local test cluster" >&2
    exit 2
  fi
done
cat > /etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=ltdistill-local
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:fake:${NGPU} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${HOST} MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
$MARK
AutoDetect=off
NodeName=${HOST} Name=gpu Type=fake File=$STATE/gpus/fakegpu[0-$((NGPU - 1))]
CONF
[ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || slurmctld
[ -s /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || slurmd
for _ in $(seq 1 30); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1)
  case "$state" in idle|mixed|allocated) break ;; *drain*|*inval*) scontrol update nodename="$HOST" state=resume || true ;; esac
  sleep 1
done
sinfo -N -o "%N %P %T %c %m %G"
