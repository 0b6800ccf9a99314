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
mod moves;
pub(crate) mod stall;
mod take;

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
use crate::source::{acl, Endpoint, Result};
use ack::{acknowledge, watch_group, AckWork};
use config::StreamSource;
use entries::{parse_entries, Entry, RecentMoves};
use moves::{Ctx, Taken};
use stall::Stall;
pub(crate) use take::{side_key, OVERFLOW, STAGING};
use take::{LogRead, Scripts};

/// Acknowledgements waiting for the acknowledger, at most: past that the row builder waits, and
/// with it the reading of new entries.
const ACK_QUEUE: usize = 64;

/// A connected stream pipeline.
pub(crate) struct Stream {
    name: String,
    def: StreamSource,
    endpoint: Endpoint,
    reader: Client,
    ctl: Client,
    logs: Client,
    tx: crate::channel::RecordTx,
    inflight: Arc<Mutex<HashSet<String>>>,
    scripts: Scripts,
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
        tx: crate::channel::RecordTx,
    ) -> Result<Stream> {
        let reader = endpoint.client(def.db).await?;
        let ctl = endpoint.client(def.db).await?;
        // Every keyed command on RLS goes through `routed` (see `Endpoint::routed_client`).
        let logs = log_endpoint.routed_client(def.log_db, None).await?;
        let scripts = Scripts::new();
        // Every permission of both roles is tried before failing, so one start lists them all.
        let (mut on_logs, mut on_stream) = (Vec::new(), Vec::new());
        let (log_key, side_key) = acl::roles::log_keys(&def);
        if let Err(e) = scripts.load(&logs).await {
            let rule = format!("{log_key} {side_key}");
            if !acl::note(&mut on_logs, &e, "SCRIPT LOAD", "+script|load", &rule) {
                return Err(log_endpoint.err("loading the log scripts (SCRIPT LOAD)")(e));
            }
        }
        on_logs.extend(acl::run(&logs, &acl::roles::logs(&def, scripts.take.sha1())).await);
        let stream_key = format!("~{}", def.stream);
        match group::create(&ctl, &def).await {
            Ok(true) => {
                tracing::info!(pipeline = name, stream = %def.stream, group = %def.group, "consumer group created")
            }
            Ok(false) => {}
            Err(e)
                if acl::note(
                    &mut on_stream,
                    &e,
                    "XGROUP CREATE",
                    "+xgroup|create",
                    &stream_key,
                ) => {}
            Err(e) => {
                return Err(endpoint.err("creating the consumer group (XGROUP CREATE)")(
                    e,
                ))
            }
        }
        on_stream.extend(acl::run(&ctl, &acl::roles::stream(&def)).await);
        if !def.pubsub_channel.is_empty() {
            on_stream.extend(acl::probe_subscribe(&endpoint, def.db, &def.pubsub_channel).await?);
        }
        let refused: Vec<acl::AclError> = [(&log_endpoint, on_logs), (&endpoint, on_stream)]
            .into_iter()
            .filter_map(|(e, r)| acl::verdict(e, r).err())
            .collect();
        if !refused.is_empty() {
            return Err(crate::source::SourceError::Acl(refused.into()));
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
            scripts,
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
        let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
        ackers.spawn(acknowledge(
            ack_rx,
            self.ctl.clone(),
            self.logs.clone(),
            self.def.clone(),
            self.inflight.clone(),
            self.name.clone(),
            cancel.clone(),
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
                logs: self.logs.clone(),
                cancel: cancel.clone(),
            }
            .run(queue),
        );
        drop(ack_tx);
        if !self.recover(&jobs, &cancel).await {
            drop(jobs);
            let _ = builder.await;
            lag.abort();
            return;
        }
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

    /// Takes the logs a batch of entries moves and hands both to the row builder; false when
    /// the pipeline is stopping.
    async fn handle(
        &self,
        entries: Vec<Entry>,
        jobs: &mpsc::Sender<Job>,
        cancel: &CancellationToken,
    ) -> bool {
        let now = now_ms();
        let mut taken: Vec<Taken> = entries
            .iter()
            .filter_map(|e| {
                let key = e.log_key(&self.def)?;
                let prefix = &self.def.log_key_prefix;
                Some(Taken::new(key, prefix, e.take.clone(), e.id.clone()))
            })
            .collect();
        taken.sort_by(|a, b| a.staging.cmp(&b.staging));
        taken.dedup_by(|a, b| a.staging == b.staging);
        let Some(reads) = self.take_logs(&taken, cancel).await else {
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
        let logs = taken
            .into_iter()
            .zip(reads)
            .map(|(t, r)| (t.take_id.clone(), (t, r)))
            .collect();
        let job = Job {
            entries,
            logs,
            orphans: Vec::new(),
            now,
        };
        jobs.send(job).await.is_ok()
    }

    /// Takes the logs (see [`take`]), retrying with capped backoff; None on cancel (the
    /// entries stay pending and are read again at the next start; a log already taken is taken
    /// again from its staging key).
    async fn take_logs(&self, taken: &[Taken], cancel: &CancellationToken) -> Option<Vec<LogRead>> {
        let pairs: Vec<(String, String)> = taken
            .iter()
            .map(|t| (t.key.clone(), t.staging.clone()))
            .collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            let d = &self.def;
            let read = take::take_logs(
                &self.logs,
                &self.scripts,
                &pairs,
                d.log_page_entries,
                d.log_max_bytes,
            );
            match read.await {
                Ok(logs) => return Some(logs),
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?backoff, "taking execution logs failed; retrying");
                    pause(cancel, backoff).await;
                    if cancel.is_cancelled() {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// At start: logs left staged by an earlier run (a crash between a take and its commit, or
    /// a take for a pub/sub close, which nobody delivers again) are archived and released. A
    /// staging key whose close is still pending in the group is left to that close, which
    /// takes it again when it is delivered. False when the pipeline is stopping.
    async fn recover(&self, jobs: &mpsc::Sender<Job>, cancel: &CancellationToken) -> bool {
        let staged = match take::staged(&self.logs, &self.def.log_key_prefix).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(pipeline = %self.name, error = %e, "looking for staged execution logs failed; they are looked for again at the next start");
                return true;
            }
        };
        let mut orphans = Vec::new();
        for staging in staged {
            let Some((key, take_id)) = take::parse_staging(&staging, &self.def.log_key_prefix)
            else {
                continue;
            };
            if self.pending(&take_id).await {
                continue;
            }
            let prefix = &self.def.log_key_prefix;
            orphans.push(Taken::new(key, prefix, take_id, String::new()));
        }
        if orphans.is_empty() {
            return true;
        }
        tracing::warn!(pipeline = %self.name, logs = orphans.len(), "archiving execution logs left staged by an earlier run");
        for chunk in orphans.chunks(self.def.count as usize) {
            let Some(reads) = self.take_logs(chunk, cancel).await else {
                return false;
            };
            let job = Job {
                entries: Vec::new(),
                logs: HashMap::new(),
                orphans: chunk.iter().cloned().zip(reads).collect(),
                now: now_ms(),
            };
            if jobs.send(job).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Whether the stream entry `id` is pending in the group (its close will be delivered again).
    async fn pending(&self, id: &str) -> bool {
        if !id.contains('-') || id.starts_with("ps-") {
            return false;
        }
        let reply: std::result::Result<Value, Error> = self
            .ctl
            .xpending(
                self.def.stream.as_str(),
                self.def.group.as_str(),
                (id, id, 1),
            )
            .await;
        matches!(reply, Ok(Value::Array(rows)) if !rows.is_empty())
    }
}

/// A batch read from Redis: the entries and the logs taken for them (by take id), or logs
/// found staged at start.
struct Job {
    entries: Vec<Entry>,
    logs: HashMap<String, (Taken, LogRead)>,
    orphans: Vec<(Taken, LogRead)>,
    now: i64,
}

/// Turns jobs into rows followed by their acknowledgement, in a task of its own, so that
/// building the rows of one batch overlaps reading the next. A LIST log longer than a page is
/// read here, page after page, each page's rows sent before the next is read.
struct RowBuilder {
    name: String,
    def: StreamSource,
    instance: String,
    tx: crate::channel::RecordTx,
    ack_tx: mpsc::Sender<AckWork>,
    recent: RecentMoves,
    logs: Client,
    cancel: CancellationToken,
}

impl RowBuilder {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let ctx = Ctx {
                name: &self.name,
                instance: &self.def.log_instance,
                def: &self.def,
                now: job.now,
            };
            let mut work = entries::rows(
                &ctx,
                &self.instance,
                job.entries,
                job.logs,
                job.orphans,
                &mut self.recent,
            );
            if !crate::source::send_all(&self.tx, std::mem::take(&mut work.records)).await {
                return;
            }
            for (cursor, trade) in std::mem::take(&mut work.more) {
                match self.read_pages(cursor, trade, &ctx).await {
                    Some(ack) => work.logs.push(ack),
                    None => return,
                }
            }
            // Room in the acknowledgement queue first: when the acknowledger is behind, this
            // waits, and so does the reading of new entries.
            let Ok(permit) = self.ack_tx.clone().reserve_owned().await else {
                return;
            };
            let ack = AckWork {
                ids: work.ids,
                logs: work.logs,
            };
            let record = Record::Ack(Box::new(move || {
                permit.send(ack);
            }));
            if !crate::source::send_all(&self.tx, vec![record]).await {
                return;
            }
        }
    }

    /// Reads the rest of a LIST log page by page, sending each page's rows; then its trade's
    /// row with the entries moved. None when stopping (the entry stays pending, the staging
    /// key in place: both are taken up again at the next start).
    async fn read_pages(
        &self,
        mut cursor: moves::Cursor,
        trade: Option<crate::rows::trade::TradeRow>,
        ctx: &Ctx<'_>,
    ) -> Option<moves::LogAck> {
        while !cursor.done() {
            let to = cursor.page_end(&self.def);
            let mut backoff = Duration::from_millis(100);
            let items = loop {
                let read = take::read_page(&self.logs, &cursor.taken.staging, cursor.next, to);
                match read.await {
                    Ok(items) => break items,
                    Err(e) => {
                        tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?backoff, "reading an execution log page failed; retrying");
                        pause(&self.cancel, backoff).await;
                        if self.cancel.is_cancelled() {
                            return None;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            };
            let mut records = Vec::with_capacity(items.len());
            cursor.consume(&items, ctx, &mut records);
            if !crate::source::send_all(&self.tx, records).await {
                return None;
            }
        }
        let mut records = Vec::new();
        if let Some(mut t) = trade {
            t.set_log(crate::rows::trade::LogState::Moved, cursor.next as u32);
            records.push(Record::trade(t));
        }
        let ack = cursor.finish(ctx, &mut records);
        crate::source::send_all(&self.tx, records)
            .await
            .then_some(ack)
    }
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
