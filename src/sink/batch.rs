//! A batch: the rows of each table in RowBinary, kept in chunks so it grows without copying,
//! with the acknowledgements to run once it is committed.

use crate::metrics as m;
use crate::rows::{AckFn, Record, Table};

/// The rows of one table in a batch, in RowBinary, with where each row ends (to split the
/// insert when ClickHouse refuses a row) and when each row's event happened. The bytes are kept
/// in chunks of [`CHUNK`] (a row never spans two), so a batch grows without copying itself.
#[derive(Default)]
pub(super) struct Rows {
    chunks: Vec<Vec<u8>>,
    /// (chunk, end offset in it) of each row.
    ends: Vec<(u32, u32)>,
    event_ms: Vec<i64>,
}

/// Bytes per chunk of a batch, and per piece of an INSERT sent.
const CHUNK: usize = 1 << 20;

impl Rows {
    pub(super) fn push(&mut self, bytes: &[u8], event_ms: i64) {
        match self.chunks.last_mut() {
            Some(c) if c.len() + bytes.len() <= c.capacity() => {}
            _ => self.chunks.push(Vec::with_capacity(CHUNK.max(bytes.len()))),
        }
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        chunk.extend_from_slice(bytes);
        self.ends.push((last as u32, chunk.len() as u32));
        self.event_ms.push(event_ms);
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Appends every row of `other` (rows refused by ClickHouse: few and small).
    pub(super) fn extend(&mut self, other: &Rows) {
        for i in 0..other.len() {
            self.push(&other.bytes(&(i..i + 1)).concat(), other.event_ms[i]);
        }
    }

    /// The bytes of rows `range`, as slices of the chunks, in order.
    pub(super) fn bytes(&self, range: &std::ops::Range<usize>) -> Vec<&[u8]> {
        let (Some(first), Some(&(last, end))) = (
            self.ends.get(range.start),
            range.end.checked_sub(1).and_then(|i| self.ends.get(i)),
        ) else {
            return Vec::new();
        };
        let start = match range.start.checked_sub(1).map(|i| self.ends[i]) {
            Some((c, e)) if c == first.0 => e as usize,
            _ => 0,
        };
        (first.0..=last)
            .map(|c| {
                let chunk = &self.chunks[c as usize];
                let from = if c == first.0 { start } else { 0 };
                let to = if c == last { end as usize } else { chunk.len() };
                &chunk[from..to]
            })
            .collect()
    }
}

/// Rows of one batch, grouped by table.
#[derive(Default)]
pub(crate) struct Batch {
    pub(super) tables: [Rows; Table::ALL.len()],
    acks: Vec<AckFn>,
    /// The earliest time an alert value of the batch expires in Redis (epoch ms).
    expires_at_ms: Option<i64>,
    rows: usize,
    bytes: usize,
}

impl Batch {
    /// Adds a record.
    pub(crate) fn push(&mut self, r: Record) {
        match r {
            Record::Row(row) => {
                if let Some(at) = row.expires_at_ms {
                    self.expires_at_ms = Some(self.expires_at_ms.map_or(at, |e| e.min(at)));
                }
                self.tables[row.table as usize].push(&row.bytes, row.event_ms);
                self.rows += 1;
                self.bytes += row.bytes.len();
            }
            Record::Ack(a) => self.acks.push(a),
        }
    }

    /// Records, for every committed row, the time from its Redis event (as Spillway received
    /// it) to `now_ms`, its commit.
    pub(crate) fn observe_commit(&self, now_ms: i64) {
        for (table, rows) in Table::ALL.iter().zip(&self.tables) {
            if *table == Table::DeadLetters {
                continue;
            }
            let h = metrics::histogram!(m::EVENT_TO_COMMIT, "table" => table.name());
            for t in &rows.event_ms {
                h.record((now_ms - t).max(0) as f64 / 1000.0);
            }
        }
    }

    /// When the earliest alert value of the batch expires in Redis (epoch ms), if any: how close
    /// a value read but not yet committed is to expiring (after which a crash could not recover
    /// it by a rescan).
    pub(crate) fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at_ms
    }

    /// Runs the acknowledgements of a committed batch, in order.
    pub(crate) fn acknowledge(&mut self) {
        for ack in self.acks.drain(..) {
            ack();
        }
    }

    /// Rows buffered.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes buffered (RowBinary).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_its_place_in_all() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?}");
        }
    }

    #[test]
    fn any_range_of_rows_reads_back_across_chunks() {
        // Rows of 300 kB and 1 B: three or four to a chunk, one larger than a chunk.
        let sizes = [300_000, 1, 300_000, 300_000, 300_000, 2 * CHUNK, 5, 300_000];
        let rows: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| vec![i as u8; *n])
            .collect();
        let mut r = Rows::default();
        for (i, row) in rows.iter().enumerate() {
            r.push(row, i as i64);
        }
        assert!(r.chunks.len() >= 3, "{} chunks", r.chunks.len());
        for i in 0..=rows.len() {
            for j in i..=rows.len() {
                assert_eq!(r.bytes(&(i..j)).concat(), rows[i..j].concat(), "{i}..{j}");
            }
        }
    }
}
