//! Many commands at once on one server or a Redis Cluster, each routed by its key's slot,
//! with redirects handled here rather than by fred (see [`pipelined`]), on a client built by
//! [`super::Endpoint::routed_client`], which never follows one itself. fred writes an explicit
//! pipeline's commands one by one, each to its slot's node, but follows an `ASK` in a way that
//! puts replies out of step; and a routing hash it computes wrongly (EVALSHA by
//! `ClusterHash::Offset`) sent every take to one node, each answered `MOVED` (measured: moving
//! execution logs from a 3-primary cluster at a quarter of the single-server rate). Here every
//! command carries its slot outright.

use std::time::Duration;

use fred::error::Error;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Key};

/// One command, routed by its key's slot, and its arguments (the key among them).
#[derive(Clone)]
pub(crate) struct Routed {
    /// The command, its `ClusterHash` the key's slot.
    pub cmd: CustomCommand,
    /// Every argument.
    pub args: Vec<Value>,
}

impl Routed {
    /// `name key args..`.
    pub(crate) fn new(name: &'static str, key: &str, args: &[Value]) -> Routed {
        Routed::on(name, &Key::from(key), args)
    }

    /// `name key args..`, the key as bytes (any key, UTF-8 or not).
    pub(crate) fn on(name: &'static str, key: &Key, args: &[Value]) -> Routed {
        let mut all = Vec::with_capacity(1 + args.len());
        all.push(Value::Bytes(key.as_bytes().to_vec().into()));
        all.extend(args.iter().cloned());
        Routed {
            cmd: CustomCommand::new_static(name, ClusterHash::Custom(key.cluster_hash()), false),
            args: all,
        }
    }
}

/// Runs `cmds` and returns each command's reply in order. The commands go out side by side
/// (fred writes those of one node back to back: a pipeline in effect), each routed by its key's
/// slot and allowed no redirect: fred follows an `ASK` by writing `ASKING` and reading the next
/// reply as its answer, which, with other commands in flight on that connection, hands
/// `ASKING`'s `OK` to the command behind it and puts every later reply out of step. A command
/// answered `MOVED` (fred has then refreshed its slots) or `ASK` (its slot is being migrated)
/// was not run: it is sent again after a pause, until its slot has settled.
///
/// `client` must come from [`super::Endpoint::routed_client`]: on a client that follows
/// redirects, an `ASK` is followed by fred before this function sees it (a per-command
/// `max_redirections` of 0 does not stop it: fred reads 0 as unset), and replies go to the
/// wrong commands (a take reading another log's length, archiving part of its log and
/// deleting the rest).
pub(crate) async fn pipelined(client: &Client, cmds: Vec<Routed>) -> Vec<Result<Value, Error>> {
    if !client.client_config().server.is_clustered() {
        // One server: one pipeline, no redirects.
        let p = client.pipeline();
        let mut queued = Vec::with_capacity(cmds.len());
        for c in cmds {
            queued.push(p.custom::<(), Value>(c.cmd, c.args).await);
        }
        let mut replies = p.try_all::<Value>().await.into_iter();
        return queued
            .into_iter()
            .map(|q| {
                q.and_then(|()| {
                    replies
                        .next()
                        .unwrap_or_else(|| Err(Error::new(ErrorKind::Unknown, "no reply")))
                })
            })
            .collect();
    }
    debug_assert_eq!(
        client.connection_config().max_redirections,
        0,
        "routed::pipelined on a client that follows redirects"
    );
    let n = cmds.len();
    let mut out: Vec<Option<Result<Value, Error>>> = (0..n).map(|_| None).collect();
    let mut todo: Vec<(usize, Routed)> = cmds.into_iter().enumerate().collect();
    let mut pause = Duration::from_millis(10);
    for attempt in 0..=REDIRECTED_ATTEMPTS {
        let mut runs = tokio::task::JoinSet::new();
        for (i, c) in todo.drain(..) {
            let client = client.clone();
            runs.spawn(async move {
                let reply = client
                    .custom::<Value, Value>(c.cmd.clone(), c.args.clone())
                    .await;
                (i, c, reply)
            });
        }
        while let Some(done) = runs.join_next().await {
            let Ok((i, c, reply)) = done else { continue };
            match reply {
                Err(e) if redirected(&e) && attempt < REDIRECTED_ATTEMPTS => todo.push((i, c)),
                reply => out[i] = Some(reply),
            }
        }
        if todo.is_empty() {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Unknown, "no reply"))))
        .collect()
}

/// Times a redirected command is sent again (about 20 s in all) before its error is returned.
const REDIRECTED_ATTEMPTS: u32 = 45;

/// Whether fred refused to follow a redirect (`MOVED` or `ASK`) for a command.
fn redirected(e: &Error) -> bool {
    *e.kind() == ErrorKind::Routing && e.details().contains("redirections")
}
