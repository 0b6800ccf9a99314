//! The replication link: one connection to Redis on which Spillway is a replica. The handshake
//! (`AUTH`, `REPLCONF ip-address` with the replica's name and no listening port, `REPLCONF capa
//! eof capa psync2`, `PSYNC`), the RDB transfer's preamble (`$<len>` from a disk snapshot, or
//! `$EOF:<mark>` from a diskless one), then the command stream: arrays of bulk strings, each
//! split off the read buffer without a copy, and `REPLCONF ACK <offset>` written back.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fred::error::{Error, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::source::keyspace::values::{Dial, Stream};

/// How long connecting, authenticating and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the answer to PSYNC may take: a full resync is answered when the snapshot starts,
/// after `repl-diskless-sync-delay` (5 s by default) or a snapshot already running.
const PSYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes read from the socket at once (at most).
const READ_CHUNK: usize = 256 * 1024;

/// Redis's own limit on a bulk string (`proto-max-bulk-len`, 512 MB).
const MAX_BULK: usize = 512 << 20;

/// Most arguments of one command accepted (an `MSET` of a million keys has two million).
const MAX_ARGS: usize = 16 << 20;

/// What `PSYNC` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sync {
    /// A full resync: a snapshot follows, then the stream from `offset`.
    Full {
        /// The primary's replication id.
        replid: String,
        /// The offset the snapshot stands at.
        offset: u64,
    },
    /// A partial resync: the stream goes on from the offset asked, under `replid` (the
    /// primary's id, which changes after a failover).
    Partial {
        /// The replication id from now on.
        replid: String,
    },
}

/// How the snapshot is framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// `$<len>`: that many bytes.
    Sized(u64),
    /// `$EOF:<mark>`: the snapshot, then the 40-byte mark again.
    Marked([u8; 40]),
}

/// A connection on which Spillway is a replica.
pub(crate) struct Link {
    pub(crate) stream: Box<dyn Stream>,
    /// Bytes read and not yet used.
    pub(crate) buf: BytesMut,
}

/// An error of kind `Protocol`: the bytes are not Redis replicating.
pub(crate) fn protocol(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, detail.into())
}

impl Link {
    /// Connects, authenticates, announces itself as `name` (no listening port) and asks for
    /// the stream after `from` (replication id, offset of the last byte had), or a full resync.
    pub(crate) async fn open(
        dial: &Dial,
        name: &str,
        from: Option<(&str, u64)>,
    ) -> Result<(Link, Sync), Error> {
        let timeout = |what: &str, after: Duration| {
            Error::new(ErrorKind::Timeout, format!("no {what} within {after:?}"))
        };
        let mut link = tokio::time::timeout(CONNECT_TIMEOUT, Self::handshake(dial, name))
            .await
            .map_err(|_| timeout("replication handshake", CONNECT_TIMEOUT))??;
        let sync = tokio::time::timeout(PSYNC_TIMEOUT, link.psync(from))
            .await
            .map_err(|_| timeout("answer to PSYNC", PSYNC_TIMEOUT))??;
        Ok((link, sync))
    }

    async fn handshake(dial: &Dial, name: &str) -> Result<Link, Error> {
        let mut link = Link {
            stream: dial.stream().await?,
            buf: BytesMut::with_capacity(READ_CHUNK),
        };
        if let Some((username, password)) = dial.auth() {
            let mut auth = vec!["AUTH"];
            auth.extend(username);
            auth.push(password);
            link.expect_ok(&auth, ErrorKind::Auth).await?;
        }
        link.expect_ok(&["REPLCONF", "ip-address", name], ErrorKind::Protocol)
            .await?;
        link.expect_ok(
            &["REPLCONF", "capa", "eof", "capa", "psync2"],
            ErrorKind::Protocol,
        )
        .await?;
        Ok(link)
    }

    /// `PSYNC` from `from` (or a full resync) and its answer.
    async fn psync(&mut self, from: Option<(&str, u64)>) -> Result<Sync, Error> {
        let link = self;
        let (replid, offset) = match from {
            Some((id, offset)) => (id.to_string(), (offset + 1).to_string()),
            None => ("?".to_string(), "-1".to_string()),
        };
        link.send(&["PSYNC", &replid, &offset]).await?;
        let reply = link.line().await?;
        let words: Vec<&str> = reply.split(' ').collect();
        let sync = match words.as_slice() {
            ["+FULLRESYNC", id, offset] => Sync::Full {
                replid: id.to_string(),
                offset: offset
                    .parse()
                    .map_err(|_| protocol(format!("PSYNC answered {reply}")))?,
            },
            ["+CONTINUE"] => Sync::Partial { replid },
            ["+CONTINUE", id] => Sync::Partial {
                replid: id.to_string(),
            },
            _ => return Err(refused("PSYNC", &reply)),
        };
        Ok(sync)
    }

    /// Writes one command.
    pub(crate) async fn send(&mut self, args: &[&str]) -> Result<(), Error> {
        self.stream
            .write_all(&crate::source::keyspace::resp::command(args))
            .await?;
        Ok(self.stream.flush().await?)
    }

    /// `REPLCONF ACK <offset>`: what a replica tells its primary it has.
    pub(crate) async fn ack(&mut self, offset: u64) -> Result<(), Error> {
        self.send(&["REPLCONF", "ACK", &offset.to_string()]).await
    }

    async fn expect_ok(&mut self, args: &[&str], kind: ErrorKind) -> Result<(), Error> {
        self.send(args).await?;
        let reply = self.line().await?;
        if reply == "+OK" {
            return Ok(());
        }
        let err = refused(args[0], &reply);
        Err(if *err.kind() == ErrorKind::Protocol {
            Error::new(kind, err.details().to_string())
        } else {
            err
        })
    }

    /// Reads at least one more byte into the buffer; the end of the stream is an error.
    pub(crate) async fn read(&mut self) -> Result<usize, Error> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(Error::new(ErrorKind::IO, "Redis closed the connection")),
            n => Ok(n),
        }
    }

    /// The next line (without CRLF), skipping the bare newlines a primary sends to keep the
    /// link alive while it prepares a snapshot.
    pub(crate) async fn line(&mut self) -> Result<String, Error> {
        loop {
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(protocol("a line of over 64 KiB"));
            }
            self.read().await?;
        }
    }

    /// The snapshot's framing (after a full resync).
    pub(crate) async fn transfer(&mut self) -> Result<Transfer, Error> {
        let line = self.line().await?;
        if let Some(mark) = line.strip_prefix("$EOF:") {
            let mark: [u8; 40] = mark
                .as_bytes()
                .try_into()
                .map_err(|_| protocol(format!("snapshot mark {mark:?} is not 40 bytes")))?;
            return Ok(Transfer::Marked(mark));
        }
        match line.strip_prefix('$').map(str::parse::<u64>) {
            Some(Ok(len)) => Ok(Transfer::Sized(len)),
            _ => Err(refused("the snapshot", &line)),
        }
    }

    /// The next whole command of the stream and its length in bytes; None when more bytes
    /// are needed (read, then ask again).
    pub(crate) fn command(&mut self) -> Result<Option<(Vec<Bytes>, usize)>, Error> {
        let Some((spans, used)) = spans(&self.buf)? else {
            return Ok(None);
        };
        let frame = self.buf.split_to(used).freeze();
        let args = spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect();
        Ok(Some((args, used)))
    }
}

/// A reply that is not what was asked for, as an error naming the command: an ACL refusal
/// (`-NOPERM`) names the permission to add.
fn refused(command: &str, reply: &str) -> Error {
    if reply.starts_with("-NOPERM")
        || reply.starts_with("-NOAUTH")
        || reply.starts_with("-WRONGPASS")
    {
        return Error::new(
            ErrorKind::Auth,
            format!(
                "{command} refused: {reply}; fix: the replication source's user needs \
                 `+psync +replconf +ping` (see the ACL lines of the README)"
            ),
        );
    }
    protocol(format!("{command} answered {reply}"))
}

/// The arguments of a command (start and end in the buffer) and the command's length.
type Spans = (Vec<(usize, usize)>, usize);

/// The argument spans of the first whole command of `buf` (`*N` then N bulk strings) and its
/// length; None when more bytes are needed.
fn spans(buf: &[u8]) -> Result<Option<Spans>, Error> {
    let Some((head, mut at)) = line(buf, 0)? else {
        return Ok(None);
    };
    if head.first() != Some(&b'*') {
        return Err(protocol(format!(
            "the stream sent {:?} where a command was due",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        )));
    }
    let n = number(&head[1..])?;
    if n > MAX_ARGS {
        return Err(protocol(format!("a command of {n} arguments")));
    }
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let Some((item, next)) = line(buf, at)? else {
            return Ok(None);
        };
        if item.first() != Some(&b'$') {
            return Err(protocol("a command argument that is not a bulk string"));
        }
        let len = number(&item[1..])?;
        if len > MAX_BULK {
            return Err(protocol(format!("an argument of {len} bytes")));
        }
        let end = next + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol("a bulk string not ended by CRLF"));
        }
        out.push((next, end));
        at = end + 2;
    }
    Ok(Some((out, at)))
}

/// The line starting at `from` (without its CRLF) and where the next one starts.
fn line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, Error> {
    let rest = &buf[from.min(buf.len())..];
    match memchr_crlf(rest) {
        Some(end) => Ok(Some((&rest[..end], from + end + 2))),
        None if rest.len() > 64 => Err(protocol("a header line of over 64 bytes")),
        None => Ok(None),
    }
}

fn memchr_crlf(b: &[u8]) -> Option<usize> {
    // Header lines are short: looking at the first 66 bytes is enough.
    b[..b.len().min(66)].windows(2).position(|w| w == b"\r\n")
}

/// A non-negative decimal (a count, a length).
fn number(digits: &[u8]) -> Result<usize, Error> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            protocol(format!(
                "not a length: {:?}",
                String::from_utf8_lossy(digits)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::source::keyspace::resp::command as cmd;

    #[test]
    fn commands_cut_anywhere_wait_for_more_bytes() {
        let mut two = cmd(&["SET", "alert:1", "a\r\nb", "PXAT", "1700000000000"]);
        let first = two.len();
        two.extend(cmd(&["DEL", "alert:2"]));
        for cut in 0..first {
            assert_eq!(spans(&two[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (spans1, used) = spans(&two).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(&two[spans1[2].0..spans1[2].1], b"a\r\nb");
        let (spans2, used2) = spans(&two[first..]).unwrap().unwrap();
        assert_eq!(used2, two.len() - first);
        assert_eq!(spans2.len(), 2);
    }

    #[test]
    fn what_is_not_a_command_is_an_error() {
        assert!(spans(b"+OK\r\n").is_err());
        assert!(spans(b"*1\r\n:1\r\n").is_err());
        assert!(spans(b"*1\r\n$3\r\nabcd\r\n").is_err());
        assert!(spans(b"*x\r\n").is_err());
        assert!(spans(b"*1\r\n$99999999999\r\n").is_err());
        assert!(spans(&[b'*'; 100]).is_err());
    }
}
