#!/usr/bin/env bash
# local_slurm.sh - run a real single-host SLURM cluster (Debian slurm-wlm + munge)
# entirely under a state directory, as root, without systemd. The SLURM integration tests use it.
# Run: eval "$(bash scripts/local_slurm.sh start /tmp/slurm)" ; ... ; bash scripts/local_slurm.sh stop /tmp/slurm
#
#   local_slurm.sh start <statedir>   generate munge key + slurm.conf, start
#                                     munged/slurmctld/slurmd, wait for node idle
#   local_slurm.sh stop  <statedir>   kill exactly the recorded PIDs
#
# Install (Debian 12):  apt-get install -y --no-install-recommends \
#                           slurmctld slurmd slurm-client munge
# Optional env: LOCAL_SLURM_CTLD_PORT (6817), LOCAL_SLURM_SLURMD_PORT (6818; node i gets +i),
#               LOCAL_SLURM_MEM_HEADROOM_MB (1024), LOCAL_SLURM_TIMEOUT (60),
#               LOCAL_SLURM_CRED_EXPIRE (10; = requeue restart delay - 1 s, min 5),
#               LOCAL_SLURM_NODES (1): slurmd daemons on this host, each a node of its own
#                 (<host>, <host>-1, ...) sharing its CPUs, with the memory split between them,
#               LOCAL_SLURM_CPUS (this host's): CPUs each node declares (more than the host has
#                 lets jobs ask for a GPU cluster's CPU counts; they share the real cores),
#               LOCAL_SLURM_GPUS (0): GPUs per node declared as generic resources (gres/gpu
#                 over placeholder device files), so --gpus-per-node requests are scheduled and
#                 shown as TRES like on a GPU cluster; nothing here can compute on them
set -euo pipefail

die() { echo "local_slurm: ERROR: $*" >&2; exit 1; }
log() { echo "local_slurm: $*" >&2; }

usage() { echo "usage: $0 {start|stop} <statedir>" >&2; exit 2; }

check_installed() {
    local missing=() b
    for b in munged slurmctld slurmd sinfo sbatch scontrol; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    if ((${#missing[@]})); then
        die "SLURM/munge not installed (missing: ${missing[*]}). Install with:
  apt-get update && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
    fi
}

pid_alive() {  # alive and not a zombie
    local st
    [[ -n "${1:-}" ]] || return 1
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n "$st" && "$st" != Z* ]]
}

wait_pidfile() {  # <pidfile> <timeout_s> [<logfile>]; prints pid once alive
    local f=$1 t=$2 lf=${3:-} i pid
    for ((i = 0; i < t * 10; i++)); do
        if [[ -s "$f" ]]; then
            pid=$(tr -dc '0-9' <"$f")
            # daemons write the pid file early; give them a moment to hit a fatal error
            if pid_alive "$pid" && ((i >= 3)); then
                if [[ -n "$lf" ]] && grep -q 'fatal:' "$lf" 2>/dev/null; then return 1; fi
                pid_alive "$pid" && { echo "$pid"; return 0; }
            fi
        fi
        [[ -n "$lf" ]] && grep -q 'fatal:' "$lf" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_sacct_shim() {  # <statedir>: squeue-backed stand-in for `sacct -o JobID,State,NodeList --parsable2 -j ID...`
    mkdir -p "$1/bin"
    cat >"$1/bin/sacct" <<'SHIM'
#!/usr/bin/env bash
# Minimal sacct replacement (no slurmdbd here): answers the call submitit makes,
#   sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]
# from slurmctld's in-memory job records (kept MinJobAge seconds after completion).
# Anything else is passed to the real sacct.
ids=() fmt=""
while (($#)); do
    case "$1" in
        -j|--jobs) ids+=("${2//,/ }"); shift 2 ;;
        -j*) ids+=("${1#-j}"); shift ;;
        --jobs=*) ids+=("${1#--jobs=}"); shift ;;
        -o|--format) fmt=$2; shift 2 ;;
        --format=*) fmt=${1#--format=}; shift ;;
        -P|--parsable2|-n|--noheader|-X|--allocations) shift ;;
        *) exec /usr/bin/sacct "$@" ;;
    esac
done
[[ -z "$fmt" || "${fmt,,}" == "jobid,state,nodelist" ]] || exec /usr/bin/sacct "$@"
echo "JobID|State|NodeList"
for id in ${ids[*]}; do
    squeue -h -t all -j "$id" -o '%i|%T|%N' 2>/dev/null || true
done
exit 0
SHIM
    chmod 755 "$1/bin/sacct"
}

do_stop() {
    local sd=$1 pids=() p i j
    [[ -f "$sd/pids" ]] || { log "no $sd/pids, nothing to stop"; return 0; }
    mapfile -t pids < <(grep -E '^[0-9]+$' "$sd/pids" || true)
    # reverse order of start: slurmd, slurmctld, munged
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p=${pids[i]}
        pid_alive "$p" || continue
        # guard against PID reuse: only signal our daemons
        case "$(cat "/proc/$p/comm" 2>/dev/null)" in
            munged|slurmctld|slurmd) ;;
            *) log "pid $p is no longer a slurm/munge daemon, skipping"; continue ;;
        esac
        kill -TERM "$p" 2>/dev/null || true
        # wait up to 15 s per daemon, then SIGKILL
        for ((j = 0; j < 150; j++)); do pid_alive "$p" || break; sleep 0.1; done
        if pid_alive "$p"; then
            log "pid $p did not exit on SIGTERM, sending SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
            for ((j = 0; j < 50; j++)); do pid_alive "$p" || break; sleep 0.1; done
        fi
        pid_alive "$p" && die "pid $p still alive"
    done
    rm -f "$sd/pids"
    # Exited daemons are re-parented to PID 1; if PID 1 is slow to reap them they
    # linger briefly as zombies (<defunct>). Give it up to 10 s, cosmetic only.
    for ((j = 0; j < 100; j++)); do
        ps -o pid= -p "$(IFS=,; echo "${pids[*]}")" >/dev/null 2>&1 || break
        sleep 0.1
    done
    log "stopped (${pids[*]})"
}

do_start() {
    local sd=$1
    check_installed
    mkdir -p "$sd"
    sd=$(cd "$sd" && pwd -P)

    # idempotent-ish: stop what we previously started from this statedir
    [[ -f "$sd/pids" ]] && do_stop "$sd"

    local node cpus mem_total headroom realmem defmem ctld_port slurmd_port timeout nnodes gpus
    node=$(hostname -s)
    cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    headroom=${LOCAL_SLURM_MEM_HEADROOM_MB:-1024}
    ((mem_total > 2 * headroom)) || headroom=$((mem_total / 4))
    nnodes=${LOCAL_SLURM_NODES:-1}
    gpus=${LOCAL_SLURM_GPUS:-0}
    realmem=$(((mem_total - headroom) / nnodes))  # the nodes share this host's memory
    defmem=$((realmem / cpus))  # job without --mem gets memory for its CPUs, not the whole node
    ctld_port=${LOCAL_SLURM_CTLD_PORT:-6817}
    slurmd_port=${LOCAL_SLURM_SLURMD_PORT:-6818}
    timeout=${LOCAL_SLURM_TIMEOUT:-60}

    # slurmd creates unix sockets <SlurmdSpoolDir>/<node>_<jobid>.<stepid> (sun_path max 108
    # bytes incl. NUL); too long a statedir makes every job fail "launch_failed_requeued_held"
    local probe="$sd/spool/${node}-99/${node}-99_4294967294.4294967294"
    ((${#probe} <= 107)) || die "statedir path too long for unix sockets (${#probe} > 107 chars: $probe); use a shorter <statedir>"

    local p i names=() nodelines="" gresconf=""
    for ((i = 0; i < nnodes; i++)); do
        if ((i == 0)); then names+=("$node"); else names+=("${node}-$i"); fi
    done
    for ((i = 0; i <= nnodes; i++)); do
        p=$((slurmd_port + i - 1)); ((i)) || p=$ctld_port
        port_in_use "$p" && die "port $p already in use (another slurm running?); set LOCAL_SLURM_CTLD_PORT / LOCAL_SLURM_SLURMD_PORT"
    done

    # fresh state every start (old jobs/node state are discarded)
    rm -rf "$sd/munge" "$sd/ctld" "$sd/spool" "$sd/log" "$sd/run" "$sd/bin" "$sd/dev"
    mkdir -p "$sd/munge" "$sd/ctld" "$sd/spool" "$sd/log" "$sd/run" "$sd/dev"
    # munged requires the socket dir to be o+x and key dir not group/other-writable
    chmod 755 "$sd" "$sd/munge"
    chmod 700 "$sd/ctld" "$sd/spool"

    # ---- munge -------------------------------------------------------------
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$sd/munge/munge.key" --force
    else
        dd if=/dev/urandom of="$sd/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$sd/munge/munge.key"
    local sock="$sd/munge/munge.socket"

    # ---- nodes and their GPUs (gres.conf) ------------------------------------
    for ((i = 0; i < nnodes; i++)); do
        nodelines+="NodeName=${names[i]} NodeHostname=${node} NodeAddr=127.0.0.1"
        nodelines+=" Port=$((slurmd_port + i)) CPUs=${cpus} RealMemory=${realmem}"
        if ((gpus)); then
            # placeholder files stand for the devices: slurmd only maps them to indices
            for ((p = 0; p < gpus; p++)); do : >"$sd/dev/${names[i]}-gpu$p"; done
            gresconf+="NodeName=${names[i]} Name=gpu File=$sd/dev/${names[i]}-gpu[0-$((gpus - 1))]"$'\n'
            nodelines+=" Gres=gpu:${gpus}"
        fi
        nodelines+=" State=UNKNOWN"$'\n'
    done
    printf 'AutoDetect=off\n%s' "$gresconf" >"$sd/gres.conf"

    # ---- slurm.conf --------------------------------------------------------
    : >"$sd/plugstack.conf"
    write_sacct_shim "$sd"
    cat >"$sd/slurm.conf" <<EOF
# generated by local_slurm.sh on $(date -Is)
ClusterName=local
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s, min 5) is also the delay before a requeued job may start again
AuthInfo=socket=${sock},cred_expire=${LOCAL_SLURM_CRED_EXPIRE:-10}
MpiDefault=none
MailProg=/bin/true
PlugStackConfig=${sd}/plugstack.conf

StateSaveLocation=${sd}/ctld
SlurmdSpoolDir=${sd}/spool/%n
SlurmctldPidFile=${sd}/run/slurmctld.pid
SlurmdPidFile=${sd}/run/slurmd-%n.pid
SlurmctldLogFile=${sd}/log/slurmctld.log
SlurmdLogFile=${sd}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

# no cgroups / systemd needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

SchedulerType=sched/backfill
# default batch_sched_delay=3 s makes every job wait ~3 s before starting
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
# nodes are what this file declares (LOCAL_SLURM_CPUS may exceed the real cores)
SlurmdParameters=config_overrides
DefMemPerCPU=${defmem}
ReturnToService=2
JobRequeue=1
MaxArraySize=10001
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60

${nodelines}PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    # no cgroup.conf: only cgroup-based plugins read it and none are configured
    rm -f "$sd/cgroup.conf"

    export SLURM_CONF="$sd/slurm.conf"
    local t0=$SECONDS pid_munge pid_ctld pid_slurmd
    : >"$sd/pids"
    # on any failure below, kill whatever was already started
    trap 'rc=$?; if ((rc)); then log "start failed, cleaning up"; do_stop "'"$sd"'" || true; fi' EXIT

    # ---- start daemons (they daemonize; PIDs come from their pid files) ----
    munged --key-file="$sd/munge/munge.key" --socket="$sock" \
        --pid-file="$sd/run/munged.pid" --log-file="$sd/log/munged.log" \
        --seed-file="$sd/munge/munged.seed" \
        || die "munged failed to start, see $sd/log/munged.log"
    pid_munge=$(wait_pidfile "$sd/run/munged.pid" 10) || die "munged pid file missing, see $sd/log/munged.log"
    echo "$pid_munge" >"$sd/pids"

    slurmctld -f "$sd/slurm.conf" \
        || die "slurmctld failed to start, see $sd/log/slurmctld.log"
    pid_ctld=$(wait_pidfile "$sd/run/slurmctld.pid" 20 "$sd/log/slurmctld.log") || die "slurmctld not running, see $sd/log/slurmctld.log"
    echo "$pid_ctld" >>"$sd/pids"

    for p in "${names[@]}"; do
        mkdir -p "$sd/spool/$p" && chmod 700 "$sd/spool/$p"
        slurmd -f "$sd/slurm.conf" -N "$p" \
            || die "slurmd failed to start, see $sd/log/slurmd-$p.log"
        pid_slurmd=$(wait_pidfile "$sd/run/slurmd-$p.pid" 20 "$sd/log/slurmd-$p.log") || die "slurmd not running, see $sd/log/slurmd-$p.log"
        echo "$pid_slurmd" >>"$sd/pids"
    done

    # ---- wait for node idle ------------------------------------------------
    local st=""
    while ((SECONDS - t0 < timeout)); do
        st=$(sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        [[ "$st" == "idle " ]] && break
        sleep 0.5
    done
    if [[ "$st" != "idle " ]]; then
        log "nodes ${names[*]} not all idle after ${timeout}s (states: '${st}'); logs in $sd/log"
        sinfo -N -l >&2 || true
        exit 1  # EXIT trap stops the daemons
    fi
    log "cluster up in $((SECONDS - t0))s: nodes=${names[*]} cpus=$cpus mem=${realmem}MB gpus=$gpus pids=$(tr '\n' ' ' <"$sd/pids")"
    log "optional (no accounting DB): export PATH=$sd/bin:\$PATH  # squeue-backed sacct for submitit job.state"
    echo "export SLURM_CONF=$sd/slurm.conf"
}

[[ $# -eq 2 ]] || usage
case "$1" in
    start) do_start "$2" ;;
    stop) do_stop "$2" ;;
    *) usage ;;
esac
