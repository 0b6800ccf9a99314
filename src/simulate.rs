//! `spillway simulate`: plays the trading platform exactly as the contract describes it, to
//! demonstrate and measure Spillway on a realistic workload. On RLS it writes alerts
//! (`SET alert:{id} <value> EX ttl`: MessagePack maps, JSON objects, plain text, some keys written
//! again with a new value) and trade execution logs step by step (`RPUSH` to
//! `trade_execution:{id}`, or a STRING rewritten at each step); on RTRS it closes the trades
//! (`XADD trade_results * trade_id T event closed payload P`; a few `rejected`, some `opened`).
//!
//! The work is split over `--connections` writers, each with its own connections, generators and
//! share of the rates. Every 100 ms a writer makes the commands that are due (a per-tick budget
//! from the rate and the elapsed time; a writer that falls behind skips, rather than piles up,
//! more than a quarter second of work) and sends them in pipelines of `--pipeline` commands:
//! first RLS, then RTRS, so a close is never on the stream before its log is complete in RLS.
//! At the end (`--duration`, or Ctrl-C) every trade in flight writes its remaining steps and is
//! closed. A writer with more than four seconds' worth of trades in flight starts no new one.
//! Values are a function of the seed (`--seed`), timestamps of the clock.
//!
//! It writes only where it is told (`--rls`, `--rtrs`: required, never read from the service's
//! environment) and, unless `--allow-nonempty`, only into a Redis that is empty or that it marked
//! as its own on an earlier run (`owner.rs`): made-up trades in a production Redis would be
//! archived as real ones.

pub(crate) mod alerts;
mod owner;
pub(crate) mod rng;
pub(crate) mod trades;
mod writer;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::config::redact_url;
use alerts::AlertGen;
use trades::{Counts, TradeGen};
use writer::Writer;

/// The stream closes go to.
pub(crate) const STREAM: &str = "trade_results";

/// Options of `spillway simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// RLS (alerts, execution logs): redis:// or rediss:// URL, redis-cluster:// for a Redis
    /// Cluster (any node), or host:port. Required, with no default and never taken from the
    /// environment, so the simulator cannot write into a production Redis by accident.
    #[arg(long)]
    pub rls: String,
    /// RTRS (the trade_results stream): redis://, rediss:// or redis-cluster:// URL, or
    /// host:port. Required, like `--rls`.
    #[arg(long)]
    pub rtrs: String,
    /// Write into a Redis that holds keys the simulator did not write. Without it the simulator
    /// writes only into an empty Redis (database) or one it marked as its own (the key
    /// `spillway:simulate:owner`, set when it starts on an empty one).
    #[arg(long)]
    pub allow_nonempty: bool,
    /// Alerts written per second.
    #[arg(long, default_value_t = 1000)]
    pub alerts_per_sec: u64,
    /// Trades started (and, in the steady state, closed) per second.
    #[arg(long, default_value_t = 100)]
    pub trades_per_sec: u64,
    /// Seconds to run; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// TTL of the alerts, seconds.
    #[arg(long, default_value_t = 3600)]
    pub alert_ttl: u64,
    /// Share of alert writes that reuse a recent key with a new value.
    #[arg(long, default_value_t = 0.02)]
    pub repeat: f64,
    /// Seed of the generated values; without it one is picked from the clock (and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Writers, each with its own connection to RLS and to RTRS.
    #[arg(long, default_value_t = 4)]
    pub connections: u64,
    /// Commands per pipelined round trip.
    #[arg(long, default_value_t = 1000)]
    pub pipeline: usize,
}

/// A command for Redis.
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    /// `SET key value EX ttl` (an alert).
    SetEx(String, Bytes),
    /// `RPUSH key value` (an execution log entry).
    Rpush(String, Bytes),
    /// `SET key value` (a STRING execution log).
    Set(String, Bytes),
    /// `XADD trade_results * trade_id T event E payload P`.
    Xadd {
        /// T.
        trade_id: String,
        /// E.
        event: &'static str,
        /// P (a MessagePack map).
        payload: Bytes,
    },
}

/// What a run wrote.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// `SET alert:...` commands.
    pub alerts: AtomicU64,
    /// Execution log entries.
    pub entries: AtomicU64,
    /// `closed` events.
    pub closed: AtomicU64,
    /// `rejected` events.
    pub rejected: AtomicU64,
    /// `opened` events.
    pub opened: AtomicU64,
    /// Trades started and not yet closed or rejected.
    pub in_flight: AtomicI64,
}

impl Totals {
    fn snapshot(&self) -> [u64; 5] {
        [
            &self.alerts,
            &self.entries,
            &self.closed,
            &self.rejected,
            &self.opened,
        ]
        .map(|a| a.load(Relaxed))
    }
}

/// Entry point of `spillway simulate`: runs until `--duration` passes or Ctrl-C/SIGTERM (a second
/// signal exits at once).
pub(crate) fn main(args: SimulateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let signals = stop.clone();
        tokio::spawn(async move {
            crate::app::wait_signal().await;
            eprintln!(
                "signal received: closing the trades in flight (a second signal exits at once)"
            );
            signals.cancel();
            crate::app::wait_signal().await;
            std::process::exit(130);
        });
        run(args, stop).await.map(|_| ())
    })
}

/// Runs the simulation until `--duration` passes or `stop` is cancelled, printing one line per
/// second; returns what was written.
pub(crate) async fn run(
    args: SimulateArgs,
    stop: CancellationToken,
) -> anyhow::Result<Arc<Totals>> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.repeat),
        "--repeat must be between 0 and 1"
    );
    anyhow::ensure!(
        args.connections > 0 && args.pipeline > 0,
        "--connections and --pipeline must be at least 1"
    );
    let seed = args
        .seed
        .unwrap_or_else(|| rng::mix(crate::rows::now_ms() as u64));
    let run = format!("{:06x}", rng::mix(seed) & 0xff_ffff);
    let (rls_url, rtrs_url) = (with_scheme(&args.rls), with_scheme(&args.rtrs));
    owner::claim(
        &[("RLS", "--rls", &rls_url), ("RTRS", "--rtrs", &rtrs_url)],
        args.allow_nonempty,
        &run,
    )
    .await?;
    println!(
        "simulating: RLS {}, RTRS {}; {} alerts/s, {} trades/s over {} connections; seed {seed} (ids {run}-N); {}",
        redact_url(&rls_url),
        redact_url(&rtrs_url),
        args.alerts_per_sec,
        args.trades_per_sec,
        args.connections,
        match args.duration {
            0 => "until Ctrl-C".to_string(),
            s => format!("for {s} s"),
        }
    );
    let totals = Arc::new(Totals::default());
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..args.connections {
        let rls = connect(&rls_url, "RLS").await?;
        let rtrs = connect(&rtrs_url, "RTRS").await?;
        let writer = Writer {
            alerts: AlertGen::new(seed, &run, w, args.connections, args.repeat),
            trades: TradeGen::new(seed, &run, w, args.connections),
            args: args.clone(),
            rls,
            rtrs,
            totals: totals.clone(),
            published: Counts::default(),
            in_flight: 0,
            stop: stop.clone(),
            deadline: (args.duration > 0).then(|| start + Duration::from_secs(args.duration)),
        };
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let r = writer.run(start).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        }));
    }
    let done = CancellationToken::new();
    let reporter = tokio::spawn(report(totals.clone(), start, done.clone()));
    let mut result = Ok(());
    for w in writers {
        let r = w.await.context("writer task")?;
        if result.is_ok() {
            result = r;
        }
    }
    done.cancel();
    reporter.await.ok();
    let [alerts, entries, closed, rejected, opened] = totals.snapshot();
    println!(
        "wrote in {:.1} s: {alerts} alerts, {entries} execution log entries, {closed} trades closed, {rejected} rejected, {opened} opened events",
        start.elapsed().as_secs_f64()
    );
    result.map(|()| totals)
}

/// Prints one line per second until `done`.
async fn report(t: Arc<Totals>, start: Instant, done: CancellationToken) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (mut last, mut last_at) = (t.snapshot(), Instant::now());
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = t.snapshot();
        let secs = last_at.elapsed().as_secs_f64();
        let rate = |i: usize| (now[i] - last[i]) as f64 / secs;
        println!(
            "{:>5.0}s  alerts {:>7.0}/s  trades closed {:>6.0}/s (+{:.0}/s rejected)  execution entries {:>7.0}/s  trades in flight {}",
            start.elapsed().as_secs_f64(),
            rate(0),
            rate(2),
            rate(3),
            rate(1),
            t.in_flight.load(Relaxed)
        );
        (last, last_at) = (now, Instant::now());
    }
}

/// `host:port` becomes `redis://host:port`.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("redis://{url}")
    }
}

async fn connect(url: &str, what: &str) -> anyhow::Result<Client> {
    let redacted = redact_url(url);
    let config = Config::from_url(url).map_err(|_| {
        anyhow::anyhow!(
            "{what} URL {redacted} is not a redis://, rediss:// or redis-cluster:// URL"
        )
    })?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
        .build()?;
    client
        .init()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {what} at {redacted}: {}", e.details()))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_becomes_a_url() {
        assert_eq!(
            super::with_scheme("127.0.0.1:6384"),
            "redis://127.0.0.1:6384"
        );
        assert_eq!(super::with_scheme("rediss://h:1/2"), "rediss://h:1/2");
    }
}
