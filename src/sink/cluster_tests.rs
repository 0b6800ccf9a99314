//! The sink on a real ClickHouse cluster (2 shards x 2 replicas of 18.16 with ZooKeeper): a
//! cluster the servers do not have is refused; a retried batch is dropped by the replicas,
//! through either replica; the start-up check reads the replicated and Distributed tables as
//! 18.16 prints them; a local table dropped on another shard is created again; a host down
//! delays the start by the DDL timeout once, not once per statement.

use std::time::{Duration, Instant};

use spillway_testkit::chcluster::ClickHouseCluster;

use super::batch::Batch;
use super::Sink;
use crate::config::{ClickHouseSettings, ClusterSettings};
use crate::rows::cluster::DDL_TIMEOUT_SECS;
use crate::rows::{AlertEventRow, Record};

fn settings(url: String, database: &str) -> ClickHouseSettings {
    ClickHouseSettings {
        url,
        user: "default".into(),
        password: String::new(),
        password_file: None,
        database: database.into(),
        recreate_tables: true,
        insert_timeout: Duration::from_secs(30),
        compression: false,
        retention_days: None,
        tls: Default::default(),
        cluster: Some(ClusterSettings {
            name: ClickHouseCluster::NAME.into(),
            zookeeper_path: "/clickhouse/tables/{shard}/{database}/{table}".into(),
            replica_name: "{replica}".into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_drops_retried_batches_and_checks_its_tables() {
    let mut cluster = tokio::task::block_in_place(ClickHouseCluster::start);
    // A cluster the servers do not have: refused before any statement, naming the field.
    let mut unknown = settings(cluster.node(0).url(), "tcl");
    unknown.cluster.as_mut().expect("a cluster").name = "nope".into();
    let e = Sink::connect(&unknown)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("clickhouse.cluster is `nope`, a cluster the server does not have; fix:"),
        "{e}"
    );
    let first = Sink::connect(&settings(cluster.node(0).url(), "tcl"))
        .await
        .expect("connect to node 0");
    // The other replica of shard 1: the tables are there, and pass the check.
    let second = Sink::connect(&settings(cluster.node(1).url(), "tcl"))
        .await
        .expect("connect to node 1");
    let mut batch = Batch::default();
    for i in 0..100 {
        batch.push(Record::alert_event(AlertEventRow {
            key: format!("alert:{i}"),
            alert_id: i.to_string(),
            event: "expired",
            event_ms: 1_700_000_000_000 + i,
            content_hash: 0,
            ttl_ms: -2,
        }));
    }
    // Written, retried, and retried through the other replica: stored once, before any merge
    // (18.16 has no insert token: the replicated block log does it).
    first.write(&batch).await.expect("insert");
    first.write(&batch).await.expect("the retry");
    second
        .write(&batch)
        .await
        .expect("the retry on the other replica");
    let local = "SELECT count() FROM tcl.alert_events_local";
    let shards = replicated(&cluster, local).await;
    assert_eq!(shards.iter().sum::<u64>(), 100, "{shards:?}");
    assert!(shards.iter().all(|&n| n > 20), "{shards:?}");

    // Shard 2's local table dropped on both its replicas (not ON CLUSTER): the insert is
    // blocked, and the repair creates it again there (the local server still has its own).
    for node in [2, 3] {
        cluster
            .query(node, "DROP TABLE tcl.alert_events_local")
            .await;
    }
    let e = first.write(&batch).await.expect_err("shard 2 has no table");
    let guard = super::Guard::new(&settings(cluster.node(0).url(), "tcl"));
    let blocked = guard.failed(&e).expect("a permanent error");
    guard.repair(&first, &blocked).await.expect("repair");
    first.write(&batch).await.expect("insert after the repair");
    let again = replicated(&cluster, local).await;
    assert_eq!(again, shards, "shard 2 holds its rows again");

    // A Distributed table that shards by something else stops the start, with its fix.
    cluster
        .query(0, "DROP TABLE tcl.trades ON CLUSTER spillway_test")
        .await;
    cluster
        .query(0, "CREATE TABLE tcl.trades ON CLUSTER spillway_test AS tcl.trades_local ENGINE = Distributed(spillway_test, tcl, trades_local, rand())")
        .await;
    let e = Sink::connect(&settings(cluster.node(0).url(), "tcl"))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("not Distributed('spillway_test', 'tcl', 'trades_local', cityHash64(trade_id))")
            && e.contains("fix: run `DROP TABLE tcl.trades ON CLUSTER `spillway_test``"),
        "{e}"
    );

    // A host down: the start waits for it once, then goes on; the host creates the tables
    // when it is back.
    tokio::task::block_in_place(|| cluster.kill(3));
    let started = Instant::now();
    Sink::connect(&settings(cluster.node(0).url(), "tdown"))
        .await
        .expect("connect with a host down");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(DDL_TIMEOUT_SECS + 25),
        "the start took {took:?}"
    );
    tokio::task::block_in_place(|| cluster.restart(3));
    let sql = "SELECT count() FROM system.tables WHERE database = 'tdown'";
    // Each table twice: the local one and its Distributed one.
    let want = 2 * crate::rows::schema::TABLES.len() as u64;
    let n = cluster
        .count_until(3, sql, want, Duration::from_secs(30))
        .await;
    assert_eq!(n, want, "the restarted host ran the queued statements");
    println!("start with a host down: {took:?}");
}

/// The count `sql` gives on each shard, once both replicas of every shard give the same (an
/// insert reaches one replica, the other fetches it).
async fn replicated(cluster: &ClickHouseCluster, sql: &str) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut counts = Vec::new();
        for node in 0..4 {
            counts.push(cluster.count(node, sql).await);
        }
        if counts[0] == counts[1] && counts[2] == counts[3] || Instant::now() > deadline {
            assert_eq!(
                (counts[0], counts[2]),
                (counts[1], counts[3]),
                "replicas differ"
            );
            return vec![counts[0], counts[2]];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
