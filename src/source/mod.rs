//! Sources: the readers that turn Redis data into [`Record`](crate::rows::Record)s and push them
//! into the bounded channel.

pub(crate) mod acl;
pub(crate) mod keyspace;
pub(crate) mod replication;
pub(crate) mod routed;
#[cfg(test)]
mod routed_tests;
pub(crate) mod stream;

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;

use crate::channel::RecordTx;
use crate::config::redact_url;
use crate::rows::Record;

/// Sends `records` into the channel in order (see [`RecordTx::send_all`]); false when the
/// channel is closed.
pub(crate) async fn send_all(tx: &RecordTx, records: Vec<Record>) -> bool {
    tx.send_all(records).await
}

/// Errors of connecting a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SourceError {
    /// Redis could not be reached or refused a command.
    #[error("Redis {instance} at {url}: {action}: {source}")]
    Redis {
        /// Instance short name.
        instance: String,
        /// URL (password redacted).
        url: String,
        /// What Spillway was doing.
        action: String,
        /// fred's error.
        source: fred::error::Error,
    },
    /// Redis refused permissions Spillway needs (ACL).
    #[error("{0}")]
    Acl(acl::AclErrors),
    /// Keyspace notifications are not enabled as needed.
    #[error(transparent)]
    Notify(#[from] Box<keyspace::notify::NotifyError>),
    /// The pipeline cannot run as configured (the message names the fix).
    #[error("{0}")]
    Config(String),
}

/// TCP keepalive of every Redis connection: an idle connection whose peer is gone (a host
/// powered off, a NAT or firewall that dropped the flow) is probed after 15 s of silence, every
/// 5 s, and closed by the kernel after 3 probes unanswered, about 30 s in all. It also keeps
/// idle flows alive in NAT and firewall tables. It cannot end a connection with bytes in flight
/// (those are retransmitted instead): the command clients' unresponsive timeout and the
/// subscriber's PING deadline cover that.
pub(crate) fn tcp_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5))
        .with_retries(3)
}

/// Time a command client waits for the answer to what it sent before it takes the connection
/// for dead, closes it and reconnects (retrying the commands in flight); blocking reads
/// (`XREADGROUP ... BLOCK`) and subscriptions are exempt. Shorter than [`READ_TIMEOUT`], so a
/// read retried after its timeout does not keep a half-open connection looking busy.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(10);

/// Most time a read-back command (the keyspace readers' MGET, TTL script, TYPE, SCAN) may take
/// before it fails and is retried: on a half-open connection it would otherwise wait for TCP to
/// give up (about 15 minutes).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Result alias of this module.
pub(crate) type Result<T> = std::result::Result<T, SourceError>;

/// A Redis endpoint: instance name and URL.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// Instance short name (`rls`, ...).
    pub instance: String,
    /// URL, possibly with credentials.
    pub url: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.instance, redact_url(&self.url))
    }
}

impl Endpoint {
    /// Whether this is a Redis Cluster (`redis-cluster://` or `rediss-cluster://`): commands are
    /// routed to the node that owns each key, and the keyspace source subscribes to every
    /// primary.
    pub(crate) fn cluster(&self) -> bool {
        self.url.starts_with("redis-cluster://") || self.url.starts_with("rediss-cluster://")
    }

    /// This endpoint's URL for one server at `addr` (`host:port`): same credentials, TLS or
    /// not, without the cluster scheme and the `node=` seeds; `self`'s URL when it is not a
    /// cluster.
    pub(crate) fn node_url(&self, addr: &str) -> String {
        node_url(&self.url, addr)
    }

    /// The endpoint of one node of this cluster (same instance name, `node_url`).
    pub(crate) fn node(&self, addr: &str) -> Endpoint {
        Endpoint {
            instance: self.instance.clone(),
            url: self.node_url(addr),
        }
    }

    /// Turns a fred error into a [`SourceError`] for `action`.
    pub(crate) fn err(&self, action: &str) -> impl FnOnce(fred::error::Error) -> SourceError {
        let (instance, url, action) = (
            self.instance.clone(),
            redact_url(&self.url),
            action.to_string(),
        );
        move |source| SourceError::Redis {
            instance,
            url,
            action,
            source,
        }
    }

    /// A fred builder for this endpoint on database `db`, reconnecting with capped exponential
    /// backoff, with a pub/sub buffer of `buffer` messages, TCP keepalive, and connections that
    /// go unanswered for [`UNRESPONSIVE_AFTER`] closed and reconnected.
    pub(crate) fn builder(&self, db: u8, buffer: usize) -> Result<Builder> {
        let mut config = Config::from_url(&self.url).map_err(self.err("parsing the URL"))?;
        // A cluster has database 0 only (`SELECT` is refused there).
        config.database = (!self.cluster()).then_some(db);
        let mut b = Builder::from_config(config);
        b.with_performance_config(|p| p.broadcast_channel_capacity = buffer)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(10);
                c.tcp.keepalive = Some(tcp_keepalive());
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE_AFTER),
                    interval: Duration::from_secs(1),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 10_000, 2));
        Ok(b)
    }

    /// A connected command client on database `db`.
    pub(crate) async fn client(&self, db: u8) -> Result<Client> {
        self.connect(self.builder(db, 32)?).await
    }

    /// A connected command client on database `db` whose commands fail after `timeout` (for
    /// clients that never block: a blocking read outlasts any such limit).
    pub(crate) async fn client_with_timeout(&self, db: u8, timeout: Duration) -> Result<Client> {
        let mut b = self.builder(db, 32)?;
        b.with_performance_config(|p| p.default_command_timeout = timeout);
        self.connect(b).await
    }

    /// A connected command client on database `db` that never follows a cluster redirect
    /// itself: a command answered `MOVED` or `ASK` fails with a routing error (after fred
    /// refreshed its slots on a `MOVED`). The client [`routed::pipelined`] needs, which sends
    /// such a command again itself; every keyed command on it goes through `routed`. With
    /// `timeout`, its commands fail after that long.
    pub(crate) async fn routed_client(&self, db: u8, timeout: Option<Duration>) -> Result<Client> {
        let mut b = self.builder(db, 32)?;
        // Zero here, not per command: fred takes a command's `max_redirections` of 0 for
        // "unset" and gives it the client's.
        b.with_connection_config(|c| c.max_redirections = 0);
        if let Some(t) = timeout {
            b.with_performance_config(|p| p.default_command_timeout = t);
        }
        self.connect(b).await
    }

    async fn connect(&self, builder: Builder) -> Result<Client> {
        let client = builder.build().map_err(self.err("building a client"))?;
        self.init(&client).await?;
        Ok(client)
    }

    /// Connects `client`; a refused `SELECT` (or any command fred sends on connect) is named
    /// with the ACL rule to add.
    pub(crate) async fn init<C: ClientLike>(&self, client: &C) -> Result<()> {
        match client.init().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut refused = Vec::new();
                if acl::note(&mut refused, &e, "SELECT", "+select", "") {
                    return Err(self.acl(refused));
                }
                Err(self.err("connecting")(e))
            }
        }
    }

    /// The error of permissions refused on this endpoint.
    pub(crate) fn acl(&self, refused: Vec<acl::Refusal>) -> SourceError {
        SourceError::Acl(vec![acl::error(self, refused)].into())
    }
}

/// `url` (of a server or a cluster) made the URL of the one server at `addr` (`host:port`): the
/// scheme loses `-cluster`, the `node=` seeds go, credentials stay.
pub(crate) fn node_url(url: &str, addr: &str) -> String {
    let Ok(u) = url::Url::parse(url) else {
        return url.to_string();
    };
    let tls = u.scheme().starts_with("rediss");
    let cluster = u.scheme().ends_with("-cluster");
    if !cluster {
        return url.to_string();
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (addr, None),
    };
    // `set_scheme` cannot turn a special scheme into another; rebuild the text instead.
    let auth = match (u.username(), u.password()) {
        ("", None) => String::new(),
        (user, Some(pw)) => format!("{user}:{pw}@"),
        (user, None) => format!("{user}@"),
    };
    let port = port.or(u.port()).unwrap_or(6379);
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://{auth}{host}:{port}")
}

#[cfg(test)]
mod node_url_tests {
    use super::node_url;

    #[test]
    fn a_cluster_url_becomes_one_node_with_the_same_credentials_and_tls() {
        assert_eq!(
            node_url(
                "redis-cluster://spill:pw@10.0.0.1:7000?node=10.0.0.2:7000",
                "10.0.0.3:7001"
            ),
            "redis://spill:pw@10.0.0.3:7001"
        );
        assert_eq!(
            node_url("rediss-cluster://:pw@a:7000", "b:7002"),
            "rediss://:pw@b:7002"
        );
        assert_eq!(node_url("redis-cluster://a:7000", "b:1"), "redis://b:1");
        assert_eq!(node_url("redis://a:6384/2", "b:1"), "redis://a:6384/2");
    }
}
