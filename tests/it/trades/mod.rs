//! End to end, trade close: the platform writes execution logs into a real RLS redis-server and
//! closes trades on the `trade_results` stream of a separate RTRS redis-server; the real spillway
//! binary moves every log into a real clickhouse-server exactly once (under FINAL), removes the
//! RLS keys and acknowledges the stream, through SIGKILL and a ClickHouse outage, and sends bad
//! input to `dead_letters` (bad_input.rs); the stream and its group lost to an empty RTRS
//! restart or a `DEL` (restart.rs); a stalled pipeline seen in `/readyz` and `/metrics`
//! (stall.rs).

mod bad_input;
mod restart;
mod stack;
mod stall;
mod take;

use std::time::{Duration, Instant};

use common::trades::{self, GROUP, STREAM};
use common::{eventually, Spillway};
use stack::{report, Stack, ACKED, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_trades_move_exactly_once() {
    let s = Stack::start("tmove").await;
    let trades = trades::plan("a", 2000);
    let t0 = Instant::now();
    trades::play(&s.rls.url(), &s.rtrs.url(), &trades, 200, Duration::ZERO).await;
    let f = s.settled(&trades, 0, 0).await;
    report("move", &trades, &f, t0.elapsed());
    assert_eq!((f.trades, f.dead_letters), (2000, 0));
    eventually(WAIT, "every close acknowledged", || async {
        s.metric(ACKED).await >= 2000
    })
    .await;
    for (name, want) in [
        (ACKED, 2000),
        ("spillway_logs_moved_total{pipeline=\"trades\"}", 2000),
        ("spillway_log_keys_removed_total{pipeline=\"trades\"}", 2000),
        ("spillway_logs_missing_total{pipeline=\"trades\"}", 0),
        (
            "spillway_stream_entries_total{pipeline=\"trades\",event=\"closed\"}",
            2000,
        ),
    ] {
        assert_eq!(s.metric(name).await, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_duplicates_nothing() {
    let mut s = Stack::start("tkill").await;
    let trades = trades::plan("k", 2000);
    let t0 = Instant::now();
    let (rls, rtrs, load) = (s.rls.url(), s.rtrs.url(), trades.clone());
    let producer = tokio::spawn(async move {
        trades::play(&rls, &rtrs, &load, 50, Duration::from_millis(60)).await
    });
    eventually(WAIT, "a quarter of the trades committed", || async {
        s.count("SELECT count() FROM DB.trades FINAL").await >= 500
    })
    .await;
    assert!(
        !producer.is_finished(),
        "the load must still run at the kill"
    );
    s.sp.kill();
    let at_kill = s.figures().await;
    println!("at SIGKILL: {at_kill:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.sp = Spillway::start(&s.toml);
    s.sp.wait_ready(WAIT).await;
    producer.await.expect("producer");
    let f = s.settled(&trades, 0, 0).await;
    report("sigkill", &trades, &f, t0.elapsed());
    assert_eq!((f.trades, f.dead_letters), (2000, 0));
    assert_eq!(
        s.count("SELECT count() FROM DB.trades FINAL WHERE log_state != 'moved'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_under_load_keeps_logs_in_redis_then_lands_them() {
    // A small channel: during the outage the reader must stop reading (backpressure).
    let mut s = Stack::start_with("toutage", "channel_capacity = 5000").await;
    let trades = trades::plan("o", 2000);
    let (before, during) = trades.split_at(800);
    let t0 = Instant::now();
    let (rls, rtrs, load) = (s.rls.url(), s.rtrs.url(), before.to_vec());
    let producer = tokio::spawn(async move {
        trades::play(&rls, &rtrs, &load, 50, Duration::from_millis(100)).await
    });
    eventually(WAIT, "some trades committed", || async {
        s.count("SELECT count() FROM DB.trades FINAL").await >= 300
    })
    .await;
    let stopping = Instant::now();
    s.ch.stop();
    let down = Instant::now();
    println!(
        "ClickHouse stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    // Batches committed just before the stop are acknowledged within moments.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = s.metric(ACKED).await;
    producer.await.expect("producer");
    // Trades keep closing for a few seconds while ClickHouse is down.
    let (rls, rtrs) = (s.rls.url(), s.rtrs.url());
    trades::play(&rls, &rtrs, during, 50, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = 2000 - acked;
    let (pending, undelivered, keys) = (s.pending(), s.undelivered(), s.rls_keys());
    println!(
        "ClickHouse down {:.1} s: acked {acked}, pending {pending}, undelivered {undelivered}, \
         RLS keys {keys}",
        down.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.metric(ACKED).await,
        acked,
        "nothing acknowledged while ClickHouse is down"
    );
    assert_eq!(
        pending + undelivered,
        waiting,
        "unacknowledged closes stay in the stream"
    );
    assert_eq!(
        keys, waiting,
        "the log of every unacknowledged close stays in RLS"
    );
    assert!(
        waiting >= during.len() as u64,
        "every close sent during the outage waits: {waiting}"
    );
    assert!(undelivered > 0, "backpressure: the reader stopped reading");
    assert!(s.metric("spillway_insert_retries_total").await > 0);
    s.ch.start_again();
    let f = s.settled(&trades, 0, 0).await;
    report("clickhouse outage", &trades, &f, t0.elapsed());
    assert_eq!((f.trades, f.dead_letters), (2000, 0));
    eventually(WAIT, "every close acknowledged", || async {
        s.metric(ACKED).await == 2000
    })
    .await;
}

/// A crash after the log was removed from RLS but before XACK leaves the close pending with
/// its log gone; the redelivery must not overwrite the archived trade with `log_state =
/// 'missing'`. The crash is reproduced exactly: the group is rewound and the close read again
/// by spillway's consumer without acknowledging it, while spillway is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_the_log_was_removed_keeps_the_trade_row() {
    let mut s = Stack::start("tredeliver").await;
    let trades = trades::plan("r", 3);
    trades::play(&s.rls.url(), &s.rtrs.url(), &trades, 10, Duration::ZERO).await;
    s.settled(&trades, 0, 0).await;
    eventually(WAIT, "acknowledged", || async {
        s.metric(ACKED).await == 3
    })
    .await;
    assert!(s.sp.terminate().success());

    // Spillway's default consumer name, the same after the restart (same host, same port).
    let consumers = s.rtrs.cli(&["XINFO", "CONSUMERS", STREAM, GROUP]);
    let lines: Vec<&str> = consumers.lines().collect();
    let consumer = lines[lines.iter().position(|l| *l == "name").expect("a consumer") + 1];
    s.rtrs.cli(&["XGROUP", "SETID", STREAM, GROUP, "0"]);
    let reread = [
        "XREADGROUP",
        "GROUP",
        GROUP,
        consumer,
        "COUNT",
        "10",
        "STREAMS",
        STREAM,
        ">",
    ];
    s.rtrs.cli(&reread);
    assert_eq!(
        s.pending(),
        3,
        "the closes are pending again, their logs gone"
    );

    s.sp = Spillway::start(&s.toml);
    s.sp.wait_ready(WAIT).await;
    eventually(WAIT, "the redelivered closes acknowledged", || async {
        s.pending() == 0 && s.metric(ACKED).await == 3
    })
    .await;
    let f = s.figures().await;
    report("redelivery", &trades, &f, Duration::ZERO);
    let states = s
        .tsv("SELECT trade_id, log_state, log_entries FROM DB.trades FINAL ORDER BY trade_id")
        .await;
    println!("trades after the redelivery:\n{states}");
    assert_eq!(f.executions, trades::total_entries(&trades));
    s.check_rows(&trades).await;
}

/// Deployments that publish the close on `trade_close` besides the stream: the pub/sub close
/// moves the log first; the stream's close of the same trade, read later (the stream lags
/// behind under load), must not overwrite the archived trade with `log_state = 'missing'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_close_then_stream_close_keeps_the_trade_moved() {
    let s = Stack::start("tpubsub").await;
    let trades = trades::plan("p", 50);
    trades::write_logs(&s.rls.url(), &trades, 1000, 1).await;
    trades::publish_closes(&s.rtrs.url(), &trades).await;
    eventually(WAIT, "the pub/sub closes moved every log", || async {
        s.rls_keys() == 0 && s.count("SELECT count() FROM DB.trades FINAL").await == 50
    })
    .await;
    trades::close_all(&s.rtrs.url(), &trades, 1000, 1).await;
    let f = s.settled(&trades, 0, 0).await;
    eventually(WAIT, "the stream closes acknowledged", || async {
        s.metric(ACKED).await == 50
    })
    .await;
    report("pub/sub then stream", &trades, &f, Duration::ZERO);
    let missing = "spillway_logs_missing_total{pipeline=\"trades\"}";
    assert_eq!(s.metric(missing).await, 0, "{missing}");
}
