//! The rows Spillway writes to ClickHouse, and the [`Record`] that carries one of them through the
//! bounded channel from a source to the writer.
//!
//! Every row carries its Redis identity (key, content hash, event time), and its table is a
//! `ReplacingMergeTree` ordered by that identity, so writing a row twice (retry, restart,
//! rescan) never shows a duplicate under `FINAL`.

pub mod alert;
pub(crate) mod cluster;
pub(crate) mod rowbinary;
pub(crate) mod schema;
pub mod trade;

use serde::Serialize;

pub use alert::{AlertEventRow, AlertRow};

/// A value or message that could not be decoded (`dead_letters`).
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct DeadLetterRow {
    /// Pipeline that read it.
    pub pipeline: String,
    /// Redis instance it came from.
    pub instance: String,
    /// Redis key (empty for stream entries).
    pub key: String,
    /// Stream entry id (empty for keys).
    pub stream_id: String,
    /// xxh3-64 of `raw`: with the source, the identity of the row.
    pub content_hash: u64,
    /// The original bytes, exactly.
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
    /// Fixed reason label (`invalid_msgpack`, `invalid_utf8`, ...).
    pub reason: &'static str,
    /// The decoder's message.
    pub error: String,
    /// When Spillway received it (epoch ms).
    pub received_at_ms: i64,
}

/// The table a row goes into, declared in the order their rows are inserted (dead letters
/// first): `table as usize` is its place in [`Table::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `dead_letters`.
    DeadLetters,
    /// `alerts`.
    Alerts,
    /// `alert_events`.
    AlertEvents,
    /// `trade_executions`.
    TradeExecutions,
    /// `trades`.
    Trades,
    /// `replication_offsets`: last, so that in a batch the offset of a replication source is
    /// inserted after the rows it covers.
    ReplicationOffsets,
}

impl Table {
    /// Every table, in the order of the declaration.
    pub const ALL: [Table; 6] = [
        Table::DeadLetters,
        Table::Alerts,
        Table::AlertEvents,
        Table::TradeExecutions,
        Table::Trades,
        Table::ReplicationOffsets,
    ];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Alerts => "alerts",
            Table::AlertEvents => "alert_events",
            Table::DeadLetters => "dead_letters",
            Table::Trades => "trades",
            Table::TradeExecutions => "trade_executions",
            Table::ReplicationOffsets => "replication_offsets",
        }
    }
}

/// `ttl_ms` of a value read with `keyspace.read_ttl = false`: its TTL was not asked. (The other
/// values below zero are Redis's own: -1 the key has no TTL, -2 the key was gone.)
pub const TTL_NOT_READ: i64 = -3;

/// One row, encoded in RowBinary where it was made (so the channel and the batch hold compact
/// bytes, and encoding runs in the sources' tasks, not the writer's).
pub struct Row {
    /// Its table.
    pub table: Table,
    /// When its Redis event was received (epoch ms): the start of its event-to-commit time.
    pub event_ms: i64,
    /// For an alert value with a TTL: when it expires in Redis (epoch ms).
    pub expires_at_ms: Option<i64>,
    /// The RowBinary bytes.
    pub bytes: Vec<u8>,
}

impl Row {
    /// Encodes `row` of `table`, its event at `event_ms`.
    pub fn new<T: Serialize>(table: Table, row: &T, event_ms: i64) -> Row {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Encoded into a buffer kept by the thread, then copied once at its exact size: no
        // growing, and no spare capacity held while the row waits in the channel.
        let bytes = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            // Every row type is plain fields of supported types (unit tests encode each one).
            crate::rows::rowbinary::encode(row, scratch).expect("rows encode");
            scratch.clone()
        });
        Row {
            table,
            event_ms,
            expires_at_ms: None,
            bytes,
        }
    }

    /// The row's columns, read back (tests, dead letters).
    pub fn to_json(&self) -> serde_json::Value {
        let columns = crate::rows::schema::table(self.table.name()).columns;
        crate::rows::rowbinary::to_json(columns, &self.bytes)
    }
}

/// One row on its way to ClickHouse, or an acknowledgement to run once every row before it
/// is committed.
pub enum Record {
    /// A row.
    Row(Row),
    /// Runs after the batch holding it (and so every row sent before it) is committed.
    Ack(AckFn),
}

impl Record {
    /// Into `alerts`.
    pub fn alert(r: AlertRow) -> Record {
        let mut row = Row::new(Table::Alerts, &r, r.captured_at_ms);
        row.expires_at_ms = (r.ttl_ms > 0).then(|| r.captured_at_ms + r.ttl_ms);
        Record::Row(row)
    }
    /// Into `alert_events`.
    pub fn alert_event(r: AlertEventRow) -> Record {
        Record::Row(Row::new(Table::AlertEvents, &r, r.event_ms))
    }
    /// Into `dead_letters`.
    pub fn dead_letter(r: DeadLetterRow) -> Record {
        Record::Row(Row::new(Table::DeadLetters, &r, r.received_at_ms))
    }
    /// Into `trades`.
    pub fn trade(r: crate::rows::trade::TradeRow) -> Record {
        Record::Row(Row::new(Table::Trades, &r, r.received_at_ms))
    }
    /// Into `trade_executions`.
    pub fn trade_execution(r: crate::rows::trade::TradeExecutionRow<'_>) -> Record {
        Record::Row(Row::new(Table::TradeExecutions, &r, r.archived_at_ms))
    }
}

/// An acknowledgement: called once, after commit.
pub type AckFn = Box<dyn FnOnce() + Send + Sync>;

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Record::Row(r) => write!(f, "{} {}", r.table.name(), r.to_json()),
            Record::Ack(_) => f.write_str("Ack"),
        }
    }
}

/// The stable hash of a raw value.
pub fn content_hash(raw: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(raw)
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alert::{CapturedAlert, CapturedBy};

    #[test]
    fn every_row_type_encodes_and_reads_back_whole() {
        let raw = rmp_serde::to_vec_named(&serde_json::json!({"alert_id": "A", "seq": 2})).unwrap();
        let alert = CapturedAlert {
            key: "alert:k1",
            id_from_key: "k1",
            raw: &raw,
            ttl_ms: 3_600_000,
            captured_at_ms: 42,
            captured_by: CapturedBy::Event,
        }
        .decode()
        .unwrap();
        let event = AlertEventRow {
            key: "alert:k1".into(),
            alert_id: "k1".into(),
            event: "expired",
            event_ms: 5,
            content_hash: 0,
            ttl_ms: -2,
        };
        let dead = DeadLetterRow {
            pipeline: "alerts".into(),
            instance: "rls".into(),
            key: "alert:x".into(),
            stream_id: String::new(),
            content_hash: 1,
            raw: vec![0xc1, 0xff],
            reason: "invalid_msgpack",
            error: "bad".into(),
            received_at_ms: 6,
        };
        let trade = crate::rows::trade::trade_row("T", "closed", None, "1-0", 7).unwrap();
        let origin = crate::rows::trade::LogOrigin {
            trade_id: "T",
            take_id: "1-0",
            key: "k",
            now: 8,
        };
        let mut execs = crate::rows::trade::log_value_rows(origin, &raw, 0)
            .unwrap()
            .rows;
        let exec = execs.remove(0);
        let records = [
            Record::alert(alert),
            Record::alert_event(event),
            Record::dead_letter(dead),
            Record::trade(trade),
            Record::trade_execution(exec),
        ];
        for r in &records {
            let Record::Row(row) = r else { panic!() };
            let columns = crate::rows::schema::table(row.table.name()).columns;
            let json = row.to_json();
            assert_eq!(json.as_object().unwrap().len(), columns.len(), "{r:?}");
        }
        let Record::Row(a) = &records[0] else {
            panic!()
        };
        assert_eq!((a.event_ms, a.expires_at_ms), (42, Some(42 + 3_600_000)));
        assert_eq!(a.to_json()["alert_id"], "A");
        let Record::Row(e) = &records[4] else {
            panic!()
        };
        assert_eq!((e.to_json()["seq"].as_i64(), e.event_ms), (Some(2), 8));
    }
}
