//! Capture: turns what a keyspace read found into rows (alerts, alert events, dead letters).
//! It runs as its own task behind a small queue, so decoding one batch overlaps the Redis round
//! trip of the next.

use std::collections::HashMap;

use bytes::Bytes;
use fred::types::Key;
use tokio::sync::mpsc;

use super::config::KeyspaceSource;
use crate::metrics as m;
use crate::rows::alert::{CapturedAlert, CapturedBy};
use crate::rows::{content_hash, AlertEventRow, DeadLetterRow, Record};

/// What a read found for one key.
pub(super) enum Read {
    /// The value and its remaining TTL in ms.
    Value(Bytes, i64),
    /// The key no longer exists.
    Gone,
    /// Redis refused the read (e.g. the key holds a list).
    Refused(String),
}

/// One batch of reads, with what else happened in it.
pub(super) struct Job {
    /// When the batch was received or scanned (epoch ms).
    pub now: i64,
    /// `event` or `scan`.
    pub by: CapturedBy,
    /// The keys read, each once.
    pub keys: Vec<Key>,
    /// What the read found, one per key.
    pub reads: Vec<Read>,
    /// Every write notification of the batch (a key may appear more than once).
    pub written: Vec<Key>,
    /// Rows already made (lifecycle events).
    pub records: Vec<Record>,
}

/// Turns jobs into rows and pushes them into the channel to ClickHouse.
pub(super) struct Capturer {
    name: String,
    instance: String,
    def: KeyspaceSource,
    tx: mpsc::Sender<Record>,
    counters: Counters,
}

impl Capturer {
    /// A capturer of pipeline `name`.
    pub(super) fn new(
        name: &str,
        instance: &str,
        def: KeyspaceSource,
        tx: mpsc::Sender<Record>,
    ) -> Self {
        Capturer {
            counters: Counters::new(name, &def),
            name: name.to_string(),
            instance: instance.to_string(),
            def,
            tx,
        }
    }

    /// Takes jobs until the queue closes (then every job taken has been pushed) or the channel
    /// to ClickHouse closes.
    pub(super) async fn run(self: std::sync::Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            if !self.finish(job).await {
                break;
            }
        }
    }

    /// Rows of one job, pushed into the channel; false when the channel is closed.
    async fn finish(&self, job: Job) -> bool {
        let Job {
            now,
            by,
            keys,
            reads,
            written,
            mut records,
        } = job;
        let mut hashes: HashMap<&[u8], (u64, i64)> = HashMap::with_capacity(keys.len());
        for (key, read) in keys.iter().zip(reads) {
            let (rec, hash, ttl) = self.capture(key, read, now, by);
            hashes.insert(key.as_bytes(), (hash, ttl));
            records.extend(rec);
        }
        for key in &written {
            let (hash, ttl) = hashes.get(key.as_bytes()).copied().unwrap_or((0, -2));
            records.push(Record::alert_event(
                self.event_row(key, "written", now, hash, ttl),
            ));
        }
        crate::source::send_all(&self.tx, records).await
    }

    /// A lifecycle row.
    pub(super) fn event_row(
        &self,
        key: &Key,
        event: &'static str,
        now: i64,
        hash: u64,
        ttl_ms: i64,
    ) -> AlertEventRow {
        let key = key.as_str_lossy().into_owned();
        AlertEventRow {
            alert_id: self.id_of(&key).to_string(),
            key,
            event,
            event_ms: now,
            content_hash: hash,
            ttl_ms,
        }
    }

    /// Counts a received notification.
    pub(super) fn count_event(&self, op: &str) {
        if let Some((_, c)) = self.counters.events.iter().find(|(e, _)| e == op) {
            c.increment(1);
        }
    }

    fn id_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.def.id_prefix.as_str()).unwrap_or(key)
    }

    /// One key's read, as a row (alert or dead letter) with its content hash and TTL.
    fn capture(
        &self,
        key: &Key,
        read: Read,
        now: i64,
        by: CapturedBy,
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
        let captured = CapturedAlert {
            key: &key_str,
            id_from_key: self.id_of(&key_str),
            raw: &raw,
            ttl_ms,
            captured_at_ms: now,
            captured_by: by,
        };
        let record = match captured.decode() {
            Ok(row) => {
                match by {
                    CapturedBy::Scan => self.counters.captured_scan.increment(1),
                    CapturedBy::Event => self.counters.captured_event.increment(1),
                }
                Record::alert(row)
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
        Record::dead_letter(DeadLetterRow {
            pipeline: self.name.clone(),
            instance: self.instance.clone(),
            key: key.to_string(),
            stream_id: String::new(),
            content_hash: content_hash(&raw),
            raw,
            reason,
            error,
            received_at_ms: now,
        })
    }
}

/// Metric handles of one pipeline, registered once.
struct Counters {
    events: Vec<(String, metrics::Counter)>,
    captured_event: metrics::Counter,
    captured_scan: metrics::Counter,
    gone: metrics::Counter,
}

impl Counters {
    fn new(pipeline: &str, def: &KeyspaceSource) -> Counters {
        let p = pipeline.to_string();
        let events = def
            .write_events
            .iter()
            .chain(&def.lifecycle_events)
            .map(|e| {
                let labels = [("pipeline", p.clone()), ("event", e.clone())];
                (e.clone(), metrics::counter!(m::EVENTS_RECEIVED, &labels))
            })
            .collect();
        let captured = |via: &'static str| metrics::counter!(m::VALUES_CAPTURED, "pipeline" => p.clone(), "via" => via);
        Counters {
            events,
            captured_event: captured("event"),
            captured_scan: captured("scan"),
            gone: metrics::counter!(m::VALUES_GONE, "pipeline" => p.clone(), "reason" => "missing_on_read"),
        }
    }
}
