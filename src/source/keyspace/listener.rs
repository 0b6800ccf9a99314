//! The listener: the subscriber's side of a keyspace pipeline, on a thread of its own. It reads
//! notifications off the subscribed connection, counts them, and puts those of the pipeline's
//! keys into the pipeline's queue (counting what the queue cannot hold); it reconnects and
//! resubscribes when the connection fails or stops answering, then reports it for a rescan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::account::{Account, Outcome};
use super::config::KeyspaceSource;
use super::subscriber::{self, Notification, Subscription, Target};
use crate::metrics as m;

/// Notifications lost, by where.
#[derive(Default)]
pub(super) struct Lost {
    /// The pipeline's queue (`keyspace.subscriber_buffer`) was full: values are read back slower
    /// than they are written.
    pub(super) queue_full: AtomicU64,
}

/// How long the listener lets notifications gather between reads while they keep coming.
const FORWARD_POLL: Duration = Duration::from_millis(1);

/// The subscriber's side: reads notifications off its connection and puts those of the
/// pipeline's keys into the pipeline's queue, counting what it receives and what the queue
/// cannot hold; reconnects (and resubscribes) when the connection fails, then reports it for a
/// rescan.
pub(super) struct Listener {
    name: String,
    target: Target,
    def: KeyspaceSource,
    tx: mpsc::Sender<Notification>,
    lost: Arc<Lost>,
    reconnects: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
    account: Account,
    /// Each subscribed event: its name, whether it carries a value, its received counter.
    events: Vec<(String, bool, metrics::Counter)>,
}

impl Listener {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: &str,
        target: Target,
        def: KeyspaceSource,
        tx: mpsc::Sender<Notification>,
        lost: Arc<Lost>,
        reconnects: Arc<AtomicU64>,
        wake: Arc<tokio::sync::Notify>,
        account: Account,
    ) -> Listener {
        let events = def
            .write_events
            .iter()
            .map(|e| (e, true))
            .chain(def.lifecycle_events.iter().map(|e| (e, false)))
            .map(|(e, write)| {
                let labels = [("pipeline", name.to_string()), ("event", e.clone())];
                (
                    e.clone(),
                    write,
                    metrics::counter!(m::EVENTS_RECEIVED, &labels),
                )
            })
            .collect();
        Listener {
            name: name.to_string(),
            target,
            def,
            tx,
            lost,
            reconnects,
            wake,
            account,
            events,
        }
    }

    /// Until `cancel` or the queue closes.
    ///
    /// After each read it waits [`FORWARD_POLL`] before the next, so that under load one read
    /// takes what a millisecond brought instead of one wake-up per notification (a wake-up
    /// costs more than a notification); idle, the read waits for the next one.
    pub(super) async fn run(self, mut sub: Subscription, cancel: CancellationToken) {
        for reason in ["connection_lost", "ping_timeout"] {
            metrics::counter!(m::SUBSCRIBER_RECONNECTS, "pipeline" => self.name.clone(), "reason" => reason)
                .increment(0);
        }
        let mut backoff = Duration::from_millis(100);
        // Per event: received, and dropped for a full queue, in this read.
        let mut tally = vec![(0u64, 0u64); self.events.len()];
        loop {
            let error = loop {
                let mut closed = false;
                let read = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    read = sub.next_batch(|n| {
                        if !self.def.matches(n.key.as_bytes()) {
                            return;
                        }
                        let Some(i) = self.events.iter().position(|(e, ..)| **e == *n.operation) else {
                            return;
                        };
                        tally[i].0 += 1;
                        match self.tx.try_send(n) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => tally[i].1 += 1,
                            Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                        }
                    }) => read,
                };
                self.count(&mut tally);
                if closed {
                    return;
                }
                if let Err(e) = read {
                    break e;
                }
                backoff = Duration::from_millis(100);
                tokio::time::sleep(FORWARD_POLL).await;
            };
            let reason = subscriber::reason(&error);
            tracing::warn!(pipeline = %self.name, error = %error, reason, "keyevent subscription lost; reconnecting");
            // Counted when the connection is given up, not once it is back: a half-open
            // connection shows within its deadline even while Redis stays unreachable.
            metrics::counter!(m::SUBSCRIBER_RECONNECTS, "pipeline" => self.name.clone(), "reason" => reason)
                .increment(1);
            sub = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match self.target.subscribe().await {
                    Ok(sub) => break sub,
                    Err(e) => {
                        tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?backoff, "resubscribing failed");
                    }
                }
            };
            // Subscribed again: a rescan from now on misses nothing.
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Moves one read's tally into the counters and the account.
    fn count(&self, tally: &mut [(u64, u64)]) {
        let (mut writes, mut dropped_writes, mut dropped) = (0, 0, 0);
        for ((_, write, received), (n, full)) in self.events.iter().zip(tally.iter_mut()) {
            if *n == 0 {
                continue;
            }
            received.increment(*n);
            dropped += *full;
            if *write {
                writes += *n;
                dropped_writes += *full;
            }
            (*n, *full) = (0, 0);
        }
        self.account.received(writes);
        self.account
            .resolve(Outcome::LostBufferOverrun, dropped_writes);
        if dropped > 0 {
            self.lost.queue_full.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}
