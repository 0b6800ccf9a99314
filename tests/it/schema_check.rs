//! The start-up schema check means it: an existing table with another ORDER BY, engine or column
//! type stops Spillway before anything is written, with the differences and the statement that
//! fixes them; once that statement has run, Spillway starts.

use std::time::Duration;

use common::trades;
use common::{eventually, ClickHouseServer, RedisServer, Spillway};

/// `trade_executions` as an earlier version made it: ordered by (trade_id, seq), without
/// take_id, text and format.
const OLD_EXECUTIONS: &str = "CREATE TABLE tschema.trade_executions (trade_id String, seq Int64, \
    ts_ms Int64, step String, instance_id String, account_id String, symbol String, side String, \
    volume Nullable(Float64), price Nullable(Float64), sl Nullable(Float64), tp Nullable(Float64), \
    order_ticket Nullable(Int64), deal_ticket Nullable(Int64), retcode Nullable(Int64), \
    latency_us Nullable(Int64), comment String, extra String, position UInt32, source_key String, \
    archived_at_ms Int64) ENGINE = ReplacingMergeTree() ORDER BY (trade_id, seq)";

/// Starts Spillway and waits until it exits (the check failed) or is ready (None).
async fn start(toml: &str) -> Option<String> {
    let sp = Spillway::start(toml);
    let mut exited = None;
    eventually(
        Duration::from_secs(60),
        "spillway exits or is ready",
        || {
            let done = sp.exit_status().is_some();
            exited = done.then(|| sp.log());
            let metrics = sp.metrics_port;
            async move {
                done || common::http_client(Duration::from_secs(2))
                    .get(format!("http://127.0.0.1:{metrics}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
    )
    .await;
    exited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_or_foreign_table_stops_the_start_with_its_fix() {
    let (rls, rtrs, ch) = (
        RedisServer::start(),
        RedisServer::start_with(&["--notify-keyspace-events", ""]),
        ClickHouseServer::start(),
    );
    let toml = trades::config_toml(&rls, &rtrs, &ch, "tschema", "");
    ch.query("CREATE DATABASE tschema").await;
    ch.query(OLD_EXECUTIONS).await;
    let log = start(&toml).await.expect("spillway refused the old table");
    for said in [
        "table tschema.trade_executions is not what Spillway writes",
        "ORDER BY is (trade_id, seq), not (trade_id, take_id, position)",
        "column take_id String is missing",
        "fix: run `RENAME TABLE tschema.trade_executions TO tschema.trade_executions_old`",
    ] {
        assert!(log.contains(said), "{said:?} not in:\n{log}");
    }
    ch.query("RENAME TABLE tschema.trade_executions TO tschema.trade_executions_old")
        .await;
    // A plain MergeTree with the right columns would never deduplicate: refused too.
    let create = ch
        .query("SHOW CREATE TABLE tschema.trades FORMAT TSVRaw")
        .await;
    assert!(create.contains("ReplacingMergeTree(version)"), "{create}");
    ch.query("DROP TABLE tschema.trades").await;
    ch.query(&create.replace("ReplacingMergeTree(version)", "MergeTree"))
        .await;
    let log = start(&toml)
        .await
        .expect("spillway refused the plain MergeTree");
    assert!(
        log.contains("engine is MergeTree, not ReplacingMergeTree"),
        "{log}"
    );
    ch.query("DROP TABLE tschema.trades").await;
    // A column missing, nothing else: the fix adds it, and Spillway starts.
    ch.query("ALTER TABLE tschema.alerts DROP COLUMN captured_by")
        .await;
    let log = start(&toml)
        .await
        .expect("spillway refused a missing column");
    let label = if common::modern_clickhouse() {
        "LowCardinality(String)"
    } else {
        "String"
    };
    let fix = format!("ALTER TABLE tschema.alerts ADD COLUMN captured_by {label}");
    assert!(log.contains(&fix), "{log}");
    ch.query(&fix).await;
    assert_eq!(start(&toml).await, None, "spillway starts once fixed");
}
