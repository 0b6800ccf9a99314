#!/usr/bin/env bash
# Runs Spillway's whole test suite: formatting, clippy, every test (unit and end to end), and the
# deployment checks (deploy/test.sh: manifests, unit, and the container image built and run).
#
#   scripts/test.sh
#
# On a fresh Debian bookworm machine it first installs what the tests need (redis-server and
# redis-cli, clickhouse-server 18.16, promtool from the prometheus package, openssl for the TLS
# test, iproute2 for the network-fault test, which needs root or SPILLWAY_SKIP_NETNS=1; zookeeper,
# with a JRE, for the ClickHouse cluster tests) with apt-get, as root or through sudo. The apt step is skipped when all of these are
# already on PATH. No server is started here: the tests start their own redis-server and
# clickhouse-server on free ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# clickhouse-server lives in /usr/sbin, which a non-root user's PATH may lack; rustup's cargo in
# ~/.cargo/bin, which a non-login shell (or sudo) may lack.
export PATH="$PATH:/usr/sbin:/sbin:${HOME:-/root}/.cargo/bin"

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
trap release_policy_rc EXIT

step "Checking the tools the tests need"
missing=()
for tool in redis-server redis-cli clickhouse-server promtool openssl ip; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# ZooKeeper (Debian's zookeeper package, with a JRE) coordinates the ClickHouse cluster tests.
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || missing+=(zookeeper)
if [ ${#missing[@]} -eq 0 ]; then
    echo "redis-server, redis-cli, clickhouse-server, promtool, openssl, ip and zookeeper are installed; skipping apt-get"
else
    echo "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install redis-server, clickhouse-server (18.16+) and promtool yourself"
    step "Installing redis-server, clickhouse-server and prometheus (promtool) with apt-get"
    install_packages redis-server redis-tools clickhouse-server clickhouse-client prometheus openssl iproute2 zookeeper
    for tool in "${missing[@]}"; do
        [ "$tool" = zookeeper ] && { [ -f /usr/share/java/zookeeper.jar ] || die "zookeeper is still missing after apt-get install"; continue; }
        command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after apt-get install"
    done
fi

# A current ClickHouse (26.x) comes embedded in Python by chdb (the chdb-core wheel, about
# 180 MB, from PyPI, pinned): the end-to-end tests run against it too, its clickhouse-local
# serving ClickHouse's own HTTP interface (SPILLWAY_TEST_CLICKHOUSE=modern).
CHDB_VERSION=26.9.0
command -v python3 >/dev/null 2>&1 ||
    die "python3 not found: install it (apt-get install python3 python3-pip), then 'python3 -m pip install chdb-core'"
if ! (cd / && python3 -c "import importlib.metadata as m, chdb.session; assert m.version('chdb-core') == '$CHDB_VERSION'") >/dev/null 2>&1; then
    step "Installing chdb-core (ClickHouse 26.x in-process) with pip"
    pip_install "chdb-core==$CHDB_VERSION"
    (cd / && python3 -c 'import chdb.session') || die "chdb-core installed but python3 cannot import chdb"
fi

command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then make sure ~/.cargo/bin is on PATH"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: run 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: run 'rustup component add clippy'"
echo "$(cargo --version); $(redis-server --version | cut -d' ' -f1-3); $(promtool --version 2>&1 | head -n1)"

# A clean build of the tests takes about 1.2 GB under target/, the test servers' data a few
# hundred MB more under the temp directory. Say so up front rather than fail in the linker.
avail_mb=$(df -Pm . | awk 'NR==2 {print $4}')
if [ "${avail_mb:-0}" -lt 2048 ]; then
    echo "warning: only ${avail_mb} MB free on the disk of $(pwd); the build and tests need about 2 GB"
fi
# CI builds each clean clone once: incremental compilation caches would only take disk.
if [ -n "${CI:-}" ]; then
    export CARGO_INCREMENTAL=0
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || die "formatting differs: run 'cargo fmt --all'"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || die "clippy found problems (see above)"

step "cargo test --all-targets --no-fail-fast"
cargo test --all-targets --no-fail-fast || die "tests failed (see above)"

step "cargo test --test it, on a current ClickHouse (chdb-core $CHDB_VERSION)"
SPILLWAY_TEST_CLICKHOUSE=modern cargo test --test it --no-fail-fast ||
    die "end-to-end tests failed on the current ClickHouse (see above)"

# The deployment artifacts (deploy/): static checks, `cargo install`, the container image built
# with podman and run against real servers, the systemd unit run under systemd (root only). With
# the debug binary `cargo test` just built: a release build would add 5-15 minutes to CI
# (deploy/test.sh alone builds release). See deploy/README.md.
if [ "$(id -u)" -eq 0 ]; then
    step "deploy/test.sh: deployment artifacts, the container image and the systemd unit"
    DEPLOY_PROFILE=debug bash deploy/test.sh || die "deployment checks failed (see above)"
else
    step "deploy/test.sh --static: deployment artifacts (not root: no container image test)"
    DEPLOY_PROFILE=debug bash deploy/test.sh --static || die "deployment checks failed (see above)"
fi

step "All checks passed: fmt, clippy, tests (18.16 and 26.9), deployment"
