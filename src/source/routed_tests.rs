//! [`super::routed::pipelined`] on a real Redis Cluster while a slot migrates: commands side by
//! side, some answered `ASK` by the slot's old node, every other one answered by the node it
//! went to; each reply must be its own command's (fred's own `ASK` following reads `ASKING`'s
//! answer off a connection with commands in flight and hands replies to the wrong commands).

use std::time::Duration;

use fred::prelude::*;
use fred::types::Key;
use spillway_testkit::rcluster::{NodeInfo, RedisCluster};

use super::routed::{pipelined, Routed};
use super::Endpoint;

/// Index in `cluster.nodes` of the primary serving `slot` in `nodes` (`CLUSTER NODES`), and its
/// node id.
fn owner(cluster: &RedisCluster, nodes: &[NodeInfo], slot: u16) -> (usize, String) {
    let node = nodes
        .iter()
        .filter(|n| n.primary)
        .find(|n| {
            n.slots.iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&slot)
            })
        })
        .expect("an owner");
    (cluster.index_of(&node.addr), node.id.clone())
}

fn slot(key: &str) -> u16 {
    Key::from(key).cluster_hash()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_is_its_own_commands_while_a_slot_migrates() {
    let _one_at_a_time = spillway_testkit::rcluster::exclusive().await;
    let cluster = RedisCluster::start(3, 0);
    let endpoint = Endpoint {
        instance: "rls".into(),
        url: cluster.url().replace("redis://", "redis-cluster://"),
    };
    let client = endpoint.routed_client(0, None).await.expect("client");
    // The slot of `{moving}`: its keys are absent from their old node, which answers ASK.
    let nodes = cluster.topology();
    let moving = slot("{moving}");
    let (from, from_id) = owner(&cluster, &nodes, moving);
    let to = (0..3).find(|i| *i != from).unwrap();
    let to_addr = cluster.nodes[to].addr();
    let to_id = nodes.iter().find(|n| n.addr == to_addr).unwrap().id.clone();
    // Keys the target serves throughout, each holding its own name.
    let to_slot = |k: &str| owner(&cluster, &nodes, slot(k)).0 == to;
    let stay: Vec<String> = (0..)
        .map(|i| format!("stay-{i}"))
        .filter(|k| to_slot(k))
        .take(300)
        .collect();
    let p = client.pipeline();
    for k in &stay {
        let () = p
            .set(k.as_str(), k.as_str(), None, None, false)
            .await
            .unwrap();
    }
    let _: Vec<Value> = p.all().await.unwrap();
    cluster.nodes[to].cli(&[
        "CLUSTER",
        "SETSLOT",
        &moving.to_string(),
        "IMPORTING",
        &from_id,
    ]);
    cluster.nodes[from].cli(&[
        "CLUSTER",
        "SETSLOT",
        &moving.to_string(),
        "MIGRATING",
        &to_id,
    ]);
    let finish = {
        let (a, b) = (cluster.nodes[to].url(), cluster.nodes[from].url());
        let (slot, to_id) = (moving.to_string(), to_id.clone());
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(1500));
            for url in [a, b] {
                let out = std::process::Command::new("redis-cli")
                    .args(["-u", &url, "CLUSTER", "SETSLOT", &slot, "NODE", &to_id])
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }
        })
    };
    let mut wrong = Vec::new();
    for round in 0..10 {
        let mut cmds = Vec::new();
        let mut want = Vec::new();
        for (i, k) in stay.iter().enumerate() {
            cmds.push(Routed::new("GET", k, &[]));
            want.push(Some(k.clone()));
            if i % 50 == 25 {
                let m = format!("{{moving}}{round}-{i}");
                cmds.push(Routed::new("GET", &m, &[]));
                want.push(None);
            }
        }
        let replies = tokio::time::timeout(Duration::from_secs(30), pipelined(&client, cmds))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no reply in 30 s"));
        for (reply, want) in replies.into_iter().zip(want) {
            let got = reply.map(|v| v.as_string());
            if got.as_ref().ok() != Some(&want) {
                wrong.push(format!("{want:?}: {got:?}"));
            }
        }
    }
    finish.await.unwrap();
    assert!(
        wrong.is_empty(),
        "{} replies were another command's: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}
