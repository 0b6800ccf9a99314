//! The keyspace source: subscribes to the keyevent channels of a Redis instance (through its own
//! [`subscriber`](super::subscriber) connection) and reads each written value back in batches
//! (the values, and with `read_ttl` their PTTL, of up to `read_batch` keys in one round trip); the
//! [`capture`](super::capture) stage turns them into rows.
//!
//! Pub/sub cannot be paused. When the channel to ClickHouse is full, this task waits on it, the
//! notifications queue in the pipeline's queue (`keyspace.subscriber_buffer`), and once that is
//! full the newest are dropped and counted in `spillway_events_lost_total`; the values they
//! announced are recovered by the next rescan while their keys live.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scan::ScanType;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::capture::{Capturer, Job, Read};
use super::subscriber::{Notification, Subscription, Target};
use super::{notify, Endpoint, Result};
use crate::config::KeyspaceSettings;
use crate::metrics as m;
use crate::pipeline::{KeyspaceSource, LIFECYCLE};
use crate::rows::{now_ms, Record, TTL_NOT_READ};

/// Batches read but not yet turned into rows: one being captured while the next is read.
const JOB_QUEUE: usize = 2;

/// How often the source looks for lost notifications and reconnections (gaps to rescan).
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// A connected, subscribed keyspace pipeline, ready to run.
pub struct Keyspace {
    name: String,
    def: KeyspaceSource,
    endpoint: Endpoint,
    /// Command connections reading values back, each with its own read in flight: Redis
    /// answers every client in turn, a slice of each reply per event-loop round, so reads on
    /// several connections wait side by side behind the writers instead of one after another.
    readers: Vec<Reader>,
    /// Where the notifications come from, and the connection subscribed at start.
    target: Target,
    subscription: Option<Subscription>,
    buffer: usize,
    read_batch: usize,
    capturer: Arc<Capturer>,
    jobs: Option<mpsc::Sender<Job>>,
}

impl Keyspace {
    /// Connects, checks (or sets) `notify-keyspace-events`, and subscribes. Fails fast with a
    /// message that names what is wrong.
    pub async fn connect(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: mpsc::Sender<Record>,
    ) -> Result<Keyspace> {
        let reader = endpoint.client(def.db).await?;
        notify::check(&reader, &endpoint, &def, settings.configure_notifications).await?;
        let read_duration = metrics::histogram!(m::READ_DURATION, "pipeline" => name.to_string());
        let mut readers = vec![Reader::new(
            name,
            reader,
            settings.read_ttl,
            read_duration.clone(),
        )];
        for _ in 1..settings.readers.get() {
            let client = endpoint.client(def.db).await?;
            readers.push(Reader::new(
                name,
                client,
                settings.read_ttl,
                read_duration.clone(),
            ));
        }
        let events: Vec<String> = def
            .write_events
            .iter()
            .chain(&def.lifecycle_events)
            .cloned()
            .collect();
        let target =
            Target::new(&endpoint.url, def.db, &events).map_err(endpoint.err("parsing the URL"))?;
        let subscription = target
            .subscribe()
            .await
            .map_err(endpoint.err("subscribing to keyevent channels"))?;
        tracing::info!(pipeline = name, endpoint = ?endpoint, pattern = %def.pattern, "keyspace source subscribed");
        Ok(Keyspace {
            name: name.to_string(),
            capturer: Arc::new(Capturer::new(name, &endpoint.instance, def.clone(), tx)),
            jobs: None,
            def,
            endpoint,
            readers,
            target,
            subscription: Some(subscription),
            buffer: settings.subscriber_buffer.get(),
            read_batch: settings.read_batch.get(),
        })
    }

    /// A clone of the command client, for readiness checks.
    pub fn reader(&self) -> Client {
        self.readers[0].client.clone()
    }

    /// Runs until `cancel`: the start-up rescan (when configured), then the event loop. Every
    /// batch read is pushed into the channel before the task stops.
    pub async fn run(mut self, cancel: CancellationToken) {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let capture = tokio::spawn(self.capturer.clone().run(queue));
        let (forwarded, events) = mpsc::channel(self.buffer);
        // How many notifications wait (the readers hold the receiving end).
        let backlog = forwarded.clone();
        let lost = Arc::new(Lost::default());
        // The subscriber runs on a thread of its own: on the shared workers, a burst of rows to
        // decode could keep it waiting while Redis's output buffer for it grows toward the
        // pub/sub limit (at which Redis cuts the connection).
        let stop_forwarding = cancel.child_token();
        let reconnects = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let forwarder = {
            let listener = Listener {
                name: self.name.clone(),
                target: self.target.clone(),
                def: self.def.clone(),
                tx: forwarded,
                lost: lost.clone(),
                reconnects: reconnects.clone(),
                wake: wake.clone(),
            };
            let (sub, stop) = (
                self.subscription.take().expect("run once"),
                stop_forwarding.clone(),
            );
            std::thread::Builder::new()
                .name(format!("{}-notifications", self.name))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(listener.run(sub, stop)),
                        Err(e) => tracing::error!(error = %e, "notification forwarder not started"),
                    }
                })
                .expect("a thread for the notification forwarder")
        };
        // Each idle reader takes the notifications waiting (up to `read_batch`) and reads their
        // values: under load the batches grow, idle they stay small and quick.
        let events = Arc::new(tokio::sync::Mutex::new(events));
        let readers: Vec<_> = self
            .readers
            .iter()
            .map(|r| {
                let serve = r.clone().serve(
                    events.clone(),
                    self.capturer.clone(),
                    self.def.clone(),
                    self.read_batch,
                    jobs.clone(),
                    cancel.clone(),
                );
                tokio::spawn(serve)
            })
            .collect();
        self.jobs = Some(jobs);
        // A gap is a stretch of time in which notifications may have been missed: before the
        // subscription (at start), while the subscriber was disconnected (Redis restarted, or cut
        // it off at its pub/sub output-buffer limit), a buffer overrun, or simply a while
        // (`rescan_interval_secs`).
        // It is closed by a rescan as soon as the backlog of notifications is small.
        let mut gap = self.def.rescan_on_start;
        let period = Duration::from_secs(self.def.rescan_interval_secs.max(1));
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let periodic = self.def.rescan_interval_secs > 0;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match lost.queue_full.swap(0, Ordering::Relaxed) {
                0 => {}
                n => gap = self.lost(n, "buffer_overrun", gap),
            }
            if reconnects.swap(0, Ordering::Relaxed) > 0 {
                tracing::warn!(pipeline = %self.name, "subscriber reconnected: notifications of the disconnected time are lost; a rescan follows");
                metrics::counter!(m::SUBSCRIBER_RECONNECTS, "pipeline" => self.name.clone())
                    .increment(1);
                gap = true;
            }
            let waiting = backlog.max_capacity() - backlog.capacity();
            if gap && waiting < self.read_batch {
                gap = false;
                match self.rescan(&cancel).await {
                    Ok(_) if cancel.is_cancelled() || self.jobs_closed() => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(pipeline = %self.name, error = %e, "rescan failed; retrying at the next tick");
                    }
                }
            }
            if forwarder.is_finished() || readers.iter().all(|r| r.is_finished()) {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = every.tick(), if periodic => gap = true,
                _ = wake.notified() => {}
                _ = check.tick() => {}
            }
        }
        stop_forwarding.cancel();
        // The readers finish the reads they started (and, unless cancelled, the notifications
        // waiting), then the capture stage its jobs.
        drop(backlog);
        for r in readers {
            let _ = r.await;
        }
        let _ = tokio::task::spawn_blocking(move || forwarder.join()).await;
        self.jobs = None;
        let _ = capture.await;
        for r in &self.readers {
            let _ = r.client.quit().await;
        }
        tracing::info!(pipeline = %self.name, "keyspace source stopped");
    }

    fn jobs_closed(&self) -> bool {
        self.jobs.as_ref().is_none_or(|j| j.is_closed())
    }

    /// Hands a batch to the capture stage; false when it stopped (the channel closed).
    async fn submit(&self, job: Job) -> bool {
        match &self.jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        }
    }

    /// Counts lost notifications (logged once per gap); returns true, a gap to close.
    fn lost(&self, n: u64, reason: &'static str, known_gap: bool) -> bool {
        if !known_gap {
            tracing::warn!(pipeline = %self.name, lost = n, reason, "notifications lost; a rescan follows once the backlog is small");
        }
        metrics::counter!(m::EVENTS_LOST, "pipeline" => self.name.clone(), "reason" => reason)
            .increment(n);
        true
    }

    /// SCANs the pattern and captures every live key (rows only, no events): idempotent with
    /// what was already archived.
    pub async fn rescan(
        &self,
        cancel: &CancellationToken,
    ) -> std::result::Result<u64, super::SourceError> {
        let started = Instant::now();
        let mut cursor = "0".to_string();
        let mut seen = 0u64;
        loop {
            let (next, keys): (String, Vec<Key>) = self
                .reader()
                .scan_page(
                    cursor.clone(),
                    self.def.pattern.clone(),
                    Some(1000),
                    Some(ScanType::String),
                )
                .await
                .map_err(self.endpoint.err("scanning"))?;
            for chunk in keys.chunks(self.read_batch) {
                let Some(reads) = self.readers[0].read_with_retry(chunk, cancel).await else {
                    return Ok(seen);
                };
                seen += chunk.len() as u64;
                let job = Job {
                    now: now_ms(),
                    by: "scan",
                    keys: chunk.to_vec(),
                    reads,
                    written: Vec::new(),
                    records: Vec::new(),
                };
                if !self.submit(job).await {
                    return Ok(seen);
                }
            }
            if next == "0" || cancel.is_cancelled() {
                break;
            }
            cursor = next;
        }
        tracing::info!(pipeline = %self.name, keys = seen, took = ?started.elapsed(), "rescan done");
        Ok(seen)
    }
}

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
fn request(capturer: &Capturer, def: &KeyspaceSource, batch: &mut Vec<Notification>) -> Request {
    let now = now_ms();
    let mut records = Vec::new();
    let mut written: Vec<Key> = Vec::new();
    // Only the pipeline's keys are here: the forwarder filtered them.
    for ev in batch.drain(..) {
        capturer.count_event(&ev.operation);
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
struct Request {
    now: i64,
    keys: Vec<Key>,
    written: Vec<Key>,
    records: Vec<Record>,
}

/// One command connection reading values back.
#[derive(Clone)]
struct Reader {
    name: String,
    client: Client,
    /// The TTL script, when `keyspace.read_ttl`.
    script: Option<Script>,
    read_duration: metrics::Histogram,
}

impl Reader {
    fn new(
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
    /// values and hands them to the capture stage; until `cancel`, the notifications end, or
    /// the capture stage stops.
    async fn serve(
        self,
        events: Arc<tokio::sync::Mutex<mpsc::Receiver<Notification>>>,
        capturer: Arc<Capturer>,
        def: KeyspaceSource,
        read_batch: usize,
        jobs: mpsc::Sender<Job>,
        cancel: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(read_batch);
        loop {
            {
                let mut rx = events.lock().await;
                let first = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
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
            let Some(reads) = self.read_with_retry(&req.keys, &cancel).await else {
                return;
            };
            let job = Job {
                now: req.now,
                by: "event",
                keys: req.keys,
                reads,
                written: req.written,
                records: req.records,
            };
            if jobs.send(job).await.is_err() {
                return;
            }
        }
    }

    /// Reads keys until Redis answers or `cancel`; None when cancelled.
    async fn read_with_retry(&self, keys: &[Key], cancel: &CancellationToken) -> Option<Vec<Read>> {
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
    async fn read(&self, keys: &[Key]) -> std::result::Result<Vec<Read>, Error> {
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
    async fn read_once(
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

/// Notifications lost, by where.
#[derive(Default)]
struct Lost {
    /// The pipeline's queue (`keyspace.subscriber_buffer`) was full: values are read back slower
    /// than they are written.
    queue_full: AtomicU64,
}

/// How long the listener lets notifications gather between reads while they keep coming.
const FORWARD_POLL: Duration = Duration::from_millis(1);

/// The subscriber's side: reads notifications off its connection and puts those of the
/// pipeline's keys into the pipeline's queue, counting what the queue cannot hold; reconnects
/// (and resubscribes) when the connection fails, then reports it for a rescan.
struct Listener {
    name: String,
    target: Target,
    def: KeyspaceSource,
    tx: mpsc::Sender<Notification>,
    lost: Arc<Lost>,
    reconnects: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
}

impl Listener {
    /// Until `cancel` or the queue closes.
    ///
    /// After each read it waits [`FORWARD_POLL`] before the next, so that under load one read
    /// takes what a millisecond brought instead of one wake-up per notification (a wake-up
    /// costs more than a notification); idle, the read waits for the next one.
    async fn run(self, mut sub: Subscription, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let error = loop {
                let mut closed = false;
                let read = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    read = sub.next_batch(|n| {
                        if !self.def.matches(n.key.as_bytes()) {
                            return;
                        }
                        match self.tx.try_send(n) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                self.lost.queue_full.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                        }
                    }) => read,
                };
                if closed {
                    return;
                }
                if let Err(e) = read {
                    break e;
                }
                backoff = Duration::from_millis(100);
                tokio::time::sleep(FORWARD_POLL).await;
            };
            tracing::warn!(pipeline = %self.name, error = %error, "keyevent subscription lost; reconnecting");
            sub = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match self.target.subscribe().await {
                    Ok(sub) => break sub,
                    Err(e) => {
                        tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?backoff, "resubscribing failed");
                    }
                }
            };
            // Subscribed again: a rescan from now on misses nothing.
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }
}
