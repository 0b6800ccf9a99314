//! Committing: takes the batches the batcher cut, in order, and commits each to ClickHouse,
//! retrying with capped, jittered backoff until it is committed (rows are idempotent, so a retry
//! never duplicates), then runs its acknowledgements. Rows ClickHouse refuses as bad data are
//! isolated by halving the insert and go to `dead_letters`, so one bad row never blocks the rest.
//! Errors that retrying cannot fix (a dropped table, a refused user) are the [`Guard`]'s: the
//! rows wait, `/readyz` says why, and what can be recreated is.

use std::time::Duration;

use tokio::sync::mpsc;

use super::batch::{Batch, Rows};
use super::batcher::{cut_batches, Batcher};
use super::client::{Result, Sink, SinkError};
use super::guard::{Guard, BLOCKED_RETRY};
use crate::channel::RecordRx;
use crate::config::BatchSettings;
use crate::metrics as m;
use crate::rows::schema;
use crate::rows::{rowbinary, DeadLetterRow, Row, Table};

/// Runs until the channel is closed and drained: every record received is committed.
pub(crate) async fn run_writer(rx: RecordRx, sink: Sink, cfg: BatchSettings, guard: Guard) {
    let batcher = Batcher::new(rx, cfg);
    let progress = batcher.progress();
    let (tx, mut batches) = mpsc::channel(1);
    let cutter = tokio::spawn(cut_batches(batcher, tx));
    while let Some((mut batch, cut_at)) = batches.recv().await {
        commit(&sink, &batch, &guard).await;
        progress.committed_in(cut_at.elapsed(), cfg.max_delay);
        progress.committed();
        batch.observe_commit(crate::rows::now_ms());
        batch.acknowledge();
    }
    let _ = cutter.await;
    tracing::info!("writer drained the channel and stopped");
}

/// Commits a batch, retrying until ClickHouse accepts it: transient errors with capped
/// exponential backoff, permanent ones (see [`Guard`]) every [`BLOCKED_RETRY`], after repairing
/// what can be repaired.
async fn commit(sink: &Sink, batch: &Batch, guard: &Guard) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match sink.write(batch).await {
            Ok(()) => {
                metrics::gauge!(m::LAST_FLUSH).set(crate::rows::now_ms() as f64 / 1000.0);
                guard.committed();
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
                if let Some(blocked) = guard.failed(&e) {
                    // Logged once by the guard; here only at debug, every retry.
                    tracing::debug!(error = %e, rows = batch.rows(), "insert blocked; retrying");
                    tokio::time::sleep(jitter(BLOCKED_RETRY)).await;
                    if let Err(e) = guard.repair(sink, &blocked).await {
                        tracing::warn!(error = %e, "repair failed; retrying");
                    }
                    backoff = Duration::from_millis(100);
                    continue;
                }
                let wait = jitter(backoff);
                tracing::warn!(error = %e, rows = batch.rows(), retry_in = ?wait, "insert failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
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

impl Sink {
    /// Inserts every table's rows of the batch; each table is one INSERT, all at once (the
    /// batch waits for the slowest, not for their sum). On error the whole batch may be written
    /// again: rows are idempotent.
    ///
    /// Rows that ClickHouse refuses as bad data (a retry cannot help) are isolated by halving
    /// the insert and go to `dead_letters` as JSON, so one bad row never blocks the pipeline.
    pub(crate) async fn write(&self, batch: &Batch) -> Result<()> {
        let inserts = Table::ALL
            .iter()
            .zip(&batch.tables)
            .filter(|(_, rows)| rows.len() > 0)
            .map(|(table, rows)| async move {
                let mut rejected = Rows::default();
                match table {
                    // Dead letters are plain bytes and text: nothing in them for ClickHouse to
                    // refuse.
                    Table::DeadLetters => self.insert("dead_letters", rows, 0..rows.len()).await?,
                    _ => {
                        self.isolate(table.name(), rows, 0..rows.len(), &mut rejected)
                            .await?
                    }
                }
                Ok::<_, SinkError>(rejected)
            });
        let mut rejected = Rows::default();
        for r in futures_util::future::try_join_all(inserts).await? {
            rejected.extend(&r);
        }
        self.insert("dead_letters", &rejected, 0..rejected.len())
            .await
    }

    /// Inserts `rows` `range`; on a bad-data refusal, each half again, down to single rows,
    /// which become dead letters.
    fn isolate<'a>(
        &'a self,
        table: &'static str,
        rows: &'a Rows,
        range: std::ops::Range<usize>,
        rejected: &'a mut Rows,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(async move {
            match self.insert(table, rows, range.clone()).await {
                Err(SinkError::Insert { source, .. }) if is_bad_data(&source) => {
                    if range.len() == 1 {
                        let dead = refused(table, &rows.bytes(&range).concat(), &source);
                        let row = Row::new(Table::DeadLetters, &dead, dead.received_at_ms);
                        rejected.push(&row.bytes, row.event_ms);
                        return Ok(());
                    }
                    let mid = range.start + range.len() / 2;
                    self.isolate(table, rows, range.start..mid, rejected)
                        .await?;
                    self.isolate(table, rows, mid..range.end, rejected).await
                }
                other => other,
            }
        })
    }
}

/// ClickHouse error codes that mean "this data is wrong": retrying the same rows cannot succeed.
/// Parsing and type errors, and the refusals that depend on a row's values: a violated
/// `CONSTRAINT` (469) and `throwIf` in a column expression (395, how older servers check rows).
const BAD_DATA: &[u32] = &[6, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 395, 469];

/// Whether ClickHouse refused the data itself (not the connection, the load or the schema).
pub(crate) fn is_bad_data(e: &clickhouse::error::Error) -> bool {
    let clickhouse::error::Error::BadResponse(msg) = e else {
        return false;
    };
    error_code(msg).is_some_and(|c| BAD_DATA.contains(&c))
}

/// The `Code: N` of a ClickHouse error message.
pub(super) fn error_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A row ClickHouse refused, as a dead letter holding the row as JSON.
fn refused(table: &'static str, row: &[u8], e: &clickhouse::error::Error) -> DeadLetterRow {
    let raw = rowbinary::to_json(schema::table(table).columns, row)
        .to_string()
        .into_bytes();
    metrics::counter!(m::DEAD_LETTERS, "pipeline" => "clickhouse", "reason" => "rejected_by_clickhouse")
        .increment(1);
    let mut error = e.to_string();
    error.truncate(2000);
    DeadLetterRow {
        pipeline: "clickhouse".into(),
        instance: "clickhouse".into(),
        key: table.to_string(),
        stream_id: String::new(),
        content_hash: crate::rows::content_hash(&raw),
        raw,
        reason: "rejected_by_clickhouse",
        error,
        received_at_ms: crate::rows::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_data_is_told_from_faults() {
        let bad = |m: &str| is_bad_data(&clickhouse::error::Error::BadResponse(m.into()));
        assert!(bad(
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data"
        ));
        assert!(bad("Code: 117. DB::Exception: Incorrect data"));
        assert!(!bad("Code: 241. DB::Exception: Memory limit exceeded"));
        assert!(!bad("Code: 252. DB::Exception: Too many parts"));
        assert!(!bad("no code here"));
        assert!(!is_bad_data(&clickhouse::error::Error::TimedOut));
    }
}
