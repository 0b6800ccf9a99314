//! The replication source's definition (a `source = "replication"` pipeline file): which
//! instance and keys, which lifecycle events are named, and the name it shows Redis.

use serde::Deserialize;

use crate::source::keyspace::config::{KeyspaceSource, Nodes, LIFECYCLE};

/// A replication pipeline (alerts captured from the replication stream).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSource {
    /// Redis instance short name: the primary, or one of its replicas (to spare the primary).
    pub instance: String,
    /// Database number.
    #[serde(default)]
    pub db: u8,
    /// Redis glob of the keys (`*`, `?` and `\` escapes).
    pub pattern: String,
    /// Prefix stripped from the key to make the default id.
    #[serde(default)]
    pub id_prefix: String,
    /// Lifecycle events recorded as rows: a `DEL` or `UNLINK` of a matching key in the
    /// stream is named by its keyevent notification (`expired`, `evicted`, `del`) when one of
    /// these is subscribed to and arrives; otherwise it is recorded as `deleted`. Empty: no
    /// lifecycle rows, no subscriber.
    #[serde(default = "lifecycle")]
    pub lifecycle_events: Vec<String>,
    /// The name Spillway gives itself as a replica (`REPLCONF ip-address`): what
    /// `INFO replication` shows as the replica's `ip`, with `port=0` (no listening port, so no
    /// failover tool can pick it to promote).
    #[serde(default = "replica_name")]
    pub replica_name: String,
    /// The keyspace source's own settings, accepted and unused, so that a keyspace pipeline
    /// file becomes a replication one by its `source` line alone.
    #[serde(default, rename = "write_events")]
    _write_events: Option<toml::Value>,
    #[serde(default, rename = "rescan_on_start")]
    _rescan_on_start: Option<toml::Value>,
    #[serde(default, rename = "rescan_interval_secs")]
    _rescan_interval_secs: Option<toml::Value>,
    #[serde(default, rename = "rescan_keys_per_sec")]
    _rescan_keys_per_sec: Option<toml::Value>,
    #[serde(default, rename = "nodes")]
    _nodes: Option<toml::Value>,
}

fn lifecycle() -> Vec<String> {
    LIFECYCLE.iter().map(|(n, _)| n.to_string()).collect()
}

fn replica_name() -> String {
    "spillway".into()
}

impl ReplicationSource {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        self.keyspace().check()?;
        if self.replica_name.is_empty()
            || self.replica_name.len() > 40
            || !self
                .replica_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "`replica_name` = {:?}; fix: 1 to 40 letters, digits, '-', '_' or '.'",
                self.replica_name
            ));
        }
        Ok(())
    }

    /// The same keys as a keyspace definition: what the capture stage works from.
    pub(crate) fn keyspace(&self) -> KeyspaceSource {
        KeyspaceSource {
            instance: self.instance.clone(),
            db: self.db,
            pattern: self.pattern.clone(),
            id_prefix: self.id_prefix.clone(),
            write_events: vec!["set".into()],
            lifecycle_events: self.lifecycle_events.clone(),
            rescan_on_start: false,
            rescan_interval_secs: 0,
            rescan_keys_per_sec: 0,
            nodes: Nodes::All,
        }
    }

    /// Whether `key` matches the pattern.
    pub fn matches(&self, key: &[u8]) -> bool {
        crate::source::keyspace::config::glob_match(self.pattern.as_bytes(), key)
    }
}
