//! Trade close on a Redis Cluster: RLS and RTRS are one real 3-primary, 3-replica cluster
//! (`redis-cluster://`), and the real spillway binary moves every execution log into a real
//! clickhouse-server exactly once (under FINAL), with no log, staging key or pending entry left,
//! through a `CLUSTER FAILOVER` of the stream's node, a SIGKILLed primary and a slot migration
//! under load; and with two spillway instances in one consumer group, one SIGKILLed under load.
//!
//! The producer waits for a replica after each batch (`WAIT 1 1000` on every primary, see
//! `testkit::cluster_load`): a SIGKILLed primary loses what it had not replicated, before
//! Spillway could see it, and the test's expectations are the trades the producer made durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rcluster::RedisCluster;
use common::trades::{self, Trade, GROUP, STREAM};
use common::{cluster_load, eventually, free_port, ClickHouseServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster holding RLS and RTRS, a ClickHouse, and the config of a spillway on both.
struct Stack {
    cluster: RedisCluster,
    ch: ClickHouseServer,
    db: String,
    url: String,
    _pipelines: tempfile::TempDir,
}

impl Stack {
    /// The cluster and ClickHouse; the trades pipeline with `claim_idle_secs` = `claim`.
    fn start(db: &str, claim: u64) -> Stack {
        let cluster = RedisCluster::start(3, 1);
        let url = cluster.url().replace("redis://", "redis-cluster://");
        let pipelines = common::observe::pipelines(&["trades"]);
        let file = pipelines.path().join("trades.toml");
        let def = std::fs::read_to_string(&file).unwrap();
        let def = def.replace(
            "claim_idle_secs = 60",
            &format!("claim_idle_secs = {claim}"),
        );
        std::fs::write(&file, def).unwrap();
        Stack {
            cluster,
            ch: ClickHouseServer::start(),
            db: db.to_string(),
            url,
            _pipelines: pipelines,
        }
    }

    /// A spillway on the cluster (its own metrics port, so its own default consumer name).
    async fn spillway(&self) -> Spillway {
        let toml = format!(
            "pipelines_dir = \"{}\"\npipelines = [\"trades\"]\n\n[redis.rls]\nurl = \"{}\"\n\n\
             [redis.rtrs]\nurl = \"{}\"\n\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n\n\
             [metrics]\naddr = \"127.0.0.1:{}\"\n\n[batch]\nmax_delay_ms = 200\n",
            self._pipelines.path().display(),
            self.url,
            self.url,
            self.ch.url(),
            self.db,
            free_port()
        );
        let sp = Spillway::start(&toml);
        sp.wait_ready(WAIT).await;
        sp
    }

    async fn count(&self, sql: &str) -> u64 {
        self.ch
            .count(&sql.replace("DB.", &format!("{}.", self.db)))
            .await
    }

    /// `redis-cli` on the primary that owns the stream now.
    fn on_stream(&self, args: &[&str]) -> String {
        let owner = self.cluster.owner_of(STREAM);
        self.cluster.nodes[owner].cli(args)
    }

    /// Entries delivered and not acknowledged, and whether the group has not read up to the
    /// stream's last entry (its `last-delivered-id` behind the stream's `last-generated-id`;
    /// XINFO's `lag` can stay stale in Redis 7.0 after a failover or a migration).
    fn waiting(&self) -> (u64, bool) {
        let pending = self.on_stream(&["XPENDING", STREAM, GROUP]);
        let pending = pending
            .lines()
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(u64::MAX);
        let after = |text: &str, field: &str| {
            let lines: Vec<&str> = text.lines().collect();
            let at = lines.iter().position(|l| *l == field);
            at.and_then(|at| lines.get(at + 1)).map(|v| v.to_string())
        };
        let group = after(
            &self.on_stream(&["XINFO", "GROUPS", STREAM]),
            "last-delivered-id",
        );
        let stream = after(
            &self.on_stream(&["XINFO", "STREAM", STREAM]),
            "last-generated-id",
        );
        (pending, group.is_none() || group != stream)
    }

    /// Execution logs and staging keys left on the primaries.
    fn log_keys(&self) -> Vec<String> {
        self.cluster
            .primaries()
            .into_iter()
            .flat_map(|i| {
                let out = self.cluster.nodes[i].cli(&["--scan", "--pattern", "*trade_execution*"]);
                out.lines()
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The trades of `trades` whose executions under FINAL are not their whole log, with every
    /// raw row of the trade and its executions by take: what a failed wait shows.
    async fn short_logs(&self, trades: &[Trade]) -> String {
        let got = self
            .ch
            .query(&format!(
                "SELECT trade_id, count() FROM {}.trade_executions FINAL GROUP BY trade_id \
                 FORMAT TabSeparated",
                self.db
            ))
            .await;
        let got: std::collections::HashMap<&str, u64> = got
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, n)| (id, n.parse().unwrap_or(0)))
            .collect();
        let mut out = String::new();
        for t in trades
            .iter()
            .filter(|t| got.get(t.id.as_str()) != Some(&(t.entries as u64)))
        {
            let rows = |sql: String| async move { self.ch.query(&sql).await };
            let closes = rows(format!(
                "SELECT stream_id, log_entries, log_state, received_at_ms, version FROM \
                 {}.trades WHERE trade_id = '{}' FORMAT TabSeparated",
                self.db, t.id
            ))
            .await;
            out += &format!(
                "trade {} ({} entries, {:?}): {}\nrows\n{closes}executions by take\n{}",
                t.id,
                t.entries,
                t.form,
                cause(&closes, t.entries),
                rows(format!(
                    "SELECT take_id, count(), min(seq), max(seq), min(archived_at_ms) FROM \
                     {}.trade_executions WHERE trade_id = '{}' GROUP BY take_id \
                     FORMAT TabSeparated",
                    self.db, t.id
                ))
                .await
            );
        }
        out
    }

    /// Waits until every trade of `trades` is committed, nothing waits in the stream and no
    /// key is left; then checks that each is there exactly once under FINAL, moved whole.
    async fn settled(&self, trades: &[Trade]) {
        let entries = trades::total_entries(trades);
        let executions = "SELECT count() FROM DB.trade_executions FINAL";
        let deadline = Instant::now() + WAIT;
        loop {
            let (rows, keys, waiting) = (
                self.count(executions).await,
                self.log_keys(),
                self.waiting(),
            );
            if rows >= entries && keys.is_empty() && waiting == (0, false) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "not settled: {rows} of {entries} executions; (pending, behind) \
                     {waiting:?}; keys left: {:?}\n{}",
                    &keys[..keys.len().min(10)],
                    self.short_logs(trades).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let n = trades.len() as u64;
        for (sql, want) in [
            ("SELECT count() FROM DB.trades FINAL", n),
            ("SELECT uniqExact(trade_id) FROM DB.trades", n),
            (
                "SELECT count() FROM DB.trades FINAL WHERE log_state != 'moved'",
                0,
            ),
            (executions, entries),
            (
                "SELECT uniqExact(trade_id, seq) FROM DB.trade_executions",
                entries,
            ),
            ("SELECT count() FROM DB.dead_letters FINAL", 0),
        ] {
            assert_eq!(self.count(sql).await, want, "{sql}");
        }
        let per_trade = "SELECT count() FROM (SELECT trade_id, count() AS n, max(seq) AS m \
                         FROM DB.trade_executions FINAL GROUP BY trade_id) WHERE n != m";
        assert_eq!(self.count(per_trade).await, 0, "every log whole, seq 1..=n");
    }
}

/// Why a trade's executions are short, from its `trades` rows (`stream_id, log_entries,
/// log_state, ...` each): a move that archived less than the log held, or a log gone before
/// any close took it.
fn cause(closes: &str, entries: u32) -> String {
    let rows: Vec<Vec<&str>> = closes.lines().map(|l| l.split('\t').collect()).collect();
    let moved: Vec<u32> = rows
        .iter()
        .filter(|r| r.get(2) == Some(&"moved"))
        .filter_map(|r| r.get(1)?.parse().ok())
        .collect();
    match moved.iter().max() {
        None if rows.is_empty() => "CAUSE: no close of it was archived".into(),
        None => "CAUSE: the log was gone when its closes were read: lost in Redis before \
                 any take (a write the producer counted as replicated was not?)"
            .into(),
        Some(n) if *n < entries => format!(
            "CAUSE: a take moved {n} of {entries} entries and released the log: the take \
             read a wrong length (a reply handed to the wrong command?)"
        ),
        Some(_) => "CAUSE: moved whole, yet rows are missing under FINAL".into(),
    }
}

/// Runs the producer over `trades` in the background until `stop` is set.
fn produce(
    url: &str,
    trades: &[Trade],
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, u32)> {
    let (url, load, stop) = (url.to_string(), trades.to_vec(), stop.clone());
    tokio::spawn(async move {
        cluster_load::play(&url, &load, 40, Duration::from_millis(100), &stop).await
    })
}

async fn committed(s: &Stack, at_least: u64) {
    eventually(WAIT, "trades committed", || async {
        s.count("SELECT count() FROM DB.trades FINAL").await >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_sigkill_and_reshard_under_load_lose_and_duplicate_nothing() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let t0 = Instant::now();
    let mut s = Stack::start("tcluster", 60);
    let sp = s.spillway().await;
    let plan = trades::plan("c", 20_000);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&s.url, &plan, &stop);
    committed(&s, 200).await;

    // (a) The stream's primary hands over to its replica.
    let owner = s.cluster.owner_of(STREAM);
    s.cluster.failover(s.cluster.replica_of(owner));
    println!("failover done at {:.1} s", t0.elapsed().as_secs_f64());
    let after = s.count("SELECT count() FROM DB.trades FINAL").await;
    committed(&s, after + 200).await;

    // (b) The stream's primary (now the former replica) SIGKILLed: its replica takes over after
    // the node timeout; the killed node comes back empty as a replica.
    let owner = s.cluster.owner_of(STREAM);
    let replica = s.cluster.replica_of(owner);
    s.cluster.kill(owner);
    s.cluster.wait_primary(replica, Duration::from_secs(20));
    s.cluster.restart(owner);
    s.cluster.wait_ok(Duration::from_secs(30));
    println!(
        "kill and restart done at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let after = s.count("SELECT count() FROM DB.trades FINAL").await;
    committed(&s, after + 200).await;

    // (c) A third of one primary's slots migrate, keys and all, to another.
    let primaries = s.cluster.primaries();
    s.cluster.reshard(primaries[0], primaries[1], 1500);
    println!("reshard done at {:.1} s", t0.elapsed().as_secs_f64());
    let after = s.count("SELECT count() FROM DB.trades FINAL").await;
    committed(&s, after + 100).await;

    stop.store(true, Ordering::Relaxed);
    let (written, retries) = producer.await.expect("producer");
    assert!(
        written < plan.len(),
        "the load must still run at every fault"
    );
    s.settled(&plan[..written]).await;
    println!(
        "cluster faults: {written} trades, {} entries, {retries} batches written again; {:.1} s",
        trades::total_entries(&plan[..written]),
        t0.elapsed().as_secs_f64()
    );
    assert!(sp.exit_status().is_none(), "spillway must still run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_sigkilled_under_load_lose_and_duplicate_nothing() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let t0 = Instant::now();
    let s = Stack::start("tcluster2", 2);
    let (mut a, b) = (s.spillway().await, s.spillway().await);
    let plan = trades::plan("d", 20_000);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce(&s.url, &plan, &stop);
    committed(&s, 500).await;
    let consumers = s.on_stream(&["XINFO", "CONSUMERS", STREAM, GROUP]);
    let names = consumers.lines().filter(|l| *l == "name").count();
    assert_eq!(
        names, 2,
        "two consumers, by default named apart: {consumers}"
    );
    a.kill();
    let after = s.count("SELECT count() FROM DB.trades FINAL").await;
    committed(&s, after + 300).await;
    stop.store(true, Ordering::Relaxed);
    let (written, _) = producer.await.expect("producer");
    assert!(written < plan.len(), "the load must still run at the kill");
    s.settled(&plan[..written]).await;
    let claimed = b.metrics().await;
    let claimed = common::observe::metric_value(
        &claimed,
        "spillway_stream_claimed_total{pipeline=\"trades\"}",
    );
    assert!(
        claimed.unwrap_or(0.0) > 0.0,
        "the survivor claimed the entries the killed instance left pending"
    );
    // The memory poller reads INFO from every node of the cluster, each a series of its own.
    let nodes: Vec<String> = s.cluster.nodes.iter().map(|n| n.addr()).collect();
    eventually(WAIT, "INFO of every node", || async {
        let text = b.metrics().await;
        nodes.iter().all(|addr| {
            let series = format!("spillway_redis_up{{instance=\"rls\",node=\"{addr}\"}}");
            common::observe::metric_value(&text, &series) == Some(1.0)
        })
    })
    .await;
    println!(
        "two instances: {written} trades, {} entries; {:.1} s",
        trades::total_entries(&plan[..written]),
        t0.elapsed().as_secs_f64()
    );
}
