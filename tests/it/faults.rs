//! Nothing lost under faults: real redis-server, clickhouse-server and spillway, faults
//! made by the tests themselves, each under a steady alert load from a producer task. Each case
//! prints one `FAULT ...` line of figures and then checks, strictly:
//! (a) every alert key alive in Redis at the end is in `alerts` FINAL;
//! (b) no duplicate under FINAL (count() FINAL == uniqExact(key, content_hash), one row per key);
//! (c) sent (acknowledged SETs) == archived + losses explained by an `alert_events` row.
//!
//! Beside the producer, a rewriter writes keys again (some three times within microseconds,
//! some with the same content) and deletes some: each of its values must be archived or
//! replaced by a later operation on its key ([`rewrite::check`]), and the write account of
//! `/metrics` must close exactly: every write notification received has one outcome
//! ([`rewrite::assert_equation`]).
//!
//! The cases run one at a time (they share two cores with three servers each).

use std::time::{Duration, Instant};

use common::faults::{self, check, produce, Account, Produced};
use common::rewrite::{self, rewrite};
use common::{config_toml, free_port, ClickHouseServer, RedisServer, Spillway};

/// Run name of the burst: ids of 64 characters (e.g. a UUID with a prefix).
const BURST_RUN: &str = "burst-0f8fad5b-d9cb-469f-a165-70867728950e-7c9e6679-7425-40de-9";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(60);

/// Spillway's config for these tests: the alerts pipeline, small batching delay, `top` lines
/// before the first table.
fn toml(redis: &RedisServer, ch: &ClickHouseServer, db: &str, top: &str) -> String {
    format!(
        "{top}{}\n[batch]\nmax_delay_ms = 200\n",
        config_toml(redis, ch, db, free_port())
    )
}

async fn start(toml: &str) -> Spillway {
    let sp = Spillway::start(toml);
    sp.wait_ready(WAIT).await;
    sp
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// RLS redis-server SIGKILLed and restarted under load.
///
/// Persistence: the server runs with `--appendonly yes --appendfsync always`. Redis then writes
/// and fsyncs the AOF before it sends the reply of a write, so every SET the producer saw
/// acknowledged survives a SIGKILL and is alive after the restart; the promise "every alert key
/// still alive is archived" then covers every sent value, and (c) must hold exactly. Without
/// persistence the restarted Redis is empty: values acknowledged but not yet read back are
/// destroyed by Redis itself, with no notification Spillway could count (a read after the
/// restart counts some as gone on read, the rest are invisible) — that is a deployment choice
/// (RLS is a cache of logs), not a Spillway loss, and this test does not exercise it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rls_killed_and_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    let case = "redis_kill_restart";
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let ch = ClickHouseServer::start();
    let sp = start(&toml(&redis, &ch, "fkill", "")).await;

    let producer = produce(
        &redis.url(),
        "k",
        3000,
        30,
        u64::MAX,
        Duration::from_secs(12),
    );
    let rewriter = rewrite(&redis.url(), 500, Duration::from_secs(12));
    tokio::time::sleep(Duration::from_secs(4)).await;
    block(|| faults::kill_redis(&mut redis));
    tokio::time::sleep(Duration::from_secs(2)).await;
    block(|| faults::start_redis_again(&mut redis));
    let produced = producer.join().await;
    let rewrites = rewriter.join().await;
    assert!(
        produced.failed_pipelines > 0 && produced.reconnects > 0,
        "the producer did not see the outage: {produced:?}"
    );

    let mut f = check(case, &redis, &ch, "fkill", &[&produced], WAIT).await;
    let metrics = rewrite::settled(&sp, WAIT).await;
    f.account = Account::from_metrics(&metrics);
    let rw = rewrite::check(case, &redis, &ch, "fkill", &rewrites).await;
    println!(
        "REWRITES {case}: {rewrites_line} {rw:?}",
        rewrites_line = rewrites.line()
    );
    rewrite::assert_equation(case, &metrics);
    rewrite::assert_rows_match(case, &ch, "fkill", &metrics).await;
    println!(
        "{} producer_failed_pipelines={}",
        f.line(case),
        produced.failed_pipelines
    );
    faults::assert_account(case, &f);
    assert!(
        f.account.reconnects >= 1,
        "the restart was not detected as a gap: {}",
        f.line(case)
    );
    assert!(
        f.account.captured_scan > 0,
        "no rescan after the restart: {}",
        f.line(case)
    );
    // With fsync before every reply nothing acknowledged may vanish: no loss to explain.
    assert_eq!(f.sent, f.archived_sent, "{}", f.line(case));
}

/// The subscriber cut off by Redis at a tiny pub/sub output-buffer limit during a burst.
///
/// Redis disconnects a subscriber whose pending output exceeds the hard limit (64 kB) or stays
/// above the soft limit (32 kB) for 1 s. That happens only when the subscriber reads its socket
/// slower than Redis publishes. A burst alone did not do it here: 37 000 notifications fitted in
/// the kernel's socket buffers (fred reads fast), `omem=0` in CLIENT LIST and no cut-off. So the
/// burst is written while spillway is paused (SIGSTOP) — a stalled subscriber (CPU starvation,
/// a stop-the-world pause of the host) — which makes the cut-off certain, not a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriber_cut_off_by_output_buffer_limit() {
    let _serial = SERIAL.lock().await;
    let case = "pubsub_buffer_cutoff";
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let sp = start(&toml(&redis, &ch, "fcut", "")).await;
    redis.cli(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 64kb 32kb 1",
    ]);

    let steady = produce(
        &redis.url(),
        "s",
        2000,
        20,
        u64::MAX,
        Duration::from_secs(10),
    );
    let rewriter = rewrite(&redis.url(), 500, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = sp.pid().expect("spillway runs");
    faults::signal(pid, "STOP");
    // 50 000 alerts with 64-character ids: ~6 MB of notifications, more than the loopback
    // socket buffers hold (~2.3 MB measured with `ss`), so the rest piles up in Redis's
    // output buffer for the subscriber and crosses the 64 kB hard limit.
    let burst = produce(
        &redis.url(),
        BURST_RUN,
        200_000,
        2000,
        50_000,
        Duration::from_secs(20),
    );
    let burst = burst.join().await;
    faults::signal(pid, "CONT");
    let steady = steady.join().await;
    let rewrites = rewriter.join().await;

    let produced: [&Produced; 2] = [&steady, &burst];
    let mut f = check(case, &redis, &ch, "fcut", &produced, WAIT).await;
    let metrics = rewrite::settled(&sp, WAIT).await;
    f.account = Account::from_metrics(&metrics);
    let rw = rewrite::check(case, &redis, &ch, "fcut", &rewrites).await;
    println!("REWRITES {case}: {} {rw:?}", rewrites.line());
    rewrite::assert_equation(case, &metrics);
    rewrite::assert_rows_match(case, &ch, "fcut", &metrics).await;
    let cut = faults::output_buffer_cutoffs(&redis);
    println!("{} redis_output_buffer_cutoffs={cut}", f.line(case));
    faults::assert_account(case, &f);
    assert!(
        f.account.reconnects > 0,
        "the cut-off was not detected: {}",
        f.line(case)
    );
    assert!(
        f.account.events_written < f.sent + rewrites.sets,
        "no notification was missed, the fault did not happen: {}",
        f.line(case)
    );
    assert!(
        f.account.captured_scan > 0,
        "no rescan after the cut-off: {}",
        f.line(case)
    );
    assert_eq!(f.sent, f.archived_sent, "{}", f.line(case));
}

/// clickhouse-server stopped for 20 s under load, then started again.
///
/// Memory bound: the channel holds 50 000 rows (default `channel_capacity`; an alert row is
/// under 1 kB, an event row ~100 B), the writer one batch being retried (cut at 200 ms, so a few
/// hundred rows), two read batches of 1 024 values, and the notification queue, which during the
/// outage holds at most the ~40 000 notifications of the 20 s (200 B each with fred's frame).
/// That is well under 100 MB over the process's baseline (~20 MB); 300 MB leaves room for the
/// allocator and still catches an unbounded buffer (the 40 000 alerts alone as owned rows would
/// not reach it, but a leak per retry or an unbounded queue of batches would).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_down_20s_under_load() {
    let _serial = SERIAL.lock().await;
    let case = "clickhouse_down_20s";
    let redis = RedisServer::start();
    let mut ch = ClickHouseServer::start();
    let sp = start(&toml(&redis, &ch, "fch", "")).await;
    let pid = sp.pid().expect("spillway runs");
    let rss_before = faults::proc_status_kb(pid, "VmRSS");

    let producer = produce(
        &redis.url(),
        "c",
        2000,
        20,
        u64::MAX,
        Duration::from_secs(30),
    );
    let rewriter = rewrite(&redis.url(), 500, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(3)).await;
    block(|| ch.stop());
    let down = Instant::now();
    // Sample the gauges once a second while ClickHouse is down.
    let mut channel_depth = 0;
    while down.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = sp.metrics().await;
        channel_depth = channel_depth.max(faults::metric(&m, "spillway_channel_depth", &[]));
    }
    let during = Account::from_metrics(&sp.metrics().await);
    block(|| ch.start_again());
    let outage = down.elapsed();
    let produced = producer.join().await;
    let rewrites = rewriter.join().await;

    let mut f = check(
        case,
        &redis,
        &ch,
        "fch",
        &[&produced],
        Duration::from_secs(90),
    )
    .await;
    let metrics = rewrite::settled(&sp, WAIT).await;
    f.account = Account::from_metrics(&metrics);
    let rw = rewrite::check(case, &redis, &ch, "fch", &rewrites).await;
    println!("REWRITES {case}: {} {rw:?}", rewrites.line());
    rewrite::assert_equation(case, &metrics);
    rewrite::assert_rows_match(case, &ch, "fch", &metrics).await;
    let hwm = faults::proc_status_kb(pid, "VmHWM");
    println!(
        "{} outage_s={:.1} retries_during_outage={} channel_depth_in_outage={channel_depth} rss_before_kb={rss_before} vm_hwm_kb={hwm}",
        f.line(case),
        outage.as_secs_f64(),
        during.insert_retries
    );
    faults::assert_account(case, &f);
    assert_eq!(f.sent, f.archived_sent, "rows lost: {}", f.line(case));
    assert!(
        during.insert_retries > 0,
        "no insert retry visible during the outage"
    );
    assert!(hwm > 0, "VmHWM of pid {pid} unreadable");
    assert!(hwm < 300 * 1024, "spillway peak RSS {hwm} kB >= 300 MB");
    // 20 s at 2 000 alerts/s is 80 000 rows (alert + written event) against a channel of
    // 50 000: the channel is full during the outage, and `spillway_channel_depth` must say so
    // (the alert rule ChannelNearFull is `depth / capacity > 0.9`). Checked last so that a
    // failure here means only this.
    assert!(
        channel_depth > 0,
        "spillway_channel_depth stayed 0 during the 20 s outage although the channel was full: \
         run_writer (src/sink/mod.rs) sets the gauge only before and after commit(), whose retry \
         loop runs for the whole outage; {}",
        f.line(case)
    );
}

/// SIGTERM under load: exit 0 within `shutdown_timeout_secs`, every value captured before the
/// signal committed; a restart re-captures by rescan without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_then_restart() {
    let _serial = SERIAL.lock().await;
    let case = "sigterm_drain_restart";
    let redis = RedisServer::start();
    let ch = ClickHouseServer::start();
    let deadline = Duration::from_secs(10);
    let config = toml(&redis, &ch, "fterm", "shutdown_timeout_secs = 10\n");
    let sp = start(&config).await;

    let producer = produce(
        &redis.url(),
        "t",
        3000,
        30,
        u64::MAX,
        Duration::from_secs(10),
    );
    let rewriter = rewrite(&redis.url(), 500, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = sp.pid().expect("spillway runs");
    let signalled = Instant::now();
    faults::signal(pid, "TERM");
    // Scrape /metrics while spillway drains: a scrape that starts after "readers stopped" is in
    // the log sees the final count of captured values (the metrics endpoint closes last).
    let client = common::http_client(Duration::from_millis(500));
    let url = format!("http://127.0.0.1:{}/metrics", sp.metrics_port);
    let (mut last, mut exact) = (None, None);
    let status = loop {
        if let Some(status) = sp.exit_status() {
            break status;
        }
        assert!(
            signalled.elapsed() < deadline + Duration::from_secs(5),
            "spillway still running {:?} after SIGTERM; log:\n{}",
            signalled.elapsed(),
            sp.log()
        );
        let readers_stopped = sp.log().contains("readers stopped");
        if let Ok(r) = client.get(&url).send().await {
            if let Ok(body) = r.text().await {
                if readers_stopped {
                    exact = Some(body.clone());
                }
                last = Some(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = signalled.elapsed();
    let first_run = Account::from_metrics(
        exact
            .as_deref()
            .or(last.as_deref())
            .expect("no /metrics scrape"),
    );
    let committed = ch.count("SELECT count() FROM fterm.alerts FINAL").await;
    let captured = first_run.captured_event + first_run.captured_scan;
    println!(
        "FAULT {case} (first run): exit={status} after {took:?} (deadline {deadline:?}), captured_at_exit={captured} ({}) committed_rows={committed}",
        if exact.is_some() { "exact: scraped after readers stopped" } else { "lower bound: last scrape" }
    );
    assert!(status.success(), "exit status {status}; log:\n{}", sp.log());
    assert!(took <= deadline, "drain took {took:?} > {deadline:?}");
    assert!(
        sp.log().contains("drained; bye"),
        "no drain in log:\n{}",
        sp.log()
    );
    // Nothing read is lost: every value turned into a row before the exit was committed (each
    // key is written once, and no rescan ran in this run, so each capture is one distinct row).
    if let Some(exact) = &exact {
        // Drained: every notification received before the signal has its outcome, and none
        // was dropped for want of time.
        let outcomes = rewrite::assert_equation("sigterm (first run)", exact);
        assert_eq!(outcomes[6], ("lost_shutdown", 0), "{outcomes:?}");
        assert_eq!(committed, captured, "captured values not committed at exit");
    } else {
        assert!(
            committed >= captured,
            "committed {committed} < captured {captured}"
        );
    }
    drop(sp);

    // Restart while the producer still writes: the start-up rescan re-captures every live key.
    let sp = start(&config).await;
    let produced = producer.join().await;
    let rewrites = rewriter.join().await;
    assert!(
        produced.acked.len() as u64 > committed,
        "the producer did not write after the signal"
    );
    let mut f = check(case, &redis, &ch, "fterm", &[&produced], WAIT).await;
    let metrics = rewrite::settled(&sp, WAIT).await;
    let second = Account::from_metrics(&metrics);
    let rw = rewrite::check(case, &redis, &ch, "fterm", &rewrites).await;
    println!("REWRITES {case}: {} {rw:?}", rewrites.line());
    rewrite::assert_equation(case, &metrics);
    f.account = first_run.plus(second);
    println!(
        "{} second_run_captured_scan={}",
        f.line(case),
        second.captured_scan
    );
    faults::assert_account(case, &f);
    assert!(
        second.captured_scan >= committed,
        "the restart did not rescan the keys already archived"
    );
    assert_eq!(f.sent, f.archived_sent, "{}", f.line(case));
}
