//! Configuration: the TOML file an operator writes, the `SPILLWAY_*` environment overrides, and
//! `validate()`, which turns both into typed [`Settings`] or an error that names the field and the fix.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::{self, Pipeline};

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for Spillway (unknown field, wrong type, ...).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, which names the field and its line.
        message: String,
    },
    /// A field holds a value Spillway cannot use.
    #[error("invalid value for `{field}`: {problem}; fix: {fix}")]
    Invalid {
        /// The field, as written in the file (or the environment variable).
        field: String,
        /// What is wrong with it (never the secret itself).
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A pipeline definition is wrong.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// The six Redis instances of the platform, by their short names.
pub const INSTANCES: [(&str, u16); 6] = [
    ("rts", 6379),
    ("ris", 6380),
    ("rtss", 6381),
    ("rtrs", 6382),
    ("rss", 6383),
    ("rls", 6384),
];

/// The config file, as written by an operator. Every field has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Redis instances by short name (`rls`, `rtrs`, `rts`, `ris`, `rtss`, `rss`).
    pub redis: RedisSection,
    /// Where rows are written.
    pub clickhouse: ClickHouseSection,
    /// The HTTP endpoint for `/metrics`, `/healthz`, `/readyz`.
    pub metrics: MetricsSection,
    /// The bounded channel and the batcher between reading and writing.
    pub batch: BatchSection,
    /// How keyspace pipelines listen and read.
    pub keyspace: KeyspaceSection,
    /// How Spillway observes the Redis instances (memory, evictions).
    pub observe: ObserveSection,
    /// Directory of pipeline definitions (`*.toml`); default `pipelines` next to the working dir,
    /// or the built-in definitions when that directory does not exist.
    pub pipelines_dir: Option<PathBuf>,
    /// Names of the pipelines to run; default all of them.
    pub pipelines: Option<Vec<String>>,
    /// How long a graceful shutdown may take before Spillway exits anyway, in seconds.
    pub shutdown_timeout_secs: Option<u64>,
}

/// One Redis instance.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisInstance {
    /// `redis://` or `rediss://` URL, credentials allowed.
    pub url: String,
}

/// The `[redis.*]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
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
pub struct ClickHouseSection {
    /// HTTP URL of ClickHouse, default `http://127.0.0.1:8123`.
    pub url: Option<String>,
    /// User, default `default`.
    pub user: Option<String>,
    /// Password, default empty.
    pub password: Option<String>,
    /// Database, default `spillway`; created when missing.
    pub database: Option<String>,
    /// Seconds to wait for one INSERT before it counts as failed, default 60.
    pub insert_timeout_secs: Option<u64>,
}

/// The `[metrics]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// host:port to listen on, default `127.0.0.1:9464`.
    pub addr: Option<String>,
}

/// The `[batch]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSection {
    /// Capacity of the channel between readers and the writer, in rows; default 50000.
    pub channel_capacity: Option<usize>,
    /// Flush when this many rows are buffered; default 100000.
    pub max_rows: Option<usize>,
    /// Flush when the buffered rows reach this many bytes (RowBinary estimate); default 32 MiB.
    pub max_bytes: Option<usize>,
    /// Flush at the latest this many milliseconds after the first buffered row; default 1000.
    pub max_delay_ms: Option<u64>,
}

/// The `[keyspace]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyspaceSection {
    /// Let Spillway add the missing `notify-keyspace-events` flags itself with `CONFIG SET`;
    /// default false (Spillway then fails at start and prints the line to run).
    pub configure_notifications: Option<bool>,
    /// Notifications of a pipeline's keys queued while values are read back (memory is taken
    /// only as the queue fills); beyond it they are counted as lost and a rescan follows.
    /// Default 262144.
    pub subscriber_buffer: Option<usize>,
    /// Most keys read back in one pipelined round trip; default 1024.
    pub read_batch: Option<usize>,
}

/// Validated, typed settings: what the rest of Spillway runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis URLs by instance short name (only the configured or defaulted ones).
    pub redis: Vec<(String, String)>,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseSettings,
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    /// Channel and batcher.
    pub batch: BatchSettings,
    /// Keyspace reading.
    pub keyspace: KeyspaceSettings,
    /// Redis observation.
    pub observe: ObserveSettings,
    /// The pipelines to run.
    pub pipelines: Vec<Pipeline>,
    /// Deadline of a graceful shutdown.
    pub shutdown_timeout: Duration,
}

/// ClickHouse connection settings.
#[derive(Clone)]
pub struct ClickHouseSettings {
    /// HTTP URL.
    pub url: String,
    /// User.
    pub user: String,
    /// Password (never printed).
    pub password: String,
    /// Database.
    pub database: String,
    /// Per-insert timeout.
    pub insert_timeout: Duration,
}

impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .finish()
    }
}

/// Channel and batcher settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Channel capacity in rows.
    pub channel_capacity: NonZeroUsize,
    /// Flush threshold in rows.
    pub max_rows: NonZeroUsize,
    /// Flush threshold in bytes.
    pub max_bytes: NonZeroUsize,
    /// Flush deadline after the first buffered row.
    pub max_delay: Duration,
}

/// Keyspace reading settings.
#[derive(Debug, Clone, Copy)]
pub struct KeyspaceSettings {
    /// Whether Spillway may `CONFIG SET notify-keyspace-events` itself.
    pub configure_notifications: bool,
    /// fred's pub/sub broadcast capacity.
    pub subscriber_buffer: NonZeroUsize,
    /// Keys per pipelined read.
    pub read_batch: NonZeroUsize,
}

impl FileConfig {
    /// Reads and parses a config file (no validation yet).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })
    }

    /// Applies the `SPILLWAY_*` environment overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for (name, _) in INSTANCES {
            if let Some(url) = get(&format!("SPILLWAY_{}_URL", name.to_uppercase())) {
                *self.redis.slot(name) = Some(RedisInstance { url });
            }
        }
        let ch = &mut self.clickhouse;
        for (var, slot) in [
            ("SPILLWAY_CLICKHOUSE_URL", &mut ch.url),
            ("SPILLWAY_CLICKHOUSE_USER", &mut ch.user),
            ("SPILLWAY_CLICKHOUSE_PASSWORD", &mut ch.password),
            ("SPILLWAY_CLICKHOUSE_DATABASE", &mut ch.database),
            ("SPILLWAY_METRICS_ADDR", &mut self.metrics.addr),
        ] {
            if let Some(v) = get(var) {
                *slot = Some(v);
            }
        }
    }

    /// Checks every field and returns typed settings, loading the pipelines from `pipelines_dir`
    /// (relative to `base`, the config file's directory), else from `./pipelines` when it exists,
    /// else the built-in ones.
    pub fn validate(self, base: &Path) -> Result<Settings> {
        let redis = self.redis.urls()?;
        let clickhouse = self.clickhouse.validate()?;
        let metrics_addr = self.metrics.validate()?;
        let batch = self.batch.validate()?;
        let keyspace = self.keyspace.validate()?;
        let observe = self.observe.validate()?;
        let mut pipelines = match &self.pipelines_dir {
            Some(dir) => pipeline::load_dir(&base.join(dir))?,
            None if Path::new("pipelines").is_dir() => pipeline::load_dir(Path::new("pipelines"))?,
            None => pipeline::builtin()?,
        };
        if let Some(names) = &self.pipelines {
            if let Some(unknown) = names
                .iter()
                .find(|n| !pipelines.iter().any(|p| &p.name == *n))
            {
                let known: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
                return Err(invalid(
                    "pipelines",
                    format!("no pipeline is named {unknown:?}"),
                    format!("use some of {known:?}, or remove the line to run them all"),
                ));
            }
            pipelines.retain(|p| names.contains(&p.name));
        }
        for p in &pipelines {
            if !redis.iter().any(|(name, _)| name == p.instance()) {
                return Err(invalid(
                    &format!("pipeline {}: instance", p.name),
                    format!("instance `{}` has no URL", p.instance()),
                    format!(
                        "add [redis.{}] url = \"redis://...\" or set SPILLWAY_{}_URL",
                        p.instance(),
                        p.instance().to_uppercase()
                    ),
                ));
            }
        }
        Ok(Settings {
            redis,
            clickhouse,
            metrics_addr,
            batch,
            keyspace,
            observe,
            pipelines,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs.unwrap_or(30)),
        })
    }
}

impl RedisSection {
    fn slot(&mut self, name: &str) -> &mut Option<RedisInstance> {
        match name {
            "rts" => &mut self.rts,
            "ris" => &mut self.ris,
            "rtss" => &mut self.rtss,
            "rtrs" => &mut self.rtrs,
            "rss" => &mut self.rss,
            _ => &mut self.rls,
        }
    }

    /// The URL of every instance: configured, or the contract's default port on 127.0.0.1.
    fn urls(mut self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (name, port) in INSTANCES {
            let url = match self.slot(name).take() {
                Some(i) => i.url,
                None => format!("redis://127.0.0.1:{port}"),
            };
            check_redis_url(&format!("redis.{name}.url"), &url)?;
            out.push((name.to_string(), url));
        }
        Ok(out)
    }
}

fn check_redis_url(field: &str, url: &str) -> Result<()> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => Ok(()),
        Ok(u) => Err(invalid(
            field,
            format!(
                "`{}` is not a redis:// or rediss:// URL with a host",
                redact_url(u.as_str())
            ),
            "write it as redis://[user:password@]host:port[/db]",
        )),
        Err(e) => Err(invalid(
            field,
            format!("not a URL ({e})"),
            "write it as redis://[user:password@]host:port[/db]",
        )),
    }
}

impl ClickHouseSection {
    fn validate(self) -> Result<ClickHouseSettings> {
        let url = self.url.unwrap_or_else(|| "http://127.0.0.1:8123".into());
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(invalid(
                    "clickhouse.url",
                    format!("`{}` is not an http:// or https:// URL", redact_url(&url)),
                    "give the HTTP interface, e.g. http://127.0.0.1:8123",
                ))
            }
        }
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
        Ok(ClickHouseSettings {
            url,
            user: self.user.unwrap_or_else(|| "default".into()),
            password: self.password.unwrap_or_default(),
            database,
            insert_timeout: Duration::from_secs(positive(
                "clickhouse.insert_timeout_secs",
                self.insert_timeout_secs.unwrap_or(60) as usize,
            )? as u64),
        })
    }
}

impl MetricsSection {
    fn validate(self) -> Result<SocketAddr> {
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
    fn validate(self) -> Result<BatchSettings> {
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
                self.max_bytes.unwrap_or(32 << 20),
            )?),
            max_delay: Duration::from_millis(max_delay_ms as u64),
        })
    }
}

impl KeyspaceSection {
    fn validate(self) -> Result<KeyspaceSettings> {
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
        })
    }
}

/// The `[observe]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObserveSection {
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
    fn validate(self) -> Result<ObserveSettings> {
        let secs = positive(
            "observe.interval_secs",
            self.interval_secs.unwrap_or(5) as usize,
        )?;
        Ok(ObserveSettings {
            interval: Duration::from_secs(secs as u64),
        })
    }
}

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

fn nz(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN)
}

pub(crate) fn invalid(field: &str, problem: String, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem,
        fix: fix.into(),
    }
}

/// A URL with its password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn empty_config_uses_contract_defaults() {
        let s = FileConfig::from_toml("")
            .unwrap()
            .validate(&base())
            .unwrap();
        assert_eq!(s.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(s.clickhouse.database, "spillway");
        let rls = s.redis.iter().find(|(n, _)| n == "rls").unwrap();
        assert_eq!(rls.1, "redis://127.0.0.1:6384");
        assert_eq!(s.redis.len(), 6);
        assert!(!s.pipelines.is_empty());
    }

    #[test]
    fn env_overrides_file() {
        let mut c = FileConfig::from_toml("[redis.rls]\nurl = \"redis://a:1\"\n").unwrap();
        c.apply_env(|k| match k {
            "SPILLWAY_RLS_URL" => Some("redis://:pw@b:2".into()),
            "SPILLWAY_CLICKHOUSE_DATABASE" => Some("archive".into()),
            "SPILLWAY_METRICS_ADDR" => Some("0.0.0.0:1234".into()),
            _ => None,
        });
        let s = c.validate(&base()).unwrap();
        assert_eq!(
            s.redis.iter().find(|(n, _)| n == "rls").unwrap().1,
            "redis://:pw@b:2"
        );
        assert_eq!(s.clickhouse.database, "archive");
        assert_eq!(s.metrics_addr.port(), 1234);
    }

    #[test]
    fn pipelines_can_be_chosen() {
        let s = FileConfig::from_toml("pipelines = [\"alerts\"]\n")
            .unwrap()
            .validate(&base())
            .unwrap();
        assert_eq!(
            s.pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["alerts"]
        );
        let e = FileConfig::from_toml("pipelines = [\"alertz\"]\n")
            .unwrap()
            .validate(&base())
            .unwrap_err();
        assert!(
            e.to_string().contains("alertz") && e.to_string().contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = FileConfig::from_toml("[batch]\nmax_rowz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_rowz"), "{e}");
    }

    #[test]
    fn bad_values_name_field_and_fix() {
        for (text, field) in [
            ("[batch]\nmax_rows = 0\n", "batch.max_rows"),
            ("[observe]\ninterval_secs = 0\n", "observe.interval_secs"),
            ("[metrics]\naddr = \"nowhere\"\n", "metrics.addr"),
            ("[clickhouse]\nurl = \"tcp://x\"\n", "clickhouse.url"),
            ("[clickhouse]\ndatabase = \"a;b\"\n", "clickhouse.database"),
            ("[redis.rls]\nurl = \"localhost:6384\"\n", "redis.rls.url"),
        ] {
            let e = FileConfig::from_toml(text)
                .unwrap()
                .validate(&base())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("fix:"), "{text}: {e}");
        }
    }

    #[test]
    fn secrets_never_printed() {
        let e = FileConfig::from_toml("[redis.rls]\nurl = \"http://u:hunter2@x\"\n")
            .unwrap()
            .validate(&base())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let mut c = FileConfig::default();
        c.apply_env(|k| (k == "SPILLWAY_CLICKHOUSE_PASSWORD").then(|| "hunter2".to_string()));
        let s = c.validate(&base()).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(redact_url("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
    }
}
