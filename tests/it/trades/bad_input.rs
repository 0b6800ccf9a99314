//! Bad input on the trade-close path: each bad close or log entry ends in `dead_letters` with its
//! exact bytes and reason, the good entries around it still land, nothing stays pending.

use fred::prelude::*;

use super::stack::{report, Stack, ACKED, WAIT};
use common::eventually;
use common::load::client;
use common::trades::{self, msgpack, LogForm, Trade, STREAM};

fn trade(id: &str, i: u64, entries: u32) -> Trade {
    let (id, form) = (id.to_string(), LogForm::List);
    Trade {
        i,
        id,
        entries,
        form,
    }
}

async fn xadd(c: &Client, fields: Vec<(&str, Value)>) -> String {
    c.xadd(STREAM, false, None::<()>, "*", fields)
        .await
        .expect("XADD")
}

async fn rpush(c: &Client, key: &str, items: Vec<Value>) {
    let _: u64 = c.rpush(key, items).await.expect("RPUSH");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_dead_letters_and_the_stream_keeps_moving() {
    let s = Stack::start("tbad").await;
    let (rls, rtrs) = (client(&s.rls.url()).await, client(&s.rtrs.url()).await);
    let entry = |t: &Trade, seq| Value::Bytes(msgpack(&trades::exec(t, seq)));
    let close = |t: &Trade| Value::Bytes(msgpack(&trades::close(t)));
    let closed = |t: &Trade, payload: Value| {
        vec![
            ("trade_id", Value::from(t.id.as_str())),
            ("event", Value::from("closed")),
            ("payload", payload),
        ]
    };

    // 1. A close without trade_id.
    let anon = close(&trade("anon", 1, 1));
    let no_id = xadd(&rtrs, closed(&trade("x", 0, 0), anon.clone())[1..].to_vec()).await;
    // 2. A close whose payload is not MessagePack (its log is good).
    let bad_payload = trade("bad-payload", 2, 3);
    rpush(
        &rls,
        &bad_payload.key(),
        (1..=3).map(|q| entry(&bad_payload, q)).collect(),
    )
    .await;
    let garbage = Value::Bytes(b"\x85\x01".as_slice().into());
    let bad_payload_id = xadd(&rtrs, closed(&bad_payload, garbage)).await;
    // 3. A log with one undecodable entry among four good ones.
    let bad_log = trade("bad-log", 3, 5);
    let broken: &[u8] = b"\xc1\x01broken";
    let mut items: Vec<Value> = (1..=5).map(|q| entry(&bad_log, q)).collect();
    items[2] = Value::Bytes(broken.into());
    rpush(&rls, &bad_log.key(), items).await;
    let bad_log_id = xadd(&rtrs, closed(&bad_log, close(&bad_log))).await;
    // 4. A STRING log that is an array holding a non-map.
    let bad_string = trade("bad-string", 4, 1);
    let mut arr = vec![0x92];
    arr.extend_from_slice(&msgpack(&trades::exec(&bad_string, 1)));
    arr.push(0x07);
    let () = rls
        .set(
            bad_string.key(),
            Value::Bytes(arr.clone().into()),
            None,
            None,
            false,
        )
        .await
        .expect("SET");
    let bad_string_id = xadd(&rtrs, closed(&bad_string, close(&bad_string))).await;
    // 5. A close whose log does not exist; 6. an `opened` event of a trade still open.
    let no_log = trade("no-log", 5, 0);
    xadd(&rtrs, closed(&no_log, close(&no_log))).await;
    let open = trade("still-open", 6, 2);
    rpush(
        &rls,
        &open.key(),
        (1..=2).map(|q| entry(&open, q)).collect(),
    )
    .await;
    let mut opened = closed(&open, close(&open));
    opened[1].1 = Value::from("opened");
    xadd(&rtrs, opened).await;
    // Then good trades.
    let good = trades::plan("g", 20);
    trades::play(&s.rls.url(), &s.rtrs.url(), &good, 20, Default::default()).await;

    // bad-payload's 3 entries and bad-log's 4 good ones land; still-open's log stays.
    let f = s.settled(&good, 3 + 4, 1).await;
    report("bad input", &good, &f, Default::default());
    eventually(WAIT, "all 26 closes acknowledged", || async {
        s.metric(ACKED).await == 26
    })
    .await;

    let dead = s
        .tsv("SELECT key, stream_id, instance, reason, hex(raw), length(error) > 0 FROM DB.dead_letters FINAL WHERE pipeline = 'trades' ORDER BY stream_id")
        .await;
    let Value::Bytes(anon) = anon else {
        unreachable!()
    };
    let mut raw_entry = Vec::new();
    rmp::encode::write_map_len(&mut raw_entry, 2).unwrap();
    for (k, v) in [("event", b"closed".as_slice()), ("payload", &anon)] {
        rmp::encode::write_str(&mut raw_entry, k).unwrap();
        rmp::encode::write_bin(&mut raw_entry, v).unwrap();
    }
    let want = [
        format!("\t{no_id}\trtrs\tmissing_trade_id\t{}\t1", hex(&raw_entry)),
        format!("\t{bad_payload_id}\trtrs\tinvalid_msgpack\t8501\t1"),
        format!(
            "{}\t{bad_log_id}\trls\tinvalid_utf8\t{}\t1",
            bad_log.key(),
            hex(broken)
        ),
        format!(
            "{}\t{bad_string_id}\trls\tmsgpack_not_map\t{}\t1",
            bad_string.key(),
            hex(&arr)
        ),
    ];
    assert_eq!(dead.lines().collect::<Vec<_>>(), want, "dead letters");
    assert_eq!(f.dead_letters, 4);

    let (rows, seqs) = s.trades_and_seqs("trade_id NOT LIKE 'g-%'").await;
    // bad-log's 5 entries: 4 archived, 1 in dead_letters; bad-string's one value: in dead_letters.
    let want = [
        "bad-log\tmoved\t5",
        "bad-string\tmoved\t0",
        "no-log\tmissing\t0",
    ];
    assert_eq!(rows, want, "trades");
    let want = ["bad-log\t[1,2,4,5]", "bad-payload\t[1,2,3]"];
    assert_eq!(seqs, want, "executions");
    assert_eq!(
        s.rls.cli(&["LLEN", &open.key()]),
        "2",
        "an opened trade keeps its log"
    );

    for (name, want) in [
        ("spillway_logs_missing_total{pipeline=\"trades\"}", 1),
        (
            "spillway_dead_letters_total{pipeline=\"trades\",reason=\"missing_trade_id\"}",
            1,
        ),
        (
            "spillway_dead_letters_total{pipeline=\"trades\",reason=\"invalid_msgpack\"}",
            1,
        ),
        (
            "spillway_dead_letters_total{pipeline=\"trades\",reason=\"invalid_utf8\"}",
            1,
        ),
        (
            "spillway_dead_letters_total{pipeline=\"trades\",reason=\"msgpack_not_map\"}",
            1,
        ),
        (
            "spillway_stream_entries_total{pipeline=\"trades\",event=\"opened\"}",
            1,
        ),
    ] {
        assert_eq!(s.metric(name).await, want, "{name}");
    }
    assert!(s.sp.exit_status().is_none(), "spillway keeps running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_another_type_is_a_dead_letter_and_stays_in_redis() {
    let s = Stack::start("twrongtype").await;
    let (rls, rtrs) = (client(&s.rls.url()).await, client(&s.rtrs.url()).await);
    // Closed trades whose logs are a HASH, a STRING map, a LIST, and none at all, in one batch.
    let hashed = trade("hashed", 1, 0);
    s.rls.cli(&["HSET", &hashed.key(), "seq", "1"]);
    let (stringed, listed) = (trade("stringed", 2, 1), trade("listed", 3, 2));
    let entry = |t: &Trade, seq| Value::Bytes(msgpack(&trades::exec(t, seq)));
    let () = rls
        .set(stringed.key(), entry(&stringed, 1), None, None, false)
        .await
        .expect("SET");
    rpush(
        &rls,
        &listed.key(),
        (1..=2).map(|q| entry(&listed, q)).collect(),
    )
    .await;
    let none = trade("none", 4, 0);
    for t in [&hashed, &stringed, &listed, &none] {
        let fields = vec![
            ("trade_id", Value::from(t.id.as_str())),
            ("event", Value::from("closed")),
            ("payload", Value::Bytes(msgpack(&trades::close(t)))),
        ];
        xadd(&rtrs, fields).await;
    }
    eventually(WAIT, "all 4 closes acknowledged", || async {
        s.metric(ACKED).await == 4
    })
    .await;
    let dead = s
        .tsv("SELECT key, reason, error FROM DB.dead_letters FINAL")
        .await;
    assert_eq!(
        dead.trim(),
        "trade_execution:hashed\tlog_wrong_type\texecution log is a hash, not a list or string; left in Redis"
    );
    let (rows, seqs) = s.trades_and_seqs("1").await;
    let want = [
        "hashed\tmissing\t0",
        "listed\tmoved\t2",
        "none\tmissing\t0",
        "stringed\tmoved\t1",
    ];
    assert_eq!(rows, want, "trades");
    assert_eq!(seqs, ["listed\t[1,2]", "stringed\t[1]"], "executions");
    // The hash is not Spillway's to remove; the moved logs are gone.
    assert_eq!(s.rls.cli(&["HLEN", &hashed.key()]), "1");
    for t in [&stringed, &listed] {
        assert_eq!(s.rls.cli(&["EXISTS", &t.key()]), "0", "{}", t.key());
    }
}
