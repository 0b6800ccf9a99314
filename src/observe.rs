//! Observation: a poller that reads `INFO` from every configured Redis instance (the six of the
//! contract; any may be absent) and exports its memory, eviction and client figures labelled by
//! `instance`, plus Spillway's own process figures (resident memory, CPU), rendered at scrape time.
//!
//! An unreachable instance is `spillway_redis_up{instance} 0`, never an error: the poller keeps one
//! client per instance and connects it again, with a short timeout, after every failed poll.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::InfoKind;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Settings};

/// 1 when the last `INFO` of the instance succeeded, else 0.
pub const REDIS_UP: &str = "spillway_redis_up";
/// `used_memory` of the instance, in bytes.
pub const REDIS_MEMORY_USED: &str = "spillway_redis_memory_used_bytes";
/// `maxmemory` of the instance, in bytes (0: no limit).
pub const REDIS_MEMORY_MAX: &str = "spillway_redis_memory_max_bytes";
/// `maxmemory_policy` of the instance as a label; the value is 1.
pub const REDIS_POLICY: &str = "spillway_redis_maxmemory_policy_info";
/// `evicted_keys` of the instance (since its start).
pub const REDIS_EVICTED: &str = "spillway_redis_evicted_keys_total";
/// `expired_keys` of the instance (since its start).
pub const REDIS_EXPIRED: &str = "spillway_redis_expired_keys_total";
/// `mem_fragmentation_ratio` of the instance.
pub const REDIS_FRAGMENTATION: &str = "spillway_redis_mem_fragmentation_ratio";
/// `connected_clients` of the instance.
pub const REDIS_CLIENTS: &str = "spillway_redis_connected_clients";
/// Resident memory of the Spillway process, in bytes.
pub const PROCESS_RESIDENT: &str = "spillway_process_resident_memory_bytes";
/// CPU time (user + system) of the Spillway process, in seconds.
pub const PROCESS_CPU: &str = "spillway_process_cpu_seconds_total";
/// Unix time the Spillway process started observing, in seconds.
pub const PROCESS_START: &str = "spillway_process_start_time_seconds";

/// How long one connect or one `INFO` may take before the instance counts as down.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every Linux architecture).
const USER_HZ: f64 = 100.0;

static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Describes every metric of this module (HELP text) and records the start time.
pub fn describe() {
    START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    describe_gauge!(
        REDIS_UP,
        "1 when the last INFO of the Redis instance succeeded, else 0."
    );
    describe_gauge!(
        REDIS_MEMORY_USED,
        Unit::Bytes,
        "used_memory of the Redis instance."
    );
    describe_gauge!(
        REDIS_MEMORY_MAX,
        Unit::Bytes,
        "maxmemory of the Redis instance (0: no limit)."
    );
    describe_gauge!(
        REDIS_POLICY,
        "maxmemory-policy of the Redis instance, as the policy label; the value is 1."
    );
    describe_counter!(
        REDIS_EVICTED,
        "Keys the Redis instance evicted since it started (its evicted_keys)."
    );
    describe_counter!(
        REDIS_EXPIRED,
        "Keys the Redis instance expired since it started (its expired_keys)."
    );
    describe_gauge!(
        REDIS_FRAGMENTATION,
        "mem_fragmentation_ratio of the Redis instance (resident / used memory)."
    );
    describe_gauge!(REDIS_CLIENTS, "Clients connected to the Redis instance.");
}

/// Starts one poller per configured Redis instance, each reading `INFO` every
/// `settings.observe.interval` until `cancel`.
pub fn spawn(settings: &Settings, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    describe();
    let interval = settings.observe.interval;
    settings
        .redis
        .iter()
        .map(|(instance, url)| {
            let poller = Poller::new(instance, url);
            tokio::spawn(poller.run(interval, cancel.clone()))
        })
        .collect()
}

/// The figures Spillway exports from one `INFO` reply; a field the server did not report is `None`.
#[derive(Debug, Default, PartialEq)]
pub struct RedisInfo {
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
pub fn parse_info(text: &str) -> RedisInfo {
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

/// Polls one instance, keeping one client and connecting it again after a failure.
struct Poller {
    instance: String,
    url: String,
    client: Option<Client>,
    policy: Option<String>,
    up: Option<bool>,
}

impl Poller {
    fn new(instance: &str, url: &str) -> Self {
        Poller {
            instance: instance.to_string(),
            url: url.to_string(),
            client: None,
            policy: None,
            up: None,
        }
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

    async fn poll_once(&mut self) {
        match self.info().await {
            Ok(text) => {
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
            Ok(Err(e)) => Err(format!("INFO failed: {e}")),
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

    async fn disconnect(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(TIMEOUT, c.quit()).await;
        }
    }

    /// Sets `spillway_redis_up` and logs only the transitions (not every failed poll).
    fn set_up(&mut self, up: bool, error: Option<String>) {
        gauge!(REDIS_UP, "instance" => self.instance.clone()).set(if up { 1.0 } else { 0.0 });
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
        let i = self.instance.clone();
        let set = |name: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                gauge!(name, "instance" => i.clone()).set(v);
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
                counter!(name, "instance" => i.clone()).absolute(v);
            }
        }
        if let Some(policy) = &info.maxmemory_policy {
            if let Some(old) = self.policy.replace(policy.clone()) {
                if &old != policy {
                    gauge!(REDIS_POLICY, "instance" => i.clone(), "policy" => old).set(0.0);
                }
            }
            gauge!(REDIS_POLICY, "instance" => i.clone(), "policy" => policy.clone()).set(1.0);
        }
    }
}

/// Appends Spillway's process metrics (resident memory, CPU seconds, start time) to a
/// Prometheus text body, read from `/proc/self` at the time of the scrape (Linux; elsewhere
/// only the start time).
pub fn render_process(out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            ));
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    family(
        PROCESS_RESIDENT,
        "gauge",
        "Resident memory of the Spillway process, in bytes.",
        status
            .as_deref()
            .and_then(parse_status_rss)
            .map(|b| b as f64),
    );
    family(
        PROCESS_CPU,
        "counter",
        "CPU time (user and system) of the Spillway process, in seconds.",
        stat.as_deref().and_then(parse_stat_cpu),
    );
    family(
        PROCESS_START,
        "gauge",
        "Unix time the Spillway process started, in seconds.",
        START.get().copied(),
    );
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `utime + stime` of `/proc/self/stat`, in seconds. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
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

    #[test]
    fn parses_proc_stat_with_odd_command_name() {
        let stat = "9934 (my (odd) prog) R 9892 9892 8183 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 310570";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let status = "Name:\tspillway\nVmPeak:\t  9000 kB\nVmRSS:\t   23456 kB\n";
        assert_eq!(parse_status_rss(status), Some(23_456 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn process_metrics_render_from_this_process() {
        describe();
        let mut out = String::new();
        render_process(&mut out);
        assert!(
            out.contains("# TYPE spillway_process_cpu_seconds_total counter\n"),
            "{out}"
        );
        let rss = out
            .lines()
            .find_map(|l| l.strip_prefix("spillway_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("resident memory line");
        assert!(rss > 1e6, "{out}");
        assert!(
            out.contains("spillway_process_start_time_seconds 1"),
            "{out}"
        );
    }
}
