//! The Redis `INFO` poller: reads `INFO` from every configured Redis instance (the six of the
//! platform; any may be absent) and exports its memory, eviction and client figures labelled by
//! `instance`.
//!
//! An unreachable instance is `spillway_redis_up{instance} 0`, never an error: the poller keeps one
//! client per instance and connects it again, with a short timeout, after every failed poll.
//!
//! A Redis Cluster (`redis-cluster://`) is polled node by node: every poll asks a node for
//! `CLUSTER NODES` and reads `INFO` from each node listed (primaries and replicas), its series
//! labelled `node` (`host:port`) beside `instance`; `spillway_redis_up{instance}` says whether
//! the cluster answered at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::InfoKind;
use metrics::{counter, gauge};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    REDIS_CLIENTS, REDIS_EVICTED, REDIS_EXPIRED, REDIS_FRAGMENTATION, REDIS_MEMORY_MAX,
    REDIS_MEMORY_USED, REDIS_POLICY, REDIS_UP,
};
use crate::config::{redact_url, Settings};

mod cluster;

/// How long one connect or one `INFO` may take before the instance counts as down.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Instances whose user may not run `INFO`, each with the message naming the ACL rule to add:
/// shown by `/readyz` (observing is not essential, but a refusal is a configuration to fix).
pub(crate) type Refused = Arc<Mutex<BTreeMap<String, String>>>;

/// The readiness check of [`Refused`]: fails while any instance refuses `INFO`.
pub(crate) fn readiness(refused: Refused) -> super::Check {
    Arc::new(move || {
        let verdict = {
            let r = refused.lock().unwrap_or_else(|e| e.into_inner());
            match r.is_empty() {
                true => Ok(()),
                false => Err(r.values().cloned().collect::<Vec<_>>().join("; ")),
            }
        };
        Box::pin(async move { verdict })
    })
}

/// Starts one poller per configured Redis instance, each reading `INFO` every
/// `settings.observe.interval` until `cancel`; refusals of `INFO` go to `refused`.
pub(crate) fn spawn(
    settings: &Settings,
    cancel: CancellationToken,
    refused: Refused,
) -> Vec<JoinHandle<()>> {
    let interval = settings.observe.interval;
    settings
        .redis
        .iter()
        .map(|(instance, url)| {
            if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
                let cluster = cluster::ClusterPoller::new(instance, url, refused.clone());
                return tokio::spawn(cluster.run(interval, cancel.clone()));
            }
            let mut poller = Poller::new(instance, url);
            poller.refused = refused.clone();
            tokio::spawn(poller.run(interval, cancel.clone()))
        })
        .collect()
}

/// The figures Spillway exports from one `INFO` reply; a field the server did not report is `None`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RedisInfo {
    /// `used_memory`.
    pub used_memory: Option<u64>,
    /// `maxmemory`.
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy`.
    pub maxmemory_policy: Option<String>,
    /// `evicted_keys`.
    pub evicted_keys: Option<u64>,
    /// `expired_keys`.
    pub expired_keys: Option<u64>,
    /// `mem_fragmentation_ratio`.
    pub mem_fragmentation_ratio: Option<f64>,
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
}

/// Parses the text of `INFO` (`# Section` headers, `field:value` lines, CRLF or LF).
pub(crate) fn parse_info(text: &str) -> RedisInfo {
    let fields: HashMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    RedisInfo {
        used_memory: num("used_memory"),
        maxmemory: num("maxmemory"),
        maxmemory_policy: fields.get("maxmemory_policy").map(|s| s.to_string()),
        evicted_keys: num("evicted_keys"),
        expired_keys: num("expired_keys"),
        mem_fragmentation_ratio: fields
            .get("mem_fragmentation_ratio")
            .and_then(|v| v.parse().ok()),
        connected_clients: num("connected_clients"),
    }
}

/// Polls one instance (or one node of a cluster), keeping one client and connecting it again
/// after a failure.
pub(super) struct Poller {
    instance: String,
    /// The node's `host:port`, for a node of a cluster.
    node: Option<String>,
    url: String,
    client: Option<Client>,
    policy: Option<String>,
    up: Option<bool>,
    refused: Refused,
}

impl Poller {
    fn new(instance: &str, url: &str) -> Self {
        Poller {
            instance: instance.to_string(),
            node: None,
            url: url.to_string(),
            client: None,
            policy: None,
            up: None,
            refused: Refused::default(),
        }
    }

    /// The poller of the cluster node at `addr` (`host:port`, reached at `url`).
    pub(super) fn node(instance: &str, addr: &str, url: &str, refused: Refused) -> Self {
        let mut p = Poller::new(instance, url);
        p.node = Some(addr.to_string());
        p.refused = refused;
        p
    }

    /// The labels of this poller's series.
    fn labels(&self) -> Vec<(&'static str, String)> {
        let mut l = vec![("instance", self.instance.clone())];
        l.extend(self.node.iter().map(|n| ("node", n.clone())));
        l
    }

    async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.poll_once() => {}
            }
        }
        self.disconnect().await;
    }

    pub(super) async fn poll_once(&mut self) {
        match self.info().await {
            Ok(text) => {
                self.set_refused(None);
                self.export(&parse_info(&text));
                self.set_up(true, None);
            }
            Err(e) => {
                self.disconnect().await;
                self.set_up(false, Some(e));
            }
        }
    }

    /// `INFO` (the default sections: server, clients, memory, stats, ...), connecting first if needed.
    async fn info(&mut self) -> Result<String, String> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let client = self.client.as_ref().ok_or("no client")?;
        match tokio::time::timeout(TIMEOUT, client.info::<String>(Some(InfoKind::Default))).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(e)) => {
                self.note_refusal(&e);
                Err(format!("INFO failed: {e}"))
            }
            Err(_) => Err(format!("INFO took longer than {TIMEOUT:?}")),
        }
    }

    /// A client with short timeouts and no reconnect policy: the poller reconnects on its own.
    async fn connect(&self) -> Result<Client, String> {
        let config = Config::from_url(&self.url).map_err(|e| format!("bad URL: {e}"))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = TIMEOUT;
                c.internal_command_timeout = TIMEOUT;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build a client: {e}"))?;
        let connected = tokio::time::timeout(TIMEOUT * 2, client.init()).await;
        // Without a reconnect policy a failed connect ends the client's task: drop it.
        match connected {
            Ok(Ok(_)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err("connect timed out".into()),
        }
    }

    /// Records a refused `INFO` (ACL) with the rule to add, logged once.
    fn note_refusal(&mut self, e: &fred::error::Error) {
        let mut refused = Vec::new();
        if crate::source::acl::note(&mut refused, e, "INFO", "+info", "") {
            let endpoint = crate::source::Endpoint {
                instance: self.instance.clone(),
                url: self.url.clone(),
            };
            let message = crate::source::acl::error(&endpoint, refused).to_string();
            self.set_refused(Some(message));
        }
    }

    fn set_refused(&self, message: Option<String>) {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        match message {
            Some(m) => {
                if r.insert(self.instance.clone(), m.clone()).is_none() {
                    tracing::warn!(instance = %self.instance, "{m}");
                }
            }
            None => {
                r.remove(&self.instance);
            }
        }
    }

    async fn disconnect(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(TIMEOUT, c.quit()).await;
        }
    }

    /// Sets `spillway_redis_up` and logs only the transitions (not every failed poll).
    fn set_up(&mut self, up: bool, error: Option<String>) {
        gauge!(REDIS_UP, &self.labels()).set(if up { 1.0 } else { 0.0 });
        if self.up == Some(up) {
            return;
        }
        let url = redact_url(&self.url);
        match error {
            None => tracing::info!(instance = %self.instance, %url, "Redis memory poll: up"),
            Some(e) => {
                tracing::warn!(instance = %self.instance, %url, error = %e, "Redis memory poll: down")
            }
        }
        self.up = Some(up);
    }

    fn export(&mut self, info: &RedisInfo) {
        let labels = self.labels();
        let with = |extra: Option<(&'static str, String)>| {
            let mut l = labels.clone();
            l.extend(extra);
            l
        };
        let set = |name: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                gauge!(name, &labels).set(v);
            }
        };
        set(REDIS_MEMORY_USED, info.used_memory.map(|v| v as f64));
        set(REDIS_MEMORY_MAX, info.maxmemory.map(|v| v as f64));
        set(REDIS_FRAGMENTATION, info.mem_fragmentation_ratio);
        set(REDIS_CLIENTS, info.connected_clients.map(|v| v as f64));
        for (name, v) in [
            (REDIS_EVICTED, info.evicted_keys),
            (REDIS_EXPIRED, info.expired_keys),
        ] {
            if let Some(v) = v {
                counter!(name, &labels).absolute(v);
            }
        }
        if let Some(policy) = &info.maxmemory_policy {
            if let Some(old) = self.policy.replace(policy.clone()) {
                if &old != policy {
                    gauge!(REDIS_POLICY, &with(Some(("policy", old)))).set(0.0);
                }
            }
            gauge!(REDIS_POLICY, &with(Some(("policy", policy.clone())))).set(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nexecutable:/x:y\r\n\r\n# Clients\r\n\
        connected_clients:3\r\n# Memory\r\nused_memory:916992\r\nused_memory_human:895.50K\r\n\
        maxmemory:67108864\r\nmaxmemory_policy:volatile-lru\r\nmem_fragmentation_ratio:13.84\r\n\
        # Stats\r\nexpired_keys:12\r\nevicted_keys:7\r\n# Keyspace\r\ndb0:keys=1,expires=0\r\n";

    #[test]
    fn parses_info_fields() {
        assert_eq!(
            parse_info(INFO),
            RedisInfo {
                used_memory: Some(916_992),
                maxmemory: Some(67_108_864),
                maxmemory_policy: Some("volatile-lru".into()),
                evicted_keys: Some(7),
                expired_keys: Some(12),
                mem_fragmentation_ratio: Some(13.84),
                connected_clients: Some(3),
            }
        );
    }

    #[test]
    fn missing_or_garbled_fields_are_none() {
        let info = parse_info("# Memory\nused_memory:lots\nmaxmemory:0\nnot a field\n");
        assert_eq!(info.used_memory, None);
        assert_eq!(info.maxmemory, Some(0));
        assert_eq!(info.maxmemory_policy, None);
        assert_eq!(parse_info(""), RedisInfo::default());
    }
}
