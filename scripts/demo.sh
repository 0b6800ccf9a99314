#!/usr/bin/env bash
# shellcheck disable=SC2317 # (functions run from traps and through wait_until)
# A live demo of Spillway on one machine:
#
#   scripts/demo.sh           # set up, show the archived alerts, keep running until Ctrl-C
#   scripts/demo.sh --once    # the same, then stop everything and exit (also: DEMO_ONCE=1)
#
# It installs redis-server and clickhouse-server with apt-get when they are missing, builds
# Spillway (cargo build --release), then starts in a work directory of its own:
#   - a redis-server playing RLS on 127.0.0.1:6384, keyspace notifications on ("Ex$eg"),
#   - a redis-server playing RTRS on 127.0.0.1:6382 (the trade_results stream),
#   - a clickhouse-server (HTTP 127.0.0.1:8123, TCP 127.0.0.1:9000), data in the work directory,
#   - spillway itself, /metrics on 127.0.0.1:9464,
# writes a few sample alerts (text, JSON, MessagePack, one undecodable value, one that expires)
# and three trades (execution logs in RLS, closed through the stream) and prints what landed in
# ClickHouse. Ctrl-C stops exactly the processes it started: spillway
# first (SIGTERM: it flushes and exits 0), then redis-server and clickhouse-server.
#
# Environment:
#   DEMO_RLS_PORT      Redis (RLS) port                       default 6384
#   DEMO_RTRS_PORT     Redis (RTRS) port                      default 6382
#   DEMO_CH_HTTP_PORT  ClickHouse HTTP port                   default 8123
#   DEMO_CH_TCP_PORT   ClickHouse native TCP port             default 9000
#   DEMO_METRICS_PORT  Spillway /metrics, /healthz, /readyz   default 9464
#   DEMO_DIR           work directory (config, data, logs)    default ${TMPDIR:-/tmp}/spillway-demo
#   DEMO_ONCE=1        same as --once
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export PATH="$PATH:/usr/sbin:/sbin:${HOME:-/root}/.cargo/bin"

ONCE=${DEMO_ONCE:-0}
for arg in "$@"; do
    case $arg in
    --once) ONCE=1 ;;
    -h | --help)
        sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done

RLS_PORT=${DEMO_RLS_PORT:-6384}
RTRS_PORT=${DEMO_RTRS_PORT:-6382}
CH_HTTP_PORT=${DEMO_CH_HTTP_PORT:-8123}
CH_TCP_PORT=${DEMO_CH_TCP_PORT:-9000}
METRICS_PORT=${DEMO_METRICS_PORT:-9464}
WORK=${DEMO_DIR:-${TMPDIR:-/tmp}/spillway-demo}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/spillway
CH_URL="http://127.0.0.1:$CH_HTTP_PORT"
METRICS_URL="http://127.0.0.1:$METRICS_PORT"

# The demo's spillway reads only the config written below, never a SPILLWAY_* of this shell.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^SPILLWAY_' || true)

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

# --- stopping what we started, and only that ------------------------------------------------

SPILLWAY_PID="" REDIS_PID="" CH_PID="" OWN_POLICY_RC=""

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
    if [ -n "$OWN_POLICY_RC" ]; then as_root rm -f "$OWN_POLICY_RC"; fi
    if [ -n "$SPILLWAY_PID$REDIS_PID$RTRS_PID$CH_PID" ]; then
        step "Stopping the demo (spillway first, then redis-server and clickhouse-server)"
        stop spillway "$SPILLWAY_PID" 40
        stop redis-server "$REDIS_PID" 15
        stop "redis-server (RTRS)" "$RTRS_PID" 15
        stop clickhouse-server "$CH_PID" 30
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

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- 1. tools ---------------------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "installing packages needs root (or sudo), to run: $*"
    fi
}

install_packages() {
    # policy-rc.d exit 101: the packages' postinst must not start system redis/clickhouse
    # services (they would take ports 6379, 8123 and 9000).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        OWN_POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# Written by spillway scripts for the time of an apt-get install.\nexit 101\n' |
            as_root tee "$OWN_POLICY_RC" >/dev/null
        as_root chmod 755 "$OWN_POLICY_RC"
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
    as_root "${apt[@]}" update
    as_root "${apt[@]}" install -y --no-install-recommends "$@"
    if [ -n "$OWN_POLICY_RC" ]; then as_root rm -f "$OWN_POLICY_RC"; fi
    OWN_POLICY_RC=""
}

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

for entry in "$RLS_PORT:DEMO_RLS_PORT:Redis (RLS)" "$RTRS_PORT:DEMO_RTRS_PORT:Redis (RTRS)" "$CH_HTTP_PORT:DEMO_CH_HTTP_PORT:ClickHouse HTTP" \
    "$CH_TCP_PORT:DEMO_CH_TCP_PORT:ClickHouse TCP" "$METRICS_PORT:DEMO_METRICS_PORT:Spillway metrics"; do
    IFS=: read -r port var what <<<"$entry"
    if port_busy "$port"; then
        die "port $port ($what) is already in use on 127.0.0.1: stop what listens there, or pick another port, e.g. $var=$((port + 10000)) scripts/demo.sh"
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
rm -rf "$WORK/clickhouse" "$WORK/redis" "$WORK/redis-rtrs" "$WORK"/*.log "$WORK/spillway.toml" "$WORK/pack.py"
mkdir -p "$WORK/clickhouse" "$WORK/redis" "$WORK/redis-rtrs"
echo "fresh data directories; logs: $WORK/*.log, $WORK/clickhouse/*.log"

step "Starting redis-server (RLS) on 127.0.0.1:$RLS_PORT"
# shellcheck disable=SC2016 # 'Ex$eg' is literal: the flags E, x, $, e, g
start_bg "$WORK/redis.log" redis-server --bind 127.0.0.1 --port "$RLS_PORT" --dir "$WORK/redis" \
    --save "" --appendonly no --notify-keyspace-events 'Ex$eg' \
    --maxmemory 2gb --maxmemory-policy volatile-lru
REDIS_PID=$STARTED_PID
RCLI=(redis-cli -h 127.0.0.1 -p "$RLS_PORT")

step "Starting redis-server (RTRS) on 127.0.0.1:$RTRS_PORT"
start_bg "$WORK/redis-rtrs.log" redis-server --bind 127.0.0.1 --port "$RTRS_PORT" --dir "$WORK/redis-rtrs" \
    --save "" --appendonly no --maxmemory 1gb --maxmemory-policy volatile-lru
RTRS_PID=$STARTED_PID
TCLI=(redis-cli -h 127.0.0.1 -p "$RTRS_PORT")

step "Starting clickhouse-server on 127.0.0.1 (HTTP $CH_HTTP_PORT, TCP $CH_TCP_PORT)"
CHD="$WORK/clickhouse"
cat >"$CHD/users.xml" <<'EOF'
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
cat >"$CHD/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$CHD/server.log</log><errorlog>$CHD/error.log</errorlog>
    <console>0</console></logger>
  <http_port>$CH_HTTP_PORT</http_port>
  <tcp_port>$CH_TCP_PORT</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$CHD/data/</path>
  <tmp_path>$CHD/tmp/</tmp_path>
  <user_files_path>$CHD/user_files/</user_files_path>
  <format_schema_path>$CHD/format_schemas/</format_schema_path>
  <users_config>$CHD/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
EOF
pushd "$CHD" >/dev/null
start_bg "$CHD/stdout.log" clickhouse-server --config-file="$CHD/config.xml"
CH_PID=$STARTED_PID
popd >/dev/null

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
redis_ready() { [ "$("${RCLI[@]}" ping 2>/dev/null)" = PONG ]; }
ch_ready() { [ "$(curl -sS "$CH_URL/ping" 2>/dev/null)" = "Ok." ]; }
spillway_ready() { curl -fsS -o /dev/null "$METRICS_URL/readyz"; }
ch() { curl -sS --fail-with-body "$CH_URL/" --data-binary "$1"; }

rtrs_ready() { [ "$("${TCLI[@]}" ping 2>/dev/null)" = PONG ]; }
wait_until redis-server "$REDIS_PID" 20 "$WORK/redis.log" redis_ready
wait_until "redis-server (RTRS)" "$RTRS_PID" 20 "$WORK/redis-rtrs.log" rtrs_ready
echo "redis-server ready (pid $REDIS_PID); notify-keyspace-events = $("${RCLI[@]}" config get notify-keyspace-events | tail -n1)"
wait_until clickhouse-server "$CH_PID" 60 "$CHD/error.log" ch_ready
echo "clickhouse-server ready (pid $CH_PID), version $(ch 'SELECT version()')"

# --- 4. spillway ------------------------------------------------------------------------------

step "Starting spillway (metrics on $METRICS_URL)"
cat >"$WORK/spillway.toml" <<EOF
# Written by scripts/demo.sh.
pipelines_dir = '$ROOT/pipelines'

[redis.rls]
url = "redis://127.0.0.1:$RLS_PORT"

[redis.rtrs]
url = "redis://127.0.0.1:$RTRS_PORT"

[clickhouse]
url = "$CH_URL"
database = "spillway"

[metrics]
addr = "127.0.0.1:$METRICS_PORT"

[batch]
max_delay_ms = 200

[keyspace]
# The demo's redis-server was started with notify-keyspace-events "Ex\$eg" already.
configure_notifications = false
EOF
echo "\$ $BIN run --config $WORK/spillway.toml"
start_bg "$WORK/spillway.log" env RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$BIN" run --config "$WORK/spillway.toml"
SPILLWAY_PID=$STARTED_PID
wait_until spillway "$SPILLWAY_PID" 60 "$WORK/spillway.log" spillway_ready
echo "spillway ready (pid $SPILLWAY_PID): $METRICS_URL/readyz answers 200"

# --- 5. sample alerts -------------------------------------------------------------------------

step "Writing sample alerts into RLS (127.0.0.1:$RLS_PORT)"
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
run_cli SET alert:trade_failed "Trade execution failed" EX 3600
run_cli SET alert:margin_call '{"alert_id":"risk-42","severity":"critical","kind":"margin","message":"Margin level below 50%","account_id":"ACC-1001","symbol":"EURUSD","desk":"fx-emea"}' EX 3600
run_cli SET alert:heartbeat_missed "Heartbeat missed on mt5-11 (expires in 2 s)" EX 2

echo "MessagePack values, and one value that decodes as nothing (bytes 85 01), sent as RESP"
echo "commands (SET key value EX 3600) through redis-cli --pipe:"
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
python3 - <<'PY' | "${RCLI[@]}" --pipe
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
python3 - logs <<'PY' | "${RCLI[@]}" --pipe
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

step "Waiting for the rows (and for alert:heartbeat_missed to expire)"
landed() {
    [ "$(ch 'SELECT count() FROM spillway.alerts FINAL' 2>/dev/null)" -ge 6 ] &&
        [ "$(ch "SELECT count() FROM spillway.alert_events WHERE event = 'expired'" 2>/dev/null)" -ge 1 ] &&
        [ "$(ch 'SELECT count() FROM spillway.dead_letters' 2>/dev/null)" -ge 1 ] &&
        [ "$(ch 'SELECT count() FROM spillway.trades FINAL' 2>/dev/null)" -ge 3 ] &&
        [ -z "$("${RCLI[@]}" --scan --pattern 'trade_execution:*')" ]
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
echo "SELECT key, alert_id, severity, format, message, extra FROM spillway.alerts FINAL ORDER BY key"
ch "SELECT key, alert_id, severity, format, message, extra FROM spillway.alerts FINAL ORDER BY key FORMAT PrettyCompactNoEscapes"

step "spillway.alert_events"
echo "SELECT key, event, count() FROM spillway.alert_events FINAL GROUP BY key, event ORDER BY key, event"
ch "SELECT key, event, count() AS count FROM spillway.alert_events FINAL GROUP BY key, event ORDER BY key, event FORMAT PrettyCompactNoEscapes"

step "spillway.dead_letters"
echo "SELECT key, reason, hex(raw), error FROM spillway.dead_letters FINAL ORDER BY key"
ch "SELECT key, reason, hex(raw) AS raw_hex, error FROM spillway.dead_letters FINAL ORDER BY key FORMAT PrettyCompactNoEscapes"

step "spillway.trades and spillway.trade_executions"
echo "SELECT trade_id, event, profit, log_state, log_entries FROM spillway.trades FINAL ORDER BY trade_id"
ch "SELECT trade_id, event, profit, log_state, log_entries FROM spillway.trades FINAL ORDER BY trade_id FORMAT PrettyCompactNoEscapes"
echo "SELECT trade_id, seq, step, price FROM spillway.trade_executions FINAL ORDER BY trade_id, seq"
ch "SELECT trade_id, seq, step, price FROM spillway.trade_executions FINAL ORDER BY trade_id, seq FORMAT PrettyCompactNoEscapes"
echo "execution log keys left in RLS: $("${RCLI[@]}" --scan --pattern 'trade_execution:*' | wc -l)"

step "A few lines of $METRICS_URL/metrics"
curl -fsS "$METRICS_URL/metrics" |
    grep -E '^(spillway_rows_written_total|spillway_events_received_total|spillway_dead_letters_total|spillway_stream_acked_total|spillway_logs_moved_total)' ||
    echo "(no such metrics yet)"

# --- 7. keep running, or stop -----------------------------------------------------------------

if [ "$ONCE" = 1 ]; then
    step "--once: done"
    exit 0
fi
step "Spillway is running; metrics at $METRICS_URL/metrics; press Ctrl-C to stop"
cat <<EOF
Try, in another terminal:
  redis-cli -p $RLS_PORT SET alert:my_test "hello from the demo" EX 3600
  redis-cli -p $RLS_PORT RPUSH trade_execution:T-9 "not MessagePack"   # a log entry for a dead letter
  redis-cli -p $RTRS_PORT XADD trade_results '*' trade_id T-9 event closed
  curl -s $CH_URL/ --data-binary "SELECT key, message FROM spillway.alerts FINAL ORDER BY key FORMAT PrettyCompact"
  tail -f $WORK/spillway.log
EOF
code=0
wait "$SPILLWAY_PID" || code=$?
SPILLWAY_PID=""
die "spillway exited by itself (exit code $code); see $WORK/spillway.log"
