//! `notify-keyspace-events`: which flags a keyspace pipeline needs, which the server lacks, and the
//! exact `CONFIG SET` line that fixes it.

use std::collections::BTreeSet;

use fred::prelude::*;

use super::config::KeyspaceSource;
use crate::source::Endpoint;

/// Keyspace notifications are not enabled as the pipelines need.
#[derive(Debug, thiserror::Error)]
#[error("Redis {instance} ({addr}) has notify-keyspace-events \"{current}\", but Spillway needs the flags \"{needed}\" (missing: {missing}); without them no write, expiry or eviction is reported and nothing is archived. Fix: redis-cli -h {host} -p {port} CONFIG SET notify-keyspace-events '{fixed}' (and the same line as `notify-keyspace-events {fixed}` in redis.conf), or set keyspace.configure_notifications = true to let Spillway set it")]
pub(crate) struct NotifyError {
    /// Instance short name.
    pub instance: String,
    /// host:port.
    pub addr: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The server's current value.
    pub current: String,
    /// The flags needed.
    pub needed: String,
    /// The flags missing, space separated.
    pub missing: String,
    /// The value to set: current flags plus the missing ones.
    pub fixed: String,
}

/// The flags a keyspace pipeline needs: `E` (keyevent channels) and one class per event.
pub(crate) fn required(def: &KeyspaceSource) -> BTreeSet<char> {
    let mut flags = BTreeSet::from(['E']);
    for e in def.write_events.iter().chain(&def.lifecycle_events) {
        flags.insert(match e.as_str() {
            "expired" => 'x',
            "evicted" => 'e',
            "del" => 'g',
            _ => '$',
        });
    }
    flags
}

/// The flags a server value enables, with `A` expanded.
pub(crate) fn enabled(value: &str) -> BTreeSet<char> {
    value
        .chars()
        .flat_map(|c| match c {
            'A' => "g$lshzxetd".chars().collect::<Vec<_>>(),
            c => vec![c],
        })
        .collect()
}

/// The flags of `needed` that `value` lacks, in a stable order.
pub(crate) fn missing(value: &str, needed: &BTreeSet<char>) -> Vec<char> {
    let have = enabled(value);
    needed
        .iter()
        .filter(|c| !have.contains(c))
        .copied()
        .collect()
}

/// The value to `CONFIG SET`: the current flags followed by the missing ones.
pub(crate) fn fixed(value: &str, missing: &[char]) -> String {
    let mut s = value.to_string();
    s.extend(missing);
    s
}

/// Checks `notify-keyspace-events` and, when allowed, adds what is missing.
pub(crate) async fn check(
    client: &Client,
    endpoint: &Endpoint,
    def: &KeyspaceSource,
    configure: bool,
) -> crate::source::Result<()> {
    let got: Result<(String, String), Error> = client.config_get("notify-keyspace-events").await;
    let current = match got {
        Ok((_, current)) => current,
        // Optional in the ACL (CONFIG GET reads every setting): without it the flags are the
        // operator's to check.
        Err(e) if crate::source::acl::is_noperm(e.details()) && !configure => {
            tracing::warn!(
                instance = %endpoint.instance,
                user = %crate::source::acl::user(endpoint),
                needed = %required(def).iter().collect::<String>(),
                "cannot check notify-keyspace-events: CONFIG GET refused (ACL without `+config|get`); make sure the server has the flags needed, or nothing is archived"
            );
            return Ok(());
        }
        Err(e) => {
            return Err(endpoint.err("reading notify-keyspace-events (CONFIG GET)")(
                e,
            ))
        }
    };
    let needed = required(def);
    let missing = missing(&current, &needed);
    if missing.is_empty() {
        return Ok(());
    }
    let fixed = fixed(&current, &missing);
    if configure {
        let () = client
            .config_set("notify-keyspace-events", fixed.as_str())
            .await
            .map_err(endpoint.err("setting notify-keyspace-events (CONFIG SET)"))?;
        tracing::warn!(endpoint = ?endpoint, from = %current, to = %fixed, "set notify-keyspace-events");
        return Ok(());
    }
    let url = url::Url::parse(&endpoint.url).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default();
    let port = url.as_ref().and_then(|u| u.port()).unwrap_or(6379);
    Err(Box::new(NotifyError {
        instance: endpoint.instance.clone(),
        addr: format!("{host}:{port}"),
        host,
        port,
        current,
        needed: needed.iter().collect(),
        missing: missing
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        fixed,
    })
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(write: &[&str], life: &[&str]) -> KeyspaceSource {
        KeyspaceSource {
            instance: "rls".into(),
            db: 0,
            pattern: "alert:*".into(),
            id_prefix: "alert:".into(),
            write_events: write.iter().map(|s| s.to_string()).collect(),
            lifecycle_events: life.iter().map(|s| s.to_string()).collect(),
            rescan_on_start: true,
            rescan_interval_secs: 300,
            rescan_keys_per_sec: 20_000,
            nodes: Default::default(),
        }
    }

    #[test]
    fn flags() {
        let need = required(&def(&["set"], &["expired", "evicted", "del"]));
        assert_eq!(need.iter().collect::<String>(), "$Eegx");
        assert!(missing("KEA", &need).is_empty());
        assert!(missing("AE", &need).is_empty());
        assert_eq!(missing("", &need), vec!['$', 'E', 'e', 'g', 'x']);
        assert_eq!(missing("Ex", &need), vec!['$', 'e', 'g']);
        assert_eq!(missing("K$xeg", &need), vec!['E']);
        assert_eq!(fixed("Ex", &['$', 'e', 'g']), "Ex$eg");
    }
}
