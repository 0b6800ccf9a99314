//! Tests of the trade generator: what it writes, replayed into a map standing for RLS, decodes
//! with [`crate::rows::trade`] into the rows Spillway archives.

use std::collections::HashMap;

use super::*;
use crate::decode::Flat;
use crate::rows::trade::{
    log_value_rows, trade_row, LogOrigin, TradeExecutionRow, EXECUTION_FIELDS,
};

/// An RLS execution log: a LIST of entries, or a STRING.
enum Log {
    List(Vec<Bytes>),
    Str(Bytes),
}

/// Plays `ticks` ticks starting `per_tick` trades each, then finishes them; returns the logs
/// (as Redis would hold them), the stream entries in order and the counts.
fn play(seed: u64, ticks: u64, per_tick: u64) -> (HashMap<String, Log>, Vec<Cmd>, Counts) {
    let mut g = TradeGen::new(seed, "t", 0, 1);
    let (mut logs, mut stream) = (HashMap::new(), Vec::new());
    let mut apply = |rls: Vec<Cmd>, rtrs: Vec<Cmd>, logs: &mut HashMap<String, Log>| {
        for c in rls {
            match c {
                Cmd::Rpush(k, v) => match logs.entry(k).or_insert(Log::List(vec![])) {
                    Log::List(l) => l.push(v),
                    Log::Str(_) => panic!("RPUSH on a STRING log"),
                },
                Cmd::Set(k, v) => {
                    assert!(!matches!(logs.get(&k), Some(Log::List(_))), "SET on a LIST");
                    logs.insert(k, Log::Str(v));
                }
                other => panic!("unexpected RLS command {other:?}"),
            }
        }
        for c in rtrs {
            let Cmd::Xadd { trade_id, .. } = &c else {
                panic!("unexpected RTRS command {c:?}")
            };
            // The log is complete in RLS before its close is on the stream.
            assert!(logs.contains_key(&format!("trade_execution:{trade_id}")));
            stream.push(c);
        }
    };
    for i in 0..ticks {
        let (mut rls, mut rtrs) = (vec![], vec![]);
        g.advance(i as i64 * 100, &mut rls, &mut rtrs);
        for _ in 0..per_tick {
            g.start(i as i64 * 100, &mut rls, &mut rtrs);
        }
        apply(rls, rtrs, &mut logs);
    }
    let (mut rls, mut rtrs) = (vec![], vec![]);
    let open = g.open_trades();
    assert!(open > 0);
    assert_eq!(
        g.finish(open / 2, ticks as i64 * 100, &mut rls, &mut rtrs),
        open - open / 2
    );
    assert_eq!(g.finish(open, ticks as i64 * 100, &mut rls, &mut rtrs), 0);
    apply(rls, rtrs, &mut logs);
    assert_eq!(g.open_trades(), 0);
    (logs, stream, g.counts)
}

fn rows<'a>(key: &'a str, id: &'a str, log: &'a Log) -> Vec<TradeExecutionRow<'a>> {
    // The platform's entries are maps of scalars: read in place, not by the general decoder.
    let flat = match log {
        Log::List(entries) => entries
            .iter()
            .all(|e| Flat::map(e, EXECUTION_FIELDS).is_some()),
        Log::Str(v) => {
            Flat::map(v, EXECUTION_FIELDS).is_some()
                || Flat::array(v, EXECUTION_FIELDS, drop).is_some()
        }
    };
    assert!(flat, "{key} left to the general decoder");
    let origin = LogOrigin {
        trade_id: id,
        take_id: "1-0",
        key,
        now: 0,
    };
    let values: Vec<&Bytes> = match log {
        Log::List(entries) => entries.iter().collect(),
        Log::Str(v) => vec![v],
    };
    let mut rows = Vec::new();
    for v in values {
        let more = log_value_rows(origin, v, rows.len() as u32).expect("log decodes");
        rows.extend(more.rows);
    }
    rows
}

#[test]
fn logs_and_closes_decode_into_the_right_rows() {
    let (logs, stream, counts) = play(3, 40, 25);
    let trades = 40 * 25;
    assert_eq!(counts.closed + counts.rejected, trades);
    assert!(
        counts.rejected > 0 && counts.rejected < trades / 10,
        "{counts:?}"
    );
    assert!(
        counts.opened > trades / 8 && counts.opened < trades / 2,
        "{counts:?}"
    );
    assert_eq!(logs.len() as u64, trades);
    let strings = logs.values().filter(|l| matches!(l, Log::Str(_))).count() as u64;
    assert!(strings > trades / 20 && strings < trades / 5, "{strings}");
    let mut entries = 0;
    for c in &stream {
        let Cmd::Xadd {
            trade_id,
            event,
            payload,
        } = c
        else {
            unreachable!()
        };
        let row = trade_row(trade_id, event, Some(payload), "1-0", 0).expect("payload decodes");
        assert!(row.account_id.starts_with("ACC-") && row.instance_id.starts_with("mt5-"));
        assert!(row.volume.unwrap() > 0.0 && row.extra.contains("magic"));
        if *event == "opened" {
            continue;
        }
        let key = format!("trade_execution:{trade_id}");
        let log = rows(&key, trade_id, &logs[&key]);
        entries += log.len() as u64;
        assert_eq!(
            log.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=log.len() as i64).collect::<Vec<_>>()
        );
        assert!(log.iter().all(|r| &r.trade_id == trade_id
            && r.symbol == row.symbol
            && r.extra.contains("magic")));
        assert_eq!(
            log.last().unwrap().step,
            *event,
            "the last step is the outcome"
        );
        match *event {
            "closed" => {
                assert_eq!(log[0].step, "order_sent");
                assert!(log.iter().any(|r| r.step == "filled"));
                assert_eq!(log[log.len() - 2].step, "close_requested");
                assert!(row.profit.is_some() && row.closed_at_ms.is_some());
                assert_eq!(row.close_price, log.last().unwrap().price);
                let filled: f64 = log
                    .iter()
                    .filter(|r| r.deal_ticket.is_some() && r.step != "closed")
                    .map(|r| r.volume.unwrap())
                    .sum();
                assert!(
                    (filled - row.volume.unwrap()).abs() < 1e-6,
                    "fills add up to the volume"
                );
            }
            "rejected" => {
                assert!(log.len() <= 2 && row.profit.is_none());
                assert!(log.last().unwrap().retcode != Some(10009));
            }
            e => panic!("event {e}"),
        }
    }
    assert_eq!(entries, counts.entries);
}

#[test]
fn one_entry_string_logs_are_a_map_and_runs_replay_from_the_seed() {
    let (logs, ..) = play(11, 30, 40);
    assert!(
        logs.values()
            .any(|l| matches!(l, Log::Str(v) if crate::decode::decode_msgpack_map(v).is_ok())),
        "a one-entry STRING log holds one map"
    );
    let encode = |s: Vec<Cmd>| format!("{s:?}");
    let (a, b) = (play(5, 10, 10), play(5, 10, 10));
    assert_eq!((encode(a.1), a.2), (encode(b.1), b.2));
}
