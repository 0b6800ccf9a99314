//! Trade load for tests and the benchmark, written the way the trading platform writes it
//! (docs/reference.md): each step of a trade's execution is `RPUSH`ed to
//! `trade_execution:{id}` on RLS as a MessagePack map (a minority of trades keep their log as a
//! STRING: a MessagePack array of maps, or one map), then the close is
//! `XADD trade_results * trade_id T event closed payload P` on RTRS. Everything is pipelined.
//!
//! The content is a pure function of the trade's number, so tests can compare every archived
//! field with [`exec`] and [`close`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Pipeline;
use fred::prelude::*;
use serde::Serialize;

use super::load::client;

/// A Spillway config with RLS, RTRS and ClickHouse database `db`, metrics on a free port, and
/// `batch` (lines of the `[batch]` table).
pub fn config_toml(
    rls: &super::RedisServer,
    rtrs: &super::RedisServer,
    ch: &super::ClickHouseServer,
    db: &str,
    batch: &str,
) -> String {
    format!(
        "[redis.rls]\nurl = \"{}\"\n\n[redis.rtrs]\nurl = \"{}\"\n\n[clickhouse]\nurl = \"{}\"\n\
         database = \"{db}\"\n\n[metrics]\naddr = \"127.0.0.1:{}\"\n\n[batch]\n{batch}\n",
        rls.url(),
        rtrs.url(),
        ch.url(),
        super::free_port()
    )
}

/// The stream the platform closes trades on.
pub const STREAM: &str = "trade_results";
/// Spillway's consumer group (pipelines/trades.toml).
pub const GROUP: &str = "spillway";

/// How a trade's execution log is stored in RLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogForm {
    /// A LIST, one `RPUSH` per step (the normal case).
    List,
    /// A STRING holding a MessagePack array of maps.
    StringArray,
    /// A STRING holding one MessagePack map (a one-entry log).
    StringMap,
}

/// One planned trade.
#[derive(Debug, Clone)]
pub struct Trade {
    /// The trade's number in its run.
    pub i: u64,
    /// `{run}-{i}`.
    pub id: String,
    /// Entries of its execution log (seq 1..=entries).
    pub entries: u32,
    /// How the log is stored.
    pub form: LogForm,
}

impl Trade {
    /// `trade_execution:{id}`.
    pub fn key(&self) -> String {
        format!("trade_execution:{}", self.id)
    }
}

/// `n` trades `{run}-0 .. {run}-(n-1)` with 1 to 50 entries each (25.5 on average); one in ten
/// keeps its log as a STRING array, one in ten as a STRING map (one entry).
pub fn plan(run: &str, n: u64) -> Vec<Trade> {
    (0..n)
        .map(|i| {
            let form = match i % 10 {
                3 => LogForm::StringArray,
                7 => LogForm::StringMap,
                _ => LogForm::List,
            };
            let entries = if form == LogForm::StringMap {
                1
            } else {
                1 + (i.wrapping_mul(2_654_435_761) >> 7) % 50
            };
            Trade {
                i,
                id: format!("{run}-{i}"),
                entries: entries as u32,
                form,
            }
        })
        .collect()
}

/// Total entries of `trades`.
pub fn total_entries(trades: &[Trade]) -> u64 {
    trades.iter().map(|t| t.entries as u64).sum()
}

const SYMBOLS: [&str; 4] = ["EURUSD", "XAUUSD", "BTCUSD", "USDJPY"];

/// One execution step, as the platform encodes it (plus a field Spillway does not know).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exec {
    pub trade_id: String,
    pub seq: i64,
    pub ts_ms: i64,
    pub step: &'static str,
    pub instance_id: String,
    pub account_id: String,
    pub symbol: &'static str,
    pub side: &'static str,
    pub volume: f64,
    pub price: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tp: Option<f64>,
    pub order_ticket: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deal_ticket: Option<i64>,
    pub retcode: i64,
    pub latency_us: i64,
    pub comment: String,
    /// Unknown to Spillway: must land in `extra`.
    pub slippage_points: i64,
}

/// Entry `seq` (1-based) of `t`'s log.
pub fn exec(t: &Trade, seq: u32) -> Exec {
    let (i, s) = (t.i as i64, seq as i64);
    let step = match (seq, t.entries) {
        (1, _) => "order_sent",
        (q, n) if q == n => "closed",
        (q, n) if q == n - 1 => "close_requested",
        (q, _) if q % 3 == 0 => "modified",
        (q, _) if q % 3 == 1 => "partial_fill",
        _ => "filled",
    };
    let filled = step != "order_sent" && step != "modified";
    Exec {
        trade_id: t.id.clone(),
        seq: s,
        ts_ms: 1_700_000_000_000 + i * 1000 + s * 7,
        step,
        instance_id: format!("mt5-{}", i % 7),
        account_id: format!("acc-{}", i % 97),
        symbol: SYMBOLS[(i % 4) as usize],
        side: if i % 2 == 0 { "buy" } else { "sell" },
        volume: (1 + i % 50) as f64 / 100.0,
        price: 1.0 + (i % 1000) as f64 / 1024.0 + s as f64 / 65536.0,
        sl: (s % 4 != 0).then(|| 0.5 + (i % 100) as f64 / 256.0),
        tp: (s % 5 != 0).then(|| 2.0 + (i % 100) as f64 / 256.0),
        order_ticket: 10_000_000 + i,
        deal_ticket: filled.then_some(20_000_000 + i * 64 + s),
        retcode: if step == "modified" { 10008 } else { 10009 },
        latency_us: 150 + (i * 13 + s * 31) % 5000,
        comment: format!("step {seq} of {}", t.entries),
        slippage_points: (i + s) % 5,
    }
}

/// The close message's payload (plus a field Spillway does not know).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Close {
    pub account_id: String,
    pub instance_id: String,
    pub symbol: &'static str,
    pub side: &'static str,
    pub volume: f64,
    pub open_price: f64,
    pub close_price: f64,
    pub profit: f64,
    pub commission: f64,
    pub swap: f64,
    pub opened_at_ms: i64,
    pub closed_at_ms: i64,
    /// Unknown to Spillway: must land in `extra`.
    pub strategy: String,
}

/// The payload of `t`'s close.
pub fn close(t: &Trade) -> Close {
    let i = t.i as i64;
    let first = exec(t, 1);
    Close {
        account_id: first.account_id,
        instance_id: first.instance_id,
        symbol: first.symbol,
        side: first.side,
        volume: first.volume,
        open_price: first.price,
        close_price: exec(t, t.entries).price,
        profit: (i % 401 - 200) as f64 / 8.0,
        commission: -((i % 9) as f64) / 4.0,
        swap: (i % 3) as f64 / 16.0,
        opened_at_ms: first.ts_ms,
        closed_at_ms: first.ts_ms + 60_000,
        strategy: format!("grid-{}", i % 5),
    }
}

/// MessagePack (named fields: a map) of any value.
pub fn msgpack<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(v).expect("encode"))
}

/// Queues the commands that write `t`'s log (one `RPUSH` per step, or one `SET` of the
/// STRING) and returns how many.
async fn queue_log(p: &Pipeline<Client>, t: &Trade) -> usize {
    let key = t.key();
    match t.form {
        LogForm::List => {
            for s in 1..=t.entries {
                let v = Value::Bytes(msgpack(&exec(t, s)));
                let () = p.rpush(key.as_str(), v).await.expect("queue RPUSH");
            }
            t.entries as usize
        }
        LogForm::StringArray | LogForm::StringMap => {
            let v = if t.form == LogForm::StringMap {
                msgpack(&exec(t, 1))
            } else {
                msgpack(&(1..=t.entries).map(|s| exec(t, s)).collect::<Vec<_>>())
            };
            let () = p
                .set(key.as_str(), Value::Bytes(v), None, None, false)
                .await
                .expect("queue SET");
            1
        }
    }
}

/// Writes every trade's execution log into RLS (`url`): about `chunk` commands per pipelined
/// round trip, `parallel` connections.
pub async fn write_logs(url: &str, trades: &[Trade], chunk: usize, parallel: usize) {
    for_each_part(url, trades, parallel, move |c, part| async move {
        let mut p = c.pipeline();
        let mut queued = 0;
        for t in part.iter() {
            queued += queue_log(&p, t).await;
            if queued >= chunk {
                let _: Vec<Value> = p.all().await.expect("log pipeline");
                (p, queued) = (c.pipeline(), 0);
            }
        }
        let _: Vec<Value> = p.all().await.expect("log pipeline");
    })
    .await;
}

/// Adds the close of every trade to `trade_results` on RTRS (`url`), pipelined.
pub async fn close_all(url: &str, trades: &[Trade], chunk: usize, parallel: usize) {
    for_each_part(url, trades, parallel, move |c, part| async move {
        for ts in part.chunks(chunk) {
            let p = c.pipeline();
            for t in ts {
                let fields: Vec<(&str, Value)> = vec![
                    ("trade_id", Value::from(t.id.as_str())),
                    ("event", Value::from("closed")),
                    ("payload", Value::Bytes(msgpack(&close(t)))),
                ];
                let () = p
                    .xadd(STREAM, false, None::<()>, "*", fields)
                    .await
                    .expect("queue XADD");
            }
            let _: Vec<Value> = p.all().await.expect("XADD pipeline");
        }
    })
    .await;
}

/// Publishes the close of every trade on the pub/sub channel `trade_close` (the payload with
/// `trade_id`), as some deployments do besides the stream.
pub async fn publish_closes(url: &str, trades: &[Trade]) {
    let c = client(url).await;
    let p = c.pipeline();
    for t in trades {
        let mut payload = serde_json::to_value(close(t)).expect("payload");
        payload["trade_id"] = t.id.clone().into();
        let () = p
            .publish("trade_close", Value::Bytes(msgpack(&payload)))
            .await
            .expect("queue PUBLISH");
    }
    let _: Vec<Value> = p.all().await.expect("PUBLISH pipeline");
    c.quit().await.ok();
}

/// Plays the platform: for each group of `batch` trades, writes their logs, then closes them,
/// then waits `pause`. Returns the number of trades and entries written.
pub async fn play(
    rls: &str,
    rtrs: &str,
    trades: &[Trade],
    batch: usize,
    pause: Duration,
) -> (u64, u64) {
    for part in trades.chunks(batch.max(1)) {
        write_logs(rls, part, 1000, 2).await;
        close_all(rtrs, part, 1000, 1).await;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    (trades.len() as u64, total_entries(trades))
}

/// Runs `f` on `parallel` interleaved parts of `trades`, each with its own connection.
async fn for_each_part<F, Fut>(url: &str, trades: &[Trade], parallel: usize, f: F)
where
    F: Fn(Client, Arc<Vec<Trade>>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let parallel = parallel.clamp(1, trades.len().max(1));
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let part: Vec<Trade> = trades.iter().skip(w).step_by(parallel).cloned().collect();
        let (url, f) = (url.to_string(), f.clone());
        tasks.push(tokio::spawn(async move {
            let c = client(&url).await;
            f(c.clone(), Arc::new(part)).await;
            c.quit().await.ok();
        }));
    }
    for t in tasks {
        t.await.expect("trade writer task");
    }
}
