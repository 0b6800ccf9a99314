//! Trade load on a Redis Cluster that survives its faults: the platform's writes of
//! [`crate::trades`] (logs, then closes) through a cluster client, each batch retried until it
//! went through and then made durable with `WAIT 1 1000` on every primary. Redis replicates
//! asynchronously: a SIGKILLed primary loses what its replica had not received yet, before
//! Spillway could see it. Waiting for a replica after each batch makes every trade the producer
//! counts as written survive a failover, so a test's expectations are exact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use crate::trades::{close, exec, msgpack, LogForm, Trade, STREAM};

/// Writes a LIST log from scratch in one command: `DEL` and `RPUSH` of every step.
const WRITE_LIST: &str =
    "redis.call('DEL', KEYS[1]); return redis.call('RPUSH', KEYS[1], unpack(ARGV))";

/// Queues the one command writing `t`'s log from scratch (the script above, or one `SET`):
/// repeatable, so a batch whose outcome is unknown can be written again. One command, not
/// `DEL` then `RPUSH`: when a failover closes a connection or answers `MOVED`, fred sends the
/// commands in flight again, not always in the order written, so a `DEL` could run after its
/// `RPUSH` and leave the trade without a log (seen at a `CLUSTER FAILOVER`: a trade whose only
/// close found no log, nothing left in Redis); and an `RPUSH` run on the old primary and sent
/// again would double the log.
async fn queue_log(p: &fred::clients::Pipeline<Client>, t: &Trade) -> Result<(), Error> {
    let key = t.key();
    match t.form {
        LogForm::List => {
            let mut args = vec![
                Value::from(WRITE_LIST),
                Value::from(1),
                Value::from(key.as_str()),
            ];
            args.extend((1..=t.entries).map(|s| Value::Bytes(msgpack(&exec(t, s)))));
            let slot = ClusterHash::Custom(fred::types::Key::from(key.as_str()).cluster_hash());
            p.custom(CustomCommand::new_static("EVAL", slot, false), args)
                .await
        }
        LogForm::StringArray | LogForm::StringMap => {
            let v = if t.form == LogForm::StringMap {
                msgpack(&exec(t, 1))
            } else {
                msgpack(&(1..=t.entries).map(|s| exec(t, s)).collect::<Vec<_>>())
            };
            p.set(key.as_str(), Value::Bytes(v), None, None, false)
                .await
        }
    }
}

/// `WAIT 1 1000` on every primary (the connection that carried the writes): true when each
/// has a replica that acknowledged them.
async fn replicated(c: &Client) -> bool {
    let primaries = c.active_connections();
    if primaries.is_empty() {
        return false;
    }
    for server in primaries {
        let cmd = CustomCommand::new_static("WAIT", ClusterHash::Random, false);
        let n: Result<i64, Error> = c
            .with_cluster_node(server)
            .custom(cmd, vec![Value::from(1), Value::from(1000)])
            .await;
        if !matches!(n, Ok(n) if n >= 1) {
            return false;
        }
    }
    true
}

/// Runs `write` until it succeeds and its writes reached a replica on every primary.
async fn durably<F, Fut>(c: &Client, what: &str, mut write: F) -> u32
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut retries = 0;
    loop {
        match write().await {
            Ok(()) if replicated(c).await => return retries,
            Ok(()) => {}
            Err(e) => eprintln!("cluster load: {what} failed ({e}); writing it again"),
        }
        retries += 1;
        assert!(retries < 200, "cluster load: {what} never went through");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster client that reconnects (following the cluster's changes) and whose commands
/// fail after 5 s instead of waiting for a node that is gone.
async fn client(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).expect("url"))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 1000, 2))
        .build()
        .expect("client");
    c.init().await.expect("connect");
    c
}

/// Plays the platform on a cluster (`url`: `redis-cluster://...`): for each group of `batch`
/// trades, writes their logs, then their closes, each durably (see the module), then waits
/// `pause`; stops early once `stop` is set. Returns the trades written (a prefix of `trades`)
/// and how many writes had to be made again.
pub async fn play(
    url: &str,
    trades: &[Trade],
    batch: usize,
    pause: Duration,
    stop: &AtomicBool,
) -> (usize, u32) {
    let c = client(url).await;
    let (mut written, mut retries) = (0, 0);
    for part in trades.chunks(batch.max(1)) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        retries += durably(&c, "logs", || async {
            let p = c.pipeline();
            for t in part {
                queue_log(&p, t).await?;
            }
            p.all::<Vec<Value>>().await.map(|_| ())
        })
        .await;
        // A close written again is a second entry of the same trade: its log is gone by then,
        // and `FINAL` keeps the row of the close that moved it.
        retries += durably(&c, "closes", || async {
            let p = c.pipeline();
            for t in part {
                let fields: Vec<(&str, Value)> = vec![
                    ("trade_id", Value::from(t.id.as_str())),
                    ("event", Value::from("closed")),
                    ("payload", Value::Bytes(msgpack(&close(t)))),
                ];
                let () = p.xadd(STREAM, false, None::<()>, "*", fields).await?;
            }
            p.all::<Vec<Value>>().await.map(|_| ())
        })
        .await;
        written += part.len();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    c.quit().await.ok();
    (written, retries)
}
