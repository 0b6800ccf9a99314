//! The keyspace source: subscribes to the keyevent channels of a Redis instance, reads each
//! written value back in pipelined batches (GET + PTTL per key, one round trip per batch), and
//! turns values and lifecycle events into rows.
//!
//! Pub/sub cannot be paused. When the channel to ClickHouse is full, this task waits on it, the
//! notifications queue in the client's buffer (`keyspace.subscriber_buffer`), and once that
//! overflows the oldest are dropped and counted in `spillway_events_lost_total`; the values they
//! announced are recovered by the next rescan while their keys live.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scan::ScanType;
use fred::types::KeyspaceEvent;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{notify, Endpoint, Result};
use crate::config::KeyspaceSettings;
use crate::decode::decode_value;
use crate::metrics as m;
use crate::pipeline::{KeyspaceSource, LIFECYCLE};
use crate::rows::{content_hash, now_ms, AlertEventRow, CapturedAlert, DeadLetterRow, Record};

/// A connected, subscribed keyspace pipeline, ready to run.
pub struct Keyspace {
    name: String,
    def: KeyspaceSource,
    endpoint: Endpoint,
    reader: Client,
    subscriber: SubscriberClient,
    events: broadcast::Receiver<KeyspaceEvent>,
    read_batch: usize,
    tx: mpsc::Sender<Record>,
}

/// What a pipelined read found for one key.
enum Read {
    /// The value and its remaining TTL in ms.
    Value(Bytes, i64),
    /// The key no longer exists.
    Gone,
    /// Redis refused the read (e.g. the key holds a list).
    Refused(String),
}

impl Keyspace {
    /// Connects, checks (or sets) `notify-keyspace-events`, and subscribes. Fails fast with a
    /// message that names what is wrong.
    pub async fn connect(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: mpsc::Sender<Record>,
    ) -> Result<Keyspace> {
        let reader = endpoint.client(def.db).await?;
        check_notifications(&reader, &endpoint, &def, settings.configure_notifications).await?;
        let subscriber = endpoint
            .builder(def.db, settings.subscriber_buffer.get())?
            .build_subscriber_client()
            .map_err(endpoint.err("building the subscriber"))?;
        subscriber
            .init()
            .await
            .map_err(endpoint.err("connecting the subscriber"))?;
        let events = subscriber.keyspace_event_rx();
        let channels: Vec<String> = def
            .write_events
            .iter()
            .chain(&def.lifecycle_events)
            .map(|e| format!("__keyevent@{}__:{e}", def.db))
            .collect();
        subscriber
            .subscribe(channels)
            .await
            .map_err(endpoint.err("subscribing to keyevent channels"))?;
        let _resubscribe = subscriber.manage_subscriptions();
        tracing::info!(pipeline = name, endpoint = ?endpoint, pattern = %def.pattern, "keyspace source subscribed");
        Ok(Keyspace {
            name: name.to_string(),
            def,
            endpoint,
            reader,
            subscriber,
            events,
            read_batch: settings.read_batch.get(),
            tx,
        })
    }

    /// A clone of the command client, for readiness checks.
    pub fn reader(&self) -> Client {
        self.reader.clone()
    }

    /// Runs until `cancel`: the start-up rescan (when configured), then the event loop. Every
    /// batch read is pushed into the channel before the task stops.
    pub async fn run(mut self, cancel: CancellationToken) {
        if self.def.rescan_on_start {
            if let Err(e) = self.rescan(&cancel).await {
                tracing::warn!(pipeline = %self.name, error = %e, "start-up rescan failed");
            }
        }
        let mut batch = Vec::with_capacity(self.read_batch);
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                ev = self.events.recv() => ev,
            };
            match first {
                Ok(ev) => batch.push(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lost(n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
            while batch.len() < self.read_batch {
                match self.events.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost(n),
                    Err(_) => break,
                }
            }
            if !self.handle(&mut batch, &cancel).await {
                break;
            }
        }
        let _ = self.subscriber.quit().await;
        let _ = self.reader.quit().await;
        tracing::info!(pipeline = %self.name, "keyspace source stopped");
    }

    fn lost(&self, n: u64) {
        tracing::warn!(pipeline = %self.name, lost = n, "subscriber buffer overrun: notifications lost; the next rescan recovers live keys");
        metrics::counter!(m::EVENTS_LOST, "pipeline" => self.name.clone(), "reason" => "buffer_overrun").increment(n);
    }

    /// Turns one batch of notifications into rows. Returns false when the channel is closed.
    async fn handle(&self, batch: &mut Vec<KeyspaceEvent>, cancel: &CancellationToken) -> bool {
        let now = now_ms();
        let mut records = Vec::with_capacity(batch.len() * 2);
        let mut written: Vec<Key> = Vec::new();
        for ev in batch.drain(..) {
            if !self.def.matches(ev.key.as_bytes()) {
                continue;
            }
            metrics::counter!(m::EVENTS_RECEIVED, "pipeline" => self.name.clone(), "event" => ev.operation.clone()).increment(1);
            if self.def.write_events.contains(&ev.operation) {
                written.push(ev.key);
            } else if let Some((_, event)) = LIFECYCLE.iter().find(|(n, _)| *n == ev.operation) {
                records.push(Record::AlertEvent(
                    self.event_row(&ev.key, event, now, 0, -2),
                ));
            }
        }
        let mut unique: Vec<Key> = written.clone();
        unique.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        unique.dedup_by(|a, b| a.as_bytes() == b.as_bytes());
        let Some(reads) = self.read_with_retry(&unique, cancel).await else {
            return false;
        };
        let mut hashes: HashMap<&[u8], (u64, i64)> = HashMap::with_capacity(unique.len());
        for (key, read) in unique.iter().zip(reads) {
            let (rec, hash, ttl) = self.capture(key, read, now, "event");
            hashes.insert(key.as_bytes(), (hash, ttl));
            records.extend(rec);
        }
        for key in &written {
            let (hash, ttl) = hashes.get(key.as_bytes()).copied().unwrap_or((0, -2));
            records.push(Record::AlertEvent(
                self.event_row(key, "written", now, hash, ttl),
            ));
        }
        self.send(records).await
    }

    fn event_row(
        &self,
        key: &Key,
        event: &'static str,
        now: i64,
        hash: u64,
        ttl_ms: i64,
    ) -> AlertEventRow {
        let key = key.as_str_lossy().into_owned();
        AlertEventRow {
            alert_id: key
                .strip_prefix(self.def.id_prefix.as_str())
                .unwrap_or(&key)
                .to_string(),
            key,
            event,
            event_ms: now,
            content_hash: hash,
            ttl_ms,
        }
    }

    /// One key's read, as a row (alert or dead letter) with its content hash and TTL.
    fn capture(
        &self,
        key: &Key,
        read: Read,
        now: i64,
        by: &'static str,
    ) -> (Option<Record>, u64, i64) {
        let name = self.name.clone();
        let key_str = key.as_str_lossy();
        let (raw, ttl_ms) = match read {
            Read::Value(raw, ttl) => (raw, ttl),
            Read::Gone => {
                metrics::counter!(m::VALUES_GONE, "pipeline" => name, "reason" => "missing_on_read").increment(1);
                return (None, 0, -2);
            }
            Read::Refused(error) => {
                let row = self.dead_letter(&key_str, Vec::new(), "read_refused", error, now);
                return (Some(row), 0, -2);
            }
        };
        let hash = content_hash(&raw);
        let record = match decode_value(&raw) {
            Ok(payload) => {
                metrics::counter!(m::VALUES_CAPTURED, "pipeline" => name, "via" => by).increment(1);
                let id = key_str
                    .strip_prefix(self.def.id_prefix.as_str())
                    .unwrap_or(&key_str);
                Record::Alert(
                    CapturedAlert {
                        key: &key_str,
                        id_from_key: id,
                        raw: &raw,
                        ttl_ms,
                        captured_at_ms: now,
                        captured_by: by,
                    }
                    .into_row(payload),
                )
            }
            Err(e) => self.dead_letter(&key_str, raw.to_vec(), e.reason, e.detail, now),
        };
        (Some(record), hash, ttl_ms)
    }

    fn dead_letter(
        &self,
        key: &str,
        raw: Vec<u8>,
        reason: &'static str,
        error: String,
        now: i64,
    ) -> Record {
        metrics::counter!(m::DEAD_LETTERS, "pipeline" => self.name.clone(), "reason" => reason)
            .increment(1);
        tracing::debug!(pipeline = %self.name, key, reason, %error, "dead letter");
        Record::DeadLetter(DeadLetterRow {
            pipeline: self.name.clone(),
            instance: self.endpoint.instance.clone(),
            key: key.to_string(),
            stream_id: String::new(),
            content_hash: content_hash(&raw),
            raw,
            reason,
            error,
            received_at_ms: now,
        })
    }

    async fn send(&self, records: Vec<Record>) -> bool {
        for r in records {
            if self.tx.send(r).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Reads keys until Redis answers or `cancel`; None when cancelled.
    async fn read_with_retry(&self, keys: &[Key], cancel: &CancellationToken) -> Option<Vec<Read>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.read(keys).await {
                Ok(reads) => return Some(reads),
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, keys = keys.len(), "reading values failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One pipelined round trip: GET and PTTL of every key.
    async fn read(&self, keys: &[Key]) -> std::result::Result<Vec<Read>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let pipeline = self.reader.pipeline();
        for k in keys {
            let () = pipeline.get(k).await?;
            let () = pipeline.pttl(k).await?;
        }
        let results: Vec<std::result::Result<Value, Error>> = pipeline.try_all().await;
        metrics::histogram!(m::READ_DURATION, "pipeline" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        let mut out = Vec::with_capacity(keys.len());
        let mut it = results.into_iter();
        while let (Some(value), Some(ttl)) = (it.next(), it.next()) {
            out.push(match value {
                Ok(Value::Null) => Read::Gone,
                Ok(Value::Bytes(b)) => Read::Value(b, ttl_of(ttl)),
                Ok(Value::String(s)) => Read::Value(s.into_inner(), ttl_of(ttl)),
                Ok(other) => Read::Refused(format!("unexpected reply {:?}", other.kind())),
                Err(e) if is_connection_error(&e) => return Err(e),
                Err(e) => Read::Refused(e.to_string()),
            });
        }
        Ok(out)
    }

    /// SCANs the pattern and captures every live key (rows only, no events): idempotent with
    /// what was already archived.
    pub async fn rescan(
        &self,
        cancel: &CancellationToken,
    ) -> std::result::Result<u64, super::SourceError> {
        let started = Instant::now();
        let mut cursor = "0".to_string();
        let mut seen = 0u64;
        loop {
            let (next, keys): (String, Vec<Key>) = self
                .reader
                .scan_page(
                    cursor.clone(),
                    self.def.pattern.clone(),
                    Some(1000),
                    Some(ScanType::String),
                )
                .await
                .map_err(self.endpoint.err("scanning"))?;
            for chunk in keys.chunks(self.read_batch) {
                let Some(reads) = self.read_with_retry(chunk, cancel).await else {
                    return Ok(seen);
                };
                let now = now_ms();
                let records: Vec<Record> = chunk
                    .iter()
                    .zip(reads)
                    .filter_map(|(k, r)| self.capture(k, r, now, "scan").0)
                    .collect();
                seen += chunk.len() as u64;
                if !self.send(records).await {
                    return Ok(seen);
                }
            }
            if next == "0" || cancel.is_cancelled() {
                break;
            }
            cursor = next;
        }
        tracing::info!(pipeline = %self.name, keys = seen, took = ?started.elapsed(), "rescan done");
        Ok(seen)
    }
}

fn ttl_of(r: std::result::Result<Value, Error>) -> i64 {
    r.ok().and_then(|v| v.as_i64()).unwrap_or(-2)
}

fn is_connection_error(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout | ErrorKind::Backpressure
    )
}

/// Checks `notify-keyspace-events` and, when allowed, adds what is missing.
async fn check_notifications(
    client: &Client,
    endpoint: &Endpoint,
    def: &KeyspaceSource,
    configure: bool,
) -> Result<()> {
    let (_, current): (String, String) = client
        .config_get("notify-keyspace-events")
        .await
        .map_err(endpoint.err("reading notify-keyspace-events (CONFIG GET)"))?;
    let needed = notify::required(def);
    let missing = notify::missing(&current, &needed);
    if missing.is_empty() {
        return Ok(());
    }
    let fixed = notify::fixed(&current, &missing);
    if configure {
        let () = client
            .config_set("notify-keyspace-events", fixed.as_str())
            .await
            .map_err(endpoint.err("setting notify-keyspace-events (CONFIG SET)"))?;
        tracing::warn!(endpoint = ?endpoint, from = %current, to = %fixed, "set notify-keyspace-events");
        return Ok(());
    }
    let url = url::Url::parse(&endpoint.url).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default();
    let port = url.as_ref().and_then(|u| u.port()).unwrap_or(6379);
    Err(Box::new(notify::NotifyError {
        instance: endpoint.instance.clone(),
        addr: format!("{host}:{port}"),
        host,
        port,
        current,
        needed: needed.iter().collect(),
        missing: missing
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        fixed,
    })
    .into())
}
