//! The stream source (trade close): reads `trade_results` with a consumer group, turns closed and
//! rejected trades into rows, moves their execution logs from RLS, and acknowledges only after
//! ClickHouse committed: the acknowledgement travels through the channel behind the rows
//! ([`Record::Ack`]) and the writer runs it after the commit. Then the log key is removed from
//! RLS and the entry XACKed. A crash anywhere before that leaves the entry pending, and it is
//! read again at the next start (rows are idempotent: no duplicate under `FINAL`).
//!
//! Backpressure: the next XREADGROUP is issued only after the previous entries' rows entered the
//! bounded channel, so when ClickHouse is slow the entries wait in Redis.

mod ack;
pub(crate) mod config;
pub(crate) mod entries;
mod group;
pub(crate) mod stall;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics as m;
use crate::rows::{now_ms, Record};
use crate::source::{Endpoint, Result};
use ack::{acknowledge, watch_group, AckWork};
use config::StreamSource;
use entries::{parse_entries, Entry, LogRead, RecentMoves};
use stall::Stall;

/// A connected stream pipeline.
pub(crate) struct Stream {
    name: String,
    def: StreamSource,
    endpoint: Endpoint,
    reader: Client,
    ctl: Client,
    logs: Client,
    tx: mpsc::Sender<Record>,
    inflight: Arc<Mutex<HashSet<String>>>,
    stall: Arc<Stall>,
    /// Times the consumer group was created again (its own pending list went with it).
    regrouped: AtomicU64,
}

impl Stream {
    /// Connects to the stream's and the logs' instances and creates the group when missing.
    pub(crate) async fn connect(
        name: &str,
        def: StreamSource,
        endpoint: Endpoint,
        log_endpoint: Endpoint,
        tx: mpsc::Sender<Record>,
    ) -> Result<Stream> {
        let reader = endpoint.client(def.db).await?;
        let ctl = endpoint.client(def.db).await?;
        let logs = log_endpoint.client(def.log_db).await?;
        let created: std::result::Result<(), Error> = ctl
            .xgroup_create(
                def.stream.as_str(),
                def.group.as_str(),
                def.start_id.as_str(),
                true,
            )
            .await;
        match created {
            Ok(()) => {
                tracing::info!(pipeline = name, stream = %def.stream, group = %def.group, "consumer group created")
            }
            Err(e) if e.details().contains("BUSYGROUP") => {}
            Err(e) => {
                return Err(endpoint.err("creating the consumer group (XGROUP CREATE)")(
                    e,
                ))
            }
        }
        tracing::info!(pipeline = name, endpoint = ?endpoint, stream = %def.stream, consumer = %def.consumer, "stream source ready");
        metrics::counter!(m::STREAM_GROUP_RECREATED, "pipeline" => name.to_string()).increment(0);
        let stall = Arc::new(Stall::new(name, Duration::from_secs(def.stall_after_secs)));
        Ok(Stream {
            name: name.to_string(),
            def,
            endpoint,
            reader,
            ctl,
            logs,
            tx,
            inflight: Default::default(),
            stall,
            regrouped: AtomicU64::new(0),
        })
    }

    /// The pipeline's stall state, for the readiness check.
    pub(crate) fn stall(&self) -> Arc<Stall> {
        self.stall.clone()
    }

    /// Clients for readiness checks.
    pub(crate) fn clients(&self) -> [Client; 2] {
        [self.ctl.clone(), self.logs.clone()]
    }

    /// Runs until `cancel`: first the entries this consumer left pending, then those idle at
    /// dead consumers, then new ones. The acknowledger task goes to `ackers`, which the caller
    /// awaits after the writer drained.
    pub(crate) async fn run(self, cancel: CancellationToken, ackers: &TaskTracker) {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        ackers.spawn(acknowledge(
            ack_rx,
            self.ctl.clone(),
            self.logs.clone(),
            self.def.clone(),
            self.inflight.clone(),
            self.name.clone(),
        ));
        let lag = tokio::spawn(watch_group(
            self.ctl.clone(),
            self.def.clone(),
            self.name.clone(),
            cancel.clone(),
            self.stall.clone(),
        ));
        let mut closes = match self.subscribe_closes(&cancel).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(pipeline = %self.name, error = %e, "pub/sub close channel not subscribed; the stream alone moves logs");
                mpsc::channel(1).1
            }
        };
        let (jobs, queue) = mpsc::channel(2);
        let builder = tokio::spawn(
            RowBuilder {
                name: self.name.clone(),
                def: self.def.clone(),
                instance: self.endpoint.instance.clone(),
                tx: self.tx.clone(),
                ack_tx: ack_tx.clone(),
                recent: RecentMoves::new(100_000),
            }
            .run(queue),
        );
        let mut own = Some("0".to_string());
        let claim_every = Duration::from_secs(self.def.claim_idle_secs.max(1));
        let mut next_claim = tokio::time::Instant::now();
        let mut regrouped = 0;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if self.regrouped.load(Ordering::Relaxed) != regrouped {
                // A new group: this consumer has no pending list in it any more.
                regrouped = self.regrouped.load(Ordering::Relaxed);
                own = None;
            }
            let mut read = Vec::new();
            while read.len() < self.def.count as usize {
                match closes.try_recv() {
                    Ok(e) => read.push(e),
                    Err(_) => break,
                }
            }
            if read.is_empty() {
                read = if let Some(from) = own.take() {
                    // This consumer's own pending list, paged by the last id seen.
                    match self.xreadgroup(&from, None, &cancel).await {
                        Some(entries) => {
                            own = entries.last().map(|e| e.id.clone());
                            entries
                        }
                        None => {
                            own = Some(from);
                            Vec::new()
                        }
                    }
                } else if tokio::time::Instant::now() >= next_claim {
                    next_claim = tokio::time::Instant::now() + claim_every;
                    self.claim(&cancel).await
                } else {
                    self.xreadgroup(">", Some(self.def.block_ms), &cancel)
                        .await
                        .unwrap_or_default()
                };
            }
            if read.is_empty() {
                continue;
            }
            if !self.handle(read, &jobs, &cancel).await {
                break;
            }
        }
        drop(jobs);
        let _ = builder.await;
        lag.abort();
        tracing::info!(pipeline = %self.name, "stream source stopped");
    }

    /// One XREADGROUP; entries already in flight here are left out. None after an error
    /// (logged, with a pause; the entries stay in Redis) or on cancel.
    async fn xreadgroup(
        &self,
        id: &str,
        block: Option<u64>,
        cancel: &CancellationToken,
    ) -> Option<Vec<Entry>> {
        let d = &self.def;
        let call = self.reader.xreadgroup::<Value, _, _, _, _>(
            d.group.as_str(),
            d.consumer.as_str(),
            Some(d.count),
            block,
            false,
            d.stream.as_str(),
            id,
        );
        let reply = tokio::select! {
            biased;
            _ = cancel.cancelled() => return None,
            r = call => r,
        };
        match reply {
            Ok(v) => {
                self.stall.read_ok();
                Some(self.fresh(parse_entries(v)))
            }
            Err(e) if group::is_gone(&e) => {
                self.regroup(cancel).await;
                None
            }
            Err(e) => {
                self.stall.read_failed(&e.to_string());
                tracing::warn!(pipeline = %self.name, error = %e, "XREADGROUP failed; retrying");
                pause(cancel, Duration::from_millis(500)).await;
                None
            }
        }
    }

    /// Creates the consumer group again after a read found it gone; after an error, logged
    /// and paused, the next read tries again.
    async fn regroup(&self, cancel: &CancellationToken) {
        let created = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = group::recreate(&self.ctl, &self.def, &self.name) => r,
        };
        match created {
            Ok(_) => {
                self.regrouped.fetch_add(1, Ordering::Relaxed);
                self.stall.recreated();
            }
            Err(e) => {
                self.stall
                    .read_failed(&format!("NOGROUP, and XGROUP CREATE failed: {e}"));
                tracing::warn!(pipeline = %self.name, error = %e, "the consumer group is gone and creating it again failed; retrying");
                pause(cancel, Duration::from_millis(500)).await;
            }
        }
    }

    /// XAUTOCLAIM of entries idle longer than `claim_idle_secs` (consumers that died).
    async fn claim(&self, cancel: &CancellationToken) -> Vec<Entry> {
        let d = &self.def;
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let reply: std::result::Result<Value, Error> = self
                .ctl
                .xautoclaim(
                    d.stream.as_str(),
                    d.group.as_str(),
                    d.consumer.as_str(),
                    d.claim_idle_secs * 1000,
                    cursor.as_str(),
                    Some(d.count),
                    false,
                )
                .await;
            let Ok(Value::Array(mut parts)) = reply else {
                match reply {
                    Err(e) if group::is_gone(&e) => self.regroup(cancel).await,
                    Err(e) => {
                        self.stall.read_failed(&e.to_string());
                        tracing::warn!(pipeline = %self.name, error = %e, "XAUTOCLAIM failed");
                    }
                    Ok(_) => {}
                }
                break;
            };
            if parts.len() < 2 {
                break;
            }
            let entries = parts.swap_remove(1);
            cursor = parts[0].as_string().unwrap_or_else(|| "0-0".into());
            let claimed = parse_entries(Value::Array(vec![Value::Array(vec![
                Value::from(d.stream.as_str()),
                entries,
            ])]));
            if !claimed.is_empty() {
                metrics::counter!(m::STREAM_CLAIMED, "pipeline" => self.name.clone())
                    .increment(claimed.len() as u64);
            }
            out.extend(self.fresh(claimed));
            if cursor == "0-0" || out.len() as u64 >= d.count || cancel.is_cancelled() {
                break;
            }
        }
        out
    }

    /// Subscribes to the pub/sub close channel (when configured): each message becomes a
    /// `closed` entry without a stream id, queued (at most `count` * 20; beyond, dropped and
    /// counted: pub/sub is at-most-once, the stream is the reliable path).
    async fn subscribe_closes(
        &self,
        cancel: &CancellationToken,
    ) -> std::result::Result<mpsc::Receiver<Entry>, crate::source::SourceError> {
        let (tx, rx) = mpsc::channel((self.def.count as usize * 20).max(1));
        if self.def.pubsub_channel.is_empty() {
            return Ok(rx);
        }
        let sub = self
            .endpoint
            .builder(self.def.db, 4096)?
            .build_subscriber_client()
            .map_err(self.endpoint.err("building the close subscriber"))?;
        sub.init()
            .await
            .map_err(self.endpoint.err("connecting the close subscriber"))?;
        sub.subscribe(self.def.pubsub_channel.as_str())
            .await
            .map_err(self.endpoint.err("subscribing to the close channel"))?;
        let _resubscribe = sub.manage_subscriptions();
        let mut messages = sub.message_rx();
        let (name, cancel) = (self.name.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = messages.recv() => m,
                };
                let raw = match msg {
                    Ok(m) => match m.value {
                        Value::Bytes(b) => b,
                        Value::String(s) => s.into_inner(),
                        _ => continue,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!(m::PUBSUB_CLOSES_DROPPED, "pipeline" => name.clone())
                            .increment(n);
                        continue;
                    }
                    Err(_) => break,
                };
                metrics::counter!(m::PUBSUB_CLOSES, "pipeline" => name.clone()).increment(1);
                if tx.try_send(entries::close_message(raw)).is_err() {
                    metrics::counter!(m::PUBSUB_CLOSES_DROPPED, "pipeline" => name.clone())
                        .increment(1);
                }
            }
            let _ = sub.quit().await;
        });
        Ok(rx)
    }

    /// Leaves out entries already sent and not yet acknowledged.
    fn fresh(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .into_iter()
            .filter(|e| !inflight.contains(&e.id))
            .collect()
    }

    /// Reads the logs a batch of entries moves and hands both to the row builder; false when
    /// the pipeline is stopping.
    async fn handle(
        &self,
        entries: Vec<Entry>,
        jobs: &mpsc::Sender<Job>,
        cancel: &CancellationToken,
    ) -> bool {
        let now = now_ms();
        let mut keys: Vec<String> = entries
            .iter()
            .filter_map(|e| e.log_key(&self.def))
            .collect();
        keys.sort();
        keys.dedup();
        let Some(logs) = self.read_logs(&keys, cancel).await else {
            return false;
        };
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.extend(
                entries
                    .iter()
                    .filter(|e| !e.id.is_empty())
                    .map(|e| e.id.clone()),
            );
        }
        let logs = keys.into_iter().zip(logs).collect();
        jobs.send(Job { entries, logs, now }).await.is_ok()
    }

    /// Reads the logs (LIST or STRING) of `keys`, retrying with capped backoff; None on cancel
    /// (the entries stay pending and are read again at the next start).
    async fn read_logs(&self, keys: &[String], cancel: &CancellationToken) -> Option<Vec<LogRead>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match read_logs(&self.logs, keys).await {
                Ok(logs) => return Some(logs),
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?backoff, "reading execution logs failed; retrying");
                    pause(cancel, backoff).await;
                    if cancel.is_cancelled() {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// One LRANGE per key, pipelined (most logs are lists; Redis has no empty list, so an empty
/// reply is a missing key); then a GET of each key that is not a list, and the TYPE of any that
/// is no string either. Plain commands, not a script: a script copies every entry into a Lua
/// string and back, which cost Redis about as much as the rest of the move.
async fn read_logs(client: &Client, keys: &[String]) -> std::result::Result<Vec<LogRead>, Error> {
    let lists = client.pipeline();
    for key in keys {
        let () = lists.lrange(key.as_str(), 0, -1).await?;
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut not_lists = Vec::new();
    for (i, reply) in lists.try_all::<Value>().await.into_iter().enumerate() {
        out.push(match reply {
            Ok(Value::Array(items)) if items.is_empty() => LogRead::Missing,
            Ok(Value::Array(items)) => entries::list_log(items),
            Ok(Value::Null) => LogRead::Missing,
            Err(e) if is_wrong_type(&e) => {
                not_lists.push(i);
                LogRead::Missing
            }
            Err(e) => return Err(e),
            Ok(other) => return Err(unexpected("LRANGE", &other)),
        });
    }
    if not_lists.is_empty() {
        return Ok(out);
    }
    let strings = client.pipeline();
    for &i in &not_lists {
        let () = strings.get(keys[i].as_str()).await?;
    }
    let mut others = Vec::new();
    for (&i, reply) in not_lists.iter().zip(strings.try_all::<Value>().await) {
        out[i] = match reply {
            Ok(Value::Null) => LogRead::Missing,
            Ok(Value::Bytes(b)) => LogRead::Str(b),
            Ok(Value::String(s)) => LogRead::Str(s.into_inner()),
            Err(e) if is_wrong_type(&e) => {
                others.push(i);
                LogRead::Missing
            }
            Err(e) => return Err(e),
            Ok(other) => return Err(unexpected("GET", &other)),
        };
    }
    for i in others {
        out[i] = match client.r#type::<String, _>(keys[i].as_str()).await?.as_str() {
            "none" => LogRead::Missing,
            kind => LogRead::Other(kind.to_string()),
        };
    }
    Ok(out)
}

fn is_wrong_type(e: &Error) -> bool {
    e.details().starts_with("WRONGTYPE")
}

fn unexpected(command: &str, reply: &Value) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("unexpected reply to {command}: {:?}", reply.kind()),
    )
}

/// A batch read from Redis: the entries and the logs they move, by key.
struct Job {
    entries: Vec<Entry>,
    logs: HashMap<String, LogRead>,
    now: i64,
}

/// Turns jobs into rows followed by their acknowledgement, in a task of its own, so that
/// building the rows of one batch overlaps reading the next.
struct RowBuilder {
    name: String,
    def: StreamSource,
    instance: String,
    tx: mpsc::Sender<Record>,
    ack_tx: mpsc::UnboundedSender<AckWork>,
    recent: RecentMoves,
}

impl RowBuilder {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let work = entries::rows(
                &self.name,
                &self.def,
                &self.instance,
                job.entries,
                &job.logs,
                &mut self.recent,
                job.now,
            );
            let ack = AckWork {
                ids: work.ids,
                logs: work.logs,
            };
            let to = self.ack_tx.clone();
            let mut records = work.records;
            records.push(Record::Ack(Box::new(move || {
                let _ = to.send(ack);
            })));
            if !crate::source::send_all(&self.tx, records).await {
                return;
            }
        }
    }
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
