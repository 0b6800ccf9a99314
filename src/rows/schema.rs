//! The ClickHouse tables: their columns, engines and identities, with types chosen by server
//! version while the RowBinary bytes stay the same (`Int64` and `DateTime64(3)` both take an i64
//! of milliseconds; `String` and `LowCardinality(String)` both take a string). How an existing
//! table is checked against them: [`check`].

mod check;

pub(crate) use check::{engine_args, fix_statement, Difference};

/// A column type, rendered by server generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    /// `String`.
    Str,
    /// `LowCardinality(String)` on current servers, `String` on old ones.
    Label,
    /// `UInt64`.
    U64,
    /// `Int64`.
    I64,
    /// Epoch milliseconds: `DateTime64(3)` on current servers, `Int64` on old ones.
    TimeMs,
    /// Nullable epoch milliseconds.
    TimeMsOpt,
    /// `Nullable(Float64)`.
    F64Opt,
    /// `Nullable(Int64)`.
    I64Opt,
    /// `UInt32`.
    U32,
}

/// Which ClickHouse the tables are made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// Before 20.1 (no DateTime64, LowCardinality experimental): 18.16 as shipped by Debian.
    Legacy,
    /// 20.1 to 22.1.
    Current,
    /// 22.2 and later: as `Current`, and inserts carry an `insert_deduplication_token` that the
    /// tables honour (`non_replicated_deduplication_window`), so a retried batch adds no rows
    /// even before merges.
    Modern,
}

impl Generation {
    /// Picks the generation from `SELECT version()`, e.g. `18.16.1` or `24.8.4.13`.
    pub(crate) fn from_version(version: &str) -> Generation {
        let mut parts = version
            .trim()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (22, 2) {
            Generation::Modern
        } else if (major, minor) >= (20, 1) {
            Generation::Current
        } else {
            Generation::Legacy
        }
    }

    pub(crate) fn render(self, col: Col) -> &'static str {
        let legacy = self == Generation::Legacy;
        match (legacy, col) {
            (_, Col::Str) => "String",
            (true, Col::Label) => "String",
            (false, Col::Label) => "LowCardinality(String)",
            (_, Col::U64) => "UInt64",
            (_, Col::I64) => "Int64",
            (true, Col::TimeMs) => "Int64",
            (false, Col::TimeMs) => "DateTime64(3)",
            (true, Col::TimeMsOpt) => "Nullable(Int64)",
            (false, Col::TimeMsOpt) => "Nullable(DateTime64(3))",
            (_, Col::F64Opt) => "Nullable(Float64)",
            (_, Col::I64Opt) => "Nullable(Int64)",
            (_, Col::U32) => "UInt32",
        }
    }
}

/// One table.
#[derive(Debug)]
pub(crate) struct Table {
    /// Name.
    pub name: &'static str,
    /// Columns in order.
    pub columns: &'static [(&'static str, Col)],
    /// `ORDER BY`: the row identity that ReplacingMergeTree deduplicates on.
    pub order_by: &'static str,
    /// On a cluster, the columns of the sharding key (`cityHash64(...)`): some of the identity's,
    /// so that copies of one row always land on the same shard and meet under `FINAL`.
    pub shard_by: &'static str,
    /// A time column to partition by month, when partitioning cannot split an identity.
    pub partition_time: Option<&'static str>,
    /// A monthly partition expression for servers from 20.1, when the identity carries a time
    /// of its own that is not a column (one `PARTITION BY` or the other, never both).
    pub partition_by: Option<&'static str>,
    /// When a row was archived: what `retention_days` counts from.
    pub archived_at: &'static str,
    /// The version column of `ReplacingMergeTree(version)`: the row `FINAL` keeps is the one
    /// with the highest version (without one, the last inserted).
    pub version: Option<&'static str>,
}

/// The local table of a cluster, as [`Table::create_sql_in`] creates it.
#[derive(Debug)]
pub(crate) struct Replicated<'a> {
    /// The local table's name.
    pub table: &'a str,
    /// The cluster (`ON CLUSTER`).
    pub cluster: &'a str,
    /// The ZooKeeper path, with `{shard}` left to the servers' macros.
    pub path: &'a str,
    /// The replica name (a macro of the servers).
    pub replica: &'a str,
}

/// The month of the close that took a log: its `take_id` is that close's stream entry id
/// (`<ms>-<seq>`) or, for a pub/sub close, `ps-<ms>-<pid>-<n>`; the first run of ten digits or
/// more is the close's time in ms. Fixed for every row of a take, so a take written again
/// (a redelivered close) meets its first copy in the same partition.
const TAKE_MONTH: &str =
    "toYYYYMM(toDateTime(intDiv(toUInt64OrZero(extract(take_id, '[0-9]{10,}')), 1000)))";

/// The tables of the alerts and trades pipelines and the dead letters.
///
/// `alerts`, `dead_letters` and `trades` are not partitioned: their identity (key and content,
/// or the trade id) carries no time, and a value captured again months later must still fall in
/// the same partition to be deduplicated. `alert_events` is identified by its event time, so it
/// is partitioned by month; `trade_executions` by the month of the close that took the log
/// (its `take_id`), on servers from 20.1.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "alerts",
        columns: &[
            ("key", Col::Str),
            ("content_hash", Col::U64),
            ("alert_id", Col::Str),
            ("ts_ms", Col::TimeMs),
            ("severity", Col::Label),
            ("kind", Col::Label),
            ("message", Col::Str),
            ("account_id", Col::Str),
            ("instance_id", Col::Label),
            ("symbol", Col::Label),
            ("trade_id", Col::Str),
            ("extra", Col::Str),
            ("format", Col::Label),
            ("ttl_ms", Col::I64),
            ("captured_at_ms", Col::TimeMs),
            ("captured_by", Col::Label),
            ("version", Col::U64),
        ],
        order_by: "key, content_hash",
        shard_by: "key",
        archived_at: "captured_at_ms",
        partition_time: None,
        partition_by: None,
        version: Some("version"),
    },
    Table {
        name: "alert_events",
        columns: &[
            ("key", Col::Str),
            ("alert_id", Col::Str),
            ("event", Col::Label),
            ("event_ms", Col::TimeMs),
            ("content_hash", Col::U64),
            ("ttl_ms", Col::I64),
        ],
        order_by: "key, event, event_ms, content_hash",
        shard_by: "key",
        archived_at: "event_ms",
        partition_time: Some("event_ms"),
        partition_by: None,
        version: None,
    },
    Table {
        name: "dead_letters",
        columns: &[
            ("pipeline", Col::Label),
            ("instance", Col::Label),
            ("key", Col::Str),
            ("stream_id", Col::Str),
            ("content_hash", Col::U64),
            ("raw", Col::Str),
            ("reason", Col::Label),
            ("error", Col::Str),
            ("received_at_ms", Col::TimeMs),
        ],
        order_by: "pipeline, key, stream_id, content_hash",
        shard_by: "key, stream_id, content_hash",
        archived_at: "received_at_ms",
        partition_time: None,
        partition_by: None,
        version: None,
    },
    Table {
        name: "trades",
        columns: &[
            ("trade_id", Col::Str),
            ("event", Col::Label),
            ("account_id", Col::Str),
            ("instance_id", Col::Label),
            ("symbol", Col::Label),
            ("side", Col::Label),
            ("volume", Col::F64Opt),
            ("open_price", Col::F64Opt),
            ("close_price", Col::F64Opt),
            ("profit", Col::F64Opt),
            ("commission", Col::F64Opt),
            ("swap", Col::F64Opt),
            ("opened_at_ms", Col::TimeMsOpt),
            ("closed_at_ms", Col::TimeMsOpt),
            ("extra", Col::Str),
            ("stream_id", Col::Str),
            ("log_entries", Col::U32),
            ("log_state", Col::Label),
            ("received_at_ms", Col::TimeMs),
            ("version", Col::U64),
        ],
        order_by: "trade_id",
        shard_by: "trade_id",
        archived_at: "received_at_ms",
        partition_time: None,
        partition_by: None,
        version: Some("version"),
    },
    Table {
        name: "trade_executions",
        columns: &[
            ("trade_id", Col::Str),
            ("take_id", Col::Str),
            ("position", Col::U32),
            ("seq", Col::I64),
            ("ts_ms", Col::TimeMs),
            ("step", Col::Label),
            ("instance_id", Col::Label),
            ("account_id", Col::Str),
            ("symbol", Col::Label),
            ("side", Col::Label),
            ("volume", Col::F64Opt),
            ("price", Col::F64Opt),
            ("sl", Col::F64Opt),
            ("tp", Col::F64Opt),
            ("order_ticket", Col::I64Opt),
            ("deal_ticket", Col::I64Opt),
            ("retcode", Col::I64Opt),
            ("latency_us", Col::I64Opt),
            ("comment", Col::Str),
            ("text", Col::Str),
            ("extra", Col::Str),
            ("format", Col::Label),
            ("source_key", Col::Str),
            ("archived_at_ms", Col::TimeMs),
        ],
        order_by: "trade_id, take_id, position",
        shard_by: "trade_id",
        archived_at: "archived_at_ms",
        partition_time: None,
        partition_by: Some(TAKE_MONTH),
        version: None,
    },
    Table {
        name: "replication_offsets",
        columns: &[
            ("pipeline", Col::Label),
            ("instance", Col::Label),
            ("replid", Col::Str),
            ("offset", Col::U64),
            ("db", Col::U32),
            ("stored_at_ms", Col::TimeMs),
            ("version", Col::U64),
        ],
        order_by: "pipeline, instance",
        shard_by: "pipeline, instance",
        archived_at: "stored_at_ms",
        partition_time: None,
        partition_by: None,
        version: Some("version"),
    },
];

pub(crate) fn table(name: &str) -> &'static Table {
    TABLES
        .iter()
        .find(|t| t.name == name)
        .expect("a table of TABLES")
}

impl Table {
    /// `CREATE TABLE IF NOT EXISTS` for `database` on a server of `generation`, its rows kept
    /// `retention_days` when given (a TTL on the time each row was archived; servers from 20.1).
    pub(crate) fn create_sql(
        &self,
        database: &str,
        generation: Generation,
        retention_days: Option<u32>,
    ) -> String {
        self.create_sql_in(database, generation, retention_days, None)
    }

    /// [`Table::create_sql`], or with `replicated` the local table of a cluster: created under
    /// its own name `ON CLUSTER`, as `ReplicatedReplacingMergeTree` (whose inserts are
    /// deduplicated by block without a table setting).
    pub(crate) fn create_sql_in(
        &self,
        database: &str,
        generation: Generation,
        retention_days: Option<u32>,
        replicated: Option<&Replicated<'_>>,
    ) -> String {
        let partition = match (self.partition_time, generation) {
            (None, Generation::Current | Generation::Modern) => match self.partition_by {
                Some(expr) => format!("PARTITION BY {expr}\n"),
                None => String::new(),
            },
            (None, _) => String::new(),
            (Some(c), Generation::Legacy) => {
                format!("PARTITION BY toYYYYMM(toDateTime(intDiv({c}, 1000)))\n")
            }
            (Some(c), _) => format!("PARTITION BY toYYYYMM({c})\n"),
        };
        let ttl = match (retention_days, generation) {
            (Some(days), Generation::Current | Generation::Modern) => format!(
                "\nTTL toDateTime({}) + toIntervalDay({days})",
                self.archived_at
            ),
            _ => String::new(),
        };
        let version = self.version.unwrap_or("");
        let (name, engine, settings) = match replicated {
            None => (
                format!("{database}.{}", self.name),
                format!("ReplacingMergeTree({version})"),
                // Inserts identical to one of the last 1000 (by their token) are dropped.
                match generation {
                    Generation::Modern => "\nSETTINGS non_replicated_deduplication_window = 1000",
                    _ => "",
                },
            ),
            Some(r) => (
                format!("{database}.{} ON CLUSTER `{}`", r.table, r.cluster),
                format!(
                    "ReplicatedReplacingMergeTree('{}', '{}'{}{version})",
                    r.path,
                    r.replica,
                    if version.is_empty() { "" } else { ", " }
                ),
                "",
            ),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {name} (\n{cols}\n) ENGINE = {engine}\n{partition}ORDER BY ({order}){ttl}{settings}",
            cols = self.columns_sql(generation),
            order = self.order_by,
        )
    }

    /// The column list of a `CREATE TABLE`, one column a line.
    pub(crate) fn columns_sql(&self, generation: Generation) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(name, col)| format!("    {name} {}", generation.render(*col)))
            .collect();
        cols.join(",\n")
    }

    /// The column names in order.
    pub(crate) fn column_names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(n, _)| *n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_executions_are_partitioned_by_the_month_of_their_take() {
        let t = table("trade_executions");
        let modern = t.create_sql("db", Generation::Modern, None);
        assert!(
            modern.contains(
                "PARTITION BY toYYYYMM(toDateTime(intDiv(toUInt64OrZero(extract(take_id, '[0-9]{10,}')), 1000)))\nORDER BY"
            ),
            "{modern}"
        );
        assert!(!t
            .create_sql("db", Generation::Legacy, None)
            .contains("PARTITION"));
        assert!(!table("trades")
            .create_sql("db", Generation::Modern, None)
            .contains("PARTITION"));
    }

    #[test]
    fn generation_by_version() {
        assert_eq!(Generation::from_version("18.16.1"), Generation::Legacy);
        assert_eq!(Generation::from_version("19.17.4.11"), Generation::Legacy);
        assert_eq!(Generation::from_version("20.1.2.4"), Generation::Current);
        assert_eq!(Generation::from_version("22.1.3.7"), Generation::Current);
        assert_eq!(Generation::from_version("24.8.4.13\n"), Generation::Modern);
        assert_eq!(Generation::from_version("26.1.1.1"), Generation::Modern);
    }

    #[test]
    fn ddl_differs_only_in_types() {
        let t = &TABLES[1];
        let old = t.create_sql("db", Generation::Legacy, None);
        let new = t.create_sql("db", Generation::Current, None);
        let modern = t.create_sql("db", Generation::Modern, None);
        let kept = t.create_sql("db", Generation::Modern, Some(400));
        assert!(
            kept.contains("\nTTL toDateTime(event_ms) + toIntervalDay(400)\nSETTINGS"),
            "{kept}"
        );
        assert_eq!(old, t.create_sql("db", Generation::Legacy, Some(400)));
        assert!(!new.contains("SETTINGS"));
        assert_eq!(
            modern,
            format!("{new}\nSETTINGS non_replicated_deduplication_window = 1000")
        );
        assert!(
            old.contains("event_ms Int64") && new.contains("event_ms DateTime64(3)"),
            "{old}\n{new}"
        );
        assert!(new.contains("event LowCardinality(String)"));
        assert!(old.contains("ORDER BY (key, event, event_ms, content_hash)"));
    }

    #[test]
    fn rows_match_columns() {
        use clickhouse::Row;
        for (t, cols) in [
            ("alerts", crate::rows::AlertRow::COLUMN_NAMES),
            ("alert_events", crate::rows::AlertEventRow::COLUMN_NAMES),
            ("dead_letters", crate::rows::DeadLetterRow::COLUMN_NAMES),
            ("trades", crate::rows::trade::TradeRow::COLUMN_NAMES),
            (
                "trade_executions",
                crate::rows::trade::TradeExecutionRow::COLUMN_NAMES,
            ),
        ] {
            let table = TABLES.iter().find(|x| x.name == t).unwrap();
            assert_eq!(table.column_names(), cols, "{t}");
        }
    }
}
