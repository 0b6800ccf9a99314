//! Pipeline definitions: the `*.toml` files in `pipelines/`, one per flow of data that Spillway
//! moves from Redis to ClickHouse.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::source::keyspace::config::KeyspaceSource;
use crate::source::replication::config::ReplicationSource;
use crate::source::stream::config::StreamSource;

/// Errors of loading a pipeline definition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PipelineError {
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
pub(crate) type Result<T> = std::result::Result<T, PipelineError>;

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
    /// Values taken from the replication stream, Spillway a replica of the instance.
    Replication(ReplicationSource),
}

impl Pipeline {
    /// The Redis instance it reads.
    pub fn instance(&self) -> &str {
        match &self.source {
            Source::Keyspace(k) => &k.instance,
            Source::Stream(s) => &s.instance,
            Source::Replication(r) => &r.instance,
        }
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

/// Parses one definition.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Pipeline> {
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
        "replication" => Source::Replication(
            fields(def.rest, ReplicationSource::check).map_err(bad)?,
        ),
        other => {
            return Err(bad(format!(
                "`source` = {other:?} is not known; fix: use \"keyspace\", \"replication\" or \"stream\""
            )))
        }
    };
    Ok(Pipeline {
        name: def.name,
        source,
    })
}

/// Loads every `*.toml` in `dir`, sorted by file name.
pub(crate) fn load_dir(dir: &Path) -> Result<Vec<Pipeline>> {
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
pub(crate) fn builtin() -> Result<Vec<Pipeline>> {
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

    #[test]
    fn stream_stall_after_defaults_parses_and_is_checked() {
        let shipped = include_str!("../pipelines/trades.toml");
        let stall_after = |text: &str| match parse(Path::new("t.toml"), text).map(|p| p.source) {
            Ok(Source::Stream(s)) => Ok(s.stall_after_secs),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(stall_after(shipped), Ok(120));
        let without: String = shipped
            .lines()
            .filter(|l| !l.starts_with("stall_after_secs"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(stall_after(&without), Ok(120), "the default");
        assert_eq!(
            stall_after(&format!("{without}stall_after_secs = 7\n")),
            Ok(7)
        );
        let e = stall_after(&format!("{without}stall_after_secs = 0\n")).unwrap_err();
        assert!(e.contains("stall_after_secs"), "{e}");
    }
}
