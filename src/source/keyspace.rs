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
use fred::types::scripts::Script;
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
    script: Script,
    counters: Counters,
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
            counters: Counters::new(name, &def),
            def,
            endpoint,
            reader,
            subscriber,
            events,
            read_batch: settings.read_batch.get(),
            tx,
            script: Script::from_lua(READ_SCRIPT),
        })
    }

    /// A clone of the command client, for readiness checks.
    pub fn reader(&self) -> Client {
        self.reader.clone()
    }

    /// Runs until `cancel`: the start-up rescan (when configured), then the event loop. Every
    /// batch read is pushed into the channel before the task stops.
    pub async fn run(mut self, cancel: CancellationToken) {
        // A gap is a stretch of time in which notifications may have been missed: before the
        // subscription (at start), a buffer overrun, or simply a while (`rescan_interval_secs`).
        // It is closed by a rescan as soon as the backlog of notifications is small.
        let mut gap = self.def.rescan_on_start;
        let period = Duration::from_secs(self.def.rescan_interval_secs.max(1));
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let periodic = self.def.rescan_interval_secs > 0;
        let mut batch = Vec::with_capacity(self.read_batch);
        loop {
            if gap && self.events.len() < self.read_batch {
                gap = false;
                match self.rescan(&cancel).await {
                    Ok(_) if cancel.is_cancelled() || self.tx.is_closed() => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(pipeline = %self.name, error = %e, "rescan failed; retrying at the next tick");
                    }
                }
            }
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = every.tick(), if periodic => {
                    gap = true;
                    continue;
                }
                ev = self.events.recv() => ev,
            };
            match first {
                Ok(ev) => batch.push(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    gap |= self.lost(n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
            while batch.len() < self.read_batch {
                match self.events.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => gap |= self.lost(n),
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

    /// Counts lost notifications; returns true (a gap to close).
    fn lost(&self, n: u64) -> bool {
        tracing::warn!(pipeline = %self.name, lost = n, "subscriber buffer overrun: notifications lost; a rescan follows once the backlog is small");
        metrics::counter!(m::EVENTS_LOST, "pipeline" => self.name.clone(), "reason" => "buffer_overrun").increment(n);
        true
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
            self.counters.event(&ev.operation);
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
        let key_str = key.as_str_lossy();
        let (raw, ttl_ms) = match read {
            Read::Value(raw, ttl) => (raw, ttl),
            Read::Gone => {
                self.counters.gone.increment(1);
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
                match by {
                    "scan" => self.counters.captured_scan.increment(1),
                    _ => self.counters.captured_event.increment(1),
                }
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

    /// One round trip: a read-only script returns the value and PTTL of every key, a
    /// consistent snapshot of both.
    async fn read(&self, keys: &[Key]) -> std::result::Result<Vec<Read>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let reply: Value = self
            .script
            .evalsha_with_reload(&self.reader, keys.to_vec(), ())
            .await?;
        self.counters
            .read_duration
            .record(started.elapsed().as_secs_f64());
        let Value::Array(items) = reply else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "read script: unexpected reply",
            ));
        };
        if items.len() != keys.len() * 2 {
            return Err(Error::new(
                ErrorKind::Protocol,
                "read script: wrong reply length",
            ));
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut it = items.into_iter();
        while let (Some(value), Some(ttl)) = (it.next(), it.next()) {
            let ttl = ttl.as_i64().unwrap_or(-2);
            out.push(match value {
                Value::Null => Read::Gone,
                Value::Bytes(b) => Read::Value(b, ttl),
                Value::String(s) => Read::Value(s.into_inner(), ttl),
                Value::Array(err) => {
                    Read::Refused(err.first().and_then(|e| e.as_string()).unwrap_or_default())
                }
                other => Read::Refused(format!("unexpected reply {:?}", other.kind())),
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

/// Value and PTTL of every key in KEYS: `false` when missing, `{error}` when it is not a string.
const READ_SCRIPT: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.pcall('GET', key)
  if type(v) == 'table' and v.err then v = { v.err } end
  out[2 * i - 1] = v
  out[2 * i] = redis.call('PTTL', key)
end
return out
"#;

/// Metric handles of one pipeline, registered once.
struct Counters {
    events: Vec<(String, metrics::Counter)>,
    captured_event: metrics::Counter,
    captured_scan: metrics::Counter,
    gone: metrics::Counter,
    read_duration: metrics::Histogram,
}

impl Counters {
    fn new(pipeline: &str, def: &KeyspaceSource) -> Counters {
        let p = pipeline.to_string();
        Counters {
            events: def
                .write_events
                .iter()
                .chain(&def.lifecycle_events)
                .map(|e| {
                    let c = metrics::counter!(m::EVENTS_RECEIVED, "pipeline" => p.clone(), "event" => e.clone());
                    (e.clone(), c)
                })
                .collect(),
            captured_event: metrics::counter!(m::VALUES_CAPTURED, "pipeline" => p.clone(), "via" => "event"),
            captured_scan: metrics::counter!(m::VALUES_CAPTURED, "pipeline" => p.clone(), "via" => "scan"),
            gone: metrics::counter!(m::VALUES_GONE, "pipeline" => p.clone(), "reason" => "missing_on_read"),
            read_duration: metrics::histogram!(m::READ_DURATION, "pipeline" => p),
        }
    }

    fn event(&self, op: &str) {
        if let Some((_, c)) = self.events.iter().find(|(e, _)| e == op) {
            c.increment(1);
        }
    }
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
