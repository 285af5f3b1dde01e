#!/usr/bin/env bash
# slurmcluster.sh -- start / stop a small, self-contained Slurm cluster on ONE box
# for the tests and benchmarks (tests/slurmcluster.py drives it). Adapted from a
# verified recipe: 4 nodes, each its own slurmd; slurmctld; slurmdbd + MariaDB so
# that sacct works; munged; all on 127.0.0.1 with ports picked free by default.
#
#   slurmcluster.sh up     WORKDIR   # install (if needed), configure, start, wait for idle nodes
#   slurmcluster.sh down   WORKDIR   # stop every daemon we started (by pid) and remove WORKDIR
#   slurmcluster.sh status WORKDIR   # show daemons / sinfo
#   slurmcluster.sh env    WORKDIR   # print the env exports a client needs
#
# Everything (config, munge key + socket, state, spool, logs, pid files, DB) lives
# under WORKDIR. The system's /etc/slurm and /etc/munge are not touched (apt may
# create /etc/munge/munge.key on install; we never use it). Only 127.0.0.1 is used.
#
# Tunables (environment variables, all optional):
#   SLURM_RECIPE_NODES=4          number of compute nodes n1..nN (one slurmd each)
#   SLURM_RECIPE_CPUS=2           CPUs advertised per node (may exceed real cores)
#   SLURM_RECIPE_MEM=1024         RealMemory (MB) per node
#   SLURM_RECIPE_PORT_BASE=auto   ctld=BASE, slurmdbd=BASE+1, mariadb=BASE+2,
#                                 slurmd n_i = BASE+10+i;  "auto" = pick a free base
#                                 in 20000..59900 (lets several clusters coexist)
#   SLURM_RECIPE_ACCOUNTING=slurmdbd | filetxt | none   (default slurmdbd)
#   SLURM_RECIPE_MINJOBAGE=30     seconds a finished job stays visible in squeue/scontrol
#   SLURM_RECIPE_SLURMD_TIMEOUT=300  seconds before slurmctld declares a silent node DOWN (and
#                                 ends its steps: how long a node crash takes to be seen)
#   SLURM_RECIPE_CLUSTER=cmflowtest ClusterName
#   SLURM_RECIPE_NO_INSTALL=1     never call apt-get (fail if binaries are missing)
set -euo pipefail

ACTION=${1:-}
WD_ARG=${2:-}
if [[ -z "$ACTION" || -z "$WD_ARG" ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2
fi
WD=$(realpath -m -- "$WD_ARG")
case "$WD" in /|/etc|/etc/*|/usr|/usr/*|/var|/root|/home|/tmp) echo "refusing WORKDIR=$WD" >&2; exit 2;; esac

NODES=${SLURM_RECIPE_NODES:-4}
CPUS=${SLURM_RECIPE_CPUS:-2}
MEM=${SLURM_RECIPE_MEM:-1024}
PORT_BASE=${SLURM_RECIPE_PORT_BASE:-auto}
ACCT=${SLURM_RECIPE_ACCOUNTING:-slurmdbd}
MINJOBAGE=${SLURM_RECIPE_MINJOBAGE:-30}
SLURMD_TIMEOUT=${SLURM_RECIPE_SLURMD_TIMEOUT:-300}
CLUSTER=${SLURM_RECIPE_CLUSTER:-cmflowtest}

set_ports() { PORT_BASE=$1; CTLD_PORT=$1; DBD_PORT=$(($1 + 1)); DB_PORT=$(($1 + 2)); }
[[ "$PORT_BASE" == auto ]] || set_ports "$PORT_BASE"
HOST=$(hostname -s)

ETC=$WD/etc
CONF=$ETC/slurm.conf
MUNGE_DIR=$WD/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket
LOG=$WD/log
RUN=$WD/run
DB_DIR=$WD/mysql

log() { printf '[slurmcluster %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- install
install_pkgs() {
    local need=()
    [[ -x /usr/sbin/munged && -x /usr/sbin/mungekey ]] || need+=(munge)
    [[ -x /usr/sbin/slurmctld ]] || need+=(slurmctld)
    [[ -x /usr/sbin/slurmd ]] || need+=(slurmd)
    [[ -x /usr/bin/sbatch && -x /usr/bin/sacct ]] || need+=(slurm-client)
    if [[ "$ACCT" == slurmdbd ]]; then
        [[ -x /usr/sbin/slurmdbd ]] || need+=(slurmdbd)
        [[ -x /usr/sbin/mariadbd && -x /usr/bin/mariadb-install-db ]] || need+=(mariadb-server)
    fi
    # slurm-wlm is the metapackage (slurmctld+slurmd+client+plugins); keep it in
    # the list only when something is missing.
    if ((${#need[@]})); then
        [[ -n "${SLURM_RECIPE_NO_INSTALL:-}" ]] && die "missing packages: ${need[*]}"
        log "installing: ${need[*]}"
        # policy-rc.d in containers stops apt from starting the stock services; if a
        # real init starts them anyway they use /etc/slurm + default ports, which we avoid.
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends slurm-wlm "${need[@]}" >/dev/null 2>&1 || die "apt-get install ${need[*]} failed"
    fi
}

# ---------------------------------------------------------------- helpers
running() {     # running PID -> true if it exists and is not a zombie
    # (pid 1 here is not a real init and reaps late: kill -0 succeeds on zombies)
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}
pid_alive() {   # pid_alive PIDFILE -> true if process in pidfile runs
    local f=$1 p
    [[ -s "$f" ]] || return 1
    p=$(<"$f"); [[ "$p" =~ ^[0-9]+$ ]] || return 1
    running "$p"
}
port_free() {   # true if nothing accepts connections on 127.0.0.1:$1
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
port_open() { ! port_free "$1"; }
ports_free() {
    local p
    for p in "$CTLD_PORT" $([[ $ACCT == slurmdbd ]] && echo "$DBD_PORT $DB_PORT") \
        $(seq $((PORT_BASE + 11)) $((PORT_BASE + 10 + NODES))); do
        port_free "$p" || return 1
    done
}
stop_pidfile() { # stop_pidfile PIDFILE NAME  -> SIGTERM, wait, SIGKILL
    local f=$1 name=$2 p i
    pid_alive "$f" || { rm -f "$f"; return 0; }
    p=$(<"$f")
    # only kill a pid whose command line refers to our WORKDIR (guards pid reuse)
    # (munged/mariadbd carry WORKDIR on the command line, slurm daemons SLURM_CONF in environ)
    if ! cat "/proc/$p/cmdline" "/proc/$p/environ" 2>/dev/null | tr '\0' '\n' | grep -qF -- "$WD/"; then
        log "pid $p from $f does not look like ours; not killing"; rm -f "$f"; return 0
    fi
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do running "$p" || break; sleep 0.05; done
    if running "$p"; then log "$name ($p) ignored SIGTERM, SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
    rm -f "$f"
}
wait_for() {     # wait_for SECONDS DESCRIPTION CMD...
    local t=$1 what=$2 i; shift 2
    for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "timeout (${t}s) waiting for $what"
}
elapsed() { local d=$(( $(date +%s%N) - $1 )); printf '%d.%02d' $((d / 1000000000)) $((d % 1000000000 / 10000000)); }
env_lines() {
    cat <<EOF
export SLURM_CONF=$CONF
export PATH=/usr/sbin:/usr/bin:\$PATH
EOF
}

# ---------------------------------------------------------------- config
write_config() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$WD/state" "$MUNGE_DIR"
    # munged insists: socket dir must be o+x along the whole path, key 0400/0600 owned
    # by the user running munged (root here), no group/world-writable dirs (sticky ok).
    chmod 0755 "$WD" "$MUNGE_DIR" "$ETC"
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        mungekey --create --keyfile="$MUNGE_DIR/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chmod 0400 "$MUNGE_DIR/munge.key"

    local i acct_lines="" hostaddrs
    # Only add NoInAddrAny if our hostname resolves to loopback only; otherwise srun
    # would bind its I/O sockets to a non-loopback address that slurmstepd (which
    # connects back to 127.0.0.1) cannot reach.
    hostaddrs=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk '{print $1}' | sort -u)
    if [[ -n "$hostaddrs" ]] && ! grep -qv '^127\.' <<<"$hostaddrs"; then
        COMM_PARAMS=NoCtldInAddrAny,NoInAddrAny
    else
        COMM_PARAMS=NoCtldInAddrAny
        log "note: $(hostname) does not resolve to 127.x only; slurmd/slurmdbd listen on 0.0.0.0 (traffic still uses 127.0.0.1)"
    fi
    case "$ACCT" in
        slurmdbd) acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# connections to slurmdbd take the munge socket from AccountingStoragePass, NOT AuthInfo
AccountingStoragePass=socket=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=0
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt" ;;
        filetxt) acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt" ;;
        none) acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none" ;;
        *) die "SLURM_RECIPE_ACCOUNTING must be slurmdbd|filetxt|none" ;;
    esac

    cat >"$CONF" <<EOF
# generated by slurmcluster.sh for WORKDIR=$WD
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((PORT_BASE + 11))
# NoCtldInAddrAny: slurmctld binds to 127.0.0.1 (its SlurmctldHost addr) instead of 0.0.0.0.
# NoInAddrAny (only when \`hostname\` resolves to 127.x): slurmd binds to NodeAddr, and
# srun/salloc/slurmdbd bind to the address of \`hostname\`.
CommunicationParameters=$COMM_PARAMS
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$WD/state
SlurmdSpoolDir=$WD/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PluginDir=/usr/lib/x86_64-linux-gnu/slurm-wlm
# no cgroups: works in containers / VMs without a delegated cgroup tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
LaunchType=launch/slurm
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# config values (CPUs, RealMemory) win over detected hardware -> no "Low CPU count" drain
SlurmdParameters=config_overrides
ReturnToService=2
# fast scheduling for tests
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000,bf_interval=1,sched_interval=1,max_rpc_cnt=0
MinJobAge=$MINJOBAGE
MaxJobCount=100000
KillWait=2
InactiveLimit=0
OverTimeLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=60
SlurmdTimeout=$SLURMD_TIMEOUT
TCPTimeout=2
$acct_lines
EOF
    for ((i = 1; i <= NODES; i++)); do
        echo "NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT_BASE + 10 + i)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN" >>"$CONF"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$CONF"

    if [[ "$ACCT" == slurmdbd ]]; then
        cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
$( [[ $COMM_PARAMS == *NoInAddrAny* ]] && echo "CommunicationParameters=NoInAddrAny" )
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
        chmod 0600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a world-readable conf
    fi
    env_lines >"$WD/env.sh"
}

# ---------------------------------------------------------------- daemons
start_munge() {
    pid_alive "$RUN/munged.pid" && return 0
    munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
        --log-file="$LOG/munged.log" --pid-file="$RUN/munged.pid" \
        --seed-file="$MUNGE_DIR/munged.seed" --num-threads=4
    wait_for 10 munged bash -c "munge -n --socket='$MUNGE_SOCK' | unmunge --socket='$MUNGE_SOCK'"
}

start_mariadb() {
    pid_alive "$RUN/mariadbd.pid" && return 0
    if [[ ! -d "$DB_DIR/mysql" ]]; then
        mkdir -p "$DB_DIR"
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
            --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
            { cat "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    # slurmdbd has no -f: it reads slurmdbd.conf from dirname($SLURM_CONF)
    # --no-defaults: ignore /etc/mysql; TCP on 127.0.0.1 only; small footprint
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DB_DIR" \
        --socket="$RUN/mysqld.sock" --pid-file="$RUN/mariadbd.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mariadbd.log" \
        --skip-name-resolve --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=2 --skip-log-bin \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb --no-defaults -uroot -h127.0.0.1 -P"$DB_PORT" -e 'select 1'
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return 0
    SLURM_CONF=$CONF slurmdbd 2>>"$LOG/slurmdbd.stderr" ||
        die "slurmdbd failed (see $LOG/slurmdbd.log)"
    wait_for 60 "slurmdbd on :$DBD_PORT" port_open "$DBD_PORT"
}

register_cluster() {   # sacctmgr needs the cluster + an account for root
    local s="sacctmgr -i"
    SLURM_CONF=$CONF $s show cluster -n format=cluster 2>/dev/null | grep -qw "$CLUSTER" ||
        SLURM_CONF=$CONF $s add cluster "$CLUSTER" >/dev/null
}

start_slurm() {
    if ! pid_alive "$RUN/slurmctld.pid"; then
        # -c: clean start (ignore saved state), -i: ignore state errors
        SLURM_CONF=$CONF slurmctld -f "$CONF" -c -i 2>>"$LOG/slurmctld.stderr" ||
            die "slurmctld failed (see $LOG/slurmctld.log)"
    fi
    local i
    for ((i = 1; i <= NODES; i++)); do
        pid_alive "$RUN/slurmd-n$i.pid" && continue
        mkdir -p "$WD/spool/n$i"
        SLURM_CONF=$CONF slurmd -f "$CONF" -N "n$i" -c 2>>"$LOG/slurmd-n$i.stderr" ||
            die "slurmd n$i failed (see $LOG/slurmd-n$i.log)"
    done
}

nodes_idle() {   # true when all NODES report idle (or mix/alloc: busy is fine too)
    local n
    n=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)$/' | wc -l)
    [[ "$n" -eq "$NODES" ]]
}

do_up() {
    local t0n
    t0n=$(date +%s%N)
    install_pkgs
    if [[ -f "$WD/.up" ]] && pid_alive "$RUN/slurmctld.pid" && nodes_idle; then
        log "already up in $WD"; env_lines; return 0
    fi
    # an existing empty dir (e.g. from mktemp -d) is fine; an old cluster dir is torn down
    if [[ -e "$WD" && -n "$(ls -A "$WD" 2>/dev/null)" ]]; then log "stale $WD: tearing down first"; do_down quiet; fi
    if [[ "$PORT_BASE" == auto ]]; then
        local k
        for k in $(shuf -i 0-399 -n 40); do
            set_ports $((20000 + k * 100)); ports_free && break
        done
    else
        set_ports "$PORT_BASE"
    fi
    ports_free || die "a port in $PORT_BASE..$((PORT_BASE + 10 + NODES)) is in use (set SLURM_RECIPE_PORT_BASE)"
    write_config
    start_munge
    if [[ "$ACCT" == slurmdbd ]]; then
        start_mariadb
        log "mariadb ready after $(elapsed "$t0n")s"
        start_slurmdbd
        register_cluster
        log "slurmdbd ready after $(elapsed "$t0n")s"
    fi
    start_slurm
    wait_for 60 "$NODES idle nodes" nodes_idle
    touch "$WD/.up"
    log "cluster up: $NODES nodes x $CPUS cpus, accounting=$ACCT, $(elapsed "$t0n")s"
    env_lines
}

ancestors() {  # pids of this shell and all its ancestors (never to be killed)
    local p=$$
    while [[ "$p" =~ ^[0-9]+$ && "$p" -gt 1 ]]; do echo "$p"; p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 0); done
}
sweep_strays() {  # slurmstepd + job processes of THIS cluster that outlived their slurmd
    local p env keep n=0
    keep=" $(ancestors | tr '\n' ' ') "
    for p in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ "$keep" == *" $p "* ]] && continue
        env=$(tr '\0' '\n' 2>/dev/null <"/proc/$p/environ") || continue
        grep -qxF "SLURM_CONF=$CONF" <<<"$env" || continue
        # slurmstepd (comm), or a job task (has SLURM_JOB_ID); plain clients that merely
        # sourced env.sh (e.g. the test runner) have neither and are left alone
        if [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == slurmstepd ]] || grep -q '^SLURM_JOB_ID=' <<<"$env"; then
            kill -KILL "$p" 2>/dev/null && n=$((n + 1))
        fi
    done
    ((n == 0)) || log "killed $n leftover job/slurmstepd processes"
}

do_down() {
    [[ -d "$WD" ]] || { [[ "${1:-}" == quiet ]] || log "nothing at $WD"; return 0; }
    [[ -f "$CONF" || -d "$RUN" ]] || die "$WD does not look like a slurmcluster.sh work dir; not removing"
    local f i
    # cancel jobs first so slurmstepd + job processes are cleaned up by Slurm itself
    if pid_alive "$RUN/slurmctld.pid" && [[ -n "$(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null)" ]]; then
        SLURM_CONF=$CONF timeout 10 squeue -h -o %i 2>/dev/null | xargs -r env SLURM_CONF="$CONF" timeout 10 scancel --quiet 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do   # KillWait=2, so this is normally < 3 s
            [[ -z "$(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.1
        done
    fi
    for f in "$RUN"/slurmd-*.pid; do [[ -e "$f" ]] && stop_pidfile "$f" slurmd; done
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    stop_pidfile "$RUN/mariadbd.pid" mariadbd
    stop_pidfile "$RUN/munged.pid" munged
    sweep_strays
    rm -rf -- "$WD"
    [[ "${1:-}" == quiet ]] || log "down: removed $WD"
}

do_status() {
    local f
    for f in "$RUN"/*.pid; do
        [[ -e "$f" ]] || continue
        if pid_alive "$f"; then echo "$(basename "$f" .pid): running pid $(<"$f")"; else echo "$(basename "$f" .pid): dead"; fi
    done
    SLURM_CONF=$CONF sinfo -N 2>&1 || true
}

case "$ACTION" in
    up) do_up ;;
    down) do_down ;;
    status) do_status ;;
    env) env_lines ;;
    *) echo "usage: $0 up|down|status|env WORKDIR" >&2; exit 2 ;;
esac
