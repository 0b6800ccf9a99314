# shellcheck shell=bash
# shellcheck disable=SC2317,SC2034 # (functions run from traps and wait_until; variables set here are demo.sh's)
# The cluster half of scripts/demo.sh (sourced by it, not run): `scripts/demo.sh --cluster`
# puts RLS on a Redis Cluster and ClickHouse on a cluster, as docs/reference.md describes them:
#
#   - RLS: 6 redis-servers from scripts/redis/rls.conf with cluster-enabled, ports
#     DEMO_CLUSTER_PORT..+5 (default 7001-7006, cluster bus port + 10000), made 3 primaries with
#     one replica each by `redis-cli --cluster create`; Spillway is given
#     redis-cluster://127.0.0.1:7001?node=...:7002&node=...:7003 (any node would do),
#   - ClickHouse: ZooKeeper (Debian's zookeeper package, run with java; DEMO_ZK_PORT, default
#     2181) and 4 clickhouse-servers, 2 shards x 2 replicas, cluster "spillway_demo" (HTTP
#     DEMO_CH_HTTP_PORT..+3, TCP DEMO_CH_TCP_PORT..+3, interserver DEMO_CH_INTERSERVER_PORT..+3,
#     defaults 8123, 9000, 9009); Spillway writes through the first with
#     `[clickhouse] cluster = "spillway_demo"` (replicated tables behind Distributed ones),
#   - the five other contract instances (RTS, RIS, RTSS, RTRS, RSS) as single servers, as in the
#     single-node demo.
#
# In the middle of the simulation one replica is promoted with CLUSTER FAILOVER and the demo
# shows Spillway following it (spillway_cluster_changes_total). The report adds each replica's
# rows, the cluster metrics, the memory of everything started, and a verdict: the run fails
# (exit 1) unless the failover was followed, the alerts' write account closes, no execution log
# is left in RLS and the replicas of each shard agree.
#
# Nothing is left out for memory: with 20 s of simulation everything it starts peaked at about
# 1.4 GiB of RSS (the four ClickHouse servers 850 MiB, ZooKeeper 250 MiB, the eleven
# redis-servers 220 MiB, Spillway 45 MiB); the report prints the figures of each run.

CLUSTER_PORT=${DEMO_CLUSTER_PORT:-7001}
ZK_PORT=${DEMO_ZK_PORT:-2181}
CH_INTERSERVER_PORT=${DEMO_CH_INTERSERVER_PORT:-9009}
CH_CLUSTER=spillway_demo
ZK_CLASSPATH=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
RC_PORTS=() RC_PID=() CHN_PID=() CHN_DIR=()
ZK_PID="" FAILOVER_PID=""

# cluster_setup: checks the cluster's settings; sets its ports and what stands in for RLS.
cluster_setup() {
    local v i
    for v in "$CLUSTER_PORT:DEMO_CLUSTER_PORT" "$ZK_PORT:DEMO_ZK_PORT" "$CH_INTERSERVER_PORT:DEMO_CH_INTERSERVER_PORT"; do
        [[ ${v%%:*} =~ ^[0-9]+$ ]] || die "${v#*:} must be a port number, not '${v%%:*}'"
    done
    ((CLUSTER_PORT >= 1024 && CLUSTER_PORT + 5 + 10000 <= 65535)) ||
        die "DEMO_CLUSTER_PORT=$CLUSTER_PORT: the six nodes take it to +5 and their cluster bus +10000; pick 1024-55530"
    for ((i = 0; i < 6; i++)); do RC_PORTS+=($((CLUSTER_PORT + i))); done
    # RLS is the cluster: the single RLS of the contract is not started.
    REDIS_NAMES=(rts ris rtss rtrs rss)
    RCLI=(redis-cli -c -h 127.0.0.1 -p "$CLUSTER_PORT")
    RLS_URL="redis-cluster://127.0.0.1:$CLUSTER_PORT?node=127.0.0.1:${RC_PORTS[1]}&node=127.0.0.1:${RC_PORTS[2]}"
    RLS_ADDR="redis-cluster://127.0.0.1:$CLUSTER_PORT"
    RLS_DESC="cluster ${RC_PORTS[0]}-${RC_PORTS[5]}"
    RLS_CLI_HINT="redis-cli -c -p $CLUSTER_PORT"
    CH_CLUSTER_TOML=$'\n'"cluster = \"$CH_CLUSTER\"       # replicated tables ON CLUSTER, Distributed ones in front"
    PIPE_DESC="a RESP client that sends each to the node owning its key (redis-cli --pipe does not follow MOVED)"
}

# cluster_port_entries: the cluster's ports, for the demo's free-port check
# (port:variable:what:the variable's value to suggest).
cluster_port_entries() {
    local i p
    for p in "${RC_PORTS[@]}"; do
        entries+=("$p:DEMO_CLUSTER_PORT:Redis Cluster node (RLS):$((CLUSTER_PORT + 10000))"
            "$((p + 10000)):DEMO_CLUSTER_PORT:Redis Cluster bus (RLS):$((CLUSTER_PORT + 1000))")
    done
    for ((i = 1; i < 4; i++)); do
        entries+=("$((CH_HTTP_PORT + i)):DEMO_CH_HTTP_PORT:ClickHouse node $((i + 1)) HTTP:$((CH_HTTP_PORT + 10000))"
            "$((CH_TCP_PORT + i)):DEMO_CH_TCP_PORT:ClickHouse node $((i + 1)) TCP:$((CH_TCP_PORT + 10000))")
    done
    for ((i = 0; i < 4; i++)); do
        entries+=("$((CH_INTERSERVER_PORT + i)):DEMO_CH_INTERSERVER_PORT:ClickHouse node $((i + 1)) interserver:$((CH_INTERSERVER_PORT + 10000))")
    done
    entries+=("$ZK_PORT:DEMO_ZK_PORT:ZooKeeper:$((ZK_PORT + 10000))")
}

# cluster_tools: installs ZooKeeper (with a JRE) when missing.
cluster_tools() {
    if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1; then
        echo "ok: zookeeper, java"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ZooKeeper (/usr/share/java/zookeeper.jar) and java yourself"
    step "Installing zookeeper (and a JRE) with apt-get"
    install_packages zookeeper
    if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null 2>&1; then
        die "zookeeper or java still missing after apt-get install zookeeper"
    fi
}

# --- starting ---------------------------------------------------------------------------------

cluster_start_redis() {
    local p
    step "Starting the RLS Redis Cluster: six redis-servers from scripts/redis/rls.conf, cluster-enabled"
    for p in "${RC_PORTS[@]}"; do
        mkdir -p "$WORK/rls-cluster/$p"
        echo "\$ redis-server scripts/redis/rls.conf --port $p --dir $WORK/rls-cluster/$p --cluster-enabled yes --cluster-port $((p + 10000)) ..."
        start_bg "$WORK/redis-rls-$p.log" redis-server "$ROOT/scripts/redis/rls.conf" --port "$p" \
            --dir "$WORK/rls-cluster/$p" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 2000 --cluster-port $((p + 10000)) --cluster-require-full-coverage no \
            --repl-diskless-sync-delay 0
        RC_PID+=("$STARTED_PID")
    done
}

cluster_start_zookeeper() {
    local d="$WORK/zookeeper"
    step "Starting ZooKeeper on 127.0.0.1:$ZK_PORT (coordinates the ClickHouse replicas and ON CLUSTER DDL)"
    mkdir -p "$d/data"
    cat >"$d/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$d/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=0
4lw.commands.whitelist=ruok,stat,mntr,srvr
EOF
    echo "\$ java -Xmx256m -cp $ZK_CLASSPATH org.apache.zookeeper.server.ZooKeeperServerMain $d/zoo.cfg"
    pushd "$d" >/dev/null || die "cannot enter $d"
    start_bg "$WORK/zookeeper.log" java -Xmx256m -cp "$ZK_CLASSPATH" org.apache.zookeeper.server.ZooKeeperServerMain "$d/zoo.cfg"
    ZK_PID=$STARTED_PID
    popd >/dev/null || true
}

# The <yandex> elements of node I (0-3: shard I/2+1, replica I%2+1) of the ClickHouse cluster.
cluster_ch_xml() {
    local i=$1 s r shards="" replicas
    for s in 0 1; do
        replicas=""
        for r in 0 1; do
            replicas+="<replica><host>127.0.0.1</host><port>$((CH_TCP_PORT + s * 2 + r))</port></replica>"
        done
        shards+="<shard><internal_replication>true</internal_replication>$replicas</shard>"
    done
    cat <<EOF
  <interserver_http_port>$((CH_INTERSERVER_PORT + i))</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <remote_servers><$CH_CLUSTER>$shards</$CH_CLUSTER></remote_servers>
  <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node></zookeeper>
  <macros><shard>$((i / 2 + 1))</shard><replica>s$((i / 2 + 1))r$((i % 2 + 1))</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
EOF
}

cluster_start_clickhouse() {
    local i d
    step "Starting 4 clickhouse-servers: cluster $CH_CLUSTER, 2 shards x 2 replicas (HTTP $CH_HTTP_PORT-$((CH_HTTP_PORT + 3)), TCP $CH_TCP_PORT-$((CH_TCP_PORT + 3)))"
    for ((i = 0; i < 4; i++)); do
        d="$WORK/clickhouse-s$((i / 2 + 1))r$((i % 2 + 1))"
        mkdir -p "$d"
        write_users_xml "$d"
        clickhouse_config "$d" $((CH_HTTP_PORT + i)) $((CH_TCP_PORT + i)) "$d/error.log" "$(cluster_ch_xml "$i")"
        pushd "$d" >/dev/null || die "cannot enter $d"
        start_bg "$d/stdout.log" clickhouse-server --config-file="$d/config.xml"
        CHN_PID+=("$STARTED_PID")
        CHN_DIR+=("$d")
        popd >/dev/null || true
    done
}

zk_ready() {
    local r
    r=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && timeout 2 cat <&3
    )
    [[ $r == *"Zookeeper version"* ]]
}
# chn I SQL: runs SQL on ClickHouse node I.
chn() { curl -sS --fail-with-body "http://127.0.0.1:$((CH_HTTP_PORT + $1))/" --data-binary "$2"; }
# 18.16 answers /ping before it has its ZooKeeper session, and an ON CLUSTER statement without
# one crashes it.
chn_session() { chn "$1" "SELECT count() FROM system.zookeeper WHERE path = '/'"; }
# Every node says cluster_state:ok, knows all six, no handshake left, replicas synced.
cluster_ok() {
    local p info nodes repl
    for p in "${RC_PORTS[@]}"; do
        info=$(redis-cli -p "$p" cluster info) && nodes=$(redis-cli -p "$p" cluster nodes) &&
            repl=$(redis-cli -p "$p" info replication) || return 1
        [[ $info == *cluster_state:ok* && $nodes != *handshake* ]] || return 1
        [ "$(wc -l <<<"$nodes")" = 6 ] || return 1
        [[ $repl == *role:master* || $repl == *master_link_status:up* ]] || return 1
    done
}
# The cluster as node 1 sees it: one line per node (address, role, slots or primary).
cluster_show() {
    redis-cli -p "${RC_PORTS[0]}" cluster nodes | awk '
        { addr = $2; sub(/@.*/, "", addr); id[$1] = addr; line[NR] = $0 }
        END {
            for (n = 1; n <= NR; n++) {
                split(line[n], f, " "); a = f[2]; sub(/@.*/, "", a)
                if (f[3] ~ /master/) { s = ""; for (k = 9; k in f; k++) s = s " " f[k]; printf "  %-16s primary, slots%s\n", a, s }
                else printf "  %-16s replica of %s\n", a, id[f[4]]
            }
        }' | sort
}

# cluster_ready: waits for the nodes, makes the cluster, waits for ZooKeeper and ClickHouse.
cluster_ready() {
    local i p addrs=()
    for ((i = 0; i < 6; i++)); do
        p=${RC_PORTS[$i]}
        wait_until "redis-server (RLS cluster node $p)" "${RC_PID[$i]}" 20 "$WORK/redis-rls-$p.log" redis_ready "$p"
        addrs+=("127.0.0.1:$p")
    done
    echo "\$ redis-cli --cluster create ${addrs[*]} --cluster-replicas 1 --cluster-yes   (output: $WORK/cluster-create.log)"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes </dev/null >"$WORK/cluster-create.log" 2>&1 ||
        die "redis-cli --cluster create failed; see $WORK/cluster-create.log"
    wait_until "the RLS Redis Cluster" "${RC_PID[0]}" 60 "$WORK/cluster-create.log" cluster_ok
    echo "RLS Redis Cluster ok (pids ${RC_PID[*]}), notify-keyspace-events $(redis-cli -p "$CLUSTER_PORT" config get notify-keyspace-events | tail -n1) on every node:"
    cluster_show
    wait_until zookeeper "$ZK_PID" 60 "$WORK/zookeeper.log" zk_ready
    echo "zookeeper ready (pid $ZK_PID)"
    for ((i = 0; i < 4; i++)); do
        wait_until "clickhouse-server node $((i + 1))" "${CHN_PID[$i]}" 60 "${CHN_DIR[$i]}/error.log" chn_session "$i"
        echo "clickhouse-server ${CHN_DIR[$i]##*/} ready on HTTP $((CH_HTTP_PORT + i)) (pid ${CHN_PID[$i]}), version $(chn "$i" 'SELECT version()'), ZooKeeper session up"
    done
}

# --- RLS commands that must reach the node owning each key --------------------------------------

# The primaries' ports now (they change with a failover).
cluster_primaries() {
    local p
    for p in "${RC_PORTS[@]}"; do
        redis-cli -p "$p" cluster nodes 2>/dev/null | awk '$3 ~ /master/ && $3 !~ /fail/ { a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print a }' && return
    done
}

# cluster_scan PATTERN: the keys of every primary matching PATTERN.
cluster_scan() {
    local p
    for p in $(cluster_primaries); do redis-cli -p "$p" --scan --pattern "$1"; done
}

# cluster_pipe: sends the RESP commands on stdin, each to the node owning its key (redis-cli
# --pipe does not follow MOVED).
cluster_pipe() {
    cat >"$WORK/cluster_pipe.py" <<'PY'
"""RESP commands from stdin, each sent to the cluster node that owns its key (following MOVED
and ASK); prints errors and replies like redis-cli --pipe."""
import socket
import sys

seed = ("127.0.0.1", int(sys.argv[1]))
conns = {}


def conn(addr):
    if addr not in conns:
        s = socket.create_connection(addr, timeout=10)
        conns[addr] = (s, s.makefile("rb"))
    return conns[addr]


def reply(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        return kind, None if int(rest) < 0 else f.read(int(rest) + 2)[:-2]
    if kind == b"*":
        return kind, [reply(f) for _ in range(max(int(rest), 0))]
    return kind, rest


def command(f):
    line = f.readline()
    if not line:
        return None
    args = []
    for _ in range(int(line[1:-2])):
        n = int(f.readline()[1:-2])
        args.append(f.read(n + 2)[:-2])
    return args


def resp(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


errors = replies = 0
while (args := command(sys.stdin.buffer)) is not None:
    target, asking = seed, False
    for _ in range(5):
        sock, f = conn(target)
        sock.sendall((resp([b"ASKING"]) if asking else b"") + resp(args))
        if asking:
            reply(f)
        kind, value = reply(f)
        if kind == b"-" and value.split(b" ")[0] in (b"MOVED", b"ASK"):
            how, _, where = value.decode().split()
            host, port = where.rsplit(":", 1)
            target, asking = (host or seed[0], int(port)), how == "ASK"
            continue
        break
    replies += 1
    if kind == b"-":
        errors += 1
        sys.stderr.write("error: %s\n" % value.decode(errors="replace"))
print("errors: %d, replies: %d (each sent to the node owning its key)" % (errors, replies))
sys.exit(1 if errors else 0)
PY
    python3 "$WORK/cluster_pipe.py" "$CLUSTER_PORT"
}

# --- the failover -------------------------------------------------------------------------------

# The sum of spillway_cluster_changes_total.
cluster_changes() {
    { curl -fsS "$METRICS_URL/metrics" 2>/dev/null || true; } |
        awk '/^spillway_cluster_changes_total/ { s += $NF } END { printf "%d\n", s }'
}
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# cluster_failover: promotes a replica (CLUSTER FAILOVER: graceful, no write lost), then waits
# for Spillway to follow; the outcome goes to $WORK/failover.result.
cluster_failover() {
    local nodes rep id rport pport before t0 i
    nodes=$(redis-cli -p "$(cluster_primaries | head -n1)" cluster nodes)
    rep=$(awk '$3 ~ /slave/ && $3 !~ /fail/ { print $2, $4; exit }' <<<"$nodes")
    [ -n "$rep" ] || {
        echo "failover: no replica found" | tee "$WORK/failover.result"
        return
    }
    rport=${rep%%@*}
    rport=${rport##*:}
    id=${rep##* }
    pport=$(awk -v id="$id" '$1 == id { a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print a }' <<<"$nodes")
    before=$(cluster_changes)
    step "CLUSTER FAILOVER on replica 127.0.0.1:$rport (of primary 127.0.0.1:$pport); spillway_cluster_changes_total = $before"
    t0=$(now_ms)
    redis-cli -p "$rport" cluster failover >/dev/null
    for ((i = 0; i < 200; i++)); do
        [ "$(redis-cli -p "$rport" role 2>/dev/null | head -n1)" = master ] && break
        sleep 0.1
    done
    echo "failover: 127.0.0.1:$rport is $(redis-cli -p "$rport" role | head -n1) after $(($(now_ms) - t0)) ms, 127.0.0.1:$pport is $(redis-cli -p "$pport" role | head -n1)"
    for ((i = 0; i < 200; i++)); do
        [ "$(cluster_changes)" -gt "$before" ] && break
        sleep 0.1
    done
    if [ "$(cluster_changes)" -gt "$before" ]; then
        echo "failover: Spillway followed $(($(now_ms) - t0)) ms after the CLUSTER FAILOVER:" \
            "$(curl -fsS "$METRICS_URL/metrics" | grep -E '^spillway_cluster_(changes_total|nodes)' | tr '\n' ' ')"
        echo "followed 127.0.0.1:$pport -> 127.0.0.1:$rport in $(($(now_ms) - t0)) ms" >"$WORK/failover.result"
    else
        echo "failover: Spillway did not follow within 20 s" | tee "$WORK/failover.result"
    fi
}

# In the background: the failover half-way through the simulation.
cluster_failover_midway() {
    local i
    (
        trap - EXIT INT TERM
        # Short sleeps: killed, this leaves no sleep behind for long.
        for ((i = 0; i < SIMULATE * 5 / 2; i++)); do sleep 0.2; done
        cluster_failover
    ) &
    FAILOVER_PID=$!
}

# Waits for the failover started by cluster_failover_midway.
cluster_failover_wait() {
    if [ -n "$FAILOVER_PID" ]; then wait "$FAILOVER_PID" || true; fi
    FAILOVER_PID=""
}

# --- the report ---------------------------------------------------------------------------------

# Sums VmRSS and VmHWM (peak) of PIDs, in MiB: "now peak".
rss_of() {
    local pid now=0 peak=0 a b
    for pid in "$@"; do
        [ -r "/proc/$pid/status" ] || continue
        a=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        b=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
        now=$((now + ${a:-0}))
        peak=$((peak + ${b:-0}))
    done
    echo "$((now / 1024)) $((peak / 1024))"
}

cluster_report() {
    local i t n a b row ok=1 tables=(alerts alert_events dead_letters trades trade_executions) verdict=()
    step "Replication: rows under FINAL in each replica's local tables"
    # A replica fetches its twin's parts in the background: wait (up to 30 s) until they agree.
    for ((i = 0; i < 150; i++)); do
        ok=1
        for t in "${tables[@]}"; do
            for n in 0 2; do
                [ "$(chn "$n" "SELECT count() FROM spillway.${t}_local FINAL")" = "$(chn $((n + 1)) "SELECT count() FROM spillway.${t}_local FINAL")" ] || ok=0
            done
        done
        [ "$ok" = 1 ] && break
        sleep 0.2
    done
    printf '  %-6s' node
    printf ' %16s' "${tables[@]}"
    echo
    for ((n = 0; n < 4; n++)); do
        row=$(printf '  %-6s' "${CHN_DIR[$n]##*-}")
        for t in "${tables[@]}"; do row+=$(printf ' %16s' "$(chn "$n" "SELECT count() FROM spillway.${t}_local FINAL")"); done
        echo "$row"
    done
    [ "$ok" = 1 ] && echo "the two replicas of each shard agree" || verdict+=("the replicas of a shard disagree after 30 s")

    step "The RLS cluster now, and what Spillway's metrics say of it"
    cluster_show
    curl -fsS "$METRICS_URL/metrics" |
        grep -E '^spillway_(cluster_nodes|cluster_changes_total|keys_migrated_total|redis_memory_used_bytes\{[^}]*instance="rls")' || true
    echo "failover: $(cat "$WORK/failover.result" 2>/dev/null || echo 'not done')"

    step "Memory: resident set of every process the demo started (MiB, now and peak)"
    read -r a b < <(rss_of "${REDIS_PID[@]}")
    printf '  %-44s %6s %6s\n' "redis-server x${#REDIS_PID[@]} (RTS, RIS, RTSS, RTRS, RSS)" "$a" "$b"
    read -r a b < <(rss_of "${RC_PID[@]}")
    printf '  %-44s %6s %6s\n' "redis-server x6 (RLS cluster)" "$a" "$b"
    read -r a b < <(rss_of "${CHN_PID[@]}")
    printf '  %-44s %6s %6s\n' "clickhouse-server x4" "$a" "$b"
    read -r a b < <(rss_of "$ZK_PID")
    printf '  %-44s %6s %6s\n' "zookeeper (java)" "$a" "$b"
    read -r a b < <(rss_of "$SPILLWAY_PID")
    printf '  %-44s %6s %6s\n' "spillway" "$a" "$b"
    read -r a b < <(rss_of "${REDIS_PID[@]}" "${RC_PID[@]}" "${CHN_PID[@]}" "$ZK_PID" "$SPILLWAY_PID")
    printf '  %-44s %6s %6s  (peak: the sum of each process'"'"'s own peak)\n' "all" "$a" "$b"

    step "Verdict"
    grep -q '^followed' "$WORK/failover.result" 2>/dev/null || verdict+=("the failover was not followed: $(cat "$WORK/failover.result" 2>/dev/null || echo 'not done')")
    n=$(awk '$1 == "unaccounted" { print $2 }' "$WORK/account.txt")
    [ "$n" = 0 ] || verdict+=("the alerts' write account does not close: $n unaccounted")
    n=$(awk '$1 == "pending" { print $2 }' "$WORK/account.txt")
    [ "$n" = 0 ] || verdict+=("$n alert writes still pending")
    n=$(cluster_scan 'trade_execution:*' | wc -l)
    [ "$n" = 0 ] || verdict+=("$n execution logs left in RLS")
    [ "$(ch 'SELECT count() FROM spillway.trades FINAL')" -ge 3 ] || verdict+=("fewer than 3 trades in ClickHouse")
    if [ ${#verdict[@]} -gt 0 ]; then
        printf '  FAILED: %s\n' "${verdict[@]}"
        die "the cluster demo did not pass (logs: $WORK)"
    fi
    echo "  passed: failover followed, write account closed, no execution log left in RLS, replicas agree"
}

# --- stopping -----------------------------------------------------------------------------------

cluster_started() { [ -n "${RC_PID[*]}${CHN_PID[*]}$ZK_PID" ]; }
cluster_stop_helper() {
    if [ -n "$FAILOVER_PID" ]; then
        kill -TERM "$FAILOVER_PID" 2>/dev/null
        wait "$FAILOVER_PID" 2>/dev/null
    fi
    FAILOVER_PID=""
}
cluster_stop_redis() {
    local i
    for ((i = 0; i < ${#RC_PID[@]}; i++)); do
        stop "redis-server (RLS cluster ${RC_PORTS[$i]})" "${RC_PID[$i]}" 15
    done
}
cluster_stop_rest() {
    local i
    for ((i = 0; i < ${#CHN_PID[@]}; i++)); do
        stop "clickhouse-server (${CHN_DIR[$i]##*/})" "${CHN_PID[$i]}" 30
    done
    stop zookeeper "$ZK_PID" 15
}
