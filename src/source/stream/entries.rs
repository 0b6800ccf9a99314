//! Stream entries and execution logs as Redis returns them, and the rows they become (pure
//! functions, tested without a server).

use std::collections::HashMap;

use bytes::Bytes;
use fred::prelude::Value;

use super::config::StreamSource;
use super::moves::{string_log, Ctx, Cursor, LogAck, Taken};
use super::take::LogRead;
use crate::decode::DecodeError;
use crate::metrics as m;
use crate::rows::trade::{trade_row, LogState, TradeRow};
use crate::rows::{content_hash, DeadLetterRow, Record};

/// One stream entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    /// Entry id (empty for a close that came over pub/sub).
    pub id: String,
    /// The id of the take of its log: the entry id, or one made for a pub/sub close.
    pub take: String,
    /// Field/value pairs, in order.
    pub fields: Vec<(String, Bytes)>,
    /// The entry was deleted from the stream while pending (XDEL, trimming).
    pub deleted: bool,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> Option<String> {
        let v = String::from_utf8_lossy(self.field(name)?)
            .trim()
            .to_string();
        (!v.is_empty()).then_some(v)
    }

    /// The log key to move, for a trade whose event moves its log.
    pub(crate) fn log_key(&self, def: &StreamSource) -> Option<String> {
        let event = self.text("event")?;
        let id = self.text("trade_id")?;
        def.move_log_on
            .contains(&event)
            .then(|| format!("{}{id}", def.log_key_prefix))
    }

    /// The whole entry as one MessagePack map of byte strings: the raw bytes of a dead letter.
    fn raw(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = rmp::encode::write_map_len(&mut buf, self.fields.len() as u32);
        for (k, v) in &self.fields {
            let _ = rmp::encode::write_str(&mut buf, k);
            let _ = rmp::encode::write_bin(&mut buf, v);
        }
        buf
    }
}

/// A pub/sub close message (a MessagePack map with `trade_id`) as an entry without stream id.
pub(crate) fn close_message(raw: Bytes) -> Entry {
    let trade_id =
        crate::decode::decode_msgpack_map(&raw)
            .ok()
            .and_then(|m| match m.get("trade_id") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
    let mut fields = vec![("event".to_string(), Bytes::from_static(b"closed"))];
    if let Some(id) = trade_id {
        fields.push(("trade_id".to_string(), Bytes::from(id)));
    }
    fields.push(("payload".to_string(), raw));
    Entry {
        id: String::new(),
        take: pubsub_take_id(),
        fields,
        deleted: false,
    }
}

/// A take id for a pub/sub close, unique across processes and restarts (it names the staging
/// key, and with it the rows' identity).
fn pubsub_take_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "ps-{}-{}-{}",
        crate::rows::now_ms(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The bytes of a bulk string reply (or an integer's text).
pub(super) fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    v.as_string().unwrap_or_default()
}

/// Entries of an XREADGROUP (or XAUTOCLAIM, wrapped alike) reply.
pub(crate) fn parse_entries(v: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = match v {
        Value::Array(s) => s,
        Value::Map(m) => m
            .inner()
            .into_iter()
            .map(|(k, v)| Value::Array(vec![Value::from(k), v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        if parts.len() < 2 {
            continue;
        }
        let Value::Array(entries) = parts.swap_remove(1) else {
            continue;
        };
        for e in entries {
            let Value::Array(mut pair) = e else { continue };
            if pair.is_empty() {
                continue;
            }
            let fields = if pair.len() > 1 {
                pair.swap_remove(1)
            } else {
                Value::Null
            };
            let id = text(&pair[0]);
            let (fields, deleted) = match fields {
                Value::Array(kv) => {
                    let mut it = kv.into_iter();
                    let mut f = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        f.push((text(&k), bytes(v).unwrap_or_default()));
                    }
                    (f, false)
                }
                _ => (Vec::new(), true),
            };
            out.push(Entry {
                take: id.clone(),
                id,
                fields,
                deleted,
            });
        }
    }
    out
}

/// Trades whose logs this process moved lately (bounded): a later close of the same trade finds
/// its log gone, which is not a missing log (pub/sub before stream, or a redelivery).
#[derive(Debug)]
pub(crate) struct RecentMoves {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    cap: usize,
}

impl RecentMoves {
    /// Remembers up to `cap` trades.
    pub(crate) fn new(cap: usize) -> Self {
        RecentMoves {
            set: Default::default(),
            order: Default::default(),
            cap: cap.max(1),
        }
    }

    fn insert(&mut self, trade_id: &str) {
        if self.set.insert(trade_id.to_string()) {
            self.order.push_back(trade_id.to_string());
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The rows of a batch of entries, the ids to acknowledge and what becomes of the taken logs
/// after the commit.
#[derive(Default)]
pub(crate) struct Work {
    /// Rows, in order.
    pub records: Vec<Record>,
    /// Entry ids to XACK.
    pub ids: Vec<String>,
    /// The staging keys, once the rows are committed.
    pub logs: Vec<LogAck>,
    /// LIST logs with pages left to read, each with its trade's row (sent once the last page
    /// is read, with the number of entries moved).
    pub more: Vec<(Cursor, Option<TradeRow>)>,
}

/// Turns entries (and the logs taken for them, by take id) into rows; `orphans` are logs
/// found staged at start that no pending entry will take again: their rows alone.
pub(crate) fn rows(
    ctx: &Ctx<'_>,
    stream_instance: &str,
    entries: Vec<Entry>,
    mut logs: HashMap<String, (Taken, LogRead)>,
    orphans: Vec<(Taken, LogRead)>,
    recent: &mut RecentMoves,
) -> Work {
    let (name, def, now) = (ctx.name, ctx.def, ctx.now);
    let mut w = Work {
        ids: Vec::with_capacity(entries.len()),
        ..Work::default()
    };
    let dead = |id: &str, raw: Vec<u8>, e: DecodeError| {
        metrics::counter!(m::DEAD_LETTERS, "pipeline" => name.to_string(), "reason" => e.reason)
            .increment(1);
        Record::dead_letter(DeadLetterRow {
            pipeline: name.to_string(),
            instance: stream_instance.to_string(),
            key: String::new(),
            stream_id: id.to_string(),
            content_hash: content_hash(&raw),
            raw,
            reason: e.reason,
            error: e.detail,
            received_at_ms: now,
        })
    };
    for e in entries {
        if !e.id.is_empty() {
            w.ids.push(e.id.clone());
        }
        if e.deleted {
            continue;
        }
        let event = e.text("event").unwrap_or_default();
        metrics::counter!(m::STREAM_ENTRIES, "pipeline" => name.to_string(), "event" => event_label(&event, def)).increment(1);
        let Some(trade_id) = e.text("trade_id") else {
            let err = DecodeError {
                reason: "missing_trade_id",
                detail: "stream entry has no trade_id field".into(),
            };
            w.records.push(dead(&e.id, e.raw(), err));
            continue;
        };
        if !def.archive_events.contains(&event) {
            continue;
        }
        let payload = e.field("payload").map(|b| b.as_ref());
        let (mut state, mut moved, mut cursor) = (LogState::Kept, 0u32, None);
        if e.log_key(def).is_some() {
            state = LogState::Missing;
            match logs.remove(&e.take) {
                Some((taken, read @ (LogRead::List { .. } | LogRead::Str { .. }))) => {
                    state = LogState::Moved;
                    match move_log(ctx, taken, read, &mut w) {
                        Moved::Done(n) => moved = n,
                        Moved::More(c) => cursor = Some(c),
                    }
                    metrics::counter!(m::LOGS_MOVED, "pipeline" => name.to_string()).increment(1);
                    recent.insert(&trade_id);
                }
                Some((taken, LogRead::Other(t))) => {
                    let err = DecodeError {
                        reason: "log_wrong_type",
                        detail: format!(
                            "execution log is a {t}, not a list or string; left in Redis"
                        ),
                    };
                    w.records.push(ctx.dead(&taken.key, &e.id, Vec::new(), err));
                }
                _ if recent.set.contains(&trade_id) => {
                    metrics::counter!(m::LOGS_ALREADY_MOVED, "pipeline" => name.to_string())
                        .increment(1);
                }
                _ => {
                    metrics::counter!(m::LOGS_MISSING, "pipeline" => name.to_string()).increment(1);
                }
            }
        }
        match trade_row(&trade_id, &event, payload, &e.id, now) {
            Ok(mut t) => {
                t.set_log(state, moved);
                match cursor {
                    Some(c) => w.more.push((c, Some(t))),
                    None => w.records.push(Record::trade(t)),
                }
            }
            Err(err) => {
                w.records
                    .push(dead(&e.id, payload.unwrap_or_default().to_vec(), err));
                if let Some(c) = cursor {
                    w.more.push((c, None));
                }
            }
        }
    }
    for (taken, read) in orphans {
        metrics::counter!(m::LOGS_RECOVERED, "pipeline" => name.to_string()).increment(1);
        if let Moved::More(c) = move_log(ctx, taken, read, &mut w) {
            w.more.push((c, None));
        }
    }
    w
}

/// What moving a take's first read came to.
enum Moved {
    /// The whole log: this many entries.
    Done(u32),
    /// Pages are left to read.
    More(Cursor),
}

/// Moves what a take read: the entries moved when the log is done, or its cursor when pages
/// are left to read.
fn move_log(ctx: &Ctx<'_>, taken: Taken, read: LogRead, w: &mut Work) -> Moved {
    match read {
        LogRead::List { len, first } => {
            let mut c = Cursor::new(taken, len, ctx.def);
            c.consume(&first, ctx, &mut w.records);
            if !c.done() {
                return Moved::More(c);
            }
            let n = c.next as u32;
            w.logs.push(c.finish(ctx, &mut w.records));
            Moved::Done(n)
        }
        LogRead::Str { len, value } => {
            let (ack, n) = string_log(taken, len, &value, ctx, &mut w.records);
            w.logs.push(ack);
            Moved::Done(n)
        }
        LogRead::Missing | LogRead::Other(_) => Moved::Done(0),
    }
}

/// A bounded label for an event: archived events by name, everything else `other`.
fn event_label(event: &str, def: &StreamSource) -> String {
    if def.archive_events.iter().any(|e| e == event) || event == "opened" {
        event.to_string()
    } else {
        "other".to_string()
    }
}

/// The idle time of the first entry of an extended XPENDING reply.
pub(crate) fn oldest_idle_ms(v: &Value) -> Option<u64> {
    let Value::Array(rows) = v else { return None };
    match rows.first()? {
        Value::Array(fields) => fields.get(2)?.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{parse, Source};
    use crate::rows::Table;
    use crate::source::stream::take::{side_key, STAGING};
    use serde_json::json;

    fn def() -> StreamSource {
        let text = include_str!("../../../pipelines/trades.toml");
        match parse(std::path::Path::new("trades.toml"), text)
            .unwrap()
            .source
        {
            Source::Stream(s) => s,
            _ => panic!("not a stream pipeline"),
        }
    }

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    fn b(v: &[u8]) -> Value {
        Value::Bytes(Bytes::copy_from_slice(v))
    }

    fn mp(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    /// The logs of `(log key, take id)` as taken, by take id.
    fn taken(logs: Vec<(&str, &str, LogRead)>) -> HashMap<String, (Taken, LogRead)> {
        logs.into_iter()
            .map(|(key, take, read)| {
                let t = Taken::new(key.into(), "trade_execution:", take.into(), take.into());
                (t.take_id.clone(), (t, read))
            })
            .collect()
    }

    fn ctx(def: &StreamSource, now: i64) -> Ctx<'_> {
        Ctx {
            name: "trades",
            instance: "rls",
            def,
            now,
        }
    }

    fn entry(id: &str, kv: &[(&str, Value)]) -> Value {
        let fields = kv.iter().flat_map(|(k, v)| [s(k), v.clone()]).collect();
        Value::Array(vec![s(id), Value::Array(fields)])
    }

    fn reply(entries: Vec<Value>) -> Value {
        Value::Array(vec![Value::Array(vec![
            s("trade_results"),
            Value::Array(entries),
        ])])
    }

    #[test]
    fn parses_xreadgroup_replies_with_deleted_entries() {
        let v = reply(vec![
            entry(
                "1-0",
                &[
                    ("trade_id", s("T1")),
                    ("event", s("closed")),
                    ("payload", b(b"\x80")),
                ],
            ),
            Value::Array(vec![s("2-0"), Value::Null]),
        ]);
        let e = parse_entries(v);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].id.as_str(), e[0].deleted), ("1-0", false));
        assert_eq!(e[0].log_key(&def()).as_deref(), Some("trade_execution:T1"));
        assert!(e[1].deleted);
        assert!(parse_entries(Value::Null).is_empty());
    }

    #[test]
    fn rows_of_a_batch() {
        let d = def();
        let payload = mp(json!({"account_id": "a", "profit": 2.5}));
        let v = reply(vec![
            entry(
                "1-0",
                &[
                    ("trade_id", s("T1")),
                    ("event", s("closed")),
                    ("payload", b(&payload)),
                ],
            ),
            entry("2-0", &[("event", s("closed")), ("payload", b(&payload))]),
            entry(
                "3-0",
                &[
                    ("trade_id", s("T2")),
                    ("event", s("closed")),
                    ("payload", b(b"\x85\x01")),
                ],
            ),
            entry("4-0", &[("trade_id", s("T3")), ("event", s("opened"))]),
            entry("5-0", &[("trade_id", s("T4")), ("event", s("closed"))]),
        ]);
        let entries = parse_entries(v);
        let good = Bytes::from(mp(json!({"seq": 1, "step": "filled"})));
        let string_log = Bytes::from(mp(json!([{"seq": 1}, {"seq": 2}])));
        let list = LogRead::List {
            len: 2,
            first: vec![good.clone(), Bytes::from_static(b"\xc1")],
        };
        let string = LogRead::Str {
            len: string_log.len() as u64,
            value: string_log.clone(),
        };
        let logs = taken(vec![
            ("trade_execution:T1", "1-0", list),
            ("trade_execution:T2", "3-0", string),
            ("trade_execution:T4", "5-0", LogRead::Missing),
        ]);
        let mut recent = RecentMoves::new(10);
        let w = rows(
            &ctx(&d, 9),
            "rtrs",
            entries.clone(),
            logs,
            Vec::new(),
            &mut recent,
        );
        assert_eq!(w.ids, ["1-0", "2-0", "3-0", "4-0", "5-0"]);
        let kinds: Vec<String> = w
            .records
            .iter()
            .map(|r| {
                let Record::Row(row) = r else {
                    return format!("{r:?}");
                };
                let j = row.to_json();
                match row.table {
                    Table::Trades => format!(
                        "trade {} {} {}",
                        j["trade_id"].as_str().unwrap(),
                        j["log_state"].as_str().unwrap(),
                        j["log_entries"]
                    ),
                    Table::TradeExecutions => {
                        format!("exec {} {}", j["trade_id"].as_str().unwrap(), j["seq"])
                    }
                    Table::DeadLetters => format!(
                        "dead {} {} {}",
                        j["reason"].as_str().unwrap(),
                        j["key"].as_str().unwrap(),
                        j["stream_id"].as_str().unwrap()
                    ),
                    _ => format!("{r:?}"),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "exec T1 1",
                "dead invalid_utf8 trade_execution:T1 1-0",
                "trade T1 moved 2",
                "dead missing_trade_id  2-0",
                "exec T2 1",
                "exec T2 2",
                "dead invalid_msgpack  3-0",
                "trade T4 missing 0",
            ]
        );
        let remove = |key: &str, take: &str| LogAck::Remove {
            staging: side_key(key, STAGING, take),
            key: key.to_string(),
        };
        assert_eq!(
            w.logs,
            [
                remove("trade_execution:T1", "1-0"),
                remove("trade_execution:T2", "3-0"),
            ]
        );
        assert!(w.more.is_empty());
        // The same closes again, their logs gone: the trades moved before keep their rows
        // (a lower version) and are not counted as missing logs.
        let again = rows(
            &ctx(&d, 10),
            "rtrs",
            entries,
            HashMap::new(),
            Vec::new(),
            &mut recent,
        );
        let versions = |w: &Work| -> Vec<(String, u64)> {
            w.records
                .iter()
                .filter_map(|r| match r {
                    Record::Row(row) if row.table == Table::Trades => {
                        let j = row.to_json();
                        Some((j["trade_id"].as_str()?.to_string(), j["version"].as_u64()?))
                    }
                    _ => None,
                })
                .collect()
        };
        let (later, first) = (versions(&again), versions(&w));
        assert_eq!(later.len(), first.len());
        assert!(later
            .iter()
            .zip(&first)
            .all(|(a, b)| a.0 == b.0 && a.1 <= b.1));
        assert!(
            recent.set.contains("T1") && recent.set.contains("T2") && !recent.set.contains("T4")
        );
    }

    #[test]
    fn pubsub_close_message() {
        let e = close_message(Bytes::from(mp(json!({"trade_id": "P1", "profit": 1.0}))));
        assert_eq!(e.id, "");
        assert_eq!(e.log_key(&def()).as_deref(), Some("trade_execution:P1"));
        let bad = close_message(Bytes::from_static(b"junk"));
        assert!(bad.log_key(&def()).is_none());
    }

    #[test]
    fn pending_figures() {
        let pending = Value::Array(vec![Value::Array(vec![
            s("1-0"),
            s("c"),
            Value::Integer(1500),
            Value::Integer(1),
        ])]);
        assert_eq!(oldest_idle_ms(&pending), Some(1500));
    }
}
