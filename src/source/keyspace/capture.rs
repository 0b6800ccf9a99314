//! Capture: turns what a keyspace read found into rows (alerts, alert events, dead letters).
//! It runs as its own task behind a small queue, so decoding one batch overlaps the Redis round
//! trip of the next.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use fred::types::Key;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::account::{Account, Outcome};
use super::config::KeyspaceSource;
use super::seen::{fingerprint, Seen};
use crate::metrics as m;
use crate::rows::alert::{CapturedAlert, CapturedBy};
use crate::rows::{content_hash, AlertEventRow, DeadLetterRow, Record};

/// What a read found for one key.
pub(crate) enum Read {
    /// The value and its remaining TTL in ms.
    Value(Bytes, i64),
    /// The key no longer exists.
    Gone,
    /// Redis refused the read (e.g. the key holds a list).
    Refused(String),
    /// A value over `keyspace.max_value_bytes`: its first bytes (that many), its size, its TTL.
    TooLarge(Bytes, u64, i64),
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
pub(crate) struct Capturer {
    name: String,
    instance: String,
    def: KeyspaceSource,
    tx: crate::channel::RecordTx,
    counters: Counters,
    account: Account,
    /// The (key, content) pairs archived by this process, recently.
    seen: Mutex<Seen>,
}

/// What the capture of one read became.
enum Captured {
    /// A new row (alert or dead letter) and the outcome of its notification.
    New(Record, Outcome),
    /// A value archived before.
    Known,
    /// The key was gone.
    Gone,
}

impl Capturer {
    /// A capturer of pipeline `name`.
    pub(super) fn new(
        name: &str,
        instance: &str,
        def: KeyspaceSource,
        tx: crate::channel::RecordTx,
        account: Account,
        remember: usize,
    ) -> Self {
        Capturer {
            counters: Counters::new(name),
            account,
            seen: Mutex::new(Seen::new(remember)),
            name: name.to_string(),
            instance: instance.to_string(),
            def,
            tx,
        }
    }

    /// Takes jobs until the queue closes (then every job taken has been pushed), the channel
    /// to ClickHouse closes, or `abandon` (the drain's time is up) while a job waits for room
    /// in the channel: its notifications are then counted lost (reason `shutdown`).
    pub(super) async fn run(
        self: std::sync::Arc<Self>,
        mut jobs: mpsc::Receiver<Job>,
        abandon: CancellationToken,
    ) {
        while let Some(job) = jobs.recv().await {
            if !self.finish(job, &abandon).await {
                break;
            }
        }
        // Jobs the readers queued before the end: none of their rows went out.
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            self.abandon(&job);
        }
    }

    /// Counts an abandoned job's write notifications lost (reason `shutdown`).
    fn abandon(&self, job: &Job) {
        self.account
            .resolve(Outcome::LostShutdown, job.written.len() as u64);
        super::read::lost_at_shutdown(&self.name, job.written.len() as u64);
    }

    /// Rows of one job, pushed into the channel; false when the channel is closed or the drain
    /// abandoned. Each write notification of the job is resolved in the account once its rows
    /// are in the channel: the last one of each key with what its read found, the earlier ones
    /// as rewritten before the read.
    async fn finish(&self, job: Job, abandon: &CancellationToken) -> bool {
        let n_written = job.written.len() as u64;
        let Job {
            now,
            by,
            keys,
            reads,
            written,
            mut records,
        } = job;
        let mut notified: HashMap<&[u8], u64> = HashMap::with_capacity(written.len());
        for key in &written {
            *notified.entry(key.as_bytes()).or_default() += 1;
        }
        let mut hashes: HashMap<&[u8], (u64, i64)> = HashMap::with_capacity(keys.len());
        let mut tally = [0u64; Outcome::ALL.len()];
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for (key, read) in keys.iter().zip(reads) {
                let (captured, hash, ttl) = self.capture(key, read, now, by, &mut seen);
                hashes.insert(key.as_bytes(), (hash, ttl));
                let outcome = match captured {
                    Captured::New(rec, outcome) => {
                        records.push(rec);
                        outcome
                    }
                    Captured::Known => {
                        if matches!(by, CapturedBy::Scan | CapturedBy::Snapshot) {
                            self.counters.rescan_known.increment(1);
                        }
                        Outcome::AlreadyArchived
                    }
                    Captured::Gone => Outcome::GoneBeforeRead,
                };
                if let Some(n) = notified.get(key.as_bytes()) {
                    tally[outcome as usize] += 1;
                    tally[Outcome::RewrittenBeforeRead as usize] += n - 1;
                }
            }
        }
        for key in &written {
            let (hash, ttl) = hashes.get(key.as_bytes()).copied().unwrap_or((0, -2));
            records.push(Record::alert_event(
                self.event_row(key, "written", now, hash, ttl),
            ));
        }
        drop(hashes);
        tokio::select! {
            biased;
            sent = crate::source::send_all(&self.tx, records) => {
                for (outcome, n) in Outcome::ALL.iter().zip(tally) {
                    self.account.resolve(*outcome, n);
                }
                sent
            }
            _ = abandon.cancelled() => {
                // Some of its rows may have gone out: counted lost all the same (the next
                // start's rescan archives what is still alive).
                self.account.resolve(Outcome::LostShutdown, n_written);
                super::read::lost_at_shutdown(&self.name, n_written);
                false
            }
        }
    }

    /// Values the replication stream (`by` = `Replication`) or a snapshot (`Snapshot`) carried,
    /// in order, each its own write: each becomes a new row unless its (key, content) was
    /// archived already. Every write of the stream is a write of the account, resolved here
    /// (none is ever rewritten before its read: it carries its value), with its `written`
    /// lifecycle row; a snapshot's captures are outside the account, like a rescan's. The rows
    /// go into the channel after `before` and before `after`. False when the channel is closed.
    pub(crate) async fn writes(
        &self,
        writes: Vec<(Key, Read)>,
        by: CapturedBy,
        now: i64,
        mut before: Vec<Record>,
        after: Vec<Record>,
    ) -> bool {
        let stream = by == CapturedBy::Replication;
        if stream {
            self.account.received(writes.len() as u64);
        }
        let mut tally = [0u64; Outcome::ALL.len()];
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for (key, read) in writes {
                let (captured, hash, ttl) = self.capture(&key, read, now, by, &mut seen);
                let outcome = match captured {
                    Captured::New(rec, outcome) => {
                        before.push(rec);
                        outcome
                    }
                    Captured::Known => {
                        if by == CapturedBy::Snapshot {
                            self.counters.rescan_known.increment(1);
                        }
                        Outcome::AlreadyArchived
                    }
                    Captured::Gone => Outcome::GoneBeforeRead,
                };
                if stream {
                    tally[outcome as usize] += 1;
                    before.push(Record::alert_event(
                        self.event_row(&key, "written", now, hash, ttl),
                    ));
                }
            }
        }
        before.extend(after);
        let sent = crate::source::send_all(&self.tx, before).await;
        for (outcome, n) in Outcome::ALL.iter().zip(tally) {
            self.account.resolve(*outcome, n);
        }
        sent
    }

    /// The account of the writes.
    pub(crate) fn account(&self) -> &Account {
        &self.account
    }

    /// A lifecycle row.
    pub(crate) fn event_row(
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

    fn id_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.def.id_prefix.as_str()).unwrap_or(key)
    }

    /// One key's read: a new row (alert or dead letter) unless the pair (key, content) was
    /// archived already, with its content hash and TTL.
    fn capture(
        &self,
        key: &Key,
        read: Read,
        now: i64,
        by: CapturedBy,
        seen: &mut Seen,
    ) -> (Captured, u64, i64) {
        let key_str = key.as_str_lossy();
        let (raw, ttl_ms) = match read {
            Read::Value(raw, ttl) => (raw, ttl),
            Read::Gone => {
                self.counters.gone.increment(1);
                return (Captured::Gone, 0, -2);
            }
            Read::Refused(error) => {
                let row = self.dead_letter(&key_str, Vec::new(), "read_refused", error, now);
                return (Captured::New(row, Outcome::DeadLetter), 0, -2);
            }
            Read::TooLarge(head, size, ttl) => {
                // The hash of its first bytes seeded with its size: two values alike in their
                // first bytes but not in size stay two rows.
                let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&head, size);
                if !seen.insert(fingerprint(key.as_bytes(), hash)) {
                    return (Captured::Known, hash, ttl);
                }
                let row = self.too_large(&key_str, head, size, hash, now);
                return (Captured::New(row, Outcome::DeadLetter), hash, ttl);
            }
        };
        let hash = content_hash(&raw);
        if !seen.insert(fingerprint(key.as_bytes(), hash)) {
            return (Captured::Known, hash, ttl_ms);
        }
        let captured = CapturedAlert {
            key: &key_str,
            id_from_key: self.id_of(&key_str),
            raw: &raw,
            ttl_ms,
            captured_at_ms: now,
            captured_by: by,
        };
        let captured = match captured.decode() {
            Ok(row) => {
                self.counters.captured[by as usize].increment(1);
                Captured::New(Record::alert(row), Outcome::Archived)
            }
            Err(e) => Captured::New(
                self.dead_letter(&key_str, raw.to_vec(), e.reason, e.detail, now),
                Outcome::DeadLetter,
            ),
        };
        (captured, hash, ttl_ms)
    }

    /// Forgets what was archived: ClickHouse lost it (a table dropped and created again).
    pub(super) fn forget(&self) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Pairs remembered now.
    pub(super) fn remembered(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// A value over the limit, as a dead letter of its first bytes, with content hash `hash`.
    fn too_large(&self, key: &str, head: Bytes, size: u64, hash: u64, now: i64) -> Record {
        let error = format!(
            "value of {size} bytes is over keyspace.max_value_bytes = {}; its first {} bytes are kept",
            head.len(),
            head.len()
        );
        let mut row = self.dead_letter_row(key, head.to_vec(), "too_large", error, now);
        row.content_hash = hash;
        self.count_dead(row)
    }

    fn dead_letter(
        &self,
        key: &str,
        raw: Vec<u8>,
        reason: &'static str,
        error: String,
        now: i64,
    ) -> Record {
        self.count_dead(self.dead_letter_row(key, raw, reason, error, now))
    }

    /// Counts and logs a dead letter, as a record.
    fn count_dead(&self, row: DeadLetterRow) -> Record {
        let (key, reason, error) = (&row.key, row.reason, &row.error);
        metrics::counter!(m::DEAD_LETTERS, "pipeline" => self.name.clone(), "reason" => reason)
            .increment(1);
        tracing::debug!(pipeline = %self.name, key, reason, %error, "dead letter");
        Record::dead_letter(row)
    }

    fn dead_letter_row(
        &self,
        key: &str,
        raw: Vec<u8>,
        reason: &'static str,
        error: String,
        now: i64,
    ) -> DeadLetterRow {
        DeadLetterRow {
            pipeline: self.name.clone(),
            instance: self.instance.clone(),
            key: key.to_string(),
            stream_id: String::new(),
            content_hash: content_hash(&raw),
            raw,
            reason,
            error,
            received_at_ms: now,
        }
    }
}

/// Metric handles of one pipeline, registered once.
struct Counters {
    /// By [`CapturedBy`], in the order of its variants.
    captured: [metrics::Counter; 4],
    gone: metrics::Counter,
    rescan_known: metrics::Counter,
}

impl Counters {
    fn new(pipeline: &str) -> Counters {
        let p = pipeline.to_string();
        let captured = |via: &'static str| metrics::counter!(m::VALUES_CAPTURED, "pipeline" => p.clone(), "via" => via);
        Counters {
            captured: [
                captured("event"),
                captured("scan"),
                captured("snapshot"),
                captured("replication"),
            ],
            gone: metrics::counter!(m::VALUES_GONE, "pipeline" => p.clone(), "reason" => "missing_on_read"),
            rescan_known: metrics::counter!(m::RESCAN_KNOWN, "pipeline" => p.clone()),
        }
    }
}
