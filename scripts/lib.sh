# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): messages, root, ports, and
# installing Debian packages without letting them start system services.

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

# Runs a command as root: directly when root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "installing packages needs root (or sudo), to run: $*"
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A policy-rc.d that forbids starting services while apt-get runs (Debian's own mechanism):
# the packages' postinst would otherwise start system redis (6379), clickhouse (8123, 9000) and
# prometheus (9090) on a machine with a running init, or fail the install on one without.
# OWN_POLICY_RC names the file while this script owns it; callers remove it on exit with
# release_policy_rc.
POLICY_RC=/usr/sbin/policy-rc.d
OWN_POLICY_RC=""
release_policy_rc() {
    if [ -n "$OWN_POLICY_RC" ]; then
        as_root rm -f "$OWN_POLICY_RC" || true
    fi
    OWN_POLICY_RC=""
}

# Stops a system service that a package started although we asked it not to (a port that was
# free before the install and is busy after it).
stop_autostarted() {
    local busy_before=" $1 " entry port svc
    for entry in 6379:redis-server 8123:clickhouse-server 9000:clickhouse-server 9090:prometheus; do
        port=${entry%%:*}
        svc=${entry#*:}
        if [[ $busy_before != *" $port "* ]] && port_busy "$port"; then
            echo "note: installing $svc started a system service on port $port; stopping it"
            if [ -d /run/systemd/system ]; then
                as_root systemctl stop "$svc" || true
            else
                as_root service "$svc" stop || true
            fi
        fi
    done
}

# install_packages PACKAGE...: apt-get update and install, no recommends, no service started.
install_packages() {
    local busy_before="" port
    for port in 6379 8123 9000 9090; do
        if port_busy "$port"; then busy_before="$busy_before $port"; fi
    done
    if [ ! -e "$POLICY_RC" ]; then
        OWN_POLICY_RC=$POLICY_RC
        printf '#!/bin/sh\n# Written by spillway scripts for the time of an apt-get install.\nexit 101\n' |
            as_root tee "$OWN_POLICY_RC" >/dev/null
        as_root chmod 755 "$OWN_POLICY_RC"
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
    as_root "${apt[@]}" update
    as_root "${apt[@]}" install -y --no-install-recommends "$@"
    release_policy_rc
    stop_autostarted "$busy_before"
}

# pip_install PACKAGE...: python3 -m pip install; where Debian's python3 refuses (PEP 668,
# "externally-managed-environment"), into the user's site-packages instead, leaving /usr untouched.
pip_install() {
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip missing for python3: install it (apt-get install python3-pip), then rerun"
    if ! python3 -m pip install --quiet "$@"; then
        echo "note: retrying as 'python3 -m pip install --user --break-system-packages $*'"
        python3 -m pip install --quiet --user --break-system-packages "$@" ||
            die "'python3 -m pip install $*' failed: install it for python3 yourself (or use a venv)"
    fi
}

# clickhouse_config DIR HTTP_PORT TCP_PORT ERROR_LOG [EXTRA_XML]: writes DIR/config.xml, a
# minimal clickhouse-server (18.16, <yandex>) config on 127.0.0.1 with its data under DIR and its
# users in DIR/users.xml; EXTRA_XML (elements of <yandex>, e.g. a cluster's) goes at its end.
clickhouse_config() {
    local dir=$1 http=$2 tcp=$3 errorlog=$4 extra=${5:-}
    cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/server.log</log><errorlog>$errorlog</errorlog>
    <console>0</console></logger>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
$extra</yandex>
EOF
}
