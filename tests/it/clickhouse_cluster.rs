//! Spillway writing to a ClickHouse cluster (`clickhouse.cluster`): 2 shards x 2 replicas of
//! 18.16 with ZooKeeper, alerts (the rewriter's load) and closed trades with their logs, one
//! replica SIGKILLed mid-load and restarted. The restarted replica catches up with its twin,
//! every row lands once (the Distributed table under FINAL holds each value once, as many as
//! were archived), both shards hold rows, and the write account closes. Then Spillway restarts
//! and its rescan writes every live alert again: the copies meet their first rows on one shard,
//! and FINAL over the Distributed table still shows each value once.
//!
//! The modern server of the tests (chdb's) has no Keeper, so no replicated tables: the test runs
//! on 18.16 only (the cluster DDL of current servers is checked by the unit tests of
//! `rows::cluster`).

use std::time::{Duration, Instant};

use common::chcluster::{ClickHouseCluster, REPLICAS};
use common::rewrite::{self, rewrite};
use common::{trades, RedisServer, Spillway};

const DB: &str = "tcluster";
const WAIT: Duration = Duration::from_secs(60);
/// The node Spillway talks to (shard 1), and the one killed (shard 2, so that the Distributed
/// inserts have to go to its twin while it is down).
const ENTRY: usize = 0;
const KILLED: usize = 2;

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_row_lands_once_while_a_replica_is_killed() {
    if common::modern_clickhouse() {
        println!("skipped: the modern ClickHouse of the tests (chdb) has no Keeper, so no replicated tables; the cluster runs on 18.16");
        return;
    }
    let started = Instant::now();
    let mut cluster = block(ClickHouseCluster::start);
    let (rls, rtrs) = (
        RedisServer::start(),
        RedisServer::start_with(&["--notify-keyspace-events", ""]),
    );
    let toml = trades::config_toml(&rls, &rtrs, cluster.node(ENTRY), DB, "max_delay_ms = 200")
        .replace(
            &format!("database = \"{DB}\"\n"),
            &format!(
                "database = \"{DB}\"\ncluster = \"{}\"\n",
                ClickHouseCluster::NAME
            ),
        );
    let mut sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    let up = started.elapsed();
    for i in 0..REPLICAS * 2 {
        let engines = cluster
            .query(i, &format!("SELECT name, engine FROM system.tables WHERE database = '{DB}' AND name LIKE 'alerts%' ORDER BY name FORMAT TSV"))
            .await;
        assert_eq!(
            engines, "alerts\tDistributed\nalerts_local\tReplicatedReplacingMergeTree\n",
            "node {i}"
        );
    }

    // Load: alerts rewritten and deleted at 1500/s for 8 s, and 60 trades closed meanwhile;
    // shard 2's first replica SIGKILLed after 2 s, restarted 3 s later.
    let rewriter = rewrite(&rls.url(), 1500, Duration::from_secs(8));
    let plan = trades::plan("cl", 60);
    let (rls_url, rtrs_url, p) = (rls.url(), rtrs.url(), plan.clone());
    let player = tokio::spawn(async move {
        trades::play(&rls_url, &rtrs_url, &p, 10, Duration::from_millis(700)).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    block(|| cluster.kill(KILLED));
    tokio::time::sleep(Duration::from_secs(3)).await;
    block(|| cluster.restart(KILLED));
    let rewrites = rewriter.join().await;
    let (n_trades, n_entries) = player.await.expect("trade player");

    let metrics = rewrite::settled(&sp, WAIT).await;
    let outcomes = rewrite::assert_equation("cluster", &metrics);
    // The restarted replica catches up with its twin, for every table (until then a query
    // through the Distributed table may read it and miss rows).
    let twin = ClickHouseCluster::twin(KILLED);
    for table in ["alerts", "trades", "trade_executions"] {
        let sql = format!("SELECT count() FROM {DB}.{table}_local FINAL");
        let deadline = Instant::now() + WAIT;
        let (mut got, mut want) = (0, 1);
        while got != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (got, want) = (
                cluster.count(KILLED, &sql).await,
                cluster.count(twin, &sql).await,
            );
        }
        assert_eq!(
            got,
            want,
            "{table}_local: the restarted replica caught up with its twin:\n{}",
            cluster.node(KILLED).error_log()
        );
    }
    // Counts over the Distributed table, FINAL on each shard: as many rows as archived, and
    // each value once (a copy on another shard would show twice).
    for (table, want) in [("trades", n_trades), ("trade_executions", n_entries)] {
        let sql = format!("SELECT count() FROM {DB}.{table} FINAL");
        let got = cluster.count_until(ENTRY, &sql, want, WAIT).await;
        assert_eq!(got, want, "{table} FINAL over the Distributed table");
    }
    rewrite::assert_rows_match("cluster", cluster.node(ENTRY), DB, &metrics).await;

    // Spillway restarted: its start-up rescan writes every live alert again (a new process
    // remembers nothing). The copies meet their first rows on the same shard: FINAL over the
    // Distributed table shows each value once still.
    let distinct_sql = format!("SELECT count() FROM {DB}.alerts FINAL");
    let distinct = cluster.count(ENTRY, &distinct_sql).await;
    sp.terminate();
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    let live = rls.cli(&["--scan", "--pattern", "alert:*"]).lines().count() as u64;
    let (scan, table) = (
        [("pipeline", "alerts"), ("via", "scan")],
        [("table", "alerts")],
    );
    let deadline = Instant::now() + WAIT;
    let (mut captured, mut written) = (0, 0);
    while (captured < live || written < captured) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = sp.metrics().await;
        captured = common::faults::metric(&m, "spillway_values_captured_total", &scan);
        written = common::faults::metric(&m, "spillway_rows_written_total", &table);
    }
    assert!(
        captured >= live && written >= captured,
        "the rescan captured {captured} of {live} live alerts, {written} rows committed"
    );
    let after = cluster
        .count_until(ENTRY, &distinct_sql, distinct, WAIT)
        .await;
    assert_eq!(
        after, distinct,
        "values under FINAL after the rescan wrote them again"
    );
    let rw = rewrite::check("cluster", &rls, cluster.node(ENTRY), DB, &rewrites).await;
    let left = rls.cli(&["--scan", "--pattern", "trade_execution:*"]);
    assert!(left.trim().is_empty(), "logs left in RLS: {left}");

    // The shards' local tables add up to the Distributed table, and both hold rows.
    let mut per_shard = Vec::new();
    for table in ["alerts", "trades", "trade_executions"] {
        let sql = format!("SELECT count() FROM {DB}.{table}_local FINAL");
        let mut total = 0;
        for shard_first in [0, REPLICAS] {
            let n = cluster.count(shard_first, &sql).await;
            total += n;
            per_shard.push(n);
        }
        let whole = cluster
            .count(ENTRY, &format!("SELECT count() FROM {DB}.{table} FINAL"))
            .await;
        assert_eq!(total, whole, "{table}: the shards' local tables add up");
    }
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "a shard got no rows: {per_shard:?}"
    );
    let retries = common::faults::metric(&metrics, "spillway_insert_retries_total", &[]);
    let log = sp.log();
    let failed: Vec<String> = log
        .lines()
        .filter(|l| l.contains("insert failed"))
        .take(3)
        .map(|l| l.chars().take(300).collect())
        .collect();
    println!("insert retries: {retries}; first failures: {failed:#?}");
    println!(
        "CLUSTER up={up:?} total={:?} rewrites: {} archived={} replaced={} trades={n_trades} entries={n_entries} rows per shard (alerts, trades, executions): {per_shard:?} outcomes: {outcomes:?}",
        started.elapsed(),
        rewrites.line(),
        rw.archived,
        rw.replaced,
    );
}
