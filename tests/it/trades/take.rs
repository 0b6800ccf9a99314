//! Taking a log: what is removed from RLS after the commit is exactly what was archived, in
//! every form the platform writes, whatever the platform does to the key meanwhile; a crash
//! between the take and the commit loses nothing; a runaway log is archived up to the limit
//! without filling Spillway's memory or blocking Redis.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;

use super::stack::{Stack, ACKED, WAIT};
use common::load::client;
use common::trades::{self, msgpack, LogForm, Trade, STREAM};
use common::{eventually, ClickHouseServer, RedisServer, Spillway};

fn trade(id: &str, i: u64, entries: u32) -> Trade {
    Trade {
        i,
        id: id.to_string(),
        entries,
        form: LogForm::List,
    }
}

async fn close(rtrs: &Client, t: &Trade) -> String {
    let fields: Vec<(&str, Value)> = vec![
        ("trade_id", Value::from(t.id.as_str())),
        ("event", Value::from("closed")),
        ("payload", Value::Bytes(msgpack(&trades::close(t)))),
    ];
    rtrs.xadd(STREAM, false, None::<()>, "*", fields)
        .await
        .expect("XADD")
}

async fn set(c: &Client, key: &str, value: Value) {
    let () = c.set(key, value, None, None, false).await.expect("SET");
}

/// Keys of RLS matching `pattern`, sorted.
fn keys(s: &Stack, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = s
        .rls
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    k.sort();
    k
}

const STAGED: &str = "{trade_execution:*}:spillway:take:*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_json_and_text_logs_become_rows() {
    let s = Stack::start("tforms").await;
    let (rls, rtrs) = (client(&s.rls.url()).await, client(&s.rtrs.url()).await);
    // The platform's own lines: `SET trade_execution:12345 "Trade in progress"` and
    // `SET trade_execution:{id} json.dumps(execution_data)`.
    set(
        &rls,
        "trade_execution:12345",
        Value::from("Trade in progress"),
    )
    .await;
    let json = r#"{"trade_id": "67890", "seq": 1, "step": "filled", "price": 1.0845, "volume": 0.5, "broker": "x"}"#;
    set(&rls, "trade_execution:67890", Value::from(json)).await;
    // A JSON array of objects in a STRING; a LIST mixing MessagePack, JSON and text.
    let arr = r#"[{"seq": 1, "step": "order_sent"}, {"seq": 2, "step": "filled", "price": 2.5}]"#;
    set(&rls, "trade_execution:A1", Value::from(arr)).await;
    let mixed = trade("M1", 1, 0);
    let first = serde_json::json!({"seq": 1, "step": "filled", "price": 1.1, "slippage_points": 1});
    let items = vec![
        Value::Bytes(msgpack(&first)),
        Value::from(r#"{"seq": 2, "step": "modified"}"#),
        Value::from("Stop loss moved by the operator"),
    ];
    let _: u64 = rls.rpush(mixed.key(), items).await.expect("RPUSH");
    for id in ["12345", "67890", "A1", "M1"] {
        close(&rtrs, &trade(id, 0, 0)).await;
    }
    eventually(WAIT, "four closes acknowledged", || async {
        s.metric(ACKED).await == 4
    })
    .await;
    let rows = s
        .tsv("SELECT trade_id, position, seq, format, step, price, text, extra FROM DB.trade_executions FINAL ORDER BY trade_id, position")
        .await;
    assert_eq!(
        rows,
        "12345\t0\t0\ttext\t\t\\N\tTrade in progress\t{}\n\
         67890\t0\t1\tjson\tfilled\t1.0845\t\t{\"broker\":\"x\"}\n\
         A1\t0\t1\tjson\torder_sent\t\\N\t\t{}\n\
         A1\t1\t2\tjson\tfilled\t2.5\t\t{}\n\
         M1\t0\t1\tmsgpack\tfilled\t1.1\t\t{\"slippage_points\":1}\n\
         M1\t1\t2\tjson\tmodified\t\\N\t\t{}\n\
         M1\t2\t2\ttext\t\t\\N\tStop loss moved by the operator\t{}\n",
    );
    let states = s
        .tsv("SELECT trade_id, log_state, log_entries FROM DB.trades FINAL ORDER BY trade_id")
        .await;
    assert_eq!(
        states,
        "12345\tmoved\t1\n67890\tmoved\t1\nA1\tmoved\t2\nM1\tmoved\t3\n"
    );
    assert_eq!(s.count("SELECT count() FROM DB.dead_letters").await, 0);
    assert_eq!(s.rls_keys(), 0, "every log removed after commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_platform_writes_after_the_take_stays_in_redis() {
    let mut s = Stack::start("tafter").await;
    let (rls, rtrs) = (client(&s.rls.url()).await, client(&s.rtrs.url()).await);
    let entry = |t: &Trade, seq| Value::Bytes(msgpack(&trades::exec(t, seq)));
    // ClickHouse down: the closes are taken, their commits wait.
    s.ch.stop();
    let (list, string, retyped) = (trade("L1", 1, 3), trade("S1", 2, 1), trade("H1", 3, 2));
    let _: u64 = rls
        .rpush(
            list.key(),
            (1..=3).map(|q| entry(&list, q)).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let original = "Trade in progress: 1";
    set(&rls, &string.key(), Value::from(original)).await;
    let _: u64 = rls
        .rpush(
            retyped.key(),
            (1..=2).map(|q| entry(&retyped, q)).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    // Two entries at position 2: one with seq 2, one without seq (its seq is its position).
    let seqs = trade("Q1", 4, 0);
    let q = |v: serde_json::Value| Value::Bytes(msgpack(&v));
    let items = vec![
        q(serde_json::json!({"seq": 0, "step": "order_sent"})),
        q(serde_json::json!({"seq": 1, "step": "partial_fill"})),
        q(serde_json::json!({"step": "modified"})),
        q(serde_json::json!({"seq": 2, "step": "filled"})),
    ];
    let _: u64 = rls.rpush(seqs.key(), items).await.unwrap();
    for t in [&list, &string, &retyped, &seqs] {
        close(&rtrs, t).await;
    }
    eventually(WAIT, "the four logs taken", || async {
        keys(&s, STAGED).len() == 4 && keys(&s, "trade_execution:*").is_empty()
    })
    .await;
    // Meanwhile the platform writes: entries appended and prepended to the list's key, the
    // string rewritten with a value of the same length, the third key made a hash.
    let _: u64 = rls.rpush(list.key(), entry(&list, 4)).await.unwrap();
    let _: u64 = rls.lpush(list.key(), entry(&list, 5)).await.unwrap();
    let rewritten = "Trade in progress: 2";
    assert_eq!(rewritten.len(), original.len());
    set(&rls, &string.key(), Value::from(rewritten)).await;
    let _: u64 = rls.del(retyped.key()).await.unwrap();
    assert_eq!(s.rls.cli(&["HSET", &retyped.key(), "field", "value"]), "1");
    s.ch.start_again();
    eventually(WAIT, "the four closes acknowledged", || async {
        s.metric(ACKED).await == 4
    })
    .await;
    // Archived: exactly what was taken.
    let (trades_rows, seq_rows) = s
        .trades_and_seqs("trade_id IN ('L1', 'S1', 'H1', 'Q1')")
        .await;
    assert_eq!(
        trades_rows,
        [
            "H1\tmoved\t2",
            "L1\tmoved\t3",
            "Q1\tmoved\t4",
            "S1\tmoved\t1"
        ]
    );
    assert_eq!(
        seq_rows,
        ["H1\t[1,2]", "L1\t[1,2,3]", "Q1\t[0,1,2,2]", "S1\t[0]"]
    );
    let text = s
        .tsv("SELECT text FROM DB.trade_executions FINAL WHERE trade_id = 'S1'")
        .await;
    assert_eq!(text.trim(), original);
    // Left in Redis: exactly what was written after the take.
    let left: Vec<Bytes> = rls.lrange(list.key(), 0, -1).await.unwrap();
    assert_eq!(left.len(), 2, "the appended and the prepended entry");
    let now: String = rls.get(string.key()).await.unwrap();
    assert_eq!(now, rewritten);
    let kind: String = rls
        .custom(fred::cmd!("TYPE"), vec![retyped.key()])
        .await
        .unwrap();
    assert_eq!(kind, "hash");
    assert!(keys(&s, STAGED).is_empty(), "no staging key left");
    assert_eq!(
        s.metric("spillway_logs_written_after_take_total{pipeline=\"trades\"}")
            .await,
        3
    );
    // Later closes are not held up by any of it.
    let later = trades::plan("later", 20);
    trades::play(&s.rls.url(), &s.rtrs.url(), &later, 20, Duration::ZERO).await;
    eventually(WAIT, "the later closes acknowledged", || async {
        s.metric(ACKED).await == 24
    })
    .await;
    s.check_rows(&later).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_take_and_commit_loses_nothing() {
    let mut s = Stack::start("tkill").await;
    s.ch.stop();
    let closed = trades::plan("k", 30);
    trades::play(&s.rls.url(), &s.rtrs.url(), &closed, 30, Duration::ZERO).await;
    // A close that comes over pub/sub only: nobody delivers it again after the crash.
    let published = trades::plan("p", 1);
    trades::write_logs(&s.rls.url(), &published, 10, 1).await;
    trades::publish_closes(&s.rtrs.url(), &published).await;
    eventually(WAIT, "all 31 logs taken", || async {
        keys(&s, STAGED).len() == 31
    })
    .await;
    s.sp.kill();
    s.ch.start_again();
    s.sp = Spillway::start(&s.toml);
    s.sp.wait_ready(WAIT).await;
    // The pub/sub close's entries are archived (its close made no trade row: it was lost with
    // the crash, as pub/sub is at-most-once; the stream is the reliable path).
    let extra = trades::total_entries(&published);
    let f = s.settled(&closed, extra, 0).await;
    assert_eq!(f.trades, 30);
    let p = &published[0];
    let sql = format!(
        "SELECT count() FROM DB.trade_executions FINAL WHERE trade_id = '{}'",
        p.id
    );
    assert_eq!(s.count(&sql).await, u64::from(p.entries));
    assert!(keys(&s, STAGED).is_empty());
    assert_eq!(
        s.metric("spillway_logs_recovered_total{pipeline=\"trades\"}")
            .await,
        1,
        "the pub/sub close's log, found staged at start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_log_is_archived_up_to_the_limit() {
    const ENTRIES: u64 = 2_000_000;
    const LIMIT: u64 = 400_000;
    let (rls, rtrs, ch) = (
        RedisServer::start(),
        RedisServer::start_with(&["--notify-keyspace-events", ""]),
        ClickHouseServer::start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let def = std::fs::read_to_string(common::repo_dir().join("pipelines/trades.toml")).unwrap();
    std::fs::write(
        dir.path().join("trades.toml"),
        format!("{def}\nlog_max_entries = {LIMIT}\n"),
    )
    .unwrap();
    let toml = format!(
        "pipelines_dir = \"{}\"\n{}",
        dir.path().display(),
        trades::config_toml(&rls, &rtrs, &ch, "trunaway", "")
    );
    // The runaway log: two million small entries in one LIST.
    let c = client(&rls.url()).await;
    let big = trade("BIG", 1, 0);
    let one = msgpack(&serde_json::json!({"step": "heartbeat", "latency_us": 7}));
    for _ in 0..(ENTRIES / 10_000) {
        let batch: Vec<Value> = (0..10_000).map(|_| Value::Bytes(one.clone())).collect();
        let _: u64 = c.rpush(big.key(), batch).await.unwrap();
    }
    let sp = Spillway::start(&toml);
    sp.wait_ready(WAIT).await;
    let pid = sp.pid().expect("spillway runs");
    // RLS answers PING quickly all along.
    let pinger = client(&rls.url()).await;
    let ping = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            let t = Instant::now();
            let _: String = pinger.ping(None).await.unwrap();
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if pinger.exists::<u64, _>("done").await.unwrap() == 1 {
                break;
            }
        }
        worst
    });
    let started = Instant::now();
    let rtrs_c = client(&rtrs.url()).await;
    close(&rtrs_c, &big).await;
    let acked = "spillway_stream_acked_total{pipeline=\"trades\"}";
    eventually(
        Duration::from_secs(180),
        "the runaway close acknowledged",
        || async { common::procstat::metric_sum(&sp.metrics().await, acked) >= 1.0 },
    )
    .await;
    let took = started.elapsed();
    let _: () = c.set("done", 1, None, None, false).await.unwrap();
    let worst_ping = ping.await.unwrap();
    let rss_mb = common::procstat::peak_rss_kb(pid) / 1024;
    let archived = ch
        .count("SELECT count() FROM trunaway.trade_executions FINAL WHERE trade_id = 'BIG'")
        .await;
    let overflow = "{trade_execution:BIG}:spillway:overflow:";
    let kept_key = rls.cli(&["--scan", "--pattern", &format!("{overflow}*")]);
    let kept: u64 = rls.cli(&["LLEN", kept_key.trim()]).parse().unwrap();
    println!(
        "RUNAWAY entries={ENTRIES} limit={LIMIT} archived={archived} kept={kept} took={took:?} \
         peak_rss_mb={rss_mb} worst_ping={worst_ping:?}"
    );
    assert_eq!(archived, LIMIT);
    assert_eq!(
        kept,
        ENTRIES - LIMIT,
        "the rest kept in Redis, under the overflow key"
    );
    assert_eq!(rls.cli(&["EXISTS", &big.key()]), "0");
    assert!(rss_mb < 150, "peak RSS {rss_mb} MB");
    assert!(
        worst_ping < Duration::from_millis(50),
        "PING took {worst_ping:?}"
    );
    let trade = ch
        .query("SELECT log_state, log_entries FROM trunaway.trades FINAL FORMAT TSV")
        .await;
    assert_eq!(trade.trim(), format!("moved\t{LIMIT}"));
    let over = "spillway_log_entries_over_limit_total{pipeline=\"trades\",action=\"kept\"}";
    let m = sp.metrics().await;
    assert_eq!(
        common::procstat::metric_sum(&m, over),
        (ENTRIES - LIMIT) as f64
    );
}
