//! Pipeline definitions: the `*.toml` files in `pipelines/`, one per flow of data that Spillway
//! moves from Redis to ClickHouse.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors of loading a pipeline definition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The directory or a file could not be read.
    #[error("cannot read pipeline definitions at {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a valid definition.
    #[error("invalid pipeline definition {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field and the fix.
        message: String,
    },
    /// No pipelines were found.
    #[error("no pipeline definitions (*.toml) in {0}; fix: add one, e.g. a copy of pipelines/alerts.toml")]
    Empty(PathBuf),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PipelineError>;

/// The definitions shipped with Spillway, used when no `pipelines/` directory exists.
const BUILTIN: &[(&str, &str)] = &[
    ("alerts.toml", include_str!("../pipelines/alerts.toml")),
    ("trades.toml", include_str!("../pipelines/trades.toml")),
];

/// One pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Name, used as the `pipeline` label of metrics.
    pub name: String,
    /// What it reads.
    pub source: Source,
}

/// The source of a pipeline.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Source {
    /// Values captured on keyspace notifications.
    Keyspace(KeyspaceSource),
    /// Entries of a Redis stream read by a consumer group (trade close).
    Stream(StreamSource),
}

impl Pipeline {
    /// The Redis instance it reads.
    pub fn instance(&self) -> &str {
        match &self.source {
            Source::Keyspace(k) => &k.instance,
            Source::Stream(s) => &s.instance,
        }
    }
}

/// A keyspace pipeline (alerts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSource {
    /// Redis instance short name.
    pub instance: String,
    /// Database number.
    #[serde(default)]
    pub db: u8,
    /// Redis glob of the keys (`*`, `?` and `\` escapes).
    pub pattern: String,
    /// Prefix stripped from the key to make the default id.
    #[serde(default)]
    pub id_prefix: String,
    /// Keyevents that carry a new value.
    pub write_events: Vec<String>,
    /// Keyevents recorded as lifecycle rows.
    #[serde(default)]
    pub lifecycle_events: Vec<String>,
    /// Scan the pattern at start.
    #[serde(default = "yes")]
    pub rescan_on_start: bool,
    /// Scan the pattern again every this many seconds (0: never); default 300.
    #[serde(default = "five_minutes")]
    pub rescan_interval_secs: u64,
}

fn five_minutes() -> u64 {
    300
}

fn yes() -> bool {
    true
}

/// A stream pipeline (trade close): `trade_results` entries read by a consumer group; on a
/// close, the trade's execution log moves from the log instance to ClickHouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSource {
    /// Redis instance of the stream (short name).
    pub instance: String,
    /// Database number of the stream's instance.
    #[serde(default)]
    pub db: u8,
    /// The stream key.
    pub stream: String,
    /// Consumer group, created when missing.
    pub group: String,
    /// This consumer's name; keep it stable across restarts so its pending entries are resumed.
    pub consumer: String,
    /// Where a new group starts: `0` (the whole stream) or `$` (new entries only).
    #[serde(default = "zero")]
    pub start_id: String,
    /// Entries per XREADGROUP.
    #[serde(default = "default_count")]
    pub count: u64,
    /// How long one XREADGROUP blocks, ms.
    #[serde(default = "default_block")]
    pub block_ms: u64,
    /// Entries pending longer than this (a dead consumer's) are claimed, s.
    #[serde(default = "default_claim")]
    pub claim_idle_secs: u64,
    /// Events archived as rows of `trades`; other events are acknowledged and counted.
    pub archive_events: Vec<String>,
    /// Events that move the execution log (a subset of `archive_events`).
    pub move_log_on: Vec<String>,
    /// Redis instance of the execution logs.
    pub log_instance: String,
    /// Database number of the log instance.
    #[serde(default)]
    pub log_db: u8,
    /// Log key = this prefix + trade id.
    pub log_key_prefix: String,
    /// After commit: `delete` the log key, or `expire` it after `expire_grace_secs`.
    #[serde(default = "delete")]
    pub after_commit: String,
    /// Grace period for `after_commit = "expire"`, s.
    #[serde(default = "default_grace")]
    pub expire_grace_secs: u64,
    /// Pub/sub channel with close messages (at-most-once, a second trigger); empty: none.
    #[serde(default)]
    pub pubsub_channel: String,
}

fn zero() -> String {
    "0".into()
}
fn default_count() -> u64 {
    500
}
fn default_block() -> u64 {
    1000
}
fn default_claim() -> u64 {
    60
}
fn delete() -> String {
    "delete".into()
}
fn default_grace() -> u64 {
    300
}

impl StreamSource {
    fn check(&self) -> std::result::Result<(), String> {
        for (field, v) in [
            ("stream", &self.stream),
            ("group", &self.group),
            ("consumer", &self.consumer),
            ("log_key_prefix", &self.log_key_prefix),
        ] {
            if v.is_empty() {
                return Err(format!(
                    "`{field}` is empty; fix: set it (see pipelines/trades.toml)"
                ));
            }
        }
        if self.count == 0 || self.block_ms == 0 {
            return Err("`count` and `block_ms` must be greater than 0".into());
        }
        if let Some(e) = self
            .move_log_on
            .iter()
            .find(|e| !self.archive_events.contains(e))
        {
            return Err(format!(
                "`move_log_on` has {e:?}, which is not in `archive_events`; fix: add it there"
            ));
        }
        if !matches!(self.after_commit.as_str(), "delete" | "expire") {
            return Err(format!(
                "`after_commit` = {:?}; fix: use \"delete\" or \"expire\"",
                self.after_commit
            ));
        }
        Ok(())
    }
}

/// The file format: `name`, `source` and the source's own fields.
#[derive(Debug, Deserialize)]
struct FileDef {
    name: String,
    source: String,
    #[serde(flatten)]
    rest: toml::Table,
}

/// Lifecycle events Spillway knows, with the name it records.
pub const LIFECYCLE: [(&str, &str); 3] = [
    ("expired", "expired"),
    ("evicted", "evicted"),
    ("del", "deleted"),
];

/// Write events whose key holds a string value afterwards.
pub const WRITE_EVENTS: [&str; 8] = [
    "set",
    "setrange",
    "append",
    "incrby",
    "incrbyfloat",
    "getset",
    "getex",
    "restore",
];

/// Parses one definition.
pub fn parse(path: &Path, text: &str) -> Result<Pipeline> {
    let bad = |message: String| PipelineError::Invalid {
        path: path.to_owned(),
        message,
    };
    let def: FileDef = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if def.name.is_empty()
        || !def
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad(format!(
            "`name` = {:?}: use letters, digits, '-' and '_' only",
            def.name
        )));
    }
    // The source's own fields, parsed into `T` and checked.
    fn fields<T: serde::de::DeserializeOwned>(
        rest: toml::Table,
        check: fn(&T) -> std::result::Result<(), String>,
    ) -> std::result::Result<T, String> {
        let t: T = rest
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        check(&t)?;
        Ok(t)
    }
    let source = match def.source.as_str() {
        "keyspace" => Source::Keyspace(fields(def.rest, KeyspaceSource::check).map_err(bad)?),
        "stream" => Source::Stream(fields(def.rest, StreamSource::check).map_err(bad)?),
        other => {
            return Err(bad(format!(
                "`source` = {other:?} is not known; fix: use \"keyspace\" or \"stream\""
            )))
        }
    };
    Ok(Pipeline {
        name: def.name,
        source,
    })
}

impl KeyspaceSource {
    fn check(&self) -> std::result::Result<(), String> {
        if self.pattern.is_empty() || self.pattern.contains('[') {
            return Err(format!(
                "`pattern` = {:?}: use a non-empty glob with `*`, `?` (character classes are not supported)",
                self.pattern
            ));
        }
        if self.write_events.is_empty() {
            return Err("`write_events` is empty; fix: write_events = [\"set\"]".into());
        }
        for e in &self.write_events {
            if !WRITE_EVENTS.contains(&e.as_str()) {
                return Err(format!(
                    "`write_events` has {e:?}; fix: use some of {WRITE_EVENTS:?}"
                ));
            }
        }
        for e in &self.lifecycle_events {
            if !LIFECYCLE.iter().any(|(n, _)| n == e) {
                let known: Vec<_> = LIFECYCLE.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "`lifecycle_events` has {e:?}; fix: use some of {known:?}"
                ));
            }
        }
        Ok(())
    }

    /// Whether `key` matches the pattern.
    pub fn matches(&self, key: &[u8]) -> bool {
        glob_match(self.pattern.as_bytes(), key)
    }
}

/// Redis-style glob match with `*`, `?` and `\` escapes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None, 0);
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_t = t;
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some(&c) => {
                let (lit, step) = if c == b'\\' && p + 1 < pattern.len() {
                    (pattern[p + 1], 2)
                } else {
                    (c, 1)
                };
                if lit == text[t] {
                    p += step;
                    t += 1;
                    continue;
                }
            }
            None => {}
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_t += 1;
                t = star_t;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Loads every `*.toml` in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Pipeline>> {
    let read = |source| PipelineError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| PipelineError::Read {
            path: f.clone(),
            source,
        })?;
        out.push(parse(&f, &text)?);
    }
    if out.is_empty() {
        return Err(PipelineError::Empty(dir.to_owned()));
    }
    check_unique(&out, dir)?;
    Ok(out)
}

/// The built-in definitions (copies of the repository's `pipelines/`).
pub fn builtin() -> Result<Vec<Pipeline>> {
    BUILTIN
        .iter()
        .map(|(name, text)| parse(Path::new(name), text))
        .collect()
}

fn check_unique(pipelines: &[Pipeline], dir: &Path) -> Result<()> {
    for (i, p) in pipelines.iter().enumerate() {
        if pipelines[..i].iter().any(|q| q.name == p.name) {
            return Err(PipelineError::Invalid {
                path: dir.to_owned(),
                message: format!(
                    "two pipelines are named {:?}; fix: give each a unique `name`",
                    p.name
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_pipeline_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let all = load_dir(&dir).unwrap();
        assert!(all.iter().any(|p| p.name == "alerts"));
        assert!(all
            .iter()
            .any(|p| p.name == "trades" && matches!(p.source, Source::Stream(_))));
        assert_eq!(builtin().unwrap().len(), BUILTIN.len());
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"alert:*", b"alert:1"));
        assert!(glob_match(b"alert:*", b"alert:"));
        assert!(!glob_match(b"alert:*", b"alerts:1"));
        assert!(glob_match(b"a?c*d", b"abcxxd"));
        assert!(!glob_match(b"a?c*d", b"abcxxe"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*:*:x", b"a:b:c:x"));
    }

    #[test]
    fn errors_name_field() {
        let base =
            "name = \"a\"\nsource = \"keyspace\"\ninstance = \"rls\"\npattern = \"alert:*\"\n";
        for (extra, field) in [
            ("write_events = []\n", "write_events"),
            ("write_events = [\"zap\"]\n", "write_events"),
            (
                "write_events = [\"set\"]\nlifecycle_events = [\"x\"]\n",
                "lifecycle_events",
            ),
            ("write_events = [\"set\"]\ncolour = 1\n", "colour"),
        ] {
            let e = parse(Path::new("t.toml"), &format!("{base}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
        let e = parse(Path::new("t.toml"), "name = \"a\"\nsource = \"kafka\"\n").unwrap_err();
        assert!(e.to_string().contains("source"));
    }
}
