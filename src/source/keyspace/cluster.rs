//! The keyspace source on a Redis Cluster. Each node publishes keyspace notifications of its
//! own keys only (and replicas publish those they replicate), so one keyspace pipeline becomes
//! one [`Keyspace`] per primary it captures from: its own subscriber, readers and rescans on
//! that node, all feeding one capture stage (one memory of what was archived, one account).
//!
//! The topology is read every [`TOPOLOGY_EVERY`] (`CLUSTER NODES`). A primary that appears (a
//! replica promoted, a node added) gets a pipeline that rescans its keys first; one that stops
//! being a primary (demoted, failed) is drained: what it had queued is read back through the
//! cluster client, from whichever node serves each key now. A primary whose slots grew (a
//! migration into it) is rescanned. Keys a node answers `MOVED`/`ASK` for, and every read of a
//! node that stopped answering, go through the cluster client too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::error::{Error, ErrorKind};
use fred::prelude::*;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::account::Account;
use super::capture::Capturer;
use super::config::{KeyspaceSource, Nodes};
use super::values::{Dial, Value};
use super::Keyspace;
use crate::config::KeyspaceSettings;
use crate::metrics as m;
use crate::source::{Endpoint, Result, READ_TIMEOUT};

/// How often the cluster's topology is read.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// One node of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// `host:port` it announces.
    pub addr: String,
    /// A primary, not flagged failing, serving slots.
    pub serving: bool,
    /// Flagged `fail` or `fail?`, or disconnected.
    pub failing: bool,
    /// Its slot ranges, as written (`0-5460`; importing/migrating markers left out).
    pub slots: Vec<String>,
}

/// Parses `CLUSTER NODES`.
pub(crate) fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // `ip:port@cport[,hostname]`
            let addr = f[1].split('@').next()?.to_string();
            let flags: Vec<&str> = f[2].split(',').collect();
            let bad = ["fail", "fail?", "handshake", "noaddr"];
            let slots: Vec<String> = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| s.to_string())
                .collect();
            let failing = flags.iter().any(|x| bad.contains(x)) || f[7] != "connected";
            let serving = flags.contains(&"master") && !failing && !slots.is_empty();
            Some(Node {
                addr,
                serving,
                failing,
                slots,
            })
        })
        .collect()
}

/// The primaries to capture from: every serving primary, the one at `seed` (`local`, while it
/// is a primary), or those listed.
pub(crate) fn select<'a>(nodes: &Nodes, seed: &str, topology: &'a [Node]) -> Vec<&'a Node> {
    topology
        .iter()
        .filter(|n| n.serving)
        .filter(|n| match nodes {
            Nodes::All => true,
            Nodes::Local => n.addr == seed,
            Nodes::List(list) => list.contains(&n.addr),
        })
        .collect()
}

/// How long one node may take to answer `CLUSTER NODES` before the next is asked.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// `CLUSTER NODES` from the first of `addrs` that answers within [`ASK_TIMEOUT`], each on a
/// connection of its own: a node that died (or sits behind a cut link) costs one timeout, not
/// the command client's.
pub(crate) async fn topology(
    endpoint: &Endpoint,
    addrs: &[String],
) -> std::result::Result<Vec<Node>, Error> {
    let mut last = Error::new(ErrorKind::Config, "no node of the cluster is known");
    for addr in addrs {
        match tokio::time::timeout(ASK_TIMEOUT, cluster_nodes(endpoint, addr)).await {
            Ok(Ok(text)) => return Ok(parse_nodes(&text)),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = Error::new(
                    ErrorKind::Timeout,
                    format!("{addr} did not answer CLUSTER NODES within {ASK_TIMEOUT:?}"),
                )
            }
        }
    }
    Err(last)
}

/// `CLUSTER NODES` of the node at `addr`.
async fn cluster_nodes(endpoint: &Endpoint, addr: &str) -> std::result::Result<String, Error> {
    let mut conn = Dial::new(&endpoint.node_url(addr), 0)?.open().await?;
    conn.send(&[vec![&b"CLUSTER"[..], b"NODES"]]).await?;
    match conn.value(16 << 20).await? {
        Value::Bytes(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        _ => Err(Error::new(
            ErrorKind::Protocol,
            "CLUSTER NODES answered no text",
        )),
    }
}

/// The nodes to ask for the topology, in order: the serving primaries, the other nodes not
/// failing, then the URL's seeds.
fn ask_order(topology: &[Node], seeds: &[String]) -> Vec<String> {
    let mut order: Vec<String> = topology
        .iter()
        .filter(|n| n.serving)
        .chain(topology.iter().filter(|n| !n.serving && !n.failing))
        .map(|n| n.addr.clone())
        .collect();
    for s in seeds {
        if !order.contains(s) {
            order.push(s.clone());
        }
    }
    order
}

/// `host:port` of the URL and of each `node=` seed in it.
pub(crate) fn seeds(url: &str) -> Vec<String> {
    let Ok(u) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut out = vec![format!(
        "{}:{}",
        u.host_str().unwrap_or(""),
        u.port().unwrap_or(6379)
    )];
    out.extend(
        u.query_pairs()
            .filter(|(k, _)| k == "node")
            .map(|(_, v)| v.into_owned()),
    );
    out
}

/// What every node's pipeline shares.
struct Shared {
    name: String,
    def: KeyspaceSource,
    endpoint: Endpoint,
    settings: KeyspaceSettings,
    cluster: Client,
    capturer: Arc<Capturer>,
    account: Account,
    recreated: Option<watch::Receiver<u64>>,
}

/// A node's pipeline, running.
struct Running {
    slots: Vec<String>,
    stop: CancellationToken,
    /// Cancelled when the node is taken for failed: its reads fail at once.
    gone: CancellationToken,
    rescan: Arc<Notify>,
    task: JoinHandle<()>,
}

/// A keyspace pipeline over the primaries of a Redis Cluster.
pub(crate) struct ClusterKeyspace {
    shared: Arc<Shared>,
    /// `host:port` of the URL (the first: what `nodes = "local"` means) and of its `node=`
    /// seeds.
    seeds: Vec<String>,
    /// Whom to ask for the topology, in order.
    ask: Vec<String>,
    /// Pipelines connected at start (so that a wrong setting fails the start), by address.
    first: Vec<(Node, Keyspace)>,
}

impl ClusterKeyspace {
    /// Reads the topology and connects a pipeline to each primary selected; fails when one
    /// cannot be (notifications, permissions, URL), as a single server's start would.
    pub(crate) async fn connect(
        name: &str,
        def: KeyspaceSource,
        endpoint: Endpoint,
        settings: &KeyspaceSettings,
        tx: crate::channel::RecordTx,
    ) -> Result<ClusterKeyspace> {
        let cluster = endpoint.routed_client(0, Some(READ_TIMEOUT)).await?;
        let seeds = seeds(&endpoint.url);
        let topo = topology(&endpoint, &seeds)
            .await
            .map_err(endpoint.err("reading the cluster's nodes (CLUSTER NODES)"))?;
        let seed = seeds[0].clone();
        let (capturer, account) = super::capture_stage(name, &endpoint, &def, settings, tx);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            def,
            endpoint,
            settings: *settings,
            cluster,
            capturer,
            account,
            recreated: None,
        });
        let mut first = Vec::new();
        let chosen = select(&shared.def.nodes, &seed, &topo);
        if chosen.is_empty() {
            tracing::warn!(pipeline = name, nodes = ?shared.def.nodes, seed = %seed, "no primary of the cluster is to be captured from now; waiting for one");
        }
        for node in chosen {
            let ks = shared.connect_node(&node.addr, shared.def.clone()).await?;
            first.push((node.clone(), ks));
        }
        tracing::info!(
            pipeline = name,
            primaries = first.len(),
            "keyspace source on a Redis Cluster"
        );
        Ok(ClusterKeyspace {
            shared,
            ask: ask_order(&topo, &seeds),
            seeds,
            first,
        })
    }

    /// The cluster client, for readiness checks.
    pub(crate) fn reader(&self) -> Client {
        self.shared.cluster.clone()
    }

    /// Every node's pipeline forgets what it archived and rescans when `recreated` changes.
    pub(crate) fn rescan_on(&mut self, recreated: watch::Receiver<u64>) {
        Arc::get_mut(&mut self.shared)
            .expect("before run")
            .recreated = Some(recreated);
    }

    /// Runs every node's pipeline and follows the topology until `cancel`; then every node
    /// drains (within `drain_for`).
    pub(crate) async fn run(self, cancel: CancellationToken, drain_for: Duration) {
        let shared = self.shared;
        let name = shared.name.clone();
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut leaving: Vec<JoinHandle<()>> = Vec::new();
        let mut ask = self.ask;
        for (node, ks) in self.first {
            let r = spawn(&shared, &cancel, drain_for, node.addr.clone(), Some(ks));
            running.insert(
                node.addr.clone(),
                Running {
                    slots: node.slots,
                    ..r
                },
            );
        }
        let changes = |kind: &'static str| metrics::counter!(m::CLUSTER_CHANGES, "pipeline" => name.clone(), "kind" => kind);
        let mut tick = tokio::time::interval(TOPOLOGY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            metrics::gauge!(m::CLUSTER_NODES, "pipeline" => name.clone()).set(running.len() as f64);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let topo = match topology(&shared.endpoint, &ask).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "reading the cluster's topology failed; retrying");
                    continue;
                }
            };
            ask = ask_order(&topo, &self.seeds);
            let chosen = select(&shared.def.nodes, &self.seeds[0], &topo);
            let gone: Vec<String> = running
                .keys()
                .filter(|a| !chosen.iter().any(|n| &n.addr == *a))
                .cloned()
                .collect();
            for addr in gone {
                let r = running.remove(&addr).expect("listed");
                tracing::warn!(pipeline = %name, node = %addr, "no longer a primary serving slots: draining its pipeline (what it queued is read through the cluster)");
                changes("removed").increment(1);
                // A node failed (or gone from the topology) will not answer: what it queued
                // is read through the cluster at once. A demoted one still answers (MOVED).
                if topo.iter().all(|n| n.addr != addr || n.failing) {
                    r.gone.cancel();
                }
                r.stop.cancel();
                leaving.push(r.task);
            }
            for node in chosen {
                match running.get_mut(&node.addr) {
                    Some(r) if r.slots != node.slots => {
                        tracing::info!(pipeline = %name, node = %node.addr, slots = ?node.slots, "slots changed: rescanning the node");
                        changes("slots").increment(1);
                        r.slots = node.slots.clone();
                        r.rescan.notify_one();
                    }
                    Some(_) => {}
                    None => {
                        tracing::info!(pipeline = %name, node = %node.addr, "new primary: subscribing, then rescanning its keys");
                        changes("added").increment(1);
                        let r = spawn(&shared, &cancel, drain_for, node.addr.clone(), None);
                        running.insert(
                            node.addr.clone(),
                            Running {
                                slots: node.slots.clone(),
                                ..r
                            },
                        );
                    }
                }
            }
            leaving.retain(|t| !t.is_finished());
        }
        for (_, r) in running {
            leaving.push(r.task);
        }
        for t in leaving {
            let _ = t.await;
        }
        shared.account.publish();
        shared.account.log(&name);
        metrics::gauge!(m::CLUSTER_NODES, "pipeline" => name.clone()).set(0.0);
        let _ = shared.cluster.quit().await;
    }
}

impl Shared {
    /// A pipeline on the node at `addr`, sharing the capture stage and the cluster client.
    async fn connect_node(&self, addr: &str, def: KeyspaceSource) -> Result<Keyspace> {
        let mut ks = Keyspace::connect_node(
            &self.name,
            def,
            self.endpoint.node(addr),
            &self.settings,
            self.capturer.clone(),
            self.account.clone(),
        )
        .await?;
        ks.through_cluster(self.cluster.clone());
        Ok(ks)
    }
}

/// Starts the pipeline of the node at `addr` (connected already, or connecting until it is or
/// `stop`): nodes added after the start rescan first.
fn spawn(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    drain_for: Duration,
    addr: String,
    connected: Option<Keyspace>,
) -> Running {
    let (stop, gone) = (cancel.child_token(), CancellationToken::new());
    let rescan = Arc::new(Notify::new());
    let task = {
        let (shared, stop, rescan) = (shared.clone(), stop.clone(), rescan.clone());
        let gone = gone.clone();
        tokio::spawn(async move {
            let mut ks = match connected {
                Some(ks) => ks,
                None => {
                    let mut def = shared.def.clone();
                    def.rescan_on_start = true;
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        match shared.connect_node(&addr, def.clone()).await {
                            Ok(ks) => break ks,
                            Err(e) => {
                                tracing::warn!(pipeline = %shared.name, node = %addr, error = %e, "connecting to a primary failed; retrying");
                            }
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            ks.rescan_when(rescan);
            if let Some(r) = &shared.recreated {
                ks.rescan_on(r.clone());
            }
            let node_gone = ks.gone();
            let link = tokio::spawn(async move {
                gone.cancelled().await;
                node_gone.cancel();
            });
            ks.run(stop, drain_for).await;
            link.abort();
        })
    };
    Running {
        slots: Vec::new(),
        stop,
        gone,
        rescan,
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,host2 master - 0 1426238316232 2 connected 5461-10922 [5462->-e7d1]
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 disconnected 10923-16383
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
a1b2 127.0.0.1:30005@31005 master - 0 0 5 connected
";

    #[test]
    fn serving_primaries_are_those_with_slots_not_failing() {
        let topo = parse_nodes(NODES);
        let serving: Vec<&str> = select(&Nodes::All, "", &topo)
            .iter()
            .map(|n| n.addr.as_str())
            .collect();
        assert_eq!(serving, ["127.0.0.1:30002", "127.0.0.1:30001"]);
        assert_eq!(topo[1].slots, ["5461-10922"]);
        let local = select(&Nodes::Local, "127.0.0.1:30001", &topo);
        assert_eq!(local.len(), 1);
        assert!(select(&Nodes::Local, "127.0.0.1:30004", &topo).is_empty());
        let listed = Nodes::List(vec!["127.0.0.1:30002".into(), "127.0.0.1:30003".into()]);
        assert_eq!(select(&listed, "", &topo).len(), 1);
    }

    #[test]
    fn the_topology_is_asked_of_serving_primaries_first_then_the_seeds() {
        let topo = parse_nodes(NODES);
        let seeds = seeds("redis-cluster://u:p@10.0.0.9:7000?node=127.0.0.1:30001&node=b:1");
        assert_eq!(seeds, ["10.0.0.9:7000", "127.0.0.1:30001", "b:1"]);
        let order = ask_order(&topo, &seeds);
        assert_eq!(
            order,
            [
                "127.0.0.1:30002",
                "127.0.0.1:30001",
                "127.0.0.1:30004",
                "127.0.0.1:30005",
                "10.0.0.9:7000",
                "b:1"
            ]
        );
    }
}
