#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on localhost, without systemd:
#   munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd
# Idempotent: daemons already running are reused (and their config is left
# alone); returns once `sinfo` shows the node usable.
# Settings (partition, ports, state dir, timeout): see scripts/slurm/lib.sh.
# Undo with scripts/slurm_local_down.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$HERE/slurm
LOG_TAG=slurm-up
# shellcheck source=slurm/lib.sh
. "$TEMPLATES/lib.sh"

PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
COMMANDS=(munged munge unmunge slurmctld slurmd slurmdbd sbatch sacct sacctmgr
    sinfo scontrol mariadbd mariadb mariadb-admin mariadb-install-db)

# await_daemon NAME PIDFILE STRICT LOGFILE CMD...: wait until CMD succeeds;
# die with the daemon's log if it exits meanwhile or the timeout passes.
await_daemon() {
    local name=$1 pidfile=$2 strict=$3 logfile=$4 start=$SECONDS
    shift 4
    until "$@" >/dev/null 2>&1; do
        # Give a daemonizing process a moment to write its pid file.
        if [ $((SECONDS - start)) -ge 2 ] && ! is_running "$name" "$pidfile" "$strict"; then
            show_log "$logfile"
            die "$name exited during startup (log: $logfile)"
        fi
        if [ $((SECONDS - start)) -ge "$SALN_SLURM_TIMEOUT" ]; then
            show_log "$logfile"
            die "$name not ready after ${SALN_SLURM_TIMEOUT}s (log: $logfile)"
        fi
        sleep 0.5
    done
}

# --- packages ----------------------------------------------------------------

install_packages() {
    local cmd missing=()
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed ($(slurmd -V))"
        return
    fi
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    block_service_autostart
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; } \
        >"$LOG_DIR/apt.log" 2>&1; then
        show_log "$LOG_DIR/apt.log"
        die "apt-get install failed (full log: $LOG_DIR/apt.log)"
    fi
    log "installed $(slurmd -V)"
}

# Package postinst scripts would start Debian's own munged/MariaDB (MariaDB
# on port 3306 with /var/lib/mysql) where no policy-rc.d forbids it. We start
# our own instances, so forbid it for the duration of the install.
block_service_autostart() {
    [ -e /usr/sbin/policy-rc.d ] && return
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
}

# --- configuration -----------------------------------------------------------

# Memory to advertise: 80% of what is available now, rounded down to a GiB so
# that re-rendering gives the same file unless memory changed a lot.
node_memory_mb() {
    local avail_kb mb
    avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    mb=$((avail_kb * 8 / 10 / 1024))
    [ "$mb" -lt 1024 ] || mb=$((mb / 1024 * 1024))
    echo "$mb"
}

db_password() {
    local file=$DB_DIR/slurm.pass
    if [ ! -s "$file" ]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    fi
    cat "$file"
}

# render TEMPLATE DEST MODE: fill @VARS@ in scripts/slurm/TEMPLATE into DEST.
# A hand-written DEST (without our marker) is kept aside as DEST.saln-bak.
render() {
    local src=$TEMPLATES/$1 dest=$2 mode=$3 tmp
    tmp=$(mktemp)
    sed -e "s|@STATE@|$SALN_SLURM_STATE|g" \
        -e "s|@CLUSTER@|$SALN_SLURM_CLUSTER|g" \
        -e "s|@PARTITION@|$SALN_SLURM_PARTITION|g" \
        -e "s|@CPUS@|$(nproc)|g" \
        -e "s|@MEM_MB@|$(node_memory_mb)|g" \
        -e "s|@CTLD_PORT@|$SALN_SLURM_CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SALN_SLURM_SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$SALN_SLURM_DBD_PORT|g" \
        -e "s|@DB_PORT@|$SALN_SLURM_DB_PORT|g" \
        -e "s|@DB_USER@|slurm|g" \
        -e "s|@DB_PASS@|$(db_password)|g" \
        "$src" >"$tmp"
    if [ -e "$dest" ] && ! grep -q "$GENERATED_MARK" "$dest"; then
        log "keeping the existing hand-written $dest as $dest.saln-bak"
        mv "$dest" "$dest.saln-bak"
    fi
    install -m "$mode" "$tmp" "$dest"
    rm -f "$tmp"
}

# Configs are only (re)written while the daemons reading them are stopped:
# changing slurm.conf under a running slurmctld would desync it from slurmd.
write_configs() {
    mkdir -p "$SLURM_ETC"
    if is_running slurmdbd "$RUN_DIR/slurmdbd.pid"; then
        log "slurmdbd running: reusing $SLURM_ETC/slurmdbd.conf"
    else
        # slurmdbd refuses a config file readable by others (it holds the password).
        render slurmdbd.conf.in "$SLURM_ETC/slurmdbd.conf" 600
    fi
    if is_running slurmctld "$RUN_DIR/slurmctld.pid" || is_running slurmd "$RUN_DIR/slurmd.pid"; then
        log "slurm running: reusing $SLURM_ETC/slurm.conf"
    else
        render slurm.conf.in "$SLURM_ETC/slurm.conf" 644
        render cgroup.conf.in "$SLURM_ETC/cgroup.conf" 644
        log "wrote $SLURM_ETC/slurm.conf (partition $SALN_SLURM_PARTITION, $(nproc) CPUs, $(node_memory_mb) MB)"
    fi
}

# --- munged ------------------------------------------------------------------

munge_works() { munge -n </dev/null | unmunge; }

start_munged() {
    if is_running munged "$MUNGE_PID" && munge_works >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    # munged checks these are owned by its user and not writable by others.
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if ! is_running munged "$MUNGE_PID"; then
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock # stale
        log "starting munged"
        runuser -u munge -- munged </dev/null >>"$LOG_DIR/munged.out" 2>&1 ||
            { show_log "$LOG_DIR/munged.out"; die "munged failed to start"; }
    fi
    await_daemon munged "$MUNGE_PID" "" /var/log/munge/munged.log munge_works
}

# --- MariaDB (accounting storage for slurmdbd) ---------------------------------

db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }
db_ping() { mariadb-admin --no-defaults --socket="$DB_SOCK" -u root ping; }

# A private instance under the state dir (own datadir, socket, loopback port)
# so that we neither depend on nor disturb a system MariaDB.
start_mariadb() {
    if is_running mariadbd "$DB_PID" strict; then
        log "mariadb already running"
    else
        init_mariadb_datadir
        install -d -o mysql -g mysql -m 0755 "$DB_DIR/run"
        touch "$LOG_DIR/mariadb.log" && chown mysql:mysql "$LOG_DIR/mariadb.log"
        log "starting mariadb on 127.0.0.1:$SALN_SLURM_DB_PORT"
        # mariadbd does not daemonize: detach it so it outlives this script and
        # never holds the caller's stdout (a `make | tee` would hang on it).
        # A small buffer pool is plenty here; slurmdbd merely logs that it
        # would like a bigger one.
        setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --socket="$DB_SOCK" --pid-file="$DB_PID" \
            --bind-address=127.0.0.1 --port="$SALN_SLURM_DB_PORT" --skip-name-resolve \
            --log-error="$LOG_DIR/mariadb.log" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 &
    fi
    await_daemon mariadbd "$DB_PID" strict "$LOG_DIR/mariadb.log" db_ping
    create_slurm_db
}

init_mariadb_datadir() {
    [ -d "$DB_DIR/data/mysql" ] && return
    log "initialising mariadb datadir $DB_DIR/data"
    mkdir -p "$DB_DIR/data" && chown mysql:mysql "$DB_DIR/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$LOG_DIR/mariadb-install-db.log" 2>&1 ||
        { show_log "$LOG_DIR/mariadb-install-db.log"; die "mariadb-install-db failed"; }
}

# Idempotent: ALTER keeps the password in sync with $DB_DIR/slurm.pass.
create_slurm_db() {
    local pass host sql="CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
    pass=$(db_password)
    for host in 127.0.0.1 localhost; do
        sql+="CREATE USER IF NOT EXISTS 'slurm'@'$host' IDENTIFIED BY '$pass';"
        sql+="ALTER USER 'slurm'@'$host' IDENTIFIED BY '$pass';"
        sql+="GRANT ALL ON slurm_acct_db.* TO 'slurm'@'$host';"
    done
    db_sql -e "$sql" || die "could not create the slurm_acct_db database/user"
}

# --- Slurm daemons -------------------------------------------------------------

# start_daemon NAME PIDFILE CMD...: start a Slurm daemon (they daemonize
# themselves) unless it already runs. Startup errors go to LOG_DIR/NAME.out.
start_daemon() {
    local name=$1 pidfile=$2
    shift 2
    if is_running "$name" "$pidfile"; then
        log "$name already running (pid $(pid_of "$name" "$pidfile"))"
        return
    fi
    log "starting $name"
    "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 ||
        { show_log "$LOG_DIR/$name.out"; show_log "$LOG_DIR/$name.log"; die "$name failed to start"; }
}

dbd_ready() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    start_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" slurmdbd
    await_daemon slurmdbd "$RUN_DIR/slurmdbd.pid" "" "$LOG_DIR/slurmdbd.log" dbd_ready
    # slurmctld only sends job records for a cluster known to the database.
    if ! dbd_ready | grep -qx "$SALN_SLURM_CLUSTER"; then
        log "registering cluster $SALN_SLURM_CLUSTER in slurmdbd"
        sacctmgr -i add cluster "$SALN_SLURM_CLUSTER" >/dev/null ||
            die "sacctmgr add cluster $SALN_SLURM_CLUSTER failed"
    fi
}

ctld_ready() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    start_daemon slurmctld "$RUN_DIR/slurmctld.pid" slurmctld
    await_daemon slurmctld "$RUN_DIR/slurmctld.pid" "" "$LOG_DIR/slurmctld.log" ctld_ready
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }
# slurmd has registered once the node is neither "unknown" nor suffixed with
# "*" (not responding). It may then still be down/drained from a past run.
slurmd_registered() {
    local state
    state=$(node_state)
    [[ $state =~ ^[a-z]+$ && $state != unknown ]]
}
# Usable: idle, or busy with jobs (mixed/allocated) when `up` is re-run;
# a trailing * means slurmd is not responding.
node_ready() { node_state | grep -Eqx 'idle|mixed|allocated|completing'; }

start_slurmd() {
    start_daemon slurmd "$RUN_DIR/slurmd.pid" slurmd -N localhost
    await_daemon slurmd "$RUN_DIR/slurmd.pid" "" "$LOG_DIR/slurmd.log" slurmd_registered
    node_ready && return
    # A node left DOWN/DRAINED by an earlier unclean stop needs a resume.
    log "node state is '$(node_state)'; trying scontrol update state=resume"
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_until node_ready ||
        die "node localhost not idle after ${SALN_SLURM_TIMEOUT}s (state: '$(node_state)'; see $LOG_DIR/slurmd.log)"
}

main() {
    require_root
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$DB_DIR" "$SALN_SLURM_STATE/ctld" "$SALN_SLURM_STATE/d"
    install_packages
    write_configs
    start_munged
    start_mariadb
    start_slurmdbd # before slurmctld, which connects to it at startup
    start_slurmctld
    start_slurmd
    log "cluster up in ${SECONDS}s: partition '$SALN_SLURM_PARTITION', state in $SALN_SLURM_STATE"
    sinfo
}

main "$@"
