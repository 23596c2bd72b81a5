#!/usr/bin/env bash
# A real Slurm cluster on this one machine, shaped like an MI300x cluster: two nodes (n1, n2) with
# 8 fake GPUs each, every GPU split in 8 gres shards (hardware.trials_per_gpu), accounting through
# slurmdbd on a private MariaDB, which also serves Optuna studies (database trlm_optuna, user trlm).
# As root, without systemd.
# Installs Debian's packages on first use; every daemon's pidfile lives in $TRLM_SLURM_DIR, so
# scripts/slurm/down.sh stops exactly what this started. Idempotent: an up cluster is left as is.
set -euo pipefail
STATE=${TRLM_SLURM_DIR:-/tmp/trlm-slurm}
DB_PORT=${TRLM_SLURM_DB_PORT:-13306}
GPUS=8
SHARDS=8   # per GPU: hardware.shards_per_gpu

optuna_database() {  # Optuna's RDB storage for sweeps across hosts (hydra.sweeper.storage=$OPTUNA_URL)
  mariadb --socket="$STATE/mysql/mysql.sock" -e "CREATE DATABASE IF NOT EXISTS trlm_optuna;
    CREATE USER IF NOT EXISTS 'trlm'@'localhost' IDENTIFIED BY 'trlm';
    CREATE USER IF NOT EXISTS 'trlm'@'127.0.0.1' IDENTIFIED BY 'trlm';
    GRANT ALL ON \`trlm\_%\`.* TO 'trlm'@'localhost'; GRANT ALL ON \`trlm\_%\`.* TO 'trlm'@'127.0.0.1';
    FLUSH PRIVILEGES;"
  echo "slurm: Optuna's database at mysql+pymysql://trlm:trlm@127.0.0.1:$DB_PORT/trlm_optuna"
}

if sinfo -h -o %T 2>/dev/null | grep -q idle && [ -f "$STATE/run/slurmctld.pid" ] \
   && scontrol show node n1 2>/dev/null | grep -q "shard:$((GPUS * SHARDS))"; then
  optuna_database; echo "slurm: already up ($STATE)"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  echo "slurm: installing Debian packages (slurmctld slurmd slurmdbd slurm-client munge mariadb-server)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurmdbd slurm-client munge mariadb-server >/dev/null
fi
mkdir -p "$STATE"/{spool,log,gpus,run,munge,mysql}
chmod 755 "$STATE" "$STATE/log"
if ! runuser -u mysql -- test -x "$STATE"; then
  echo "slurm: $STATE must be reachable by the mysql and munge users (its parents need o+x)" >&2; exit 1
fi

# munge: the cluster's authentication
if [ ! -s /etc/munge/munge.key ]; then mungekey --create >/dev/null 2>&1 || mungekey -c; fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge "$STATE/munge"
pgrep -x munged >/dev/null || runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid"

# MariaDB on a private datadir and port, for slurmdbd (sacct; submitit reads job states from it)
DB="$STATE/mysql"
chown -R mysql:mysql "$DB"
if [ ! -d "$DB/data/mysql" ]; then runuser -u mysql -- mariadb-install-db --datadir="$DB/data" >/dev/null; fi
if ! mariadb-admin --socket="$DB/mysql.sock" ping >/dev/null 2>&1; then
  mariadbd --user=mysql --datadir="$DB/data" --port="$DB_PORT" --socket="$DB/mysql.sock" \
    --pid-file="$DB/mariadb.pid" --skip-networking=0 --bind-address=127.0.0.1 >"$STATE/log/mariadb.log" 2>&1 &
  for _ in $(seq 60); do mariadb-admin --socket="$DB/mysql.sock" ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
mariadb --socket="$DB/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# Fake GPUs: character devices, so Slurm's gres really allocates them and sets *_VISIBLE_DEVICES
for i in $(seq 0 $((GPUS - 1))); do [ -e "$STATE/gpus/fakegpu$i" ] || mknod "$STATE/gpus/fakegpu$i" c 241 "$i"; done

mkdir -p /etc/slurm
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=trlm
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
GresTypes=gpu,shard
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/shard
JobAcctGatherType=jobacct_gather/none
# Two MI300x-shaped nodes on this host: 64 CPUs (declared; config_overrides: room for 4 one-CPU trials
# on each of 8 GPUs and node), 8 GPUs of 8 shards each.
NodeName=n1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001 CPUs=64 RealMemory=32000 Gres=gpu:$GPUS,shard:$((GPUS * SHARDS)) State=UNKNOWN
NodeName=n2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17002 CPUs=64 RealMemory=32000 Gres=gpu:$GPUS,shard:$((GPUS * SHARDS)) State=UNKNOWN
PartitionName=mi300x Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=n[1-2] Name=gpu File=$STATE/gpus/fakegpu[0-$((GPUS - 1))]
$(for i in $(seq 0 $((GPUS - 1))); do echo "NodeName=n[1-2] Name=shard Count=$SHARDS File=$STATE/gpus/fakegpu$i"; done)
CONF
rm -f /etc/slurm/cgroup.conf
grep -q "trlm-slurm" /etc/hosts || echo "127.0.0.1 n1 n2 # trlm-slurm" >> /etc/hosts
mkdir -p "$STATE/spool/ctld" "$STATE/spool/n1" "$STATE/spool/n2"

[ -f "$STATE/run/slurmdbd.pid" ] && kill -0 "$(cat "$STATE/run/slurmdbd.pid")" 2>/dev/null || slurmdbd
for _ in $(seq 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster trlm >/dev/null 2>&1 || true
[ -f "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null || slurmctld
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
for node in n1 n2; do
  [ -f "$STATE/run/slurmd-$node.pid" ] && kill -0 "$(cat "$STATE/run/slurmd-$node.pid")" 2>/dev/null || slurmd -N "$node"
done
for _ in $(seq 60); do
  [ "$(sinfo -h -o %T -p mi300x 2>/dev/null | sort -u)" = "idle" ] && {
    optuna_database; echo "slurm: up, 2 nodes x $GPUS GPUs x $SHARDS shards idle ($STATE)"; exit 0; }
  scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm: nodes did not become idle:" >&2; sinfo >&2; tail -5 "$STATE"/log/*.log >&2; exit 1
