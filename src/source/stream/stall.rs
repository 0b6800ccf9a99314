//! Whether a stream pipeline is stalled: work waits and nothing moves.
//!
//! - Work waits when the consumer group has entries not yet delivered (lag) or delivered and not
//!   acknowledged (pending), or when reading the stream keeps failing.
//! - Progress is an entry read and acknowledged: seen in the group's figures, which
//!   [`watch_group`](super::ack::watch_group) polls, as a rise of `entries-read` minus
//!   `pending` (entries delivered and since acknowledged) or a fall of `pending`. A recreated
//!   group (the stream or the group was gone) counts as progress too: the pipeline repaired
//!   itself.
//! - Stalled: work has waited for `stall_after_secs` with no progress. While nothing waits the
//!   clock stands still, so work arriving after an idle hour is not stalled at once; it starts
//!   at the first poll (every 5 s) that sees work waiting, so a stall is declared between
//!   `stall_after_secs` and that plus 5 s after it began, never before.
//!
//! The figures are the group's, not this process's: another consumer of the same group making
//! progress counts as progress.

use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::Value;
use tokio::time::Instant;

use crate::metrics as m;

/// One poll of the consumer group's figures (XINFO GROUPS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Figures {
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// Entries delivered to the group so far (`entries-read`; none before the first read).
    pub entries_read: Option<u64>,
}

impl Figures {
    /// The figures of `group` in an XINFO GROUPS reply; None when the group is not there. With
    /// the stream's `last-generated-id`, a group whose `last-delivered-id` is that id has no
    /// lag whatever `lag` says (Redis 7.0 keeps reporting a lag after a failover or a slot
    /// migration of the stream, with nothing left to deliver).
    pub(super) fn of(reply: &Value, group: &str, last_generated: Option<&str>) -> Option<Figures> {
        let Value::Array(groups) = reply else {
            return None;
        };
        groups.iter().find_map(|g| {
            let Value::Array(kv) = g else { return None };
            let get = |key: &str| {
                kv.chunks(2)
                    .find(|c| c.len() == 2 && c[0].as_str().as_deref() == Some(key))
                    .map(|c| &c[1])
            };
            if get("name")?.as_str().as_deref() != Some(group) {
                return None;
            }
            let num = |key| get(key).and_then(Value::as_u64);
            let delivered = get("last-delivered-id").and_then(Value::as_string);
            let caught_up = last_generated.is_some() && delivered.as_deref() == last_generated;
            Some(Figures {
                lag: if caught_up {
                    0
                } else {
                    num("lag").unwrap_or(0)
                },
                pending: num("pending").unwrap_or(0),
                entries_read: num("entries-read"),
            })
        })
    }

    /// Entries delivered to the group and since acknowledged (or claimed away).
    fn done(&self) -> u64 {
        self.entries_read.unwrap_or(0).saturating_sub(self.pending)
    }
}

/// The stall state of one stream pipeline, shared by its reader, its group watcher and the
/// readiness check.
pub(crate) struct Stall {
    name: String,
    after: Duration,
    state: Mutex<State>,
}

struct State {
    /// The later of the last progress and the time work started waiting.
    since: Instant,
    /// The last figures polled; None when they could not be read.
    last: Option<Figures>,
    /// Since when, and why, reading the stream fails; None while it works.
    failing: Option<(Instant, String)>,
}

impl Stall {
    /// A pipeline that has just started: no work seen waiting yet.
    pub(super) fn new(name: &str, after: Duration) -> Stall {
        metrics::gauge!(m::PIPELINE_STALLED, "pipeline" => name.to_string()).set(0.0);
        Stall {
            name: name.to_string(),
            after,
            state: Mutex::new(State {
                since: Instant::now(),
                last: None,
                failing: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A poll of the group's figures (None: they could not be read).
    pub(super) fn observe(&self, now: Option<Figures>) {
        {
            let mut s = self.state();
            if let Some(f) = now {
                let moved = s
                    .last
                    .is_some_and(|l| f.done() > l.done() || f.pending < l.pending);
                // Work seen waiting for the first time starts the clock now (not at the last
                // poll that saw none): a stall is never declared early.
                let was_waiting = s.last.is_some_and(|l| l.lag + l.pending > 0);
                if moved || f.lag + f.pending == 0 || !was_waiting {
                    s.since = Instant::now();
                }
            }
            s.last = now;
        }
        let _ = self.publish();
    }

    /// A read of the stream (XREADGROUP or XAUTOCLAIM) failed with `error`.
    pub(super) fn read_failed(&self, error: &str) {
        let mut s = self.state();
        match &mut s.failing {
            Some((_, why)) => *why = error.to_string(),
            None => s.failing = Some((Instant::now(), error.to_string())),
        }
    }

    /// A read of the stream succeeded.
    pub(super) fn read_ok(&self) {
        let mut s = self.state();
        if s.failing.is_some() {
            s.failing = None;
        }
    }

    /// The consumer group was recreated: the old figures mean nothing any more, and the
    /// pipeline moves again.
    pub(super) fn recreated(&self) {
        let mut s = self.state();
        s.last = None;
        s.failing = None;
        s.since = Instant::now();
    }

    /// Ok, or why the pipeline is stalled.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let s = self.state();
        let now = Instant::now();
        if let Some((from, why)) = &s.failing {
            let failing = now.duration_since(*from);
            if failing >= self.after {
                return Err(format!(
                    "stalled: reading the stream has failed for {} s: {why}",
                    failing.as_secs()
                ));
            }
        }
        let idle = now.duration_since(s.since);
        match s.last {
            Some(f) if f.lag + f.pending > 0 && idle >= self.after => Err(format!(
                "stalled: no entry acknowledged for {} s while {} wait (lag {}, pending {})",
                idle.as_secs(),
                f.lag + f.pending,
                f.lag,
                f.pending
            )),
            _ => Ok(()),
        }
    }

    /// Sets the pipeline's stalled gauge from [`check`](Self::check); returns its outcome.
    pub(crate) fn publish(&self) -> std::result::Result<(), String> {
        let verdict = self.check();
        metrics::gauge!(m::PIPELINE_STALLED, "pipeline" => self.name.clone())
            .set(if verdict.is_err() { 1.0 } else { 0.0 });
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(lag: u64, pending: u64, entries_read: Option<u64>) -> Option<Figures> {
        Some(Figures {
            lag,
            pending,
            entries_read,
        })
    }

    async fn pass(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_only_while_work_waits_without_progress() {
        let s = Stall::new("t", Duration::from_secs(60));
        // Idle for an hour: not stalled, and work arriving then is not stalled at once.
        s.observe(figures(0, 0, Some(10)));
        pass(3600).await;
        s.observe(figures(0, 0, Some(10)));
        s.observe(figures(5, 3, Some(13)));
        pass(30).await;
        assert_eq!(s.check(), Ok(()));
        // Entries acknowledged (entries-read - pending rises): progress.
        s.observe(figures(0, 3, Some(18)));
        pass(59).await;
        s.observe(figures(0, 3, Some(18)));
        assert_eq!(s.check(), Ok(()));
        pass(1).await;
        s.observe(figures(0, 3, Some(18)));
        let why = s.check().unwrap_err();
        assert!(why.contains("no entry acknowledged for 60 s"), "{why}");
        assert!(why.contains("3 wait (lag 0, pending 3)"), "{why}");
        // Pending falls: progress again.
        s.observe(figures(0, 1, None));
        assert_eq!(s.check(), Ok(()));
        // Nothing waits any more: never stalled, however long.
        s.observe(figures(0, 0, None));
        pass(600).await;
        s.observe(figures(0, 0, None));
        assert_eq!(s.check(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_reads_stall_and_a_recreated_group_recovers() {
        let s = Stall::new("t", Duration::from_secs(10));
        s.observe(figures(0, 0, None));
        s.read_failed("NOGROUP");
        pass(9).await;
        assert_eq!(s.check(), Ok(()));
        s.observe(None);
        pass(1).await;
        let why = s.check().unwrap_err();
        assert!(why.contains("failed for 10 s: NOGROUP"), "{why}");
        s.recreated();
        assert_eq!(s.check(), Ok(()));
        s.read_failed("connection refused");
        pass(5).await;
        s.read_ok();
        pass(60).await;
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn figures_of_the_group_in_xinfo_groups() {
        let group = |name: &str, read: Value| {
            Value::Array(vec![
                "name".into(),
                name.into(),
                "pending".into(),
                Value::Integer(2),
                "entries-read".into(),
                read,
                "lag".into(),
                Value::Integer(7),
                "last-delivered-id".into(),
                "5-0".into(),
            ])
        };
        let reply = Value::Array(vec![
            group("other", Value::Integer(1)),
            group("spillway", Value::Null),
        ]);
        assert_eq!(
            Figures::of(&reply, "spillway", Some("6-0")),
            Some(Figures {
                lag: 7,
                pending: 2,
                entries_read: None
            })
        );
        // Delivered up to the stream's last id: no lag, whatever Redis says.
        let caught_up = Figures::of(&reply, "spillway", Some("5-0"));
        assert_eq!(caught_up.map(|f| f.lag), Some(0));
        assert_eq!(
            Figures::of(&reply, "other", None).and_then(|f| f.entries_read),
            Some(1)
        );
        assert_eq!(Figures::of(&reply, "gone", None), None);
    }
}
