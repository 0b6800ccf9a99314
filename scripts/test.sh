#!/usr/bin/env bash
# Runs Spillway's whole test suite: formatting, clippy, and every test (unit and end to end).
#
#   scripts/test.sh
#
# On a fresh Debian bookworm machine it first installs what the tests need (redis-server and
# redis-cli, clickhouse-server 18.16, promtool from the prometheus package) with apt-get, as root
# or through sudo. The apt step is skipped when all of these are already on PATH. No server is
# started here: the tests start their own redis-server and clickhouse-server on free ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# clickhouse-server lives in /usr/sbin, which a non-root user's PATH may lack; rustup's cargo in
# ~/.cargo/bin, which a non-login shell (or sudo) may lack.
export PATH="$PATH:/usr/sbin:/sbin:${HOME:-/root}/.cargo/bin"

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
POLICY_RC=/usr/sbin/policy-rc.d
OWN_POLICY_RC=""
cleanup() {
    if [ -n "$OWN_POLICY_RC" ]; then
        as_root rm -f "$OWN_POLICY_RC" || true
    fi
}
trap cleanup EXIT

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
    cleanup
    OWN_POLICY_RC=""
    stop_autostarted "$busy_before"
}

step "Checking the tools the tests need"
missing=()
for tool in redis-server redis-cli clickhouse-server promtool; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "redis-server, redis-cli, clickhouse-server and promtool are installed; skipping apt-get"
else
    echo "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install redis-server, clickhouse-server (18.16+) and promtool yourself"
    step "Installing redis-server, clickhouse-server and prometheus (promtool) with apt-get"
    install_packages redis-server redis-tools clickhouse-server clickhouse-client prometheus
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after apt-get install"
    done
fi

# tests/modern_clickhouse.rs checks the modern DDL and row bytes on a current ClickHouse (26.x)
# embedded in Python by chdb (the chdb-core wheel, about 180 MB, from PyPI).
command -v python3 >/dev/null 2>&1 ||
    die "python3 not found: install it (apt-get install python3 python3-pip), then 'python3 -m pip install chdb-core'"
if ! (cd / && python3 -c 'import chdb.session') >/dev/null 2>&1; then
    step "Installing chdb-core (ClickHouse 26.x in-process) with pip"
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip missing for python3: install it (apt-get install python3-pip), then rerun"
    if ! python3 -m pip install --quiet chdb-core; then
        # Debian's own python3 refuses pip installs (PEP 668, "externally-managed-environment"):
        # install into the user's site-packages instead, leaving /usr untouched.
        echo "note: retrying as 'python3 -m pip install --user --break-system-packages chdb-core'"
        python3 -m pip install --quiet --user --break-system-packages chdb-core ||
            die "'python3 -m pip install chdb-core' failed: install chdb-core for python3 yourself (or use a venv)"
    fi
    (cd / && python3 -c 'import chdb.session') || die "chdb-core installed but python3 cannot import chdb"
fi

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then make sure ~/.cargo/bin is on PATH"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: run 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: run 'rustup component add clippy'"
echo "$(cargo --version); $(redis-server --version | cut -d' ' -f1-3); $(promtool --version 2>&1 | head -n1)"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || die "formatting differs: run 'cargo fmt --all'"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings || die "clippy found problems (see above)"

step "cargo test --all-targets --no-fail-fast"
cargo test --all-targets --no-fail-fast || die "tests failed (see above)"

step "All checks passed: fmt, clippy, tests"
