//! `spillway simulate` against real redis-servers (RLS and RTRS): runs the binary for about two
//! seconds at a small rate and checks what it left in Redis: alerts with their TTL in all three
//! value forms, execution logs (LISTs and STRINGs) complete before their close is on the
//! `trade_results` stream, every log and payload decoding into the rows Spillway archives.

use std::collections::HashMap;
use std::process::Command;

use bytes::Bytes;
use fred::cmd;
use fred::prelude::*;
use spillway::decode::{decode_value_fields, Decoded};
use spillway::rows::trade::{log_value_rows, trade_row, LogOrigin, TradeExecutionRow};

use common::{load::client, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_writes_what_the_contract_describes() {
    let (rls, rtrs) = (RedisServer::start(), RedisServer::start());
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["simulate", "--rls", &rls.url(), "--rtrs", &rtrs.url()])
        .args(["--alerts-per-sec", "500", "--trades-per-sec", "50"])
        .args(["--duration", "2", "--seed", "7", "--connections", "2"])
        .output()
        .expect("run spillway simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("seed 7") && stdout.contains("wrote in"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("alerts") && l.contains("/s")),
        "{stdout}"
    );

    let (c, t) = (client(&rls.url()).await, client(&rtrs.url()).await);
    // Alerts: SET alert:{id} <value> EX 3600, in the three forms.
    let keys: Vec<String> = c.custom(cmd!("KEYS"), vec!["alert:*"]).await.unwrap();
    assert!(
        (600..=1100).contains(&keys.len()),
        "{} alert keys",
        keys.len()
    );
    let mut forms: HashMap<&str, usize> = HashMap::new();
    for k in &keys {
        let ttl: i64 = c.ttl(k.as_str()).await.unwrap();
        assert!((3590..=3600).contains(&ttl), "{k}: TTL {ttl}");
        let v: Bytes = c.get(k.as_str()).await.unwrap();
        let form = match decode_value_fields(&v, &[]).expect("alert decodes") {
            Decoded::Object(f, fields) => {
                let map = fields.into_map();
                assert!(map.contains_key("message") && map.contains_key("severity"));
                f.as_str()
            }
            Decoded::Text(_) => "text",
        };
        *forms.entry(form).or_default() += 1;
    }
    assert!(forms["msgpack"] > forms["json"] && forms["json"] > 0 && forms["text"] > 0);

    // Trades: every close and rejection on the stream has its complete log in RLS.
    let entries: Value = t
        .custom(cmd!("XRANGE"), vec!["trade_results", "-", "+"])
        .await
        .unwrap();
    let (mut events, mut strings) = (HashMap::<String, usize>::new(), 0);
    for e in entries.into_array() {
        let [_id, fields] = <[Value; 2]>::try_from(e.into_array()).expect("id and fields");
        let f: HashMap<String, Vec<u8>> = fields
            .into_array()
            .chunks(2)
            .map(|kv| {
                (
                    kv[0].as_string().unwrap(),
                    kv[1].as_bytes().unwrap().to_vec(),
                )
            })
            .collect();
        let (id, event) = (
            String::from_utf8_lossy(&f["trade_id"]),
            String::from_utf8_lossy(&f["event"]),
        );
        *events.entry(event.to_string()).or_default() += 1;
        let row = trade_row(&id, &event, Some(&f["payload"]), "0-1", 0).expect("payload decodes");
        assert!(row.account_id.starts_with("ACC-") && !row.symbol.is_empty());
        if event == "opened" {
            continue;
        }
        let key = format!("trade_execution:{id}");
        let kind: String = c.custom(cmd!("TYPE"), vec![key.as_str()]).await.unwrap();
        let (items, string): (Vec<Bytes>, Option<Bytes>) = match kind.as_str() {
            "list" => (c.lrange(key.as_str(), 0, -1).await.unwrap(), None),
            "string" => (Vec::new(), Some(c.get(key.as_str()).await.unwrap())),
            other => panic!("{key} is a {other}"),
        };
        let origin = LogOrigin {
            trade_id: &id,
            take_id: "1-0",
            key: &key,
            now: 0,
        };
        let values: Vec<&Bytes> = match &string {
            None => items.iter().collect(),
            Some(v) => {
                strings += 1;
                vec![v]
            }
        };
        let mut log: Vec<TradeExecutionRow> = Vec::new();
        for v in values {
            let rows = log_value_rows(origin, v, log.len() as u32).unwrap();
            log.extend(rows.rows);
        }
        let seqs: Vec<i64> = log.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>(), "{key}");
        assert_eq!(
            log.last().unwrap().step,
            event,
            "{key}: the last step is the outcome"
        );
        assert!(log
            .iter()
            .all(|r| r.trade_id == id && r.symbol == row.symbol));
    }
    let closed = events.get("closed").copied().unwrap_or(0);
    assert!((70..=110).contains(&closed), "{events:?}");
    assert!(events.get("opened").copied().unwrap_or(0) > 0, "{events:?}");
    assert!(strings > 0, "some logs are STRINGs");
    let logs: Vec<String> = c
        .custom(cmd!("KEYS"), vec!["trade_execution:*"])
        .await
        .unwrap();
    let finished = closed + events.get("rejected").copied().unwrap_or(0);
    assert_eq!(
        logs.len(),
        finished,
        "every log written was closed at the end"
    );
}
