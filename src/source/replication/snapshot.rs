//! The snapshot of a full resync, parsed as it arrives: the parser runs on a blocking thread
//! reading the socket through a bridge, and hands the live keys of the pattern over in batches
//! through a small queue, so a slow ClickHouse slows the reading (the primary holds the rest)
//! and nothing holds the snapshot whole. The parser stops at the snapshot's last byte; what was
//! read past it is the start of the command stream, handed back with the connection.

use bytes::{Bytes, BytesMut};
use fred::error::{Error, ErrorKind};
use fred::types::Key;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::io::SyncIoBridge;
use tokio_util::sync::CancellationToken;

use super::link::{protocol, Link, Transfer};
use super::{rdb, Replication};
use crate::rows::alert::CapturedBy;
use crate::source::keyspace::capture::Read;

/// Keys handed over at once.
const BATCH: usize = 1024;

/// A reader that stops after `left` bytes (when given).
struct Limited<R> {
    inner: R,
    left: Option<u64>,
}

impl<R: std::io::Read> std::io::Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.left {
            None => self.inner.read(buf),
            Some(0) => Ok(0),
            Some(left) => {
                let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..max])?;
                self.left = Some(left - n as u64);
                Ok(n)
            }
        }
    }
}

/// Parses the snapshot that follows a `+FULLRESYNC` on `link` and captures its live keys of
/// the pattern (`captured_by = snapshot`); returns the link, positioned at the stream's start.
pub(super) async fn load(
    r: &Replication,
    mut link: Link,
    cancel: &CancellationToken,
) -> Result<Link, Error> {
    let transfer = link.transfer().await?;
    let framing = match transfer {
        Transfer::Sized(_) => "length (a snapshot written to disk)",
        Transfer::Marked(_) => "end mark (diskless)",
    };
    let started = std::time::Instant::now();
    let Link { stream, buf } = link;
    let chain = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(buf.freeze()), stream);
    let left = match &transfer {
        Transfer::Sized(n) => Some(*n),
        Transfer::Marked(_) => None,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<(Key, Read, i64)>>(4);
    let (def, db) = (r.def.clone(), u64::from(r.def.db));
    let handle = tokio::runtime::Handle::current();
    let parser = tokio::task::spawn_blocking(move || {
        let bridge = SyncIoBridge::new_with_handle(chain, handle);
        let mut reader = std::io::BufReader::with_capacity(
            256 * 1024,
            Limited {
                inner: bridge,
                left,
            },
        );
        let parsed = parse(&mut reader, db, |k| def.matches(k), &tx);
        let past = Bytes::copy_from_slice(reader.buffer());
        let Limited { inner, left } = reader.into_inner();
        (parsed, past, left, inner.into_inner())
    });
    let mut keys = 0u64;
    let mut open = true;
    while let Some(batch) = rx.recv().await {
        keys += batch.len() as u64;
        if !open {
            continue;
        }
        let now = crate::rows::now_ms();
        let writes = batch
            .into_iter()
            .map(|(key, read, expire_at)| (key, r.value_read(read, expire_at, now)))
            .collect();
        open = r
            .queue(super::Job::Writes {
                writes,
                by: CapturedBy::Snapshot,
                now,
                after: Vec::new(),
            })
            .await;
        if cancel.is_cancelled() {
            // The parser stops at its next hand-over (the queue is gone).
            break;
        }
    }
    drop(rx);
    let (parsed, past, left, chain) = parser
        .await
        .map_err(|e| Error::new(ErrorKind::Unknown, format!("snapshot parser: {e}")))?;
    let bytes = parsed?;
    if left.is_some_and(|l| l > 0) {
        return Err(protocol(format!(
            "the snapshot ended {} bytes before its announced length",
            left.unwrap_or(0)
        )));
    }
    let (cursor, stream) = chain.into_inner();
    let mut rest = BytesMut::from(&past[..]);
    let pos = cursor.position() as usize;
    rest.extend_from_slice(&cursor.get_ref()[pos.min(cursor.get_ref().len())..]);
    let mut link = Link { stream, buf: rest };
    if let Transfer::Marked(mark) = transfer {
        while link.buf.len() < mark.len() {
            link.read().await?;
        }
        let end = link.buf.split_to(mark.len());
        if end[..] != mark[..] {
            return Err(protocol("the diskless snapshot did not end with its mark"));
        }
    }
    link.stream.flush().await?;
    tracing::info!(pipeline = %r.name, bytes, keys, framing, took = ?started.elapsed(), "snapshot of the full resync loaded");
    Ok(link)
}

/// Parses the snapshot from `reader`, sending the keys of database `db` that `matches` in
/// batches; returns the snapshot's length in bytes. Stops early (Ok) when the queue is gone.
fn parse<R: std::io::Read>(
    reader: &mut R,
    db: u64,
    matches: impl Fn(&[u8]) -> bool,
    tx: &mpsc::Sender<Vec<(Key, Read, i64)>>,
) -> Result<u64, Error> {
    let bad = |e: rdb::RdbError| protocol(format!("the snapshot (RDB): {e}"));
    let mut parser = rdb::Parser::new(reader).map_err(bad)?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut want = |d: u64, key: &[u8]| d == db && matches(key);
    while let Some(entry) = parser.next(&mut want).map_err(bad)? {
        if entry.db != db || !matches(&entry.key) {
            continue;
        }
        let read = match entry.value {
            rdb::Value::String(b) => Read::Value(b, -1),
            rdb::Value::List(_) => Read::Refused("the key holds a list, not a string".into()),
            rdb::Value::Skipped(t) => Read::Refused(format!("the key holds a {t}, not a string")),
        };
        batch.push((Key::from(entry.key), read, entry.expire_at_ms.unwrap_or(-1)));
        if batch.len() >= BATCH && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
            return Ok(parser.position());
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(parser.position())
}

impl Replication {
    /// A snapshot key's read with its TTL at `now` (from its expiry time, -1 without one), and
    /// `keyspace.max_value_bytes` applied.
    fn value_read(&self, read: Read, expire_at: i64, now: i64) -> Read {
        let ttl = if expire_at < 0 {
            -1
        } else {
            (expire_at - now).max(0)
        };
        match read {
            Read::Value(b, _) => self.read(b, ttl),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn limited_stops_at_its_length() {
        let mut l = Limited {
            inner: std::io::Cursor::new(b"abcdef".to_vec()),
            left: Some(4),
        };
        let mut out = Vec::new();
        l.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");
    }
}
