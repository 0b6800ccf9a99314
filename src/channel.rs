//! The one bounded channel between the sources and the writer, bounded in rows
//! (`batch.channel_capacity`) and in bytes (`batch.channel_bytes`).
//!
//! A record takes bytes of the budget (its RowBinary length) before it enters the channel and
//! gives them back when the batcher moves it into a batch. Batches are bounded on their own
//! (`batch.max_bytes`, two held at once): counting their rows in this budget too would let the
//! two settings starve each other (a budget under two batches would cut every batch by delay),
//! and the gauge `spillway_channel_bytes` then means what `spillway_channel_depth` means, the
//! records waiting for a batch. A record larger than the whole budget takes all of it, so it
//! still passes, alone, and nothing deadlocks.
//!
//! The budget is a semaphore of bytes taken once per chunk of records sent (up to
//! [`SEND_CHUNK`] records) and given back once per fill of the batcher, not per record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::rows::Record;

/// Most records given room in the channel at once.
const SEND_CHUNK: usize = 256;

/// The byte budget shared by both ends.
struct Budget {
    bytes: Semaphore,
    total: usize,
    /// Bytes of the records sent and not yet given back (the semaphore alone would also count
    /// what a waiting sender was granted so far).
    sent: AtomicUsize,
}

impl Budget {
    /// What a record takes: its RowBinary length, at most the whole budget; an
    /// acknowledgement nothing.
    fn cost(&self, r: &Record) -> usize {
        match r {
            Record::Row(row) => row.bytes.len().min(self.total),
            Record::Ack(_) => 0,
        }
    }
}

/// The sending end (cloned by every source).
#[derive(Clone)]
pub(crate) struct RecordTx {
    tx: mpsc::Sender<Record>,
    budget: Arc<Budget>,
}

/// The receiving end (the batcher's).
pub(crate) struct RecordRx {
    rx: mpsc::Receiver<Record>,
    budget: Arc<Budget>,
    /// Bytes of the records moved out and not yet given back.
    taken_out: usize,
}

/// A channel of `rows` records and `bytes` bytes (at most `u32::MAX`, see the config check).
pub(crate) fn channel(rows: usize, bytes: usize) -> (RecordTx, RecordRx) {
    let (tx, rx) = mpsc::channel(rows);
    let budget = Arc::new(Budget {
        bytes: Semaphore::new(bytes),
        total: bytes,
        sent: AtomicUsize::new(0),
    });
    (
        RecordTx {
            tx,
            budget: budget.clone(),
        },
        RecordRx {
            rx,
            budget,
            taken_out: 0,
        },
    )
}

impl RecordTx {
    /// Sends `records` into the channel in order, taking room (rows and bytes) for a chunk at
    /// a time: one wait per chunk, not per record. A chunk is cut at [`SEND_CHUNK`] records or
    /// before it would take more than the whole budget. False when the channel is closed.
    pub(crate) async fn send_all(&self, records: Vec<Record>) -> bool {
        let mut records = records.into_iter();
        loop {
            let (n, bytes) = self.chunk(records.as_slice());
            if n == 0 {
                return true;
            }
            if bytes > 0 {
                match self.budget.bytes.acquire_many(bytes as u32).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return false,
                }
                self.budget.sent.fetch_add(bytes, Ordering::Relaxed);
            }
            let Ok(permits) = self.tx.reserve_many(n).await else {
                return false;
            };
            for (permit, r) in permits.zip(&mut records) {
                permit.send(r);
            }
        }
    }

    /// How many of `records` go in the next chunk, and the bytes they take.
    fn chunk(&self, records: &[Record]) -> (usize, usize) {
        let most = records.len().min(SEND_CHUNK).min(self.tx.max_capacity());
        let (mut n, mut bytes) = (0, 0);
        for r in &records[..most] {
            let cost = self.budget.cost(r);
            if n > 0 && bytes + cost > self.budget.total {
                break;
            }
            n += 1;
            bytes += cost;
        }
        (n, bytes)
    }

    /// Records in the channel (tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl RecordRx {
    /// Moves up to `n` records into `out`; 0 when the channel is closed and empty. Their bytes
    /// stay taken until [`RecordRx::give_back`].
    pub(crate) async fn recv_many(&mut self, out: &mut Vec<Record>, n: usize) -> usize {
        self.rx.recv_many(out, n).await
    }

    /// Records in the channel.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// `r` left the waiting records (into a batch): its bytes are given back at the next
    /// [`RecordRx::give_back`].
    pub(crate) fn moved(&mut self, r: &Record) {
        self.taken_out += self.budget.cost(r);
    }

    /// Gives back the bytes of the records moved since the last call. Call it before waiting
    /// for more records, or the senders may wait for bytes that only this call frees.
    pub(crate) fn give_back(&mut self) {
        if self.taken_out > 0 {
            let bytes = std::mem::take(&mut self.taken_out);
            self.budget.sent.fetch_sub(bytes, Ordering::Relaxed);
            self.budget.bytes.add_permits(bytes);
        }
    }

    /// Bytes of the records waiting: in the channel, or taken out and not yet in a batch.
    pub(crate) fn bytes(&self) -> usize {
        self.budget.sent.load(Ordering::Relaxed) - self.taken_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{AlertEventRow, Table};
    use std::time::Duration;

    fn event(i: i64, key_len: usize) -> Record {
        Record::alert_event(AlertEventRow {
            key: "k".repeat(key_len),
            alert_id: i.to_string(),
            event: "expired",
            event_ms: i,
            content_hash: 0,
            ttl_ms: -2,
        })
    }

    fn len(r: &Record) -> usize {
        match r {
            Record::Row(row) => row.bytes.len(),
            Record::Ack(_) => 0,
        }
    }

    #[tokio::test]
    async fn keeps_order_through_a_small_channel_and_stops_when_closed() {
        let (tx, mut rx) = channel(3, 1 << 20);
        let sender = tokio::spawn(async move {
            let sent = tx.send_all((0..600).map(|i| event(i, 5)).collect()).await;
            (sent, tx)
        });
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < 600 {
            rx.recv_many(&mut buf, 10).await;
            for r in buf.drain(..) {
                rx.moved(&r);
                match r {
                    Record::Row(r) if r.table == Table::AlertEvents => got.push(r.event_ms),
                    other => panic!("{other:?}"),
                }
            }
            rx.give_back();
        }
        let (sent, tx) = sender.await.unwrap();
        assert!(sent);
        assert_eq!(got, (0..600).collect::<Vec<_>>());
        assert_eq!(rx.bytes(), 0);
        drop(rx);
        assert!(!tx.send_all(vec![event(1, 5)]).await);
        assert!(tx.send_all(Vec::new()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_bound_the_senders_until_given_back() {
        let row = len(&event(0, 100));
        // Room for three such rows in bytes, for a thousand in rows.
        let (tx, mut rx) = channel(1000, 3 * row + row / 2);
        let sender = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_all((0..10).map(|i| event(i, 100)).collect()).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((rx.len(), rx.bytes()), (3, 3 * row));
        let mut buf = Vec::new();
        rx.recv_many(&mut buf, 2).await;
        rx.moved(&buf[0]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Taken out but not given back: still counted, and the senders still wait.
        assert_eq!((rx.len(), rx.bytes()), (1, 2 * row));
        rx.give_back();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Given back, one row's room is not the next chunk's (three rows): still waiting.
        assert_eq!((rx.len(), rx.bytes()), (1, 2 * row));
        rx.moved(&buf[1]);
        buf.clear();
        rx.recv_many(&mut buf, 10).await;
        rx.moved(&buf[0]);
        rx.give_back();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((rx.len(), rx.bytes()), (3, 3 * row));
        let mut seen = 3;
        while seen < 10 {
            buf.clear();
            seen += rx.recv_many(&mut buf, 100).await;
            for r in &buf {
                rx.moved(r);
            }
            rx.give_back();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_larger_than_the_budget_passes_alone() {
        let (small, big) = (event(0, 10), event(1, 5000));
        let budget = len(&small) * 2;
        assert!(len(&big) > budget);
        let (tx, mut rx) = channel(100, budget);
        let sender = tokio::spawn(async move {
            tx.send_all(vec![event(0, 10), event(1, 5000), event(2, 10)])
                .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The small one, then the big one waits for the whole budget.
        assert_eq!((rx.len(), rx.bytes()), (1, len(&small)));
        let mut buf = Vec::new();
        for want in [len(&small), budget, len(&small)] {
            buf.clear();
            assert_eq!(rx.recv_many(&mut buf, 10).await, 1);
            assert_eq!(rx.bytes(), want);
            rx.moved(&buf[0]);
            rx.give_back();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(sender.await.unwrap());
        assert_eq!(rx.bytes(), 0);
    }
}
