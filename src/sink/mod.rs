//! The writing side: one task takes records from the bounded channel, batches them until max
//! rows, max bytes or max delay, and commits each batch to ClickHouse, retrying with capped
//! backoff until it is committed (rows are idempotent, so a retry never duplicates).

pub mod clickhouse;
pub mod rowbinary;
pub mod schema;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::BatchSettings;
use crate::metrics as m;
use crate::rows::Record;
pub use clickhouse::{Batch, Sink, SinkError};

/// Most records taken from the channel in one call.
const RECV_CHUNK: usize = 4096;

/// What ended a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `max_rows` reached.
    Rows,
    /// `max_bytes` reached.
    Bytes,
    /// `max_delay` passed since the first row.
    Delay,
    /// The channel closed (shutdown): the last batch.
    Closed,
}

impl Cut {
    fn label(self) -> &'static str {
        match self {
            Cut::Rows => "rows",
            Cut::Bytes => "bytes",
            Cut::Delay => "delay",
            Cut::Closed => "drain",
        }
    }
}

/// Cuts the stream of records from the channel into batches.
pub struct Batcher {
    rx: mpsc::Receiver<Record>,
    cfg: BatchSettings,
    /// Records taken from the channel but not yet in a batch (beyond the last cut).
    carry: std::collections::VecDeque<Record>,
    buf: Vec<Record>,
    /// When the last batch was cut: records found waiting at the next call may have waited
    /// since then (while that batch was committed), and their delay counts from there.
    cut_at: Option<Instant>,
    /// How long commits take lately (a moving average): a batch is cut that much before
    /// `max_delay`, so that its rows are committed within about `max_delay`.
    commit_time: Duration,
}

impl Batcher {
    /// A batcher over `rx`.
    pub fn new(rx: mpsc::Receiver<Record>, cfg: BatchSettings) -> Self {
        Batcher {
            rx,
            cfg,
            carry: Default::default(),
            buf: Vec::with_capacity(RECV_CHUNK),
            cut_at: None,
            commit_time: Duration::ZERO,
        }
    }

    /// Tells how long the last batch took to commit. A batch is then cut earlier by the recent
    /// commit time (a moving average, each commit counted up to `max_delay`), so that rows are
    /// committed about `max_delay` after they arrived; never earlier than half `max_delay`, so
    /// that a slow ClickHouse does not get ever smaller batches.
    pub fn committed_in(&mut self, took: Duration) {
        let took = took.min(self.cfg.max_delay);
        self.commit_time = (self.commit_time * 3 + took) / 4;
    }

    /// How long after its first record a batch is cut.
    fn delay(&self) -> Duration {
        self.cfg
            .max_delay
            .saturating_sub(self.commit_time)
            .max(self.cfg.max_delay / 2)
    }

    /// Rows waiting in the channel.
    pub fn depth(&self) -> usize {
        self.rx.len() + self.carry.len()
    }

    /// Waits for the first record, then collects until max rows, max bytes or max delay. None
    /// when the channel is closed and everything was handed out.
    /// The delay counts from the oldest record's arrival: records found waiting count from the
    /// last cut, so time spent in a slow commit is not added to `max_delay`; and the batch is
    /// cut early by the time commits take lately (see [`Batcher::committed_in`]).
    pub async fn next(&mut self) -> Option<(Batch, Cut)> {
        let cut = self.next_uncounted().await;
        self.cut_at = Some(Instant::now());
        cut
    }

    async fn next_uncounted(&mut self) -> Option<(Batch, Cut)> {
        let mut batch = Batch::default();
        let waiting = self.depth() > 0;
        if self.carry.is_empty() && !self.fill(RECV_CHUNK).await {
            return None;
        }
        let since = match self.cut_at {
            Some(cut) if waiting => cut,
            _ => Instant::now(),
        };
        let deadline = since + self.delay();
        loop {
            while let Some(r) = self.carry.pop_front() {
                batch.push(r);
                if batch.rows() >= self.cfg.max_rows.get() {
                    return Some((batch, Cut::Rows));
                }
                if batch.bytes() >= self.cfg.max_bytes.get() {
                    return Some((batch, Cut::Bytes));
                }
            }
            match tokio::time::timeout_at(deadline, self.fill(RECV_CHUNK)).await {
                Ok(true) => {}
                Ok(false) => return Some((batch, Cut::Closed)),
                Err(_) => return Some((batch, Cut::Delay)),
            }
        }
    }

    /// Moves up to `n` records from the channel into `carry`; false when it is closed and empty.
    async fn fill(&mut self, n: usize) -> bool {
        if self.rx.recv_many(&mut self.buf, n).await == 0 {
            return false;
        }
        self.carry.extend(self.buf.drain(..));
        true
    }
}

/// Runs until the channel is closed and drained: every record received is committed.
pub async fn run_writer(rx: mpsc::Receiver<Record>, sink: Sink, cfg: BatchSettings) {
    let mut batcher = Batcher::new(rx, cfg);
    while let Some((mut batch, cut)) = batcher.next().await {
        metrics::gauge!(m::CHANNEL_DEPTH).set(batcher.depth() as f64);
        metrics::counter!(m::FLUSHES, "trigger" => cut.label()).increment(1);
        if let Some(ttl) = batch.min_remaining_ttl_ms(crate::rows::now_ms()) {
            metrics::gauge!(m::EXPIRY_RISK).set(ttl as f64 / 1000.0);
        }
        let started = Instant::now();
        commit(&sink, &batch, || batcher.depth()).await;
        batcher.committed_in(started.elapsed());
        batch.observe_commit(crate::rows::now_ms());
        batch.acknowledge();
        if batcher.depth() == 0 {
            // Nothing read is waiting for a commit: no value is at risk.
            metrics::gauge!(m::EXPIRY_RISK).set(f64::INFINITY);
        }
        metrics::gauge!(m::CHANNEL_DEPTH).set(batcher.depth() as f64);
        if cut == Cut::Closed {
            break;
        }
    }
    tracing::info!("writer drained the channel and stopped");
}

/// Commits a batch, retrying until ClickHouse accepts it.
/// While it waits for ClickHouse (however long an outage lasts), the channel depth gauge keeps
/// being updated from `depth` every second.
async fn commit(sink: &Sink, batch: &Batch, depth: impl Fn() -> usize) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        match reporting_depth(sink.write(batch), &mut tick, &depth).await {
            Ok(()) => {
                metrics::gauge!(m::LAST_FLUSH).set(crate::rows::now_ms() as f64 / 1000.0);
                if failures > 0 {
                    tracing::info!(
                        failures,
                        rows = batch.rows(),
                        "batch committed after retries"
                    );
                }
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!(m::INSERT_RETRIES).increment(1);
                let wait = jitter(backoff);
                tracing::warn!(error = %e, rows = batch.rows(), retry_in = ?wait, "insert failed; retrying");
                reporting_depth(tokio::time::sleep(wait), &mut tick, &depth).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Awaits `fut`, setting the channel depth gauge at every tick meanwhile.
async fn reporting_depth<T>(
    fut: impl std::future::Future<Output = T>,
    tick: &mut tokio::time::Interval,
    depth: &impl Fn() -> usize,
) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => metrics::gauge!(m::CHANNEL_DEPTH).set(depth() as f64),
        }
    }
}

/// `d` plus up to a quarter of it, so that restarted sidecars do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{AlertEventRow, Record};
    use std::num::NonZeroUsize;

    fn cfg(rows: usize, bytes: usize, delay_ms: u64) -> BatchSettings {
        let nz = |v| NonZeroUsize::new(v).unwrap();
        BatchSettings {
            channel_capacity: nz(1000),
            max_rows: nz(rows),
            max_bytes: nz(bytes),
            max_delay: Duration::from_millis(delay_ms),
        }
    }

    fn event(key: &str) -> Record {
        Record::alert_event(AlertEventRow {
            key: key.into(),
            alert_id: key.into(),
            event: "written",
            event_ms: 1,
            content_hash: 0,
            ttl_ms: -1,
        })
    }

    async fn batcher(
        rows: usize,
        bytes: usize,
        delay_ms: u64,
        n: usize,
    ) -> (mpsc::Sender<Record>, Batcher) {
        let (tx, rx) = mpsc::channel(1000);
        for i in 0..n {
            tx.send(event(&format!("k{i:02}"))).await.unwrap();
        }
        (tx, Batcher::new(rx, cfg(rows, bytes, delay_ms)))
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_on_rows() {
        let (_tx, mut b) = batcher(10, 1 << 20, 1000, 25).await;
        let sizes: Vec<_> = [b.next().await, b.next().await]
            .into_iter()
            .map(|x| x.map(|(b, c)| (b.rows(), c)))
            .collect();
        assert_eq!(sizes, [Some((10, Cut::Rows)), Some((10, Cut::Rows))]);
        assert_eq!(b.depth(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_on_bytes_exactly() {
        // An event row in RowBinary: key and id (1 + 3 each), event (1 + 7), three 8-byte
        // numbers: 40 bytes.
        let (_tx, mut b) = batcher(100, 190, 1000, 15).await;
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), batch.bytes(), cut), (5, 200, Cut::Bytes));
        assert_eq!(b.depth(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn records_waiting_during_a_commit_count_their_delay_from_the_cut() {
        let (tx, mut b) = batcher(100, 1 << 20, 500, 1).await;
        let (first, cut) = b.next().await.unwrap();
        assert_eq!((first.rows(), cut), (1, Cut::Delay));
        // A commit takes 400 ms; a record arrives meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(event("during")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), cut), (1, Cut::Delay));
        // Cut 500 ms after the previous cut, not 500 ms after the commit returned.
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_early_by_the_commit_time_but_not_before_half_the_delay() {
        let (tx, mut b) = batcher(100, 1 << 20, 1000, 0).await;
        let mut waited = Vec::new();
        // Commits of 200 ms, then of 5 s (ClickHouse slow).
        for took in [
            200, 200, 200, 200, 200, 200, 200, 200, 5000, 5000, 5000, 5000,
        ] {
            tx.send(event("k")).await.unwrap();
            let started = Instant::now();
            b.next().await.unwrap();
            waited.push(started.elapsed().as_millis());
            b.committed_in(Duration::from_millis(took));
        }
        // 1000 ms, then 1000 - the average commit time (moving towards 200 ms) ...
        assert_eq!(&waited[..4], [1000, 950, 913, 885]);
        assert!((800..830).contains(&waited[8]), "{waited:?}");
        // ... and with slow commits never less than half the delay.
        assert_eq!(waited[11], 500, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_on_delay_then_drains_on_close() {
        let (tx, mut b) = batcher(100, 1 << 20, 250, 11).await;
        let started = Instant::now();
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), cut), (11, Cut::Delay));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        tx.send(event("last")).await.unwrap();
        drop(tx);
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), cut), (1, Cut::Closed));
        assert!(b.next().await.is_none());
    }
}
