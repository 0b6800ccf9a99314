//! Where the replication stream stands, kept in ClickHouse with the rows: a row of
//! `replication_offsets` (pipeline, instance, replication id, offset, database) goes into the
//! channel after the rows of the commands it covers. In a batch the table is inserted last, and
//! batches commit in order, so a stored offset never runs ahead of the rows: a restart resumes
//! from it and can only repeat commands (whose rows ClickHouse deduplicates), never skip one.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::rows::{Record, Row, Table};

/// A point of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The primary's replication id.
    pub replid: String,
    /// Bytes of the stream had (the offset of the last one).
    pub offset: u64,
    /// The database the stream is in there (`u64::MAX`: not known yet).
    pub db: u64,
}

/// A row of `replication_offsets`.
#[derive(Debug, Serialize, clickhouse::Row)]
struct OffsetRow<'a> {
    pipeline: &'a str,
    instance: &'a str,
    replid: &'a str,
    offset: u64,
    db: u32,
    stored_at_ms: i64,
    version: u64,
}

/// What a restart reads back.
#[derive(Debug, Deserialize, clickhouse::Row)]
struct Stored {
    replid: String,
    offset: u64,
    db: u32,
}

/// The database of a position as stored (`u32::MAX`: not known).
fn db_column(db: u64) -> u32 {
    u32::try_from(db).unwrap_or(u32::MAX)
}

/// The row storing `at` for `pipeline` on `instance`.
pub(crate) fn record(pipeline: &str, instance: &str, at: &Position) -> Record {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::rows::now_ms();
    // Strictly increasing in this process, and from one process to the next as the clock is.
    let want = (now.max(0) as u64) << 10;
    let version = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(want.max(v + 1))
        })
        .map(|v| want.max(v + 1))
        .unwrap_or(want);
    let row = OffsetRow {
        pipeline,
        instance,
        replid: &at.replid,
        offset: at.offset,
        db: db_column(at.db),
        stored_at_ms: now,
        version,
    };
    Record::Row(Row::new(Table::ReplicationOffsets, &row, now))
}

/// The last position stored for `pipeline` on `instance`, if any.
pub(crate) async fn load(
    ch: &clickhouse::Client,
    pipeline: &str,
    instance: &str,
) -> Result<Option<Position>, clickhouse::error::Error> {
    // No FINAL: the highest version is the last stored, merged or not (and a Distributed
    // table of an old server would want every column selected under FINAL).
    let stored: Option<Stored> = ch
        .query(
            "SELECT replid, offset, db FROM replication_offsets \
             WHERE pipeline = ? AND instance = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(instance)
        .fetch_optional()
        .await?;
    Ok(stored.map(|s| Position {
        replid: s.replid,
        offset: s.offset,
        db: if s.db == u32::MAX {
            u64::MAX
        } else {
            u64::from(s.db)
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_row_reads_back_and_versions_increase() {
        let at = Position {
            replid: "a".repeat(40),
            offset: 1234,
            db: 0,
        };
        let (Record::Row(a), Record::Row(b)) =
            (record("alerts", "rls", &at), record("alerts", "rls", &at))
        else {
            panic!("rows")
        };
        let (a, b) = (a.to_json(), b.to_json());
        assert_eq!(a["offset"], 1234);
        assert_eq!(a["pipeline"], "alerts");
        assert!(b["version"].as_u64() > a["version"].as_u64());
    }
}
