//! The probes of each role, from the pipeline definitions: what capturing alerts sends to RLS,
//! what moving logs sends to RLS, what reading the stream sends to RTRS. Each probe is the
//! command Spillway sends later, on a key that cannot exist (docs/acl.md lists the same rules).

use super::{probe_key, Probe, PROBE_ID};
use crate::source::keyspace::config::KeyspaceSource;
use crate::source::stream::config::{AfterCommit, StreamSource};

/// The channels a keyspace pipeline subscribes to, as one ACL rule (`&__keyevent@0__:set ...`).
pub(crate) fn keyevent_channels(def: &KeyspaceSource) -> String {
    def.write_events
        .iter()
        .chain(&def.lifecycle_events)
        .map(|e| format!("&__keyevent@{}__:{e}", def.db))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key rule of the alerts role: read-only (`%R~`) unless the TTL script runs, whose
/// `EVALSHA` declares its keys read-write.
pub(crate) fn alert_keys(def: &KeyspaceSource, read_ttl: bool) -> String {
    if read_ttl {
        format!("~{}", def.pattern)
    } else {
        format!("%R~{}", def.pattern)
    }
}

/// Capturing alerts: PING, MGET and TYPE of a key in the pattern, one SCAN step; with the TTL
/// script, SCRIPT LOAD, EVALSHA and PTTL. (CONFIG GET is optional, SUBSCRIBE is tried by the
/// subscriber itself.)
pub(crate) fn alerts(def: &KeyspaceSource, ttl_script: Option<(&str, &str)>) -> Vec<Probe> {
    let key = probe_key(&def.pattern, &def.id_prefix);
    let keys = alert_keys(def, ttl_script.is_some());
    let mut probes = vec![
        Probe::new("PING", "+ping", "", &["PING"]),
        Probe::new("MGET", "+mget", &keys, &["MGET", &key]),
        Probe::new("TYPE", "+type", &keys, &["TYPE", &key]),
        Probe::new(
            "SCAN",
            "+scan",
            "",
            &[
                "SCAN",
                "0",
                "MATCH",
                &def.pattern,
                "COUNT",
                "1",
                "TYPE",
                "string",
            ],
        ),
    ];
    if let Some((lua, sha)) = ttl_script {
        probes.extend([
            Probe::new("SCRIPT LOAD", "+script|load", "", &["SCRIPT", "LOAD", lua]),
            Probe::new("PTTL", "+pttl", &keys, &["PTTL", &key]),
            Probe::new("EVALSHA", "+evalsha", &keys, &["EVALSHA", sha, "1", &key]),
        ]);
    }
    probes
}

/// The key rules of the log mover: the log keys, and the staging and overflow keys beside them
/// (`{trade_execution:ID}:spillway:...`, in the log's hash slot).
pub(crate) fn log_keys(def: &StreamSource) -> (String, String) {
    let prefix = &def.log_key_prefix;
    let side = crate::source::stream::side_key(&format!("{prefix}x"), "", "");
    let side = side.strip_suffix("x}").map(|s| format!("{s}*"));
    (
        format!("~{prefix}*"),
        side.map(|s| format!("~{s}"))
            .unwrap_or_else(|| format!("~{prefix}*")),
    )
}

/// Moving logs: PING, the take and park scripts' commands one by one (TYPE, RENAME, PERSIST,
/// LLEN, STRLEN, LTRIM), EVALSHA, the paged reads (LRANGE, GET, GETRANGE), the release (DEL or
/// EXPIRE, EXISTS) and the recovery SCAN; `take_sha` is the take script's, loaded before.
pub(crate) fn logs(def: &StreamSource, take_sha: &str) -> Vec<Probe> {
    let key = format!("{}{PROBE_ID}", def.log_key_prefix);
    let staging = crate::source::stream::side_key(&key, crate::source::stream::STAGING, PROBE_ID);
    let overflow = crate::source::stream::side_key(&key, crate::source::stream::OVERFLOW, PROBE_ID);
    let (log, side) = log_keys(def);
    let both = format!("{log} {side}");
    let release = match def.after_commit {
        AfterCommit::Expire => Probe::new("EXPIRE", "+expire", &side, &["EXPIRE", &staging, "1"]),
        _ => Probe::new("DEL", "+del", &side, &["DEL", &staging]),
    };
    let recovery = format!("*{}*", crate::source::stream::STAGING);
    vec![
        Probe::new("PING", "+ping", "", &["PING"]),
        Probe::new("TYPE", "+type", &log, &["TYPE", &key]),
        Probe::new("TYPE", "+type", &side, &["TYPE", &staging]),
        Probe::new("TYPE", "+type", &side, &["TYPE", &overflow]),
        Probe::new("RENAME", "+rename", &both, &["RENAME", &key, &staging]),
        Probe::new("PERSIST", "+persist", &side, &["PERSIST", &staging]),
        Probe::new("LLEN", "+llen", &side, &["LLEN", &staging]),
        Probe::new("STRLEN", "+strlen", &side, &["STRLEN", &staging]),
        Probe::new("LTRIM", "+ltrim", &side, &["LTRIM", &staging, "0", "-1"]),
        Probe::new("LRANGE", "+lrange", &side, &["LRANGE", &staging, "0", "0"]),
        Probe::new("GET", "+get", &side, &["GET", &staging]),
        Probe::new(
            "GETRANGE",
            "+getrange",
            &side,
            &["GETRANGE", &staging, "0", "0"],
        ),
        Probe::new(
            "EVALSHA",
            "+evalsha",
            &both,
            &["EVALSHA", take_sha, "2", &key, &staging],
        ),
        release,
        Probe::new("EXISTS", "+exists", &log, &["EXISTS", &key]),
        Probe::new(
            "SCAN",
            "+scan",
            "",
            &["SCAN", "0", "MATCH", &recovery, "COUNT", "1"],
        ),
    ]
}

/// Reading the stream: PING, XREADGROUP of this consumer's own pending entries (a read only),
/// XACK of an id no producer writes, XAUTOCLAIM with an idle time no entry reaches, XINFO
/// GROUPS, XPENDING. (XGROUP CREATE and SUBSCRIBE are tried as they are done at start.)
pub(crate) fn stream(def: &StreamSource) -> Vec<Probe> {
    let key = format!("~{}", def.stream);
    let (s, g, c) = (
        def.stream.as_str(),
        def.group.as_str(),
        def.consumer.as_str(),
    );
    vec![
        Probe::new("PING", "+ping", "", &["PING"]),
        Probe::new(
            "XREADGROUP",
            "+xreadgroup",
            &key,
            &["XREADGROUP", "GROUP", g, c, "COUNT", "1", "STREAMS", s, "0"],
        ),
        Probe::new("XACK", "+xack", &key, &["XACK", s, g, "0-1"]),
        Probe::new(
            "XAUTOCLAIM",
            "+xautoclaim",
            &key,
            &[
                "XAUTOCLAIM",
                s,
                g,
                c,
                &i64::MAX.to_string(),
                "0-0",
                "COUNT",
                "1",
            ],
        ),
        Probe::new(
            "XINFO GROUPS",
            "+xinfo|groups",
            &key,
            &["XINFO", "GROUPS", s],
        ),
        Probe::new(
            "XPENDING",
            "+xpending",
            &key,
            &["XPENDING", s, g, "-", "+", "1"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_key_rules_cover_the_staging_keys() {
        let mut def = crate::pipeline::builtin()
            .unwrap()
            .into_iter()
            .find_map(|p| match p.source {
                crate::pipeline::Source::Stream(s) => Some(s),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            log_keys(&def),
            ("~trade_execution:*".into(), "~{trade_execution:*".into())
        );
        def.log_key_prefix = "log:{".into();
        assert_eq!(log_keys(&def).0, "~log:{*");
    }
}
