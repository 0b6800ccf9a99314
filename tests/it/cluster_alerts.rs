//! The alerts path on a real Redis Cluster (3 primaries, 3 replicas on loopback): one Spillway
//! subscribed to every primary, following the topology while the cluster changes under load.
//! Every value written is archived once or counted: the rewriter's log is checked against
//! `alerts` FINAL, the write account closes, and the deletions a slot migration makes are not
//! recorded as deletions.

use std::collections::HashSet;
use std::time::Duration;

use common::observe::metric_value;
use common::rcluster::RedisCluster;
use common::rewrite::{assert_equation, assert_rows_match, check_against, rewrite, settled};
use common::{eventually, free_port, ClickHouseServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// The cluster's URL for Spillway and the producer.
fn cluster_url(c: &RedisCluster) -> String {
    c.url().replacen("redis://", "redis-cluster://", 1)
}

/// Spillway running the alerts pipeline on the cluster.
async fn spillway(c: &RedisCluster, ch: &ClickHouseServer, db: &str) -> Spillway {
    spillway_at(&cluster_url(c), "", ch, db).await
}

/// Spillway running the alerts pipeline at `url`, its pipeline file given `extra` lines.
async fn spillway_at(url: &str, extra: &str, ch: &ClickHouseServer, db: &str) -> Spillway {
    let dir = common::observe::pipelines(&["alerts"]);
    let file = dir.path().join("alerts.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n{extra}\n")).unwrap();
    let toml = format!(
        "pipelines_dir = \"{}\"\npipelines = [\"alerts\"]\n\n[redis.rls]\nurl = \"{url}\"\n\n\
         [clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\n[metrics]\naddr = \"127.0.0.1:{}\"\n\n\
         [batch]\nmax_delay_ms = 200\n",
        dir.path().display(),
        ch.url(),
        free_port()
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    // The pipelines dir is read at start.
    drop(dir);
    sp
}

fn metric(text: &str, series: &str) -> u64 {
    metric_value(text, series).unwrap_or(0.0) as u64
}

/// Keys of run `run` alive on any primary.
fn alive(c: &RedisCluster, run: &str) -> HashSet<String> {
    let mut keys = HashSet::new();
    for p in c.primaries() {
        let found = c.nodes[p].cli(&["--scan", "--pattern", &format!("alert:{run}-*")]);
        keys.extend(found.lines().map(str::to_string));
    }
    keys
}

/// Waits until the subscribed primaries are `n`.
async fn wait_nodes(sp: &Spillway, n: u64) {
    eventually(WAIT, &format!("{n} primaries subscribed"), || async {
        metric(
            &sp.metrics().await,
            "spillway_cluster_nodes{pipeline=\"alerts\"}",
        ) == n
    })
    .await;
}

/// Waits until Spillway has subscribed to a primary that appeared (a promoted replica) and
/// again captures from 3 primaries.
async fn wait_followed(sp: &Spillway, what: &str) {
    eventually(WAIT, what, || async {
        let m = sp.metrics().await;
        metric(
            &m,
            "spillway_cluster_changes_total{pipeline=\"alerts\",kind=\"added\"}",
        ) >= 1
            && metric(&m, "spillway_cluster_nodes{pipeline=\"alerts\"}") == 3
    })
    .await;
}

/// After a primary was lost (killed or cut off): the account closes, `alerts` FINAL holds the
/// archived and rescanned values, every acknowledged last value alive is archived, and what
/// Redis itself lost (acknowledged, never replicated) stays within one primary's replication
/// lag.
async fn assert_primary_loss(
    case: &str,
    sp: &Spillway,
    ch: &ClickHouseServer,
    db: &str,
    cluster: &RedisCluster,
    w: &common::rewrite::Rewrites,
) {
    let text = settled(sp, WAIT).await;
    let outcomes = assert_equation(case, &text);
    assert_rows_match(case, ch, db, &text).await;
    let alive = alive(cluster, &w.run);
    let f = check_against(case, &alive, ch, db, w, true).await;
    println!("figures: {f:?}; outcomes {outcomes:?}");
    assert!(f.sets > 2_000, "the load ran: {f:?}");
    assert!(
        f.lost_by_redis < f.sets / 100,
        "far more lost than one primary's replication lag: {f:?}"
    );
}

/// Keys with a `deleted` row in `alert_events` that the rewriter never deleted.
async fn deletions_nobody_made(
    ch: &ClickHouseServer,
    db: &str,
    w: &common::rewrite::Rewrites,
) -> Vec<String> {
    let deleted = ch
        .query(&format!(
            "SELECT DISTINCT key FROM {db}.alert_events WHERE event = 'deleted' \
             AND key LIKE 'alert:{}-%'",
            w.run
        ))
        .await;
    deleted
        .lines()
        .filter(|k| {
            !w.ops.get(*k).is_some_and(|ops| {
                ops.iter()
                    .any(|(op, _)| matches!(op, common::rewrite::Op::Del))
            })
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_and_a_slot_migration_under_load_lose_nothing() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let cluster = RedisCluster::start(3, 1);
    let ch = ClickHouseServer::start();
    let db = "tcluster";
    let sp = spillway(&cluster, &ch, db).await;
    wait_nodes(&sp, 3).await;
    let url = cluster_url(&cluster);
    let w = rewrite(&url, 2000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (a) A replica promoted by CLUSTER FAILOVER: the old primary is drained, the new one
    // subscribed and rescanned.
    let primaries = cluster.primaries();
    let replica = cluster.replica_of(primaries[0]);
    let t = std::time::Instant::now();
    cluster.failover(replica);
    wait_followed(&sp, "the promoted replica subscribed").await;
    println!("failover followed in {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // (c) 300 slots migrated between two other primaries, keys and all, under load.
    let t = std::time::Instant::now();
    cluster.reshard(primaries[1], primaries[2], 300);
    println!("reshard took {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = w.finish().await;
    println!("rewriter: {}", w.line());

    let text = settled(&sp, WAIT).await;
    let outcomes = assert_equation("cluster", &text);
    assert_rows_match("cluster", &ch, db, &text).await;
    let alive = alive(&cluster, &w.run);
    let f = check_against("cluster", &alive, &ch, db, &w, false).await;
    println!(
        "figures: {f:?}; outcomes {outcomes:?}; migrated deletions {}; topology changes {}",
        metric(&text, "spillway_keys_migrated_total{pipeline=\"alerts\"}"),
        text.lines()
            .filter(|l| l.starts_with("spillway_cluster_changes_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        metric(&text, "spillway_keys_migrated_total{pipeline=\"alerts\"}") > 0,
        "the migration's deletions were told from real ones"
    );
    let strangers = deletions_nobody_made(&ch, db, &w).await;
    assert!(
        strangers.is_empty(),
        "deletions recorded for keys nobody deleted (a migration's): {:?}",
        &strangers[..strangers.len().min(5)]
    );
    assert!(f.sets > 2_000, "the load ran: {f:?}");
    let dead = ch
        .query(&format!("SELECT key, reason, error FROM {db}.dead_letters"))
        .await;
    assert!(dead.is_empty(), "dead letters: {dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_replaced_and_nothing_readable_is_missed() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let mut cluster = RedisCluster::start(3, 1);
    let ch = ClickHouseServer::start();
    let db = "tclusterkill";
    let sp = spillway(&cluster, &ch, db).await;
    wait_nodes(&sp, 3).await;
    let url = cluster_url(&cluster);
    let w = rewrite(&url, 2000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (b) A primary SIGKILLed: its replica takes over after the node timeout (2 s here).
    let victim = cluster.primaries()[1];
    let replica = cluster.replica_of(victim);
    let t = std::time::Instant::now();
    cluster.kill(victim);
    cluster.wait_primary(replica, WAIT);
    println!("replica promoted {:?} after the kill", t.elapsed());
    wait_followed(&sp, "the promoted replica subscribed").await;
    println!("Spillway subscribed to it {:?} after the kill", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(victim);
    cluster.wait_ok(WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w = w.finish().await;
    println!("rewriter: {}", w.line());

    // A value the killed primary acknowledged and had not yet replicated is gone from Redis
    // before anyone could read it: counted, never silently.
    assert_primary_loss("killed primary", &sp, &ch, db, &cluster, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_by_the_network_is_replaced_and_followed() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let Some(cluster) = RedisCluster::start_with_netns(3) else {
        return;
    };
    let ch = ClickHouseServer::start();
    let db = "tclustercut";
    let sp = spillway(&cluster, &ch, db).await;
    wait_nodes(&sp, 3).await;
    let url = cluster_url(&cluster);
    let w = rewrite(&url, 2000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The namespaced primary's link goes down: no FIN, no RST; its connections (Spillway's
    // subscriber and readers among them) are left half-open.
    let inside = cluster.netns_node();
    let replica = cluster.replica_of(inside);
    let ns = cluster.netns.as_ref().expect("namespace");
    let t = std::time::Instant::now();
    ns.link_down();
    wait_followed(&sp, "the cut-off primary replaced and followed").await;
    println!(
        "Spillway followed the new primary {:?} after the cut",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Back on the network, the old primary learns it was replaced and follows its replica.
    ns.link_up();
    cluster.wait_primary(replica, WAIT);
    let w = w.finish().await;
    println!("rewriter: {}", w.line());
    cluster.wait_ok(WAIT);

    assert_primary_loss("cut-off primary", &sp, &ch, db, &cluster, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sidecar_per_node_archives_what_one_per_cluster_does() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let cluster = RedisCluster::start(3, 1);
    let ch = ClickHouseServer::start();
    let db = "tsidecars";
    // One Spillway beside every node, replicas included, each capturing its own node while
    // that node is a primary.
    let mut sidecars = Vec::new();
    for node in &cluster.nodes {
        let url = node.url().replacen("redis://", "redis-cluster://", 1);
        sidecars.push(spillway_at(&url, "nodes = \"local\"", &ch, db).await);
    }
    let subscribed = || async {
        let mut total = 0;
        for sp in &sidecars {
            total += metric(
                &sp.metrics().await,
                "spillway_cluster_nodes{pipeline=\"alerts\"}",
            );
        }
        total
    };
    assert_eq!(subscribed().await, 3, "one sidecar per primary captures");
    let w = rewrite(&cluster_url(&cluster), 1500, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A failover moves the capture to the promoted replica's sidecar.
    let replica = cluster.replica_of(cluster.primaries()[0]);
    cluster.failover(replica);
    eventually(WAIT, "the promoted replica's sidecar captures", || async {
        metric(
            &sidecars[replica].metrics().await,
            "spillway_cluster_nodes{pipeline=\"alerts\"}",
        ) == 1
            && subscribed().await == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = w.finish().await;
    println!("rewriter: {}", w.line());
    for (i, sp) in sidecars.iter().enumerate() {
        let text = settled(sp, WAIT).await;
        assert_equation(&format!("sidecar {i}"), &text);
    }
    // The archive is exactly what one Spillway for the whole cluster keeps (checked against the
    // rewriter's log: every acknowledged last value once, nothing else).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alive = alive(&cluster, &w.run);
    let f = check_against("sidecars", &alive, &ch, db, &w, false).await;
    println!("figures: {f:?}");
    assert!(f.sets > 2_000, "the load ran: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spillways_on_one_cluster_one_killed_the_other_goes_on() {
    let _one_at_a_time = common::rcluster::exclusive().await;
    let cluster = RedisCluster::start(3, 1);
    let ch = ClickHouseServer::start();
    let db = "ttwo";
    let mut a = spillway(&cluster, &ch, db).await;
    let b = spillway(&cluster, &ch, db).await;
    wait_nodes(&b, 3).await;
    let w = rewrite(&cluster_url(&cluster), 2000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = w.finish().await;
    println!("rewriter: {}", w.line());
    let text = settled(&b, WAIT).await;
    // Its own account closes; the rows are checked against the rewriter's log (the two read
    // at different moments, so each archived values the other saw overwritten).
    assert_equation("the survivor", &text);
    let alive = alive(&cluster, &w.run);
    // Both captured every value while both ran: one row each under FINAL.
    let f = check_against("two instances", &alive, &ch, db, &w, false).await;
    println!("figures: {f:?}");
    assert!(f.sets > 2_000, "the load ran: {f:?}");
}
