//! A ClickHouse cluster of 2 shards x 2 replicas of 18.16 on loopback, coordinated by one
//! [`ZooKeeper`]: each server is a [`ClickHouseServer`] with its own tempdir and ports, and a
//! config naming the cluster ([`ClickHouseCluster::NAME`], `internal_replication` so that a
//! `Distributed` insert goes to one replica per shard and replication does the rest), its
//! `{shard}` and `{replica}` macros, ZooKeeper and the `ON CLUSTER` DDL queue.

use std::time::Duration;

use super::zookeeper::ZooKeeper;
use super::{ClickHouseServer, LegacyPorts};

/// Shards of the test cluster.
pub const SHARDS: usize = 2;
/// Replicas of each shard.
pub const REPLICAS: usize = 2;

/// A running cluster; servers stop on drop (then ZooKeeper).
pub struct ClickHouseCluster {
    /// Node `shard * REPLICAS + replica` (both from 0).
    nodes: Vec<ClickHouseServer>,
    /// Last, so it outlives the servers.
    pub zookeeper: ZooKeeper,
}

impl ClickHouseCluster {
    /// The cluster's name under `<remote_servers>`.
    pub const NAME: &'static str = "spillway_test";

    /// Starts ZooKeeper, then the four servers (at once), and waits until each answers and has
    /// its ZooKeeper session.
    pub fn start() -> ClickHouseCluster {
        let zookeeper = ZooKeeper::start();
        let ports: Vec<LegacyPorts> = (0..SHARDS * REPLICAS)
            .map(|_| LegacyPorts::free())
            .collect();
        let remote = remote_servers(&ports);
        let nodes = std::thread::scope(|s| {
            let started: Vec<_> = ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let extra = node_config(&remote, zookeeper.port, i);
                    s.spawn(move || ClickHouseServer::start_legacy_at(*p, &extra))
                })
                .collect();
            started
                .into_iter()
                .map(|h| h.join().expect("a cluster node started"))
                .collect()
        });
        let cluster = ClickHouseCluster { nodes, zookeeper };
        for i in 0..SHARDS * REPLICAS {
            cluster.wait_for_session(i);
        }
        cluster
    }

    /// Waits until node `i` has its ZooKeeper session: 18.16 answers `/ping` before, and crashes
    /// on an `ON CLUSTER` statement without one.
    fn wait_for_session(&self, i: usize) {
        let node = &self.nodes[i];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let sql = "SELECT count() FROM system.zookeeper WHERE path = '/'";
        let request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        );
        loop {
            let asked = super::tcp_roundtrip(node.http_port, request.as_bytes())
                .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"));
            if asked {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} has no ZooKeeper session after 30 s:\n{}\nZooKeeper:\n{}",
                node.error_log(),
                self.zookeeper.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i` (`shard * REPLICAS + replica`).
    pub fn node(&self, i: usize) -> &ClickHouseServer {
        &self.nodes[i]
    }

    /// The other replica of node `i`'s shard.
    pub fn twin(i: usize) -> usize {
        i - i % REPLICAS + (i + 1) % REPLICAS
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and data (waits until it answers and has its
    /// ZooKeeper session).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start_again();
        self.wait_for_session(i);
    }

    /// Runs `sql` on node `i` (see [`ClickHouseServer::query`]).
    pub async fn query(&self, i: usize, sql: &str) -> String {
        self.nodes[i].query(sql).await
    }

    /// Runs `sql`, a single number, on node `i`.
    pub async fn count(&self, i: usize, sql: &str) -> u64 {
        self.nodes[i].count(sql).await
    }

    /// Polls `sql` on node `i` until it gives `want`; the last value after `timeout`.
    pub async fn count_until(&self, i: usize, sql: &str, want: u64, timeout: Duration) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let n = self.count(i, sql).await;
            if n == want || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `<remote_servers>` of the cluster: shards in order, each with its replicas' native ports.
fn remote_servers(ports: &[LegacyPorts]) -> String {
    let shards: String = ports
        .chunks(REPLICAS)
        .map(|shard| {
            let replicas: String = shard
                .iter()
                .map(|p| {
                    format!(
                        "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                        p.tcp
                    )
                })
                .collect();
            format!("<shard><internal_replication>true</internal_replication>{replicas}</shard>")
        })
        .collect();
    format!(
        "<remote_servers><{name}>{shards}</{name}></remote_servers>",
        name = ClickHouseCluster::NAME
    )
}

/// The cluster part of node `i`'s config. A ZooKeeper session of 3 s: a killed server's
/// replicas are seen inactive soon, and its restart takes them back without waiting 30 s.
/// `replicated_max_ratio_of_wrong_parts = 1`: a killed server may find, at its restart, parts
/// on disk it had written or fetched but not yet recorded in ZooKeeper; in the test's small
/// tables they can exceed the default half of the rows, and the server would refuse to start
/// ("doesn't look like the set of parts in ZooKeeper").
fn node_config(remote: &str, zk_port: u16, i: usize) -> String {
    let (shard, replica) = (i / REPLICAS + 1, i % REPLICAS + 1);
    format!(
        "  {remote}\n  <zookeeper><node><host>127.0.0.1</host><port>{zk_port}</port></node>\
         <session_timeout_ms>3000</session_timeout_ms></zookeeper>\n  \
         <macros><shard>{shard}</shard><replica>s{shard}r{replica}</replica></macros>\n  \
         <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n  \
         <interserver_http_host>127.0.0.1</interserver_http_host>\n  \
         <merge_tree><replicated_max_ratio_of_wrong_parts>1</replicated_max_ratio_of_wrong_parts></merge_tree>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_share_a_shard() {
        assert_eq!(
            (0..4).map(ClickHouseCluster::twin).collect::<Vec<_>>(),
            [1, 0, 3, 2]
        );
    }
}
