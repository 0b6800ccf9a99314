//! The keyspace source: subscribes to the keyevent channels of a Redis instance (through its own
//! [`subscriber`](subscriber) connection) and reads each written value back in batches
//! (the values, and with `read_ttl` their PTTL, of up to `read_batch` keys in one round trip); the
//! [`capture`](capture) stage turns them into rows.
//!
//! Pub/sub cannot be paused. When the channel to ClickHouse is full, this task waits on it, the
//! notifications queue in the pipeline's queue (`keyspace.subscriber_buffer`), and once that is
//! full the newest are dropped and counted in `spillway_events_lost_total`; the values they
//! announced are recovered by the next rescan while their keys live.

pub(crate) mod account;
pub(crate) mod capture;
pub(crate) mod cluster;
pub(crate) mod config;
mod listener;
pub(crate) mod liveness;
pub(crate) mod notify;
mod read;
mod request;
pub(crate) mod resp;
mod seen;
pub(crate) mod subscriber;
pub(crate) mod values;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scan::ScanType;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::KeyspaceSettings;
use crate::metrics as m;
use crate::rows::alert::CapturedBy;
use crate::source::{acl, Endpoint, Result, READ_TIMEOUT};
use account::{Account, Outcome};
use capture::{Capturer, Job};
use config::KeyspaceSource;
use listener::{Listener, Lost};
use liveness::Liveness;
use read::Reader;
use subscriber::{Notification, Subscription, Target};

/// Batches read but not yet turned into rows: one being captured while the next is read.
const JOB_QUEUE: usize = 2;

/// How often the source looks for lost notifications and reconnections (gaps to rescan).
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// First pause before a failed rescan is tried again; it doubles up to [`RESCAN_RETRY_MAX`].
const RESCAN_RETRY: Duration = Duration::from_secs(1);

/// Longest pause between two tries of a failing rescan.
const RESCAN_RETRY_MAX: Duration = Duration::from_secs(30);

/// A connected, subscribed keyspace pipeline, ready to run.
pub(crate) struct Keyspace {
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
    account: Account,
    jobs: Option<mpsc::Sender<Job>>,
    /// Changes when ClickHouse tables were created again: forget what was archived, rescan.
    recreated: Option<watch::Receiver<u64>>,
    /// Rescan when notified (a cluster node whose slots changed).
    rescan_now: Option<Arc<tokio::sync::Notify>>,
    /// Ends every read on the server's connections (a cluster node taken for failed).
    gone: CancellationToken,
}

impl Keyspace {
    /// Connects, checks (or sets) `notify-keyspace-events`, and subscribes. Fails fast with a
    /// message that names what is wrong.
    pub(crate) async fn connect(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: crate::channel::RecordTx,
    ) -> Result<Keyspace> {
        let (capturer, account) = capture_stage(name, &endpoint, &def, settings, tx);
        Self::connect_node(name, def, endpoint, settings, capturer, account).await
    }

    /// [`Keyspace::connect`] to one server, with the capture stage and account given (shared by
    /// the nodes of a cluster).
    async fn connect_node(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        capturer: Arc<Capturer>,
        account: Account,
    ) -> Result<Keyspace> {
        let reader = endpoint.client_with_timeout(def.db, READ_TIMEOUT).await?;
        notify::check(&reader, &endpoint, &def, settings.configure_notifications).await?;
        // Every permission is tried before failing, so one start lists them all.
        let ttl = settings.read_ttl.then(read::ttl_script);
        let ttl_probe = ttl.as_ref().map(|(lua, sha)| (*lua, sha.as_str()));
        let mut refused = acl::run(&reader, &acl::roles::alerts(&def, ttl_probe)).await;
        let read_duration = metrics::histogram!(m::READ_DURATION, "pipeline" => name.to_string());
        // Values are read on connections of their own (`values`); the command client, shared,
        // asks the rest.
        let dial =
            values::Dial::new(&endpoint.url, def.db).map_err(endpoint.err("parsing the URL"))?;
        let first = Reader::new(
            name,
            reader,
            Arc::new(dial.clone()),
            settings,
            read_duration,
        );
        // Each reader's clone (one per reading task, see `run`) opens its connection at its
        // first read; this one, the rescans', now: a URL that cannot be read fails at start.
        if let Err(e) = first.connect().await {
            if !acl::note(&mut refused, &e, "SELECT", "+select", "") {
                return Err(endpoint.err("connecting a reader")(e));
            }
        }
        let mut readers = vec![first];
        for _ in 1..settings.readers.get() {
            readers.push(readers[0].clone());
        }
        let events: Vec<String> = def
            .write_events
            .iter()
            .chain(&def.lifecycle_events)
            .cloned()
            .collect();
        let liveness = Liveness {
            ping_after: settings.subscriber_ping,
            timeout: settings.subscriber_timeout,
        };
        // The subscriber connects as the readers do (the URL parsed once).
        let gone = dial.gone();
        let target = Target::new(dial, &events, liveness);
        let channels = acl::roles::keyevent_channels(&def);
        let subscription = match target.subscribe().await {
            Ok(s) if refused.is_empty() => s,
            Ok(_) => return Err(endpoint.acl(refused)),
            Err(e) => {
                if acl::note(&mut refused, &e, "SUBSCRIBE", "+subscribe", &channels) {
                    return Err(endpoint.acl(refused));
                }
                return Err(endpoint.err("subscribing to keyevent channels")(e));
            }
        };
        tracing::info!(pipeline = name, endpoint = ?endpoint, pattern = %def.pattern, "keyspace source subscribed");
        Ok(Keyspace {
            name: name.to_string(),
            capturer,
            account,
            jobs: None,
            recreated: None,
            rescan_now: None,
            gone,
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
    pub(crate) fn reader(&self) -> Client {
        self.readers[0].client.clone()
    }

    /// Reads what its node no longer serves (and everything once the node stopped answering)
    /// through `cluster`, a client of the whole Redis Cluster; see [`read::Reader::cluster`].
    fn through_cluster(&mut self, cluster: Client) {
        for r in &mut self.readers {
            r.cluster = Some(cluster.clone());
        }
    }

    /// The token that, cancelled, fails every read on this server's connections at once: its
    /// reads then go through the cluster (see [`Keyspace::through_cluster`]).
    fn gone(&self) -> CancellationToken {
        self.gone.clone()
    }

    /// Rescans whenever `now` is notified.
    fn rescan_when(&mut self, now: Arc<tokio::sync::Notify>) {
        self.rescan_now = Some(now);
    }

    /// Rescans, having forgotten what it archived, whenever `recreated` changes (the sink created
    /// a dropped table again: the rows archived before went with it).
    pub(crate) fn rescan_on(&mut self, recreated: watch::Receiver<u64>) {
        self.recreated = Some(recreated);
    }

    /// Runs until `cancel`: the start-up rescan (when configured), then the event loop. On
    /// `cancel` it drains: the subscriber stops, the notifications queued are read back and
    /// their rows pushed into the channel; what is still queued `drain_for` later is counted
    /// lost (reason `shutdown`).
    pub(crate) async fn run(mut self, cancel: CancellationToken, drain_for: Duration) {
        // Once cancelled, the readers have `drain_for` to read back what is queued.
        let abandon = CancellationToken::new();
        let deadline = {
            let (cancel, abandon) = (cancel.clone(), abandon.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                tokio::time::sleep(drain_for).await;
                abandon.cancel();
            })
        };
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        let capture = tokio::spawn(self.capturer.clone().run(queue, abandon.clone()));
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
            let listener = Listener::new(
                &self.name,
                self.target.clone(),
                self.def.clone(),
                forwarded,
                lost.clone(),
                reconnects.clone(),
                wake.clone(),
                self.account.clone(),
            );
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
                    abandon.clone(),
                    self.account.clone(),
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
        let mut recreated = self.recreated.take();
        let rescan_now = self.rescan_now.take();
        let (mut retry_at, mut retry_after) = (tokio::time::Instant::now(), RESCAN_RETRY);
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.account.publish();
            match lost.queue_full.swap(0, Ordering::Relaxed) {
                0 => {}
                n => gap = self.lost(n, "buffer_overrun", gap),
            }
            if reconnects.swap(0, Ordering::Relaxed) > 0 {
                tracing::warn!(pipeline = %self.name, "subscriber reconnected: notifications of the disconnected time are lost; a rescan follows");
                gap = true;
            }
            let waiting = backlog.max_capacity() - backlog.capacity();
            if gap && waiting < self.read_batch && tokio::time::Instant::now() >= retry_at {
                gap = false;
                match self.rescan(&cancel, &backlog).await {
                    Ok(_) if cancel.is_cancelled() || self.jobs_closed() => break,
                    Ok(_) => retry_after = RESCAN_RETRY,
                    Err(e) => {
                        // The gap is still open: the rescan is tried again, after a pause
                        // that doubles while it keeps failing.
                        tracing::warn!(pipeline = %self.name, error = %e, retry_in = ?retry_after, "rescan failed; retrying");
                        gap = true;
                        retry_at = tokio::time::Instant::now() + retry_after;
                        retry_after = (retry_after * 2).min(RESCAN_RETRY_MAX);
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
                _ = notified(&rescan_now) => gap = true,
                _ = check.tick() => {}
                _ = changed(&mut recreated) => {
                    tracing::warn!(pipeline = %self.name, "ClickHouse tables created again: what was archived before may be gone; rescanning the live keys");
                    self.capturer.forget();
                    gap = true;
                }
            }
        }
        stop_forwarding.cancel();
        // The subscriber stops (closing its end of the queue); the readers read back what is
        // queued, until the queue is empty or the drain's time is up; the capture stage then
        // finishes its jobs.
        drop(backlog);
        let _ = tokio::task::spawn_blocking(move || forwarder.join()).await;
        let queued = events.lock().await.len();
        if cancel.is_cancelled() && queued > 0 {
            tracing::info!(pipeline = %self.name, queued, "draining the notifications queued");
        }
        for r in readers {
            let _ = r.await;
        }
        self.abandon_queued(&events).await;
        self.jobs = None;
        let _ = capture.await;
        deadline.abort();
        self.account.publish();
        // A cluster node's pipeline shares the account: the cluster source logs it once.
        if self.readers[0].cluster.is_none() {
            self.account.log(&self.name);
        }
        // One command client, shared by the readers (its server may be gone: no waiting).
        let quit = self.readers[0].client.quit();
        let _ = tokio::time::timeout(Duration::from_secs(1), quit).await;
        tracing::info!(pipeline = %self.name, "keyspace source stopped");
    }

    /// Counts what is still queued once the readers stopped (the drain's time ran out, or the
    /// capture stage stopped): lost, reason `shutdown`.
    async fn abandon_queued(&self, events: &tokio::sync::Mutex<mpsc::Receiver<Notification>>) {
        let mut rx = events.lock().await;
        let (mut writes, mut all) = (0u64, 0u64);
        while let Ok(n) = rx.try_recv() {
            all += 1;
            if self.def.write_events.iter().any(|e| **e == *n.operation) {
                writes += 1;
            }
        }
        self.account.resolve(Outcome::LostShutdown, writes);
        read::lost_at_shutdown(&self.name, all);
    }

    fn jobs_closed(&self) -> bool {
        self.jobs.as_ref().is_none_or(|j| j.is_closed())
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

    /// SCANs the pattern and captures every live key whose value this process has not
    /// archived yet (rows only, no events): idempotent with what was already archived. Paced at
    /// `rescan_keys_per_sec`, and it waits while notifications are queued: the notification
    /// path goes first.
    pub(crate) async fn rescan(
        &self,
        cancel: &CancellationToken,
        backlog: &mpsc::Sender<Notification>,
    ) -> std::result::Result<u64, crate::source::SourceError> {
        let started = Instant::now();
        let mut cursor = "0".to_string();
        let mut seen = 0u64;
        let pace = self.def.rescan_keys_per_sec;
        let scanned = metrics::counter!(m::RESCAN_KEYS, "pipeline" => self.name.clone());
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
                // Notifications first: wait while more than a read's worth is queued.
                while backlog.max_capacity() - backlog.capacity() > self.read_batch {
                    if cancel.is_cancelled() {
                        return Ok(seen);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if pace > 0 {
                    let due = started + Duration::from_secs_f64(seen as f64 / pace as f64);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(seen),
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                }
                let Some(jobs) = &self.jobs else {
                    return Ok(seen);
                };
                let req = read::Request::scan(chunk.to_vec());
                let read = self.readers[0].read_with_retry(req, CapturedBy::Scan, jobs, cancel);
                if read.await.is_err() {
                    return Ok(seen);
                }
                seen += chunk.len() as u64;
                scanned.increment(chunk.len() as u64);
            }
            if next == "0" || cancel.is_cancelled() {
                break;
            }
            cursor = next;
        }
        tracing::info!(pipeline = %self.name, keys = seen, took = ?started.elapsed(), remembered = self.capturer.remembered(), "rescan done");
        Ok(seen)
    }
}

/// The capture stage of pipeline `name` and its write account (one per pipeline, shared by
/// the nodes of a cluster).
pub(crate) fn capture_stage(
    name: &str,
    endpoint: &Endpoint,
    def: &KeyspaceSource,
    settings: &KeyspaceSettings,
    tx: crate::channel::RecordTx,
) -> (Arc<Capturer>, Account) {
    let account = Account::new(name);
    let capturer = Capturer::new(
        name,
        &endpoint.instance,
        def.clone(),
        tx,
        account.clone(),
        settings.remember_values,
    );
    (Arc::new(capturer), account)
}

/// A keyspace pipeline on one server, or over the primaries of a Redis Cluster.
pub(crate) enum AnyKeyspace {
    /// One server.
    One(Box<Keyspace>),
    /// A Redis Cluster (`redis-cluster://`).
    Cluster(cluster::ClusterKeyspace),
}

impl AnyKeyspace {
    /// Connects as the endpoint's URL says: one server, or a cluster.
    pub(crate) async fn connect(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: crate::channel::RecordTx,
    ) -> Result<AnyKeyspace> {
        Ok(if endpoint.cluster() {
            AnyKeyspace::Cluster(
                cluster::ClusterKeyspace::connect(name, def, endpoint, settings, tx).await?,
            )
        } else {
            AnyKeyspace::One(Box::new(
                Keyspace::connect(name, def, endpoint, settings, tx).await?,
            ))
        })
    }

    /// A command client, for readiness checks.
    pub(crate) fn reader(&self) -> Client {
        match self {
            AnyKeyspace::One(k) => k.reader(),
            AnyKeyspace::Cluster(c) => c.reader(),
        }
    }

    /// See [`Keyspace::rescan_on`].
    pub(crate) fn rescan_on(&mut self, recreated: watch::Receiver<u64>) {
        match self {
            AnyKeyspace::One(k) => k.rescan_on(recreated),
            AnyKeyspace::Cluster(c) => c.rescan_on(recreated),
        }
    }

    /// See [`Keyspace::run`].
    pub(crate) async fn run(self, cancel: CancellationToken, drain_for: Duration) {
        match self {
            AnyKeyspace::One(k) => k.run(cancel, drain_for).await,
            AnyKeyspace::Cluster(c) => c.run(cancel, drain_for).await,
        }
    }
}

/// Resolves when `now` is notified; never without one.
async fn notified(now: &Option<Arc<tokio::sync::Notify>>) {
    match now {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `rx` changes; never without one (or once its sender is gone).
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    let gone = match rx {
        Some(r) => r.changed().await.is_err(),
        None => true,
    };
    if gone {
        std::future::pending::<()>().await;
    }
}
