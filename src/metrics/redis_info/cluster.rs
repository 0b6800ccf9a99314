//! The memory poller of a Redis Cluster: finds the nodes with `CLUSTER NODES` (asked of the
//! seed, else of any node seen before) and polls `INFO` on each, labelled by its address.

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::*;
use metrics::gauge;
use tokio_util::sync::CancellationToken;

use super::{Poller, Refused, TIMEOUT};
use crate::metrics::REDIS_UP;
use crate::source::node_url;

/// Polls every node of one cluster.
pub(super) struct ClusterPoller {
    instance: String,
    url: String,
    refused: Refused,
    /// One poller per node address seen, kept across polls (a node that left stays `up 0`).
    nodes: BTreeMap<String, Poller>,
}

impl ClusterPoller {
    pub(super) fn new(instance: &str, url: &str, refused: Refused) -> Self {
        ClusterPoller {
            instance: instance.to_string(),
            url: url.to_string(),
            refused,
            nodes: BTreeMap::new(),
        }
    }

    pub(super) async fn run(mut self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = self.poll_once() => {}
            }
        }
    }

    async fn poll_once(&mut self) {
        let found = self.discover().await;
        gauge!(REDIS_UP, "instance" => self.instance.clone()).set(if found.is_some() {
            1.0
        } else {
            0.0
        });
        for addr in found.unwrap_or_default() {
            if !self.nodes.contains_key(&addr) {
                let url = node_url(&self.url, &addr);
                let p = Poller::node(&self.instance, &addr, &url, self.refused.clone());
                self.nodes.insert(addr, p);
            }
        }
        for p in self.nodes.values_mut() {
            p.poll_once().await;
        }
    }

    /// The nodes' addresses from `CLUSTER NODES` of the seed or of a node seen before; None
    /// when none answers.
    async fn discover(&self) -> Option<Vec<String>> {
        let seed = url::Url::parse(&self.url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379))));
        for addr in seed.iter().chain(self.nodes.keys()) {
            if let Some(nodes) = cluster_nodes(&node_url(&self.url, addr)).await {
                return Some(nodes);
            }
        }
        None
    }
}

/// `CLUSTER NODES` of the one server at `url`, as the addresses of the nodes not failing.
async fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let config = Config::from_url(url).ok()?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = TIMEOUT;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = TIMEOUT)
        .build()
        .ok()?;
    tokio::time::timeout(TIMEOUT * 2, client.init())
        .await
        .ok()?
        .ok()?;
    let cmd =
        fred::types::CustomCommand::new_static("CLUSTER", fred::types::ClusterHash::Random, false);
    let text: Option<String> = client.custom(cmd, vec!["NODES"]).await.ok();
    let _ = tokio::time::timeout(TIMEOUT, client.quit()).await;
    Some(parse_nodes(&text?))
}

/// Addresses (`host:port`) of the nodes of a `CLUSTER NODES` reply that are not failing.
fn parse_nodes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if flags.contains("fail") || flags.contains("handshake") || flags.contains("noaddr") {
                return None;
            }
            let addr = f.get(1)?.split('@').next()?.split(',').next()?;
            (!addr.starts_with(':')).then(|| addr.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_nodes_become_addresses_without_the_failing() {
        let text = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b 127.0.0.1:7001@17001,host master,fail - 0 0 2 connected\n\
                    c 127.0.0.1:7002@17002 slave a 0 0 1 connected\n";
        assert_eq!(
            super::parse_nodes(text),
            vec!["127.0.0.1:7000".to_string(), "127.0.0.1:7002".to_string()]
        );
    }
}
