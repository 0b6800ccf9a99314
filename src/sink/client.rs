//! The ClickHouse side: connecting, creating and checking the tables, and inserting one batch of
//! rows per table in RowBinary through the `clickhouse` crate.

use std::time::{Duration, Instant};

use clickhouse::Client;

use super::batch::Rows;
use crate::config::{redact_url, ClickHouseSettings};
use crate::metrics as m;
use crate::rows::schema::{self, Generation};

/// Errors of the ClickHouse side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SinkError {
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
    /// An INSERT failed.
    #[error("ClickHouse at {url}: inserting {rows} rows into {table}: {source}")]
    Insert {
        /// The server (password redacted).
        url: String,
        /// The table.
        table: &'static str,
        /// How many rows.
        rows: usize,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// The configuration asks for something the server cannot do.
    #[error("ClickHouse at {0}")]
    Unsupported(String),
    /// An existing table is not what Spillway writes (columns, types, engine or sorting key).
    #[error("table {database}.{table} is not what Spillway writes: {}; fix: run `{fix}` (or point SPILLWAY_CLICKHOUSE_DATABASE at another database)", differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Schema {
        /// Database.
        database: String,
        /// Table.
        table: String,
        /// Each difference.
        differences: Vec<crate::rows::schema::Difference>,
        /// The statement that fixes it.
        fix: String,
    },
    /// The TLS connection to ClickHouse could not be set up (certificate not trusted, client
    /// certificate refused, unreadable files).
    #[error("ClickHouse at {url}: {reason}")]
    Tls {
        /// The server (password redacted).
        url: String,
        /// What failed and the setting to check.
        reason: String,
    },
}

/// Result alias of this module.
pub(crate) type Result<T> = std::result::Result<T, SinkError>;

/// A connected ClickHouse with its tables in place.
#[derive(Clone)]
pub(crate) struct Sink {
    client: Client,
    url: String,
    insert_timeout: Duration,
    /// Whether inserts carry a deduplication token (servers from 22.2 on).
    tokens: bool,
    /// Whether the tables are `Distributed` ones over a cluster: inserts then wait until every
    /// shard has its rows (`insert_distributed_sync`), so a commit means the shards have them.
    cluster: bool,
}

impl Sink {
    /// Connects, creates the database and the tables when missing, and checks existing tables.
    pub(crate) async fn connect(s: &ClickHouseSettings) -> Result<Sink> {
        let url = redact_url(&s.url);
        let tls = |reason| SinkError::Tls {
            url: url.clone(),
            reason,
        };
        let is_https = url::Url::parse(&s.url).is_ok_and(|u| u.scheme() == "https");
        let http = if is_https {
            super::tls::client(&s.tls).map_err(tls)?
        } else {
            Client::default()
        };
        let base = http
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
        // The first request: a failed TLS handshake shows here, explained by what to check.
        let first = |e| match super::tls::explain(&e, &s.tls) {
            Some(reason) => tls(reason),
            None => err("asking its version")(e),
        };
        // Under TLS 1.3 a server refusing the client's certificate says so after the handshake:
        // the first request can fail before its alert is read ("connection was not ready").
        // Asked again (at most three times), the alert shows and is explained.
        let mut attempts = 0;
        let version: String = loop {
            attempts += 1;
            match base.query("SELECT version()").fetch_one().await {
                Ok(v) => break v,
                Err(e) if attempts < 3 && is_https && super::tls::explain(&e, &s.tls).is_none() => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(first(e)),
            }
        };
        let generation = Generation::from_version(&version);
        if s.retention_days.is_some() && generation == Generation::Legacy {
            return Err(SinkError::Unsupported(format!(
                "clickhouse.retention_days needs ClickHouse 20.1 or later (a TTL), the server is {}; fix: remove the line, or delete old rows by hand",
                version.trim()
            )));
        }
        super::ddl::create_and_check(&base, &url, s, generation).await?;
        let cluster = s.cluster.as_ref().map(|c| c.name.as_str());
        tracing::info!(%url, %version, ?generation, database = %s.database, ?cluster, "ClickHouse ready");
        Ok(Sink {
            client: base.with_database(&s.database),
            url,
            insert_timeout: s.insert_timeout,
            tokens: generation == Generation::Modern,
            cluster: s.cluster.is_some(),
        })
    }

    /// Whether ClickHouse answers `SELECT 1`.
    pub(crate) async fn ping(&self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }

    /// A client on Spillway's database (the replication source reads its stored offset).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client on the `system` database, which always exists: it can create Spillway's
    /// database again when it is gone (a client on a missing database fails every query).
    pub(super) fn admin(&self) -> Client {
        self.client.clone().with_database("system")
    }

    /// The URL, password redacted.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) async fn insert(
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
        result.map_err(|source| SinkError::Insert {
            url: self.url.clone(),
            table,
            rows: range.len(),
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
        if self.cluster {
            // 18.16 knows only this name; current servers take it as an alias of
            // `distributed_foreground_insert`.
            insert = insert.with_setting("insert_distributed_sync", "1");
        }
        if self.tokens {
            // The same rows give the same token: a retried insert (after a timeout whose outcome
            // is unknown, or a restart) is dropped by the server instead of written twice. Through
            // a Distributed table the setting goes with each shard's part of the insert, and each
            // shard checks it in its own replicated block log.
            insert = insert.with_setting("insert_deduplication_token", dedup_token(table, &data));
        }
        for piece in data {
            insert.send(bytes::Bytes::copy_from_slice(piece)).await?;
        }
        insert.end().await
    }
}

/// The deduplication token of an insert: the table and an xxh3-128 of its RowBinary bytes.
fn dedup_token(table: &str, data: &[&[u8]]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for piece in data {
        h.update(piece);
    }
    format!("{table}-{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use spillway_testkit::ClickHouseServer;

    use super::*;
    use crate::config::ClickHouseSettings;
    use crate::rows::{AlertEventRow, Record};
    use crate::sink::batch::Batch;

    /// A batch written twice (a retry after an insert whose outcome was unknown): stored once
    /// on a current server, before any merge; twice on 18.16, where only `FINAL` hides it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_batch_is_stored_once_on_current_servers() {
        for modern in [true, false] {
            let server = if modern {
                ClickHouseServer::start_modern()
            } else {
                ClickHouseServer::start_legacy()
            };
            let settings = ClickHouseSettings {
                url: server.url(),
                user: "default".into(),
                password: String::new(),
                password_file: None,
                database: "tdedup".into(),
                recreate_tables: true,
                insert_timeout: Duration::from_secs(30),
                compression: false,
                // The TTL DDL is accepted by the current server (18.16 refuses it at start).
                retention_days: modern.then_some(400),
                tls: Default::default(),
                cluster: None,
            };
            let sink = Sink::connect(&settings).await.expect("connect");
            assert_eq!(sink.tokens, modern);
            let mut batch = Batch::default();
            for i in 0..100 {
                batch.push(Record::alert_event(AlertEventRow {
                    key: format!("alert:{i}"),
                    alert_id: i.to_string(),
                    event: "expired",
                    event_ms: crate::rows::now_ms() + i,
                    content_hash: 0,
                    ttl_ms: -2,
                }));
            }
            sink.write(&batch).await.expect("first insert");
            sink.write(&batch).await.expect("the retry");
            let raw = server
                .count("SELECT count() FROM tdedup.alert_events")
                .await;
            let fin = server
                .count("SELECT count() FROM tdedup.alert_events FINAL")
                .await;
            assert_eq!(fin, 100);
            assert_eq!(raw, if modern { 100 } else { 200 }, "modern: {modern}");
            if modern {
                let ddl = server
                    .query("SHOW CREATE TABLE tdedup.alert_events FORMAT TSVRaw")
                    .await;
                assert!(
                    ddl.contains("TTL toDateTime(event_ms) + toIntervalDay(400)"),
                    "{ddl}"
                );
                // The TTL at work: rows archived more than 400 days ago go at the next merge,
                // the recent ones stay.
                let mut old = Batch::default();
                for i in 0..10 {
                    old.push(Record::alert_event(AlertEventRow {
                        key: format!("old:{i}"),
                        alert_id: i.to_string(),
                        event: "expired",
                        event_ms: 1_577_836_800_000 + i, // 2020-01-01
                        content_hash: 0,
                        ttl_ms: -2,
                    }));
                }
                sink.write(&old).await.expect("old rows");
                server
                    .query("OPTIMIZE TABLE tdedup.alert_events FINAL")
                    .await;
                let left = "SELECT countIf(key LIKE 'old:%') * 1000 + countIf(key LIKE 'alert:%') FROM tdedup.alert_events";
                assert_eq!(server.count(left).await, 100, "{left}");
            } else {
                let refused = Sink::connect(&ClickHouseSettings {
                    retention_days: Some(400),
                    ..settings.clone()
                })
                .await;
                let e = refused.err().expect("18.16 has no TTL").to_string();
                assert!(e.contains("retention_days needs ClickHouse 20.1"), "{e}");
            }
        }
    }
}
