//! The loss account of a keyspace pipeline: every write notification the subscriber receives
//! ends in exactly one outcome, so that
//!
//! ```text
//! received = archived + already_archived + rewritten_before_read + gone_before_read
//!          + dead_letter + lost_buffer_overrun + lost_shutdown + unarchivable + pending
//! ```
//!
//! where `received` is `spillway_events_received_total` over the write events, each outcome a
//! series of `spillway_writes_total`, and `pending` (`spillway_writes_pending`) the
//! notifications queued or being read right now (0 at rest). Values the subscriber never heard
//! of (written while it was disconnected) are outside the equation: the rescan that follows
//! each gap captures them (`spillway_values_captured_total{via="scan"}`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics as m;

/// What became of one write notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its read-back found a value not archived before: a new row.
    Archived,
    /// Its read-back found a value this process had already archived (an identical rewrite,
    /// or a value an earlier notification's read had already taken).
    AlreadyArchived,
    /// The same key was written again before the read: the later value is what was read, this
    /// one was overwritten unseen.
    RewrittenBeforeRead,
    /// The key was gone when read (expired, evicted or deleted first).
    GoneBeforeRead,
    /// The value read could not be decoded (or was refused): a dead letter.
    DeadLetter,
    /// Dropped: the notification queue was full.
    LostBufferOverrun,
    /// Dropped: still queued when the graceful shutdown's time to read ran out.
    LostShutdown,
    /// The replication source: a command changed the value without carrying it (`APPEND`,
    /// `INCR`, `RENAME` into the pattern, ...).
    Unarchivable,
}

impl Outcome {
    /// Every outcome.
    pub(crate) const ALL: [Outcome; 8] = [
        Outcome::Archived,
        Outcome::AlreadyArchived,
        Outcome::RewrittenBeforeRead,
        Outcome::GoneBeforeRead,
        Outcome::DeadLetter,
        Outcome::LostBufferOverrun,
        Outcome::LostShutdown,
        Outcome::Unarchivable,
    ];

    /// The `outcome` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Archived => "archived",
            Outcome::AlreadyArchived => "already_archived",
            Outcome::RewrittenBeforeRead => "rewritten_before_read",
            Outcome::GoneBeforeRead => "gone_before_read",
            Outcome::DeadLetter => "dead_letter",
            Outcome::LostBufferOverrun => "lost_buffer_overrun",
            Outcome::LostShutdown => "lost_shutdown",
            Outcome::Unarchivable => "unarchivable",
        }
    }
}

/// The counters of one pipeline's account, registered once and shared by the subscriber, the
/// readers and the capture stage.
#[derive(Clone)]
pub(crate) struct Account {
    outcomes: [metrics::Counter; 8],
    /// The same counts, for the account logged at the end.
    totals: Arc<[AtomicU64; 9]>,
    /// Write notifications received and not yet resolved.
    pending: Arc<AtomicI64>,
    pending_gauge: metrics::Gauge,
}

impl Account {
    /// The account of pipeline `name`.
    pub(crate) fn new(name: &str) -> Account {
        let outcomes = Outcome::ALL.map(|o| {
            metrics::counter!(m::WRITES, "pipeline" => name.to_string(), "outcome" => o.label())
        });
        Account {
            outcomes,
            totals: Arc::default(),
            pending: Arc::default(),
            pending_gauge: metrics::gauge!(m::WRITES_PENDING, "pipeline" => name.to_string()),
        }
    }

    /// `n` write notifications received (queued).
    pub(crate) fn received(&self, n: u64) {
        if n > 0 {
            self.totals[8].fetch_add(n, Ordering::Relaxed);
            self.pending.fetch_add(n as i64, Ordering::Relaxed);
        }
    }

    /// `n` write notifications resolved with `outcome`.
    pub(crate) fn resolve(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.outcomes[outcome as usize].increment(n);
            self.totals[outcome as usize].fetch_add(n, Ordering::Relaxed);
            self.pending.fetch_sub(n as i64, Ordering::Relaxed);
        }
    }

    /// Logs the account of this process's life (at the end of a pipeline).
    pub(crate) fn log(&self, pipeline: &str) {
        let n = |i: usize| self.totals[i].load(Ordering::Relaxed);
        tracing::info!(
            pipeline,
            received = n(8),
            archived = n(0),
            already_archived = n(1),
            rewritten_before_read = n(2),
            gone_before_read = n(3),
            dead_letter = n(4),
            lost_buffer_overrun = n(5),
            lost_shutdown = n(6),
            unarchivable = n(7),
            pending = self.pending.load(Ordering::Relaxed),
            "write notifications account"
        );
    }

    /// Publishes the pending count (`spillway_writes_pending`).
    pub(crate) fn publish(&self) {
        self.pending_gauge
            .set(self.pending.load(Ordering::Relaxed) as f64);
    }
}
