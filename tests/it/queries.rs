//! Reading the archive is part of the product: every example query of docs/reference.md runs
//! here, as written there, on a current ClickHouse (26.9) holding what the platform wrote, and
//! its result is checked.

use std::time::Duration;

use fred::prelude::*;
use serde_json::json;

use common::load::client;
use common::trades::{self, msgpack, STREAM};
use common::{eventually, ClickHouseServer, RedisServer, Spillway};

/// The example queries of docs/reference.md, in order, for database `db`.
fn documented_queries(db: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(common::repo_dir().join("docs/reference.md")).unwrap();
    let start = doc
        .find("Example queries")
        .expect("Example queries in docs/reference.md");
    let block = &doc[start..];
    let sql = &block[block.find("```sql\n").unwrap() + 7..];
    let sql = &sql[..sql.find("```").unwrap()];
    sql.lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
        .map(|l| {
            l.trim_end_matches(';')
                .replace("spillway.", &format!("{db}."))
        })
        .collect()
}

async fn set(c: &Client, key: &str, value: Value) {
    let () = c
        .set(key, value, Some(Expiration::EX(3600)), None, false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_query_answers_on_a_current_clickhouse() {
    let (rls, rtrs, ch) = (
        RedisServer::start(),
        RedisServer::start_with(&["--notify-keyspace-events", ""]),
        ClickHouseServer::start_modern(),
    );
    let db = "tqueries";
    let sp = Spillway::start(&trades::config_toml(
        &rls,
        &rtrs,
        &ch,
        db,
        "max_delay_ms = 200",
    ));
    sp.wait_ready(Duration::from_secs(60)).await;
    let (r, t) = (client(&rls.url()).await, client(&rtrs.url()).await);
    // Alerts: a text alert written then deleted; an account's alerts over two days; another
    // account's; one that cannot be decoded.
    set(
        &r,
        "alert:trade_failed",
        Value::from("Trade execution failed"),
    )
    .await;
    let alert = |id: &str, ts: i64, severity: &str, account: &str, message: &str| json!({"alert_id": id, "ts_ms": ts, "severity": severity, "account_id": account, "message": message});
    let mut a1 = alert("a1", 1_700_000_000_000, "critical", "acc-42", "margin call");
    a1["venue"] = "x".into();
    for (key, v) in [
        ("alert:a1", a1),
        (
            "alert:a2",
            alert("a2", 1_700_086_400_000, "critical", "acc-42", "stop out"),
        ),
        (
            "alert:a3",
            alert("a3", 1_700_000_100_000, "info", "acc-42", "login"),
        ),
        (
            "alert:a4",
            alert("a4", 1_700_000_000_000, "critical", "acc-7", "margin call"),
        ),
    ] {
        set(&r, key, Value::Bytes(msgpack(&v))).await;
    }
    set(&r, "alert:bad", Value::Bytes(vec![0xff, 0xfe].into())).await;
    // A trade: its execution log in the platform's JSON and text, then its close.
    let log: Vec<Value> = vec![
        Value::from(
            r#"{"seq": 1, "ts_ms": 1700000150000, "step": "order_sent", "price": 1.0845, "volume": 0.5}"#,
        ),
        Value::from(
            r#"{"seq": 2, "ts_ms": 1700000160000, "step": "filled", "price": 1.0846, "volume": 0.5}"#,
        ),
        Value::from("Trade closed by stop loss"),
    ];
    let _: u64 = r.rpush("trade_execution:12345", log).await.unwrap();
    let payload = msgpack(&json!({"profit": 12.5, "closed_at_ms": 1_700_000_200_000_i64}));
    let fields: Vec<(&str, Value)> = vec![
        ("trade_id", Value::from("12345")),
        ("event", Value::from("closed")),
        ("payload", Value::Bytes(payload)),
    ];
    let close_id: String = t
        .xadd(STREAM, false, None::<()>, "*", fields)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the alerts and the trade archived",
        || async {
            ch.count(&format!("SELECT count() FROM {db}.alerts FINAL"))
                .await
                == 5
                && ch
                    .count(&format!("SELECT count() FROM {db}.trades FINAL"))
                    .await
                    == 1
                && ch
                    .count(&format!("SELECT count() FROM {db}.dead_letters FINAL"))
                    .await
                    == 1
                && ch
                    .count(&format!("SELECT count() FROM {db}.trade_executions FINAL"))
                    .await
                    == 3
        },
    )
    .await;
    // The execution rows are in the partition of the month their close was added (the close's
    // entry id is its time), whatever the month of the test's clock.
    let parts = ch
        .query(&format!(
            "SELECT DISTINCT partition FROM system.parts WHERE database = '{db}' \
             AND table = 'trade_executions' AND active FORMAT TSV"
        ))
        .await;
    let close_ms = close_id.split('-').next().unwrap();
    let month = ch
        .query(&format!(
            "SELECT toYYYYMM(toDateTime(intDiv({close_ms}, 1000))) FORMAT TSV"
        ))
        .await;
    assert_eq!(parts.trim(), month.trim(), "partitions of trade_executions");
    let _: u64 = r.del("alert:trade_failed").await.unwrap();
    eventually(Duration::from_secs(60), "the delete recorded", || async {
        ch.count(&format!(
            "SELECT count() FROM {db}.alert_events FINAL WHERE event = 'deleted'"
        ))
        .await
            == 1
    })
    .await;

    let queries = documented_queries(db);
    assert_eq!(queries.len(), 7, "{queries:#?}");
    let mut answers = Vec::new();
    for q in &queries {
        answers.push(ch.query(&format!("{q} FORMAT TSV")).await);
    }
    let column = |answer: &str, i: usize| -> Vec<String> {
        answer
            .lines()
            .map(|l| l.split('\t').nth(i).unwrap_or_default().to_string())
            .collect()
    };
    // The audit trail of one alert key: written, then deleted.
    assert_eq!(
        column(&answers[0], 0),
        ["written", "deleted"],
        "{}",
        answers[0]
    );
    assert_eq!(
        answers[1],
        "a1\t2023-11-14 22:13:20.000\tmargin call\t{\"venue\":\"x\"}\n\
         a2\t2023-11-15 22:13:20.000\tstop out\t{}\n"
    );
    assert_eq!(
        answers[2],
        "2023-11-14\tcritical\t1\n2023-11-14\tinfo\t1\n2023-11-15\tcritical\t1\n"
    );
    assert_eq!(
        answers[3],
        "0\t1\t2023-11-14 22:15:50.000\torder_sent\t1.0845\t0.5\t\n\
         1\t2\t2023-11-14 22:16:00.000\tfilled\t1.0846\t0.5\t\n\
         2\t2\t1970-01-01 00:00:00.000\t\t\\N\t\\N\tTrade closed by stop loss\n"
    );
    assert_eq!(
        answers[4],
        "closed\t12.5\t2023-11-14 22:16:40.000\tmoved\t3\n"
    );
    assert_eq!(column(&answers[5], 1), ["invalid_utf8"], "{}", answers[5]);
    assert_eq!(column(&answers[5], 2), ["1"], "{}", answers[5]);
    assert_eq!(column(&answers[6], 0), ["alert:bad"], "{}", answers[6]);
    assert_eq!(column(&answers[6], 3), ["FFFE"], "{}", answers[6]);
}
