//! A real network fault under the subscriber: Redis runs in a network namespace (a test host
//! joined by a veth pair), Spillway subscribes to it through the link, and the link is taken
//! down. Nothing tells either side (no FIN, no RST): the subscriber's connection is half-open,
//! and only its PING deadline can notice. Needs root (`ip netns`); without it the test fails
//! unless `SPILLWAY_SKIP_NETNS=1`.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::faults::metric;
use common::netns::{netns_or_skip, NetNs};
use common::{config_toml, eventually, free_port, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);
/// `keyspace.subscriber_ping_secs` and `keyspace.subscriber_timeout_secs` of this test.
const PING: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on top of ping + timeout for noticing: the metrics scrape, a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// Alerts written before, during and after the fault, each.
const N: usize = 25;

/// `SET key value EX 3600` for every key, by redis-cli run inside the namespace against the
/// server's loopback address there (the link may be down).
fn set_inside(ns: &NetNs, redis: &RedisServer, keys: &[String]) {
    let port = redis.port.to_string();
    let mut cli = ns
        .command("redis-cli", &["-h", "127.0.0.1", "-p", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli in the namespace");
    let mut stdin = cli.stdin.take().expect("stdin");
    for key in keys {
        writeln!(stdin, "SET {key} value-of-{key} EX 3600").expect("write to redis-cli");
    }
    drop(stdin);
    let out = cli.wait_with_output().expect("redis-cli output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().filter(|l| *l == "OK").count() == keys.len(),
        "redis-cli in the namespace: {} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keys(phase: &str) -> Vec<String> {
    (0..N).map(|i| format!("alert:nf-{phase}-{i}")).collect()
}

/// The subscriber reconnections of the alerts pipeline for `reason`.
async fn reconnects(sp: &Spillway, reason: &str) -> u64 {
    let text = sp.metrics().await;
    let labels = [("pipeline", "alerts"), ("reason", reason)];
    metric(&text, "spillway_subscriber_reconnects_total", &labels)
}

/// The archived alert keys of this test (under FINAL).
async fn archived(ch: &ClickHouseServer, db: &str) -> BTreeSet<String> {
    let sql = format!("SELECT key FROM {db}.alerts FINAL WHERE key LIKE 'alert:nf-%'");
    ch.query(&sql).await.lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_subscriber_is_noticed_and_nothing_is_lost() {
    let started = Instant::now();
    let Some(ns) = netns_or_skip("half_open_subscriber_is_noticed_and_nothing_is_lost") else {
        return;
    };
    let redis = RedisServer::start_at(&ns.prefix(), &ns.addr.to_string(), &[]);
    let ch = ClickHouseServer::start();
    let db = "tnetfault";
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\n\n[keyspace]\nsubscriber_ping_secs = {}\n\
         subscriber_timeout_secs = {}\n",
        config_toml(&redis, &ch, db, free_port()),
        PING.as_secs(),
        TIMEOUT.as_secs()
    );
    assert!(toml.contains(&format!("redis://{}:", ns.addr)), "{toml}");
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;

    // Before the fault: archived by event, through the link.
    let before = keys("before");
    set_inside(&ns, &redis, &before);
    eventually(
        WAIT,
        "the alerts written before the fault archived",
        || async { archived(&ch, db).await.len() == N },
    )
    .await;
    // Idle for a few PINGs: they are answered, nothing is given up.
    tokio::time::sleep(PING * 3).await;
    assert_eq!(reconnects(&sp, "ping_timeout").await, 0, "{}", sp.log());
    assert_eq!(reconnects(&sp, "connection_lost").await, 0, "{}", sp.log());

    // The fault: the link goes down, alerts keep being written inside.
    ns.link_down();
    let down = Instant::now();
    let during = keys("during");
    set_inside(&ns, &redis, &during);
    let noticed = loop {
        if reconnects(&sp, "ping_timeout").await >= 1 {
            break down.elapsed();
        }
        assert!(
            down.elapsed() < PING + TIMEOUT + SLACK,
            "the dead connection was not noticed within {:?}; log:\n{}",
            PING + TIMEOUT + SLACK,
            sp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Half-open: no FIN or RST reached Spillway (that would be `connection_lost`, at once); it
    // is the deadline that ended the connection, a timeout after a PING.
    assert_eq!(reconnects(&sp, "connection_lost").await, 0, "{}", sp.log());
    assert!(
        noticed >= TIMEOUT - Duration::from_millis(500),
        "{noticed:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ns.link_up();
    let up = Instant::now();

    // After the fault: every key of the three phases is archived.
    let after = keys("after");
    set_inside(&ns, &redis, &after);
    let all: BTreeSet<String> = [&before, &during, &after]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    eventually(
        WAIT,
        "every alert of before, during and after archived",
        || async { archived(&ch, db).await.len() == all.len() },
    )
    .await;
    let recovered = up.elapsed();
    assert_eq!(archived(&ch, db).await, all);
    // The alerts written during the fault were never notified to a live subscriber: only the
    // rescan that followed the reconnection can have captured them.
    let during_by = |by: &str| {
        format!(
            "SELECT uniqExact(key) FROM {db}.alerts WHERE key LIKE 'alert:nf-during-%' \
             AND captured_by = '{by}'"
        )
    };
    assert_eq!(ch.count(&during_by("event")).await, 0);
    assert_eq!(ch.count(&during_by("scan")).await, N as u64);
    assert_eq!(reconnects(&sp, "ping_timeout").await, 1, "{}", sp.log());
    assert_eq!(reconnects(&sp, "connection_lost").await, 0, "{}", sp.log());
    println!(
        "NETFAULT noticed_after={noticed:?} (ping {PING:?} + timeout {TIMEOUT:?}) \
         archived_after_link_up={recovered:?} keys={} test={:?}",
        all.len(),
        started.elapsed()
    );
}
