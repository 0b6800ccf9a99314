#!/usr/bin/env bash
# shellcheck disable=SC2317 # (functions run from traps and through wait_until)
# A live demo of Spillway on one machine:
#
#   scripts/demo.sh                 # set up, samples, 30 s of simulated trading with live
#                                   # progress, a report; then keep running until Ctrl-C
#   scripts/demo.sh --simulate 120  # the same with 120 s of simulated trading (0: none)
#   scripts/demo.sh --once          # samples and report, no simulation, then stop everything
#                                   # and exit (also: DEMO_ONCE=1); --once --simulate 10 works too
#   scripts/demo.sh --cluster       # RLS on a 3+3 Redis Cluster, ClickHouse 2 shards x 2 replicas
#                                   # with ZooKeeper, a failover mid-simulation (DEMO_CLUSTER=1;
#                                   # with --once, 10 s of simulation; scripts/demo-cluster.sh)
#
# It installs redis-server and clickhouse-server with apt-get when they are missing, builds
# Spillway (cargo build --release), then starts in a work directory of its own:
#   - the contract's six redis-servers from scripts/redis/*.conf (port and --dir overridden on
#     the command line): RTS 6379, RIS 6380, RTSS 6381, RTRS 6382 (the trade_results stream),
#     RSS 6383, RLS 6384 (keyspace notifications "Ex$eg"),
#   - a clickhouse-server (HTTP 127.0.0.1:8123, TCP 127.0.0.1:9000), data in the work directory,
#   - spillway itself, /metrics on 127.0.0.1:9464, watching all six instances' memory,
# writes a few sample alerts (text, JSON, MessagePack, one undecodable value, one that expires)
# and three trades (execution logs in RLS, closed through the stream) and prints what landed in
# ClickHouse. Then `spillway simulate` plays the trading platform against RLS and RTRS for
# --simulate seconds while a line per second shows rows/s committed by table, lag (since the
# last flush, p99 event-to-commit, channel depth) and Redis memory; a short report of what
# landed in ClickHouse ends the run. Ctrl-C stops exactly the processes it started: spillway
# first (SIGTERM: it flushes and exits 0), then the simulator, the redis-servers and
# clickhouse-server.
#
# Environment:
#   DEMO_RLS_PORT      Redis (RLS) port                       default 6384
#   DEMO_RTRS_PORT     Redis (RTRS) port                      default 6382
#   DEMO_RTS_PORT, DEMO_RIS_PORT, DEMO_RTSS_PORT, DEMO_RSS_PORT   defaults 6379, 6380, 6381, 6383
#   DEMO_CH_HTTP_PORT  ClickHouse HTTP port                   default 8123
#   DEMO_CH_TCP_PORT   ClickHouse native TCP port             default 9000
#   DEMO_METRICS_PORT  Spillway /metrics, /healthz, /readyz   default 9464
#   DEMO_DIR           work directory (config, data, logs)    default ${TMPDIR:-/tmp}/spillway-demo
#   DEMO_ONCE=1        same as --once
#   DEMO_SIMULATE      seconds of simulation (as --simulate)  default 30, with --once 0
#   DEMO_ALERTS_PER_SEC, DEMO_TRADES_PER_SEC   simulator rates  defaults 5000, 200
#   With --cluster: DEMO_CLUSTER_PORT (first of the six RLS nodes, default 7001), DEMO_ZK_PORT
#   (2181), DEMO_CH_INTERSERVER_PORT (9009); the 4 ClickHouse servers take DEMO_CH_HTTP_PORT,
#   DEMO_CH_TCP_PORT and DEMO_CH_INTERSERVER_PORT to +3
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export PATH="$PATH:/usr/sbin:/sbin:${HOME:-/root}/.cargo/bin"

ONCE=${DEMO_ONCE:-0}
CLUSTER=${DEMO_CLUSTER:-0}
SIMULATE=${DEMO_SIMULATE:-}
while [ $# -gt 0 ]; do
    case $1 in
    --once) ONCE=1 ;;
    --cluster) CLUSTER=1 ;;
    --simulate)
        [ $# -ge 2 ] || {
            echo "--simulate needs a number of seconds (try --help)" >&2
            exit 2
        }
        SIMULATE=$2
        shift
        ;;
    --simulate=*) SIMULATE=${1#--simulate=} ;;
    -h | --help)
        sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done
if [ -z "$SIMULATE" ]; then
    if [ "$ONCE" = 1 ]; then SIMULATE=0; else SIMULATE=30; fi
    # The cluster demo's point is the failover during the simulation.
    if [ "$ONCE$CLUSTER" = 11 ]; then SIMULATE=10; fi
fi
ALERTS_PER_SEC=${DEMO_ALERTS_PER_SEC:-5000}
TRADES_PER_SEC=${DEMO_TRADES_PER_SEC:-200}
for entry in "$SIMULATE:--simulate (DEMO_SIMULATE)" "$ALERTS_PER_SEC:DEMO_ALERTS_PER_SEC" "$TRADES_PER_SEC:DEMO_TRADES_PER_SEC"; do
    if ! [[ ${entry%%:*} =~ ^[0-9]+$ ]]; then
        echo "${entry#*:} must be a whole number, not '${entry%%:*}'" >&2
        exit 2
    fi
done

RLS_PORT=${DEMO_RLS_PORT:-6384}
RTRS_PORT=${DEMO_RTRS_PORT:-6382}
RTS_PORT=${DEMO_RTS_PORT:-6379}
RIS_PORT=${DEMO_RIS_PORT:-6380}
RTSS_PORT=${DEMO_RTSS_PORT:-6381}
RSS_PORT=${DEMO_RSS_PORT:-6383}
# The contract's six instances, in the order they start: name, port.
REDIS_NAMES=(rts ris rtss rtrs rss rls)
declare -A REDIS_PORT=([rts]=$RTS_PORT [ris]=$RIS_PORT [rtss]=$RTSS_PORT [rtrs]=$RTRS_PORT [rss]=$RSS_PORT [rls]=$RLS_PORT)
declare -A REDIS_PID=()
CH_HTTP_PORT=${DEMO_CH_HTTP_PORT:-8123}
CH_TCP_PORT=${DEMO_CH_TCP_PORT:-9000}
METRICS_PORT=${DEMO_METRICS_PORT:-9464}
WORK=${DEMO_DIR:-${TMPDIR:-/tmp}/spillway-demo}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/spillway
CH_URL="http://127.0.0.1:$CH_HTTP_PORT"
METRICS_URL="http://127.0.0.1:$METRICS_PORT"
# RLS as Spillway, the simulator, messages and redis-cli see it (a cluster's in demo-cluster.sh).
RLS_URL="redis://127.0.0.1:$RLS_PORT"
RLS_ADDR="127.0.0.1:$RLS_PORT"
RLS_DESC=$RLS_PORT
RCLI=(redis-cli -h 127.0.0.1 -p "$RLS_PORT")
RLS_CLI_HINT="redis-cli -p $RLS_PORT"
PIPE_DESC="redis-cli --pipe"
CH_CLUSTER_TOML=""

# The demo's spillway reads only the config written below, never a SPILLWAY_* of this shell.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^SPILLWAY_' || true)

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/demo-cluster.sh
. "$ROOT/scripts/demo-cluster.sh"
if [ "$CLUSTER" = 1 ]; then cluster_setup; fi

# --- stopping what we started, and only that ------------------------------------------------

SPILLWAY_PID="" SIM_PID="" MON_PID="" CH_PID=""

# stop NAME PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL. Prints the exit code.
stop() {
    local name=$1 pid=$2 secs=$3 i code=0
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) still running after ${secs}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || code=$?
    echo "stopped $name (pid $pid), exit code $code"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Stop everything even if the terminal or a pipe reading our output is gone.
    set +e
    trap '' PIPE
    release_policy_rc
    # The progress display is only a viewer: it goes first, quietly.
    if [ -n "$MON_PID" ]; then
        kill -TERM "$MON_PID" 2>/dev/null
        wait "$MON_PID" 2>/dev/null
    fi
    cluster_stop_helper
    local name
    if [ -n "$SPILLWAY_PID$SIM_PID${REDIS_PID[*]}$CH_PID" ] || cluster_started; then
        step "Stopping the demo (spillway first, then the simulator, redis-servers and clickhouse-server$([ "$CLUSTER" = 0 ] || echo "s, zookeeper"))"
        stop spillway "$SPILLWAY_PID" 40
        stop "spillway simulate" "$SIM_PID" 20
        for name in "${REDIS_NAMES[@]}"; do
            stop "redis-server (${name^^})" "${REDIS_PID[$name]:-}" 15
        done
        cluster_stop_redis
        stop clickhouse-server "$CH_PID" 30
        cluster_stop_rest
        echo "logs and data stay in $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM # Ctrl-C is the normal way to stop the demo; EXIT runs cleanup.

# Starts a command in the background in its own session (so Ctrl-C reaches only this script,
# which then stops the children in order), killed by the kernel should this script die without
# cleaning up. Sets STARTED_PID.
start_bg() {
    local log=$1
    shift
    local wrap=()
    if command -v setsid >/dev/null 2>&1; then wrap+=(setsid); fi
    if command -v setpriv >/dev/null 2>&1; then wrap+=(setpriv --pdeathsig SIGTERM --); fi
    "${wrap[@]}" "$@" </dev/null >>"$log" 2>&1 &
    STARTED_PID=$!
}

# --- 1. tools ---------------------------------------------------------------------------------

step "Checking tools"
missing=()
for tool in redis-server redis-cli clickhouse-server curl python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} yourself"
    step "Installing redis-server, clickhouse-server, curl and python3 with apt-get"
    install_packages redis-server redis-tools clickhouse-server clickhouse-client curl python3
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), then make sure ~/.cargo/bin is on PATH"
echo "ok: redis-server, clickhouse-server, curl, python3, cargo"
if [ "$CLUSTER" = 1 ]; then cluster_tools; fi

entries=()
for name in "${REDIS_NAMES[@]}"; do
    entries+=("${REDIS_PORT[$name]}:DEMO_${name^^}_PORT:Redis (${name^^})")
    [ -f "$ROOT/scripts/redis/$name.conf" ] || die "scripts/redis/$name.conf is missing"
done
entries+=("$CH_HTTP_PORT:DEMO_CH_HTTP_PORT:ClickHouse HTTP" "$CH_TCP_PORT:DEMO_CH_TCP_PORT:ClickHouse TCP"
    "$METRICS_PORT:DEMO_METRICS_PORT:Spillway metrics")
if [ "$CLUSTER" = 1 ]; then cluster_port_entries; fi
seen=" "
for entry in "${entries[@]}"; do
    # port:variable:what[:the variable's value to suggest]
    IFS=: read -r port var what hint <<<"$entry"
    [[ $seen != *" $port "* ]] || die "port $port is given twice ($var and another DEMO_*_PORT)"
    seen+="$port "
    if port_busy "$port"; then
        die "port $port ($what) is already in use on 127.0.0.1: stop what listens there, or pick another port, e.g. $var=${hint:-$((port + 10000))} scripts/demo.sh"
    fi
done

# --- 2. build (before any server starts) ------------------------------------------------------

step "Building spillway (cargo build --release)"
cargo build --release
[ -x "$BIN" ] || die "build finished but $BIN is missing"

# --- 3. servers -------------------------------------------------------------------------------

step "Preparing $WORK"
# Only a directory this script made (marked) or an empty one is wiped and reused.
if [ -d "$WORK" ] && [ ! -e "$WORK/.spillway-demo" ] && [ -n "$(ls -A "$WORK")" ]; then
    die "$WORK exists and was not made by this demo: set DEMO_DIR to a new or empty directory"
fi
mkdir -p "$WORK"
touch "$WORK/.spillway-demo"
rm -rf "$WORK/clickhouse" "$WORK/redis" "$WORK"/redis-* "$WORK"/*.log "$WORK/spillway.toml" "$WORK/pack.py" "$WORK/progress.py" \
    "$WORK"/clickhouse-* "$WORK/rls-cluster" "$WORK/zookeeper" "$WORK"/*.py "$WORK"/*.txt "$WORK/failover.result"
[ "$CLUSTER" = 1 ] || mkdir -p "$WORK/clickhouse"
for name in "${REDIS_NAMES[@]}"; do mkdir -p "$WORK/redis-$name"; done
echo "fresh data directories; logs: $WORK/*.log, $WORK/clickhouse$([ "$CLUSTER" = 0 ] || echo "-*")/*.log"

step "Starting the $([ "$CLUSTER" = 1 ] && echo five || echo six) redis-servers from scripts/redis/*.conf"
for name in "${REDIS_NAMES[@]}"; do
    # The config file first; the command line after it overrides its port and dir.
    echo "\$ redis-server scripts/redis/$name.conf --port ${REDIS_PORT[$name]} --dir $WORK/redis-$name"
    start_bg "$WORK/redis-$name.log" redis-server "$ROOT/scripts/redis/$name.conf" \
        --port "${REDIS_PORT[$name]}" --dir "$WORK/redis-$name"
    REDIS_PID[$name]=$STARTED_PID
done
TCLI=(redis-cli -h 127.0.0.1 -p "$RTRS_PORT")

# write_users_xml DIR: DIR/users.xml, user default without a password.
write_users_xml() {
    cat >"$1/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
EOF
}
CHD="$WORK/clickhouse"
if [ "$CLUSTER" = 1 ]; then
    cluster_start_redis
    cluster_start_zookeeper
    cluster_start_clickhouse
else
    step "Starting clickhouse-server on 127.0.0.1 (HTTP $CH_HTTP_PORT, TCP $CH_TCP_PORT)"
    write_users_xml "$CHD"
    clickhouse_config "$CHD" "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CHD/error.log"
    pushd "$CHD" >/dev/null
    start_bg "$CHD/stdout.log" clickhouse-server --config-file="$CHD/config.xml"
    CH_PID=$STARTED_PID
    popd >/dev/null
fi

# wait_until WHAT PID SECONDS LOG COMMAND...: polls COMMAND until it succeeds; fails (with the
# log's tail) if the process PID exits first or SECONDS pass.
wait_until() {
    local what=$1 pid=$2 secs=$3 log=$4 i
    shift 4
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$log" >&2 || true
            die "$what exited during startup (log: $log)"
        fi
        sleep 0.2
    done
    tail -n 30 "$log" >&2 || true
    die "$what not ready after ${secs}s (log: $log)"
}
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
ch_ready() { [ "$(curl -sS "$CH_URL/ping" 2>/dev/null)" = "Ok." ]; }
spillway_ready() { curl -fsS -o /dev/null "$METRICS_URL/readyz"; }
ch() { curl -sS --fail-with-body "$CH_URL/" --data-binary "$1"; }

for name in "${REDIS_NAMES[@]}"; do
    wait_until "redis-server (${name^^})" "${REDIS_PID[$name]}" 20 "$WORK/redis-$name.log" redis_ready "${REDIS_PORT[$name]}"
    mem=$(redis-cli -h 127.0.0.1 -p "${REDIS_PORT[$name]}" config get maxmemory-policy | tail -n1)
    max=$(redis-cli -h 127.0.0.1 -p "${REDIS_PORT[$name]}" config get maxmemory | tail -n1)
    printf 'redis-server %-4s ready on 127.0.0.1:%-5s (pid %s), maxmemory %s MiB %s\n' "${name^^}" \
        "${REDIS_PORT[$name]}" "${REDIS_PID[$name]}" "$((max / 1048576))" "$mem"
done
if [ "$CLUSTER" = 1 ]; then
    cluster_ready
else
    echo "RLS notify-keyspace-events = $("${RCLI[@]}" config get notify-keyspace-events | tail -n1)"
    wait_until clickhouse-server "$CH_PID" 60 "$CHD/error.log" ch_ready
    echo "clickhouse-server ready (pid $CH_PID), version $(ch 'SELECT version()')"
fi

# --- 4. spillway ------------------------------------------------------------------------------

step "Starting spillway (metrics on $METRICS_URL)"
cat >"$WORK/spillway.toml" <<EOF
# Written by scripts/demo.sh.
pipelines_dir = '$ROOT/pipelines'

# All six instances: alerts and execution logs are read from RLS, trade closes from RTRS, and
# the memory of every one is polled (spillway_redis_memory_used_bytes).
[redis.rts]
url = "redis://127.0.0.1:$RTS_PORT"

[redis.ris]
url = "redis://127.0.0.1:$RIS_PORT"

[redis.rtss]
url = "redis://127.0.0.1:$RTSS_PORT"

[redis.rtrs]
url = "redis://127.0.0.1:$RTRS_PORT"

[redis.rss]
url = "redis://127.0.0.1:$RSS_PORT"

[redis.rls]
url = "$RLS_URL"

[clickhouse]
url = "$CH_URL"
database = "spillway"$CH_CLUSTER_TOML

[metrics]
addr = "127.0.0.1:$METRICS_PORT"

[batch]
max_delay_ms = 200

[keyspace]
# scripts/redis/rls.conf sets notify-keyspace-events "Ex\$eg" already.
configure_notifications = false

[observe]
interval_secs = 1                # the demo's progress shows Redis memory every second
EOF
echo "\$ $BIN run --config $WORK/spillway.toml"
start_bg "$WORK/spillway.log" env RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$BIN" run --config "$WORK/spillway.toml"
SPILLWAY_PID=$STARTED_PID
wait_until spillway "$SPILLWAY_PID" 60 "$WORK/spillway.log" spillway_ready
echo "spillway ready (pid $SPILLWAY_PID): $METRICS_URL/readyz answers 200"

# --- 5. sample alerts -------------------------------------------------------------------------

step "Writing sample alerts into RLS ($RLS_ADDR)"
run_cli() {
    local a line='$ redis-cli'
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_:./=-]+$ ]]; then
            line+=" $a"
        else
            line+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    echo "$line"
    "${RCLI[@]}" "$@"
}
# RLS's --pipe and --scan; on a cluster, each command sent to the node owning its key, and
# every primary scanned.
rls_pipe() { if [ "$CLUSTER" = 1 ]; then cluster_pipe; else "${RCLI[@]}" --pipe; fi; }
rls_scan() { if [ "$CLUSTER" = 1 ]; then cluster_scan "$1"; else "${RCLI[@]}" --scan --pattern "$1"; fi; }
run_cli SET alert:trade_failed "Trade execution failed" EX 3600
run_cli SET alert:margin_call '{"alert_id":"risk-42","severity":"critical","kind":"margin","message":"Margin level below 50%","account_id":"ACC-1001","symbol":"EURUSD","desk":"fx-emea"}' EX 3600
run_cli SET alert:heartbeat_missed "Heartbeat missed on mt5-11 (expires in 2 s)" EX 2

echo "MessagePack values, and one value that decodes as nothing (bytes 85 01), sent as RESP"
echo "commands (SET key value EX 3600) through $PIPE_DESC:"
cat >"$WORK/pack.py" <<'PY'
import struct
import sys
import time


def pack(o):
    """MessagePack encoding of None, bool, int, float, str and dict (enough for the demo)."""
    if o is None:
        return b"\xc0"
    if isinstance(o, bool):
        return b"\xc3" if o else b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 0x80:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack(">b", o)
        if 0 <= o < 1 << 8:
            return b"\xcc" + struct.pack(">B", o)
        if 0 <= o < 1 << 16:
            return b"\xcd" + struct.pack(">H", o)
        if 0 <= o < 1 << 32:
            return b"\xce" + struct.pack(">I", o)
        if 0 <= o < 1 << 64:
            return b"\xcf" + struct.pack(">Q", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode()
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 1 << 8:
            return b"\xd9" + struct.pack(">B", n) + b
        if n < 1 << 16:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(o, dict):
        n = len(o)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack(k) + pack(v) for k, v in o.items())
    raise TypeError(type(o))


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
PY
export PYTHONPATH="$WORK"
python3 - <<'PY' | rls_pipe
import sys
import time

from pack import pack, resp

now = int(time.time() * 1000)
values = {
    "alert:latency_mt5_07": pack({"severity": "warning", "kind": "latency", "message": "Order latency above 250 ms",
                                  "instance_id": "mt5-07", "ts_ms": now, "latency_ms": 312}),
    "alert:broker_down": pack({"alert_id": "conn-lost-3", "severity": "critical", "kind": "connectivity",
                               "message": "Broker connection lost", "instance_id": "mt5-03", "retries": 3}),
    "alert:session_open": pack({"severity": "info", "message": "Trading session opened", "symbol": "XAUUSD",
                                "ts_ms": now - 60000}),
    "alert:garbled": b"\x85\x01",
}
for key, value in values.items():
    sys.stderr.write("  SET %s <%d bytes: %s> EX 3600\n" % (key, len(value), value.hex()))
    sys.stdout.buffer.write(resp("SET", key, value, "EX", 3600))
PY

step "Writing three trades: execution logs into RLS, then closes into the trade_results stream (RTRS)"
python3 - logs <<'PY' | rls_pipe
import sys

from pack import pack, resp

for t in range(1, 4):
    steps = ["order_sent", "filled", "modified", "closed"][: t + 1]
    for seq, step in enumerate(steps):
        entry = pack({"trade_id": "T-%d" % t, "seq": seq, "step": step, "symbol": "EURUSD", "side": "buy",
                      "volume": 0.1 * t, "price": 1.08 + seq / 1000, "instance_id": "mt5-0%d" % t})
        sys.stdout.buffer.write(resp("RPUSH", "trade_execution:T-%d" % t, entry))
    sys.stderr.write("  RPUSH trade_execution:T-%d <%d MessagePack entries>\n" % (t, len(steps)))
PY
python3 - <<'PY' | "${TCLI[@]}" --pipe
import sys

from pack import pack, resp

for t in range(1, 4):
    payload = pack({"account_id": "ACC-1001", "symbol": "EURUSD", "side": "buy", "volume": 0.1 * t,
                    "open_price": 1.08, "close_price": 1.081 + t / 1000, "profit": 10.0 * t})
    sys.stdout.buffer.write(resp("XADD", "trade_results", "*", "trade_id", "T-%d" % t, "event", "closed", "payload", payload))
    sys.stderr.write("  XADD trade_results * trade_id T-%d event closed payload <MessagePack map>\n" % t)
PY

# final TABLE [ALIAS]: TABLE under FINAL in a FROM clause. On a ClickHouse cluster a subquery
# reading every column: 18.16 fails "Cannot find column ... in source stream" when a Distributed
# table under FINAL is asked for fewer columns than its sorting key and version.
final() {
    if [ "$CLUSTER" = 1 ]; then
        echo "(SELECT * FROM spillway.$1 FINAL)${2:+ AS $2}"
    else
        echo "spillway.$1${2:+ AS $2} FINAL"
    fi
}

step "Waiting for the rows (and for alert:heartbeat_missed to expire)"
landed() {
    [ "$(ch 'SELECT count() FROM spillway.alerts FINAL' 2>/dev/null)" -ge 6 ] &&
        [ "$(ch "SELECT count() FROM spillway.alert_events WHERE event = 'expired'" 2>/dev/null)" -ge 1 ] &&
        [ "$(ch 'SELECT count() FROM spillway.dead_letters' 2>/dev/null)" -ge 1 ] &&
        [ "$(ch 'SELECT count() FROM spillway.trades FINAL' 2>/dev/null)" -ge 3 ] &&
        [ -z "$(rls_scan 'trade_execution:*')" ]
}
for ((i = 0; i < 100; i++)); do
    if landed; then break; fi
    sleep 0.2
done
if landed; then
    echo "all landed after $((i / 5)).$((i % 5 * 2)) s"
else
    echo "warning: not everything landed within 20 s; printing what is there (log: $WORK/spillway.log)"
fi

# --- 6. what landed ---------------------------------------------------------------------------

step "spillway.alerts"
echo "SELECT key, alert_id, severity, format, message, extra FROM $(final alerts) ORDER BY key"
ch "SELECT key, alert_id, severity, format, message, extra FROM $(final alerts) ORDER BY key FORMAT PrettyCompactNoEscapes"

step "spillway.alert_events"
echo "SELECT key, event, count() FROM $(final alert_events) GROUP BY key, event ORDER BY key, event"
ch "SELECT key, event, count() AS count FROM $(final alert_events) GROUP BY key, event ORDER BY key, event FORMAT PrettyCompactNoEscapes"

step "spillway.dead_letters"
echo "SELECT key, reason, hex(raw), error FROM $(final dead_letters) ORDER BY key"
ch "SELECT key, reason, hex(raw) AS raw_hex, error FROM $(final dead_letters) ORDER BY key FORMAT PrettyCompactNoEscapes"

step "spillway.trades and spillway.trade_executions"
echo "SELECT trade_id, event, profit, log_state, log_entries FROM $(final trades) ORDER BY trade_id"
ch "SELECT trade_id, event, profit, log_state, log_entries FROM $(final trades) ORDER BY trade_id FORMAT PrettyCompactNoEscapes"
echo "SELECT trade_id, seq, step, price FROM $(final trade_executions) ORDER BY trade_id, seq"
ch "SELECT trade_id, seq, step, price FROM $(final trade_executions) ORDER BY trade_id, seq FORMAT PrettyCompactNoEscapes"
echo "execution log keys left in RLS: $(rls_scan 'trade_execution:*' | wc -l)"

step "A few lines of $METRICS_URL/metrics"
curl -fsS "$METRICS_URL/metrics" |
    grep -E '^(spillway_rows_written_total|spillway_events_received_total|spillway_dead_letters_total|spillway_stream_acked_total|spillway_logs_moved_total)' ||
    echo "(no such metrics yet)"

# --- 7. the simulated trading platform, with live progress --------------------------------

# One line per second from /metrics: rows committed per second by table, lag (since the last
# flush, p99 event-to-commit over the last 5 s from the histogram's buckets, channel depth) and
# each Redis instance's used memory against its maxmemory; the simulator's own write rate comes
# from the last line of its log. Exits when the simulator is done and Spillway has caught up.
cat >"$WORK/progress.py" <<'PY'
import math
import os
import re
import sys
import time
import urllib.request

metrics_url, sim_pid, sim_log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parent = os.getppid()
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TABLES = [("alerts", "alerts"), ("alert_events", "events"), ("dead_letters", "dead"),
          ("trades", "trades"), ("trade_executions", "execs")]
REDIS = ["rls", "rtrs", "rts", "ris", "rtss", "rss"]


def scrape():
    out = {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((dict(LABEL.findall(m.group(2) or "")), value))
    return out


def total(s, name, **want):
    return sum(v for labels, v in s.get(name, []) if all(labels.get(k) == w for k, w in want.items()))


def by(s, name, label):
    d = {}
    for labels, v in s.get(name, []):
        d[labels.get(label, "")] = d.get(labels.get(label, ""), 0) + v
    return d


def buckets(s):
    d = {}
    for labels, v in s.get("spillway_event_to_commit_seconds_bucket", []):
        le = float(labels["le"]) if labels.get("le") not in (None, "+Inf") else math.inf
        d[le] = d.get(le, 0) + v
    return d


def p99(now, then):
    """Upper bound of the bucket holding the 99th percentile of what was committed in between."""
    if now is None or then is None:
        return "-"
    delta = {le: now[le] - then.get(le, 0) for le in now}
    count = delta.get(math.inf, 0)
    if count <= 0:
        return "-"
    for le in sorted(delta):
        if delta[le] >= 0.99 * count:
            return ">30s" if le == math.inf else "<=%gs" % le
    return "-"


def sim_line():
    """The simulator's last progress line, shortened to its write rates."""
    try:
        with open(sim_log, "rb") as f:
            f.seek(max(0, os.path.getsize(sim_log) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None, False
    done = any(l.startswith("wrote in") for l in lines)
    for l in reversed(lines):
        m = re.search(r"alerts\s+(\d+)/s\s+trades closed\s+(\d+)/s", l)
        if m:
            return (int(m.group(1)), int(m.group(2))), done
    return None, done


def sim_running():
    try:
        with open("/proc/%d/stat" % sim_pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mib(v):
    return "%.1f" % (v / 1048576) if v < 1000 * 1048576 else "%.0f" % (v / 1048576)


def header(s):
    mx = by(s, "spillway_redis_memory_max_bytes", "instance") if s else {}
    mem = " ".join("%9s" % ("%s/%s" % (r.upper(), "%.0f" % (mx[r] / 1048576) if mx.get(r) else "-")) for r in REDIS)
    print("  time | simulator writes/s | rows committed/s to ClickHouse by table      "
          "| lag: last flush, p99 event-to-commit (5 s), channel | Redis used MiB / maxmemory")
    print("     s |   alerts    trades | " + " ".join("%7s" % t for _, t in TABLES) +
          " |   flush      p99     channel | " + mem, flush=True)


start = time.monotonic()
history = []  # (time, scrape)
quiet = 0
shown = 0
done_at = None
first = scrape()
header(first)
next_at = time.monotonic() + 1
while True:
    time.sleep(max(0, next_at - time.monotonic()))
    next_at += 1
    if os.getppid() != parent:
        break  # the demo script is gone
    s = scrape()
    t = time.monotonic()
    if s is None:
        print("%6.0f | /metrics does not answer" % (t - start), flush=True)
        continue
    history.append((t, s))
    history = history[-6:]
    t0, s0 = history[-2] if len(history) > 1 else (start, first or {})
    secs = max(t - t0, 1e-3)
    now_rows = by(s, "spillway_rows_written_total", "table")
    old_rows = by(s0, "spillway_rows_written_total", "table")
    rates = [(now_rows.get(tb, 0) - old_rows.get(tb, 0)) / secs for tb, _ in TABLES]
    last_flush = max((v for _, v in s.get("spillway_last_flush_timestamp_seconds", [])), default=0)
    flush = "%.1fs ago" % max(0, time.time() - last_flush) if last_flush > 0 else "never"
    q99 = p99(buckets(s), buckets(history[0][1]) if len(history) > 1 else buckets(first or {}))
    depth = total(s, "spillway_channel_depth")
    cap = total(s, "spillway_channel_capacity")
    used = by(s, "spillway_redis_memory_used_bytes", "instance")
    mem = " ".join("%9s" % (mib(used[r]) if r in used else "-") for r in REDIS)
    written, done = sim_line()
    running = sim_running() and not done
    w = ("%8d  %8d" % written) if written and running else ("%8s  %8s" % ("done", "")) if not running else "%8s  %8s" % ("-", "-")
    chan = "%d/%d" % (depth, cap) if cap else "%d" % depth
    print("%6.0f | %s | %s | %9s %8s %11s | %s" % (t - start, w, " ".join("%7.0f" % r for r in rates),
                                                 flush, q99, chan, mem), flush=True)
    shown += 1
    if shown % 30 == 0:
        header(s)
    if not running:
        # Done when nothing was committed for two seconds and nothing waits in the channel.
        done_at = done_at or t
        quiet = quiet + 1 if sum(rates) == 0 and depth == 0 else 0
        if quiet >= 2:
            break
        if t - done_at > 120:
            print("Spillway has not caught up 120 s after the simulator finished; reporting anyway", flush=True)
            break
PY

if [ "$SIMULATE" -gt 0 ]; then
    step "Simulating the trading platform for $SIMULATE s: $ALERTS_PER_SEC alerts/s, $TRADES_PER_SEC trades/s (RLS $RLS_DESC, RTRS $RTRS_PORT)"
    # --allow-nonempty: these are the demo's own Redis servers, already holding the samples above
    # (the simulator refuses a Redis holding keys it did not write unless told so).
    echo "\$ $BIN simulate --rls $RLS_ADDR --rtrs 127.0.0.1:$RTRS_PORT --allow-nonempty --alerts-per-sec $ALERTS_PER_SEC --trades-per-sec $TRADES_PER_SEC --duration $SIMULATE"
    echo "(its output: $WORK/simulate.log; the lines below read $METRICS_URL/metrics once a second)"
    start_bg "$WORK/simulate.log" "$BIN" simulate --rls "$RLS_ADDR" --rtrs "127.0.0.1:$RTRS_PORT" --allow-nonempty \
        --alerts-per-sec "$ALERTS_PER_SEC" --trades-per-sec "$TRADES_PER_SEC" --duration "$SIMULATE"
    SIM_PID=$STARTED_PID
    # In the background, so that Ctrl-C (or a SIGINT/SIGTERM to this script) is handled at once.
    python3 "$WORK/progress.py" "$METRICS_URL/metrics" "$SIM_PID" "$WORK/simulate.log" &
    MON_PID=$!
    if [ "$CLUSTER" = 1 ]; then cluster_failover_midway; fi
    wait "$MON_PID" || true
    MON_PID=""
    if [ "$CLUSTER" = 1 ]; then cluster_failover_wait; fi
    code=0
    wait "$SIM_PID" || code=$?
    SIM_PID=""
    [ "$code" = 0 ] || die "spillway simulate exited with code $code; see $WORK/simulate.log"
    grep '^wrote in' "$WORK/simulate.log" | sed 's/^/simulator: /' || true
elif [ "$CLUSTER" = 1 ]; then
    cluster_failover
fi

# --- 8. the report ----------------------------------------------------------------------------

step "Report: what landed in ClickHouse (database spillway, counted under FINAL)"
ch "SELECT table, rows FROM (
      SELECT 1 AS n, 'alerts' AS table, count() AS rows FROM spillway.alerts FINAL
      UNION ALL SELECT 2, 'alert_events', count() FROM spillway.alert_events FINAL
      UNION ALL SELECT 3, 'dead_letters', count() FROM spillway.dead_letters FINAL
      UNION ALL SELECT 4, 'trades', count() FROM spillway.trades FINAL
      UNION ALL SELECT 5, 'trade_executions', count() FROM spillway.trade_executions FINAL
    ) ORDER BY n FORMAT PrettyCompactNoEscapes"
echo "dead letters by reason:"
ch "SELECT reason, count() AS rows FROM $(final dead_letters) GROUP BY reason ORDER BY reason FORMAT PrettyCompactNoEscapes"
echo "trades by event and execution log state, with their execution rows:"
ch "SELECT t.event, t.log_state, count() AS trades, sum(t.log_entries) AS log_entries
    FROM $(final trades t) GROUP BY t.event, t.log_state ORDER BY t.event, t.log_state FORMAT PrettyCompactNoEscapes"
echo "execution log keys left in RLS: $(rls_scan 'trade_execution:*' | wc -l)"
echo "alert keys in RLS: $(rls_scan 'alert:*' | wc -l) (they live for their TTL; Spillway copies, never deletes them)"
echo "the alerts pipeline's write account (from /metrics): each write notification has one outcome"
curl -fsS "$METRICS_URL/metrics" | python3 -c '
import re, sys
received, pending, outcomes = 0, 0, {}
for line in sys.stdin:
    m = re.match(r"(spillway_\w+)\{([^}]*)\} (\S+)", line)
    if not m or "pipeline=\"alerts\"" not in m.group(2):
        continue
    name, labels, value = m.group(1), m.group(2), int(float(m.group(3)))
    if name == "spillway_events_received_total" and "event=\"set\"" in labels:
        received += value
    elif name == "spillway_writes_pending":
        pending += value
    elif name == "spillway_writes_total":
        outcomes[re.search(r"outcome=\"(\w+)\"", labels).group(1)] = value
print(f"  set notifications received  {received}")
for name, n in sorted(outcomes.items(), key=lambda o: -o[1]):
    print(f"  {name:<26}  {n}")
print(f"  pending                     {pending}")
print(f"  unaccounted                 {received - sum(outcomes.values()) - pending}")
' | tee "$WORK/account.txt"
if [ "$CLUSTER" = 1 ]; then cluster_report; fi

# --- 9. keep running, or stop -----------------------------------------------------------------

if [ "$ONCE" = 1 ]; then
    step "--once: done"
    exit 0
fi
step "Spillway is running; metrics at $METRICS_URL/metrics; press Ctrl-C to stop"
cat <<EOF
Try, in another terminal:
  $RLS_CLI_HINT SET alert:my_test "hello from the demo" EX 3600
  $RLS_CLI_HINT RPUSH trade_execution:T-9 "not MessagePack"   # a log entry for a dead letter
  redis-cli -p $RTRS_PORT XADD trade_results '*' trade_id T-9 event closed
  $BIN simulate --rls $RLS_ADDR --rtrs 127.0.0.1:$RTRS_PORT --allow-nonempty --duration 60
  curl -s $CH_URL/ --data-binary "SELECT key, message FROM $(final alerts) ORDER BY key FORMAT PrettyCompact"
  tail -f $WORK/spillway.log
EOF
code=0
wait "$SPILLWAY_PID" || code=$?
SPILLWAY_PID=""
die "spillway exited by itself (exit code $code); see $WORK/spillway.log"
