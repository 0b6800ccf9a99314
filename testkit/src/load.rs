//! Load generation for tests and the benchmark: alerts written the way the trading platform
//! writes them (`SET alert:{id} <value> EX ttl`), pipelined.

use std::collections::HashMap;

use fred::prelude::*;
use serde_json::json;

/// A MessagePack alert as the platform writes it, for id `i`.
pub fn msgpack_alert(run: &str, i: u64) -> Vec<u8> {
    let severity = ["info", "warning", "critical"][(i % 3) as usize];
    let symbol = ["EURUSD", "XAUUSD", "BTCUSD"][(i % 3) as usize];
    let v = json!({
        "alert_id": format!("{run}-{i}"),
        "ts_ms": 1_700_000_000_000_i64 + i as i64,
        "severity": severity,
        "kind": "margin_call",
        "message": format!("margin level below 50% on account {}", i % 97),
        "account_id": format!("acc-{}", i % 97),
        "instance_id": format!("mt5-{}", i % 7),
        "symbol": symbol,
        "trade_id": format!("t-{i}"),
        "margin_level": 42.5,
    });
    rmp_serde::to_vec_named(&v).expect("encode")
}

/// A connected fred client.
pub async fn client(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("client");
    c.init().await.expect("connect");
    c
}

/// Writes `SET key value EX ttl` for every pair, `chunk` commands per pipelined round trip,
/// with `parallel` round trips in flight (one connection each).
pub async fn set_all(
    url: &str,
    items: impl Into<std::sync::Arc<Vec<(String, Vec<u8>)>>>,
    ttl_secs: i64,
    chunk: usize,
    parallel: usize,
) {
    let items = items.into();
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let items = items.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Setter::connect(&url).await;
            let mut start = w * chunk;
            while start < items.len() {
                c.set_batch(&items[start..(start + chunk).min(items.len())], ttl_secs)
                    .await;
                start += chunk * parallel;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// `n` MessagePack alerts under keys `alert:{run}-{i}`.
pub fn alerts(run: &str, n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("alert:{run}-{i}"), msgpack_alert(run, i)))
        .collect()
}

/// Writes `items` with `SET ... EX ttl` at `per_sec`, in ticks of 10 ms (one pipelined round
/// trip a tick), from one connection. Returns when all are written.
pub async fn set_paced(url: &str, items: &[(String, Vec<u8>)], ttl_secs: i64, per_sec: u64) {
    let mut c = Setter::connect(url).await;
    let per_tick = (per_sec as usize / 100).max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    for batch in items.chunks(per_tick) {
        tick.tick().await;
        c.set_batch(batch, ttl_secs).await;
    }
}

/// The writer of [`set_all`] and [`set_paced`]: a [`RawSetter`] on one server, fred's cluster
/// client (each SET to its key's node) for a `redis-cluster://` URL.
enum Setter {
    Raw(RawSetter),
    Cluster(Client),
}

impl Setter {
    async fn connect(url: &str) -> Setter {
        if url.starts_with("redis-cluster://") {
            Setter::Cluster(client(url).await)
        } else {
            Setter::Raw(RawSetter::connect(url).await)
        }
    }

    async fn set_batch(&mut self, batch: &[(String, Vec<u8>)], ttl_secs: i64) {
        match self {
            Setter::Raw(r) => r.set_batch(batch, ttl_secs).await,
            Setter::Cluster(c) => {
                // One pipeline per node: fred writes a pipeline to its first key's node, and
                // every other key would come back MOVED.
                let state = c.cached_cluster_state().expect("cluster routing known");
                let mut by_node: HashMap<String, Vec<&(String, Vec<u8>)>> = HashMap::new();
                for item in batch {
                    let slot = fred::types::Key::from(item.0.as_str()).cluster_hash();
                    let node = state.get_server(slot).map(|s| s.to_string());
                    by_node
                        .entry(node.unwrap_or_default())
                        .or_default()
                        .push(item);
                }
                let mut runs = Vec::new();
                for items in by_node.into_values() {
                    let p = c.pipeline();
                    for (k, v) in items {
                        let ex = Some(fred::types::Expiration::EX(ttl_secs));
                        let () = p
                            .set(k.as_str(), v.as_slice(), ex, None, false)
                            .await
                            .expect("queue SET");
                    }
                    runs.push(tokio::spawn(async move {
                        let _: Vec<Value> = p.all().await.expect("SETs");
                    }));
                }
                for r in runs {
                    r.await.expect("SET pipeline");
                }
            }
        }
    }
}

/// A lean writer: `SET`s encoded straight into RESP on a plain TCP connection. The load
/// generator shares the machine with what it measures, so it should cost little: a general
/// client (fred) spent about as much CPU per SET as Redis itself.
pub struct RawSetter {
    conn: tokio::net::TcpStream,
    out: Vec<u8>,
    replies: Vec<u8>,
}

impl RawSetter {
    /// Connects to `redis://host:port`.
    pub async fn connect(url: &str) -> RawSetter {
        let addr = url.strip_prefix("redis://").expect("a redis:// url");
        let conn = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to redis");
        conn.set_nodelay(true).expect("nodelay");
        RawSetter {
            conn,
            out: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// `SET key value EX ttl` of every pair, in one pipelined round trip; panics unless every
    /// reply is `+OK`.
    pub async fn set_batch(&mut self, batch: &[(String, Vec<u8>)], ttl_secs: i64) {
        use std::io::Write;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ttl = ttl_secs.to_string();
        self.out.clear();
        for (k, v) in batch {
            let _ = write!(self.out, "*5\r\n$3\r\nSET\r\n${}\r\n", k.len());
            self.out.extend_from_slice(k.as_bytes());
            let _ = write!(self.out, "\r\n${}\r\n", v.len());
            self.out.extend_from_slice(v);
            let _ = write!(self.out, "\r\n$2\r\nEX\r\n${}\r\n{ttl}\r\n", ttl.len());
        }
        self.conn.write_all(&self.out).await.expect("write SETs");
        const OK: &[u8] = b"+OK\r\n";
        let want = OK.len() * batch.len();
        self.replies.clear();
        while self.replies.len() < want {
            let mut buf = [0u8; 8192];
            let n = self.conn.read(&mut buf).await.expect("read replies");
            assert!(n > 0, "redis closed the connection");
            self.replies.extend_from_slice(&buf[..n]);
            if let Some(err) = self.replies.iter().position(|&b| b == b'-') {
                let line = self.replies[err..]
                    .split(|&b| b == b'\r')
                    .next()
                    .unwrap_or(&[]);
                panic!("SET refused: {}", String::from_utf8_lossy(line));
            }
        }
        assert!(
            self.replies.len() == want && self.replies.chunks(OK.len()).all(|r| r == OK),
            "unexpected replies to SET: {:?}",
            String::from_utf8_lossy(&self.replies)
        );
    }
}
