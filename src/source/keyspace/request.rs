//! A batch of notifications to read: the keys written (each once), and the lifecycle rows that
//! need no read; and how its values are handed to the capture stage in jobs, piece by piece,
//! each with the write notifications of its own keys.

use fred::types::Key;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::capture::{Capturer, Job, Read};
use super::config::{KeyspaceSource, LIFECYCLE};
use super::subscriber::Notification;
use crate::rows::alert::CapturedBy;
use crate::rows::{now_ms, Record};

/// The read of one batch of notifications: the keys written (each once) and the rows of
/// the lifecycle events.
///
/// In a Redis Cluster (`cluster`), `del` notifications are set aside in `deleted`: a slot
/// migration removes every key it moved from the old node with a `del` of its own, so a `del`
/// is recorded only once the key is found gone from the cluster.
pub(super) fn request(
    capturer: &Capturer,
    def: &KeyspaceSource,
    batch: &mut Vec<Notification>,
    cluster: bool,
) -> Request {
    let now = now_ms();
    let mut records = Vec::new();
    let mut written: Vec<Key> = Vec::new();
    let mut deleted: Vec<Key> = Vec::new();
    // Only the pipeline's keys are here: the forwarder filtered them (and counted them).
    for ev in batch.drain(..) {
        if def.write_events.iter().any(|e| **e == *ev.operation) {
            written.push(ev.key);
        } else if cluster && &*ev.operation == "del" {
            deleted.push(ev.key);
        } else if let Some((_, event)) = LIFECYCLE.iter().find(|(n, _)| *n == &*ev.operation) {
            records.push(Record::alert_event(
                capturer.event_row(&ev.key, event, now, 0, -2),
            ));
        }
    }
    let mut keys: Vec<Key> = written.clone();
    keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    keys.dedup_by(|a, b| a.as_bytes() == b.as_bytes());
    Request {
        now,
        keys,
        written,
        records,
        deleted,
    }
}

/// A batch of notifications to read the values of.
pub(super) struct Request {
    pub(super) now: i64,
    pub(super) keys: Vec<Key>,
    pub(super) written: Vec<Key>,
    pub(super) records: Vec<Record>,
    /// Keys of `del` notifications not yet known gone (in a cluster only, see [`request`]).
    pub(super) deleted: Vec<Key>,
}

impl Request {
    /// The read of keys found by a rescan: no notifications.
    pub(super) fn scan(keys: Vec<Key>) -> Request {
        Request {
            now: now_ms(),
            keys,
            written: Vec::new(),
            records: Vec::new(),
            deleted: Vec::new(),
        }
    }
}

/// A request being read: the keys before `done` were handed to the capture stage.
pub(super) struct Pending {
    pub(super) req: Request,
    pub(super) by: CapturedBy,
    pub(super) done: usize,
    /// Write notifications of jobs the capture stage did not take (stopping).
    pub(super) lost: u64,
}

/// What a read stopped before handing over (the drain's time ran out, or the capture stage
/// stopped).
pub(super) struct Stopped {
    /// When its notifications were received.
    pub(super) now: i64,
    /// Write notifications not handed over: lost.
    pub(super) written: u64,
    /// Lifecycle rows not handed over (they need no read).
    pub(super) records: Vec<Record>,
}

impl Pending {
    /// The job of the keys from `done` to `end`, read as `reads`: with their write
    /// notifications, and the lifecycle rows in the first job.
    pub(super) fn job(&mut self, end: usize, reads: Vec<Read>) -> Job {
        let keys = self.req.keys[self.done..end].to_vec();
        let written = if end == self.req.keys.len() {
            std::mem::take(&mut self.req.written)
        } else {
            let mine: std::collections::HashSet<&[u8]> =
                keys.iter().map(|k| k.as_bytes()).collect();
            let (mine, rest) = std::mem::take(&mut self.req.written)
                .into_iter()
                .partition(|w| mine.contains(w.as_bytes()));
            self.req.written = rest;
            mine
        };
        self.done = end;
        Job {
            now: self.req.now,
            by: self.by,
            keys,
            reads,
            written,
            records: std::mem::take(&mut self.req.records),
        }
    }

    /// Hands the job of the keys up to `end` to the capture stage; false when it did not take
    /// it (stopped, or `abandon`): its write notifications are then lost.
    pub(super) async fn hand_over(
        &mut self,
        end: usize,
        reads: Vec<Read>,
        jobs: &mpsc::Sender<Job>,
        abandon: &CancellationToken,
    ) -> bool {
        let job = self.job(end, reads);
        let n_written = job.written.len() as u64;
        let sent = tokio::select! {
            biased;
            sent = jobs.send(job) => sent.is_ok(),
            _ = abandon.cancelled() => false,
        };
        if !sent {
            self.lost += n_written;
        }
        sent
    }

    /// What was not handed over.
    pub(super) fn stopped(&mut self) -> Stopped {
        Stopped {
            now: self.req.now,
            written: self.lost + self.req.written.len() as u64,
            records: std::mem::take(&mut self.req.records),
        }
    }
}
