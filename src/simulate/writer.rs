//! One writer of the simulator: its generators, its connections to RLS and RTRS and its share
//! of the rates; every tick it makes the commands that are due and sends them, pipelined.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::alerts::AlertGen;
use super::trades::{Counts, TradeGen};
use super::{Cmd, SimulateArgs, Totals, STREAM};

/// How often a writer makes and sends the commands that are due.
const TICK: Duration = Duration::from_millis(100);
/// The most work a writer that falls behind makes in one tick, in seconds of its rate.
const MAX_BURST_SECS: f64 = 0.25;
/// The most trades in flight per writer, in seconds of its trade rate (a trade lasts about 2 s).
const MAX_IN_FLIGHT_SECS: f64 = 4.0;

/// One writer: its generators, its connections and its share of the rates.
pub(super) struct Writer {
    pub alerts: AlertGen,
    pub trades: TradeGen,
    pub args: SimulateArgs,
    pub rls: Client,
    pub rtrs: Client,
    pub totals: Arc<Totals>,
    pub published: Counts,
    pub in_flight: i64,
    pub stop: CancellationToken,
    pub deadline: Option<Instant>,
}

impl Writer {
    /// Runs until the deadline or `stop`, then closes its trades in flight.
    pub(super) async fn run(mut self, start: Instant) -> anyhow::Result<()> {
        let stop = self.stop.clone();
        let share = self.args.connections as f64;
        let alert_rate = self.args.alerts_per_sec as f64 / share;
        let trade_rate = self.args.trades_per_sec as f64 / share;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut alerts_done, mut trades_done) = (0, 0);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let alerts = budget(&mut alerts_done, alert_rate, elapsed);
            let mut trades = budget(&mut trades_done, trade_rate, elapsed);
            if self.trades.open_trades() as f64 > trade_rate * MAX_IN_FLIGHT_SECS + 10.0 {
                trades = 0; // Redis does not keep up: start no more until these finished
            }
            let now = crate::rows::now_ms();
            let (mut rls, mut rtrs) = (Vec::new(), Vec::new());
            self.trades.advance(now, &mut rls, &mut rtrs);
            for _ in 0..trades {
                self.trades.start(now, &mut rls, &mut rtrs);
            }
            self.send(rls, alerts, now, rtrs).await?;
            self.publish();
        }
        // Close the trades in flight, a pipeline's worth at a time.
        loop {
            let (mut rls, mut rtrs) = (Vec::new(), Vec::new());
            let now = crate::rows::now_ms();
            let left = (self.trades).finish(self.args.pipeline / 8 + 1, now, &mut rls, &mut rtrs);
            self.send(rls, 0, now, rtrs).await?;
            self.publish();
            if left == 0 {
                break;
            }
        }
        self.rls.quit().await.ok();
        self.rtrs.quit().await.ok();
        Ok(())
    }

    /// Sends the RLS commands `rls` and `alerts` new alerts, in pipelines (the next one is made
    /// while the previous one is on the wire), then, once RLS acknowledged all of them, `rtrs`.
    async fn send(
        &mut self,
        mut rls: Vec<Cmd>,
        mut alerts: u64,
        now: i64,
        rtrs: Vec<Cmd>,
    ) -> anyhow::Result<()> {
        let ttl = self.args.alert_ttl as i64;
        let mut in_flight: Option<tokio::task::JoinHandle<_>> = None;
        while alerts > 0 || !rls.is_empty() {
            if self.stop.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                alerts = 0; // past the end: what is left of the tick's alerts is not written
            }
            let mut chunk: Vec<Cmd> = rls.drain(..rls.len().min(self.args.pipeline)).collect();
            let n = alerts.min((self.args.pipeline - chunk.len()) as u64);
            for _ in 0..n {
                let a = self.alerts.next(now);
                chunk.push(Cmd::SetEx(a.key, Bytes::from(a.value)));
            }
            alerts -= n;
            let (client, totals) = (self.rls.clone(), self.totals.clone());
            let sent = tokio::spawn(async move {
                pipeline(&client, &chunk, ttl)
                    .await
                    .context("writing to RLS")?;
                totals.alerts.fetch_add(n, Relaxed);
                anyhow::Ok(())
            });
            if let Some(previous) = in_flight.replace(sent) {
                previous.await??;
            }
        }
        if let Some(last) = in_flight {
            last.await??;
        }
        for chunk in rtrs.chunks(self.args.pipeline) {
            pipeline(&self.rtrs, chunk, ttl)
                .await
                .context("writing to RTRS")?;
        }
        Ok(())
    }

    /// Adds what the trade generator wrote since the last call to the totals.
    fn publish(&mut self) {
        let (now, was) = (self.trades.counts, self.published);
        let t = &self.totals;
        t.entries.fetch_add(now.entries - was.entries, Relaxed);
        t.closed.fetch_add(now.closed - was.closed, Relaxed);
        t.rejected.fetch_add(now.rejected - was.rejected, Relaxed);
        t.opened.fetch_add(now.opened - was.opened, Relaxed);
        let in_flight = self.trades.open_trades() as i64;
        t.in_flight.fetch_add(in_flight - self.in_flight, Relaxed);
        (self.published, self.in_flight) = (now, in_flight);
    }
}

/// Sends `cmds` in one pipelined round trip.
async fn pipeline(client: &Client, cmds: &[Cmd], alert_ttl: i64) -> anyhow::Result<()> {
    let p = client.pipeline();
    for c in cmds {
        let () = match c {
            Cmd::SetEx(k, v) => {
                let ttl = Some(Expiration::EX(alert_ttl));
                p.set(k.as_str(), v.clone(), ttl, None, false).await
            }
            Cmd::Set(k, v) => p.set(k.as_str(), v.clone(), None, None, false).await,
            Cmd::Rpush(k, v) => p.rpush(k.as_str(), v.clone()).await,
            Cmd::Xadd {
                trade_id,
                event,
                payload,
            } => {
                let fields: Vec<(&str, Value)> = vec![
                    ("trade_id", trade_id.as_str().into()),
                    ("event", (*event).into()),
                    ("payload", Value::Bytes(payload.clone())),
                ];
                p.xadd(STREAM, false, None::<()>, "*", fields).await
            }
        }?;
    }
    let _: Vec<Value> = p.all().await?;
    Ok(())
}

/// How many items are due at `elapsed` seconds at `rate`/s, given `done` so far (updated). Work
/// more than [`MAX_BURST_SECS`] behind is skipped.
fn budget(done: &mut u64, rate: f64, elapsed: f64) -> u64 {
    let target = (rate * elapsed) as u64;
    let cap = (rate * MAX_BURST_SECS).ceil() as u64;
    let due = target.saturating_sub(*done).min(cap.max(1));
    *done = target.max(*done);
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_follows_the_rate_and_skips_a_backlog() {
        let mut done = 0;
        assert_eq!(budget(&mut done, 1000.0, 0.1), 100);
        assert_eq!(budget(&mut done, 1000.0, 0.2), 100);
        assert_eq!(budget(&mut done, 1000.0, 0.2), 0);
        // Two seconds late: at most a quarter second of work, the rest is skipped.
        assert_eq!(budget(&mut done, 1000.0, 2.2), 250);
        assert_eq!(done, 2200);
        assert_eq!(budget(&mut done, 1000.0, 2.3), 100);
        let mut slow = 0;
        let total: u64 = (1..=100)
            .map(|i| budget(&mut slow, 3.0, i as f64 * 0.1))
            .sum();
        assert_eq!(total, 30);
    }
}
