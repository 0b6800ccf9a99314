//! Moving one taken execution log into rows: a LIST entry by entry, page by page, within the
//! pipeline's limits (entries and bytes); a STRING whole. Every entry becomes rows or a dead
//! letter; what is over the limits is kept in Redis or dead-lettered, as configured, and
//! counted. The outcome says what becomes of the staging key after the commit.

use bytes::Bytes;

use super::config::{OverLimit, StreamSource};
use super::take::{side_key, OVERFLOW, STAGING};
use crate::decode::DecodeError;
use crate::metrics as m;
use crate::rows::trade::{log_value_rows, LogOrigin};
use crate::rows::{content_hash, DeadLetterRow, Record};

/// A log taken for a close (or found staged at start).
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The log's key.
    pub key: String,
    /// Where it was taken to.
    pub staging: String,
    /// The take's id: the close's stream entry id (or the id given a pub/sub close).
    pub take_id: String,
    /// The trade, from the key.
    pub trade_id: String,
    /// The stream entry that took it (empty for pub/sub closes and recovered logs).
    pub stream_id: String,
}

impl Taken {
    /// The take `take_id` of the log `key` (prefixed `prefix` before the trade id), made by
    /// the stream entry `stream_id` (empty when none will be acknowledged).
    pub(crate) fn new(key: String, prefix: &str, take_id: String, stream_id: String) -> Self {
        Taken {
            staging: side_key(&key, STAGING, &take_id),
            trade_id: key.get(prefix.len()..).unwrap_or_default().to_string(),
            key,
            take_id,
            stream_id,
        }
    }

    /// Where its rows come from, archived at `now`.
    fn origin(&self, now: i64) -> LogOrigin<'_> {
        LogOrigin {
            trade_id: &self.trade_id,
            take_id: &self.take_id,
            key: &self.key,
            now,
        }
    }
}

/// What becomes of a staging key once its rows are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogAck {
    /// Remove it (or give it the grace expiry); `key` is asked whether the platform wrote the
    /// log again after the take.
    Remove {
        /// The staging key.
        staging: String,
        /// The log's key.
        key: String,
    },
    /// Keep what was over the limits: the archived head of a LIST trimmed off, the rest (or a
    /// whole STRING) renamed to `overflow`.
    Park {
        /// The staging key.
        staging: String,
        /// Where the rest goes.
        overflow: String,
        /// Entries archived (trimmed off the head).
        archived: u64,
    },
}

/// Who is moving: for metrics and dead letters.
pub(crate) struct Ctx<'a> {
    /// Pipeline name.
    pub name: &'a str,
    /// The log instance's name.
    pub instance: &'a str,
    /// The pipeline's definition.
    pub def: &'a StreamSource,
    /// Now (epoch ms).
    pub now: i64,
}

impl Ctx<'_> {
    /// A dead letter of the pipeline, counted by reason.
    pub(crate) fn dead(&self, key: &str, stream_id: &str, raw: Vec<u8>, e: DecodeError) -> Record {
        metrics::counter!(m::DEAD_LETTERS, "pipeline" => self.name.to_string(), "reason" => e.reason)
            .increment(1);
        Record::dead_letter(DeadLetterRow {
            pipeline: self.name.to_string(),
            instance: self.instance.to_string(),
            key: key.to_string(),
            stream_id: stream_id.to_string(),
            content_hash: content_hash(&raw),
            raw,
            reason: e.reason,
            error: e.detail,
            received_at_ms: self.now,
        })
    }
}

/// The progress of moving one LIST log.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The log.
    pub taken: Taken,
    /// Entries in the taken list.
    pub len: u64,
    /// The next entry to read.
    pub next: u64,
    /// The position of the next row.
    position: u32,
    /// Bytes archived so far.
    bytes: u64,
    /// A limit stopped the move before the end.
    stopped: bool,
    /// Entries to archive at most: the list's length within `log_max_entries`.
    end: u64,
}

impl Cursor {
    pub(crate) fn new(taken: Taken, len: u64, def: &StreamSource) -> Self {
        Cursor {
            taken,
            len,
            next: 0,
            position: 0,
            bytes: 0,
            stopped: false,
            end: len.min(def.log_max_entries),
        }
    }

    /// Whether every entry within the limits was read.
    pub(crate) fn done(&self) -> bool {
        self.stopped || self.next >= self.end
    }

    /// The next page to read: `next..to`.
    pub(crate) fn page_end(&self, def: &StreamSource) -> u64 {
        (self.next + def.log_page_entries).min(self.end)
    }

    /// Turns the entries of a page (read from `self.next` on) into rows, up to the limits.
    pub(crate) fn consume(&mut self, items: &[Bytes], ctx: &Ctx<'_>, out: &mut Vec<Record>) {
        if items.is_empty() {
            // The staging key is Spillway's alone: fewer entries than its length said means it
            // was removed by someone else. Nothing more to read.
            self.stopped = true;
            return;
        }
        let t = &self.taken;
        let origin = t.origin(ctx.now);
        for item in items {
            let size = item.len() as u64;
            if self.next >= self.end || (self.bytes + size > ctx.def.log_max_bytes && self.next > 0)
            {
                self.stopped = true;
                return;
            }
            match log_value_rows(origin, item, self.position) {
                Ok(rows) => {
                    count_foreign(ctx, rows.foreign_trade_ids);
                    self.position += rows.rows.len() as u32;
                    out.extend(rows.rows.into_iter().map(Record::trade_execution));
                }
                Err(e) => {
                    self.position += 1;
                    out.push(ctx.dead(&t.key, &t.stream_id, item.to_vec(), e));
                }
            }
            self.next += 1;
            self.bytes += size;
        }
    }

    /// What becomes of the staging key, once every page within the limits was read; counts
    /// what was over them (and makes its dead letter when so configured).
    pub(crate) fn finish(self, ctx: &Ctx<'_>, out: &mut Vec<Record>) -> LogAck {
        let over = self.len.saturating_sub(self.next);
        if over == 0 {
            return remove(self.taken);
        }
        let detail = format!(
            "execution log of {} entries; {} archived, {over} over the limits (log_max_entries {}, log_max_bytes {})",
            self.len, self.next, ctx.def.log_max_entries, ctx.def.log_max_bytes
        );
        over_limit(ctx, over, self.taken, self.next, Vec::new(), detail, out)
    }
}

/// The rows of a taken STRING log of `len` bytes (`value`: all of it, or its head when it is
/// over the byte limit).
pub(crate) fn string_log(
    taken: Taken,
    len: u64,
    value: &Bytes,
    ctx: &Ctx<'_>,
    out: &mut Vec<Record>,
) -> (LogAck, u32) {
    if len > ctx.def.log_max_bytes {
        let detail = format!(
            "execution log is a STRING of {len} bytes, over log_max_bytes {}",
            ctx.def.log_max_bytes
        );
        return (over_limit(ctx, 1, taken, 0, value.to_vec(), detail, out), 0);
    }
    let entries = match log_value_rows(taken.origin(ctx.now), value, 0) {
        Ok(rows) => {
            count_foreign(ctx, rows.foreign_trade_ids);
            let n = rows.rows.len() as u32;
            out.extend(rows.rows.into_iter().map(Record::trade_execution));
            n
        }
        Err(e) => {
            out.push(ctx.dead(&taken.key, &taken.stream_id, value.to_vec(), e));
            0
        }
    };
    (remove(taken), entries)
}

fn remove(t: Taken) -> LogAck {
    LogAck::Remove {
        staging: t.staging,
        key: t.key,
    }
}

/// `over` entries of a log (bytes of a STRING: one) past the limits: counted, and kept or
/// dead-lettered as configured.
fn over_limit(
    ctx: &Ctx<'_>,
    over: u64,
    t: Taken,
    archived: u64,
    raw: Vec<u8>,
    detail: String,
    out: &mut Vec<Record>,
) -> LogAck {
    let action = match ctx.def.log_over_limit {
        OverLimit::Keep => "kept",
        OverLimit::DeadLetter => "dead_letter",
    };
    metrics::counter!(m::LOGS_OVER_LIMIT, "pipeline" => ctx.name.to_string(), "action" => action)
        .increment(1);
    metrics::counter!(m::LOG_ENTRIES_OVER_LIMIT, "pipeline" => ctx.name.to_string(), "action" => action)
        .increment(over);
    tracing::warn!(pipeline = ctx.name, key = %t.key, %detail, action, "execution log over the limits");
    match ctx.def.log_over_limit {
        OverLimit::Keep => LogAck::Park {
            overflow: side_key(&t.key, OVERFLOW, &t.take_id),
            staging: t.staging,
            archived,
        },
        OverLimit::DeadLetter => {
            let e = DecodeError {
                reason: "log_over_limit",
                detail,
            };
            out.push(ctx.dead(&t.key, &t.stream_id, raw, e));
            remove(t)
        }
    }
}

fn count_foreign(ctx: &Ctx<'_>, n: u32) {
    if n > 0 {
        metrics::counter!(m::LOG_FOREIGN_TRADE_IDS, "pipeline" => ctx.name.to_string())
            .increment(u64::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{parse, Source};
    use crate::rows::Table;

    fn def(extra: &str) -> StreamSource {
        let text = format!(
            "{}\n{extra}\n",
            include_str!("../../../pipelines/trades.toml")
        );
        match parse(std::path::Path::new("trades.toml"), &text)
            .unwrap()
            .source
        {
            Source::Stream(s) => s,
            _ => panic!("not a stream pipeline"),
        }
    }

    fn taken() -> Taken {
        let key = "trade_execution:T1".to_string();
        Taken::new(key, "trade_execution:", "1-0".into(), "1-0".into())
    }

    fn entry(seq: u32) -> Bytes {
        Bytes::from(
            rmp_serde::to_vec_named(&serde_json::json!({"seq": seq, "pad": "x".repeat(20)}))
                .unwrap(),
        )
    }

    fn tables(records: &[Record]) -> Vec<Table> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Row(row) => Some(row.table),
                Record::Ack(_) => None,
            })
            .collect()
    }

    /// Reads a LIST of `len` entries the way the row builder does, page by page.
    fn run(d: &StreamSource, len: u64) -> (Vec<Record>, LogAck, u64) {
        let ctx = Ctx {
            name: "trades",
            instance: "rls",
            def: d,
            now: 1,
        };
        let all: Vec<Bytes> = (0..len as u32).map(entry).collect();
        let mut c = Cursor::new(taken(), len, d);
        let mut out = Vec::new();
        while !c.done() {
            let to = c.page_end(d);
            c.consume(&all[c.next as usize..to as usize], &ctx, &mut out);
        }
        let next = c.next;
        let ack = c.finish(&ctx, &mut out);
        (out, ack, next)
    }

    #[test]
    fn a_log_within_the_limits_is_read_in_pages_and_removed() {
        let d = def("log_page_entries = 3");
        let (out, ack, next) = run(&d, 10);
        assert_eq!((out.len(), next), (10, 10));
        assert!(matches!(ack, LogAck::Remove { .. }));
    }

    #[test]
    fn over_the_entry_limit_the_rest_is_kept_or_dead_lettered() {
        let keep = def("log_page_entries = 3\nlog_max_entries = 7");
        let (out, ack, next) = run(&keep, 10);
        assert_eq!((out.len(), next), (7, 7));
        let overflow = side_key("trade_execution:T1", super::OVERFLOW, "1-0");
        assert_eq!(
            ack,
            LogAck::Park {
                staging: taken().staging,
                overflow,
                archived: 7
            }
        );
        let dead = def("log_max_entries = 7\nlog_over_limit = \"dead_letter\"");
        let (out, ack, _) = run(&dead, 10);
        let t = tables(&out);
        assert_eq!(t.len(), 8);
        assert_eq!(t[7], Table::DeadLetters);
        assert!(matches!(ack, LogAck::Remove { .. }));
    }

    #[test]
    fn over_the_byte_limit_reading_stops() {
        let one = entry(0).len() as u64;
        let d = def(&format!(
            "log_page_entries = 4\nlog_max_bytes = {}",
            one * 5 + 1
        ));
        let (out, ack, next) = run(&d, 10);
        assert_eq!((out.len(), next), (5, 5));
        assert!(matches!(ack, LogAck::Park { archived: 5, .. }));
    }

    #[test]
    fn a_string_over_the_byte_limit_is_not_split() {
        let d = def("log_max_bytes = 10\nlog_over_limit = \"dead_letter\"");
        let ctx = Ctx {
            name: "trades",
            instance: "rls",
            def: &d,
            now: 1,
        };
        let mut out = Vec::new();
        let value = Bytes::from_static(b"a plain text log longer than ten bytes");
        let (ack, n) = string_log(taken(), value.len() as u64, &value, &ctx, &mut out);
        assert_eq!((n, tables(&out)), (0, vec![Table::DeadLetters]));
        assert!(matches!(ack, LogAck::Remove { .. }));
    }
}
