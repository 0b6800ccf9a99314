//! The memory poller of a Redis Cluster: finds the nodes with `CLUSTER NODES` (asked of the
//! seed, else of any node seen before) and polls `INFO` on each, labelled by its address.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use super::{Poller, Refused};
use crate::metrics::REDIS_UP;
use crate::source::keyspace::cluster;
use crate::source::{node_url, Endpoint};

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

    /// The nodes' addresses (those not failing) from `CLUSTER NODES` of the URL's seeds or of
    /// a node seen before; None when none answers.
    async fn discover(&self) -> Option<Vec<String>> {
        let endpoint = Endpoint {
            instance: self.instance.clone(),
            url: self.url.clone(),
        };
        let mut ask = cluster::seeds(&self.url);
        ask.extend(self.nodes.keys().cloned());
        let topology = cluster::topology(&endpoint, &ask).await.ok()?;
        Some(
            topology
                .into_iter()
                .filter(|n| !n.failing)
                .map(|n| n.addr)
                .collect(),
        )
    }
}
