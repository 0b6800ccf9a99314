//! The ClickHouse tables: their columns, engines and identities, with types chosen by server
//! version while the RowBinary bytes stay the same (`Int64` and `DateTime64(3)` both take an i64
//! of milliseconds; `String` and `LowCardinality(String)` both take a string).

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
    /// 20.1 and later.
    Current,
}

impl Generation {
    /// Picks the generation from `SELECT version()`, e.g. `18.16.1` or `24.8.4.13`.
    pub(crate) fn from_version(version: &str) -> Generation {
        let mut parts = version
            .trim()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (20, 1) {
            Generation::Current
        } else {
            Generation::Legacy
        }
    }

    fn render(self, col: Col) -> &'static str {
        match (self, col) {
            (_, Col::Str) => "String",
            (Generation::Legacy, Col::Label) => "String",
            (Generation::Current, Col::Label) => "LowCardinality(String)",
            (_, Col::U64) => "UInt64",
            (_, Col::I64) => "Int64",
            (Generation::Legacy, Col::TimeMs) => "Int64",
            (Generation::Current, Col::TimeMs) => "DateTime64(3)",
            (Generation::Legacy, Col::TimeMsOpt) => "Nullable(Int64)",
            (Generation::Current, Col::TimeMsOpt) => "Nullable(DateTime64(3))",
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
    /// A time column to partition by month, when partitioning cannot split an identity.
    pub partition_time: Option<&'static str>,
    /// The version column of `ReplacingMergeTree(version)`: the row `FINAL` keeps is the one
    /// with the highest version (without one, the last inserted).
    pub version: Option<&'static str>,
}

/// The tables of the alerts and trades pipelines and the dead letters.
///
/// `alerts`, `dead_letters`, `trades` and `trade_executions` are not partitioned: their identity (key and content) carries no
/// time, and a value captured again months later must still fall in the same partition to be
/// deduplicated (a trade's rows are written again when a close is redelivered). `alert_events`
/// is identified by its event time, so it is partitioned by month.
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
        ],
        order_by: "key, content_hash",
        partition_time: None,
        version: None,
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
        partition_time: Some("event_ms"),
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
        partition_time: None,
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
        partition_time: None,
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
        partition_time: None,
        version: None,
    },
];

/// The table named `name` (one of [`TABLES`]).
pub(crate) fn table(name: &str) -> &'static Table {
    TABLES
        .iter()
        .find(|t| t.name == name)
        .expect("a table of TABLES")
}

impl Table {
    /// `CREATE TABLE IF NOT EXISTS` for `database` on a server of `generation`.
    pub(crate) fn create_sql(&self, database: &str, generation: Generation) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(name, col)| format!("    {name} {}", generation.render(*col)))
            .collect();
        let partition = match (self.partition_time, generation) {
            (None, _) => String::new(),
            (Some(c), Generation::Legacy) => {
                format!("PARTITION BY toYYYYMM(toDateTime(intDiv({c}, 1000)))\n")
            }
            (Some(c), Generation::Current) => format!("PARTITION BY toYYYYMM({c})\n"),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.{name} (\n{cols}\n) ENGINE = ReplacingMergeTree({version})\n{partition}ORDER BY ({order})",
            name = self.name,
            version = self.version.unwrap_or(""),
            cols = cols.join(",\n"),
            order = self.order_by,
        )
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
    fn generation_by_version() {
        assert_eq!(Generation::from_version("18.16.1"), Generation::Legacy);
        assert_eq!(Generation::from_version("19.17.4.11"), Generation::Legacy);
        assert_eq!(Generation::from_version("20.1.2.4"), Generation::Current);
        assert_eq!(Generation::from_version("24.8.4.13\n"), Generation::Current);
        assert_eq!(Generation::from_version("26.1.1.1"), Generation::Current);
    }

    #[test]
    fn ddl_differs_only_in_types() {
        let t = &TABLES[1];
        let old = t.create_sql("db", Generation::Legacy);
        let new = t.create_sql("db", Generation::Current);
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
