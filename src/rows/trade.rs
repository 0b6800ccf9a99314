//! Trades and their execution logs: the rows of `trades` and `trade_executions`, and the pure
//! functions that make them from a `trade_results` stream entry and a `trade_execution:{id}` log.

use std::borrow::Cow;

use serde::Serialize;

use crate::decode::{
    decode_msgpack_array_of_fields, decode_msgpack_fields, DecodeError, Fields, Flat, TakeFields,
};

/// A closed (or rejected) trade (`trades`), identified by `trade_id`.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct TradeRow {
    /// The trade.
    pub trade_id: String,
    /// The stream event that archived it (`closed`, `rejected`, ...).
    pub event: String,
    /// Payload fields.
    pub account_id: String,
    /// Payload fields.
    pub instance_id: String,
    /// Payload fields.
    pub symbol: String,
    /// Payload fields.
    pub side: String,
    /// Lots.
    pub volume: Option<f64>,
    /// Payload fields.
    pub open_price: Option<f64>,
    /// Payload fields.
    pub close_price: Option<f64>,
    /// Payload fields.
    pub profit: Option<f64>,
    /// Payload fields.
    pub commission: Option<f64>,
    /// Payload fields.
    pub swap: Option<f64>,
    /// Epoch ms.
    pub opened_at_ms: Option<i64>,
    /// Epoch ms.
    pub closed_at_ms: Option<i64>,
    /// Other payload fields, as a JSON object text.
    pub extra: String,
    /// The stream entry id (empty when the close came over pub/sub).
    pub stream_id: String,
    /// Entries of the execution log archived with it.
    pub log_entries: u32,
    /// What became of the trade's execution log.
    pub log_state: LogState,
    /// When Spillway read the entry (epoch ms).
    pub received_at_ms: i64,
    /// Which row of a trade `FINAL` keeps (`ReplacingMergeTree(version)`): one whose log was
    /// moved beats one whose log was kept or missing (a redelivered close, or the stream's close
    /// after the pub/sub one, finds the log already gone), and more entries beat fewer.
    pub version: u64,
}

impl TradeRow {
    /// Sets the log's fate and the row's version from it.
    pub fn set_log(&mut self, state: LogState, entries: u32) {
        let rank: u64 = match state {
            LogState::Moved => 2,
            LogState::Kept => 1,
            LogState::Missing => 0,
        };
        self.log_state = state;
        self.log_entries = entries;
        self.version = rank << 32 | u64::from(entries);
    }
}

/// What became of a trade's execution log when its close (or another event) was archived:
/// written in `trades.log_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// Its entries were archived with the trade (and the key removed after commit).
    Moved,
    /// The event does not move the log (e.g. `rejected` without `move_log_on`).
    Kept,
    /// No log was found in RLS (never written, or moved already), or it could not be read.
    Missing,
}

impl LogState {
    /// The name written in `trades.log_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogState::Moved => "moved",
            LogState::Kept => "kept",
            LogState::Missing => "missing",
        }
    }
}

impl Serialize for LogState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One entry of a trade's execution log (`trade_executions`), identified by `trade_id, seq`;
/// its text borrowed from the entry's bytes where it can be.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct TradeExecutionRow<'a> {
    /// The trade (the entry's field, or the key's).
    pub trade_id: Cow<'a, str>,
    /// The entry's `seq`, or its position in the log.
    pub seq: i64,
    /// The entry's `ts_ms`, or 0.
    pub ts_ms: i64,
    /// Entry fields.
    pub step: Cow<'a, str>,
    /// Entry fields.
    pub instance_id: Cow<'a, str>,
    /// Entry fields.
    pub account_id: Cow<'a, str>,
    /// Entry fields.
    pub symbol: Cow<'a, str>,
    /// Entry fields.
    pub side: Cow<'a, str>,
    /// Lots.
    pub volume: Option<f64>,
    /// Entry fields.
    pub price: Option<f64>,
    /// Entry fields.
    pub sl: Option<f64>,
    /// Entry fields.
    pub tp: Option<f64>,
    /// Entry fields.
    pub order_ticket: Option<i64>,
    /// Entry fields.
    pub deal_ticket: Option<i64>,
    /// Entry fields.
    pub retcode: Option<i64>,
    /// Entry fields.
    pub latency_us: Option<i64>,
    /// Entry fields.
    pub comment: Cow<'a, str>,
    /// Other fields, as a JSON object text.
    pub extra: String,
    /// Position of the entry in the log (0-based).
    pub position: u32,
    /// The Redis key it was moved from.
    pub source_key: Cow<'a, str>,
    /// When Spillway archived it (epoch ms).
    pub archived_at_ms: i64,
}

/// The payload fields that have columns of their own in `trades`.
pub const TRADE_FIELDS: &[&str] = &[
    "trade_id",
    "account_id",
    "instance_id",
    "symbol",
    "side",
    "volume",
    "open_price",
    "close_price",
    "profit",
    "commission",
    "swap",
    "opened_at_ms",
    "closed_at_ms",
];

/// The entry fields that have columns of their own in `trade_executions`.
pub const EXECUTION_FIELDS: &[&str] = &[
    "trade_id",
    "seq",
    "ts_ms",
    "step",
    "instance_id",
    "account_id",
    "symbol",
    "side",
    "volume",
    "price",
    "sl",
    "tp",
    "order_ticket",
    "deal_ticket",
    "retcode",
    "latency_us",
    "comment",
];

/// Makes the `trades` row of an entry. An undecodable payload is an error (the entry goes to
/// dead letters); an absent one gives a row with the trade id and event only.
pub fn trade_row(
    trade_id: &str,
    event: &str,
    payload: Option<&[u8]>,
    stream_id: &str,
    now: i64,
) -> Result<TradeRow, DecodeError> {
    match payload {
        Some(p) if !p.is_empty() => match Flat::map(p, TRADE_FIELDS) {
            Some(f) => Ok(trade_from_fields(trade_id, event, f, stream_id, now)),
            None => {
                let f = decode_msgpack_fields(p, TRADE_FIELDS)?;
                Ok(trade_from_fields(trade_id, event, f, stream_id, now))
            }
        },
        _ => Ok(trade_from_fields(
            trade_id,
            event,
            Fields::default(),
            stream_id,
            now,
        )),
    }
}

fn trade_from_fields<'a>(
    trade_id: &str,
    event: &str,
    mut f: impl TakeFields<'a>,
    stream_id: &str,
    now: i64,
) -> TradeRow {
    f.discard("trade_id");
    TradeRow {
        trade_id: trade_id.to_string(),
        event: event.to_string(),
        account_id: f.text("account_id"),
        instance_id: f.text("instance_id"),
        symbol: f.text("symbol"),
        side: f.text("side"),
        volume: f.float("volume"),
        open_price: f.float("open_price"),
        close_price: f.float("close_price"),
        profit: f.float("profit"),
        commission: f.float("commission"),
        swap: f.float("swap"),
        opened_at_ms: f.int("opened_at_ms"),
        closed_at_ms: f.int("closed_at_ms"),
        extra: f.rest(),
        stream_id: stream_id.to_string(),
        log_entries: 0,
        log_state: LogState::Kept,
        received_at_ms: now,
        version: 1 << 32,
    }
}

/// Makes the `trade_executions` row of one log entry at `position`. An entry of scalars (the
/// usual shape) is read in place ([`Flat`]); any other goes through the general decoder.
pub fn execution_row<'a>(
    trade_id: &'a str,
    key: &'a str,
    position: u32,
    entry: &'a [u8],
    now: i64,
) -> Result<TradeExecutionRow<'a>, DecodeError> {
    if let Some(fields) = Flat::map(entry, EXECUTION_FIELDS) {
        return Ok(execution_from_fields(trade_id, key, position, fields, now));
    }
    let fields = decode_msgpack_fields(entry, EXECUTION_FIELDS)?;
    Ok(execution_from_fields(trade_id, key, position, fields, now))
}

fn execution_from_fields<'a>(
    trade_id: &'a str,
    key: &'a str,
    position: u32,
    mut f: impl TakeFields<'a>,
    now: i64,
) -> TradeExecutionRow<'a> {
    let own_id = f.str("trade_id");
    TradeExecutionRow {
        trade_id: if own_id.is_empty() {
            Cow::Borrowed(trade_id)
        } else {
            own_id
        },
        seq: f.int("seq").unwrap_or(position as i64),
        ts_ms: f.int("ts_ms").unwrap_or(0),
        step: f.str("step"),
        instance_id: f.str("instance_id"),
        account_id: f.str("account_id"),
        symbol: f.str("symbol"),
        side: f.str("side"),
        volume: f.float("volume"),
        price: f.float("price"),
        sl: f.float("sl"),
        tp: f.float("tp"),
        order_ticket: f.int("order_ticket"),
        deal_ticket: f.int("deal_ticket"),
        retcode: f.int("retcode"),
        latency_us: f.int("latency_us"),
        comment: f.str("comment"),
        extra: f.rest(),
        position,
        source_key: Cow::Borrowed(key),
        archived_at_ms: now,
    }
}

/// Splits a STRING log (one MessagePack map, or an array of maps) into its entries' rows.
/// Returns the rows and, per undecodable entry, its position and error.
pub fn string_log_rows<'a>(
    trade_id: &'a str,
    key: &'a str,
    value: &'a [u8],
    now: i64,
) -> Result<Vec<TradeExecutionRow<'a>>, DecodeError> {
    let row = |i, f| execution_from_fields(trade_id, key, i, f, now);
    if let Some(fields) = Flat::map(value, EXECUTION_FIELDS) {
        return Ok(vec![row(0, fields)]);
    }
    let mut position = 0;
    let rows = Flat::array(value, EXECUTION_FIELDS, |f| {
        position += 1;
        row(position - 1, f)
    });
    if let Some(rows) = rows {
        return Ok(rows);
    }
    match decode_msgpack_fields(value, EXECUTION_FIELDS) {
        Ok(fields) => Ok(vec![execution_from_fields(trade_id, key, 0, fields, now)]),
        Err(_) => {
            let items = decode_msgpack_array_of_fields(value, EXECUTION_FIELDS)?;
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, f)| execution_from_fields(trade_id, key, i as u32, f, now))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mp(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    #[test]
    fn trade_from_payload() {
        let p = mp(
            json!({"account_id": "a1", "profit": 12.5, "closed_at_ms": 7, "venue": "x", "volume": 1}),
        );
        let t = trade_row("T1", "closed", Some(&p), "1-0", 99).unwrap();
        assert_eq!(
            (t.trade_id.as_str(), t.profit, t.closed_at_ms),
            ("T1", Some(12.5), Some(7))
        );
        assert_eq!(t.volume, Some(1.0));
        assert_eq!(t.open_price, None);
        assert_eq!(t.extra, r#"{"venue":"x"}"#);
        assert!(trade_row("T1", "closed", Some(b"\x85\x01"), "1-0", 99).is_err());
        assert_eq!(
            trade_row("T1", "rejected", None, "1-0", 99).unwrap().event,
            "rejected"
        );
    }

    #[test]
    fn executions_from_entries_and_strings() {
        let e = mp(json!({"seq": 3, "step": "filled", "price": 1.1, "order_ticket": 55, "x": 1}));
        let r = execution_row("T1", "trade_execution:T1", 0, &e, 5).unwrap();
        assert_eq!(
            (r.seq, &*r.step, r.price, r.order_ticket),
            (3, "filled", Some(1.1), Some(55))
        );
        assert_eq!((&*r.trade_id, r.extra.as_str()), ("T1", r#"{"x":1}"#));
        let modified = mp(json!({"step": "modified"}));
        let no_seq = execution_row("T1", "k", 4, &modified, 5).unwrap();
        assert_eq!(no_seq.seq, 4);
        let arr = mp(json!([{"seq": 1}, {"seq": 2, "step": "closed"}]));
        let rows = string_log_rows("T1", "k", &arr, 5).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(rows.iter().map(|r| r.position).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(string_log_rows("T1", "k", &e, 5).unwrap().len(), 1);
        assert!(string_log_rows("T1", "k", b"not msgpack", 5).is_err());
        assert!(string_log_rows("T1", "k", &mp(json!([{"seq": 1}, 2])), 5).is_err());
    }
}
