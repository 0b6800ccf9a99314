//! The replication source (`source = "replication"`) end to end: the real spillway binary is a
//! replica of a real redis-server and archives every value of the replication stream into a
//! real clickhouse-server: values rewritten within microseconds (a pipeline, a MULTI) each
//! archived, a restart resumed by partial resync from the offset stored with the rows, a restart
//! beyond the primary's backlog resynchronised in full with the gap counted, and a user with
//! only the documented permissions.

use std::time::Duration;

use common::{eventually, free_port, load, ClickHouseServer, RedisServer, Spillway};

const WAIT: Duration = Duration::from_secs(60);

/// A pipelines directory holding the shipped alerts pipeline, switched to the replication
/// source by its `source` line alone.
pub(crate) fn pipelines() -> tempfile::TempDir {
    let dir = common::observe::pipelines(&["alerts"]);
    let file = dir.path().join("alerts.toml");
    let def = std::fs::read_to_string(&file).unwrap();
    assert!(def.contains("source = \"keyspace\""));
    std::fs::write(
        &file,
        def.replace("source = \"keyspace\"", "source = \"replication\""),
    )
    .unwrap();
    dir
}

/// The config of a spillway with the replication alerts pipeline on `url`.
fn config(url: &str, ch: &ClickHouseServer, db: &str, dir: &tempfile::TempDir) -> String {
    format!(
        "pipelines_dir = \"{}\"\npipelines = [\"alerts\"]\n\n[redis.rls]\nurl = \"{url}\"\n\n\
         [clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\n[metrics]\naddr = \"127.0.0.1:{}\"\n\n\
         [batch]\nmax_delay_ms = 200\n",
        dir.path().display(),
        ch.url(),
        free_port()
    )
}

async fn start(url: &str, ch: &ClickHouseServer, db: &str, dir: &tempfile::TempDir) -> Spillway {
    let sp = Spillway::start(&config(url, ch, db, dir));
    sp.wait_ready(WAIT).await;
    sp
}

async fn wait_count(ch: &ClickHouseServer, sql: &str, want: u64) {
    eventually(WAIT, &format!("{sql} = {want}"), || async {
        ch.count(sql).await >= want
    })
    .await;
    assert_eq!(ch.count(sql).await, want, "{sql}");
}

/// Writes `commands` (inline, CRLF-separated) in one write on a connection of its own, and
/// reads until `replies` replies (lines; an EXEC's array counts as one line per element plus
/// its header) have come.
fn raw(redis: &RedisServer, commands: &str, replies: usize) {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.write_all(commands.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    for _ in 0..replies {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(!line.starts_with('-'), "{commands:?}: {line}");
    }
}

/// The value of the series of `name` whose labels contain every one of `labels`, 0 if none.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rewrite_is_archived_even_within_microseconds() {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let dir = pipelines();
    // Alive before Spillway starts: captured from the snapshot of the full resync.
    redis.cli(&[
        "SET",
        "alert:before",
        "first seen in the snapshot",
        "EX",
        "3600",
    ]);
    redis.cli(&["SET", "unrelated", "not archived"]);
    let mut sp = start(&redis.url(), &ch, "trepl", &dir).await;
    let db = "trepl";
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 1).await;

    // One key set three times in one pipelined round trip, another three times in a MULTI:
    // the keyspace source can read back only the last of each.
    raw(
        &redis,
        "SET alert:piped p1\r\nSET alert:piped p2\r\nSET alert:piped p3\r\n\
         MULTI\r\nSET alert:multi m1\r\nSET alert:multi m2\r\nSET alert:multi m3\r\nEXEC\r\n",
        11,
    );
    let c = load::client(&redis.url()).await;
    // Every other form of a write that carries its value.
    redis.cli(&["SETEX", "alert:setex", "3600", "by setex"]);
    redis.cli(&["PSETEX", "alert:psetex", "3600000", "by psetex"]);
    redis.cli(&[
        "MSET",
        "alert:mset1",
        "by mset 1",
        "other",
        "x",
        "alert:mset2",
        "by mset 2",
    ]);
    redis.cli(&["GETSET", "alert:setex", "by getset"]);
    redis.cli(&["SET", "alert:setex", "by set get", "GET"]);
    redis.cli(&["SET", "alert:src", "restored value"]);
    redis.cli(&["SET", "tmp:src", "restored value 2"]);
    // RESTORE through a client (the payload is binary).
    {
        use fred::prelude::*;
        let payload: Value = c.dump("tmp:src").await.unwrap();
        let () = c
            .restore("alert:restored", 0, payload, false, false, None, None)
            .await
            .unwrap();
    }
    // A change that does not carry its value: counted, not archived.
    redis.cli(&["APPEND", "alert:src", " and more"]);
    // Lifecycle: a deletion and an expiry, named by their notifications.
    redis.cli(&["SET", "alert:gone", "to delete"]);
    redis.cli(&["DEL", "alert:gone"]);
    redis.cli(&["SET", "alert:brief", "to expire", "PX", "100"]);

    let values = [
        ("alert:before", 1),
        ("alert:piped", 3),
        ("alert:multi", 3),
        ("alert:setex", 3),
        ("alert:psetex", 1),
        ("alert:mset1", 1),
        ("alert:mset2", 1),
        ("alert:src", 1),
        ("alert:restored", 1),
        ("alert:gone", 1),
        ("alert:brief", 1),
    ];
    let total: u64 = values.iter().map(|(_, n)| n).sum();
    wait_count(
        &ch,
        &format!("SELECT count() FROM {db}.alerts FINAL"),
        total,
    )
    .await;
    for (key, n) in values {
        assert_eq!(
            ch.count(&format!(
                "SELECT count() FROM {db}.alerts FINAL WHERE key = '{key}'"
            ))
            .await,
            n,
            "{key}"
        );
    }
    assert_eq!(
        ch.query(&format!(
            "SELECT groupArray(message) FROM (SELECT message FROM {db}.alerts FINAL \
             WHERE key = 'alert:multi' ORDER BY message) FORMAT TabSeparated"
        ))
        .await
        .trim(),
        "['m1','m2','m3']"
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts FINAL WHERE key = 'alert:before' AND \
             captured_by = 'snapshot' AND ttl_ms > 3500000"
        ))
        .await,
        1
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts FINAL WHERE key != 'alert:before' AND \
             captured_by != 'replication'"
        ))
        .await,
        0
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts FINAL WHERE key = 'alert:psetex' AND \
             ttl_ms > 3500000 AND ttl_ms <= 3600000"
        ))
        .await,
        1,
        "PSETEX's TTL"
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts WHERE key = 'unrelated'"
        ))
        .await,
        0
    );
    wait_count(
        &ch,
        &format!("SELECT count() FROM {db}.alert_events WHERE event IN ('deleted', 'expired')"),
        2,
    )
    .await;
    for (key, event) in [("alert:gone", "deleted"), ("alert:brief", "expired")] {
        assert_eq!(
            ch.count(&format!(
                "SELECT count() FROM {db}.alert_events WHERE key = '{key}' AND event = '{event}'"
            ))
            .await,
            1,
            "{key} {event}"
        );
    }
    // The account: every write of the stream is archived, already archived, a dead letter or
    // unarchivable; nothing rewritten before a read (there is no read).
    let text = sp.metrics().await;
    let writes = |outcome: &str| {
        metric(
            &text,
            "spillway_writes_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(writes("archived"), (total - 1) as f64, "{text}");
    assert_eq!(writes("unarchivable"), 1.0);
    assert_eq!(writes("rewritten_before_read"), 0.0);
    // The loss equation: the writes of the stream = their outcomes (nothing pending at rest).
    assert_eq!(
        metric(&text, "spillway_events_received_total", &["event=\"set\""]),
        metric(&text, "spillway_writes_total", &[]),
        "{text}"
    );
    assert_eq!(metric(&text, "spillway_writes_pending", &[]), 0.0);
    assert_eq!(
        metric(
            &text,
            "spillway_replication_syncs_total",
            &["kind=\"full\""]
        ),
        1.0
    );
    assert!(
        sp.log().contains("framing=\"end mark (diskless)\""),
        "{}",
        sp.log()
    );
    // Safe beside production: no listening port, a clear name.
    let info = redis.cli(&["INFO", "replication"]);
    assert!(
        info.contains("ip=spillway,port=0,state=online"),
        "INFO replication: {info}"
    );
    assert!(sp.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_resumes_from_the_stored_offset() {
    let redis = RedisServer::start_with(&[
        "--repl-backlog-size",
        "64mb",
        "--repl-diskless-sync-delay",
        "0",
    ]);
    let ch = ClickHouseServer::start();
    let dir = pipelines();
    let db = "treplkill";
    let mut sp = start(&redis.url(), &ch, db, &dir).await;
    let n = 60_000u64;
    let items = load::alerts("k", n);
    let writer = {
        let url = redis.url();
        tokio::spawn(async move { load::set_paced(&url, &items, 3600, 20_000).await })
    };
    wait_count_at_least(&ch, &format!("SELECT count() FROM {db}.alerts"), 10_000).await;
    sp.kill();
    let before = ch.count(&format!("SELECT count() FROM {db}.alerts")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sp = start(&redis.url(), &ch, db, &dir).await;
    writer.await.unwrap();
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), n).await;
    let text = sp.metrics().await;
    assert_eq!(
        metric(
            &text,
            "spillway_replication_syncs_total",
            &["kind=\"partial\""]
        ),
        1.0,
        "a partial resync after the restart: {}",
        sp.log()
    );
    assert_eq!(
        metric(
            &text,
            "spillway_replication_syncs_total",
            &["kind=\"full\""]
        ),
        0.0
    );
    // Nothing lost (every value under FINAL, above), nothing duplicated under FINAL, and only
    // the stretch after the last stored offset was read twice.
    assert_eq!(
        ch.count(&format!(
            "SELECT uniqExact(key, content_hash) FROM {db}.alerts"
        ))
        .await,
        n
    );
    let raw = ch.count(&format!("SELECT count() FROM {db}.alerts")).await;
    println!("killed at {before} rows; {raw} raw rows for {n} values after the restart");
    assert!(
        raw - n < 20_000,
        "{raw} raw rows: the restart repeated too much"
    );
}

async fn wait_count_at_least(ch: &ClickHouseServer, sql: &str, want: u64) {
    eventually(WAIT, &format!("{sql} >= {want}"), || async {
        ch.count(sql).await >= want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_backlog_a_full_resync_counts_the_gap() {
    // The smallest backlog Redis allows; snapshots written to disk and sent with their length
    // (`$<len>`), where the first test's are diskless (`$EOF:<mark>`, Redis 7's default).
    let redis =
        RedisServer::start_with(&["--repl-backlog-size", "16384", "--repl-diskless-sync", "no"]);
    let ch = ClickHouseServer::start();
    let dir = pipelines();
    let db = "treplgap";
    let mut sp = start(&redis.url(), &ch, db, &dir).await;
    load::set_all(&redis.url(), load::alerts("a", 100), 3600, 50, 1).await;
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 100).await;
    assert!(sp.terminate().success());
    // While it is down: far more than the backlog holds; some of it deleted again (lost with
    // the gap), the rest alive (recaptured from the snapshot).
    load::set_all(&redis.url(), load::alerts("b", 2_000), 3600, 100, 1).await;
    for i in 0..10 {
        redis.cli(&["DEL", &format!("alert:b-{i}")]);
    }
    let sp = start(&redis.url(), &ch, db, &dir).await;
    wait_count(
        &ch,
        &format!("SELECT count() FROM {db}.alerts FINAL"),
        100 + 1_990,
    )
    .await;
    let text = sp.metrics().await;
    assert_one_gap(&text, 1.0, &text);
    assert!(metric(&text, "spillway_replication_gap_bytes_total", &[]) > 16384.0);
    assert_eq!(
        ch.count(&format!(
            "SELECT count() FROM {db}.alerts FINAL WHERE key LIKE 'alert:b-%' AND \
             captured_by = 'snapshot'"
        ))
        .await,
        1_990
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_replica_spares_the_primary() {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &port,
        "--repl-diskless-sync-delay",
        "0",
    ]);
    eventually(WAIT, "the replica linked to its primary", || async {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    })
    .await;
    let ch = ClickHouseServer::start();
    let dir = pipelines();
    let db = "treplchain";
    let sp = start(&replica.url(), &ch, db, &dir).await;
    raw(
        &primary,
        "SET alert:c1 one\r\nSET alert:c1 two\r\nSET alert:c2 three\r\nDEL alert:c2\r\n",
        4,
    );
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 3).await;
    wait_count(
        &ch,
        &format!("SELECT count() FROM {db}.alert_events WHERE event = 'deleted'"),
        1,
    )
    .await;
    // The primary serves its replica only; the replica serves Spillway, with no port.
    let info = primary.cli(&["INFO", "replication"]);
    assert!(info.contains("connected_slaves:1"), "{info}");
    assert!(!info.contains("ip=spillway"), "{info}");
    let info = replica.cli(&["INFO", "replication"]);
    assert!(info.contains("ip=spillway,port=0"), "{info}");
    let text = sp.metrics().await;
    assert_eq!(
        metric(&text, "spillway_writes_total", &["outcome=\"archived\""]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_a_running_spillway_is_a_counted_gap() {
    let mut redis = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let ch = ClickHouseServer::start();
    let dir = pipelines();
    let db = "treplrestart";
    let sp = start(&redis.url(), &ch, db, &dir).await;
    load::set_all(&redis.url(), load::alerts("x", 100), 3600, 50, 1).await;
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 100).await;
    // Without persistence Redis comes back empty, under a new replication id: the link
    // resumes with a full resync, and the stream it had not sent is a gap.
    redis.restart();
    load::set_all(&redis.url(), load::alerts("y", 100), 3600, 50, 1).await;
    wait_count(&ch, &format!("SELECT count() FROM {db}.alerts FINAL"), 200).await;
    let text = sp.metrics().await;
    assert_one_gap(&text, 2.0, &sp.log());
}

/// The metrics `text` count one gap (`backlog_exceeded`) and `full` full resyncs; `context` is
/// printed when they do not.
fn assert_one_gap(text: &str, full: f64, context: &str) {
    assert_eq!(
        metric(
            text,
            "spillway_events_lost_total",
            &["reason=\"backlog_exceeded\""]
        ),
        1.0,
        "{context}"
    );
    assert_eq!(
        metric(text, "spillway_replication_syncs_total", &["kind=\"full\""]),
        full,
        "{context}"
    );
}
