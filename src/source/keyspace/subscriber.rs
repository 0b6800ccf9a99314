//! The keyevent subscriber: one connection of its own that SUBSCRIBEs to the pipeline's keyevent
//! channels and parses the `message` pushes itself (RESP2: an array of three bulk strings).
//!
//! A general client turns every push into a frame, a message, a keyspace event and a broadcast
//! slot (fred's path cost about a fifth of Spillway's CPU per alert); here a notification is a
//! few comparisons and one copy of its key. The connection, AUTH and TLS come from fred's URL
//! parsing, so `redis://` and `rediss://` URLs mean what they mean for the command clients.
//!
//! The connection proves it is alive: TCP keepalive on the socket, and a PING after
//! `keyspace.subscriber_ping_secs` of silence that must be answered (by anything at all) within
//! `keyspace.subscriber_timeout_secs` ([`liveness`](super::liveness)); a half-open connection
//! then ends with an error like a closed one, and the listener reconnects. The PING is written
//! between two reads by the same task, bounded by the same deadline, so it never holds up the
//! reading, and it works alike on plain TCP and TLS streams.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fred::error::{Error, ErrorKind};
use fred::types::Key;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::liveness::{Due, Liveness, Watch};
use super::resp::{parse, protocol, Frame};
use super::values::{Dial, Stream};

/// How long connecting, authenticating and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One keyevent notification: the operation (`set`, `expired`, ...) and the key.
#[derive(Debug, Clone)]
pub(crate) struct Notification {
    /// The event, the channel's suffix.
    pub operation: Arc<str>,
    /// The key.
    pub key: Key,
}

/// A subscribed connection.
pub(crate) struct Subscription {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    /// The subscribed channels and their operation names (the target's).
    channels: Channels,
    /// When it was last heard from, and pinged.
    watch: Watch,
}

/// Why a subscription ended, as `spillway_subscriber_reconnects_total` labels it:
/// `ping_timeout` when nothing answered a PING in time, `connection_lost` for any other error
/// (end of stream, reset, bytes that are not Redis talking).
pub(crate) fn reason(error: &Error) -> &'static str {
    if *error.kind() == ErrorKind::Timeout {
        "ping_timeout"
    } else {
        "connection_lost"
    }
}

/// Each keyevent channel (`__keyevent@{db}__:{event}`) and its event.
type Channels = Arc<[(String, Arc<str>)]>;

/// Where and how to subscribe: the connection's, and the channels.
#[derive(Clone)]
pub(crate) struct Target {
    dial: Dial,
    channels: Channels,
    liveness: Liveness,
}

impl Target {
    /// The keyevent channels of `events` on the database of `dial`; its subscriptions are
    /// watched by `liveness`.
    pub(crate) fn new(dial: Dial, events: &[String], liveness: Liveness) -> Target {
        let db = dial.db();
        Target {
            dial,
            channels: events
                .iter()
                .map(|e| (format!("__keyevent@{db}__:{e}"), Arc::from(e.as_str())))
                .collect(),
            liveness,
        }
    }

    /// Connects, authenticates and subscribes, within [`CONNECT_TIMEOUT`].
    pub(crate) async fn subscribe(&self) -> Result<Subscription, Error> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe_now())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("no subscription within {CONNECT_TIMEOUT:?}"),
                )
            })?
    }

    async fn subscribe_now(&self) -> Result<Subscription, Error> {
        let stream = self.dial.stream().await?;
        let mut sub = Subscription {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            channels: self.channels.clone(),
            watch: Watch::new(self.liveness, Instant::now()),
        };
        if let Some((username, password)) = self.dial.auth() {
            let mut auth = vec!["AUTH"];
            auth.extend(username);
            auth.push(password);
            sub.send(&auth).await?;
            let reply = sub.frame().await?;
            if reply != "+OK" {
                return Err(Error::new(
                    ErrorKind::Auth,
                    format!("AUTH answered {reply}"),
                ));
            }
        }
        let mut subscribe = vec!["SUBSCRIBE"];
        subscribe.extend(self.channels.iter().map(|(c, _)| c.as_str()));
        sub.send(&subscribe).await?;
        for _ in self.channels.iter() {
            let reply = sub.frame().await?;
            if !reply.starts_with("[subscribe, ") {
                return Err(protocol(format!("SUBSCRIBE answered {reply}")));
            }
        }
        sub.watch.heard(Instant::now());
        Ok(sub)
    }
}

/// Bytes read from the socket at once (at most).
const READ_CHUNK: usize = 256 * 1024;

impl Subscription {
    async fn send(&mut self, args: &[&str]) -> Result<(), Error> {
        self.stream.write_all(&super::resp::command(args)).await?;
        Ok(self.stream.flush().await?)
    }

    /// The next whole frame (reading as needed), for the handshake: owned.
    async fn frame(&mut self) -> Result<String, Error> {
        loop {
            if let Some((frame, used)) = parse(&self.buf)? {
                let text = frame.to_string();
                self.buf.advance(used);
                return Ok(text);
            }
            self.read().await?;
        }
    }

    async fn read(&mut self) -> Result<usize, Error> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(Error::new(ErrorKind::IO, "Redis closed the connection")),
            n => Ok(n),
        }
    }

    /// Waits for bytes, then hands every whole notification buffered to `each`; other frames
    /// (subscription confirmations, pongs) are skipped. Silent for too long, it PINGs the
    /// connection; a PING unanswered in time is an error of kind `Timeout`. An error means the
    /// connection is done.
    pub(crate) async fn next_batch(&mut self, each: impl FnMut(Notification)) -> Result<(), Error> {
        loop {
            let deadline = self.watch.deadline();
            tokio::select! {
                // The read first: bytes that wait in the socket when the deadline has passed
                // too (the process was stopped or starved) are life, not a timeout.
                biased;
                // Cancel-safe: a read cancelled by the deadline has taken no bytes.
                read = self.read() => {
                    read?;
                    self.watch.heard(Instant::now());
                    return drain(&mut self.buf, &self.channels, each);
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            match self.watch.due(Instant::now()) {
                None => {}
                Some(Due::Ping) => self.ping().await?,
                Some(Due::Dead) => return Err(self.dead()),
            }
        }
    }

    /// Sends a PING (allowed in subscribed mode; its answer is `[pong, ""]`), within the time
    /// the answer has: a write that cannot even be handed to the kernel by then is a dead end.
    async fn ping(&mut self) -> Result<(), Error> {
        self.watch.pinged(Instant::now());
        match tokio::time::timeout_at(self.watch.deadline(), self.send(&["PING"])).await {
            Ok(sent) => sent,
            Err(_) => Err(self.dead()),
        }
    }

    fn dead(&self) -> Error {
        let l = self.watch.liveness();
        Error::new(
            ErrorKind::Timeout,
            format!(
                "nothing received for {:?} after a PING sent after {:?} of silence",
                l.timeout, l.ping_after
            ),
        )
    }
}

/// Hands every whole notification at the start of `buf` on one of `channels` to `each`, removing
/// every whole frame read; other frames (subscription confirmations) are skipped. What is left
/// is the start of a frame still to come.
fn drain(
    buf: &mut BytesMut,
    channels: &[(String, Arc<str>)],
    mut each: impl FnMut(Notification),
) -> Result<(), Error> {
    while let Some((frame, used)) = parse(buf)? {
        if let Frame::Array(items) = &frame {
            if let [b"message", channel, key] = items.as_slice() {
                if let Some((_, op)) = channels.iter().find(|(c, _)| c.as_bytes() == *channel) {
                    each(Notification {
                        operation: op.clone(),
                        key: Key::from(Bytes::copy_from_slice(key)),
                    });
                }
            }
        }
        buf.advance(used);
    }
    Ok(())
}

/// The parser as the fuzz targets see it (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use super::*;

    /// The notifications on `__keyevent@0__:set` and `__keyevent@0__:expired` that the
    /// subscriber takes out of `reads`, bytes arriving in those pieces, as (operation, key);
    /// the error's text if the bytes are not Redis talking.
    pub(crate) fn notifications(reads: &[&[u8]]) -> Result<Vec<(String, Vec<u8>)>, String> {
        let channels: Vec<(String, Arc<str>)> = ["set", "expired"]
            .iter()
            .map(|e| (format!("__keyevent@0__:{e}"), Arc::from(*e)))
            .collect();
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        for read in reads {
            buf.extend_from_slice(read);
            drain(&mut buf, &channels, |n| {
                out.push((n.operation.to_string(), n.key.as_bytes().to_vec()))
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// Every whole frame of `bytes` as the handshake prints it, up to the first error.
    pub(crate) fn frames(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some((frame, used))) = parse(bytes) {
            assert!(used > 0 && used <= bytes.len(), "a frame of {used} bytes");
            out.push(frame.to_string());
            bytes = &bytes[used..];
        }
        out
    }
}

#[cfg(test)]
#[path = "subscriber_tests.rs"]
mod tests;
