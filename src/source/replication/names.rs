//! Naming the deletions of the replication stream. A primary propagates an expiry, an eviction
//! and a `DEL` alike, as `DEL` (or `UNLINK`): the stream says that a key went, not why. The
//! keyevent notifications say why (`expired`, `evicted`, `del`) and carry only the key, so a
//! subscriber of its own (on the lifecycle events only, no read-back) hears them, and each
//! deletion of the stream takes the name of its key's notification. The two arrive on two
//! connections within about a millisecond of each other, in either order: a deletion whose
//! notification has not arrived waits for it a little ([`WAIT`]), and without one (the
//! subscriber down, or a notification lost) is recorded as `deleted`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::source::keyspace::config::LIFECYCLE;
use crate::source::keyspace::subscriber::Target;

/// How long a chunk of the stream waits for the notifications of its deletions.
pub(crate) const WAIT: Duration = Duration::from_millis(250);

/// Notifications kept waiting for their deletion at most this long.
const KEEP: Duration = Duration::from_secs(30);

/// The name of a deletion without a notification.
pub(crate) const UNNAMED: &str = "deleted";

/// Notifications heard and not yet matched with a deletion of the stream.
#[derive(Default)]
pub(crate) struct Names {
    heard: Mutex<Heard>,
    arrived: Notify,
    /// Whether the subscriber is subscribed now: when it is not, nothing is waited for.
    up: AtomicBool,
}

#[derive(Default)]
struct Heard {
    by_key: HashMap<Bytes, VecDeque<&'static str>>,
    /// In arrival order, for forgetting the old ones.
    order: VecDeque<(Instant, Bytes)>,
}

impl Names {
    /// A notification of `event` for `key`.
    pub(crate) fn heard(&self, key: Bytes, event: &str) {
        let Some((_, name)) = LIFECYCLE.iter().find(|(e, _)| *e == event) else {
            return;
        };
        let now = Instant::now();
        let mut h = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        h.by_key.entry(key.clone()).or_default().push_back(name);
        h.order.push_back((now, key));
        while let Some((at, _)) = h.order.front() {
            if now.duration_since(*at) < KEEP {
                break;
            }
            let (_, old) = h.order.pop_front().expect("a front");
            if let Some(q) = h.by_key.get_mut(&old) {
                q.pop_front();
                if q.is_empty() {
                    h.by_key.remove(&old);
                }
            }
        }
        drop(h);
        self.arrived.notify_waiters();
    }

    /// Takes the name of `key`'s oldest notification not yet matched.
    fn take(&self, key: &[u8]) -> Option<&'static str> {
        let mut h = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let q = h.by_key.get_mut(key)?;
        let name = q.pop_front();
        if q.is_empty() {
            h.by_key.remove(key);
        }
        name
    }

    /// The names of the deletions of `keys`, in order: each its notification's, waiting for
    /// those not arrived until `deadline` while the subscriber is up, else [`UNNAMED`].
    pub(crate) async fn name(
        &self,
        keys: &[Bytes],
        deadline: tokio::time::Instant,
    ) -> Vec<&'static str> {
        let mut names: Vec<Option<&'static str>> = keys.iter().map(|k| self.take(k)).collect();
        while names.iter().any(Option::is_none) && self.up.load(Ordering::Relaxed) {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            for (n, k) in names.iter_mut().zip(keys) {
                if n.is_none() {
                    *n = self.take(k);
                }
            }
            if names.iter().all(Option::is_some) {
                break;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
        names.into_iter().map(|n| n.unwrap_or(UNNAMED)).collect()
    }

    /// Keeps a subscription to `target` (the lifecycle events) until `cancel`, telling each
    /// notification of a key `matches` accepts; reconnects after a second when it fails.
    pub(crate) async fn listen(
        self: Arc<Self>,
        target: Target,
        matches: impl Fn(&[u8]) -> bool,
        cancel: CancellationToken,
        pipeline: String,
    ) {
        while !cancel.is_cancelled() {
            match target.subscribe().await {
                Ok(mut sub) => {
                    self.up.store(true, Ordering::Relaxed);
                    loop {
                        let batch = sub.next_batch(|n| {
                            if matches(n.key.as_bytes()) {
                                self.heard(n.key.into_bytes(), &n.operation);
                            }
                        });
                        tokio::select! {
                            r = batch => if let Err(e) = r {
                                tracing::warn!(pipeline, error = %e, "lifecycle subscriber lost; deletions are recorded as `deleted` until it is back");
                                break;
                            },
                            _ = cancel.cancelled() => break,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pipeline, error = %e, "lifecycle subscriber not connected; retrying in 1 s");
                }
            }
            self.up.store(false, Ordering::Relaxed);
            self.arrived.notify_waiters();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    /// Marks the subscriber up or down (tests).
    #[cfg(test)]
    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deletion_takes_its_notification_in_either_order() {
        let names = Arc::new(Names::default());
        names.set_up(true);
        names.heard(Bytes::from_static(b"alert:1"), "expired");
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        let late = {
            let names = names.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                names.heard(Bytes::from_static(b"alert:2"), "evicted");
            })
        };
        let got = names
            .name(
                &[
                    Bytes::from_static(b"alert:1"),
                    Bytes::from_static(b"alert:2"),
                ],
                soon,
            )
            .await;
        late.await.unwrap();
        assert_eq!(got, ["expired", "evicted"]);
        // Each notification names one deletion; a deletion without one waits until the
        // deadline, then is `deleted`.
        let t0 = Instant::now();
        let got = names
            .name(
                &[Bytes::from_static(b"alert:1")],
                tokio::time::Instant::now() + Duration::from_millis(50),
            )
            .await;
        assert_eq!(got, [UNNAMED]);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        names.heard(Bytes::from_static(b"alert:3"), "del");
        names.set_up(false);
        let got = names
            .name(
                &[
                    Bytes::from_static(b"alert:3"),
                    Bytes::from_static(b"alert:4"),
                ],
                tokio::time::Instant::now() + Duration::from_secs(5),
            )
            .await;
        assert_eq!(
            got,
            ["deleted", UNNAMED],
            "no wait while the subscriber is down"
        );
    }
}
