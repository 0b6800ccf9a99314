//! A second producer for the fault tests: it rewrites keys the way a busy platform does (a few
//! percent of writes hit a recent key again, some three times within one pipeline, some with
//! the same content) and deletes some, and remembers every operation, so a test can check each
//! value: archived, or overwritten or deleted by a later operation, and nothing else.
//!
//! It also reads the loss account of `/metrics` (`spillway_writes_total` and
//! `spillway_writes_pending` against `spillway_events_received_total`) for the exact equation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::json;
use tokio::task::JoinHandle;

use super::faults::{metric, TTL_SECS};
use super::{ClickHouseServer, RedisServer};

/// The rewriter's run name, and the start of its keys.
pub const RUN: &str = "rw";
/// The start of the rewriter's keys.
pub const PREFIX: &str = "alert:rw-";

/// One operation on a key: a SET of a message, or a DEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET key <MessagePack with this message> EX 600`.
    Set(String),
    /// `DEL key`.
    Del,
}

/// What the rewriter did, in order per key.
#[derive(Debug, Default)]
pub struct Rewrites {
    /// Run name: keys are `alert:{run}-{n}`.
    pub run: String,
    /// Per key, every operation Redis acknowledged or may have applied, in order, with whether
    /// it was acknowledged.
    pub ops: HashMap<String, Vec<(Op, bool)>>,
    /// SETs acknowledged.
    pub sets: u64,
    /// SETs that wrote the same content as the key's previous SET.
    pub identical: u64,
    /// SETs in a pipeline with another SET of the same key right after.
    pub back_to_back: u64,
    /// DELs acknowledged.
    pub dels: u64,
}

impl Rewrites {
    /// One line of figures.
    pub fn line(&self) -> String {
        format!(
            "keys={} sets={} identical={} back_to_back={} dels={}",
            self.ops.len(),
            self.sets,
            self.identical,
            self.back_to_back,
            self.dels
        )
    }
}

/// A running rewriter.
pub struct Rewriter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Rewrites>,
}

impl Rewriter {
    /// Stops after the current pipeline; what was done.
    pub async fn finish(self) -> Rewrites {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("rewriter task")
    }

    /// Waits until it stops by itself (`max_time`).
    pub async fn join(self) -> Rewrites {
        self.handle.await.expect("rewriter task")
    }
}

/// The MessagePack value of a rewrite: its message is the test's handle on it.
fn value(key: &str, message: &str) -> Vec<u8> {
    let v = json!({"alert_id": key, "severity": "warning", "kind": "rewrite", "message": message});
    rmp_serde::to_vec_named(&v).expect("encode")
}

/// Writes about `rate` operations per second for `max_time` (or until `finish()`), 20 per
/// pipeline: mostly new keys; 1 in 16 a rewrite of a recent key, 1 in 40 a rewrite with the
/// same content, 1 in 50 a DEL of a recent key; once per pipeline one key written three times
/// in a row. A failed pipeline leaves its operations unacknowledged (maybe applied); the
/// rewriter reconnects and goes on.
pub fn rewrite(url: &str, rate: u64, max_time: Duration) -> Rewriter {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, run, flag) = (url.to_string(), RUN.to_string(), stop.clone());
    let handle = tokio::spawn(async move {
        let mut out = Rewrites {
            run: run.clone(),
            ..Default::default()
        };
        const CHUNK: u64 = 20;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(CHUNK as f64 / rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let (mut client, mut n, mut seq) = (None::<Client>, 0u64, 0u64);
        let mut last: HashMap<String, String> = HashMap::new();
        while started.elapsed() < max_time && !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            let c = match &client {
                Some(c) => c.clone(),
                None => match super::faults::connect(&url).await {
                    Some(c) => {
                        client = Some(c.clone());
                        c
                    }
                    None => continue,
                },
            };
            let mut batch: Vec<(String, Op)> = Vec::new();
            for j in 0..CHUNK {
                seq += 1;
                let recent = |n: u64, back: u64| format!("alert:{run}-{}", n.saturating_sub(back));
                let (key, op) = if seq % 50 == 0 && n > 10 {
                    (recent(n, 1 + seq % 9), Op::Del)
                } else if seq % 40 == 0 && n > 10 {
                    let key = recent(n, 1 + seq % 7);
                    let same = last.get(&key).cloned().unwrap_or_else(|| format!("m{seq}"));
                    out.identical += u64::from(last.contains_key(&key));
                    (key, Op::Set(same))
                } else if seq % 16 == 0 && n > 10 {
                    (recent(n, 1 + seq % 13), Op::Set(format!("m{seq}")))
                } else {
                    n += 1;
                    (recent(n, 0), Op::Set(format!("m{seq}")))
                };
                if j == 0 {
                    // Three writes of one key back to back, microseconds apart.
                    for k in 0..2 {
                        batch.push((key.clone(), Op::Set(format!("m{seq}-{k}"))));
                        out.back_to_back += 1;
                    }
                }
                match &op {
                    Op::Set(m) => last.insert(key.clone(), m.clone()),
                    Op::Del => last.remove(&key),
                };
                batch.push((key, op));
            }
            let p = c.pipeline();
            for (key, op) in &batch {
                match op {
                    Op::Set(m) => {
                        let ex = Some(Expiration::EX(TTL_SECS));
                        let () = p
                            .set(key.as_str(), value(key, m), ex, None, false)
                            .await
                            .expect("queue SET");
                    }
                    Op::Del => {
                        let () = p.del(key.as_str()).await.expect("queue DEL");
                    }
                }
            }
            let replies: Vec<Result<Value, Error>> =
                tokio::time::timeout(Duration::from_secs(3), p.try_all())
                    .await
                    .unwrap_or_default();
            let ok = replies.len() == batch.len() && replies.iter().all(|r| r.is_ok());
            for (i, (key, op)) in batch.into_iter().enumerate() {
                let acked = ok && replies.get(i).is_some_and(|r| r.is_ok());
                if acked {
                    match op {
                        Op::Set(_) => out.sets += 1,
                        Op::Del => out.dels += 1,
                    }
                }
                out.ops.entry(key).or_default().push((op, acked));
            }
            if !ok {
                let _ = c.quit().await;
                client = None;
            }
        }
        if let Some(c) = client {
            let _ = c.quit().await;
        }
        out
    });
    Rewriter { stop, handle }
}

/// What the check found.
#[derive(Debug, Default)]
pub struct RewriteFigures {
    /// SETs acknowledged.
    pub sets: u64,
    /// Of those, values in `alerts` FINAL.
    pub archived: u64,
    /// Of those, values overwritten or deleted by a later operation before any capture.
    pub replaced: u64,
    /// Of those, last values whose key Redis lost (see [`check_against`]).
    pub lost_by_redis: u64,
}

/// Checks every value the rewriter wrote against `alerts` FINAL: each acknowledged SET is
/// archived, or a later operation on its key (SET or DEL, acknowledged or maybe applied)
/// replaced it; the last value of every key alive in Redis is archived; nothing archived that
/// nobody wrote; one row per (key, message).
pub async fn check(
    case: &str,
    redis: &RedisServer,
    ch: &ClickHouseServer,
    db: &str,
    w: &Rewrites,
) -> RewriteFigures {
    let alive: HashSet<String> = redis
        .cli(&["--scan", "--pattern", &format!("alert:{}-*", w.run)])
        .lines()
        .map(str::to_string)
        .collect();
    check_against(case, &alive, ch, db, w, false).await
}

/// [`check`] given the keys alive in Redis (of every node of a cluster); with `redis_lost`,
/// an acknowledged last value missing from the archive whose key is gone from Redis is
/// counted in `lost_by_redis` instead of failing the check (a primary killed before it
/// replicated the write: Redis lost it before anyone could read it).
pub async fn check_against(
    case: &str,
    alive: &HashSet<String>,
    ch: &ClickHouseServer,
    db: &str,
    w: &Rewrites,
    redis_lost: bool,
) -> RewriteFigures {
    // A value is counted in the account when its row enters the channel; its batch commits up
    // to a batch's delay later: the rows are read again until every last value is there, for
    // up to 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let archived = loop {
        let rows = ch
            .query(&format!(
                "SELECT key, message FROM {db}.alerts FINAL WHERE key LIKE 'alert:{}-%'",
                w.run
            ))
            .await;
        let mut archived: HashSet<(String, String)> = HashSet::new();
        for line in rows.lines().filter(|l| !l.is_empty()) {
            let (k, m) = line.split_once('\t').expect("key\tmessage");
            assert!(
                archived.insert((k.to_string(), m.to_string())),
                "{case}: ({k}, {m}) twice under FINAL"
            );
        }
        let last_missing = w.ops.iter().any(|(key, ops)| {
            matches!(ops.last(), Some((Op::Set(m), true))
                if !archived.contains(&(key.clone(), m.clone())) && (!redis_lost || alive.contains(key)))
        });
        if !last_missing || Instant::now() > deadline {
            break archived;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut f = RewriteFigures::default();
    let mut written: HashSet<(String, String)> = HashSet::new();
    for (key, ops) in &w.ops {
        for (i, (op, acked)) in ops.iter().enumerate() {
            let Op::Set(m) = op else { continue };
            written.insert((key.clone(), m.clone()));
            if !acked {
                continue;
            }
            f.sets += 1;
            let pair = (key.clone(), m.clone());
            let replaced_later = i + 1 < ops.len();
            if archived.contains(&pair) {
                f.archived += 1;
            } else if replaced_later {
                f.replaced += 1;
            } else if redis_lost && !alive.contains(key) {
                f.lost_by_redis += 1;
            } else {
                panic!("{case}: the last value of {key} ({m}) is not archived, and nothing replaced it (alive in Redis: {})", alive.contains(key));
            }
        }
    }
    let strangers: Vec<_> = archived.difference(&written).take(5).collect();
    assert!(
        strangers.is_empty(),
        "{case}: archived values nobody wrote: {strangers:?}"
    );
    f
}

/// Every outcome of a write notification (`spillway_writes_total{outcome}`), in the order
/// Spillway declares them.
pub const OUTCOMES: [&str; 7] = [
    "archived",
    "already_archived",
    "rewritten_before_read",
    "gone_before_read",
    "dead_letter",
    "lost_buffer_overrun",
    "lost_shutdown",
];

/// The write-notification account of pipeline `alerts` in one `/metrics` text: (received write
/// notifications, their outcomes summed, pending, outcomes by name).
pub fn account(text: &str) -> (u64, u64, u64, Vec<(&'static str, u64)>) {
    let p = ("pipeline", "alerts");
    let received = metric(
        text,
        "spillway_events_received_total",
        &[p, ("event", "set")],
    );
    let outcomes: Vec<(&'static str, u64)> = OUTCOMES
        .into_iter()
        .map(|o| {
            (
                o,
                metric(text, "spillway_writes_total", &[p, ("outcome", o)]),
            )
        })
        .collect();
    let pending = metric(text, "spillway_writes_pending", &[p]);
    let sum = outcomes.iter().map(|(_, n)| n).sum();
    (received, sum, pending, outcomes)
}

/// Asserts the account of `/metrics` closes exactly: every write notification received has
/// one outcome and none is pending. Returns the outcomes.
pub fn assert_equation(case: &str, text: &str) -> Vec<(&'static str, u64)> {
    let (received, resolved, pending, outcomes) = account(text);
    println!("ACCOUNT {case}: received={received} pending={pending} {outcomes:?}");
    assert_eq!(
        pending, 0,
        "{case}: write notifications still pending at rest"
    );
    assert_eq!(
        received, resolved,
        "{case}: received {received} != sum of outcomes {resolved}: {outcomes:?}"
    );
    outcomes
}

/// `/metrics` of `sp` once its write account has settled (nothing pending, every notification
/// resolved), or the last scrape after `wait`.
pub async fn settled(sp: &super::Spillway, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let text = sp.metrics().await;
        let (received, resolved, pending, _) = account(&text);
        if (received == resolved && pending == 0) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts the account against ClickHouse for one process's life: every distinct value in
/// `alerts` FINAL was archived by a notification (`outcome="archived"`) or found by a rescan
/// (`via="scan"`), each once (the process remembers what it archived).
pub async fn assert_rows_match(case: &str, ch: &ClickHouseServer, db: &str, text: &str) {
    let p = ("pipeline", "alerts");
    let archived = metric(text, "spillway_writes_total", &[p, ("outcome", "archived")]);
    let scanned = metric(
        text,
        "spillway_values_captured_total",
        &[p, ("via", "scan")],
    );
    // An outcome is counted when its row enters the channel: the commit follows within a batch.
    let sql = format!("SELECT count() FROM {db}.alerts FINAL");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rows = ch.count(&sql).await;
    while rows < archived + scanned && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rows = ch.count(&sql).await;
    }
    assert_eq!(
        rows,
        archived + scanned,
        "{case}: rows in alerts FINAL != archived {archived} + captured by rescans {scanned}"
    );
}
