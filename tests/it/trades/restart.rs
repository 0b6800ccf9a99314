//! The stream and its consumer group gone: RTRS restarted empty (it runs without persistence)
//! under load, and `trade_results` deleted by an operator. Spillway creates the group again
//! and every close added to the new stream moves; the recreation is counted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use common::trades::{self, Trade, STREAM};
use fred::prelude::*;

use super::stack::{report, Stack, ACKED, WAIT};

/// Consumer groups created again.
const RECREATED: &str = "spillway_stream_group_recreated_total{pipeline=\"trades\"}";

/// Lines of spillway's log that report a recreated group (one WARN per recreation).
fn recreation_warnings(s: &Stack) -> usize {
    s.sp.log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("consumer group created again"))
        .count()
}

/// One attempt at adding the closes of `trades` to the stream, on a fresh connection that
/// does not reconnect, within 3 s.
async fn try_close(url: &str, trades: &[Trade]) -> Result<(), Error> {
    let attempt = async {
        let mut b = Builder::from_config(Config::from_url(url)?);
        b.with_connection_config(|c| c.connection_timeout = Duration::from_secs(1));
        let c = b.build()?;
        c.init().await?;
        let p = c.pipeline();
        for t in trades {
            let fields: Vec<(&str, Value)> = vec![
                ("trade_id", Value::from(t.id.as_str())),
                ("event", Value::from("closed")),
                ("payload", Value::Bytes(trades::msgpack(&trades::close(t)))),
            ];
            let () = p.xadd(STREAM, false, None::<()>, "*", fields).await?;
        }
        let replies: Vec<Result<Value, Error>> = p.try_all().await;
        let _ = c.quit().await;
        replies.into_iter().try_for_each(|r| r.map(drop))
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(ErrorKind::Timeout, "XADD attempt timed out")),
    }
}

/// Plays the platform through an RTRS restart: for each group of `batch` trades, writes their
/// logs into RLS, then closes them on RTRS, sending the whole group again until RTRS accepts
/// it, as a platform that retries would. Returns the trades whose successful attempt began
/// after `restarted` was set (they are on the new stream for sure) and how many attempts failed.
async fn play_resending(
    rls: String,
    rtrs: String,
    trades: Vec<Trade>,
    batch: usize,
    restarted: Arc<AtomicBool>,
) -> (Vec<Trade>, u32) {
    let (mut after, mut failures) = (Vec::new(), 0);
    for part in trades.chunks(batch) {
        trades::write_logs(&rls, part, 1000, 1).await;
        loop {
            let began_after = restarted.load(Ordering::SeqCst);
            match try_close(&rtrs, part).await {
                Ok(()) => {
                    if began_after {
                        after.extend_from_slice(part);
                    }
                    break;
                }
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    (after, failures)
}

/// `trade_id IN (...)` of `trades`.
fn ids(trades: &[Trade]) -> String {
    let list: Vec<String> = trades.iter().map(|t| format!("'{}'", t.id)).collect();
    format!("trade_id IN ({})", list.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_rtrs_restart_under_load_moves_every_later_close() {
    let mut s = Stack::start("trestart").await;
    let t0 = Instant::now();
    // Closed before: moved before the restart.
    let before = trades::plan("rb", 300);
    trades::play(&s.rls.url(), &s.rtrs.url(), &before, 100, Duration::ZERO).await;
    s.settled(&before, 0, 0).await;

    // Closed during: RTRS is stopped under load and started again empty.
    let during = trades::plan("rd", 1500);
    let restarted = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(play_resending(
        s.rls.url(),
        s.rtrs.url(),
        during.clone(),
        50,
        restarted.clone(),
    ));
    eventually(WAIT, "closes of the load moved", || async {
        s.count("SELECT count() FROM DB.trades FINAL").await >= 300 + 200
    })
    .await;
    s.rtrs.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.rtrs.restart();
    restarted.store(true, Ordering::SeqCst);
    println!(
        "RTRS down {:.1} s, started again empty",
        down.elapsed().as_secs_f64()
    );
    let (on_new_stream, failures) = producer.await.expect("producer");
    assert!(
        !on_new_stream.is_empty() && on_new_stream.len() < during.len(),
        "the load must still run at the restart: {} of {} closed after it",
        on_new_stream.len(),
        during.len()
    );
    assert!(failures > 0, "some closes were refused while RTRS was down");

    // Closed after: RTRS is up again.
    let after = trades::plan("ra", 300);
    trades::play(&s.rls.url(), &s.rtrs.url(), &after, 100, Duration::ZERO).await;

    // Every close on the new stream moves; the logs of closes lost with the old stream (added
    // and not yet read when RTRS stopped) stay in RLS, none is both gone and unarchived.
    let must: Vec<Trade> = before
        .iter()
        .chain(&on_new_stream)
        .chain(&after)
        .cloned()
        .collect();
    let must_ids = ids(&must);
    eventually(WAIT, "every close on the new stream moved", || async {
        s.count(&format!(
            "SELECT count() FROM DB.trades FINAL WHERE {must_ids}"
        ))
        .await
            == must.len() as u64
            && s.count(&format!(
                "SELECT count() FROM DB.trade_executions FINAL WHERE {must_ids}"
            ))
            .await
                == trades::total_entries(&must)
            && s.pending() == 0
            && s.undelivered() == 0
    })
    .await;
    s.check_rows(&must).await;
    let sure: HashSet<&str> = must.iter().map(|t| t.id.as_str()).collect();
    let unsure: Vec<Trade> = during
        .iter()
        .filter(|t| !sure.contains(t.id.as_str()))
        .cloned()
        .collect();
    let moved_unsure = if unsure.is_empty() {
        0
    } else {
        s.count(&format!(
            "SELECT count() FROM DB.trades FINAL WHERE {}",
            ids(&unsure)
        ))
        .await
    };
    let left = s.rls_keys();
    let f = s.figures().await;
    report("empty RTRS restart", &during, &f, t0.elapsed());
    println!(
        "closes on the new stream for sure: {} of {}; others: {} moved, {} logs left in RLS; \
         XADD attempts refused: {failures}",
        on_new_stream.len(),
        during.len(),
        moved_unsure,
        left
    );
    for t in &must {
        assert_eq!(
            s.rls.cli(&["EXISTS", &t.key()]),
            "0",
            "{} left in RLS",
            t.id
        );
    }
    assert_eq!(
        moved_unsure + left,
        unsure.len() as u64,
        "every other close either moved or kept its log in RLS"
    );
    assert_eq!(f.trades, must.len() as u64 + moved_unsure);
    assert_eq!(f.dead_letters, 0);
    assert_eq!(s.metric(RECREATED).await, 1, "{RECREATED}");
    assert_eq!(recreation_warnings(&s), 1, "one WARN per recreation");
    s.sp.wait_ready(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_by_an_operator_then_closes_move() {
    let s = Stack::start("tstreamdel").await;
    let first = trades::plan("sd1", 200);
    trades::play(&s.rls.url(), &s.rtrs.url(), &first, 100, Duration::ZERO).await;
    s.settled(&first, 0, 0).await;
    assert_eq!(s.metric(RECREATED).await, 0, "{RECREATED}");

    // Spillway's XREADGROUP is blocked on the stream when it goes.
    assert_eq!(s.rtrs.cli(&["DEL", STREAM]), "1");
    let second = trades::plan("sd2", 200);
    let t0 = Instant::now();
    trades::play(&s.rls.url(), &s.rtrs.url(), &second, 100, Duration::ZERO).await;
    let f = s.settled(&second, trades::total_entries(&first), 0).await;
    report("stream deleted", &second, &f, t0.elapsed());
    assert_eq!(f.trades, 400);
    eventually(WAIT, "the closes after the DEL acknowledged", || async {
        s.metric(ACKED).await == 400
    })
    .await;
    assert_eq!(s.metric(RECREATED).await, 1, "{RECREATED}");
    assert_eq!(recreation_warnings(&s), 1, "one WARN per recreation");
}
