//! The ClickHouse side: connecting, creating and checking the tables, and inserting one batch of
//! rows per table in RowBinary through the `clickhouse` crate.

use std::time::{Duration, Instant};

use clickhouse::Client;

use super::rowbinary;
use super::schema::{self, Generation, TABLES};
use crate::config::{redact_url, ClickHouseSettings};
use crate::metrics as m;
use crate::rows::{AckFn, DeadLetterRow, Record, Row, Table};

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

/// The rows of one table in a batch, in RowBinary, with where each row ends (to split the
/// insert when ClickHouse refuses a row) and when each row's event happened. The bytes are kept
/// in chunks of [`CHUNK`] (a row never spans two), so a batch grows without copying itself.
#[derive(Default)]
struct Rows {
    chunks: Vec<Vec<u8>>,
    /// (chunk, end offset in it) of each row.
    ends: Vec<(u32, u32)>,
    event_ms: Vec<i64>,
}

/// Bytes per chunk of a batch, and per piece of an INSERT sent.
const CHUNK: usize = 1 << 20;

impl Rows {
    fn push(&mut self, bytes: &[u8], event_ms: i64) {
        match self.chunks.last_mut() {
            Some(c) if c.len() + bytes.len() <= c.capacity() => {}
            _ => self.chunks.push(Vec::with_capacity(CHUNK.max(bytes.len()))),
        }
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        chunk.extend_from_slice(bytes);
        self.ends.push((last as u32, chunk.len() as u32));
        self.event_ms.push(event_ms);
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Appends every row of `other` (rows refused by ClickHouse: few and small).
    fn extend(&mut self, other: &Rows) {
        for i in 0..other.len() {
            self.push(&other.bytes(&(i..i + 1)).concat(), other.event_ms[i]);
        }
    }

    /// The bytes of rows `range`, as slices of the chunks, in order.
    fn bytes(&self, range: &std::ops::Range<usize>) -> Vec<&[u8]> {
        let (Some(first), Some(&(last, end))) = (
            self.ends.get(range.start),
            range.end.checked_sub(1).and_then(|i| self.ends.get(i)),
        ) else {
            return Vec::new();
        };
        let start = match range.start.checked_sub(1).map(|i| self.ends[i]) {
            Some((c, e)) if c == first.0 => e as usize,
            _ => 0,
        };
        (first.0..=last)
            .map(|c| {
                let chunk = &self.chunks[c as usize];
                let from = if c == first.0 { start } else { 0 };
                let to = if c == last { end as usize } else { chunk.len() };
                &chunk[from..to]
            })
            .collect()
    }
}

/// Rows of one batch, grouped by table.
#[derive(Default)]
pub struct Batch {
    tables: [Rows; Table::ALL.len()],
    acks: Vec<AckFn>,
    /// The earliest time an alert value of the batch expires in Redis (epoch ms).
    expires_at_ms: Option<i64>,
    rows: usize,
    bytes: usize,
}

impl Batch {
    /// Adds a record.
    pub fn push(&mut self, r: Record) {
        match r {
            Record::Row(row) => {
                if let Some(at) = row.expires_at_ms {
                    self.expires_at_ms = Some(self.expires_at_ms.map_or(at, |e| e.min(at)));
                }
                self.tables[row.table as usize].push(&row.bytes, row.event_ms);
                self.rows += 1;
                self.bytes += row.bytes.len();
            }
            Record::Ack(a) => self.acks.push(a),
        }
    }

    /// Records, for every committed row, the time from its Redis event (as Spillway received
    /// it) to `now_ms`, its commit.
    pub fn observe_commit(&self, now_ms: i64) {
        for (table, rows) in Table::ALL.iter().zip(&self.tables) {
            if *table == Table::DeadLetters {
                continue;
            }
            let h = metrics::histogram!(m::EVENT_TO_COMMIT, "table" => table.name());
            for t in &rows.event_ms {
                h.record((now_ms - t).max(0) as f64 / 1000.0);
            }
        }
    }

    /// When the earliest alert value of the batch expires in Redis (epoch ms), if any: how close
    /// a value read but not yet committed is to expiring (after which a crash could not recover
    /// it by a rescan).
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at_ms
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

    /// Bytes buffered (RowBinary).
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
            .with_compression(if s.compression {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            })
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

    /// Inserts every table's rows of the batch; each table is one INSERT, all at once (the
    /// batch waits for the slowest, not for their sum). On error the whole batch may be written
    /// again: rows are idempotent.
    ///
    /// Rows that ClickHouse refuses as bad data (a retry cannot help) are isolated by halving
    /// the insert and go to `dead_letters` as JSON, so one bad row never blocks the pipeline.
    pub async fn write(&self, batch: &Batch) -> Result<()> {
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
                Err(SinkError::Client { source, .. }) if is_bad_data(&source) => {
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

    async fn insert(
        &self,
        table: &'static str,
        rows: &Rows,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.insert_rows(table, rows.bytes(&range)).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!(m::INSERT_DURATION, "table" => table, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::INSERT_BATCHES, "table" => table, "outcome" => outcome).increment(1);
        if result.is_ok() {
            metrics::counter!(m::ROWS_WRITTEN, "table" => table).increment(range.len() as u64);
        }
        result.map_err(|source| SinkError::Client {
            url: self.url.clone(),
            action: format!("inserting {} rows into {table}", range.len()),
            source,
        })
    }

    /// One INSERT of RowBinary rows, sent in pieces (each compressed when compression is on).
    async fn insert_rows(
        &self,
        table: &'static str,
        data: Vec<&[u8]>,
    ) -> clickhouse::error::Result<()> {
        let columns = schema::table(table).column_names().join(", ");
        let mut insert = self
            .client
            .insert_formatted_with(format!("INSERT INTO {table} ({columns}) FORMAT RowBinary"))
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        for piece in data {
            insert.send(bytes::Bytes::copy_from_slice(piece)).await?;
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
    fn a_table_is_its_place_in_all() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?}");
        }
    }

    #[test]
    fn any_range_of_rows_reads_back_across_chunks() {
        // Rows of 300 kB and 1 B: three or four to a chunk, one larger than a chunk.
        let sizes = [300_000, 1, 300_000, 300_000, 300_000, 2 * CHUNK, 5, 300_000];
        let rows: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| vec![i as u8; *n])
            .collect();
        let mut r = Rows::default();
        for (i, row) in rows.iter().enumerate() {
            r.push(row, i as i64);
        }
        assert!(r.chunks.len() >= 3, "{} chunks", r.chunks.len());
        for i in 0..=rows.len() {
            for j in i..=rows.len() {
                assert_eq!(r.bytes(&(i..j)).concat(), rows[i..j].concat(), "{i}..{j}");
            }
        }
    }

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
