//! The keyspace source's definition (a `source = "keyspace"` pipeline file): which instance and
//! keys, which keyevents carry values and which are lifecycle events, and when to rescan; with
//! the Redis glob matching of the key pattern.

use serde::Deserialize;

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
    /// Most keys a rescan reads per second (0: as fast as Redis answers); default 20000. A
    /// rescan also waits while notifications are queued: the notification path goes first.
    #[serde(default = "rescan_pace")]
    pub rescan_keys_per_sec: u64,
    /// On a Redis Cluster, the primaries captured from: `"all"` (the default), `"local"` (the
    /// node of the instance's URL, while it is a primary: one Spillway beside each node), or a
    /// list of `"host:port"` as the cluster announces them.
    #[serde(default)]
    pub nodes: Nodes,
}

/// Which primaries of a Redis Cluster a keyspace pipeline captures from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Nodes {
    /// Every primary.
    #[default]
    All,
    /// The node of the URL, while it is a primary.
    Local,
    /// These `host:port`.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) if s == "all" => Ok(Nodes::All),
            Raw::One(s) if s == "local" => Ok(Nodes::Local),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "`nodes` = {s:?}; fix: \"all\", \"local\" or a list of \"host:port\""
            ))),
            Raw::List(list) => Ok(Nodes::List(list)),
        }
    }
}

fn rescan_pace() -> u64 {
    20_000
}

fn five_minutes() -> u64 {
    300
}

fn yes() -> bool {
    true
}

/// Lifecycle events Spillway knows, with the name it records.
pub(crate) const LIFECYCLE: [(&str, &str); 3] = [
    ("expired", "expired"),
    ("evicted", "evicted"),
    ("del", "deleted"),
];

/// Write events whose key holds a string value afterwards.
pub(crate) const WRITE_EVENTS: [&str; 8] = [
    "set",
    "setrange",
    "append",
    "incrby",
    "incrbyfloat",
    "getset",
    "getex",
    "restore",
];

impl KeyspaceSource {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
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
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
