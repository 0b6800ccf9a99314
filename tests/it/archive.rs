//! The archive is append-only in meaning: the first capture of a value is what `alerts` keeps,
//! whatever rescans, retries and restarts insert later, and every write notification is
//! accounted for, rewrites within microseconds included.

use std::time::Duration;

use common::observe::pipelines;
use common::rewrite::assert_equation;
use common::{config_toml, eventually, free_port, load, ClickHouseServer, RedisServer, Spillway};
use fred::prelude::*;

const WAIT: Duration = Duration::from_secs(60);

/// A pipelines dir whose alerts pipeline rescans every second.
fn rescanning_pipelines() -> tempfile::TempDir {
    let dir = pipelines(&["alerts"]);
    let file = dir.path().join("alerts.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("rescan_interval_secs = 300"), "{text}");
    std::fs::write(
        &file,
        text.replace("rescan_interval_secs = 300", "rescan_interval_secs = 1"),
    )
    .unwrap();
    dir
}

fn metric(text: &str, series: &str) -> u64 {
    common::observe::metric_value(text, series).unwrap_or(0.0) as u64
}

/// Every column of every row of `alerts` FINAL, in key order.
async fn snapshot(ch: &ClickHouseServer, db: &str) -> String {
    ch.query(&format!(
        "SELECT * FROM {db}.alerts FINAL ORDER BY key, content_hash"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_and_restarts_never_rewrite_archived_values() {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let dir = rescanning_pipelines();
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}\n[batch]\nmax_delay_ms = 200\n",
        dir.path().display(),
        config_toml(&redis, &ch, "tfirst", free_port())
    );
    let mut sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    load::set_all(&redis.url(), load::alerts("f", 500), 3600, 100, 1).await;
    // The platform's own plain-text alert (no ts_ms: its time is the capture's) and a JSON one.
    redis.cli(&["SET", "alert:x1", "Trade execution failed", "EX", "3600"]);
    redis.cli(&[
        "SET",
        "alert:j1",
        r#"{"severity":"critical","message":"json"}"#,
        "EX",
        "3600",
    ]);
    let n = 502;
    eventually(WAIT, "502 alerts archived", || async {
        ch.count("SELECT count() FROM tfirst.alerts FINAL").await == n
    })
    .await;
    let by = ch
        .query("SELECT captured_by FROM tfirst.alerts FINAL WHERE key = 'alert:x1'")
        .await;
    assert_eq!(
        by.trim(),
        "event",
        "the text alert was captured by its notification"
    );
    let before = snapshot(&ch, "tfirst").await;
    let raw_before = ch.count("SELECT count() FROM tfirst.alerts").await;
    let scanned = |m: &str| metric(m, "spillway_rescan_keys_total{pipeline=\"alerts\"}");
    let start = scanned(&sp.metrics().await);

    // Three rescans of every key: nothing inserted again, nothing rewritten.
    eventually(WAIT, "three rescans", || async {
        scanned(&sp.metrics().await) >= start + 3 * n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = sp.metrics().await;
    let known = metric(&m, "spillway_rescan_known_total{pipeline=\"alerts\"}");
    assert_eq!(
        known,
        scanned(&m) - start,
        "every key rescanned after the capture is known archived"
    );
    assert_eq!(
        ch.count("SELECT count() FROM tfirst.alerts").await,
        raw_before
    );
    assert_eq!(
        snapshot(&ch, "tfirst").await,
        before,
        "rows rewritten by rescans"
    );

    // A restart forgets what was archived: its rescan inserts every value again, and the first
    // capture still wins under FINAL.
    assert!(sp.terminate().success(), "log:\n{}", sp.log());
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    eventually(
        WAIT,
        "the start-up rescan inserted every key again",
        || async { ch.count("SELECT count() FROM tfirst.alerts").await >= raw_before + n },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw_after = ch.count("SELECT count() FROM tfirst.alerts").await;
    assert_eq!(
        raw_after,
        raw_before + n,
        "only the first rescan after the restart inserts (the next ones know the values)"
    );
    assert_eq!(
        snapshot(&ch, "tfirst").await,
        before,
        "rows rewritten by a restart"
    );
    assert_eq!(
        ch.count("SELECT count() FROM tfirst.alerts WHERE captured_by = 'scan'")
            .await,
        n,
        "the restart's copies are there, not kept"
    );
    drop(sp);
}

/// Sends inline commands ending with EXEC on one connection and waits for EXEC's reply.
async fn multi(redis: &RedisServer, commands: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    s.write_all(commands.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // +OK, three +QUEUED, then EXEC's array of three +OK.
    while !String::from_utf8_lossy(&got).contains("*3\r\n+OK\r\n+OK\r\n+OK\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "Redis closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_within_microseconds_are_counted_not_lost() {
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let toml = format!(
        "{}\n[batch]\nmax_delay_ms = 200\n",
        config_toml(&redis, &ch, "trewrite", free_port())
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    let c = load::client(&redis.url()).await;
    let ex = || Some(Expiration::EX(3600));
    // Three SETs of one key in one pipeline, and three in a MULTI.
    let p = c.pipeline();
    for v in ["p1", "p2", "p3"] {
        let () = p.set("alert:piped", v, ex(), None, false).await.unwrap();
    }
    let _: Vec<Value> = p.all().await.unwrap();
    multi(
        &redis,
        "MULTI\r\nSET alert:multi m1 EX 3600\r\nSET alert:multi m2 EX 3600\r\n\
         SET alert:multi m3 EX 3600\r\nEXEC\r\n",
    )
    .await;
    // The same content written twice, the second time long after the first was archived.
    let () = c
        .set("alert:same", "same", ex(), None, false)
        .await
        .unwrap();
    eventually(WAIT, "alert:same archived", || async {
        ch.count("SELECT count() FROM trewrite.alerts FINAL WHERE key = 'alert:same'")
            .await
            == 1
    })
    .await;
    let () = c
        .set("alert:same", "same", ex(), None, false)
        .await
        .unwrap();
    // Written and deleted at once: gone before the read, or archived if read in between.
    let p = c.pipeline();
    let () = p
        .set("alert:brief", "brief", ex(), None, false)
        .await
        .unwrap();
    let () = p.del("alert:brief").await.unwrap();
    let _: Vec<Value> = p.all().await.unwrap();

    let rows = |key: &'static str| {
        let ch = &ch;
        async move {
            ch.query(&format!(
                "SELECT message FROM trewrite.alerts FINAL WHERE key = '{key}' ORDER BY message"
            ))
            .await
        }
    };
    eventually(WAIT, "the last values archived", || async {
        rows("alert:piped").await.contains("p3") && rows("alert:multi").await.trim() == "m3"
    })
    .await;
    eventually(WAIT, "every notification resolved", || async {
        let m = sp.metrics().await;
        let (received, resolved, pending, _) = common::rewrite::account(&m);
        received == 9 && resolved == 9 && pending == 0
    })
    .await;
    let m = sp.metrics().await;
    let outcomes = assert_equation("rewrites", &m);
    let n = |o: &str| outcomes.iter().find(|(name, _)| *name == o).unwrap().1;
    assert_eq!(rows("alert:same").await.trim(), "same");
    let archived = ch.count("SELECT count() FROM trewrite.alerts FINAL").await;
    // One row per distinct value captured; the overwritten and the identical are counted.
    assert_eq!(n("archived"), archived, "{outcomes:?}");
    assert_eq!(
        n("dead_letter") + n("lost_buffer_overrun") + n("lost_shutdown"),
        0
    );
    // The MULTI's first two values were never visible (2), the identical rewrite was (1); the
    // pipeline's first two are overwritten unless a read fell between them.
    assert!(n("already_archived") >= 1, "{outcomes:?}");
    let counted = n("rewritten_before_read") + n("already_archived");
    assert!((3..=5).contains(&counted), "{outcomes:?}");
    assert_eq!(
        counted + n("archived") + n("gone_before_read"),
        9,
        "{outcomes:?}"
    );
    drop(c);
}

/// The fields of the last "write notifications account" line of a spillway log.
fn logged_account(log: &str) -> Vec<(String, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("write notifications account"))
        .unwrap_or_else(|| panic!("no account in the log:\n{log}"));
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').parse().ok()?))
        })
        .collect()
}

fn field(account: &[(String, u64)], name: &str) -> u64 {
    account
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {account:?}"))
        .1
}

/// Checks a logged account closes: received = the outcomes, nothing pending.
fn assert_logged_equation(case: &str, account: &[(String, u64)]) {
    println!("ACCOUNT {case}: {account:?}");
    let outcomes: u64 = common::rewrite::OUTCOMES
        .iter()
        .map(|o| field(account, o))
        .sum();
    assert_eq!(field(account, "pending"), 0, "{case}: {account:?}");
    assert_eq!(field(account, "received"), outcomes, "{case}: {account:?}");
}

/// Stops ClickHouse, writes `n` alerts (the channel and the batches of 1 000 rows fill, the readers wait, the
/// notifications queue), waits until most are queued, then sends SIGTERM.
async fn queue_then_signal(
    db: &str,
    shutdown_secs: u64,
    n: u64,
) -> (RedisServer, ClickHouseServer, Spillway, String) {
    let redis = RedisServer::start();
    let mut ch = ClickHouseServer::start();
    let toml = format!(
        "shutdown_timeout_secs = {shutdown_secs}\n{}\n[batch]\nmax_delay_ms = 200\nchannel_capacity = 1000\nmax_rows = 1000\n",
        config_toml(&redis, &ch, db, free_port())
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    tokio::task::block_in_place(|| ch.stop());
    load::set_all(&redis.url(), load::alerts("q", n), 3600, 500, 1).await;
    // Every notification received (the subscriber keeps reading while the readers wait), most
    // of them still queued: the signal then finds them all in Spillway.
    eventually(WAIT, "notifications received and queued", || async {
        let m = sp.metrics().await;
        metric(&m, "spillway_writes_pending{pipeline=\"alerts\"}") > n / 2
            && metric(
                &m,
                "spillway_events_received_total{pipeline=\"alerts\",event=\"set\"}",
            ) == n
    })
    .await;
    common::faults::signal(sp.pid().unwrap(), "TERM");
    (redis, ch, sp, toml)
}

async fn exit_of(sp: &Spillway, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = sp.exit_status() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit; log:\n{}",
            sp.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM with thousands of notifications queued behind a ClickHouse outage that ends during
/// the drain: the queue is read back and committed before the exit, no rescan needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reads_back_every_queued_notification() {
    let n = 20_000;
    let (_redis, mut ch, sp, _) = queue_then_signal("tdrain", 40, n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| ch.start_again());
    let status = exit_of(&sp, Duration::from_secs(45)).await;
    assert!(status.success(), "{status}; log:\n{}", sp.log());
    let account = logged_account(&sp.log());
    assert_logged_equation("drained", &account);
    assert_eq!(field(&account, "received"), n);
    assert_eq!(field(&account, "lost_shutdown"), 0);
    assert_eq!(
        ch.count("SELECT count() FROM tdrain.alerts FINAL").await,
        n,
        "every value whose notification was queued at the signal is archived"
    );
}

/// SIGTERM with notifications queued and ClickHouse down for good: after half the shutdown
/// timeout the readers give up; what is still queued is counted lost (`shutdown`), not dropped
/// silently, and the next start's rescan archives every value still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_not_drained_in_time_are_counted_then_recovered() {
    let n = 5_000;
    let (_redis, mut ch, sp, toml) = queue_then_signal("tabandon", 4, n).await;
    let status = exit_of(&sp, Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "the writer could not commit: not a clean exit"
    );
    let account = logged_account(&sp.log());
    assert_logged_equation("abandoned", &account);
    assert!(field(&account, "lost_shutdown") > 0, "{account:?}");
    assert!(
        sp.log().contains("the drain's time ran out"),
        "{}",
        sp.log()
    );
    drop(sp);
    tokio::task::block_in_place(|| ch.start_again());
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    eventually(WAIT, "the rescan archived every value", || async {
        ch.count("SELECT count() FROM tabandon.alerts FINAL").await == n
    })
    .await;
}

/// A rescan that fails (here: its user lost `+scan`) leaves its gap open: it is tried again,
/// with a growing pause, until it succeeds, and the value written unnotified during the gap is
/// archived. (It was retried only at the next periodic rescan, 300 s later by default.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rescan_is_tried_again_until_it_succeeds() {
    let (redis, ch) = (RedisServer::start(), ClickHouseServer::start());
    let user = [
        "ACL",
        "SETUSER",
        "spill",
        "on",
        ">spillPw7",
        "~*",
        "&*",
        "+@all",
    ];
    assert_eq!(redis.cli(&user), "OK");
    let db = "tretry";
    let toml = config_toml(&redis, &ch, db, free_port()).replace(
        &redis.url(),
        &format!("redis://spill:spillPw7@127.0.0.1:{}", redis.port),
    );
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "spill", "-scan"]), "OK");
    // A value no notification announces, then a gap: the subscriber is cut off and reconnects.
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "notify-keyspace-events", ""]),
        "OK"
    );
    assert_eq!(
        redis.cli(&["SET", "alert:unnotified", "in the gap", "EX", "600"]),
        "OK"
    );
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "notify-keyspace-events", "Ex$eg"]),
        "OK"
    );
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually(WAIT, "the rescan refused", || async {
        sp.log().contains("rescan failed; retrying")
    })
    .await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "spill", "+scan"]), "OK");
    let sql = format!("SELECT count() FROM {db}.alerts FINAL WHERE key = 'alert:unnotified'");
    eventually(
        Duration::from_secs(30),
        "the gap's value archived",
        || async { ch.count(&sql).await == 1 },
    )
    .await;
}
