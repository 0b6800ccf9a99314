//! The sections of the config file (`[redis.*]`, `[clickhouse]`, `[metrics]`, `[batch]`,
//! `[keyspace]`, `[observe]`) and how each is validated into typed settings.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    invalid, redact_url, BatchSettings, ClickHouseSettings, ClickHouseTls, KeyspaceSettings,
    Result, INSTANCES,
};

/// One Redis instance.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedisInstance {
    /// `redis://` or `rediss://` URL, credentials allowed; default the contract's port on
    /// 127.0.0.1.
    pub url: Option<String>,
    /// A file holding the password (a mounted secret), put into the URL; relative to the config
    /// file's directory. One trailing newline is trimmed.
    pub password_file: Option<PathBuf>,
}

/// The `[redis.*]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedisSection {
    /// Redis-Trade-State.
    pub rts: Option<RedisInstance>,
    /// Redis-Instance-State.
    pub ris: Option<RedisInstance>,
    /// Redis-Signal-Stream.
    pub rtss: Option<RedisInstance>,
    /// Redis-Result-Stream (trade_results).
    pub rtrs: Option<RedisInstance>,
    /// Redis-Session-State.
    pub rss: Option<RedisInstance>,
    /// Redis-Logging-State (alerts, trade execution logs).
    pub rls: Option<RedisInstance>,
}

/// The `[clickhouse]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClickHouseSection {
    /// HTTP URL of ClickHouse, default `http://127.0.0.1:8123`; `https://` for TLS.
    pub url: Option<String>,
    /// PEM file of the CA that signs ClickHouse's certificate (https:// only); default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a ClickHouse that requires one (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// User, default `default`.
    pub user: Option<String>,
    /// Password, default empty.
    pub password: Option<String>,
    /// A file holding the password (a mounted secret), instead of `password`; relative to the
    /// config file's directory. One trailing newline is trimmed.
    pub password_file: Option<PathBuf>,
    /// Database, default `spillway`; created when missing.
    pub database: Option<String>,
    /// Seconds to wait for one INSERT before it counts as failed, default 60.
    pub insert_timeout_secs: Option<u64>,
    /// Whether a table or the database dropped while Spillway runs is created again (with the
    /// statements of the start), default true.
    pub recreate_tables: Option<bool>,
    /// `lz4`, `none`, or `auto` (the default): none when ClickHouse is on this host, lz4 else.
    pub compression: Option<String>,
    /// Days rows are kept (a TTL on the tables Spillway creates, by the time each row was
    /// archived); default none: an audit archive is usually kept for years. Needs ClickHouse 20.1
    /// or later.
    pub retention_days: Option<u32>,
    /// The ClickHouse cluster to write to (its name under `<remote_servers>`); default none, a
    /// single server. Tables are then created `ON CLUSTER`: replicated `*_local` tables and a
    /// `Distributed` table under each name readers query.
    pub cluster: Option<String>,
    /// ZooKeeper (or Keeper) path of each replicated table, default
    /// `/clickhouse/tables/{shard}/{database}/{table}`; needs `cluster`.
    pub zookeeper_path: Option<String>,
    /// Replica name of each replicated table, default `{replica}` (the servers' macro); needs
    /// `cluster`.
    pub replica_name: Option<String>,
}

/// The `[metrics]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MetricsSection {
    /// host:port to listen on, default `127.0.0.1:9464`.
    pub addr: Option<String>,
}

/// The `[batch]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BatchSection {
    /// Capacity of the channel between readers and the writer, in rows; default 50000.
    pub channel_capacity: Option<usize>,
    /// Flush when this many rows are buffered; default 100000.
    pub max_rows: Option<usize>,
    /// Flush when the buffered rows reach this many bytes (RowBinary estimate); default 16 MiB
    /// (two batches are held at once: one committing, the next collected).
    pub max_bytes: Option<usize>,
    /// Flush at the latest this many milliseconds after the first buffered row; default 1000.
    pub max_delay_ms: Option<u64>,
    /// Bytes (RowBinary) of the rows the channel between readers and the writer holds, beside
    /// `channel_capacity` rows; default 16 MiB, at most 4 GiB - 1. A row larger than this
    /// passes alone.
    pub channel_bytes: Option<usize>,
}

/// The `[keyspace]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KeyspaceSection {
    /// Let Spillway add the missing `notify-keyspace-events` flags itself with `CONFIG SET`;
    /// default false (Spillway then fails at start and prints the line to run).
    pub configure_notifications: Option<bool>,
    /// Notifications of a pipeline's keys queued while values are read back (memory is taken
    /// only as the queue fills); beyond it they are counted as lost and a rescan follows.
    /// Default 262144.
    pub subscriber_buffer: Option<usize>,
    /// Most keys read back in one pipelined round trip; default 1024.
    pub read_batch: Option<usize>,
    /// Connections reading values back, each with one read in flight; default 4, at most 64.
    pub readers: Option<usize>,
    /// Read each value's remaining TTL with it (a script of one PTTL per key, pipelined with the
    /// MGET) into the `ttl_ms` columns and the expiry-risk gauge. Default false: that read
    /// triples the read-back's work in Redis; without it `ttl_ms` is -3 and the gauge +Inf.
    pub read_ttl: Option<bool>,
    /// (key, content) pairs a pipeline remembers as archived, so that a rescan inserts again
    /// only what it cannot prove archived, and a rewrite with the same content is counted, not
    /// archived twice. Default 1835008 (two sets of 2^20 buckets, 19 MB when full; about 10
    /// bytes a pair at such sizes, up to 20 at others); 0 remembers nothing.
    pub remember_values: Option<usize>,
    /// Seconds of silence on the subscriber connection before Spillway sends it a PING (anything
    /// received counts as life); default 5.
    pub subscriber_ping_secs: Option<u64>,
    /// Seconds after that PING within which something must arrive, else the connection is
    /// taken for dead (a half-open TCP connection): it is dropped, reconnected and the gap
    /// rescanned; default 15.
    pub subscriber_timeout_secs: Option<u64>,
    /// Largest value archived, in bytes; default 1 MiB, at most 512 MiB (Redis's own limit).
    /// A larger value goes to `dead_letters` (reason `too_large`) with its first
    /// `max_value_bytes` bytes; the rest is never held by Spillway.
    pub max_value_bytes: Option<usize>,
    /// Bytes of values a reader holds before it hands them to the capture stage (a read of
    /// `read_batch` keys is handed over in pieces of about this size); default 2 MiB.
    pub read_batch_bytes: Option<usize>,
}

impl RedisSection {
    pub(super) fn slot(&mut self, name: &str) -> &mut Option<RedisInstance> {
        match name {
            "rts" => &mut self.rts,
            "ris" => &mut self.ris,
            "rtss" => &mut self.rtss,
            "rtrs" => &mut self.rtrs,
            "rss" => &mut self.rss,
            _ => &mut self.rls,
        }
    }

    /// The URL of every instance (configured, or the contract's default port on 127.0.0.1),
    /// with the password of its `password_file` (relative to `base`) put in; and the files.
    pub(super) fn urls(mut self, base: &Path) -> Result<(Vec<(String, String)>, SecretFiles)> {
        let mut out = Vec::new();
        let mut files = Vec::new();
        for (name, port) in INSTANCES {
            let instance = self.slot(name).take().unwrap_or_default();
            let url = instance
                .url
                .unwrap_or_else(|| format!("redis://127.0.0.1:{port}"));
            check_redis_url(&format!("redis.{name}.url"), &url)?;
            let url = match instance.password_file {
                None => url,
                Some(file) => {
                    let field = format!("redis.{name}.password_file");
                    if url::Url::parse(&url).is_ok_and(|u| u.password().is_some()) {
                        return Err(invalid(
                            &field,
                            format!("redis.{name}.url carries a password too"),
                            "keep the password in one place: remove it from the URL or remove password_file",
                        ));
                    }
                    let file = base.join(file);
                    let password = read_secret(&field, &file)?;
                    let url = super::with_password(&url, &password).ok_or_else(|| {
                        invalid(
                            &field,
                            format!("the URL of {name} cannot carry a password"),
                            "give a redis:// or rediss:// URL with a host",
                        )
                    })?;
                    files.push((name.to_string(), file));
                    url
                }
            };
            out.push((name.to_string(), url));
        }
        Ok((out, SecretFiles { redis: files }))
    }
}

/// The files Redis passwords were read from (`password_file`), which `check-config` prints in
/// place of the passwords so that its output runs as it is.
#[derive(Debug, Default, Clone)]
pub struct SecretFiles {
    /// Redis instances whose password came from a file.
    pub redis: Vec<(String, PathBuf)>,
}

/// The content of the secret file `path` (one trailing newline, `\n` or `\r\n`, trimmed); an
/// error names `field` and the path, never the content.
pub(crate) fn read_secret(field: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            field,
            format!("cannot read {}: {e}", path.display()),
            "point it at a readable file holding the value (a mounted secret), or remove it",
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// How to write a Redis URL.
const CLUSTER_FIX: &str = "write it as redis://[user:password@]host:port[/db] for one server \
     (rediss:// for TLS), or redis-cluster://[user:password@]host:port[?node=host2:port2] for \
     a Redis Cluster (any of its nodes; rediss-cluster:// for TLS)";

fn check_redis_url(field: &str, url: &str) -> Result<()> {
    match url::Url::parse(url) {
        Ok(u)
            if matches!(
                u.scheme(),
                "redis" | "rediss" | "redis-cluster" | "rediss-cluster"
            ) && u.host().is_some() =>
        {
            Ok(())
        }
        Ok(u) => Err(invalid(
            field,
            format!(
                "`{}` is not a redis://, rediss:// or redis-cluster:// URL with a host",
                redact_url(u.as_str())
            ),
            CLUSTER_FIX,
        )),
        Err(e) => Err(invalid(field, format!("not a URL ({e})"), CLUSTER_FIX)),
    }
}

impl ClickHouseSection {
    /// Typed settings; TLS file paths are relative to `base` (the config file's directory).
    pub(super) fn validate(self, base: &Path) -> Result<ClickHouseSettings> {
        let password_file = self.password_file.map(|f| base.join(f));
        let password = match (self.password, &password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "clickhouse.password_file",
                    "clickhouse.password is set too".into(),
                    "keep the password in one place: remove password or password_file",
                ))
            }
            (Some(p), None) => p,
            (None, Some(file)) => read_secret("clickhouse.password_file", file)?,
            (None, None) => String::new(),
        };
        let url = self.url.unwrap_or_else(|| "http://127.0.0.1:8123".into());
        let parsed = match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                return Err(invalid(
                    "clickhouse.url",
                    format!("`{}` is not an http:// or https:// URL", redact_url(&url)),
                    "give the HTTP interface, e.g. http://127.0.0.1:8123",
                ))
            }
        };
        let database = self.database.unwrap_or_else(|| "spillway".into());
        if database.is_empty()
            || !database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(
                "clickhouse.database",
                format!("`{database}` is not a plain identifier"),
                "use letters, digits and underscores only",
            ));
        }
        let compression = match self.compression.as_deref().unwrap_or("auto") {
            "lz4" => true,
            "none" => false,
            "auto" => !is_loopback(&parsed),
            other => {
                return Err(invalid(
                    "clickhouse.compression",
                    format!("`{other}` is not a compression"),
                    "use \"auto\" (none to this host, lz4 elsewhere), \"lz4\" or \"none\"",
                ))
            }
        };
        let tls = ClickHouseTls::from_fields(
            parsed.scheme() == "https",
            base,
            self.ca_file,
            self.client_cert_file,
            self.client_key_file,
        )?;
        let cluster =
            super::cluster::validate(self.cluster, self.zookeeper_path, self.replica_name)?;
        Ok(ClickHouseSettings {
            cluster,
            compression,
            tls,
            url,
            user: self.user.unwrap_or_else(|| "default".into()),
            password,
            password_file,
            database,
            recreate_tables: self.recreate_tables.unwrap_or(true),
            retention_days: match self.retention_days {
                Some(0) => {
                    return Err(invalid(
                        "clickhouse.retention_days",
                        "0 days would delete every row as it lands".into(),
                        "give the days to keep rows, or remove the line to keep them for ever",
                    ))
                }
                days => days,
            },
            insert_timeout: Duration::from_secs(positive(
                "clickhouse.insert_timeout_secs",
                self.insert_timeout_secs.unwrap_or(60) as usize,
            )? as u64),
        })
    }
}

/// Whether the host of `url` is this machine (localhost or a loopback address): there,
/// compressing the inserts costs CPU on both sides and saves nothing.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl MetricsSection {
    pub(super) fn validate(self) -> Result<SocketAddr> {
        let addr = self.addr.unwrap_or_else(|| "127.0.0.1:9464".into());
        addr.parse().map_err(|_| {
            invalid(
                "metrics.addr",
                format!("`{addr}` is not host:port"),
                "write an IP and a port, e.g. 0.0.0.0:9464",
            )
        })
    }
}

impl BatchSection {
    pub(super) fn validate(self) -> Result<BatchSettings> {
        let max_rows = positive("batch.max_rows", self.max_rows.unwrap_or(100_000))?;
        let channel_capacity = positive(
            "batch.channel_capacity",
            self.channel_capacity.unwrap_or(50_000),
        )?;
        let max_delay_ms = positive(
            "batch.max_delay_ms",
            self.max_delay_ms.unwrap_or(1000) as usize,
        )?;
        Ok(BatchSettings {
            channel_capacity: nz(channel_capacity),
            max_rows: nz(max_rows),
            max_bytes: nz(positive(
                "batch.max_bytes",
                self.max_bytes.unwrap_or(16 << 20),
            )?),
            max_delay: Duration::from_millis(max_delay_ms as u64),
            channel_bytes: nz(match self.channel_bytes.unwrap_or(16 << 20) {
                n @ 1..=MAX_CHANNEL_BYTES => n,
                n => {
                    return Err(invalid(
                        "batch.channel_bytes",
                        format!("{n} bytes is out of range"),
                        format!(
                            "set it between 1 and {MAX_CHANNEL_BYTES} (default 16777216, 16 MiB)"
                        ),
                    ))
                }
            }),
        })
    }
}

impl KeyspaceSection {
    pub(super) fn validate(self) -> Result<KeyspaceSettings> {
        Ok(KeyspaceSettings {
            configure_notifications: self.configure_notifications.unwrap_or(false),
            subscriber_buffer: nz(positive(
                "keyspace.subscriber_buffer",
                self.subscriber_buffer.unwrap_or(1 << 18),
            )?),
            read_batch: nz(positive(
                "keyspace.read_batch",
                self.read_batch.unwrap_or(1024),
            )?),
            readers: nz(match self.readers.unwrap_or(4) {
                n @ 1..=64 => n,
                n => {
                    return Err(invalid(
                        "keyspace.readers",
                        format!("{n} connections is out of range"),
                        "set it between 1 and 64 (default 4)",
                    ))
                }
            }),
            read_ttl: self.read_ttl.unwrap_or(false),
            remember_values: self.remember_values.unwrap_or(1_835_008),
            subscriber_ping: secs(
                "keyspace.subscriber_ping_secs",
                self.subscriber_ping_secs.unwrap_or(5),
                "the seconds of silence before a PING",
            )?,
            subscriber_timeout: secs(
                "keyspace.subscriber_timeout_secs",
                self.subscriber_timeout_secs.unwrap_or(15),
                "the seconds a PING may go unanswered",
            )?,
            max_value_bytes: nz(match self.max_value_bytes.unwrap_or(1 << 20) {
                n @ 1..=MAX_VALUE_BYTES => n,
                n => {
                    return Err(invalid(
                        "keyspace.max_value_bytes",
                        format!("{n} bytes is out of range"),
                        format!("set it between 1 and {MAX_VALUE_BYTES} (Redis's largest value, 512 MiB; default 1048576, 1 MiB)"),
                    ))
                }
            }),
            read_batch_bytes: nz(positive(
                "keyspace.read_batch_bytes",
                self.read_batch_bytes.unwrap_or(2 << 20),
            )?),
        })
    }
}

/// The `[observe]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ObserveSection {
    /// Seconds between two `INFO` polls of every Redis instance; default 5.
    pub interval_secs: Option<u64>,
}

/// Redis observation settings.
#[derive(Debug, Clone, Copy)]
pub struct ObserveSettings {
    /// Time between two `INFO` polls of every instance.
    pub interval: Duration,
}

impl ObserveSection {
    pub(super) fn validate(self) -> Result<ObserveSettings> {
        let secs = positive(
            "observe.interval_secs",
            self.interval_secs.unwrap_or(5) as usize,
        )?;
        Ok(ObserveSettings {
            interval: Duration::from_secs(secs as u64),
        })
    }
}

/// Largest `batch.channel_bytes`: the budget is taken in `u32` pieces.
const MAX_CHANNEL_BYTES: usize = u32::MAX as usize;

/// Largest `keyspace.max_value_bytes`: Redis's `proto-max-bulk-len` cannot exceed 512 MiB.
const MAX_VALUE_BYTES: usize = 512 << 20;

fn positive(field: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(invalid(
            field,
            "must be greater than 0".into(),
            "set a positive number or remove the line for the default",
        ))
    } else {
        Ok(v)
    }
}

/// A duration in whole seconds, at least 1 and at most a day (`what` says what it is for the fix).
fn secs(field: &str, v: u64, what: &str) -> Result<Duration> {
    match v {
        1..=86_400 => Ok(Duration::from_secs(v)),
        _ => Err(invalid(
            field,
            format!("{v} s is out of range"),
            format!("set {what} between 1 and 86400, or remove the line for the default"),
        )),
    }
}

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN)
}
