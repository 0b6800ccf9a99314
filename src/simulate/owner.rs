//! Whether the simulator may write into a Redis. It writes made-up alerts and closes made-up
//! trades, which a Spillway reading that Redis would archive as real: so it writes only into a
//! Redis (database) that is empty, or that it marked as its own ([`OWNER_KEY`], set when it
//! starts on an empty one), unless `--allow-nonempty` says the Redis is the operator's to fill.
//! Every target is checked before anything is written to any of them; of a Redis Cluster, every
//! primary.

use fred::cmd;
use fred::prelude::*;

use crate::config::redact_url;

/// The key the simulator sets in a Redis it starts on empty: the Redis is then its own to
/// write into on the next runs.
pub(crate) const OWNER_KEY: &str = "spillway:simulate:owner";

/// Keys named in a refusal, at most.
const SAMPLE: usize = 3;

/// What a Redis holds, as far as the simulator is concerned.
#[derive(Debug, PartialEq)]
enum Holds {
    /// No key at all.
    Empty,
    /// The owner key: a Redis the simulator started on empty.
    Ours,
    /// Keys the simulator did not write: how many, and a few of their names.
    Foreign(u64, Vec<String>),
}

/// Checks every target (its name, its flag and its URL) and, when all may be written into,
/// marks those that were empty as the simulator's own; otherwise fails naming the Redis, what
/// it holds and `--allow-nonempty`, having written nothing.
pub(super) async fn claim(
    targets: &[(&str, &str, &str)],
    allow_nonempty: bool,
    run: &str,
) -> anyhow::Result<()> {
    let mut empty = Vec::new();
    for &(what, flag, url) in targets {
        let client = super::connect(url, what).await?;
        let holds = holds(&client).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot tell what {what} at {} holds: {}",
                redact_url(url),
                e.details()
            )
        })?;
        match holds {
            Holds::Empty => {
                empty.push((client, what));
                continue;
            }
            Holds::Ours => {}
            Holds::Foreign(keys, _) if allow_nonempty => println!(
                "{what} at {} holds {keys} keys the simulator did not write; writing anyway (--allow-nonempty)",
                redact_url(url)
            ),
            Holds::Foreign(keys, sample) => {
                let e_g = match sample.is_empty() {
                    true => String::new(),
                    false => format!(" (e.g. {})", sample.join(", ")),
                };
                anyhow::bail!(
                    "refusing to write into {what} at {}: it holds {keys} key{} the simulator did \
                     not write{e_g}. `spillway simulate` writes made-up alerts and trades; point \
                     {flag} at a Redis of its own (empty), or pass --allow-nonempty if this one \
                     is yours to fill",
                    redact_url(url),
                    if keys == 1 { "" } else { "s" },
                )
            }
        }
        client.quit().await.ok();
    }
    let value = format!(
        "written by spillway simulate, run {run}, at {} ms",
        crate::rows::now_ms()
    );
    for (client, what) in empty {
        let _: Option<String> = client
            .set(OWNER_KEY, value.as_str(), None, Some(SetOptions::NX), false)
            .await
            .map_err(|e| anyhow::anyhow!("marking {what} as the simulator's: {}", e.details()))?;
        client.quit().await.ok();
    }
    Ok(())
}

/// What the Redis of `client` (its database) holds; of a Redis Cluster, every primary: `DBSIZE`
/// and `SCAN` without a key go to one node, which may be empty while the others hold keys.
async fn holds(client: &Client) -> Result<Holds, Error> {
    let ours: i64 = client.exists(OWNER_KEY).await?;
    if ours > 0 {
        return Ok(Holds::Ours);
    }
    let (mut keys, mut sample) = (0, Vec::new());
    if client.is_clustered() {
        for server in primaries(client)? {
            count_keys(&client.with_cluster_node(server), &mut keys, &mut sample).await?;
        }
    } else {
        count_keys(client, &mut keys, &mut sample).await?;
    }
    Ok(match keys {
        0 => Holds::Empty,
        _ => Holds::Foreign(keys, sample),
    })
}

/// The primaries of the cluster of `client`: it connects to each (from `CLUSTER SLOTS`) on
/// connecting.
fn primaries(client: &Client) -> Result<Vec<Server>, Error> {
    let nodes = client.active_connections();
    if nodes.is_empty() {
        return Err(Error::new(
            ErrorKind::Cluster,
            "connected to no primary of the cluster",
        ));
    }
    Ok(nodes)
}

/// Adds the keys of the server `client` talks to (its database) to `keys`, and a few of their
/// names to `sample` (up to [`SAMPLE`] in all).
async fn count_keys<C: ClientLike>(
    client: &C,
    keys: &mut u64,
    sample: &mut Vec<String>,
) -> Result<(), Error> {
    let here: u64 = client.custom(cmd!("DBSIZE"), Vec::<String>::new()).await?;
    *keys += here;
    if here == 0 || sample.len() >= SAMPLE {
        return Ok(());
    }
    let page: Value = client
        .custom(cmd!("SCAN"), vec!["0", "COUNT", "100"])
        .await?;
    if let Some(names) = page.into_array().pop() {
        let room = SAMPLE - sample.len();
        sample.extend(
            names
                .into_array()
                .into_iter()
                .filter_map(|k| k.into_string())
                .take(room)
                .map(|k| format!("`{}`", k.escape_debug())),
        );
    }
    Ok(())
}
