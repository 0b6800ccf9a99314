//! Pipelines that stay pipelines on a Redis Cluster. fred writes a whole pipeline to the node
//! of its first command: the commands for keys of other nodes come back `MOVED`, one by one,
//! and each redirect costs fred a resynchronisation of the slots (measured: moving execution
//! logs from a 3-primary cluster ran at a quarter of the single-server rate, with a `CLUSTER
//! SLOTS` and a new connection for two trades in three). Here the commands are grouped by the
//! node that serves their key (fred's routing table), one pipeline per node, the pipelines run
//! side by side, and the replies come back in the order the commands were given. On one server
//! it is one pipeline.

use fred::error::Error;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Key};

/// One command: the key it is routed by, the command, its arguments (the key among them).
pub(crate) struct Routed {
    /// The key whose slot decides the node.
    pub key: Key,
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
            key: key.clone(),
            cmd: CustomCommand::new_static(name, ClusterHash::Custom(key.cluster_hash()), false),
            args: all,
        }
    }
}

/// Runs `cmds`, one pipeline per node, and returns each command's reply in order.
pub(crate) async fn pipelined(client: &Client, cmds: Vec<Routed>) -> Vec<Result<Value, Error>> {
    let n = cmds.len();
    if n == 0 {
        return Vec::new();
    }
    let groups = group(client, &cmds);
    let mut cmds: Vec<Option<Routed>> = cmds.into_iter().map(Some).collect();
    let mut runs = tokio::task::JoinSet::new();
    for indexes in groups {
        let batch: Vec<Routed> = indexes
            .iter()
            .map(|&i| cmds[i].take().expect("each command in one group"))
            .collect();
        let client = client.clone();
        runs.spawn(async move {
            let p = client.pipeline();
            let mut queued = Vec::with_capacity(batch.len());
            for c in batch {
                queued.push(p.custom::<(), _>(c.cmd, c.args).await);
            }
            let mut replies = p.try_all::<Value>().await.into_iter();
            // A command that could not be queued has no reply in the pipeline.
            let out: Vec<Result<Value, Error>> = queued
                .into_iter()
                .map(|q| match q {
                    Err(e) => Err(e),
                    Ok(()) => replies
                        .next()
                        .unwrap_or_else(|| Err(Error::new(ErrorKind::Unknown, "no reply"))),
                })
                .collect();
            (indexes, out)
        });
    }
    let mut replies: Vec<Option<Result<Value, Error>>> = (0..n).map(|_| None).collect();
    while let Some(done) = runs.join_next().await {
        let (indexes, out) = match done {
            Ok(d) => d,
            Err(e) => {
                let e = Error::new(ErrorKind::Unknown, format!("pipeline task: {e}"));
                return (0..n).map(|_| Err(e.clone())).collect();
            }
        };
        for (i, r) in indexes.into_iter().zip(out) {
            replies[i] = Some(r);
        }
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Unknown, "no reply"))))
        .collect()
}

/// Indexes of `cmds` grouped by the node serving each key (in the order first seen); one group
/// when the client is not a cluster's or its routing table is not known yet.
fn group(client: &Client, cmds: &[Routed]) -> Vec<Vec<usize>> {
    let state = client
        .client_config()
        .server
        .is_clustered()
        .then(|| client.cached_cluster_state())
        .flatten();
    let Some(state) = state else {
        return vec![(0..cmds.len()).collect()];
    };
    let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let node = state
            .get_server(c.key.cluster_hash())
            .map(|s| format!("{}:{}", s.host, s.port));
        match groups.iter_mut().find(|(n, _)| *n == node) {
            Some((_, g)) => g.push(i),
            None => groups.push((node, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}
