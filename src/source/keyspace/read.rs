//! Reading values back: the keys of a batch of notifications (each once) read on one of a few
//! command connections in one round trip (`MGET`, and with `read_ttl` their `PTTL` first), retried
//! while Redis is unreachable; keys found without a string value are asked their `TYPE`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::account::{Account, Outcome};
use super::capture::{Capturer, Job, Read};
use super::config::{KeyspaceSource, LIFECYCLE};
use super::subscriber::Notification;
use crate::rows::alert::CapturedBy;
use crate::rows::{now_ms, Record, TTL_NOT_READ};

/// The PTTL of each key in KEYS, one round trip for all. It runs just before the MGET of the same
/// keys (pipelined), and returns only the TTLs: values passed through Lua are copied into Lua
/// strings and back, which cost Redis more than the MGET itself (measured: MGET of 500 alerts
/// 0.49 ms alone, 0.89 ms inside a script).
const TTL_SCRIPT: &str = r#"
local call = redis.call
local ttls = {}
for i = 1, #KEYS do
  ttls[i] = call('PTTL', KEYS[i])
end
return ttls
"#;

/// The read of one batch of notifications: the keys written (each once) and the rows of
/// the lifecycle events.
pub(super) fn request(
    capturer: &Capturer,
    def: &KeyspaceSource,
    batch: &mut Vec<Notification>,
) -> Request {
    let now = now_ms();
    let mut records = Vec::new();
    let mut written: Vec<Key> = Vec::new();
    // Only the pipeline's keys are here: the forwarder filtered them (and counted them).
    for ev in batch.drain(..) {
        if def.write_events.iter().any(|e| **e == *ev.operation) {
            written.push(ev.key);
        } else if let Some((_, event)) = LIFECYCLE.iter().find(|(n, _)| *n == &*ev.operation) {
            records.push(Record::alert_event(
                capturer.event_row(&ev.key, event, now, 0, -2),
            ));
        }
    }
    let mut keys: Vec<Key> = written.clone();
    keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    keys.dedup_by(|a, b| a.as_bytes() == b.as_bytes());
    Request {
        now,
        keys,
        written,
        records,
    }
}

/// A batch of notifications to read the values of.
pub(super) struct Request {
    pub(super) now: i64,
    pub(super) keys: Vec<Key>,
    pub(super) written: Vec<Key>,
    pub(super) records: Vec<Record>,
}

/// Counts `n` notifications dropped at shutdown.
pub(super) fn lost_at_shutdown(pipeline: &str, n: u64) {
    if n > 0 {
        tracing::warn!(pipeline, notifications = n, "the drain's time ran out: notifications lost; the next start's rescan archives the values still alive");
        metrics::counter!(crate::metrics::EVENTS_LOST, "pipeline" => pipeline.to_string(), "reason" => "shutdown")
            .increment(n);
    }
}

/// One command connection reading values back.
#[derive(Clone)]
pub(super) struct Reader {
    pub(super) name: String,
    pub(super) client: Client,
    /// The TTL script, when `keyspace.read_ttl`.
    pub(super) script: Option<Script>,
    pub(super) read_duration: metrics::Histogram,
}

impl Reader {
    pub(super) fn new(
        name: &str,
        client: Client,
        read_ttl: bool,
        read_duration: metrics::Histogram,
    ) -> Reader {
        Reader {
            name: name.to_string(),
            client,
            script: read_ttl.then(|| Script::from_lua(TTL_SCRIPT)),
            read_duration,
        }
    }

    /// Takes the notifications waiting (when there are none, waits for the first), reads their
    /// values and hands them to the capture stage; until the notifications end (the subscriber
    /// stopped and the queue is empty: a graceful drain reads back everything queued), the
    /// capture stage stops, or `abandon` (the drain's time is up: the write notifications of
    /// the read in flight are counted lost, reason `shutdown`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn serve(
        self,
        events: Arc<tokio::sync::Mutex<mpsc::Receiver<Notification>>>,
        capturer: Arc<Capturer>,
        def: KeyspaceSource,
        read_batch: usize,
        jobs: mpsc::Sender<Job>,
        abandon: CancellationToken,
        account: Account,
    ) {
        let mut batch = Vec::with_capacity(read_batch);
        loop {
            {
                let mut rx = events.lock().await;
                let first = tokio::select! {
                    biased;
                    _ = abandon.cancelled() => return,
                    ev = rx.recv() => ev,
                };
                let Some(first) = first else { return };
                batch.push(first);
                while batch.len() < read_batch {
                    match rx.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
            }
            let req = request(&capturer, &def, &mut batch);
            let Some(reads) = self.read_with_retry(&req.keys, &abandon).await else {
                account.resolve(Outcome::LostShutdown, req.written.len() as u64);
                lost_at_shutdown(&self.name, req.written.len() as u64);
                // The lifecycle rows need no read: they still go.
                let job = Job {
                    now: req.now,
                    by: CapturedBy::Event,
                    keys: Vec::new(),
                    reads: Vec::new(),
                    written: Vec::new(),
                    records: req.records,
                };
                let _ = jobs.send(job).await;
                return;
            };
            let job = Job {
                now: req.now,
                by: CapturedBy::Event,
                keys: req.keys,
                reads,
                written: req.written,
                records: req.records,
            };
            let n_written = job.written.len() as u64;
            tokio::select! {
                biased;
                sent = jobs.send(job) => if sent.is_err() {
                    // The capture stage stopped (the drain's time ran out): none of it went.
                    account.resolve(Outcome::LostShutdown, n_written);
                    lost_at_shutdown(&self.name, n_written);
                    return;
                },
                _ = abandon.cancelled() => {
                    account.resolve(Outcome::LostShutdown, n_written);
                    lost_at_shutdown(&self.name, n_written);
                    return;
                }
            }
        }
    }

    /// Reads keys until Redis answers or `cancel`; None when cancelled.
    pub(super) async fn read_with_retry(
        &self,
        keys: &[Key],
        cancel: &CancellationToken,
    ) -> Option<Vec<Read>> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.read(keys).await {
                Ok(reads) => return Some(reads),
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, keys = keys.len(), "reading values failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One round trip: with `keyspace.read_ttl`, the PTTL of every key (a script), then their
    /// values (MGET), pipelined; without, the MGET alone. Another client may write between the
    /// two: a key written anew then reads as its new value with the old TTL (its own
    /// notification reads it again, with its TTL), and a key removed reads as gone. Keys that
    /// MGET found no string for, unless the script saw them gone, are asked their TYPE in one
    /// more round trip (rare: a key of another type, or one removed before its read): only a key
    /// that still holds another type is refused.
    pub(super) async fn read(&self, keys: &[Key]) -> std::result::Result<Vec<Read>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let (ttls, values) = match self.read_once(keys).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                if let Some(script) = &self.script {
                    script.load(&self.client).await?;
                }
                self.read_once(keys).await?
            }
            other => other?,
        };
        self.read_duration.record(started.elapsed().as_secs_f64());
        if values.len() != keys.len() || ttls.as_ref().is_some_and(|t| t.len() != keys.len()) {
            return Err(Error::new(ErrorKind::Protocol, "read: wrong reply length"));
        }
        let mut ttls = ttls.map(Vec::into_iter);
        let mut out = Vec::with_capacity(keys.len());
        let mut unsure = Vec::new();
        for (i, value) in values.into_iter().enumerate() {
            let ttl = match &mut ttls {
                Some(t) => t.next().and_then(|t| t.as_i64()).unwrap_or(-2),
                None => TTL_NOT_READ,
            };
            out.push(match value {
                Value::Null if ttl == -2 => Read::Gone,
                Value::Null => {
                    unsure.push(i);
                    Read::Gone
                }
                // Written between the PTTL and the MGET: its TTL is unknown here.
                Value::Bytes(b) if ttl == -2 => Read::Value(b, -1),
                Value::Bytes(b) => Read::Value(b, ttl),
                Value::String(s) if ttl == -2 => Read::Value(s.into_inner(), -1),
                Value::String(s) => Read::Value(s.into_inner(), ttl),
                other => Read::Refused(format!("unexpected reply {:?}", other.kind())),
            });
        }
        if !unsure.is_empty() {
            let pipeline = self.client.pipeline();
            for &i in &unsure {
                let () = pipeline.r#type(keys[i].clone()).await?;
            }
            let types: Vec<String> = pipeline.all().await?;
            for (&i, kind) in unsure.iter().zip(types) {
                if !matches!(kind.as_str(), "none" | "string") {
                    out[i] = Read::Refused(format!("the key holds a {kind}, not a string"));
                }
            }
        }
        Ok(out)
    }

    /// The TTL script (when TTLs are read) and the MGET in one pipeline: (TTLs, values).
    pub(super) async fn read_once(
        &self,
        keys: &[Key],
    ) -> std::result::Result<(Option<Vec<Value>>, Vec<Value>), Error> {
        let Some(script) = &self.script else {
            return match self.client.mget::<Value, _>(keys.to_vec()).await? {
                Value::Array(values) => Ok((None, values)),
                _ => Err(Error::new(
                    ErrorKind::Protocol,
                    "read: unexpected reply to MGET",
                )),
            };
        };
        let pipeline = self.client.pipeline();
        // EVALSHA sha numkeys key...: the pipeline has no LuaInterface, so as a custom command.
        let mut args = Vec::with_capacity(keys.len() + 2);
        args.push(Value::String(script.sha1().clone()));
        args.push(Value::Integer(keys.len() as i64));
        args.extend(keys.iter().map(|k| Value::Bytes(k.clone().into_bytes())));
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        let () = pipeline.custom(evalsha, args).await?;
        let () = pipeline.mget(keys.to_vec()).await?;
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        let mut array = |what: &str| match replies.next() {
            Some(Ok(Value::Array(a))) => Ok(a),
            Some(Err(e)) => Err(e),
            _ => Err(Error::new(
                ErrorKind::Protocol,
                format!("read: unexpected reply to {what}"),
            )),
        };
        let ttls = array("the TTL script")?;
        let values = array("MGET")?;
        Ok((Some(ttls), values))
    }
}
