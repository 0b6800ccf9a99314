//! Cutting: one task takes records from the bounded channel and cuts them into batches at
//! `max_rows`, `max_bytes` or `max_delay` (counted from the oldest record, shortened by the time
//! commits take lately), and queues each for the committer. The queue holds one batch: the next
//! is collected while one commits, and then the channel fills and the sources wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch::Batch;
use crate::channel::RecordRx;
use crate::config::BatchSettings;
use crate::metrics as m;
use crate::rows::Record;

/// Most records taken from the channel in one call.
const RECV_CHUNK: usize = 4096;

/// What ended a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
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
pub(crate) struct Batcher {
    rx: RecordRx,
    cfg: BatchSettings,
    /// Records taken from the channel but not yet in a batch (beyond the last cut).
    carry: std::collections::VecDeque<Record>,
    buf: Vec<Record>,
    /// When the last batch was cut: records found waiting at the next call may have waited
    /// since then (while that batch was committed), and their delay counts from there.
    cut_at: Option<Instant>,
    /// What the committer tells: how long batches take from their cut to their commit, which
    /// are not committed yet.
    progress: Arc<Progress>,
}

/// Shared by the batcher and the committer.
#[derive(Default)]
pub(crate) struct Progress {
    /// From cut to commit, lately (a moving average): a batch is cut that much before
    /// `max_delay`, so that its rows are committed within about `max_delay`.
    commit_time: Mutex<Duration>,
    /// Per batch cut and not yet committed, in order: when its earliest alert value expires in
    /// Redis (epoch ms), if it has one.
    uncommitted: Mutex<VecDeque<Option<i64>>>,
    /// Records in the channel and not yet in a batch, as of the last cut.
    depth: AtomicUsize,
}

impl Progress {
    /// Tells how long the last batch took from its cut to its commit: a moving average, each
    /// commit counted up to `max_delay` (see [`Batcher::next`]).
    pub(crate) fn committed_in(&self, took: Duration, max_delay: Duration) {
        let mut avg = lock(&self.commit_time);
        *avg = (*avg * 3 + took.min(max_delay)) / 4;
    }

    fn commit_time(&self) -> Duration {
        *lock(&self.commit_time)
    }

    /// A batch was cut: it is uncommitted until [`Progress::committed`].
    pub(super) fn cut(&self, expires_at_ms: Option<i64>, depth: usize) {
        self.depth.store(depth, Ordering::Relaxed);
        let mut pending = lock(&self.uncommitted);
        pending.push_back(expires_at_ms);
        set_expiry_risk(&pending, false);
    }

    /// The oldest uncommitted batch was committed.
    pub(super) fn committed(&self) {
        let mut pending = lock(&self.uncommitted);
        pending.pop_front();
        set_expiry_risk(&pending, self.depth.load(Ordering::Relaxed) == 0);
    }
}

/// Sets the expiry-risk gauge to the smallest remaining TTL among the values of the batches not
/// yet committed; to +Inf when nothing read is waiting for a commit (`idle` and no batch). Left
/// as it is when the batches have no TTL to tell.
fn set_expiry_risk(pending: &VecDeque<Option<i64>>, idle: bool) {
    match pending.iter().flatten().min() {
        Some(at) => {
            let left = at - crate::rows::now_ms();
            metrics::gauge!(m::EXPIRY_RISK).set(left as f64 / 1000.0);
        }
        None if pending.is_empty() && idle => {
            metrics::gauge!(m::EXPIRY_RISK).set(f64::INFINITY);
        }
        None => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Batcher {
    /// A batcher over `rx`.
    pub(crate) fn new(rx: RecordRx, cfg: BatchSettings) -> Self {
        Batcher {
            rx,
            cfg,
            carry: Default::default(),
            buf: Vec::with_capacity(RECV_CHUNK),
            cut_at: None,
            progress: Arc::default(),
        }
    }

    /// What the committer reports to this batcher.
    pub(crate) fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// How long after its first record a batch is cut: `max_delay` less the time batches take
    /// lately from cut to commit, so that rows are committed about `max_delay` after they
    /// arrived; never less than half `max_delay`, so that a slow ClickHouse does not get ever
    /// smaller batches.
    fn delay(&self) -> Duration {
        self.cfg
            .max_delay
            .saturating_sub(self.progress.commit_time())
            .max(self.cfg.max_delay / 2)
    }

    /// Rows waiting in the channel.
    pub(crate) fn depth(&self) -> usize {
        self.rx.len() + self.carry.len()
    }

    /// Bytes of the rows waiting in the channel (see [`crate::channel`]).
    pub(crate) fn bytes(&self) -> usize {
        self.rx.bytes()
    }

    /// Waits for the first record, then collects until max rows, max bytes or max delay. None
    /// when the channel is closed and everything was handed out.
    /// The delay counts from the oldest record's arrival: records found waiting count from the
    /// last cut, so time spent waiting for a slow commit is not added to `max_delay`; and the
    /// batch is cut early by the time commits take lately (see [`Progress::committed_in`]).
    pub(crate) async fn next(&mut self) -> Option<(Batch, Cut)> {
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
                self.rx.moved(&r);
                batch.push(r);
                if batch.rows() >= self.cfg.max_rows.get() {
                    self.rx.give_back();
                    return Some((batch, Cut::Rows));
                }
                if batch.bytes() >= self.cfg.max_bytes.get() {
                    self.rx.give_back();
                    return Some((batch, Cut::Bytes));
                }
            }
            // Before waiting: the senders may be waiting for exactly these bytes.
            self.rx.give_back();
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

/// Cuts batches and queues them for the committer, with the time of their cut. While the queue
/// is full (the committer is busy), the channel depth gauge keeps being updated every second.
pub(super) async fn cut_batches(mut batcher: Batcher, tx: mpsc::Sender<(Batch, Instant)>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // A place in the queue first: the next batch is collected only once the committer took
        // the previous one, so that at most two batches are held.
        let depth = || (batcher.depth(), batcher.bytes());
        let Ok(place) = reporting_depth(tx.reserve(), &mut tick, &depth).await else {
            break;
        };
        let Some((batch, cut)) = batcher.next().await else {
            break;
        };
        let depth = batcher.depth();
        metrics::gauge!(m::CHANNEL_DEPTH).set(depth as f64);
        metrics::gauge!(m::CHANNEL_BYTES).set(batcher.bytes() as f64);
        metrics::counter!(m::FLUSHES, "trigger" => cut.label()).increment(1);
        batcher.progress.cut(batch.expires_at_ms(), depth);
        place.send((batch, Instant::now()));
        if cut == Cut::Closed {
            break;
        }
    }
}

/// Awaits `fut`, setting the channel depth and bytes gauges at every tick meanwhile.
async fn reporting_depth<T>(
    fut: impl std::future::Future<Output = T>,
    tick: &mut tokio::time::Interval,
    depth: &impl Fn() -> (usize, usize),
) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => {
                let (rows, bytes) = depth();
                metrics::gauge!(m::CHANNEL_DEPTH).set(rows as f64);
                metrics::gauge!(m::CHANNEL_BYTES).set(bytes as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::RecordTx;
    use crate::rows::{AlertEventRow, Record};
    use std::num::NonZeroUsize;

    fn cfg(rows: usize, bytes: usize, delay_ms: u64) -> BatchSettings {
        let nz = |v| NonZeroUsize::new(v).unwrap();
        BatchSettings {
            channel_capacity: nz(1000),
            max_rows: nz(rows),
            max_bytes: nz(bytes),
            max_delay: Duration::from_millis(delay_ms),
            channel_bytes: nz(1 << 30),
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

    async fn batcher(rows: usize, bytes: usize, delay_ms: u64, n: usize) -> (RecordTx, Batcher) {
        let (tx, rx) = crate::channel::channel(1000, 1 << 30);
        for i in 0..n {
            assert!(tx.send_all(vec![event(&format!("k{i:02}"))]).await);
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
        assert!(tx.send_all(vec![event("during")]).await);
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
            assert!(tx.send_all(vec![event("k")]).await);
            let started = Instant::now();
            b.next().await.unwrap();
            waited.push(started.elapsed().as_millis());
            b.progress()
                .committed_in(Duration::from_millis(took), Duration::from_millis(1000));
        }
        // 1000 ms, then 1000 - the average commit time (moving towards 200 ms) ...
        assert_eq!(&waited[..4], [1000, 950, 913, 885]);
        assert!((800..830).contains(&waited[8]), "{waited:?}");
        // ... and with slow commits never less than half the delay.
        assert_eq!(waited[11], 500, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn collects_the_next_batch_while_one_commits_but_not_a_third() {
        let (tx, b) = batcher(10, 1 << 20, 1000, 10).await;
        let (queue, mut batches) = mpsc::channel(1);
        let cutter = tokio::spawn(cut_batches(b, queue));
        let in_channel = |tx: &RecordTx| tx.waiting();
        // The committer takes the first batch and commits it (for as long as this test likes).
        let (first, _) = batches.recv().await.unwrap();
        assert_eq!(first.rows(), 10);
        // Meanwhile the next batch is collected and queued...
        for i in 0..10 {
            assert!(tx.send_all(vec![event(&format!("b{i}"))]).await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(batches.len(), 1);
        // ... but no third: its records stay in the channel, where the sources feel them.
        for i in 0..5 {
            assert!(tx.send_all(vec![event(&format!("c{i}"))]).await);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(in_channel(&tx), 5);
        // Once the committer takes the second batch, the third is collected.
        let (second, _) = batches.recv().await.unwrap();
        assert_eq!(second.rows(), 10);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(in_channel(&tx), 0);
        drop(tx);
        let (third, _) = batches.recv().await.unwrap();
        assert_eq!(third.rows(), 5);
        assert!(batches.recv().await.is_none());
        cutter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_on_delay_then_drains_on_close() {
        let (tx, mut b) = batcher(100, 1 << 20, 250, 11).await;
        let started = Instant::now();
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), cut), (11, Cut::Delay));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(tx.send_all(vec![event("last")]).await);
        drop(tx);
        let (batch, cut) = b.next().await.unwrap();
        assert_eq!((batch.rows(), cut), (1, Cut::Closed));
        assert!(b.next().await.is_none());
    }
}
