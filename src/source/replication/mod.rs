//! The replication source (`source = "replication"`): Spillway is a replica of RLS (or of one
//! of its replicas) and archives every value from the replication stream itself, which carries
//! each write with its value, in order: no read-back, no value overwritten unseen.
//!
//! A full resync sends an RDB snapshot first: it is parsed as it arrives, on a thread of its own
//! ([`snapshot`]), and each live key of the pattern is captured like a rescan would. Then the
//! command stream: each chunk read becomes the rows of its writes (`SET` and the rest, see
//! [`commands`]) and deletions (named by their keyevent notifications, see [`names`]), followed
//! by the row of the offset reached ([`offsets`]). A restart asks for the stream after the
//! offset stored with the rows (`PSYNC replid offset`); when the primary's backlog no longer
//! holds it, the full resync that follows recaptures what is alive and the gap is counted
//! (`spillway_events_lost_total{reason="backlog_exceeded"}`).

pub(crate) mod commands;
pub(crate) mod config;
pub(crate) mod crc64;
pub(crate) mod input;
pub(crate) mod link;
pub(crate) mod lzf;
pub(crate) mod names;
pub(crate) mod offsets;
pub(crate) mod packed;
pub(crate) mod rdb;
mod snapshot;
pub(crate) mod values;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::types::Key;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KeyspaceSettings;
use crate::metrics as m;
use crate::rows::alert::CapturedBy;
use crate::rows::{AlertEventRow, Record};
use crate::source::keyspace::capture::{Capturer, Read};
use crate::source::keyspace::liveness::Liveness;
use crate::source::keyspace::subscriber::Target;
use crate::source::keyspace::values::Dial;
use crate::source::{Endpoint, Result, SourceError};
use commands::Effect;
use config::ReplicationSource;
use link::{Link, Sync};
use names::Names;
use offsets::Position;

/// Most time between two acknowledgements to the primary (Redis's replicas: one a second).
const ACK_EVERY: Duration = Duration::from_secs(1);

/// Silence after which the link is taken for dead (Redis's `repl-timeout`; a primary PINGs its
/// replicas every 10 s, `repl-ping-replica-period`).
const SILENCE: Duration = Duration::from_secs(60);

/// Least time between two offset rows while the stream flows.
const STORE_EVERY: Duration = Duration::from_millis(100);

/// Jobs the capture task may hold while the stream is read on.
const JOB_QUEUE: usize = 4;

/// What the capture task does, in the order given: rows of writes, or records as they are.
enum Job {
    /// [`Capturer::writes`] of these, then `after`.
    Writes {
        writes: Vec<(Key, Read)>,
        by: CapturedBy,
        now: i64,
        after: Vec<Record>,
    },
    /// Records into the channel (an offset row and its acknowledgement).
    Records(Vec<Record>),
}

/// The capture task: decodes and encodes the rows of each job and puts them into the channel,
/// while the stream task reads and parses the next chunk. One task, one queue: rows, offset
/// rows and acknowledgements enter the channel in the order of the stream.
async fn capture(
    capturer: Arc<Capturer>,
    tx: crate::channel::RecordTx,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let open = match job {
            Job::Writes {
                writes,
                by,
                now,
                after,
            } => capturer.writes(writes, by, now, Vec::new(), after).await,
            Job::Records(records) => crate::source::send_all(&tx, records).await,
        };
        if !open {
            break;
        }
    }
}

/// A replication pipeline, connected.
pub(crate) struct Replication {
    name: String,
    def: ReplicationSource,
    endpoint: Endpoint,
    dial: Dial,
    capturer: Arc<Capturer>,
    tx: crate::channel::RecordTx,
    max_value: usize,
    /// The lifecycle subscriber's target and the names it hears (none without lifecycle events).
    names: Option<(Target, Arc<Names>)>,
    /// The link opened at start, and what PSYNC answered.
    first: Option<(Link, Sync)>,
    /// Where the stream stands (stored in ClickHouse, then as read).
    at: Option<Position>,
    /// The offset whose rows are committed (set by the acknowledgements of the channel).
    committed: Arc<AtomicU64>,
    /// Whether the link is synchronised now (readiness).
    up: Arc<AtomicBool>,
    /// The capture task's queue (while `run` runs).
    jobs: Option<mpsc::Sender<Job>>,
}

impl Replication {
    /// Reads the stored position, connects as a replica and asks for the stream from there;
    /// subscribes to the lifecycle events. Fails fast with a message naming what is wrong.
    pub(crate) async fn connect(
        name: &str,
        def: ReplicationSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: crate::channel::RecordTx,
        ch: clickhouse::Client,
    ) -> Result<Replication> {
        if endpoint.cluster() {
            return Err(SourceError::Config(format!(
                "pipeline {name}: the replication source follows one server; fix: point \
                 instance {:?} at one node (a redis:// URL), one pipeline per primary",
                endpoint.instance
            )));
        }
        let dial = Dial::new(&endpoint.url, def.db).map_err(endpoint.err("parsing the URL"))?;
        let at = offsets::load(&ch, name, &endpoint.instance)
            .await
            .map_err(|e| {
                SourceError::Config(format!(
                    "pipeline {name}: reading the stored replication offset from ClickHouse: {e}"
                ))
            })?;
        let from = at.as_ref().map(|p| (p.replid.as_str(), p.offset));
        let first = Link::open(&dial, &def.replica_name, from)
            .await
            .map_err(endpoint.err("starting replication (REPLCONF, PSYNC)"))?;
        let kdef = def.keyspace();
        let (capturer, _account) =
            crate::source::keyspace::capture_stage(name, &endpoint, &kdef, settings, tx.clone());
        let names = if def.lifecycle_events.is_empty() {
            None
        } else {
            let liveness = Liveness {
                ping_after: settings.subscriber_ping,
                timeout: settings.subscriber_timeout,
            };
            let target = Target::new(dial.clone(), &def.lifecycle_events, liveness);
            // Subscribed once now: a user without the permission fails at start.
            target
                .subscribe()
                .await
                .map_err(endpoint.err("subscribing to the lifecycle keyevents"))?;
            Some((target, Arc::new(Names::default())))
        };
        tracing::info!(pipeline = name, endpoint = ?endpoint, pattern = %def.pattern, sync = ?first.1, stored = ?at, "replication source connected");
        Ok(Replication {
            name: name.to_string(),
            max_value: settings.max_value_bytes.get(),
            def,
            endpoint,
            dial,
            capturer,
            tx,
            names,
            at,
            first: Some(first),
            committed: Arc::default(),
            up: Arc::new(AtomicBool::new(true)),
            jobs: None,
        })
    }

    /// True while the link is up (the readiness check of the pipeline's instance).
    pub(crate) fn up(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    /// Follows the stream until `cancel`, reconnecting (with a partial resync from where it
    /// stands) when the link fails. On `cancel` the rows of what was read are in the channel,
    /// with the offset they reach.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        self.jobs = Some(jobs);
        let captured = tokio::spawn(capture(self.capturer.clone(), self.tx.clone(), queue));
        let listener = self.names.as_ref().map(|(target, names)| {
            let def = self.def.clone();
            tokio::spawn(names.clone().listen(
                target.clone(),
                move |k| def.matches(k),
                cancel.clone(),
                self.name.clone(),
            ))
        });
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            let link = match self.first.take() {
                Some(l) => Ok(l),
                None => {
                    let from = self.at.as_ref().map(|p| (p.replid.as_str(), p.offset));
                    tokio::select! {
                        l = Link::open(&self.dial, &self.def.replica_name, from) => l,
                        _ = cancel.cancelled() => break,
                    }
                }
            };
            let result = match link {
                Ok((link, sync)) => {
                    backoff = Duration::from_millis(100);
                    self.up.store(true, Ordering::Relaxed);
                    self.follow(link, sync, &cancel).await
                }
                Err(e) => Err(e),
            };
            self.up.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, endpoint = ?self.endpoint, error = %e, "replication link failed; resuming from the offset read");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if let Some(at) = &self.at {
            // The offset of everything read, after its rows.
            let _ = self.queue(Job::Records(vec![self.offset_row(at)])).await;
        }
        self.jobs = None;
        let _ = captured.await;
        if let Some(l) = listener {
            let _ = l.await;
        }
        self.capturer.account().log(&self.name);
    }

    /// Hands `job` to the capture task; false when it has stopped (the channel closed).
    async fn queue(&self, job: Job) -> bool {
        match &self.jobs {
            Some(q) => q.send(job).await.is_ok(),
            None => false,
        }
    }

    fn offset_row(&self, at: &Position) -> Record {
        offsets::record(&self.name, &self.endpoint.instance, at)
    }

    /// One connection's life: the snapshot of a full resync, then the stream until `cancel`
    /// (Ok) or an error.
    async fn follow(
        &mut self,
        mut link: Link,
        sync: Sync,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), fred::error::Error> {
        let syncs = |kind: &'static str| {
            metrics::counter!(m::REPLICATION_SYNCS, "pipeline" => self.name.clone(), "kind" => kind)
                .increment(1)
        };
        match sync {
            Sync::Full { replid, offset } => {
                syncs("full");
                // Asked to continue from a position (stored, or read by this process before
                // the link broke) and answered with a snapshot: the stream in between is gone.
                if let Some(old) = &self.at {
                    let gap = offset.saturating_sub(old.offset);
                    tracing::warn!(pipeline = %self.name, stored = ?old, %replid, offset, gap_bytes = gap, "the primary no longer holds the stream from the stored offset (repl-backlog-size): full resync; what was written and gone in between is lost and counted");
                    metrics::counter!(m::EVENTS_LOST, "pipeline" => self.name.clone(), "reason" => "backlog_exceeded").increment(1);
                    metrics::counter!(m::REPLICATION_GAP, "pipeline" => self.name.clone())
                        .increment(gap);
                }
                link = snapshot::load(self, link, cancel).await?;
                let at = Position {
                    replid,
                    offset,
                    db: u64::MAX,
                };
                let committed = self.committed.clone();
                let ack = Record::Ack(Box::new(move || committed.store(offset, Ordering::Relaxed)));
                if !self
                    .queue(Job::Records(vec![self.offset_row(&at), ack]))
                    .await
                {
                    return Ok(());
                }
                self.at = Some(at);
            }
            Sync::Partial { replid } => {
                syncs("partial");
                if let Some(at) = &mut self.at {
                    at.replid = replid;
                    // Stored after its rows, or read by this process and its rows in the
                    // channel: what the primary is told we have until the next commit.
                    self.committed.fetch_max(at.offset, Ordering::Relaxed);
                }
            }
        }
        self.stream(link, cancel).await
    }

    /// The command stream: each chunk read becomes rows, then its offset's row.
    async fn stream(
        &mut self,
        mut link: Link,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), fred::error::Error> {
        let offset_gauge = metrics::gauge!(m::REPLICATION_OFFSET, "pipeline" => self.name.clone());
        let committed_gauge =
            metrics::gauge!(m::REPLICATION_COMMITTED, "pipeline" => self.name.clone());
        let mut ack = tokio::time::interval(ACK_EVERY);
        ack.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stored_at = tokio::time::Instant::now();
        let mut stored = self.at.as_ref().map(|a| a.offset).unwrap_or(0);
        let mut heard = tokio::time::Instant::now();
        loop {
            let mut chunk = Chunk::default();
            let at = self.at.as_mut().expect("a position after a sync");
            while let Some((args, used)) = link.command()? {
                at.offset += used as u64;
                for effect in commands::effects(&args, |k| self.def.matches(k)) {
                    match effect {
                        Effect::Select(db) => at.db = db,
                        Effect::GetAck => chunk.get_ack = true,
                        _ if at.db != u64::from(self.def.db) => {}
                        e => chunk.effects.push(e),
                    }
                }
            }
            let at = at.clone();
            offset_gauge.set(at.offset as f64);
            // The offset row (and the acknowledgement that marks it committed) at most every
            // STORE_EVERY: one more insert per batch, not a row per chunk; the ACK tick brings
            // the loop round to store the last one.
            let store = at.offset != stored && stored_at.elapsed() >= STORE_EVERY;
            if !chunk.effects.is_empty() || store {
                if !self.push(chunk.effects, &at, store).await {
                    return Ok(());
                }
                if store {
                    stored = at.offset;
                    stored_at = tokio::time::Instant::now();
                }
            }
            if chunk.get_ack {
                link.ack(self.committed.load(Ordering::Relaxed)).await?;
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                read = link.read() => {
                    read?;
                    heard = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(heard + SILENCE) => {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        format!("nothing from the primary for {SILENCE:?} (it PINGs every 10 s)"),
                    ));
                }
                _ = ack.tick() => {
                    self.capturer.account().publish();
                    let committed = self.committed.load(Ordering::Relaxed);
                    committed_gauge.set(committed as f64);
                    link.ack(committed).await?;
                }
            }
        }
    }

    /// The rows of `effects` into the channel, then (with `store`) the offset row of `at` and
    /// the acknowledgement that marks it committed. False when the channel is closed.
    async fn push(&self, effects: Vec<Effect>, at: &Position, store: bool) -> bool {
        let now = crate::rows::now_ms();
        let mut writes: Vec<(Key, Read)> = Vec::new();
        let mut deleted: Vec<Bytes> = Vec::new();
        let mut unarchivable = 0;
        for e in effects {
            match e {
                Effect::Write { key, value, ttl } => {
                    writes.push((Key::from(key), self.read(value, ttl.ms_at(now))));
                }
                Effect::Restore { key, payload, ttl } => {
                    let read = match rdb::parse_dump(&payload) {
                        Ok(v) => self.value(v, ttl.ms_at(now)),
                        Err(e) => Read::Refused(format!("RESTORE payload: {e}")),
                    };
                    writes.push((Key::from(key), read));
                }
                Effect::Delete(key) => deleted.push(key),
                Effect::Unarchivable { key, command } => {
                    tracing::debug!(pipeline = %self.name, key = %String::from_utf8_lossy(&key), %command, "a change without its value");
                    metrics::counter!(m::REPLICATION_UNARCHIVABLE, "pipeline" => self.name.clone(), "command" => command).increment(1);
                    unarchivable += 1;
                    let account = self.capturer.account();
                    account.received(1);
                    account.resolve(crate::source::keyspace::account::Outcome::Unarchivable, 1);
                }
                Effect::Select(_) | Effect::GetAck => {}
            }
        }
        // The writes of the stream, as the keyspace source counts its write notifications: the
        // account's outcomes add up to this.
        metrics::counter!(m::EVENTS_RECEIVED, "pipeline" => self.name.clone(), "event" => "set")
            .increment((writes.len() + unarchivable) as u64);
        let mut after = Vec::with_capacity(deleted.len() + 2);
        if !deleted.is_empty() {
            let names = match &self.names {
                Some((_, names)) => {
                    names
                        .name(&deleted, tokio::time::Instant::now() + names::WAIT)
                        .await
                }
                None => Vec::new(),
            };
            for (key, event) in deleted.iter().zip(names) {
                let key = String::from_utf8_lossy(key).into_owned();
                let alert_id = key
                    .strip_prefix(self.def.id_prefix.as_str())
                    .unwrap_or(&key)
                    .to_string();
                after.push(Record::alert_event(AlertEventRow {
                    key,
                    alert_id,
                    event,
                    event_ms: now,
                    content_hash: 0,
                    ttl_ms: -2,
                }));
            }
        }
        if store {
            after.push(self.offset_row(at));
            let (committed, offset) = (self.committed.clone(), at.offset);
            after.push(Record::Ack(Box::new(move || {
                committed.store(offset, Ordering::Relaxed)
            })));
        }
        self.queue(Job::Writes {
            writes,
            by: CapturedBy::Replication,
            now,
            after,
        })
        .await
    }

    /// What a write carried, as a read of it: over `keyspace.max_value_bytes`, its first bytes.
    fn read(&self, value: Bytes, ttl_ms: i64) -> Read {
        if value.len() > self.max_value {
            let size = value.len() as u64;
            return Read::TooLarge(value.slice(..self.max_value), size, ttl_ms);
        }
        Read::Value(value, ttl_ms)
    }

    /// A snapshot's (or a RESTORE's) value, as a read of it: a string is a value, any other
    /// type refused as a read of it would be.
    fn value(&self, value: rdb::Value, ttl_ms: i64) -> Read {
        match value {
            rdb::Value::String(b) => self.read(b, ttl_ms),
            rdb::Value::List(_) => Read::Refused("the key holds a list, not a string".into()),
            rdb::Value::Skipped(t) => Read::Refused(format!("the key holds a {t}, not a string")),
        }
    }
}

/// What one chunk of the stream did.
#[derive(Default)]
struct Chunk {
    effects: Vec<Effect>,
    get_ack: bool,
}
