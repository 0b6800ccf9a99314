//! When a subscribed connection must prove it is alive: after `ping_after` of silence it is sent
//! a PING, and if nothing at all arrives within `timeout` of that PING it is taken for dead.
//!
//! A connection whose peer vanished without a FIN or RST (a firewall or NAT dropping an idle
//! flow, a failover behind a proxy, a cable pulled) stays open on this side for ever: a
//! subscriber only reads, and a read waits quietly. The PING makes the kernel send bytes that
//! the live peer answers; on a half-open connection nothing comes back and the deadline ends it.
//! Anything received (a notification, a pong, an error line) counts as life.
//!
//! Pure state over [`tokio::time::Instant`]: the subscriber sleeps until [`Watch::deadline`],
//! then asks [`Watch::due`] what to do.

use std::time::Duration;

use tokio::time::Instant;

/// How a subscribed connection is watched: configured once per pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// Silence after which the connection is sent a PING (`keyspace.subscriber_ping_secs`).
    pub ping_after: Duration,
    /// Time after the PING within which something must arrive (`keyspace.subscriber_timeout_secs`).
    pub timeout: Duration,
}

/// What the deadline asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Silent for `ping_after`: send a PING.
    Ping,
    /// Nothing arrived within `timeout` of the PING: the connection is dead.
    Dead,
}

/// The watch over one connection: when it was last heard from, and when it was pinged.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    cfg: Liveness,
    heard: Instant,
    pinged: Option<Instant>,
}

impl Watch {
    /// A connection just established (the subscription confirmed) at `now`.
    pub(crate) fn new(cfg: Liveness, now: Instant) -> Watch {
        Watch {
            cfg,
            heard: now,
            pinged: None,
        }
    }

    /// Bytes arrived at `now`: the connection lives, and any PING is answered.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.pinged = None;
    }

    /// A PING was sent at `now`.
    pub(crate) fn pinged(&mut self, now: Instant) {
        self.pinged = Some(now);
    }

    /// When something is due: the PING after the silence, or the end of its deadline.
    pub(crate) fn deadline(&self) -> Instant {
        match self.pinged {
            None => self.heard + self.cfg.ping_after,
            Some(at) => at + self.cfg.timeout,
        }
    }

    /// What is due at `now`, if anything.
    pub(crate) fn due(&self, now: Instant) -> Option<Due> {
        if now < self.deadline() {
            None
        } else if self.pinged.is_none() {
            Some(Due::Ping)
        } else {
            Some(Due::Dead)
        }
    }

    /// The configuration watched by.
    pub(crate) fn liveness(&self) -> Liveness {
        self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Liveness = Liveness {
        ping_after: Duration::from_secs(5),
        timeout: Duration::from_secs(15),
    };

    #[test]
    fn silence_asks_for_a_ping_then_the_deadline_declares_death() {
        let t0 = Instant::now();
        let mut w = Watch::new(CFG, t0);
        assert_eq!(w.deadline(), t0 + CFG.ping_after);
        assert_eq!(w.due(t0 + Duration::from_millis(4999)), None);
        assert_eq!(w.due(t0 + CFG.ping_after), Some(Due::Ping));
        let sent = t0 + Duration::from_secs(6);
        w.pinged(sent);
        assert_eq!(w.deadline(), sent + CFG.timeout);
        assert_eq!(w.due(sent + Duration::from_millis(14_999)), None);
        assert_eq!(w.due(sent + CFG.timeout), Some(Due::Dead));
    }

    #[test]
    fn anything_heard_answers_the_ping_and_restarts_the_silence() {
        let t0 = Instant::now();
        let mut w = Watch::new(CFG, t0);
        w.pinged(t0 + CFG.ping_after);
        let late = t0 + CFG.ping_after + CFG.timeout - Duration::from_millis(1);
        w.heard(late);
        assert_eq!(w.due(t0 + CFG.ping_after + CFG.timeout), None);
        assert_eq!(w.deadline(), late + CFG.ping_after);
        assert_eq!(w.due(late + CFG.ping_after), Some(Due::Ping));
        // Traffic keeps it from ever pinging.
        let mut w = Watch::new(CFG, t0);
        for s in 1..100 {
            let now = t0 + Duration::from_secs(s * 4);
            assert_eq!(w.due(now), None, "at {s}");
            w.heard(now);
        }
    }
}
