//! Load generation for tests and the benchmark: alerts written the way the trading platform
//! writes them (`SET alert:{id} <value> EX ttl`), pipelined.

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
/// with `parallel` round trips in flight.
pub async fn set_all(
    url: &str,
    items: Vec<(String, Vec<u8>)>,
    ttl_secs: i64,
    chunk: usize,
    parallel: usize,
) {
    let items = std::sync::Arc::new(items);
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let items = items.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client(&url).await;
            let mut start = w * chunk;
            while start < items.len() {
                set_batch(
                    &c,
                    &items[start..(start + chunk).min(items.len())],
                    ttl_secs,
                )
                .await;
                start += chunk * parallel;
            }
            c.quit().await.ok();
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
    let c = client(url).await;
    let per_tick = (per_sec as usize / 100).max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    for batch in items.chunks(per_tick) {
        tick.tick().await;
        set_batch(&c, batch, ttl_secs).await;
    }
    c.quit().await.ok();
}

/// `SET key value EX ttl` of every pair, in one pipelined round trip.
async fn set_batch(c: &Client, batch: &[(String, Vec<u8>)], ttl_secs: i64) {
    let p = c.pipeline();
    for (k, v) in batch {
        let () = p
            .set(
                k.as_str(),
                v.as_slice(),
                Some(Expiration::EX(ttl_secs)),
                None,
                false,
            )
            .await
            .expect("queue");
    }
    let _: Vec<Value> = p.all().await.expect("SET pipeline");
}
