//! Trades and their execution logs: the rows of `trades` and `trade_executions`, and the pure
//! functions that make them from a `trade_results` stream entry and a `trade_execution:{id}` log.

use std::borrow::Cow;

use serde::Serialize;

use crate::decode::{
    decode_log_value, decode_msgpack_fields, DecodeError, Fields, Flat, Format, LogValue,
    TakeFields,
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

/// One entry of a trade's execution log (`trade_executions`), identified by the trade, the take
/// that moved it out of Redis and its position in what was taken (`trade_id, take_id,
/// position`): two entries are never one row, whatever their fields say, and the same take
/// archived again (a retry, a redelivered close, a restart) gives the same rows. Text is
/// borrowed from the entry's bytes where it can be.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct TradeExecutionRow<'a> {
    /// The trade, from the log's key (never from an entry's field).
    pub trade_id: Cow<'a, str>,
    /// The take that moved the log: the `trade_results` entry id of the close (or the id
    /// Spillway gave a close that came over pub/sub).
    pub take_id: Cow<'a, str>,
    /// Position of the row in the taken log (0-based; a value holding an array of entries
    /// gives one position per entry).
    pub position: u32,
    /// The entry's `seq`, or its position when it has none.
    pub seq: i64,
    /// The entry's `ts_ms`, or 0.
    pub ts_ms: i64,
    /// The known fields of an entry, as the platform writes them: `step` (order_sent,
    /// partial_fill, filled, ...), `instance_id`, `account_id`, `symbol`, `side`, `volume`
    /// (lots), `price`, `sl`, `tp`, `order_ticket`, `deal_ticket`, `retcode`, `latency_us`,
    /// `comment`; empty or null when absent.
    pub step: Cow<'a, str>,
    #[allow(missing_docs)]
    pub instance_id: Cow<'a, str>,
    #[allow(missing_docs)]
    pub account_id: Cow<'a, str>,
    #[allow(missing_docs)]
    pub symbol: Cow<'a, str>,
    #[allow(missing_docs)]
    pub side: Cow<'a, str>,
    #[allow(missing_docs)]
    pub volume: Option<f64>,
    #[allow(missing_docs)]
    pub price: Option<f64>,
    #[allow(missing_docs)]
    pub sl: Option<f64>,
    #[allow(missing_docs)]
    pub tp: Option<f64>,
    #[allow(missing_docs)]
    pub order_ticket: Option<i64>,
    #[allow(missing_docs)]
    pub deal_ticket: Option<i64>,
    #[allow(missing_docs)]
    pub retcode: Option<i64>,
    #[allow(missing_docs)]
    pub latency_us: Option<i64>,
    #[allow(missing_docs)]
    pub comment: Cow<'a, str>,
    /// A plain-text entry, whole (empty for maps and objects).
    pub text: Cow<'a, str>,
    /// Other fields, as a JSON object text.
    pub extra: String,
    /// `msgpack`, `json` or `text`.
    pub format: &'static str,
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

/// Where the rows of a taken execution log come from.
#[derive(Debug, Clone, Copy)]
pub struct LogOrigin<'a> {
    /// The trade, from the key.
    pub trade_id: &'a str,
    /// The take that moved the log (see [`TradeExecutionRow::take_id`]).
    pub take_id: &'a str,
    /// The log's key.
    pub key: &'a str,
    /// When it is archived (epoch ms).
    pub now: i64,
}

/// The rows of one value of a taken log.
#[derive(Debug, Default)]
pub struct LogRows<'a> {
    /// One per entry, positions counted on from where the caller was.
    pub rows: Vec<TradeExecutionRow<'a>>,
    /// Entries whose own `trade_id` field names another trade (kept in `extra`).
    pub foreign_trade_ids: u32,
}

/// The rows of one value of a taken log (a LIST item, or a whole STRING), numbered from
/// `position`. A value is one entry (a MessagePack map, a JSON object, plain text) or several
/// (a MessagePack array of maps, a JSON array of objects). Maps of scalars, the usual shape, are
/// read in place ([`Flat`]); the rest through the general decoder, whose error names why a
/// value cannot be archived.
pub fn log_value_rows<'a>(
    o: LogOrigin<'a>,
    value: &'a [u8],
    position: u32,
) -> Result<LogRows<'a>, DecodeError> {
    let mut next = position;
    let rows = if let Some(fields) = Flat::map(value, EXECUTION_FIELDS) {
        vec![execution_row(o, next, Format::MsgPack, fields)]
    } else if let Some(rows) = Flat::array(value, EXECUTION_FIELDS, |f| {
        next += 1;
        execution_row(o, next - 1, Format::MsgPack, f)
    }) {
        rows
    } else {
        match decode_log_value(value, EXECUTION_FIELDS)? {
            LogValue::Maps(format, items) => items
                .into_iter()
                .enumerate()
                .map(|(i, f)| execution_row(o, position + i as u32, format, f))
                .collect(),
            LogValue::Text(text) => {
                let (mut row, foreign) =
                    execution_row(o, position, Format::Text, Fields::default());
                row.text = Cow::Owned(text);
                vec![(row, foreign)]
            }
        }
    };
    let mut out = LogRows {
        rows: Vec::with_capacity(rows.len()),
        foreign_trade_ids: 0,
    };
    for (row, foreign) in rows {
        out.foreign_trade_ids += u32::from(foreign);
        out.rows.push(row);
    }
    Ok(out)
}

/// The row of one entry whose fields are `f`; true when the entry's own `trade_id` names
/// another trade than the key (the field is then kept in `extra`).
fn execution_row<'a>(
    o: LogOrigin<'a>,
    position: u32,
    format: Format,
    mut f: impl TakeFields<'a>,
) -> (TradeExecutionRow<'a>, bool) {
    let own_id = f.str("trade_id");
    let mut row = TradeExecutionRow {
        trade_id: Cow::Borrowed(o.trade_id),
        take_id: Cow::Borrowed(o.take_id),
        position,
        seq: f.int("seq").unwrap_or(i64::from(position)),
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
        text: Cow::Borrowed(""),
        extra: f.rest(),
        format: format.as_str(),
        source_key: Cow::Borrowed(o.key),
        archived_at_ms: o.now,
    };
    let foreign = !own_id.is_empty() && own_id != o.trade_id;
    if foreign {
        let mut extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&row.extra).unwrap_or_default();
        extra.insert(
            "trade_id".into(),
            serde_json::Value::String(own_id.into_owned()),
        );
        row.extra = serde_json::Value::Object(extra).to_string();
    }
    (row, foreign)
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

    fn rows(value: &[u8], position: u32) -> Result<LogRows<'_>, DecodeError> {
        let o = LogOrigin {
            trade_id: "T1",
            take_id: "5-0",
            key: "trade_execution:T1",
            now: 5,
        };
        log_value_rows(o, value, position)
    }

    #[test]
    fn executions_from_every_form() {
        let e = mp(json!({"seq": 3, "step": "filled", "price": 1.1, "order_ticket": 55, "x": 1}));
        let r = &rows(&e, 0).unwrap().rows[0];
        assert_eq!(
            (r.seq, &*r.step, r.price, r.order_ticket),
            (3, "filled", Some(1.1), Some(55))
        );
        assert_eq!((&*r.trade_id, r.extra.as_str()), ("T1", r#"{"x":1}"#));
        assert_eq!((&*r.take_id, r.format), ("5-0", "msgpack"));
        let modified = mp(json!({"step": "modified"}));
        let no_seq = &rows(&modified, 4).unwrap().rows[0];
        assert_eq!((no_seq.seq, no_seq.position), (4, 4));
        // An array of maps: one row per map, positions counted on.
        let arr = mp(json!([{"seq": 1}, {"seq": 2, "step": "closed"}]));
        let arr = rows(&arr, 7).unwrap();
        assert_eq!(arr.rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            arr.rows.iter().map(|r| r.position).collect::<Vec<_>>(),
            [7, 8]
        );
        // The platform's JSON and text logs.
        let json = rows(br#"{"seq": 9, "step": "filled", "venue": "x"}"#, 0).unwrap();
        assert_eq!((json.rows[0].seq, json.rows[0].format), (9, "json"));
        assert_eq!(json.rows[0].extra, r#"{"venue":"x"}"#);
        let json_arr = rows(
            br#"[{"step": "order_sent"}, {"step": "filled", "price": 2.5}]"#,
            0,
        );
        let json_arr = json_arr.unwrap().rows;
        assert_eq!(json_arr.len(), 2);
        assert_eq!(
            (&*json_arr[1].step, json_arr[1].price),
            ("filled", Some(2.5))
        );
        let text = rows(b"Trade in progress", 0).unwrap().rows;
        assert_eq!(
            (&*text[0].text, text[0].format),
            ("Trade in progress", "text")
        );
        assert_eq!(rows(b"[1, 2]", 0).unwrap().rows[0].text, "[1, 2]");
        // Not decodable: MessagePack arrays of non-maps, bytes that are not text.
        assert!(rows(&mp(json!([{"seq": 1}, 2])), 0).is_err());
        assert!(rows(&[0xff, 0xfe, 0x80], 0).is_err());
    }

    #[test]
    fn the_trade_id_comes_from_the_key() {
        let e = mp(json!({"trade_id": "OTHER", "seq": 1}));
        let r = rows(&e, 0).unwrap();
        assert_eq!((&*r.rows[0].trade_id, r.foreign_trade_ids), ("T1", 1));
        assert_eq!(r.rows[0].extra, r#"{"trade_id":"OTHER"}"#);
        let same = mp(json!({"trade_id": "T1"}));
        let same = rows(&same, 0).unwrap();
        assert_eq!(
            (same.foreign_trade_ids, same.rows[0].extra.as_str()),
            (0, "{}")
        );
    }
}
