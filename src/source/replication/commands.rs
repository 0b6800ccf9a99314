//! What a command of the replication stream does to the pipeline's keys: the writes that carry
//! a whole string value (`SET` in all its forms, `SETEX`, `PSETEX`, `SETNX`, `MSET`, `MSETNX`,
//! `GETSET`, `RESTORE`), the deletions (`DEL`, `UNLINK`: also how a primary propagates an
//! expiry or an eviction), the database switches, and what changes a value without carrying
//! it (`APPEND`, `INCR`, `SETRANGE`, `RENAME` into the pattern, ...), which cannot be archived
//! and is counted. A primary propagates only writes that happened: a `SET ... NX` in the
//! stream did set its key.

use bytes::Bytes;

/// One effect of a command on the keys of the stream's current database.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `key` now holds `value`; its TTL in ms from now (-1: none; [`KEPT`]: unchanged).
    Write {
        /// The key.
        key: Bytes,
        /// The whole value.
        value: Bytes,
        /// The TTL it was given.
        ttl: Ttl,
    },
    /// `key` now holds the object of a `RESTORE` payload.
    Restore {
        /// The key.
        key: Bytes,
        /// The DUMP payload.
        payload: Bytes,
        /// The TTL it was given.
        ttl: Ttl,
    },
    /// `key` was removed (`DEL`, `UNLINK`).
    Delete(Bytes),
    /// `key` was changed by `command` without its new value in the stream.
    Unarchivable {
        /// The key.
        key: Bytes,
        /// The command's name, lower case.
        command: String,
    },
    /// The stream goes on in database `n`.
    Select(u64),
    /// The primary asks for an acknowledgement (`REPLCONF GETACK`).
    GetAck,
}

/// A TTL as a write gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// None (the write cleared it).
    None,
    /// This many ms from the write.
    In(i64),
    /// Expiring at this epoch ms.
    At(i64),
    /// Unchanged (`KEEPTTL`): not known from the stream.
    Kept,
}

impl Ttl {
    /// The TTL in ms at `now` as Spillway's rows give it: -1 none, [`crate::rows::TTL_NOT_READ`]
    /// when unknown.
    pub(crate) fn ms_at(self, now: i64) -> i64 {
        match self {
            Ttl::None => -1,
            Ttl::In(ms) => ms.max(0),
            Ttl::At(at) => (at - now).max(0),
            Ttl::Kept => crate::rows::TTL_NOT_READ,
        }
    }
}

/// Commands that change nothing a row holds (a TTL change, a read, the stream's own).
const IGNORED: &[&str] = &[
    "ping",
    "multi",
    "exec",
    "discard",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "replconf",
    "publish",
    "spublish",
    "eval",
    "evalsha",
    "script",
    "function",
    "xadd",
    "xack",
    "xtrim",
    "xdel",
    "xclaim",
    "xautoclaim",
    "xgroup",
    "xsetid",
];

/// The effects of one command (`args[0]` its name) on keys matching `matches`, in order.
pub(crate) fn effects(args: &[Bytes], matches: impl Fn(&[u8]) -> bool) -> Vec<Effect> {
    let Some(name) = args.first() else {
        return Vec::new();
    };
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let arg = |i: usize| args.get(i).cloned();
    let write = |key: Bytes, value: Bytes, ttl: Ttl| {
        if matches(&key) {
            vec![Effect::Write { key, value, ttl }]
        } else {
            Vec::new()
        }
    };
    match (name.as_str(), args.len()) {
        ("set", n) if n >= 3 => write(args[1].clone(), args[2].clone(), set_ttl(&args[3..])),
        ("setnx" | "getset", 3) => write(args[1].clone(), args[2].clone(), Ttl::None),
        ("setex", 4) => match int(&args[2]) {
            Some(s) => write(
                args[1].clone(),
                args[3].clone(),
                Ttl::In(s.saturating_mul(1000)),
            ),
            None => unarchivable(args, &name, &matches),
        },
        ("psetex", 4) => match int(&args[2]) {
            Some(ms) => write(args[1].clone(), args[3].clone(), Ttl::In(ms)),
            None => unarchivable(args, &name, &matches),
        },
        ("mset" | "msetnx", n) if n % 2 == 1 => args[1..]
            .chunks(2)
            .filter(|kv| matches(&kv[0]))
            .map(|kv| Effect::Write {
                key: kv[0].clone(),
                value: kv[1].clone(),
                ttl: Ttl::None,
            })
            .collect(),
        ("restore" | "restore-asking", n) if n >= 4 => {
            let key = args[1].clone();
            if !matches(&key) {
                return Vec::new();
            }
            let absolute = args[4..].iter().any(|a| a.eq_ignore_ascii_case(b"absttl"));
            let ttl = match int(&args[2]) {
                Some(0) => Ttl::None,
                Some(t) if absolute => Ttl::At(t),
                Some(t) => Ttl::In(t),
                None => Ttl::Kept,
            };
            vec![Effect::Restore {
                key,
                payload: args[3].clone(),
                ttl,
            }]
        }
        ("del" | "unlink", _) => args[1..]
            .iter()
            .filter(|k| matches(k))
            .map(|k| Effect::Delete(k.clone()))
            .collect(),
        ("select", 2) => int(&args[1])
            .and_then(|n| u64::try_from(n).ok())
            .map(|n| vec![Effect::Select(n)])
            .unwrap_or_default(),
        ("replconf", _) if arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"getack")) => {
            vec![Effect::GetAck]
        }
        (n, _) if IGNORED.contains(&n) => Vec::new(),
        ("rename" | "renamenx" | "copy" | "move", n) if n >= 3 => {
            // The source goes (rename, move) and the target gets a value the stream does not
            // carry.
            let mut out = Vec::new();
            if name != "copy" && matches(&args[1]) {
                out.push(Effect::Delete(args[1].clone()));
            }
            if name != "move" && matches(&args[2]) {
                out.push(Effect::Unarchivable {
                    key: args[2].clone(),
                    command: name.clone(),
                });
            }
            out
        }
        _ => unarchivable(args, &name, &matches),
    }
}

/// Any other command on a matching key (its first argument): a change the stream does not
/// carry as a value.
fn unarchivable(args: &[Bytes], name: &str, matches: &impl Fn(&[u8]) -> bool) -> Vec<Effect> {
    match args.get(1) {
        Some(key) if matches(key) => vec![Effect::Unarchivable {
            key: key.clone(),
            command: name.to_string(),
        }],
        _ => Vec::new(),
    }
}

/// The TTL of `SET key value <options>`.
fn set_ttl(options: &[Bytes]) -> Ttl {
    let mut ttl = Ttl::None;
    let mut i = 0;
    while i < options.len() {
        let o = options[i].to_ascii_lowercase();
        let value = options.get(i + 1).and_then(|v| int(v));
        match (o.as_slice(), value) {
            (b"ex", Some(s)) => ttl = Ttl::In(s.saturating_mul(1000)),
            (b"px", Some(ms)) => ttl = Ttl::In(ms),
            (b"exat", Some(s)) => ttl = Ttl::At(s.saturating_mul(1000)),
            (b"pxat", Some(ms)) => ttl = Ttl::At(ms),
            (b"keepttl", _) => ttl = Ttl::Kept,
            _ => {
                i += 1;
                continue;
            }
        }
        i += if o.as_slice() == b"keepttl" { 1 } else { 2 };
    }
    ttl
}

fn int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> Vec<Effect> {
        let args: Vec<Bytes> = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        effects(&args, |k| k.starts_with(b"alert:"))
    }

    fn w(key: &str, value: &str, ttl: Ttl) -> Effect {
        Effect::Write {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ttl,
        }
    }

    #[test]
    fn every_form_of_set_carries_its_value_and_ttl() {
        assert_eq!(
            run(&["SET", "alert:1", "v"]),
            [w("alert:1", "v", Ttl::None)]
        );
        assert_eq!(
            run(&["set", "alert:1", "v", "PXAT", "1700000000000"]),
            [w("alert:1", "v", Ttl::At(1_700_000_000_000))]
        );
        assert_eq!(
            run(&["SET", "alert:1", "v", "NX", "GET", "EX", "60"]),
            [w("alert:1", "v", Ttl::In(60_000))]
        );
        assert_eq!(
            run(&["SET", "alert:1", "v", "KEEPTTL", "XX"]),
            [w("alert:1", "v", Ttl::Kept)]
        );
        assert_eq!(
            run(&["SETEX", "alert:1", "5", "v"]),
            [w("alert:1", "v", Ttl::In(5000))]
        );
        assert_eq!(
            run(&["PSETEX", "alert:1", "5", "v"]),
            [w("alert:1", "v", Ttl::In(5))]
        );
        assert_eq!(
            run(&["GETSET", "alert:1", "v"]),
            [w("alert:1", "v", Ttl::None)]
        );
        assert_eq!(
            run(&["MSET", "alert:1", "a", "other", "b", "alert:2", "c"]),
            [w("alert:1", "a", Ttl::None), w("alert:2", "c", Ttl::None)]
        );
        assert_eq!(run(&["SET", "other", "v"]), []);
    }

    #[test]
    fn deletions_selects_and_what_cannot_be_archived() {
        assert_eq!(
            run(&["DEL", "alert:1", "x", "alert:2"]),
            [
                Effect::Delete(Bytes::from_static(b"alert:1")),
                Effect::Delete(Bytes::from_static(b"alert:2"))
            ]
        );
        assert_eq!(run(&["UNLINK", "alert:1"]).len(), 1);
        assert_eq!(run(&["SELECT", "3"]), [Effect::Select(3)]);
        assert_eq!(run(&["REPLCONF", "GETACK", "*"]), [Effect::GetAck]);
        assert_eq!(run(&["PING"]), []);
        assert_eq!(run(&["PEXPIREAT", "alert:1", "1"]), []);
        assert_eq!(
            run(&["APPEND", "alert:1", "x"]),
            [Effect::Unarchivable {
                key: Bytes::from_static(b"alert:1"),
                command: "append".into()
            }]
        );
        assert_eq!(run(&["INCR", "counter"]), []);
        assert_eq!(
            run(&["RENAME", "alert:1", "alert:2"]),
            [
                Effect::Delete(Bytes::from_static(b"alert:1")),
                Effect::Unarchivable {
                    key: Bytes::from_static(b"alert:2"),
                    command: "rename".into()
                }
            ]
        );
        let restore = run(&["RESTORE", "alert:1", "1700000000000", "payload", "ABSTTL"]);
        assert_eq!(
            restore,
            [Effect::Restore {
                key: Bytes::from_static(b"alert:1"),
                payload: Bytes::from_static(b"payload"),
                ttl: Ttl::At(1_700_000_000_000)
            }]
        );
    }
}
