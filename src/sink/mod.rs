//! The writing side: one task takes records from the bounded channel, batches them until max
//! rows, max bytes or max delay, and commits each batch to ClickHouse, retrying with capped
//! backoff until it is committed (rows are idempotent, so a retry never duplicates).

pub mod clickhouse;
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

/// Runs until the channel is closed and drained: every record received is committed.
pub async fn run_writer(mut rx: mpsc::Receiver<Record>, sink: Sink, cfg: BatchSettings) {
    let mut buf = Vec::with_capacity(RECV_CHUNK);
    loop {
        if rx.recv_many(&mut buf, RECV_CHUNK).await == 0 {
            break;
        }
        let mut batch = Batch::default();
        buf.drain(..).for_each(|r| batch.push(r));
        let deadline = Instant::now() + cfg.max_delay;
        let mut closed = false;
        while batch.rows() < cfg.max_rows.get() && batch.bytes() < cfg.max_bytes.get() {
            let room = (cfg.max_rows.get() - batch.rows()).min(RECV_CHUNK);
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, room)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => buf.drain(..).for_each(|r| batch.push(r)),
                Err(_) => break,
            }
        }
        metrics::gauge!(m::CHANNEL_DEPTH).set(rx.len() as f64);
        commit(&sink, &batch).await;
        metrics::gauge!(m::CHANNEL_DEPTH).set(rx.len() as f64);
        if closed {
            break;
        }
    }
    tracing::info!("writer drained the channel and stopped");
}

/// Commits a batch, retrying until ClickHouse accepts it.
async fn commit(sink: &Sink, batch: &Batch) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match sink.write(batch).await {
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
                tracing::warn!(error = %e, rows = batch.rows(), retry_in = ?backoff, "insert failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
