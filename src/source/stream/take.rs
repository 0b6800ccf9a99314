//! Taking an execution log out of Redis atomically, so that what is removed after the commit is
//! exactly what was archived.
//!
//! A close takes the trade's log: one script renames `trade_execution:{id}` to a staging key of
//! that close (`{trade_execution:{id}}:spillway:take:{take}`, in the key's hash slot) and says
//! what it holds. Everything after reads the staging key, which nobody else writes: a LIST is
//! read in pages, a STRING whole (up to the byte limit). After the commit the staging key is
//! deleted. Entries the platform appends to the log after the take make a new log key, which
//! the take never touches; a crash leaves the staging key, which the same close takes again
//! when it is redelivered (the script reuses an existing staging key) or which the recovery at
//! start archives. No length is compared, nothing is trimmed by count.

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scan::ScanType;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Key};

use super::entries::bytes;
use crate::source::routed::{self, Routed};

/// Between the log key and the take id in a staging key.
pub(crate) const STAGING: &str = ":spillway:take:";
/// Between the log key and the take id in the key that keeps what was over the limits.
pub(crate) const OVERFLOW: &str = ":spillway:overflow:";
/// Bytes of an over-long STRING log kept in its dead letter.
pub(crate) const DEAD_LETTER_PREFIX: u64 = 64 << 10;

/// Takes KEYS[1] to KEYS[2] unless KEYS[2] exists already (the same close taken before a crash
/// or a redelivery), and only when it is a LIST or a STRING (any other type stays where it is,
/// for an operator to look at). Returns {type, length, 1 if taken now}. What it holds is read
/// after the script's reply, not by a command pipelined behind it (in a cluster, commands
/// redirected after a failover or a slot migration, or retried after a reconnect, may run out
/// of order, and a read could run before its take), and not in the script either: entries
/// passed through Lua cost Redis 2.5 times their LRANGE (measured: 40.6 us of Redis time per
/// trade with the first page read in the script, 15.9 without).
const TAKE: &str = r#"
local t = redis.call('TYPE', KEYS[2]).ok
local taken = 0
if t == 'none' then
  t = redis.call('TYPE', KEYS[1]).ok
  if t ~= 'list' and t ~= 'string' then return {t, 0, 0} end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
  taken = 1
end
local n = 0
if t == 'list' then
  n = redis.call('LLEN', KEYS[2])
elseif t == 'string' then
  n = redis.call('STRLEN', KEYS[2])
end
return {t, n, taken}
"#;

/// Keeps what a log held over the limits: the archived head of a LIST is trimmed off and the
/// rest renamed to the overflow key KEYS[2]; a STRING is renamed whole. ARGV[1]: entries
/// archived. Atomic, so a retry after an unknown outcome cannot trim twice.
const PARK: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return 0 end
if t == 'list' then redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1) end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"#;

/// The scripts, loaded once per connection (and again after a Redis restart).
#[derive(Clone)]
pub(crate) struct Scripts {
    /// See [`TAKE`].
    pub take: Script,
    /// See [`PARK`].
    pub park: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            take: Script::from_lua(TAKE),
            park: Script::from_lua(PARK),
        }
    }

    /// Loads both into `client`'s Redis (`SCRIPT LOAD`): at connect, and again after a Redis
    /// restart made them unknown (NOSCRIPT).
    pub(crate) async fn load(&self, client: &Client) -> Result<(), Error> {
        self.take.load(client).await?;
        self.park.load(client).await
    }
}

/// The key a log is moved to for `take_id` (`kind`: [`STAGING`] or [`OVERFLOW`]), in the hash
/// slot of `key`: a key with a hash tag keeps it as the prefix; a key without one becomes the
/// hash tag, which hashes as the whole key does.
pub(crate) fn side_key(key: &str, kind: &str, take_id: &str) -> String {
    if has_hash_tag(key) {
        format!("{key}{kind}{take_id}")
    } else {
        format!("{{{key}}}{kind}{take_id}")
    }
}

/// Whether Redis Cluster hashes only part of `key` (a non-empty `{...}`).
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0))
}

/// The log key and the take id of a staging key whose log key starts with `prefix`.
pub(crate) fn parse_staging(staging: &str, prefix: &str) -> Option<(String, String)> {
    let at = staging.rfind(STAGING)?;
    let (head, take_id) = (&staging[..at], &staging[at + STAGING.len()..]);
    if take_id.is_empty() {
        return None;
    }
    let unwrapped = head
        .strip_prefix('{')
        .and_then(|h| h.strip_suffix('}'))
        .filter(|k| k.starts_with(prefix) && !has_hash_tag(k));
    let key = match unwrapped {
        Some(k) => k,
        None if head.starts_with(prefix) && has_hash_tag(head) => head,
        None => return None,
    };
    Some((key.to_string(), take_id.to_string()))
}

/// What a taken log holds, as read from its staging key.
#[derive(Debug, Clone)]
pub(crate) enum LogRead {
    /// A LIST of `len` entries; `first` is its first page.
    List {
        /// Entries in the list.
        len: u64,
        /// The first `log_page_entries` of them.
        first: Vec<Bytes>,
    },
    /// A STRING of `len` bytes; `value` is all of it, or only its first
    /// [`DEAD_LETTER_PREFIX`] bytes when it is longer than the byte limit.
    Str {
        /// Its length.
        len: u64,
        /// Its bytes (see above).
        value: Bytes,
    },
    /// No log (never written, or taken by an earlier close).
    Missing,
    /// Some other type, left where it is.
    Other(String),
}

/// Takes each `(log key, staging key)` and reads what it holds: one round trip for the takes,
/// one more for the first page of every LIST and every STRING (after the takes' replies, so
/// after the takes, wherever a cluster redirected them).
pub(crate) async fn take_logs(
    client: &Client,
    scripts: &Scripts,
    logs: &[(String, String)],
    page: u64,
    max_bytes: u64,
) -> Result<Vec<LogRead>, Error> {
    if logs.is_empty() {
        return Ok(Vec::new());
    }
    match take_once(client, scripts, logs, page, max_bytes).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            // Redis restarted (or flushed its scripts): load them again and take again (a take
            // is repeatable: an existing staging key is reused).
            scripts.load(client).await?;
            take_once(client, scripts, logs, page, max_bytes).await
        }
        other => other,
    }
}

async fn take_once(
    client: &Client,
    scripts: &Scripts,
    logs: &[(String, String)],
    page: u64,
    max_bytes: u64,
) -> Result<Vec<LogRead>, Error> {
    let takes = logs
        .iter()
        .map(|(key, staging)| evalsha_routed(&scripts.take, &[key, staging], &[]))
        .collect();
    let replies = routed::pipelined(client, takes).await;
    let mut out = Vec::with_capacity(logs.len());
    // (index, LIST or not, length) of every log to read.
    let mut held = Vec::new();
    for (i, taken) in replies.into_iter().enumerate() {
        let Value::Array(t) = taken? else {
            return Err(unexpected("EVALSHA", &Value::Null));
        };
        let kind = t.first().and_then(|v| v.as_string()).unwrap_or_default();
        let len = t.get(1).and_then(|v| v.as_u64()).unwrap_or(0);
        out.push(match kind.as_str() {
            "list" | "string" => {
                held.push((i, kind == "list", len));
                LogRead::Missing
            }
            "none" => LogRead::Missing,
            other => LogRead::Other(other.to_string()),
        });
    }
    let reads = held
        .iter()
        .map(|&(i, list, len)| {
            let staging = logs[i].1.as_str();
            if list {
                let last = Value::from(page as i64 - 1);
                Routed::new("LRANGE", staging, &[Value::from(0), last])
            } else if len <= max_bytes {
                Routed::new("GET", staging, &[])
            } else {
                let end = Value::from(DEAD_LETTER_PREFIX as i64 - 1);
                Routed::new("GETRANGE", staging, &[Value::from(0), end])
            }
        })
        .collect();
    for (&(i, list, len), reply) in held.iter().zip(routed::pipelined(client, reads).await) {
        out[i] = match (list, reply?) {
            (true, Value::Array(items)) => LogRead::List {
                len,
                first: items.into_iter().filter_map(bytes).collect(),
            },
            // An empty LIST is no key: taken as gone between the take and the read.
            (true, Value::Null) => LogRead::List {
                len,
                first: Vec::new(),
            },
            (true, other) => return Err(unexpected("LRANGE", &other)),
            (false, Value::Null) => LogRead::Missing,
            (false, v) => match bytes(v) {
                Some(value) => LogRead::Str { len, value },
                None => return Err(unexpected("GET", &Value::Null)),
            },
        };
    }
    Ok(out)
}

/// `EVALSHA` of `script` on `keys` and `args`, routed by its first key.
pub(crate) fn evalsha_routed(script: &Script, keys: &[&String], args: &[String]) -> Routed {
    let mut a = Vec::with_capacity(2 + keys.len() + args.len());
    a.push(Value::String(script.sha1().clone()));
    a.push(Value::Integer(keys.len() as i64));
    a.extend(keys.iter().map(|k| Value::from(k.as_str())));
    a.extend(args.iter().map(|v| Value::from(v.as_str())));
    let key = Key::from(keys.first().map(|k| k.as_str()).unwrap_or_default());
    // The slot given outright: fred sent every EVALSHA routed by `ClusterHash::Offset(2)` to one
    // node (the others answered MOVED, each costing a resynchronisation of the slots).
    let slot = ClusterHash::Custom(key.cluster_hash());
    Routed {
        cmd: CustomCommand::new_static("EVALSHA", slot, false),
        args: a,
    }
}

/// Entries `from..to` of a taken LIST (routed: during a slot migration, fred's own following
/// of an `ASK` would hand replies to the wrong commands; see [`routed::pipelined`]).
pub(crate) async fn read_page(
    client: &Client,
    staging: &str,
    from: u64,
    to: u64,
) -> Result<Vec<Bytes>, Error> {
    let range = [Value::from(from as i64), Value::from(to as i64 - 1)];
    let read = Routed::new("LRANGE", staging, &range);
    let reply = routed::pipelined(client, vec![read]).await.pop();
    match reply.unwrap_or_else(|| Err(unexpected("LRANGE", &Value::Null)))? {
        Value::Array(items) => Ok(items.into_iter().filter_map(bytes).collect()),
        Value::Null => Ok(Vec::new()),
        other => Err(unexpected("LRANGE", &other)),
    }
}

/// Staging keys of logs under `prefix` that no commit has released (no TTL: a staging key
/// given its grace expiry after a commit is done). In a cluster every primary is scanned (a
/// SCAN without a hash tag in its pattern sees one node's keys only).
pub(crate) async fn staged(client: &Client, prefix: &str) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    if client.is_clustered() {
        for server in client.active_connections() {
            scan_staged(&client.with_cluster_node(server), prefix, &mut keys).await?;
        }
    } else {
        scan_staged(client, prefix, &mut keys).await?;
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Ok(keys);
    }
    let asks = keys.iter().map(|k| Routed::new("PTTL", k, &[])).collect();
    let ttls = routed::pipelined(client, asks).await;
    let mut out = Vec::new();
    for (k, ttl) in keys.into_iter().zip(ttls) {
        if ttl?.as_i64() == Some(-1) {
            out.push(k);
        }
    }
    Ok(out)
}

/// One pass of SCAN over the keyspace `client` reaches (both forms of staging key contain
/// STAGING), filtered here, into `keys`.
async fn scan_staged<C: KeysInterface + Sync>(
    client: &C,
    prefix: &str,
    keys: &mut Vec<String>,
) -> Result<(), Error> {
    let mut cursor = "0".to_string();
    loop {
        let (next, page): (String, Vec<Key>) = client
            .scan_page(cursor, format!("*{STAGING}*"), Some(1000), None::<ScanType>)
            .await?;
        keys.extend(
            page.iter()
                .map(|k| k.as_str_lossy().into_owned())
                .filter(|k| parse_staging(k, prefix).is_some()),
        );
        if next == "0" {
            return Ok(());
        }
        cursor = next;
    }
}

fn unexpected(command: &str, reply: &Value) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("unexpected reply to {command}: {:?}", reply.kind()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_keys_share_the_hash_slot_of_the_log() {
        assert_eq!(
            side_key("trade_execution:12345", STAGING, "1-0"),
            "{trade_execution:12345}:spillway:take:1-0"
        );
        assert_eq!(
            side_key("trade_execution:{12345}", STAGING, "1-0"),
            "trade_execution:{12345}:spillway:take:1-0"
        );
        // `{}` is no hash tag: the whole key is.
        assert_eq!(
            side_key("trade_execution:{}x", OVERFLOW, "7"),
            "{trade_execution:{}x}:spillway:overflow:7"
        );
    }

    #[test]
    fn staging_keys_parse_back() {
        let p = "trade_execution:";
        for (key, take) in [
            ("trade_execution:12345", "1700000000000-0"),
            ("trade_execution:{12345}", "2-3"),
            ("trade_execution:a:b", "ps-1-2-3"),
        ] {
            let staging = side_key(key, STAGING, take);
            assert_eq!(
                parse_staging(&staging, p),
                Some((key.to_string(), take.to_string())),
                "{staging}"
            );
        }
        assert_eq!(parse_staging("{other:1}:spillway:take:1-0", p), None);
        assert_eq!(parse_staging("{trade_execution:1}:spillway:take:", p), None);
        assert_eq!(parse_staging("trade_execution:1", p), None);
    }
}
