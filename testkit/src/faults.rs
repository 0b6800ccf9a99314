//! Fault tests: a producer that keeps writing alerts through a Redis outage and counts only
//! acknowledged SETs, faults the harness does not offer (SIGKILL of redis-server, SIGSTOP of
//! spillway), the loss account read from `/metrics`, peak memory from `/proc`, and the strict
//! end checks shared by every fault case.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::task::JoinHandle;

use super::{load, ClickHouseServer, RedisServer};

/// TTL of every alert the producer writes: long enough that none expires during a test, so
/// every acknowledged value must still be alive (and archived) at the end.
pub const TTL_SECS: i64 = 600;

/// What a producer wrote.
#[derive(Debug, Default)]
pub struct Produced {
    /// Run name: the keys are `alert:{run}-{i}`.
    pub run: String,
    /// Indices whose SET Redis acknowledged with OK: these were sent.
    pub acked: Vec<u64>,
    /// Indices whose SET was sent but got no reply (connection lost, timeout): Redis may or may
    /// not have applied them; not counted as sent.
    pub uncertain: Vec<u64>,
    /// Pipelines that failed (connection errors, timeouts).
    pub failed_pipelines: u64,
    /// Reconnections of the producer.
    pub reconnects: u64,
}

impl Produced {
    /// The key of index `i`.
    pub fn key(&self, i: u64) -> String {
        format!("alert:{}-{i}", self.run)
    }
}

/// A running producer task.
pub struct Producer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Produced>,
}

impl Producer {
    /// Asks the producer to stop after its current pipeline and returns what it wrote.
    pub async fn finish(self) -> Produced {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("producer task")
    }

    /// Waits until the producer stops by itself (its count or duration reached).
    pub async fn join(self) -> Produced {
        self.handle.await.expect("producer task")
    }
}

/// A fred client that fails fast: no reconnect policy, 1 s to connect, 2 s per command.
pub(crate) async fn connect(url: &str) -> Option<Client> {
    let mut b = Builder::from_config(Config::from_url(url).expect("url"));
    b.with_connection_config(|c| c.connection_timeout = Duration::from_secs(1))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2));
    let c = b.build().expect("client");
    match tokio::time::timeout(Duration::from_secs(2), c.init()).await {
        Ok(Ok(_)) => Some(c),
        _ => {
            let _ = c.quit().await;
            None
        }
    }
}

/// Writes `SET alert:{run}-{i} <MessagePack> EX 600` for i = 0.., `chunk` per pipeline, at most
/// `rate` per second, until `max_keys` were attempted, `max_time` passed or `finish()`. A
/// failed pipeline (Redis down) makes its keys uncertain; the producer reconnects and goes on
/// with new keys, so no key is ever written twice.
pub fn produce(
    url: &str,
    run: &str,
    rate: u64,
    chunk: u64,
    max_keys: u64,
    max_time: Duration,
) -> Producer {
    let stop = Arc::new(AtomicBool::new(false));
    let (url, run, flag) = (url.to_string(), run.to_string(), stop.clone());
    let handle = tokio::spawn(async move {
        let mut out = Produced {
            run: run.clone(),
            ..Default::default()
        };
        let period = Duration::from_secs_f64(chunk as f64 / rate as f64);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut client: Option<Client> = None;
        let mut next = 0u64;
        while next < max_keys && started.elapsed() < max_time && !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            let c = match &client {
                Some(c) => c.clone(),
                None => match connect(&url).await {
                    Some(c) => {
                        if next > 0 {
                            out.reconnects += 1;
                        }
                        client = Some(c.clone());
                        c
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let ids: Vec<u64> = (next..(next + chunk).min(max_keys)).collect();
            next += ids.len() as u64;
            let p = c.pipeline();
            for &i in &ids {
                let value = load::msgpack_alert(&run, i);
                let key = format!("alert:{run}-{i}");
                let ex = Some(Expiration::EX(TTL_SECS));
                let () = p.set(key, value, ex, None, false).await.expect("queue SET");
            }
            // A timeout counts as no reply at all.
            let replies: Vec<Result<Value, Error>> =
                tokio::time::timeout(Duration::from_secs(3), p.try_all())
                    .await
                    .unwrap_or_default();
            if replies.len() != ids.len() {
                out.failed_pipelines += 1;
                out.uncertain.extend(&ids);
                let _ = c.quit().await;
                client = None;
                continue;
            }
            let mut broken = false;
            for (i, r) in ids.iter().zip(replies) {
                match r {
                    Ok(v) if v.as_str().as_deref() == Some("OK") => out.acked.push(*i),
                    _ => {
                        broken = true;
                        out.uncertain.push(*i);
                    }
                }
            }
            if broken {
                out.failed_pipelines += 1;
                let _ = c.quit().await;
                client = None;
            }
        }
        if let Some(c) = client {
            let _ = c.quit().await;
        }
        out
    });
    Producer { stop, handle }
}

/// SIGKILLs redis-server (no shutdown, no final AOF rewrite): only what it had written to disk
/// survives.
pub fn kill_redis(redis: &mut RedisServer) {
    redis.proc.stop(Duration::ZERO);
}

/// Starts redis-server again on the same port, args and working dir (AOF or RDB there is loaded).
pub fn start_redis_again(redis: &mut RedisServer) {
    redis.launch();
}

/// Sends `signal` (e.g. "STOP", "CONT", "TERM") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A field of `/proc/PID/status` in kB (`VmHWM`, `VmRSS`); 0 if unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The sum of the samples of metric `name` whose labels include every `k="v"` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The loss account of one or more spillway runs (their `/metrics` at the end, summed).
#[derive(Debug, Default, Clone, Copy)]
pub struct Account {
    pub events_written: u64,
    pub captured_event: u64,
    pub captured_scan: u64,
    pub gone: u64,
    pub lost: u64,
    pub reconnects: u64,
    pub dead_letters: u64,
    pub insert_retries: u64,
    pub evicted: u64,
}

impl Account {
    /// The account in one `/metrics` text.
    pub fn from_metrics(text: &str) -> Account {
        let p = ("pipeline", "alerts");
        Account {
            events_written: metric(
                text,
                "spillway_events_received_total",
                &[p, ("event", "set")],
            ),
            captured_event: metric(
                text,
                "spillway_values_captured_total",
                &[p, ("via", "event")],
            ),
            captured_scan: metric(
                text,
                "spillway_values_captured_total",
                &[p, ("via", "scan")],
            ),
            gone: metric(text, "spillway_values_gone_total", &[p]),
            lost: metric(text, "spillway_events_lost_total", &[p]),
            reconnects: metric(text, "spillway_subscriber_reconnects_total", &[p]),
            dead_letters: metric(text, "spillway_dead_letters_total", &[p]),
            insert_retries: metric(text, "spillway_insert_retries_total", &[]),
            evicted: metric(
                text,
                "spillway_redis_evicted_keys_total",
                &[("instance", "rls")],
            ),
        }
    }

    /// The sum of two accounts (two runs of spillway).
    pub fn plus(self, o: Account) -> Account {
        Account {
            events_written: self.events_written + o.events_written,
            captured_event: self.captured_event + o.captured_event,
            captured_scan: self.captured_scan + o.captured_scan,
            gone: self.gone + o.gone,
            lost: self.lost + o.lost,
            reconnects: self.reconnects + o.reconnects,
            dead_letters: self.dead_letters + o.dead_letters,
            insert_retries: self.insert_retries + o.insert_retries,
            evicted: self.evicted.max(o.evicted),
        }
    }
}

/// The figures of a fault case, checked.
#[derive(Debug, Default)]
pub struct Figures {
    /// SETs acknowledged by Redis.
    pub sent: u64,
    /// SETs without a reply (not counted as sent).
    pub uncertain: u64,
    /// Distinct run keys in `alerts` FINAL.
    pub archived: u64,
    /// Of those, keys that were sent (acknowledged).
    pub archived_sent: u64,
    /// Alert keys alive in Redis at the end.
    pub alive: u64,
    /// Rows of `alerts` without FINAL (duplicates absorbed by ReplacingMergeTree included).
    pub raw_rows: u64,
    /// Sent keys not archived, each explained by an `alert_events` row (gone on read, expired,
    /// evicted, deleted).
    pub explained: u64,
    /// The account from `/metrics`.
    pub account: Account,
}

impl Figures {
    /// One line of figures.
    pub fn line(&self, case: &str) -> String {
        let a = &self.account;
        format!(
            "FAULT {case}: sent={} uncertain={} archived={} (of sent {}) alive_at_end={} raw_rows={} \
             events_written={} captured_event={} captured_scan={} gone_missing_on_read={} explained_losses={} \
             notifications_lost={} reconnects={} dead_letters={} insert_retries={} redis_evicted={}",
            self.sent,
            self.uncertain,
            self.archived,
            self.archived_sent,
            self.alive,
            self.raw_rows,
            a.events_written,
            a.captured_event,
            a.captured_scan,
            a.gone,
            self.explained,
            a.lost,
            a.reconnects,
            a.dead_letters,
            a.insert_retries,
            a.evicted,
        )
    }
}

/// Every `alert:*` key alive in Redis but the rewriter's (checked by [`super::rewrite`]).
pub fn alive_keys(redis: &RedisServer) -> HashSet<String> {
    redis
        .cli(&["--scan", "--pattern", "alert:*"])
        .lines()
        .filter(|k| !k.starts_with(super::rewrite::PREFIX))
        .map(str::to_string)
        .collect()
}

/// `AND` condition leaving out the rewriter's keys.
fn not_rewritten() -> String {
    format!("key NOT LIKE '{}%'", super::rewrite::PREFIX)
}

/// Keys of `sql` (one per line).
async fn key_set(ch: &ClickHouseServer, sql: &str) -> HashSet<String> {
    ch.query(sql)
        .await
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The strict checks of every fault case, once spillway has caught up (waits up to `wait` for
/// every key alive in Redis to be archived):
/// (a) every `alert:*` key alive in Redis is in `alerts` FINAL;
/// (b) no duplicate under FINAL: count() FINAL == uniqExact(key, content_hash), and one row per
///     key (each key is written once, with one value);
/// (c) sent == archived (of sent) + explained losses, where a loss is explained only by an
///     `alert_events` row of that key saying it was gone on read, expired, evicted or deleted.
/// The caller fills in `account` from `/metrics`.
pub async fn check(
    case: &str,
    redis: &RedisServer,
    ch: &ClickHouseServer,
    db: &str,
    produced: &[&Produced],
    wait: Duration,
) -> Figures {
    let alive = alive_keys(redis);
    let archived_sql = format!(
        "SELECT DISTINCT key FROM {db}.alerts FINAL WHERE {}",
        not_rewritten()
    );
    let deadline = Instant::now() + wait;
    loop {
        let archived = key_set(ch, &archived_sql).await;
        let missing: Vec<&String> = alive.difference(&archived).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let sample: Vec<_> = missing.iter().take(10).collect();
            panic!(
                "{case}: (a) {} of {} alert keys alive in Redis are not archived after {wait:?}, e.g. {sample:?}",
                missing.len(),
                alive.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let archived = key_set(ch, &archived_sql).await;
    let final_rows = ch
        .count(&format!(
            "SELECT count() FROM {db}.alerts FINAL WHERE {}",
            not_rewritten()
        ))
        .await;
    let unique = ch
        .count(&format!(
            "SELECT uniqExact(key, content_hash) FROM {db}.alerts WHERE {}",
            not_rewritten()
        ))
        .await;
    let raw_rows = ch
        .count(&format!(
            "SELECT count() FROM {db}.alerts WHERE {}",
            not_rewritten()
        ))
        .await;
    assert_eq!(final_rows, unique, "{case}: duplicates under FINAL");
    assert_eq!(
        final_rows,
        archived.len() as u64,
        "{case}: a key archived with more than one value (each key was written once)"
    );
    let mut f = Figures {
        alive: alive.len() as u64,
        archived: archived.len() as u64,
        raw_rows,
        ..Default::default()
    };
    let mut lost_keys = Vec::new();
    let mut all_run_keys = HashSet::new();
    for p in produced {
        f.sent += p.acked.len() as u64;
        f.uncertain += p.uncertain.len() as u64;
        for &i in &p.acked {
            let k = p.key(i);
            if archived.contains(&k) {
                f.archived_sent += 1;
            } else {
                lost_keys.push(k.clone());
            }
            all_run_keys.insert(k);
        }
        for &i in &p.uncertain {
            all_run_keys.insert(p.key(i));
        }
    }
    // Every archived key is one the producers wrote (acknowledged or uncertain).
    let strangers: Vec<_> = archived.difference(&all_run_keys).take(5).collect();
    assert!(
        strangers.is_empty(),
        "{case}: archived keys nobody wrote: {strangers:?}"
    );
    if !lost_keys.is_empty() {
        let list = lost_keys
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(",");
        let explained = key_set(
            ch,
            &format!(
                "SELECT DISTINCT key FROM {db}.alert_events FINAL WHERE key IN ({list}) \
                 AND (event != 'written' OR ttl_ms = -2)"
            ),
        )
        .await;
        f.explained = explained.len() as u64;
    }
    f
}

/// Asserts (c) on checked figures: every sent key is archived or its loss is explained by an
/// `alert_events` row, and the metrics count at least as many values gone on read as there are
/// unarchived sent keys.
pub fn assert_account(case: &str, f: &Figures) {
    assert_eq!(
        f.sent,
        f.archived_sent + f.explained,
        "{case}: sent != archived + explained losses: {}",
        f.line(case)
    );
    assert_eq!(
        f.account.dead_letters, 0,
        "{case}: MessagePack alerts went to dead letters"
    );
}

/// redis-server's log so far (its working dir survives restarts).
pub fn redis_log(redis: &RedisServer) -> String {
    std::fs::read_to_string(redis.dir.path().join("redis.log")).unwrap_or_default()
}

/// How many clients Redis closed for exceeding an output-buffer limit, from its log.
pub fn output_buffer_cutoffs(redis: &RedisServer) -> usize {
    redis_log(redis)
        .lines()
        .filter(|l| l.contains("output buffer limits"))
        .count()
}
