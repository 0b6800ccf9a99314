//! Configuration: the TOML file an operator writes, the `SPILLWAY_*` environment overrides, and
//! `validate()`, which turns both into typed [`Settings`] or an error that names the field and the fix.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::{self, Pipeline};

mod cluster;
mod effective;
mod sections;
mod tls;
pub(crate) use cluster::validate as validate_cluster;
pub(crate) use cluster::ClusterSettings;
#[cfg(test)]
pub(crate) use cluster::{DEFAULT_REPLICA_NAME, DEFAULT_ZOOKEEPER_PATH};
pub(crate) use sections::*;
pub(crate) use tls::ClickHouseTls;

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
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
pub(crate) type Result<T> = std::result::Result<T, ConfigError>;

/// The six Redis instances of the platform, by their short names.
pub(crate) const INSTANCES: [(&str, u16); 6] = [
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
pub(crate) struct FileConfig {
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

/// Validated, typed settings: what the rest of Spillway runs on.
#[derive(Clone)]
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
    /// Where their definitions were read from, when configured.
    pub pipelines_dir: Option<PathBuf>,
    /// Deadline of a graceful shutdown.
    pub shutdown_timeout: Duration,
    /// The files the Redis passwords were read from (ClickHouse's: `clickhouse.password_file`).
    pub secret_files: SecretFiles,
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
    /// The file it was read from, if any.
    pub password_file: Option<PathBuf>,
    /// Database.
    pub database: String,
    /// Whether a dropped table or database is created again while running.
    pub recreate_tables: bool,
    /// Per-insert timeout.
    pub insert_timeout: Duration,
    /// Whether inserts are sent LZ4-compressed.
    pub compression: bool,
    /// Days rows are kept (a TTL), if limited.
    pub retention_days: Option<u32>,
    /// CA and client certificate for `https://` URLs.
    pub tls: ClickHouseTls,
    /// The cluster written to, if any (replicated local tables behind `Distributed` ones).
    pub cluster: Option<ClusterSettings>,
}

/// As derived, with the Redis URLs' passwords redacted (`check-config` prints this).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redis: Vec<(&str, String)> = self
            .redis
            .iter()
            .map(|(name, url)| (name.as_str(), redact_url(url)))
            .collect();
        f.debug_struct("Settings")
            .field("redis", &redis)
            .field("clickhouse", &self.clickhouse)
            .field("metrics_addr", &self.metrics_addr)
            .field("batch", &self.batch)
            .field("keyspace", &self.keyspace)
            .field("observe", &self.observe)
            .field("pipelines", &self.pipelines)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("compression", &self.compression)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
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
    /// Channel budget in bytes (RowBinary).
    pub channel_bytes: NonZeroUsize,
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
    /// Connections reading values back.
    pub readers: NonZeroUsize,
    /// Whether each value's remaining TTL is read with it.
    pub read_ttl: bool,
    /// (key, content) pairs each keyspace pipeline remembers as archived.
    pub remember_values: usize,
    /// Silence on the subscriber connection after which it is sent a PING.
    pub subscriber_ping: Duration,
    /// How long after that PING nothing may arrive before the connection counts as dead.
    pub subscriber_timeout: Duration,
    /// Largest value archived; larger ones become `too_large` dead letters.
    pub max_value_bytes: NonZeroUsize,
    /// Bytes of values a reader holds before handing them to the capture stage.
    pub read_batch_bytes: NonZeroUsize,
}

impl FileConfig {
    /// Reads and parses a config file (no validation yet).
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
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
    pub(crate) fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })
    }

    /// Applies the `SPILLWAY_*` environment overrides read through `get`.
    ///
    /// Every variable may instead be given as `<NAME>_FILE`, the path of a file holding the value
    /// (a mounted Secret, a systemd credential); one trailing newline (`\n` or `\r\n`) is trimmed.
    /// `SPILLWAY_<INSTANCE>_PASSWORD` (or `_FILE`) puts a password into that instance's URL, so a
    /// Redis password can live in its own secret. Errors name the variable and the path, never
    /// the value.
    pub(crate) fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        for (name, port) in INSTANCES {
            let upper = name.to_uppercase();
            if let Some(url) = env_value(&get, &format!("SPILLWAY_{upper}_URL"))? {
                // The URL only: a password_file of the file still applies.
                self.redis
                    .slot(name)
                    .get_or_insert_with(Default::default)
                    .url = Some(url);
            }
            let var = format!("SPILLWAY_{upper}_PASSWORD");
            if let Some(password) = env_value(&get, &var)? {
                let slot = self.redis.slot(name);
                // The variable wins over a password_file of the file.
                let url = slot
                    .take()
                    .and_then(|i: RedisInstance| i.url)
                    .unwrap_or_else(|| format!("redis://127.0.0.1:{port}"));
                let url = with_password(&url, &password).ok_or_else(|| {
                    invalid(
                        &var,
                        format!("the URL of {name} cannot carry a password"),
                        format!("set SPILLWAY_{upper}_URL to a redis:// or rediss:// URL"),
                    )
                })?;
                *slot = Some(RedisInstance {
                    url: Some(url),
                    password_file: None,
                });
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
            if let Some(v) = env_value(&get, var)? {
                *slot = Some(v);
            }
        }
        // SPILLWAY_CLICKHOUSE_PASSWORD wins over a password_file of the file.
        if self.clickhouse.password.is_some() {
            self.clickhouse.password_file = None;
        }
        Ok(())
    }

    /// Checks every field and returns typed settings, loading the pipelines from `pipelines_dir`
    /// (relative to `base`, the config file's directory), else from `./pipelines` when it exists,
    /// else the built-in ones.
    pub(crate) fn validate(self, base: &Path) -> Result<Settings> {
        let (redis, secret_files) = self.redis.urls(base)?;
        let clickhouse = self.clickhouse.validate(base)?;
        let metrics_addr = self.metrics.validate()?;
        let batch = self.batch.validate()?;
        let keyspace = self.keyspace.validate()?;
        let observe = self.observe.validate()?;
        let pipelines_dir = self.pipelines_dir.as_ref().map(|d| base.join(d));
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
            pipelines_dir,
            secret_files,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs.unwrap_or(30)),
        })
    }
}

/// The value of `var`, or the content of the file `<var>_FILE` names (one trailing newline
/// trimmed); both set is an error, since which one wins would be a guess.
fn env_value(get: &impl Fn(&str) -> Option<String>, var: &str) -> Result<Option<String>> {
    let file_var = format!("{var}_FILE");
    match (get(var), get(&file_var)) {
        (Some(_), Some(_)) => Err(invalid(
            var,
            format!("both {var} and {file_var} are set"),
            format!("unset one of {var} and {file_var}"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => read_secret(&file_var, Path::new(&path)).map(Some),
        (None, None) => Ok(None),
    }
}

/// `url` with its password set to `password` (percent-encoded); `None` if it is not a URL with a host.
pub(crate) fn with_password(url: &str, password: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_password(Some(password)).ok()?;
    Some(u.to_string())
}

pub(crate) fn invalid(field: &str, problem: String, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem,
        fix: fix.into(),
    }
}

/// A URL with its password replaced by `***`, for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
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
        })
        .unwrap();
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
            ("[keyspace]\nreaders = 0\n", "keyspace.readers"),
            ("[keyspace]\nreaders = 65\n", "keyspace.readers"),
            (
                "[keyspace]\nsubscriber_ping_secs = 0\n",
                "keyspace.subscriber_ping_secs",
            ),
            (
                "[keyspace]\nsubscriber_timeout_secs = 0\n",
                "keyspace.subscriber_timeout_secs",
            ),
            (
                "[keyspace]\nsubscriber_timeout_secs = 100000\n",
                "keyspace.subscriber_timeout_secs",
            ),
            (
                "[keyspace]\nmax_value_bytes = 0\n",
                "keyspace.max_value_bytes",
            ),
            (
                "[keyspace]\nmax_value_bytes = 536870913\n",
                "keyspace.max_value_bytes",
            ),
            (
                "[keyspace]\nread_batch_bytes = 0\n",
                "keyspace.read_batch_bytes",
            ),
            ("[batch]\nchannel_bytes = 0\n", "batch.channel_bytes"),
            (
                "[batch]\nchannel_bytes = 4294967296\n",
                "batch.channel_bytes",
            ),
            ("[metrics]\naddr = \"nowhere\"\n", "metrics.addr"),
            ("[clickhouse]\nurl = \"tcp://x\"\n", "clickhouse.url"),
            ("[clickhouse]\ndatabase = \"a;b\"\n", "clickhouse.database"),
            (
                "[clickhouse]\ncompression = \"zstd\"\n",
                "clickhouse.compression",
            ),
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
    fn compression_auto_is_off_only_on_this_host() {
        let compressed = |text: &str| {
            FileConfig::from_toml(text)
                .unwrap()
                .validate(&base())
                .unwrap()
                .clickhouse
                .compression
        };
        for (url, on) in [
            ("http://127.0.0.1:8123", false),
            ("http://localhost:8123", false),
            ("http://[::1]:8123", false),
            ("http://10.0.0.7:8123", true),
            ("https://ch.example.com", true),
        ] {
            let text = format!("[clickhouse]\nurl = \"{url}\"\n");
            assert_eq!(compressed(&text), on, "{url}");
            assert!(
                compressed(&format!("{text}compression = \"lz4\"\n")),
                "{url}"
            );
            assert!(
                !compressed(&format!("{text}compression = \"none\"\n")),
                "{url}"
            );
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
        c.apply_env(|k| (k == "SPILLWAY_CLICKHOUSE_PASSWORD").then(|| "hunter2".to_string()))
            .unwrap();
        let s = c.validate(&base()).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let mut c = FileConfig::default();
        c.apply_env(|k| (k == "SPILLWAY_RLS_PASSWORD").then(|| "hunter2".to_string()))
            .unwrap();
        let s = c.validate(&base()).unwrap();
        assert!(!format!("{s:#?}").contains("hunter2"), "{s:#?}");
        assert!(format!("{s:#?}").contains("redis://:***@127.0.0.1:6384"));
        assert_eq!(redact_url("redis://u:hunter2@h:1/0"), "redis://u:***@h:1/0");
    }

    #[test]
    fn file_variables_read_secrets_and_trim_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let (ch_pw, rls_url, rtrs_pw, db) = (
            file("ch", "s3cret p@ss\n"),
            file("rls", "redis://:hunter2@rls.example:6384/0\r\n"),
            file("rtrs", "p@ss/word\n"),
            file("db", "archive\n\n"),
        );
        let mut c = FileConfig::from_toml("[redis.rtrs]\nurl = \"redis://r:6382\"\n").unwrap();
        c.apply_env(|k| match k {
            "SPILLWAY_CLICKHOUSE_PASSWORD_FILE" => Some(ch_pw.clone()),
            "SPILLWAY_RLS_URL_FILE" => Some(rls_url.clone()),
            "SPILLWAY_RTRS_PASSWORD_FILE" => Some(rtrs_pw.clone()),
            "SPILLWAY_RSS_PASSWORD" => Some("pw".into()),
            "SPILLWAY_CLICKHOUSE_DATABASE_FILE" => Some(db.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.clickhouse.password.as_deref(), Some("s3cret p@ss"));
        // Only one newline goes: a value ending in a newline keeps the others.
        assert_eq!(c.clickhouse.database.as_deref(), Some("archive\n"));
        let s = FileConfig {
            clickhouse: ClickHouseSection::default(),
            ..c
        }
        .validate(&base())
        .unwrap();
        let url = |name: &str| s.redis.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(url("rls"), "redis://:hunter2@rls.example:6384/0");
        assert_eq!(url("rtrs"), "redis://:p%40ss%2Fword@r:6382");
        assert_eq!(url("rss"), "redis://:pw@127.0.0.1:6383");
        assert_eq!(url("rts"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn file_variable_errors_name_the_variable_never_the_value() {
        let mut c = FileConfig::default();
        let e = c
            .apply_env(|k| {
                (k == "SPILLWAY_CLICKHOUSE_PASSWORD_FILE").then(|| "/nonexistent/pw".into())
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SPILLWAY_CLICKHOUSE_PASSWORD_FILE")
                && e.contains("/nonexistent/pw")
                && e.contains("fix:"),
            "{e}"
        );
        let e = c
            .apply_env(|k| match k {
                "SPILLWAY_CLICKHOUSE_PASSWORD" => Some("hunter2".into()),
                "SPILLWAY_CLICKHOUSE_PASSWORD_FILE" => Some("/run/secrets/pw".into()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("both") && !e.contains("hunter2"), "{e}");
        let e = c
            .apply_env(|k| match k {
                "SPILLWAY_RLS_URL" => Some("not a url".into()),
                "SPILLWAY_RLS_PASSWORD" => Some("hunter2".into()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SPILLWAY_RLS_PASSWORD") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
