//! The stream source's definition (a `source = "stream"` pipeline file): the stream and its
//! consumer group, which events are archived and which move the execution log, and what happens
//! to the log key after commit.

use serde::Deserialize;

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
    /// This consumer's name in the group. Empty (the default): `{hostname}-{metrics port}`,
    /// unique per instance and stable across its restarts (see [`default_consumer`]). Set it
    /// to pin a name; two running instances must never share one.
    #[serde(default)]
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
    /// The pipeline is stalled (not ready, `spillway_pipeline_stalled` 1) when entries have
    /// waited this long with none acknowledged, or reads have failed this long, s.
    #[serde(default = "default_stall_after")]
    pub stall_after_secs: u64,
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
    #[serde(default)]
    pub after_commit: AfterCommit,
    /// Grace period for `after_commit = "expire"`, s.
    #[serde(default = "default_grace")]
    pub expire_grace_secs: u64,
    /// Pub/sub channel with close messages (at-most-once, a second trigger); empty: none.
    #[serde(default)]
    pub pubsub_channel: String,
    /// Entries read from a LIST log per round trip (`LRANGE` pages), so that a long log never
    /// blocks Redis nor fills Spillway's memory.
    #[serde(default = "default_page")]
    pub log_page_entries: u64,
    /// Most entries archived from one log; the rest is handled as `log_over_limit` says.
    #[serde(default = "default_max_entries")]
    pub log_max_entries: u64,
    /// Most bytes archived from one log (a STRING's length, or a LIST's entries added up).
    #[serde(default = "default_max_bytes")]
    pub log_max_bytes: u64,
    /// What becomes of the part of a log over the limits: `keep` it in Redis under
    /// `{key}:spillway:overflow:{take}` (counted; nothing destroyed), or `dead_letter`: one dead
    /// letter holding the first entry over the limit and the count, and the rest removed.
    #[serde(default)]
    pub log_over_limit: OverLimit,
}

fn default_page() -> u64 {
    1000
}
fn default_max_entries() -> u64 {
    1_000_000
}
fn default_max_bytes() -> u64 {
    256 << 20
}

/// What becomes of the part of an execution log over `log_max_entries` or `log_max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Left in Redis under an overflow key, counted.
    #[default]
    Keep,
    /// Counted, one dead letter with the first entry over the limit, the rest removed.
    DeadLetter,
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
fn default_stall_after() -> u64 {
    120
}
fn default_grace() -> u64 {
    300
}

/// The consumer name of an instance whose `/metrics` listens on `port`: the host's name (the
/// pod's name in Kubernetes) and the port, so that instances on one host differ and a restarted
/// instance resumes its own pending entries at once.
pub(crate) fn default_consumer(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spillway".into());
    format!("{host}-{port}")
}

impl StreamSource {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        for (field, v) in [
            ("stream", &self.stream),
            ("group", &self.group),
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
        if self.log_page_entries == 0 || self.log_max_entries == 0 || self.log_max_bytes == 0 {
            return Err("`log_page_entries`, `log_max_entries` and `log_max_bytes` must be greater than 0; fix: e.g. 1000, 1000000 and 268435456".into());
        }
        if self.stall_after_secs == 0 {
            return Err("`stall_after_secs` must be greater than 0 (default 120)".into());
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
        Ok(())
    }
}

/// What becomes of an execution log key once its rows are committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterCommit {
    /// `DEL` the key.
    #[default]
    Delete,
    /// Give it a short TTL (`expire_grace_secs`), for readers still looking.
    Expire,
}
