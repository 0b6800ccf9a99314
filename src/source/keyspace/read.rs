//! Reading values back: the keys of a batch of notifications (each once) read on one of a few
//! connections in one round trip (`MGET`, and with `read_ttl` their `PTTL` first), retried
//! while Redis is unreachable; keys found without a string value are asked their `TYPE`.
//!
//! The values are parsed as they arrive ([`values`](super::values)) and handed to the capture
//! stage in pieces of about `keyspace.read_batch_bytes`, each value cut at
//! `keyspace.max_value_bytes`: what a reader holds is bounded in bytes whatever the values'
//! sizes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::account::{Account, Outcome};
use super::capture::{Capturer, Job, Read};
use super::config::KeyspaceSource;
use super::request::Pending;
pub(super) use super::request::{request, Request, Stopped};
use super::subscriber::Notification;
use super::values::{Conn, Dial, Small, Value};
use crate::config::KeyspaceSettings;
use crate::rows::alert::CapturedBy;
use crate::rows::TTL_NOT_READ;
use crate::source::routed::{self, Routed};

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

/// The TTL script and its SHA1, for the start-up permission probe.
pub(super) fn ttl_script() -> (&'static str, String) {
    (TTL_SCRIPT, Script::from_lua(TTL_SCRIPT).sha1().to_string())
}

/// Counts `n` notifications dropped at shutdown.
pub(super) fn lost_at_shutdown(pipeline: &str, n: u64) {
    if n > 0 {
        tracing::warn!(pipeline, notifications = n, "the drain's time ran out: notifications lost; the next start's rescan archives the values still alive");
        metrics::counter!(crate::metrics::EVENTS_LOST, "pipeline" => pipeline.to_string(), "reason" => "shutdown")
            .increment(n);
    }
}

/// One connection reading values back (opened at first use, and again after an error), with
/// a command client for the rest (`TYPE`, `SCRIPT LOAD`).
pub(super) struct Reader {
    pub(super) name: String,
    pub(super) client: Client,
    /// In a Redis Cluster, a client of the whole cluster: keys another node serves now (a
    /// redirect), `TYPE`, and every read once this reader's node stopped answering go through
    /// it, to whichever node owns each key. Reads on the node are then one `GET` per key
    /// (pipelined): `MGET` refuses keys of different slots.
    pub(super) cluster: Option<Client>,
    /// The TTL script, when `keyspace.read_ttl`.
    pub(super) script: Option<Script>,
    pub(super) read_duration: metrics::Histogram,
    dial: Arc<Dial>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// In a cluster, a second connection to the node for short questions (TYPE, EXISTS),
    /// opened at first use.
    aux: tokio::sync::Mutex<Option<Conn>>,
    /// `keyspace.max_value_bytes`.
    limit: usize,
    /// `keyspace.read_batch_bytes`.
    piece_bytes: usize,
}

/// A clone reads on a connection of its own.
impl Clone for Reader {
    fn clone(&self) -> Reader {
        Reader {
            name: self.name.clone(),
            client: self.client.clone(),
            cluster: self.cluster.clone(),
            script: self.script.clone(),
            read_duration: self.read_duration.clone(),
            dial: self.dial.clone(),
            conn: tokio::sync::Mutex::new(None),
            aux: tokio::sync::Mutex::new(None),
            limit: self.limit,
            piece_bytes: self.piece_bytes,
        }
    }
}

impl Reader {
    pub(super) fn new(
        name: &str,
        client: Client,
        dial: Arc<Dial>,
        settings: &KeyspaceSettings,
        read_duration: metrics::Histogram,
    ) -> Reader {
        Reader {
            name: name.to_string(),
            client,
            cluster: None,
            script: settings.read_ttl.then(|| Script::from_lua(TTL_SCRIPT)),
            read_duration,
            dial,
            conn: tokio::sync::Mutex::new(None),
            aux: tokio::sync::Mutex::new(None),
            limit: settings.max_value_bytes.get(),
            piece_bytes: settings.read_batch_bytes.get(),
        }
    }

    /// Opens the reading connection now (at start, to fail fast).
    pub(super) async fn connect(&self) -> std::result::Result<(), Error> {
        *self.conn.lock().await = Some(self.dial.open().await?);
        Ok(())
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
            let mut req = request(&capturer, &def, &mut batch, self.cluster.is_some());
            if !req.deleted.is_empty() {
                self.deletions(&capturer, &mut req, &abandon).await;
            }
            if let Err(stopped) = self
                .read_with_retry(req, CapturedBy::Event, &jobs, &abandon)
                .await
            {
                account.resolve(Outcome::LostShutdown, stopped.written);
                lost_at_shutdown(&self.name, stopped.written);
                // The lifecycle rows need no read: they still go.
                if !stopped.records.is_empty() {
                    let job = Job {
                        now: stopped.now,
                        by: CapturedBy::Event,
                        keys: Vec::new(),
                        reads: Vec::new(),
                        written: Vec::new(),
                        records: stopped.records,
                    };
                    let _ = jobs.send(job).await;
                }
                return;
            }
        }
    }

    /// Reads the values of `req` and hands them to the capture stage, until Redis answers or
    /// `cancel`; false when stopping (cancelled, or the capture stage gone).
    pub(super) async fn read_with_retry(
        &self,
        req: Request,
        by: CapturedBy,
        jobs: &mpsc::Sender<Job>,
        abandon: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut p = Pending {
            req,
            by,
            done: 0,
            lost: 0,
        };
        let mut backoff = Duration::from_millis(50);
        // In a cluster, once the node failed a read, the rest goes through the cluster client.
        let mut failed = false;
        loop {
            let read = match (p.req.keys.is_empty(), &self.cluster) {
                (true, _) => Ok(p.hand_over(0, Vec::new(), jobs, abandon).await),
                (false, Some(cluster)) if failed => {
                    self.read_cluster(cluster, &mut p, jobs, abandon).await
                }
                (false, _) => self.read(&mut p, jobs, abandon).await,
            };
            failed |= read.is_err();
            match read {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(p.stopped()),
                Err(e) => {
                    let keys = p.req.keys.len() - p.done;
                    tracing::warn!(pipeline = %self.name, error = %e, keys, "reading values failed; retrying");
                    tokio::select! {
                        _ = abandon.cancelled() => return Err(p.stopped()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One round trip for the keys not yet handed over; on error the connection is closed (the
    /// rest of its reply is of no use).
    async fn read(
        &self,
        p: &mut Pending,
        jobs: &mpsc::Sender<Job>,
        abandon: &CancellationToken,
    ) -> Result<bool, Error> {
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(self.dial.open().await?),
        };
        let read = self.read_on(conn, p, jobs, abandon).await;
        if read.is_err() {
            *guard = None;
        }
        read
    }

    /// With `keyspace.read_ttl`, the PTTL of every key (a script), then their values (MGET),
    /// pipelined; without, the MGET alone. Another client may write between the two: a key
    /// written anew then reads as its new value with the old TTL (its own notification reads it
    /// again, with its TTL), and a key removed reads as gone. Keys that MGET found no string
    /// for, unless the script saw them gone, are asked their TYPE in one more round trip (rare:
    /// a key of another type, or one removed before its read): only a key that still holds
    /// another type is refused. The values are handed over in pieces as they arrive.
    async fn read_on(
        &self,
        conn: &mut Conn,
        p: &mut Pending,
        jobs: &mpsc::Sender<Job>,
        abandon: &CancellationToken,
    ) -> Result<bool, Error> {
        let started = Instant::now();
        let ttls = self.send(conn, &p.req.keys[p.done..]).await?;
        let total = p.req.keys.len();
        if self.cluster.is_none() && conn.array_len().await? != total - p.done {
            return Err(Error::new(ErrorKind::Protocol, "read: wrong reply length"));
        }
        let (first, mut busy) = (p.done, started.elapsed());
        while p.done < total {
            let piece = Instant::now();
            let (mut reads, mut unsure, mut held) = (Vec::new(), Vec::new(), 0);
            let mut redirected = Vec::new();
            let mut end = p.done;
            while end < total && (held < self.piece_bytes || reads.is_empty()) {
                let ttl = ttls.as_ref().map_or(TTL_NOT_READ, |t| t[end - first]);
                // Written between the PTTL and the MGET: its TTL is unknown here.
                let ttl_if_there = if ttl == -2 { -1 } else { ttl };
                reads.push(match conn.value(self.limit).await? {
                    Value::Redirect { ask, addr } => {
                        redirected.push((end, ask, addr));
                        Read::Gone
                    }
                    Value::Nil if ttl == -2 => Read::Gone,
                    Value::Nil => {
                        unsure.push(reads.len());
                        Read::Gone
                    }
                    Value::Bytes(b) => {
                        held += b.len();
                        Read::Value(b, ttl_if_there)
                    }
                    Value::TooLarge { head, size } => {
                        held += head.len();
                        Read::TooLarge(head, size, ttl_if_there)
                    }
                });
                end += 1;
            }
            self.check_types(&p.req.keys[p.done..end], &unsure, &mut reads)
                .await?;
            for (i, ask, addr) in redirected {
                reads[i - p.done] = self.redirected(&p.req.keys[i], ask, &addr).await?;
            }
            busy += piece.elapsed();
            if !p.hand_over(end, reads, jobs, abandon).await {
                return Ok(false);
            }
        }
        self.read_duration.record(busy.as_secs_f64());
        Ok(true)
    }

    /// Sends the read of `keys` and reads the TTLs (when asked); the MGET's reply is next.
    async fn send(&self, conn: &mut Conn, keys: &[Key]) -> Result<Option<Vec<i64>>, Error> {
        if self.cluster.is_some() {
            return self.send_each(conn, keys).await;
        }
        let mut mget: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        mget.push(b"MGET");
        mget.extend(keys.iter().map(|k| k.as_bytes()));
        let Some(script) = &self.script else {
            conn.send(&[mget]).await?;
            return Ok(None);
        };
        let count = keys.len().to_string();
        let mut eval: Vec<&[u8]> = Vec::with_capacity(keys.len() + 3);
        eval.extend([&b"EVALSHA"[..], script.sha1().as_bytes(), count.as_bytes()]);
        eval.extend(keys.iter().map(|k| k.as_bytes()));
        let commands = [eval, mget];
        conn.send(&commands).await?;
        let ttls = match ttls(conn, keys.len()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                // The MGET's reply follows: read it off, keeping nothing; then again.
                for _ in 0..conn.array_len().await? {
                    conn.value(0).await?;
                }
                script.load(&self.client).await?;
                conn.send(&commands).await?;
                ttls(conn, keys.len()).await?
            }
            other => other?,
        };
        Ok(Some(ttls))
    }

    /// Records the `del` notifications of `req` whose keys are gone from the cluster; the
    /// others were keys a slot migration moved to another node (counted, not recorded). Asked
    /// until the cluster answers, or `abandon` (then recorded as deletions).
    async fn deletions(&self, capturer: &Capturer, req: &mut Request, abandon: &CancellationToken) {
        let Some(cluster) = &self.cluster else { return };
        let deleted = std::mem::take(&mut req.deleted);
        let mut backoff = Duration::from_millis(50);
        let exists = loop {
            match self.ask_node(b"EXISTS", &deleted).await {
                Ok(found) if found.iter().all(|f| matches!(f, Small::Int(_))) => {
                    let n = |f: &Small| if let Small::Int(n) = f { *n } else { 0 };
                    break found.iter().map(n).collect();
                }
                Ok(found) => {
                    tracing::warn!(pipeline = %self.name, reply = ?found.iter().find(|f| !matches!(f, Small::Int(_))), "EXISTS answered something else; retrying");
                }
                // The node does not answer (failed, cut off): ask the cluster client.
                Err(_) => {}
            }
            let asks = deleted
                .iter()
                .map(|k| Routed::on("EXISTS", k, &[]))
                .collect();
            let found: Result<Vec<i64>, Error> = routed::pipelined(cluster, asks)
                .await
                .into_iter()
                .map(|r| match r? {
                    // Anything but an integer is a reply out of step: ask again.
                    fred::types::Value::Integer(n) => Ok(n),
                    other => Err(Error::new(
                        ErrorKind::Protocol,
                        format!("EXISTS answered {:?}", other.kind()),
                    )),
                })
                .collect();
            match found {
                Ok(found) => break found,
                Err(e) => {
                    tracing::warn!(pipeline = %self.name, error = %e, "asking whether deleted keys moved failed; retrying");
                }
            }
            tokio::select! {
                _ = abandon.cancelled() => break vec![0; deleted.len()],
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        let mut moved = 0u64;
        for (key, found) in deleted.iter().zip(exists) {
            if found > 0 {
                moved += 1;
            } else {
                let row = capturer.event_row(key, "deleted", req.now, 0, -2);
                req.records.push(crate::rows::Record::alert_event(row));
            }
        }
        if moved > 0 {
            metrics::counter!(crate::metrics::KEYS_MIGRATED, "pipeline" => self.name.clone())
                .increment(moved);
        }
    }

    /// [`Reader::send`] on a cluster node: a `PTTL` per key (when asked), then a `GET` per key,
    /// pipelined; a redirected `PTTL` reads as not read (its `GET` is redirected too, and read
    /// through the cluster).
    async fn send_each(&self, conn: &mut Conn, keys: &[Key]) -> Result<Option<Vec<i64>>, Error> {
        let ttl = self.script.is_some();
        let mut commands: Vec<Vec<&[u8]>> = Vec::with_capacity(keys.len() * (1 + ttl as usize));
        if ttl {
            commands.extend(keys.iter().map(|k| vec![&b"PTTL"[..], k.as_bytes()]));
        }
        commands.extend(keys.iter().map(|k| vec![&b"GET"[..], k.as_bytes()]));
        conn.send(&commands).await?;
        if !ttl {
            return Ok(None);
        }
        let mut ttls = Vec::with_capacity(keys.len());
        for _ in keys {
            ttls.push(conn.integer_or_redirect().await?.unwrap_or(TTL_NOT_READ));
        }
        Ok(Some(ttls))
    }

    /// The read of `key` at the node a redirect named (after `ASKING` for `ask`), on a
    /// connection of its own: fred's cluster client, following an `ASK` inside a pipeline, was
    /// seen to hand the `ASKING` reply (`OK`) to the command behind it (a TYPE read `OK`, an
    /// EXISTS 0). Rare (a slot migration, a failover), so one short-lived connection per key;
    /// anything but a value or nil (another redirect) goes through the cluster client.
    async fn redirected(&self, key: &Key, ask: bool, addr: &str) -> Result<Read, Error> {
        let cluster = self.cluster.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                "a redirect from a server not in a cluster",
            )
        })?;
        let Some(dial) = self.dial.at(addr) else {
            return Ok(self
                .via_cluster(cluster, std::slice::from_ref(key))
                .await?
                .remove(0));
        };
        let mut conn = dial.open().await?;
        let ttl = self.script.is_some();
        let mut commands: Vec<Vec<&[u8]>> = Vec::new();
        if ask {
            commands.push(vec![b"ASKING"]);
        }
        if ttl {
            commands.push(vec![b"PTTL", key.as_bytes()]);
            if ask {
                commands.push(vec![b"ASKING"]);
            }
        }
        commands.push(vec![b"GET", key.as_bytes()]);
        conn.send(&commands).await?;
        if ask {
            conn.ok().await?;
        }
        let left = match ttl {
            true => conn.integer_or_redirect().await?.unwrap_or(TTL_NOT_READ),
            false => TTL_NOT_READ,
        };
        if ask && ttl {
            conn.ok().await?;
        }
        let left = if left == -2 { -1 } else { left };
        match conn.value(self.limit).await? {
            Value::Bytes(b) => Ok(Read::Value(b, left)),
            Value::TooLarge { head, size } => Ok(Read::TooLarge(head, size, left)),
            Value::Nil => {
                let mut reads = vec![Read::Gone];
                self.check_types(std::slice::from_ref(key), &[0], &mut reads)
                    .await?;
                Ok(reads.remove(0))
            }
            Value::Redirect { .. } => Ok(self
                .via_cluster(cluster, std::slice::from_ref(key))
                .await?
                .remove(0)),
        }
    }

    /// Reads the keys not yet handed over through the cluster client (their node failed a
    /// read) and hands them over, a piece of up to 256 keys at a time.
    async fn read_cluster(
        &self,
        cluster: &Client,
        p: &mut Pending,
        jobs: &mpsc::Sender<Job>,
        abandon: &CancellationToken,
    ) -> Result<bool, Error> {
        while p.done < p.req.keys.len() {
            let end = (p.done + 256).min(p.req.keys.len());
            let reads = self.via_cluster(cluster, &p.req.keys[p.done..end]).await?;
            if !p.hand_over(end, reads, jobs, abandon).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The reads of `keys` through the cluster client (each to the node that serves it now):
    /// `PTTL` (when asked) and `GET` per key, pipelined; a value over the limit keeps its head.
    async fn via_cluster(&self, cluster: &Client, keys: &[Key]) -> Result<Vec<Read>, Error> {
        use fred::types::Value as V;
        let ttl = self.script.is_some();
        let mut cmds = Vec::with_capacity(keys.len() * 2);
        for k in keys {
            if ttl {
                cmds.push(Routed::on("PTTL", k, &[]));
            }
            cmds.push(Routed::on("GET", k, &[]));
        }
        let replies = routed::pipelined(cluster, cmds).await;
        let step = 1 + ttl as usize;
        let mut reads = Vec::with_capacity(keys.len());
        let mut unsure = Vec::new();
        for (i, reply) in replies.chunks(step).enumerate() {
            let left = match &reply[0] {
                Ok(V::Integer(t)) if ttl => *t,
                _ => TTL_NOT_READ,
            };
            let left = if left == -2 { -1 } else { left };
            reads.push(match &reply[step - 1] {
                Ok(V::Null) => {
                    unsure.push(i);
                    Read::Gone
                }
                Ok(V::Bytes(b)) => self.capped(b.clone(), left),
                Ok(V::String(s)) => self.capped(s.inner().clone(), left),
                Ok(other) => Read::Refused(format!("unexpected reply {:?}", other.kind())),
                Err(e) if e.details().starts_with("WRONGTYPE") => {
                    Read::Refused("the key holds another type, not a string".into())
                }
                Err(e) => return Err(e.clone()),
            });
        }
        self.check_types(keys, &unsure, &mut reads).await?;
        Ok(reads)
    }

    /// A value read whole, its head only when over `keyspace.max_value_bytes`.
    fn capped(&self, b: bytes::Bytes, ttl: i64) -> Read {
        if b.len() <= self.limit {
            return Read::Value(b, ttl);
        }
        Read::TooLarge(b.slice(..self.limit), b.len() as u64, ttl)
    }

    /// `cmd key` for each of `keys` on this reader's cluster node, pipelined on a connection
    /// of its own; a key the node redirects is asked where the redirect says (after `ASKING`
    /// for an `ASK`), on a connection of its own. Never through fred's cluster client, which
    /// mixes up replies when it follows an `ASK` with commands in flight (see `redirected`).
    async fn ask_node(&self, cmd: &'static [u8], keys: &[Key]) -> Result<Vec<Small>, Error> {
        let mut out = {
            let mut guard = self.aux.lock().await;
            let conn = match guard.as_mut() {
                Some(c) => c,
                None => guard.insert(self.dial.open().await?),
            };
            let asked = async {
                let commands: Vec<Vec<&[u8]>> =
                    keys.iter().map(|k| vec![cmd, k.as_bytes()]).collect();
                conn.send(&commands).await?;
                let mut out = Vec::with_capacity(keys.len());
                for _ in keys {
                    out.push(conn.small().await?);
                }
                Ok::<_, Error>(out)
            };
            match asked.await {
                Ok(out) => out,
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        };
        for (i, reply) in out.iter_mut().enumerate() {
            let Small::Redirect { ask, addr } = reply else {
                continue;
            };
            let dial = self.dial.at(addr).ok_or_else(|| {
                Error::new(ErrorKind::Protocol, format!("a redirect to {addr:?}"))
            })?;
            let mut conn = dial.open().await?;
            let mut commands: Vec<Vec<&[u8]>> = Vec::new();
            if *ask {
                commands.push(vec![b"ASKING"]);
            }
            commands.push(vec![cmd, keys[i].as_bytes()]);
            conn.send(&commands).await?;
            if *ask {
                conn.ok().await?;
            }
            *reply = match conn.small().await? {
                Small::Redirect { .. } => {
                    return Err(Error::new(ErrorKind::Protocol, "redirected twice"))
                }
                other => other,
            };
        }
        Ok(out)
    }

    /// Asks the TYPE of the keys at `unsure` (found with no string): those holding another
    /// type are refused.
    async fn check_types(
        &self,
        keys: &[Key],
        unsure: &[usize],
        reads: &mut [Read],
    ) -> Result<(), Error> {
        if unsure.is_empty() {
            return Ok(());
        }
        if self.cluster.is_some() {
            let asked: Vec<Key> = unsure.iter().map(|&i| keys[i].clone()).collect();
            if let Ok(types) = self.ask_node(b"TYPE", &asked).await {
                for (&i, kind) in unsure.iter().zip(types) {
                    match kind {
                        Small::Status(k) if matches!(k.as_str(), "none" | "string") => {}
                        Small::Status(k) => {
                            reads[i] = Read::Refused(format!("the key holds a {k}, not a string"))
                        }
                        other => {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!("TYPE answered {other:?}"),
                            ))
                        }
                    }
                }
                return Ok(());
            }
            // The node does not answer: the cluster client below.
        }
        let asks = unsure
            .iter()
            .map(|&i| Routed::on("TYPE", &keys[i], &[]))
            .collect();
        let client = self.cluster.as_ref().unwrap_or(&self.client);
        let types: Vec<String> = routed::pipelined(client, asks)
            .await
            .into_iter()
            .map(|r| r.map(|v| v.as_string().unwrap_or_default()))
            .collect::<Result<_, Error>>()?;
        // Anything but a type name is a reply out of step (see `redirected`): read again.
        let known = ["none", "string", "list", "set", "zset", "hash", "stream"];
        if let Some(odd) = types.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("TYPE answered {odd:?}"),
            ));
        }
        for (&i, kind) in unsure.iter().zip(types) {
            if !matches!(kind.as_str(), "none" | "string") {
                reads[i] = Read::Refused(format!("the key holds a {kind}, not a string"));
            }
        }
        Ok(())
    }
}

/// The TTL script's reply: one integer per key.
async fn ttls(conn: &mut Conn, n: usize) -> Result<Vec<i64>, Error> {
    let len = conn.array_len().await?;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        out.push(conn.integer().await?);
    }
    if len != n {
        return Err(Error::new(
            ErrorKind::Protocol,
            "read: wrong TTL reply length",
        ));
    }
    Ok(out)
}
