//! `spillway simulate` against real redis-servers (RLS and RTRS): runs the binary for about two
//! seconds at a small rate and checks what it left in Redis: alerts with their TTL in all three
//! value forms, execution logs (LISTs and STRINGs) complete before their close is on the
//! `trade_results` stream, every log and payload decoding into the rows Spillway archives.
//! And that it is safe to have on a production host: it needs its targets on the command line
//! (never from the service's environment), and refuses to write into a Redis holding keys it did
//! not write unless `--allow-nonempty` says so, on a Redis Cluster looking at every primary.

use std::collections::HashMap;
use std::process::{Command, Output};

use bytes::Bytes;
use fred::cmd;
use fred::prelude::*;
use spillway::decode::{decode_value_fields, Decoded};
use spillway::rows::trade::{log_value_rows, trade_row, LogOrigin, TradeExecutionRow};

use common::rcluster::RedisCluster;
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

/// The key the simulator marks a Redis it started on empty with.
const OWNER: &str = "spillway:simulate:owner";

/// Runs `spillway simulate ARGS` for a second at a small rate, with `env` set (a seed of the
/// clock: runs with one seed on one Redis would write the same keys).
fn simulate(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("simulate")
        .args(args)
        .args(["--alerts-per-sec", "100", "--trades-per-sec", "10"])
        .args(["--duration", "1", "--connections", "1"])
        .envs(env.iter().copied())
        .output()
        .expect("run spillway simulate")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn simulator_refuses_a_redis_holding_keys_it_did_not_write() {
    let (rls, rtrs) = (RedisServer::start(), RedisServer::start());
    let (rls_url, rtrs_url) = (rls.url(), rtrs.url());
    let targets = ["--rls", rls_url.as_str(), "--rtrs", rtrs_url.as_str()];

    // RTRS holds the platform's stream: refused, and nothing written anywhere (RLS, checked
    // first and empty, is not marked either).
    rtrs.cli(&[
        "XADD",
        "trade_results",
        "1-1",
        "trade_id",
        "T1",
        "event",
        "closed",
    ]);
    let out = simulate(&targets, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refusing to write into RTRS")
            && said.contains("--allow-nonempty")
            && said.contains("--rtrs")
            && said.contains("`trade_results`"),
        "{said}"
    );
    assert_eq!(rls.cli(&["DBSIZE"]), "0", "nothing written into RLS");
    assert_eq!(rtrs.cli(&["DBSIZE"]), "1");
    assert_eq!(rtrs.cli(&["XLEN", "trade_results"]), "1");

    // A key named like the simulator's own (an alert) is still someone else's.
    rls.cli(&["SET", "alert:real", "a real alert", "EX", "3000"]);
    rtrs.cli(&["DEL", "trade_results"]);
    let out = simulate(&targets, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refusing to write into RLS")
            && said.contains("--allow-nonempty")
            && said.contains("`alert:real`"),
        "{said}"
    );
    assert_eq!(rls.cli(&["DBSIZE"]), "1");
    assert_eq!(rls.cli(&["GET", "alert:real"]), "a real alert");
    assert_eq!(rtrs.cli(&["DBSIZE"]), "0", "nothing written into RTRS");

    // Told so, it writes, leaving the foreign key alone and RLS unmarked (the next run without
    // the flag is refused again).
    let mut allowed = targets.to_vec();
    allowed.push("--allow-nonempty");
    let out = simulate(&allowed, &[]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("writing anyway (--allow-nonempty)"), "{said}");
    assert_eq!(rls.cli(&["GET", "alert:real"]), "a real alert");
    let ttl: i64 = rls.cli(&["TTL", "alert:real"]).parse().unwrap();
    assert!((2900..=3000).contains(&ttl), "TTL {ttl}");
    let dbsize: u64 = rls.cli(&["DBSIZE"]).parse().unwrap();
    assert!(dbsize > 50, "{dbsize} keys in RLS");
    assert_eq!(rls.cli(&["EXISTS", OWNER]), "0");
    assert_eq!(
        rtrs.cli(&["EXISTS", OWNER]),
        "1",
        "RTRS was empty: now the simulator's"
    );
    assert!(!simulate(&targets, &[]).status.success());
}

#[test]
fn simulator_needs_its_targets_on_the_command_line_not_the_environment() {
    let (rls, rtrs) = (RedisServer::start(), RedisServer::start());
    let (rls_url, rtrs_url) = (rls.url(), rtrs.url());
    // The service's variables, naming servers that answer: not used, the flags are required.
    let service_env = [
        ("SPILLWAY_RLS_URL", rls_url.as_str()),
        ("SPILLWAY_RTRS_URL", rtrs_url.as_str()),
    ];
    for args in [
        &[][..],
        &["--rls", rls_url.as_str()][..],
        &["--rtrs", rtrs_url.as_str()][..],
    ] {
        let out = simulate(args, &service_env);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("required") && said.contains("--r"), "{said}");
    }
    assert_eq!(rls.cli(&["DBSIZE"]), "0");
    assert_eq!(rtrs.cli(&["DBSIZE"]), "0");

    // Explicit targets win over bogus variables; empty servers become the simulator's own, and
    // a second run on them needs no flag.
    let bogus = [
        ("SPILLWAY_RLS_URL", "redis://127.0.0.1:1"),
        ("SPILLWAY_RTRS_URL", "redis://127.0.0.1:1"),
    ];
    let targets = ["--rls", rls_url.as_str(), "--rtrs", rtrs_url.as_str()];
    for run in 0..2 {
        let out = simulate(&targets, &bogus);
        assert!(out.status.success(), "run {run}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("RLS {rls_url}")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(rls.cli(&["EXISTS", OWNER]), "1");
    assert_eq!(rtrs.cli(&["EXISTS", OWNER]), "1");
    assert!(rls
        .cli(&["GET", OWNER])
        .starts_with("written by spillway simulate"));
    let alerts: u64 = rls
        .cli(&["EVAL", "return #redis.call('KEYS', 'alert:*')", "0"])
        .parse()
        .unwrap();
    assert!(alerts > 100, "{alerts} alerts from two runs");
}

#[test]
fn simulator_counts_the_keys_of_every_primary_of_a_cluster() {
    let (cluster, rtrs) = (RedisCluster::start(3, 0), RedisServer::start());
    let url = cluster.url().replacen("redis://", "redis-cluster://", 1);
    let rtrs_url = rtrs.url();
    let targets = ["--rls", url.as_str(), "--rtrs", rtrs_url.as_str()];

    // 1, 2 and 4 foreign keys on the three primaries: a look at any one node sees a part.
    let primaries = cluster.primaries();
    let mut want = [1, 2, 4].map(|n| (n, 0));
    for i in 0.. {
        let key = format!("platform:{i}");
        let at = primaries.iter().position(|&p| p == cluster.owner_of(&key));
        let slot = &mut want[at.expect("a primary owns the key")];
        if slot.1 < slot.0 {
            cluster.nodes[cluster.owner_of(&key)].cli(&["SET", &key, "theirs"]);
            slot.1 += 1;
        }
        if want.iter().all(|(n, have)| n == have) {
            break;
        }
    }
    let out = simulate(&targets, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refusing to write into RLS")
            && said.contains("it holds 7 keys")
            && said.contains("`platform:"),
        "{said}"
    );
    assert_eq!(rtrs.cli(&["DBSIZE"]), "0", "nothing written into RTRS");

    // Emptied, the cluster becomes the simulator's: its writes reach every primary, the owner
    // key is found on the next run, which needs no flag.
    for &p in &primaries {
        cluster.nodes[p].cli(&["FLUSHALL"]);
    }
    for run in 0..2 {
        let out = simulate(&targets, &[]);
        assert!(out.status.success(), "run {run}: {}", text(&out));
    }
    for &p in &primaries {
        let keys: u64 = cluster.nodes[p].cli(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 10, "{keys} keys on {}", cluster.nodes[p].addr());
    }
    let owner = cluster.owner_of(OWNER);
    assert_eq!(cluster.nodes[owner].cli(&["EXISTS", OWNER]), "1");
}
