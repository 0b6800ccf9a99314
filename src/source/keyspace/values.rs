//! Values read back on a connection of their own, parsing the replies as they arrive and
//! keeping at most `keyspace.max_value_bytes` of any one value: a larger value's first bytes
//! are kept and the rest is read off the socket and dropped, so a reader never holds a 64 MB
//! value whole. Redis does exactly the work of a plain `MGET` (no size check per key: a
//! `STRLEN` or a `GETRANGE` per key cost Redis 1.4 and 1.8 us a key against MGET's 1.2).
//!
//! The connection, AUTH and TLS come from fred's URL parsing, like the subscriber's, so
//! `redis://` and `rediss://` URLs mean what they mean for the command clients.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fred::error::{Error, ErrorKind};
use fred::types::config::{Config, ServerConfig, TlsConnector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{number, protocol, MAX_BULK};
use crate::source::{tcp_keepalive, READ_TIMEOUT};

/// How long connecting, authenticating and selecting the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from the socket at once (at least).
const READ_CHUNK: usize = 256 * 1024;

/// Longest header or error line accepted: anything longer is not Redis talking.
const MAX_LINE: usize = 64 * 1024;

/// A connected socket, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Where and how to connect: parsed once from the URL, for the readers and the subscriber.
#[derive(Clone)]
pub(crate) struct Dial {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    tls: Option<(TlsConnector, String)>,
    db: u8,
    /// Cancelled when the server is known gone (a cluster node taken for failed): every read
    /// on its connections fails at once instead of waiting for the read timeout.
    gone: tokio_util::sync::CancellationToken,
}

impl Dial {
    /// From a `redis://` or `rediss://` URL of one server, for database `db`.
    pub(crate) fn new(url: &str, db: u8) -> Result<Dial, Error> {
        let config = Config::from_url(url)?;
        let ServerConfig::Centralized { server } = &config.server else {
            return Err(Error::new(
                ErrorKind::Config,
                "keyspace pipelines need the redis:// or rediss:// URL of one server \
                 (not a cluster, sentinel or unix socket)",
            ));
        };
        let tls = config.tls.as_ref().map(|tls| {
            let name = server
                .tls_server_name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| server.host.to_string());
            (tls.connector.clone(), name)
        });
        Ok(Dial {
            host: server.host.to_string(),
            port: server.port,
            username: config.username.clone(),
            password: config.password.clone(),
            tls,
            db,
            gone: Default::default(),
        })
    }

    /// A connection, authenticated and on the database, within [`CONNECT_TIMEOUT`].
    pub(super) async fn open(&self) -> Result<Conn, Error> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_now())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )
            })?
    }

    /// The same credentials and TLS for the server at `addr` (`host:port`: a cluster node a
    /// redirect named), database 0.
    pub(super) fn at(&self, addr: &str) -> Option<Dial> {
        let (host, port) = addr.rsplit_once(':')?;
        let mut d = self.clone();
        d.port = port.parse().ok()?;
        d.host = host.to_string();
        if let Some((_, name)) = &mut d.tls {
            *name = host.to_string();
        }
        d.db = 0;
        d.gone = Default::default();
        Some(d)
    }

    /// The token that ends every read on this server's connections (see `gone`).
    pub(super) fn gone(&self) -> tokio_util::sync::CancellationToken {
        self.gone.clone()
    }

    /// The database's number.
    pub(super) fn db(&self) -> u8 {
        self.db
    }

    /// `AUTH`'s arguments (user, password), when the URL has a password.
    pub(crate) fn auth(&self) -> Option<(Option<&str>, &str)> {
        let password = self.password.as_deref()?;
        Some((self.username.as_deref(), password))
    }

    /// A TCP connection with keepalive, under TLS for `rediss://`; not yet authenticated.
    pub(crate) async fn stream(&self) -> Result<Box<dyn Stream>, Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&tcp_keepalive())?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => match connector {
                TlsConnector::Rustls(c) => {
                    let name = fred::rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?;
                    Box::new(c.connect(name, tcp).await?)
                }
                #[allow(unreachable_patterns)]
                _ => return Err(Error::new(ErrorKind::Tls, "only rustls is built in")),
            },
        };
        Ok(stream)
    }

    async fn open_now(&self) -> Result<Conn, Error> {
        let mut conn = Conn {
            stream: self.stream().await?,
            buf: BytesMut::with_capacity(READ_CHUNK),
            gone: self.gone.clone(),
        };
        if let Some((username, password)) = self.auth() {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(username.map(str::as_bytes));
            auth.push(password.as_bytes());
            conn.send(&[auth]).await?;
            conn.ok().await.map_err(|e| {
                Error::new(ErrorKind::Auth, format!("AUTH answered {}", e.details()))
            })?;
        }
        if self.db != 0 {
            let db = self.db.to_string();
            conn.send(&[vec![b"SELECT", db.as_bytes()]]).await?;
            conn.ok().await?;
        }
        Ok(conn)
    }
}

/// Subscribes to `channel` on a connection of its own and closes it: what Redis answered (a
/// permission probe; fred's subscriber does not report a refused channel). A URL that is not
/// one server's is not probed.
pub(crate) async fn try_subscribe(url: &str, db: u8, channel: &str) -> Result<(), Error> {
    let Ok(dial) = Dial::new(url, db) else {
        return Ok(());
    };
    let mut conn = dial.open().await?;
    conn.send(&[vec![b"SUBSCRIBE", channel.as_bytes()]]).await?;
    conn.array_len().await.map(|_| ())
}

/// One element of an array reply of bulk strings, as kept: `$-1`, a whole value, or the
/// first `limit` bytes of a value over the limit and its real size.
#[derive(Debug, PartialEq)]
pub(super) enum Value {
    Nil,
    /// A Redis Cluster node's `-MOVED` or `-ASK`: the key is served by the node at `addr`
    /// now (for `ask`, only after `ASKING`: its slot is being migrated there).
    Redirect {
        /// `-ASK` (else `-MOVED`).
        ask: bool,
        /// `host:port` of the node to ask.
        addr: String,
    },
    Bytes(Bytes),
    TooLarge {
        head: Bytes,
        size: u64,
    },
}

/// A short reply: an integer, a status, nil, or a cluster redirect.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Small {
    Int(i64),
    Status(String),
    Nil,
    Redirect { ask: bool, addr: String },
}

/// An open connection and what has been read off it and not yet parsed.
pub(super) struct Conn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    gone: tokio_util::sync::CancellationToken,
}

impl Conn {
    /// Writes `commands` (each its arguments) at once, pipelined.
    pub(super) async fn send(&mut self, commands: &[Vec<&[u8]>]) -> Result<(), Error> {
        let size: usize = commands
            .iter()
            .flatten()
            .map(|a| a.len() + 16)
            .sum::<usize>()
            + 16 * commands.len();
        let mut out = Vec::with_capacity(size);
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&out).await?;
        Ok(self.stream.flush().await?)
    }

    /// Reads a `+OK`; an error reply as an error.
    pub(super) async fn ok(&mut self) -> Result<(), Error> {
        let end = self.line().await?;
        let line = self.buf.split_to(end + 2);
        match line.first() {
            Some(b'+') => Ok(()),
            _ => Err(reply_error(&line[..end])),
        }
    }

    /// The length of an array reply; an error reply as an error.
    pub(super) async fn array_len(&mut self) -> Result<usize, Error> {
        let end = self.line().await?;
        let line = self.buf.split_to(end + 2);
        match line.first() {
            Some(b'*') => Ok(number(&line[1..end])?.max(0) as usize),
            _ => Err(reply_error(&line[..end])),
        }
    }

    /// A short reply ([`Small`]); any other error reply as an error.
    pub(super) async fn small(&mut self) -> Result<Small, Error> {
        let end = self.line().await?;
        let line = self.buf.split_to(end + 2);
        let text = || String::from_utf8_lossy(&line[1..end]).into_owned();
        match line.first() {
            Some(b':') => number(&line[1..end]).map(Small::Int),
            Some(b'+') => Ok(Small::Status(text())),
            Some(b'$') if &line[1..end] == b"-1" => Ok(Small::Nil),
            Some(b'-') if is_redirect(&line[..end]) => {
                let t = text();
                let addr = t.split(' ').nth(2).unwrap_or_default().to_string();
                Ok(Small::Redirect {
                    ask: t.starts_with("ASK"),
                    addr,
                })
            }
            _ => Err(reply_error(&line[..end])),
        }
    }

    /// An integer element (`:n`); a cluster redirect as `None`.
    pub(super) async fn integer_or_redirect(&mut self) -> Result<Option<i64>, Error> {
        let end = self.line().await?;
        let line = self.buf.split_to(end + 2);
        match line.first() {
            Some(b':') => number(&line[1..end]).map(Some),
            Some(b'-') if is_redirect(&line[..end]) => Ok(None),
            _ => Err(reply_error(&line[..end])),
        }
    }

    /// An integer element (`:n`).
    pub(super) async fn integer(&mut self) -> Result<i64, Error> {
        let end = self.line().await?;
        let line = self.buf.split_to(end + 2);
        match line.first() {
            Some(b':') => number(&line[1..end]),
            _ => Err(reply_error(&line[..end])),
        }
    }

    /// A bulk string element, keeping at most `limit` bytes of it.
    pub(super) async fn value(&mut self, limit: usize) -> Result<Value, Error> {
        let end = self.line().await?;
        let len = match self.buf.first() {
            Some(b'$') => number(&self.buf[1..end])?,
            Some(b'-') if is_redirect(&self.buf[..end]) => {
                let line = String::from_utf8_lossy(&self.buf[1..end]).into_owned();
                self.buf.advance(end + 2);
                let addr = line.split(' ').nth(2).unwrap_or_default().to_string();
                return Ok(Value::Redirect {
                    ask: line.starts_with("ASK"),
                    addr,
                });
            }
            _ => return Err(reply_error(&self.buf[..end])),
        };
        self.buf.advance(end + 2);
        if len < 0 {
            return Ok(Value::Nil);
        }
        if len > MAX_BULK {
            return Err(protocol(format!("bulk string of {len} bytes")));
        }
        let len = len as usize;
        if len <= limit {
            self.fill(len + 2).await?;
            let value = self.buf.split_to(len).freeze();
            if &self.buf[..2] != b"\r\n" {
                return Err(protocol("a bulk string not ended by CRLF".into()));
            }
            self.buf.advance(2);
            return Ok(Value::Bytes(value));
        }
        self.fill(limit).await?;
        let head = self.buf.split_to(limit).freeze();
        self.skip(len - limit + 2).await?;
        Ok(Value::TooLarge {
            head,
            size: len as u64,
        })
    }

    /// Where the line at the start of the buffer ends (its CR), reading as needed.
    async fn line(&mut self) -> Result<usize, Error> {
        let mut from = 0;
        loop {
            if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let end = from + i;
                if end == 0 || self.buf[end - 1] != b'\r' {
                    return Err(protocol("a line not ended by CRLF".into()));
                }
                return Ok(end - 1);
            }
            from = self.buf.len();
            if from > MAX_LINE {
                return Err(protocol(format!("a line of over {MAX_LINE} bytes")));
            }
            self.read(READ_CHUNK).await?;
        }
    }

    /// Reads until the buffer holds `n` bytes.
    async fn fill(&mut self, n: usize) -> Result<(), Error> {
        while self.buf.len() < n {
            let missing = n - self.buf.len();
            self.read(missing.max(READ_CHUNK)).await?;
        }
        Ok(())
    }

    /// Reads `n` bytes off the connection and drops them, holding at most a read's worth.
    async fn skip(&mut self, mut n: usize) -> Result<(), Error> {
        loop {
            let have = n.min(self.buf.len());
            self.buf.advance(have);
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.read(READ_CHUNK.min(n)).await?;
        }
    }

    /// Reads what arrives, failing after [`READ_TIMEOUT`] without a byte (a half-open
    /// connection: keepalive cannot end one with a request in flight).
    async fn read(&mut self, room: usize) -> Result<(), Error> {
        self.buf.reserve(room);
        let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf));
        let read = tokio::select! {
            read = read => read,
            _ = self.gone.cancelled() => {
                return Err(Error::new(ErrorKind::IO, "the server is gone from the cluster"))
            }
        };
        match read {
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "no reply within the read timeout",
            )),
            Ok(Ok(0)) => Err(Error::new(ErrorKind::IO, "Redis closed the connection")),
            Ok(read) => read.map(|_| ()).map_err(Error::from),
        }
    }
}

/// Whether an error line is a cluster redirect (`-MOVED slot addr`, `-ASK slot addr`).
fn is_redirect(line: &[u8]) -> bool {
    line.starts_with(b"-MOVED ") || line.starts_with(b"-ASK ")
}

/// An error reply (`-NOSCRIPT ...`) as an error whose details are its text; anything else
/// unexpected as a protocol error.
fn reply_error(line: &[u8]) -> Error {
    match line.split_first() {
        Some((b'-', text)) => Error::new(
            ErrorKind::Unknown,
            String::from_utf8_lossy(text).into_owned(),
        ),
        _ => protocol(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose peer writes `reply` in pieces of `piece` bytes.
    fn conn(reply: Vec<u8>, piece: usize) -> Conn {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            for p in reply.chunks(piece.max(1)) {
                if server.write_all(p).await.is_err() {
                    return;
                }
            }
            let _ = server.shutdown().await;
            // Keep the peer open until the reader is done.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        Conn {
            stream: Box::new(client),
            buf: BytesMut::new(),
            gone: Default::default(),
        }
    }

    fn bulk(v: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", v.len()).into_bytes();
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[tokio::test]
    async fn values_over_the_limit_keep_their_head_cut_anywhere() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let values: [&[u8]; 5] = [b"a", b"", &big, b"0123456789", b"abc\r\ndef"];
        let mut reply = b"*6\r\n".to_vec();
        for v in &values[..2] {
            reply.extend(bulk(v));
        }
        reply.extend_from_slice(b"$-1\r\n");
        for v in &values[2..] {
            reply.extend(bulk(v));
        }
        for piece in [1, 7, 4096, reply.len()] {
            let mut c = conn(reply.clone(), piece);
            assert_eq!(c.array_len().await.unwrap(), 6);
            let mut got = Vec::new();
            for _ in 0..6 {
                got.push(c.value(8).await.unwrap());
            }
            let b = |v: &[u8]| Value::Bytes(Bytes::copy_from_slice(v));
            let too = |v: &[u8]| Value::TooLarge {
                head: Bytes::copy_from_slice(&v[..8]),
                size: v.len() as u64,
            };
            let want = [
                b(b"a"),
                b(b""),
                Value::Nil,
                too(&big),
                too(b"0123456789"),
                b(b"abc\r\ndef"),
            ];
            assert_eq!(got, want, "pieces of {piece}");
            // Nothing of the big value is left behind, and reading on fails cleanly.
            assert!(c.buf.is_empty());
            assert!(c.value(8).await.is_err());
        }
    }

    #[tokio::test]
    async fn integers_and_error_replies() {
        let mut c = conn(
            b"*2\r\n:-2\r\n:3600\r\n-NOSCRIPT No matching script\r\n".to_vec(),
            3,
        );
        assert_eq!(c.array_len().await.unwrap(), 2);
        assert_eq!(c.integer().await.unwrap(), -2);
        assert_eq!(c.integer().await.unwrap(), 3600);
        let e = c.array_len().await.unwrap_err();
        assert!(e.details().starts_with("NOSCRIPT"), "{e}");
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$5\r\nabcdefg\r\n",
            b"$3\nabc",
        ] {
            let mut c = conn(bad.to_vec(), 2);
            assert!(c.value(100).await.is_err(), "{bad:?}");
        }
        let mut c = conn(format!("${}\r\n", MAX_BULK + 1).into_bytes(), 100);
        assert!(c.value(100).await.is_err());
    }

    #[tokio::test]
    async fn cluster_redirects_are_values_not_errors() {
        let reply = b"-MOVED 6943 10.0.0.2:7000\r\n$2\r\nok\r\n-ASK 1 a:1\r\n\
            -MOVED 2 b:2\r\n:5\r\n-CLUSTERDOWN The cluster is down\r\n";
        let mut c = conn(reply.to_vec(), 4);
        assert!(matches!(
            c.value(100).await.unwrap(),
            Value::Redirect { ask: false, addr } if addr == "10.0.0.2:7000"
        ));
        assert!(matches!(c.value(100).await.unwrap(), Value::Bytes(b) if &b[..] == b"ok"));
        assert!(matches!(
            c.value(100).await.unwrap(),
            Value::Redirect { ask: true, addr } if addr == "a:1"
        ));
        assert_eq!(c.integer_or_redirect().await.unwrap(), None);
        assert_eq!(c.integer_or_redirect().await.unwrap(), Some(5));
        let e = c.value(100).await.unwrap_err();
        assert!(e.details().starts_with("CLUSTERDOWN"), "{e}");
    }
}
