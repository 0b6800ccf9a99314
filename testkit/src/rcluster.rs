//! A real Redis Cluster on loopback: N primaries, each with R replicas, every node a
//! [`RedisServer`] with `cluster-enabled yes`, created with `redis-cli --cluster create`. Faults
//! as production has them: a graceful `CLUSTER FAILOVER`, a primary SIGKILLed and replaced by its
//! replica, a slot range migrated with `redis-cli --cluster reshard`, and (with
//! [`RedisCluster::start_with_netns`]) a primary cut off by a network link taken down.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::{free_port, RedisServer};

/// Held by a test that runs a cluster under load: such tests run one at a time (each takes a
/// good part of the machine's two cores; two side by side starved each other's failovers).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// One node as `CLUSTER NODES` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// `host:port` it announces.
    pub addr: String,
    /// Primary (`master` flag, not failed).
    pub primary: bool,
    /// Flagged `fail` or `fail?`.
    pub failing: bool,
    /// For a replica, its primary's id.
    pub primary_id: Option<String>,
    /// Slot ranges it serves, as written (`0-5460`).
    pub slots: Vec<String>,
}

/// A Redis Cluster whose nodes are stopped on drop.
pub struct RedisCluster {
    /// Every node, in creation order: the first `primaries` were created as primaries.
    pub nodes: Vec<RedisServer>,
    /// Stopped nodes (by index): kept for restart.
    stopped: Vec<usize>,
    /// The namespace the last primary runs in, with [`RedisCluster::start_with_netns`].
    pub netns: Option<NetNs>,
}

/// Arguments every node gets; `cluster-port` explicit (the default, port + 10000, may not be
/// free or may overflow), a short node timeout so that failovers take seconds.
fn node_args(announce: Option<&str>) -> Vec<String> {
    let bus = free_port().to_string();
    let mut args: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        &bus,
        "--cluster-require-full-coverage",
        "no",
        // A replica's first sync starts at once (the default waits 5 s for more replicas): a
        // replica that never synced cannot take over.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(ip) = announce {
        args.extend(["--cluster-announce-ip".into(), ip.to_string()]);
    }
    args
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, all on 127.0.0.1; returns once every
    /// node says `cluster_state:ok` and knows every other.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let total = primaries * (1 + replicas);
        let nodes = (0..total)
            .map(|_| {
                let args = node_args(None);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                RedisServer::start_with(&refs)
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            stopped: Vec::new(),
            netns: None,
        };
        cluster.create(replicas);
        cluster
    }

    /// Like [`RedisCluster::start`] with one replica each, but the last primary runs in a
    /// network namespace of its own (the others bind the host's end of the link as well as
    /// 127.0.0.1 and announce it, so every node reaches every other); `None` when namespaces
    /// cannot be made here (not root).
    pub fn start_with_netns(primaries: usize) -> Option<Self> {
        let ns = crate::netns::netns_or_skip("redis cluster with a namespaced primary")?;
        let (host, inside) = (ns.host_addr.to_string(), ns.addr.to_string());
        let mut nodes = Vec::new();
        // Creation order: primaries first (the last of them namespaced), then replicas.
        for i in 0..primaries * 2 {
            let namespaced = i == primaries - 1;
            let announce = if namespaced { &inside } else { &host };
            let args = node_args(Some(announce));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let node = if namespaced {
                RedisServer::start_at(&ns.prefix(), &inside, &refs)
            } else {
                RedisServer::start_at(&[], &host, &refs)
            };
            nodes.push(node);
        }
        let cluster = RedisCluster {
            nodes,
            stopped: Vec::new(),
            netns: Some(ns),
        };
        cluster.create(1);
        // `--cluster create` spreads primaries over addresses as it likes: make the
        // namespaced node a primary.
        let inside = cluster.netns_node();
        if !cluster.primaries().contains(&inside) {
            cluster.failover(inside);
        }
        Some(cluster)
    }

    /// Index of the node in the namespace (with [`RedisCluster::start_with_netns`]).
    pub fn netns_node(&self) -> usize {
        let ns = self.netns.as_ref().expect("started with a namespace");
        let host = format!("{}:", ns.addr);
        self.nodes
            .iter()
            .position(|n| n.addr().starts_with(&host))
            .expect("a node in the namespace")
    }

    fn create(&self, replicas: usize) {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ok(Duration::from_secs(30));
    }

    /// Waits until every running node says `cluster_state:ok` and lists as many nodes as the
    /// cluster has, with no handshake left.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&RedisServer> = self.running().collect();
            let ok = running.iter().all(|n| {
                let info = n.try_cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                let nodes = n.try_cli(&["CLUSTER", "NODES"]).unwrap_or_default();
                // A replica counts once it has synced with its primary.
                let replication = n.try_cli(&["INFO", "replication"]).unwrap_or_default();
                let synced = replication.contains("role:master")
                    || replication.contains("master_link_status:up");
                info.contains("cluster_state:ok")
                    && nodes.lines().count() == self.nodes.len()
                    && !nodes.contains("handshake")
                    && synced
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok in {timeout:?}: {}",
                running
                    .first()
                    .and_then(|n| n.try_cli(&["CLUSTER", "NODES"]))
                    .unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.stopped.contains(i))
            .map(|(_, n)| n)
    }

    /// A seed URL (the first running node).
    pub fn url(&self) -> String {
        self.running().next().expect("a running node").url()
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let text = self
            .running()
            .find_map(|n| n.try_cli(&["CLUSTER", "NODES"]))
            .expect("a node answers CLUSTER NODES");
        parse_nodes(&text)
    }

    /// Index (in `nodes`) of the node announcing `addr`.
    pub fn index_of(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node at {addr}"))
    }

    /// Indexes of the current primaries (not failing).
    pub fn primaries(&self) -> Vec<usize> {
        self.topology()
            .iter()
            .filter(|n| n.primary && !n.failing)
            .map(|n| self.index_of(&n.addr))
            .collect()
    }

    /// Index of a replica of the primary at index `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let topo = self.topology();
        let addr = self.nodes[primary].addr();
        let id = &topo.iter().find(|n| n.addr == addr).expect("primary").id;
        let replica = topo
            .iter()
            .find(|n| n.primary_id.as_ref() == Some(id) && !n.failing)
            .expect("a replica of that primary");
        self.index_of(&replica.addr)
    }

    /// Index of the primary serving `key` now.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[self.primaries()[0]]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number");
        let topo = self.topology();
        let owner = topo
            .iter()
            .filter(|n| n.primary && !n.failing)
            .find(|n| {
                n.slots.iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
            })
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"));
        self.index_of(&owner.addr)
    }

    /// `CLUSTER FAILOVER` on the replica at `replica` (graceful: no write is lost); returns once
    /// it is a primary and the cluster is ok.
    pub fn failover(&self, replica: usize) {
        self.nodes[replica].cli(&["CLUSTER", "FAILOVER"]);
        self.wait_primary(replica, Duration::from_secs(20));
        self.wait_ok(Duration::from_secs(20));
    }

    /// Waits until the node at `index` is a primary in every running node's view.
    pub fn wait_primary(&self, index: usize, timeout: Duration) {
        let addr = self.nodes[index].addr();
        let deadline = Instant::now() + timeout;
        loop {
            let promoted = self.running().all(|n| {
                n.try_cli(&["CLUSTER", "NODES"]).is_some_and(|t| {
                    parse_nodes(&t)
                        .iter()
                        .any(|x| x.addr == addr && x.primary && !x.failing)
                })
            });
            if promoted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} not promoted in {timeout:?}: {:?}",
                self.topology()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the node at `index` (its data is gone: no persistence).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
        self.stopped.push(index);
    }

    /// Starts a killed node again (empty, same port and node id from its nodes.conf): it
    /// rejoins as a replica of whoever took its slots.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
        self.stopped.retain(|i| *i != index);
    }

    /// Moves `slots` slots from the primary at `from` to the primary at `to` with their keys
    /// (`redis-cli --cluster reshard`, which MIGRATEs key by key while clients are redirected).
    pub fn reshard(&self, from: usize, to: usize, slots: usize) {
        let topo = self.topology();
        let id = |i: usize| {
            let addr = self.nodes[i].addr();
            topo.iter()
                .find(|n| n.addr == addr)
                .expect("node")
                .id
                .clone()
        };
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &self.nodes[from].addr()])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?.split(',').next()?.to_string();
            let flags: Vec<&str> = f[2].split(',').collect();
            let failing = flags.iter().any(|x| *x == "fail" || *x == "fail?");
            Some(NodeInfo {
                id: f[0].to_string(),
                addr,
                primary: flags.contains(&"master"),
                failing,
                primary_id: (f[3] != "-").then(|| f[3].to_string()),
                slots: f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| s.to_string())
                    .collect(),
            })
        })
        .collect()
}

/// The RLS a benchmark writes into: one redis-server, or (with `BENCH_REDIS_CLUSTER=P`) a Redis
/// Cluster of P primaries without replicas.
pub enum Rls {
    /// One redis-server.
    One(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl Rls {
    /// As `BENCH_REDIS_CLUSTER` says.
    pub fn start() -> Rls {
        match std::env::var("BENCH_REDIS_CLUSTER")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(p) if p > 0 => Rls::Cluster(RedisCluster::start(p, 0)),
            _ => Rls::One(RedisServer::start()),
        }
    }

    /// Every node.
    pub fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Rls::One(r) => vec![r],
            Rls::Cluster(c) => c.nodes.iter().collect(),
        }
    }

    /// The URL Spillway and the producer use (`redis-cluster://` for a cluster).
    pub fn url(&self) -> String {
        match self {
            Rls::One(r) => r.url(),
            Rls::Cluster(c) => c.url().replacen("redis://", "redis-cluster://", 1),
        }
    }

    /// Keys on every node.
    pub fn dbsize(&self) -> u64 {
        self.nodes()
            .iter()
            .map(|r| r.cli(&["DBSIZE"]).parse::<u64>().unwrap_or(0))
            .sum()
    }
}
