//! Acknowledgement of committed stream entries: release the staging keys of the logs taken
//! (delete them, give them their grace expiry, or keep what was over the limits), then XACK; and
//! the consumer group's figures (lag, pending, oldest pending) as gauges.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::StreamSource;
use super::moves::LogAck;
use super::take::{evalsha_routed, Scripts};
use crate::metrics as m;
use crate::source::routed::{self, Routed};

/// What to do once a batch of entries is committed.
pub(super) struct AckWork {
    /// Entry ids to XACK.
    pub ids: Vec<String>,
    /// What becomes of the staging keys of the logs taken.
    pub logs: Vec<LogAck>,
}

/// Attempts at one acknowledgement once the pipeline is stopping: after them it is left
/// undone (its entries stay pending and its staging keys in place, both taken up again at the
/// next start), so a Redis that is down does not hold up the exit.
const ATTEMPTS_WHEN_STOPPING: u32 = 3;

/// Runs acknowledgements in order: XACK, then release the staging keys. A connection error is
/// retried with capped backoff (while running; a few times once stopping); a command Redis
/// refuses is counted and not retried. Ends when every sender is gone.
pub(super) async fn acknowledge(
    mut rx: mpsc::Receiver<AckWork>,
    ctl: Client,
    logs: Client,
    def: StreamSource,
    inflight: Arc<Mutex<HashSet<String>>>,
    name: String,
    cancel: CancellationToken,
) {
    let scripts = Scripts::new();
    // Every series exists from the start, at 0, so that rates over them are data.
    for metric in [
        m::LOG_KEYS_REMOVED,
        m::LOGS_WRITTEN_AFTER_TAKE,
        m::LOGS_RECOVERED,
        m::ACK_REFUSED,
    ] {
        metrics::counter!(metric, "pipeline" => name.clone()).increment(0);
    }
    let grace = if def.after_commit == super::config::AfterCommit::Expire {
        def.expire_grace_secs.max(1)
    } else {
        0
    };
    while let Some(work) = rx.recv().await {
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            match ack_once(&work, &ctl, &logs, &def, &scripts, grace, &name).await {
                Ok(()) => {
                    metrics::counter!(m::STREAM_ACKED, "pipeline" => name.clone())
                        .increment(work.ids.len() as u64);
                    break;
                }
                Err(e) => {
                    attempts += cancel.is_cancelled() as u32;
                    if attempts >= ATTEMPTS_WHEN_STOPPING {
                        tracing::warn!(pipeline = %name, error = %e, entries = work.ids.len(), "acknowledgement left undone at shutdown; its entries are delivered again at the next start");
                        break;
                    }
                    tracing::warn!(pipeline = %name, error = %e, retry_in = ?backoff, "acknowledging failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let mut set = inflight.lock().unwrap_or_else(|e| e.into_inner());
        for id in &work.ids {
            set.remove(id);
        }
    }
}

/// One attempt: the XACK, then the staging keys released in one pipeline (with, for each
/// removed log, whether the platform wrote its key again after the take). Err only for a connection
/// error (the whole attempt is repeatable: DEL, EXPIRE and the park script are idempotent).
async fn ack_once(
    work: &AckWork,
    ctl: &Client,
    logs: &Client,
    def: &StreamSource,
    scripts: &Scripts,
    grace: u64,
    name: &str,
) -> std::result::Result<(), Error> {
    // XACK first: once a close is acknowledged it is never delivered again, so its staging key
    // cannot be taken a second time under the same take id (which, were the platform to have
    // written the log again meanwhile, would give other entries the archived rows' identities).
    // A crash between the two leaves the staging key, which the start-up recovery archives
    // again (the same rows) and releases.
    if !work.ids.is_empty() {
        let acked: std::result::Result<u64, Error> = ctl
            .xack(def.stream.as_str(), def.group.as_str(), work.ids.clone())
            .await;
        match acked {
            Ok(_) => {}
            Err(e) if is_connection(&e) => return Err(e),
            // NOGROUP after the stream or group was recreated: nothing pending to acknowledge.
            Err(e) => refused(name, "XACK", &e),
        }
    }
    if !work.logs.is_empty() {
        let mut cmds = Vec::with_capacity(work.logs.len() * 2);
        for log in &work.logs {
            match log {
                LogAck::Remove { staging, key } => {
                    cmds.push(if grace > 0 {
                        Routed::new("EXPIRE", staging, &[Value::from(grace as i64)])
                    } else {
                        Routed::new("DEL", staging, &[])
                    });
                    cmds.push(Routed::new("EXISTS", key, &[]));
                }
                LogAck::Park {
                    staging,
                    overflow,
                    archived,
                } => {
                    let args = [archived.to_string()];
                    cmds.push(evalsha_routed(&scripts.park, &[staging, overflow], &args));
                }
            }
        }
        let mut replies = routed::pipelined(logs, cmds).await.into_iter();
        let mut noscript = false;
        for log in &work.logs {
            let count = |metric: &'static str| {
                metrics::counter!(metric, "pipeline" => name.to_string()).increment(1)
            };
            match log {
                LogAck::Remove { .. } => {
                    let (released, rewritten) = (replies.next(), replies.next());
                    match released {
                        Some(Ok(_)) => count(m::LOG_KEYS_REMOVED),
                        Some(Err(e)) if is_connection(&e) => return Err(e),
                        Some(Err(e)) => refused(name, "releasing a staging key", &e),
                        None => {}
                    }
                    if let Some(Ok(v)) = rewritten {
                        if v.as_u64() == Some(1) {
                            count(m::LOGS_WRITTEN_AFTER_TAKE);
                        }
                    }
                }
                LogAck::Park { .. } => match replies.next() {
                    Some(Ok(_)) => count(m::LOG_KEYS_REMOVED),
                    Some(Err(e)) if e.details().starts_with("NOSCRIPT") => noscript = true,
                    Some(Err(e)) if is_connection(&e) => return Err(e),
                    Some(Err(e)) => refused(name, "keeping a log over the limits", &e),
                    None => {}
                },
            }
        }
        if noscript {
            scripts.load(logs).await?;
            return Err(Error::new(ErrorKind::NotFound, "park script reloaded"));
        }
    }
    Ok(())
}

/// Whether an error is the connection's or the cluster's (worth retrying), not Redis refusing
/// the command: in a Redis Cluster a failover, a primary down or a slot being migrated answer
/// for a while with CLUSTERDOWN, TRYAGAIN, MOVED or ASK (fred follows redirects, but gives up
/// after a few), LOADING, READONLY or MASTERDOWN.
pub(super) fn is_connection(e: &Error) -> bool {
    const TRANSIENT: [&str; 7] = [
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "LOADING",
        "READONLY",
        "MASTERDOWN",
    ];
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::NotFound
            | ErrorKind::Cluster
    ) || TRANSIENT
        .iter()
        .any(|p| e.details().trim_start().starts_with(p))
}

/// A command Redis refused while acknowledging: counted and logged, never retried (it would
/// be refused again, and hold up every acknowledgement behind it).
fn refused(name: &str, what: &str, e: &Error) {
    metrics::counter!(m::ACK_REFUSED, "pipeline" => name.to_string()).increment(1);
    tracing::warn!(pipeline = %name, error = %e, what, "Redis refused an acknowledgement command; not retried");
}

/// Every 5 s: the group's lag and pending entries (XINFO GROUPS) and the oldest pending entry's
/// idle time (XPENDING), as gauges; and the pipeline's stall state from the same figures.
pub(super) async fn watch_group(
    ctl: Client,
    def: StreamSource,
    name: String,
    cancel: CancellationToken,
    stall: Arc<super::stall::Stall>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let info = ctl.xinfo_groups::<Value, _>(def.stream.as_str()).await;
        let stream: std::result::Result<Value, Error> =
            ctl.xinfo_stream(def.stream.as_str(), false, None).await;
        let last = stream.ok().and_then(|v| last_generated_id(&v));
        let figures = info
            .ok()
            .and_then(|v| super::stall::Figures::of(&v, &def.group, last.as_deref()));
        if let Some(f) = &figures {
            metrics::gauge!(m::STREAM_LAG, "pipeline" => name.clone()).set(f.lag as f64);
            metrics::gauge!(m::STREAM_PENDING, "pipeline" => name.clone()).set(f.pending as f64);
        }
        // The stall state; figures of a stream or group that is gone are unknown (the reader
        // creates the group again).
        stall.observe(figures);
        let oldest: std::result::Result<Value, Error> = ctl
            .xpending(def.stream.as_str(), def.group.as_str(), ("-", "+", 1))
            .await;
        let idle_ms = oldest
            .ok()
            .and_then(|v| super::entries::oldest_idle_ms(&v))
            .unwrap_or(0);
        metrics::gauge!(m::STREAM_OLDEST_PENDING, "pipeline" => name.clone())
            .set(idle_ms as f64 / 1000.0);
    }
}

/// `last-generated-id` of an XINFO STREAM reply.
fn last_generated_id(v: &Value) -> Option<String> {
    match v {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|c| c.len() == 2 && c[0].as_str().as_deref() == Some("last-generated-id"))
            .and_then(|c| c[1].as_string()),
        Value::Map(m) => m
            .iter()
            .find_map(|(k, v)| (k.as_str() == Some("last-generated-id")).then(|| v.as_string())?),
        _ => None,
    }
}
