#!/usr/bin/env bash
# A Slurm cluster on this machine (localhost), for trying the Slurm launcher and for tests.
#
#   slurm/local-cluster.sh start [--nodes N]
#                                   install Slurm + munge if missing (apt-get), start munged, slurmctld and one
#                                   slurmd per node, wait until every node is idle. A no-op when the cluster
#                                   already runs with N nodes. One node (the default) is named after this host;
#                                   N > 1 nodes are node1 .. nodeN, each a slurmd of its own on this host
#                                   (NodeHostname = this host, its own port), all claiming the same CPUs.
#   slurm/local-cluster.sh stop     cancel this cluster's jobs, stop its daemons (by their pid files only)
#   slurm/local-cluster.sh status   print daemons and node states; exit 0 when every node is up, 1 otherwise
#
# Exit codes: 0 done, 1 the cluster failed to start/stop, 2 usage, 3 Slurm cannot be installed here (not root,
# no apt-get, or apt-get failed, e.g. without network): tests skip on 3 and fail on 1.
#
# Needs root (slurmd must run as root) and no systemd. Debian/Ubuntu packages: slurmctld, slurmd,
# slurm-client, munge. Everything the cluster writes lives in one directory:
#   $OVERPARAM_SLURM_DIR (default /tmp/overparam-slurm): slurm.conf, state/, spool/, log/, munge/, *.pid
# Ports: $OVERPARAM_SLURM_CTLD_PORT (default 6817), $OVERPARAM_SLURM_SLURMD_PORT (default 6818; node K of N > 1
# listens on 6818 + K - 1). Nodes on one host share its hostname: jobs tell them apart by SLURM_NODEID.
#
# Client commands (sbatch, srun, squeue, scontrol, ...) read /etc/slurm/slurm.conf unless SLURM_CONF is set.
# `start` copies the cluster's slurm.conf there (marked as ours) so plain `sbatch`, jobs and `overparam submit slurm`
# find it; `stop` removes that copy again. An /etc/slurm/slurm.conf that is not ours is never touched: then use
#   export SLURM_CONF=$OVERPARAM_SLURM_DIR/slurm.conf
#
# Facts it follows (measured on this machine kind; docs/ARCHITECTURE.md, "Slurm"): munged runs as the munge user; slurmctld and slurmd are started with
# setsid (no systemd); proctrack/linuxproc + task/none (no cgroups needed); cons_tres with CR_CPU_Memory and a
# DefMemPerCPU, so several jobs share the node; RealMemory = 90% of what `slurmd -C` reports; no slurmdbd, so no
# sacct: finished jobs stay visible to `scontrol show job` for MinJobAge seconds.
set -euo pipefail

DIR=${OVERPARAM_SLURM_DIR:-/tmp/overparam-slurm}
CTLD_PORT=${OVERPARAM_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${OVERPARAM_SLURM_SLURMD_PORT:-6818}
MIN_JOB_AGE=${OVERPARAM_SLURM_MIN_JOB_AGE:-600}   # seconds a finished job stays in `scontrol show job`
START_TIMEOUT=${OVERPARAM_SLURM_START_TIMEOUT:-90}
SYS_CONF=/etc/slurm/slurm.conf
CONF=$DIR/slurm.conf
MARK="# overparam-dist local cluster, written by slurm/local-cluster.sh from $CONF"
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF=$CONF   # our own client calls always talk to our cluster

say() { echo "local-cluster: $*"; }
die() { echo "local-cluster: error: $*" >&2; exit 1; }
cannot_install() { echo "local-cluster: cannot install: $*" >&2; exit 3; }

# --- processes, by pid file only ------------------------------------------------------------------------------
# pid_alive FILE NAME: the pid in FILE is a live process whose command name is NAME (guards against reused pids)
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1" 2>/dev/null) || return 1
    [[ -n $pid ]] && proc_is "$pid" "$2"
}

# proc_is PID NAME: PID is a live (not zombie) process whose command name is NAME
proc_is() {
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2"* ]] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

stop_daemon() {  # stop_daemon PIDFILE NAME
    local file=$1 name=$2 pid i
    if ! pid_alive "$file" "$name"; then
        rm -f "$file"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$file" 2>/dev/null || true)
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # Wait for the process itself: the daemons delete their pid files before they have finished exiting.
    for ((i = 0; i < 100; i++)); do
        proc_is "$pid" "$name" || break
        sleep 0.2
    done
    if proc_is "$pid" "$name"; then
        say "$name ($pid) ignored SIGTERM for 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 25; i++)); do
            proc_is "$pid" "$name" || break
            sleep 0.2
        done
    fi
    rm -f "$file"
    say "stopped $name ($pid)"
}

running_ctld() { pid_alive "$DIR/slurmctld.pid" slurmctld; }
NODES_FILE=$DIR/nodes   # how many nodes the running cluster has (stop and status read it)
NODES=1
[[ -s $NODES_FILE ]] && NODES=$(tr -dc '0-9' <"$NODES_FILE")
slurmd_pid_file() { if ((NODES == 1)); then echo "$DIR/slurmd.pid"; else echo "$DIR/slurmd.$1.pid"; fi; }
running_slurmd() {  # every node's slurmd
    local n
    for n in $(node_names); do pid_alive "$(slurmd_pid_file "$n")" slurmd || return 1; done
}
any_slurmd() {
    local n
    for n in $(node_names); do pid_alive "$(slurmd_pid_file "$n")" slurmd && return 0; done
    return 1
}
slurmd_pids() { local n; for n in $(node_names); do cat "$(slurmd_pid_file "$n")" 2>/dev/null; done | paste -sd' '; }
running_munged() { pid_alive "$DIR/munge/munged.pid" munged; }

# --- node state -----------------------------------------------------------------------------------------------
node_name() { hostname -s; }   # this host
node_names() { if ((NODES == 1)); then node_name; else seq -f 'node%g' 1 "$NODES"; fi; }

# prints NODE's state as sinfo reports it (idle, mixed, allocated, down*, drained, ...), or nothing
node_state() {
    timeout 15 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1 || true
}

node_states() { local n; for n in $(node_names); do echo "$n $(node_state "$n")"; done | paste -sd, | sed 's/,/, /g'; }

node_usable() {  # every node
    local n
    for n in $(node_names); do
        case "$(node_state "$n")" in
            idle | mixed | allocated | completing) ;;
            *) return 1 ;;
        esac
    done
}

# --- install ----------------------------------------------------------------------------------------------------
ensure_packages() {
    local missing=() pair created_policy=0
    for pair in slurmctld:slurmctld slurmd:slurmd slurm-client:sbatch munge:munged; do
        command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || cannot_install "Slurm is not installed (${missing[*]} missing) and there is no apt-get here"
    say "installing ${missing[*]} with apt-get (takes a minute)"
    # No init system here: keep the packages' postinst scripts from starting daemons of their own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}")
    local rc=0
    "${apt[@]}" >"$DIR/log/apt.log" 2>&1 ||
        { apt-get update -q >>"$DIR/log/apt.log" 2>&1 && "${apt[@]}" >>"$DIR/log/apt.log" 2>&1; } ||
        rc=$?
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || cannot_install "apt-get install ${missing[*]} failed (exit $rc); see $DIR/log/apt.log"
}

# --- configuration ----------------------------------------------------------------------------------------------
write_config() {
    local host hw mem real cpus defmem
    host=$(node_name)
    # The short hostname must resolve: slurmd finds its NodeName by it, and jobs use it as MASTER_ADDR.
    if ! grep -Eq "^[^#]*[[:space:]]$host([[:space:]]|\$)" /etc/hosts; then
        echo "127.0.0.1 $host" >>/etc/hosts
        say "added '127.0.0.1 $host' to /etc/hosts"
    fi
    hw=$(slurmd -C | head -n 1)   # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=23000
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $mem && -n $cpus ]] || die "cannot read CPUs/RealMemory from 'slurmd -C': $hw"
    real=$((mem * 9 / 10 / NODES))   # the nodes share this host's memory
    defmem=$((real / cpus / 2))   # a 1-CPU job gets half its fair share of memory unless it asks (--mem)
    ((defmem > 4096)) && defmem=4096
    hw=$(sed -e 's/^NodeName=[^ ]* *//' -e 's/ *RealMemory=[0-9]*//' <<<"$hw")
    local per_node="" node_lines="NodeName=$host $hw RealMemory=$real State=UNKNOWN" k
    if ((NODES > 1)); then
        per_node=".%n"   # slurmd expands %n to its node name: one spool dir, pid file and log per node
        node_lines=""
        for ((k = 1; k <= NODES; k++)); do
            node_lines+="NodeName=node$k NodeHostname=$host Port=$((SLURMD_PORT + k - 1)) $hw RealMemory=$real State=UNKNOWN"$'\n'
        done
    fi

    cat >"$CONF.new" <<EOF
$MARK
# $NODES node(s), one partition; see the header of slurm/local-cluster.sh.
ClusterName=overparam
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$per_node
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd$per_node.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd$per_node.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MaxArraySize=1001
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
$node_lines
PartitionName=local Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.new" "$CONF"
}

install_system_conf() {
    mkdir -p /etc/slurm
    if [[ -e $SYS_CONF ]] && [[ $(head -n 1 "$SYS_CONF") != "$MARK" ]] && running_other_cluster; then
        say "$SYS_CONF exists and is not this cluster's: left alone. Point clients at this cluster with"
        say "  export SLURM_CONF=$CONF"
        return 0
    fi
    cp "$CONF" "$SYS_CONF.overparam-new"
    mv "$SYS_CONF.overparam-new" "$SYS_CONF"
}

running_other_cluster() {  # $SYS_CONF is not ours, or is another local cluster's that still runs
    local other
    head -n 1 "$SYS_CONF" | grep -q '^# overparam-dist local cluster' || return 0
    other=$(head -n 1 "$SYS_CONF" | sed -n 's/.* from \(.*\)\/slurm.conf$/\1/p')
    [[ -n $other ]] && pid_alive "$other/slurmctld.pid" slurmctld
}

remove_system_conf() {
    if [[ -e $SYS_CONF ]] && [[ $(head -n 1 "$SYS_CONF") == "$MARK" ]]; then
        rm -f "$SYS_CONF"
    fi
}

# --- munge ------------------------------------------------------------------------------------------------------
start_munged() {
    local m=$DIR/munge i
    running_munged && return 0
    id munge >/dev/null 2>&1 || die "user 'munge' is missing (the munge package creates it)"
    mkdir -p "$m"
    chown munge:munge "$m"
    chmod 0755 "$m"   # clients (root and job users) must reach the socket; munged wants it not group/other-writable
    if [[ ! -s $m/munge.key ]]; then
        dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$m/munge.key"
    chmod 0400 "$m/munge.key"
    rm -f "$m/munge.socket" "$m/munge.socket.lock" "$m/munged.pid"
    runuser -u munge -- setsid munged --key-file="$m/munge.key" --socket="$m/munge.socket" \
        --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed" \
        </dev/null >>"$DIR/log/munged.out" 2>&1 || die "munged did not start; see $m/munged.log and $DIR/log/munged.out"
    for ((i = 0; i < 50; i++)); do
        running_munged && [[ -S $m/munge.socket ]] && break
        sleep 0.1
    done
    running_munged || die "munged did not start; see $m/munged.log"
    munge -n --socket="$m/munge.socket" | unmunge --socket="$m/munge.socket" >/dev/null ||
        die "munged runs but a credential does not round-trip; see $m/munged.log"
    say "munged up (pid $(cat "$m/munged.pid"))"
}

# --- start / stop / status --------------------------------------------------------------------------------------
wait_until_usable() {
    local deadline=$((SECONDS + START_TIMEOUT)) resumed=0 state
    until timeout 15 scontrol ping 2>/dev/null | grep -q 'is UP'; do
        ((SECONDS < deadline)) || { tail -n 20 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld did not answer within ${START_TIMEOUT}s; see $DIR/log/slurmctld.log"; }
        running_ctld || { tail -n 20 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld exited; see $DIR/log/slurmctld.log"; }
        sleep 0.3
    done
    while ! node_usable; do
        state=$(node_states)
        if ((!resumed)) && [[ $state == *down* || $state == *drain* ]]; then
            # A node left down/drained by an earlier run of this cluster: bring it back.
            scontrol update nodename="$(node_names | paste -sd,)" state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        ((SECONDS < deadline)) || die "nodes are '$state' after ${START_TIMEOUT}s; see $DIR/log/slurmd*.log"
        running_slurmd || die "a slurmd exited; see $DIR/log/slurmd*.log"
        sleep 0.3
    done
}

cmd_start() {
    local want=1
    case "${1:-}" in
        "") ;;
        --nodes) want=${2:-} ;;
        *) echo "usage: $0 start [--nodes N]" >&2; exit 2 ;;
    esac
    [[ $want =~ ^[1-9][0-9]?$ ]] || { echo "local-cluster: --nodes must be a whole number from 1 to 99, not '$want'" >&2; exit 2; }
    [[ $(id -u) == 0 ]] || cannot_install "must run as root (slurmd runs jobs as their users; packages come from apt-get)"
    if running_ctld && ((want != NODES)); then
        die "this cluster runs with $NODES node(s), not $want: stop it first ($0 stop)"
    fi
    NODES=$want
    if running_munged && running_ctld && running_slurmd; then
        if node_usable; then
            say "already running ($(node_states)); nothing to do"
            install_system_conf
            return 0
        fi
        say "daemons run but the nodes are '$(node_states)': waiting for them"
        wait_until_usable
        say "$(node_states)"
        return 0
    fi
    mkdir -p "$DIR" "$DIR/state" "$DIR/spool" "$DIR/log"
    chmod 0755 "$DIR"
    ensure_packages
    write_config
    install_system_conf
    start_munged
    if ! running_ctld; then
        setsid slurmctld -f "$CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 ||
            die "slurmctld did not start; see $DIR/log/slurmctld.log and $DIR/log/slurmctld.out"
    fi
    echo "$NODES" >"$NODES_FILE"
    local n
    for n in $(node_names); do
        pid_alive "$(slurmd_pid_file "$n")" slurmd && continue
        if ((NODES == 1)); then
            setsid slurmd -f "$CONF" </dev/null >>"$DIR/log/slurmd.out" 2>&1 ||
                die "slurmd did not start; see $DIR/log/slurmd.log and $DIR/log/slurmd.out"
        else
            setsid slurmd -f "$CONF" -N "$n" </dev/null >>"$DIR/log/slurmd.$n.out" 2>&1 ||
                die "slurmd $n did not start; see $DIR/log/slurmd.$n.log and $DIR/log/slurmd.$n.out"
        fi
    done
    wait_until_usable
    say "up: $(node_states) (slurmctld pid $(cat "$DIR/slurmctld.pid"), slurmd pid(s) $(slurmd_pids))"
    say "config $CONF, logs $DIR/log/"
}

cmd_stop() {
    if ! running_munged && ! running_ctld && ! any_slurmd; then
        say "not running; nothing to do"
        rm -f "$DIR/slurmctld.pid" "$DIR/slurmd.pid" "$DIR"/slurmd.node*.pid "$DIR/munge/munged.pid" "$NODES_FILE"
        remove_system_conf
        return 0
    fi
    if running_ctld; then
        # This cluster's jobs end with it (otherwise their processes would outlive slurmd).
        local jobs i
        jobs=$(timeout 15 squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 15 scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null || true) ]] && break
                sleep 0.2
            done
        fi
    fi
    local n
    for n in $(node_names); do stop_daemon "$(slurmd_pid_file "$n")" slurmd; done
    stop_daemon "$DIR/slurmctld.pid" slurmctld
    rm -f "$NODES_FILE"
    stop_daemon "$DIR/munge/munged.pid" munged
    remove_system_conf
}

cmd_status() {
    local ok=0
    running_munged && say "munged    pid $(cat "$DIR/munge/munged.pid")" || { say "munged    not running"; ok=1; }
    running_ctld && say "slurmctld pid $(cat "$DIR/slurmctld.pid")" || { say "slurmctld not running"; ok=1; }
    running_slurmd && say "slurmd    pid(s) $(slurmd_pids)" || { say "slurmd    not running (all $NODES)"; ok=1; }
    if ((ok == 0)); then
        if node_usable; then
            say "nodes: $(node_states) (config $CONF)"
        else
            say "nodes: '$(node_states)' (not usable)"
            ok=1
        fi
    fi
    return $ok
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start [--nodes N]|stop|status   (state in \$OVERPARAM_SLURM_DIR, default /tmp/overparam-slurm)" >&2
        exit 2
        ;;
esac
