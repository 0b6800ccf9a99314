//! Redis ACL: what each role of Spillway sends, probed once at start, and every `NOPERM` turned
//! into a message that names the instance, the user, what was refused and the exact rule to add
//! to the user's ACL (docs/acl.md lists the users whole).
//!
//! The probes are harmless: each command runs on a key inside the pattern that cannot exist
//! (`MGET`, `TYPE`, `RENAME` of a missing key answer without changing anything), a `SCAN` of one
//! step, an `XAUTOCLAIM` whose idle time no entry reaches. Every probe runs even after a refusal,
//! so one start lists every missing permission.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use super::Endpoint;

pub(crate) mod roles;

/// Where the rules to add are explained.
pub(crate) const DOC: &str = "docs/acl.md";

/// What the probe keys hold in place of a glob's `*`: no trade or alert id looks like it.
pub(crate) const PROBE_ID: &str = "spillway-acl-probe";

/// One permission refused: what, and the rule that grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The command (`XAUTOCLAIM`), or `key K (CMD)`, or `channel C`.
    pub what: String,
    /// The ACL rule to add (`+xautoclaim`, `~trade_results`, `&trade_close`).
    pub rule: String,
}

/// Redis refused permissions that Spillway needs.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(instance, user, refused))]
pub(crate) struct AclError {
    /// Instance short name.
    pub instance: String,
    /// The ACL user Spillway authenticates as (`default` when the URL names none).
    pub user: String,
    /// Every refusal found.
    pub refused: Vec<Refusal>,
}

/// Refusals on one or more instances (a stream pipeline reads RTRS and RLS).
#[derive(Debug)]
pub(crate) struct AclErrors(pub Vec<AclError>);

impl From<Vec<AclError>> for AclErrors {
    fn from(v: Vec<AclError>) -> Self {
        AclErrors(v)
    }
}

impl std::fmt::Display for AclErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("\n"))
    }
}

fn render(instance: &str, user: &str, refused: &[Refusal]) -> String {
    let mut lines: Vec<String> = refused
        .iter()
        .map(|r| {
            format!(
                "Redis {instance} refused {} for user {user}: add `{}` to its ACL",
                r.what, r.rule
            )
        })
        .collect();
    let mut rules: Vec<&str> = Vec::new();
    for rule in refused.iter().flat_map(|r| r.rule.split(' ')) {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    lines.push(format!(
        "fix: ACL SETUSER {user} {} (and the same in the ACL file); {DOC}: Redis ACL",
        rules.join(" ")
    ));
    lines.join("\n")
}

/// The user an endpoint's URL authenticates as.
pub(crate) fn user(endpoint: &Endpoint) -> String {
    url::Url::parse(&endpoint.url)
        .ok()
        .map(|u| u.username().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Whether Redis refused for lack of permission: `NOPERM`, or a script's command refused.
pub(crate) fn is_noperm(details: &str) -> bool {
    details.contains("NOPERM") || details.contains("user executing the script can't")
}

/// The refusal a `NOPERM` error means, for a command `label` whose permission is `rule`, on a key
/// granted by `key_rule` (or a channel granted by `channel_rule`). `None` when not a `NOPERM`.
pub(crate) fn refusal(details: &str, label: &str, rule: &str, key_rule: &str) -> Option<Refusal> {
    if !is_noperm(details) {
        return None;
    }
    let lower = details.to_ascii_lowercase();
    if lower.contains("one of the keys") || lower.contains("access at least one of the keys") {
        return Some(Refusal {
            what: format!("the keys of {label}"),
            rule: key_rule.to_string(),
        });
    }
    if lower.contains("channel") {
        return Some(Refusal {
            what: format!("the channels of {label}"),
            rule: key_rule.to_string(),
        });
    }
    // "... permissions to run the 'xinfo|groups' command": Redis names the (sub)command.
    let named = lower
        .split_once("to run the '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(c, _)| c.to_string());
    Some(match named {
        Some(c) => Refusal {
            what: c.replace('|', " ").to_uppercase(),
            rule: format!("+{c}"),
        },
        None => Refusal {
            what: label.to_string(),
            rule: rule.to_string(),
        },
    })
}

/// One harmless command that needs a permission of a role.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// What it is called in messages (`XINFO GROUPS`).
    pub label: String,
    /// The rule granting the command (`+xinfo|groups`).
    pub rule: String,
    /// The rule granting its keys (`~trade_results`), empty when it has none.
    pub key_rule: String,
}

impl Probe {
    /// A probe of `args` (the first one or two words are the command, named by `label`),
    /// granted by `rule`, its keys by `key_rule`.
    pub(crate) fn new(label: &str, rule: &str, key_rule: &str, args: &[&str]) -> Probe {
        Probe {
            args: args.iter().map(|s| s.to_string()).collect(),
            label: label.into(),
            rule: rule.into(),
            key_rule: key_rule.into(),
        }
    }
}

/// Runs every probe on `client`; the permissions refused, each once. Errors other than
/// `NOPERM` (a missing key, a wrong type) are answers: the permission was there.
pub(crate) async fn run(client: &Client, probes: &[Probe]) -> Vec<Refusal> {
    let mut refused: Vec<Refusal> = Vec::new();
    for p in probes {
        let (cmd, args) = p.args.split_first().expect("a command");
        let command = CustomCommand::new(cmd.clone(), ClusterHash::FirstKey, false);
        let args: Vec<Value> = args.iter().map(|a| Value::from(a.as_str())).collect();
        let answer: Result<Value, Error> = client.custom(command, args).await;
        if let Err(e) = answer {
            note(&mut refused, &e, &p.label, &p.rule, &p.key_rule);
        }
    }
    refused
}

/// `Err` naming every refusal, or `Ok` when there is none.
pub(crate) fn verdict(endpoint: &Endpoint, refused: Vec<Refusal>) -> Result<(), AclError> {
    if refused.is_empty() {
        return Ok(());
    }
    Err(error(endpoint, refused))
}

/// The error of `refused` on `endpoint`.
pub(crate) fn error(endpoint: &Endpoint, refused: Vec<Refusal>) -> AclError {
    AclError {
        instance: endpoint.instance.clone(),
        user: user(endpoint),
        refused,
    }
}

/// Adds the refusal `e` means to `refused` (true), or leaves it (false: not a `NOPERM`).
pub(crate) fn note(
    refused: &mut Vec<Refusal>,
    e: &Error,
    label: &str,
    rule: &str,
    key_rule: &str,
) -> bool {
    let Some(r) = refusal(e.details(), label, rule, key_rule) else {
        return false;
    };
    // A command of several key patterns refused its keys: when one of them was found refused
    // already (by a probe of one key), that one says it.
    let known = r.rule.contains(' ')
        && refused
            .iter()
            .any(|k| r.rule.split(' ').any(|p| p == k.rule && p.contains('~')));
    if known || refused.contains(&r) {
        return true;
    }
    // The keys of several commands refused under one rule: one line naming them all.
    let same_keys = r.what.starts_with("the keys of ").then(|| {
        refused
            .iter_mut()
            .find(|k| k.rule == r.rule && k.what.starts_with("the keys of "))
    });
    match same_keys.flatten() {
        Some(k) => k.what.push_str(&format!(", {label}")),
        None => refused.push(r),
    }
    true
}

/// Subscribes to `channel` on a connection of its own and leaves: the refusal of SUBSCRIBE or
/// of the channel, if any. Other errors (unreachable) are returned.
pub(crate) async fn probe_subscribe(
    endpoint: &Endpoint,
    db: u8,
    channel: &str,
) -> super::Result<Vec<Refusal>> {
    let mut refused = Vec::new();
    let tried = super::keyspace::values::try_subscribe(&endpoint.url, db, channel).await;
    if let Err(e) = tried {
        let rule = format!("&{channel}");
        if !note(&mut refused, &e, "SUBSCRIBE", "+subscribe", &rule) {
            return Err(endpoint.err("subscribing")(e));
        }
    }
    Ok(refused)
}

/// A key matching the glob `pattern` that no producer writes: each `*` becomes [`PROBE_ID`],
/// each `?` an `x`; a pattern with a character class falls back to `prefix` + [`PROBE_ID`].
pub(crate) fn probe_key(pattern: &str, prefix: &str) -> String {
    if pattern.contains(['[', '\\']) {
        return format!("{prefix}{PROBE_ID}");
    }
    pattern.replace('*', PROBE_ID).replace('?', "x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_rule() {
        let cmd = "NOPERM this user has no permissions to run the 'xautoclaim' command";
        let r = refusal(cmd, "XAUTOCLAIM", "+xautoclaim", "~s").unwrap();
        assert_eq!(
            (r.what.as_str(), r.rule.as_str()),
            ("XAUTOCLAIM", "+xautoclaim")
        );
        let sub = "NOPERM this user has no permissions to run the 'xinfo|groups' command";
        let r = refusal(sub, "XINFO GROUPS", "+xinfo|groups", "~s").unwrap();
        assert_eq!(
            (r.what.as_str(), r.rule.as_str()),
            ("XINFO GROUPS", "+xinfo|groups")
        );
        let key = "NOPERM this user has no permissions to access one of the keys used as arguments";
        let r = refusal(key, "MGET", "+mget", "%R~alert:*").unwrap();
        assert_eq!(r.rule, "%R~alert:*");
        let script =
            "ERR The user executing the script can't run this command or subcommand script: x";
        assert_eq!(
            refusal(script, "PTTL", "+pttl", "~a").unwrap().rule,
            "+pttl"
        );
        assert!(refusal("ERR no such key", "RENAME", "+rename", "~k").is_none());
    }

    #[test]
    fn probe_keys_match_their_pattern() {
        assert_eq!(probe_key("alert:*", "alert:"), "alert:spillway-acl-probe");
        assert_eq!(probe_key("a?:*", "a"), "ax:spillway-acl-probe");
        assert_eq!(
            probe_key("alert:[ab]*", "alert:"),
            "alert:spillway-acl-probe"
        );
    }

    #[test]
    fn the_message_names_user_rule_and_doc() {
        let e = AclError {
            instance: "rtrs".into(),
            user: "spillway".into(),
            refused: vec![Refusal {
                what: "XAUTOCLAIM".into(),
                rule: "+xautoclaim".into(),
            }],
        };
        let text = e.to_string();
        assert!(text.starts_with(
            "Redis rtrs refused XAUTOCLAIM for user spillway: add `+xautoclaim` to its ACL"
        ));
        assert!(text.contains("ACL SETUSER spillway +xautoclaim") && text.contains(DOC));
    }
}
