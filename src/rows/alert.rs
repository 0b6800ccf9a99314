//! The alerts pipeline's rows: a captured alert value (`alerts`) and an alert key's lifecycle
//! event (`alert_events`), and how a value's fields map onto the columns. A MessagePack map, a
//! JSON object and plain text all become a row; the known fields have columns, every other field
//! is kept in `extra`.

use serde::Serialize;

use super::content_hash;
use crate::decode::{decode_value_fields, DecodeError, Decoded, Fields, Flat, Format, TakeFields};

/// A distinct value written to an alert key (`alerts`).
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct AlertRow {
    /// The Redis key.
    pub key: String,
    /// xxh3-64 of the raw value: with `key`, the identity of the row.
    pub content_hash: u64,
    /// `alert_id` field, or the key's suffix.
    pub alert_id: String,
    /// `ts_ms` field, or the time Spillway saw the write (epoch ms).
    pub ts_ms: i64,
    /// `severity` field.
    pub severity: String,
    /// `kind` field.
    pub kind: String,
    /// `message` field, or the whole text of a plain-text alert.
    pub message: String,
    /// `account_id` field.
    pub account_id: String,
    /// `instance_id` field.
    pub instance_id: String,
    /// `symbol` field.
    pub symbol: String,
    /// `trade_id` field.
    pub trade_id: String,
    /// All other fields, as a JSON object text.
    pub extra: String,
    /// `msgpack`, `json` or `text`.
    pub format: &'static str,
    /// Remaining TTL when read, in ms (-1: none).
    pub ttl_ms: i64,
    /// When Spillway read the value (epoch ms).
    pub captured_at_ms: i64,
    /// How it was found: `event` (keyspace notification) or `scan` (rescan).
    pub captured_by: CapturedBy,
    /// The version `ReplacingMergeTree` keeps the highest of: larger for an earlier capture
    /// ([`first_capture_version`]), so a rescan or a restart never rewrites an archived value.
    pub version: u64,
}

/// The version of a value captured at `captured_at_ms` by `by`: the earlier the capture, the
/// higher, and at the same millisecond a notification's capture above a rescan's. Under `FINAL`
/// the first capture of a (key, content) is the row kept, whatever was inserted later.
pub fn first_capture_version(captured_at_ms: i64, by: CapturedBy) -> u64 {
    // Milliseconds fit in 53 bits until the year 287,000.
    const LATEST: i64 = 1 << 53;
    let earlier = LATEST.saturating_sub(captured_at_ms).max(0) as u64;
    earlier * 2 + u64::from(matches!(by, CapturedBy::Event | CapturedBy::Replication))
}

/// A lifecycle event of an alert key (`alert_events`).
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct AlertEventRow {
    /// The Redis key.
    pub key: String,
    /// The key's suffix after the pipeline's `id_prefix`.
    pub alert_id: String,
    /// `written`, `expired`, `evicted` or `deleted`.
    pub event: &'static str,
    /// When Spillway received the notification (epoch ms).
    pub event_ms: i64,
    /// For `written`: the hash of the value read (0 if it was gone); else 0.
    pub content_hash: u64,
    /// For `written`: remaining TTL when read, in ms; else -2.
    pub ttl_ms: i64,
}

/// How a value was found: on its keyspace notification, by a rescan of the key pattern, or
/// (the replication source) in the snapshot of a full resync or as a write of the command stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapturedBy {
    /// A keyspace notification announced the write.
    Event,
    /// A SCAN of the pattern found the key.
    Scan,
    /// The RDB snapshot of a full resync held the key.
    Snapshot,
    /// The replication stream carried the write, value and all.
    Replication,
}

impl CapturedBy {
    /// The name written in `alerts.captured_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapturedBy::Event => "event",
            CapturedBy::Scan => "scan",
            CapturedBy::Snapshot => "snapshot",
            CapturedBy::Replication => "replication",
        }
    }
}

impl Serialize for CapturedBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The fields of an alert value that have columns of their own in `alerts`.
pub const ALERT_FIELDS: &[&str] = &[
    "alert_id",
    "ts_ms",
    "severity",
    "kind",
    "message",
    "account_id",
    "instance_id",
    "symbol",
    "trade_id",
];

/// What a captured alert value is, before it becomes a row.
pub struct CapturedAlert<'a> {
    /// The key.
    pub key: &'a str,
    /// The key's suffix (default alert id).
    pub id_from_key: &'a str,
    /// The raw value.
    pub raw: &'a [u8],
    /// Remaining TTL in ms.
    pub ttl_ms: i64,
    /// When it was read.
    pub captured_at_ms: i64,
    /// How it was found.
    pub captured_by: CapturedBy,
}

impl CapturedAlert<'_> {
    /// Decodes the value into its row: a MessagePack map of scalars (the usual alert) is read in
    /// place ([`Flat`]); anything else (other MessagePack, JSON, text) through the general
    /// decoder, whose error names why a value cannot be archived.
    pub fn decode(self) -> Result<AlertRow, DecodeError> {
        match Flat::map(self.raw, ALERT_FIELDS) {
            Some(fields) => Ok(self.row_of(Format::MsgPack, fields)),
            None => decode_value_fields(self.raw, ALERT_FIELDS).map(|p| self.into_row(p)),
        }
    }

    /// Turns a decoded value (decoded with [`ALERT_FIELDS`]) into an [`AlertRow`].
    fn into_row(self, payload: Decoded) -> AlertRow {
        match payload {
            Decoded::Object(format, fields) => self.row_of(format, fields),
            Decoded::Text(text) => {
                let mut m = serde_json::Map::new();
                m.insert("message".into(), serde_json::Value::String(text));
                self.row_of(Format::Text, Fields::from_map(ALERT_FIELDS, m))
            }
        }
    }

    /// The row of a value whose fields (named [`ALERT_FIELDS`]) are `f`: a MessagePack map of
    /// scalars can be read in place ([`crate::decode::Flat`]) instead of through [`Decoded`].
    fn row_of<'b>(self, format: Format, mut f: impl TakeFields<'b>) -> AlertRow {
        let alert_id = match f.text("alert_id") {
            id if id.is_empty() => self.id_from_key.to_string(),
            id => id,
        };
        AlertRow {
            key: self.key.to_string(),
            content_hash: content_hash(self.raw),
            alert_id,
            ts_ms: f.int("ts_ms").unwrap_or(self.captured_at_ms),
            severity: f.text("severity"),
            kind: f.text("kind"),
            message: f.text("message"),
            account_id: f.text("account_id"),
            instance_id: f.text("instance_id"),
            symbol: f.text("symbol"),
            trade_id: f.text("trade_id"),
            extra: f.rest(),
            format: format.as_str(),
            ttl_ms: self.ttl_ms,
            captured_at_ms: self.captured_at_ms,
            captured_by: self.captured_by,
            version: first_capture_version(self.captured_at_ms, self.captured_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(raw: &[u8]) -> AlertRow {
        let c = CapturedAlert {
            key: "alert:k1",
            id_from_key: "k1",
            raw,
            ttl_ms: 3_600_000,
            captured_at_ms: 42,
            captured_by: CapturedBy::Event,
        };
        c.decode().unwrap()
    }

    #[test]
    fn text_alert_defaults() {
        let r = capture(b"Trade execution failed");
        assert_eq!(r.message, "Trade execution failed");
        assert_eq!(r.alert_id, "k1");
        assert_eq!(r.ts_ms, 42);
        assert_eq!(r.format, "text");
        assert_eq!(r.extra, "{}");
    }

    #[test]
    fn msgpack_alert_fields_and_extra() {
        let v = serde_json::json!({"alert_id": "A", "ts_ms": 7, "severity": "critical",
            "message": "m", "symbol": "EURUSD", "venue": "x", "ts_ms_bad": 1});
        let raw = rmp_serde::to_vec_named(&v).unwrap();
        let r = capture(&raw);
        assert_eq!(
            (r.alert_id.as_str(), r.ts_ms, r.severity.as_str()),
            ("A", 7, "critical")
        );
        assert_eq!(r.symbol, "EURUSD");
        assert_eq!(r.format, "msgpack");
        assert_eq!(r.extra, r#"{"ts_ms_bad":1,"venue":"x"}"#);
        assert_eq!(r.content_hash, content_hash(&raw));
    }

    #[test]
    fn the_first_capture_has_the_highest_version() {
        let event = first_capture_version(1_700_000_000_000, CapturedBy::Event);
        let scan = first_capture_version(1_700_000_000_000, CapturedBy::Scan);
        let later = first_capture_version(1_700_000_000_001, CapturedBy::Event);
        assert!(event > scan && scan > later);
        assert!(first_capture_version(0, CapturedBy::Scan) > event);
    }

    #[test]
    fn unusable_ts_is_kept_in_extra() {
        let r = capture(br#"{"ts_ms": "yesterday"}"#);
        assert_eq!(r.ts_ms, 42);
        assert_eq!(r.extra, r#"{"ts_ms":"yesterday"}"#);
    }
}
