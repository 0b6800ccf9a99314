//! The ClickHouse side: connecting, creating and checking the tables, and inserting one batch of
//! rows per table in RowBinary through the `clickhouse` crate.

use std::time::{Duration, Instant};

use clickhouse::{Client, Row, RowOwned, RowWrite};

use super::schema::{Generation, TABLES};
use crate::config::{redact_url, ClickHouseSettings};
use crate::metrics as m;
use crate::rows::{AckFn, AlertEventRow, AlertRow, DeadLetterRow, Record};
use crate::trade::{TradeExecutionRow, TradeRow};

/// Errors of the ClickHouse side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// ClickHouse could not be reached or answered with an error.
    #[error("ClickHouse at {url}: {action}: {source}")]
    Client {
        /// The server (password redacted).
        url: String,
        /// What Spillway was doing.
        action: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// An existing table does not have the columns Spillway writes.
    #[error("table {database}.{table} exists with columns {found:?}, Spillway writes {expected:?}; fix: rename or drop the old table (Spillway then creates it), or point SPILLWAY_CLICKHOUSE_DATABASE at another database")]
    Schema {
        /// Database.
        database: String,
        /// Table.
        table: String,
        /// Its columns.
        found: Vec<String>,
        /// What Spillway writes.
        expected: Vec<String>,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SinkError>;

/// A connected ClickHouse with its tables in place.
#[derive(Clone)]
pub struct Sink {
    client: Client,
    url: String,
    insert_timeout: Duration,
    /// Which DDL was used.
    pub generation: Generation,
    /// The server's version string.
    pub version: String,
}

/// Rows of one batch, grouped by table.
#[derive(Default)]
pub struct Batch {
    alerts: Vec<AlertRow>,
    alert_events: Vec<AlertEventRow>,
    dead_letters: Vec<DeadLetterRow>,
    trades: Vec<TradeRow>,
    trade_executions: Vec<TradeExecutionRow>,
    acks: Vec<AckFn>,
    rows: usize,
    bytes: usize,
}

impl Batch {
    /// Adds a record.
    pub fn push(&mut self, r: Record) {
        self.bytes += r.approx_bytes();
        self.rows += 1;
        match r {
            Record::Alert(a) => self.alerts.push(a),
            Record::AlertEvent(e) => self.alert_events.push(e),
            Record::DeadLetter(d) => self.dead_letters.push(d),
            Record::Trade(t) => self.trades.push(t),
            Record::TradeExecution(e) => self.trade_executions.push(e),
            Record::Ack(a) => {
                self.rows -= 1;
                self.acks.push(a);
            }
        }
    }

    /// Records, for every committed row, the time from its Redis event (as Spillway received
    /// it) to `now_ms`, its commit.
    pub fn observe_commit(&self, now_ms: i64) {
        let lag = |table: &'static str, times: &mut dyn Iterator<Item = i64>| {
            let h = metrics::histogram!(m::EVENT_TO_COMMIT, "table" => table);
            for t in times {
                h.record((now_ms - t).max(0) as f64 / 1000.0);
            }
        };
        lag("alerts", &mut self.alerts.iter().map(|r| r.captured_at_ms));
        lag(
            "alert_events",
            &mut self.alert_events.iter().map(|r| r.event_ms),
        );
        lag("trades", &mut self.trades.iter().map(|r| r.received_at_ms));
        lag(
            "trade_executions",
            &mut self.trade_executions.iter().map(|r| r.archived_at_ms),
        );
    }

    /// The smallest remaining TTL at `now_ms` among the alert values of the batch, in ms: how
    /// close a value read but not yet committed is to expiring in Redis (after which a crash
    /// could not recover it by a rescan).
    pub fn min_remaining_ttl_ms(&self, now_ms: i64) -> Option<i64> {
        self.alerts
            .iter()
            .filter(|a| a.ttl_ms > 0)
            .map(|a| a.captured_at_ms + a.ttl_ms - now_ms)
            .min()
    }

    /// Runs the acknowledgements of a committed batch, in order.
    pub fn acknowledge(&mut self) {
        for ack in self.acks.drain(..) {
            ack();
        }
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Estimated bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is buffered (neither rows nor acknowledgements).
    pub fn is_empty(&self) -> bool {
        self.rows == 0 && self.acks.is_empty()
    }
}

impl Sink {
    /// Connects, creates the database and the tables when missing, and checks existing tables.
    pub async fn connect(s: &ClickHouseSettings) -> Result<Sink> {
        let url = redact_url(&s.url);
        let base = Client::default()
            .with_url(&s.url)
            .with_user(&s.user)
            .with_password(&s.password)
            .with_validation(false);
        let err = |action: &str| {
            let (url, action) = (url.clone(), action.to_string());
            move |source| SinkError::Client {
                url,
                action,
                source,
            }
        };
        let version: String = base
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(err("asking its version"))?;
        let generation = Generation::from_version(&version);
        base.query(&format!("CREATE DATABASE IF NOT EXISTS {}", s.database))
            .execute()
            .await
            .map_err(err("creating the database"))?;
        for t in TABLES {
            base.query(&t.create_sql(&s.database, generation))
                .execute()
                .await
                .map_err(err(&format!("creating table {}", t.name)))?;
            let found: Vec<String> = base
                .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                .bind(&s.database)
                .bind(t.name)
                .fetch_all()
                .await
                .map_err(err(&format!("reading the columns of {}", t.name)))?;
            let expected = t.column_names();
            if expected.iter().any(|c| !found.iter().any(|f| f == c)) {
                return Err(SinkError::Schema {
                    database: s.database.clone(),
                    table: t.name.into(),
                    found,
                    expected: expected.iter().map(|c| c.to_string()).collect(),
                });
            }
        }
        tracing::info!(%url, %version, ?generation, database = %s.database, "ClickHouse ready");
        Ok(Sink {
            client: base.with_database(&s.database),
            url,
            insert_timeout: s.insert_timeout,
            generation,
            version,
        })
    }

    /// Whether ClickHouse answers `SELECT 1`.
    pub async fn ping(&self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }

    /// Inserts every table's rows of the batch; each table is one INSERT. On error the whole
    /// batch may be written again: rows are idempotent.
    ///
    /// Rows that ClickHouse refuses as bad data (a retry cannot help) are isolated by halving
    /// the insert and go to `dead_letters` as JSON, so one bad row never blocks the pipeline.
    pub async fn write(&self, batch: &Batch) -> Result<()> {
        let mut rejected = Vec::new();
        self.insert("dead_letters", &batch.dead_letters).await?;
        self.isolate("alerts", &batch.alerts, &mut rejected).await?;
        self.isolate("alert_events", &batch.alert_events, &mut rejected)
            .await?;
        self.isolate("trade_executions", &batch.trade_executions, &mut rejected)
            .await?;
        self.isolate("trades", &batch.trades, &mut rejected).await?;
        self.insert("dead_letters", &rejected).await
    }

    /// Inserts `rows`; on a bad-data refusal, each half again, down to single rows, which
    /// become dead letters.
    fn isolate<'a, T>(
        &'a self,
        table: &'static str,
        rows: &'a [T],
        rejected: &'a mut Vec<DeadLetterRow>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>
    where
        T: Row + RowOwned + RowWrite + serde::Serialize + Sync,
    {
        Box::pin(async move {
            match self.insert(table, rows).await {
                Err(SinkError::Client { source, .. }) if is_bad_data(&source) => {
                    if let [row] = rows {
                        rejected.push(refused(table, row, &source));
                        return Ok(());
                    }
                    let (a, b) = rows.split_at(rows.len() / 2);
                    self.isolate(table, a, rejected).await?;
                    self.isolate(table, b, rejected).await
                }
                other => other,
            }
        })
    }

    async fn insert<T>(&self, table: &'static str, rows: &[T]) -> Result<()>
    where
        T: Row + RowOwned + RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.insert_rows(table, rows).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(m::INSERT_DURATION, "table" => table, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::INSERT_BATCHES, "table" => table, "outcome" => outcome).increment(1);
        if result.is_ok() {
            metrics::counter!(m::ROWS_WRITTEN, "table" => table).increment(rows.len() as u64);
        }
        result.map_err(|source| SinkError::Client {
            url: self.url.clone(),
            action: format!("inserting {} rows into {table}", rows.len()),
            source,
        })
    }

    async fn insert_rows<T>(&self, table: &str, rows: &[T]) -> clickhouse::error::Result<()>
    where
        T: Row + RowOwned + RowWrite,
    {
        let mut insert = self
            .client
            .insert::<T>(table)
            .await?
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

/// ClickHouse error codes that mean "this data is wrong": retrying the same rows cannot succeed.
/// Parsing and type errors, and the refusals that depend on a row's values: a violated
/// `CONSTRAINT` (469) and `throwIf` in a column expression (395, how older servers check rows).
const BAD_DATA: &[u32] = &[6, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 395, 469];

/// Whether ClickHouse refused the data itself (not the connection, the load or the schema).
pub fn is_bad_data(e: &clickhouse::error::Error) -> bool {
    let clickhouse::error::Error::BadResponse(msg) = e else {
        return false;
    };
    error_code(msg).is_some_and(|c| BAD_DATA.contains(&c))
}

/// The `Code: N` of a ClickHouse error message.
fn error_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A row ClickHouse refused, as a dead letter holding the row as JSON.
fn refused<T: serde::Serialize>(
    table: &str,
    row: &T,
    e: &clickhouse::error::Error,
) -> DeadLetterRow {
    let raw = serde_json::to_vec(row).unwrap_or_default();
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
