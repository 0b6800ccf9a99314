//! The stack of a trade-close test: RLS and RTRS redis-servers, a clickhouse-server and the
//! spillway binary, with the figures and checks every test uses.

use std::collections::HashMap;
use std::time::Duration;

use common::trades::{self, Trade, GROUP, STREAM};
use common::{eventually, ClickHouseServer, RedisServer, Spillway};

pub(super) const WAIT: Duration = Duration::from_secs(60);
/// Stream entries acknowledged.
pub(super) const ACKED: &str = "spillway_stream_acked_total{pipeline=\"trades\"}";

/// RLS, RTRS, ClickHouse and a running spillway writing into database `db`.
pub(super) struct Stack {
    pub rls: RedisServer,
    pub rtrs: RedisServer,
    pub ch: ClickHouseServer,
    pub sp: Spillway,
    pub toml: String,
    pub db: String,
}

impl Stack {
    pub(super) async fn start(db: &str) -> Stack {
        Self::start_with(db, "").await
    }

    /// Like `start`, with `batch` lines added to the `[batch]` table.
    pub(super) async fn start_with(db: &str, batch: &str) -> Stack {
        Self::start_config(db, "", batch).await
    }

    /// Like `start_with`, with `top` lines (top-level keys, e.g. `pipelines_dir`) first.
    pub(super) async fn start_config(db: &str, top: &str, batch: &str) -> Stack {
        let (rls, rtrs, ch) = (
            RedisServer::start(),
            RedisServer::start_with(&["--notify-keyspace-events", ""]),
            ClickHouseServer::start(),
        );
        let toml = top.to_string()
            + &trades::config_toml(
                &rls,
                &rtrs,
                &ch,
                db,
                &format!("max_delay_ms = 200\n{batch}"),
            );
        let sp = Spillway::start(&toml);
        sp.wait_ready(WAIT).await;
        let db = db.to_string();
        Stack {
            rls,
            rtrs,
            ch,
            sp,
            toml,
            db,
        }
    }

    /// `sql` (tables written `DB.name`) as a number.
    pub(super) async fn count(&self, sql: &str) -> u64 {
        self.ch
            .count(&sql.replace("DB.", &format!("{}.", self.db)))
            .await
    }

    /// `sql` as TSV.
    pub(super) async fn tsv(&self, sql: &str) -> String {
        let sql = sql.replace("DB.", &format!("{}.", self.db));
        self.ch.query(&format!("{sql} FORMAT TSV")).await
    }

    /// The trades whose id matches `filter` (SQL on `trade_id`), each as `id, log_state,
    /// log_entries`, and their archived execution `seq`s, as `id, [seq, ...]`; ordered by id.
    pub(super) async fn trades_and_seqs(&self, filter: &str) -> (Vec<String>, Vec<String>) {
        let trades = self
            .tsv(&format!("SELECT trade_id, log_state, log_entries FROM DB.trades FINAL WHERE {filter} ORDER BY trade_id"))
            .await;
        let seqs = self
            .tsv(&format!("SELECT trade_id, groupArray(seq) FROM (SELECT trade_id, seq FROM DB.trade_executions FINAL WHERE {filter} ORDER BY trade_id, seq) GROUP BY trade_id ORDER BY trade_id"))
            .await;
        let lines = |t: String| t.lines().map(String::from).collect();
        (lines(trades), lines(seqs))
    }

    /// Entries of the group delivered and not acknowledged (XPENDING).
    pub(super) fn pending(&self) -> u64 {
        let out = self.rtrs.cli(&["XPENDING", STREAM, GROUP]);
        out.lines()
            .next()
            .unwrap_or("")
            .parse()
            .expect("XPENDING count")
    }

    /// Entries of the stream not yet delivered to the group (`lag` of XINFO GROUPS).
    pub(super) fn undelivered(&self) -> u64 {
        let out = self.rtrs.cli(&["XINFO", "GROUPS", STREAM]);
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == "lag")
            .expect("lag in XINFO GROUPS");
        lines[at + 1]
            .parse()
            .unwrap_or_else(|_| panic!("lag: {out}"))
    }

    /// Keys in RLS.
    pub(super) fn rls_keys(&self) -> u64 {
        self.rls.cli(&["DBSIZE"]).parse().expect("DBSIZE")
    }

    /// A sample of spillway's metrics (0 when absent), e.g. `name{pipeline="trades"}`.
    pub(super) async fn metric(&self, sample: &str) -> u64 {
        let text = self.sp.metrics().await;
        let line = text
            .lines()
            .find(|l| l.rsplit_once(' ').map(|x| x.0) == Some(sample));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// Waits until `trades` (and `closes` stream entries) are committed, acknowledged and their
    /// keys gone (`keys_left` other keys stay), then checks every row field by field.
    pub(super) async fn settled(
        &self,
        trades: &[Trade],
        other_rows: u64,
        keys_left: u64,
    ) -> Figures {
        let entries = trades::total_entries(trades) + other_rows;
        eventually(
            WAIT,
            "every log moved, every key gone, nothing pending",
            || async {
                self.count("SELECT count() FROM DB.trade_executions FINAL")
                    .await
                    >= entries
                    && self.rls_keys() == keys_left
                    && self.pending() == 0
                    && self.undelivered() == 0
            },
        )
        .await;
        let f = self.figures().await;
        assert_eq!(
            f.executions, entries,
            "rows of trade_executions under FINAL"
        );
        let uniq = "SELECT uniqExact(trade_id, seq) FROM DB.trade_executions";
        assert_eq!(self.count(uniq).await, entries, "distinct (trade_id, seq)");
        self.check_rows(trades).await;
        f
    }

    /// Every `trades` and `trade_executions` row of `trades`, field by field.
    pub(super) async fn check_rows(&self, trades: &[Trade]) {
        let by_id: HashMap<&str, &Trade> = trades.iter().map(|t| (t.id.as_str(), t)).collect();
        let ids = |col: &str| {
            let list: Vec<String> = trades.iter().map(|t| format!("'{}'", t.id)).collect();
            format!("{col} IN ({})", list.join(","))
        };
        let rows = self.tsv(&format!("SELECT trade_id, event, account_id, instance_id, symbol, side, volume, open_price, close_price, profit, commission, swap, {}, {}, extra, log_entries, log_state FROM DB.trades FINAL WHERE {}", common::ms("opened_at_ms"), common::ms("closed_at_ms"), ids("trade_id"))).await;
        let mut seen = 0;
        for line in rows.lines() {
            let c: Vec<&str> = line.split('\t').collect();
            let t = by_id[c[0]];
            let p = trades::close(t);
            let want = [
                t.id.clone(),
                "closed".into(),
                p.account_id,
                p.instance_id,
                p.symbol.into(),
                p.side.into(),
            ];
            assert_eq!(c[..6], want, "trade row {line}");
            let floats = [
                p.volume,
                p.open_price,
                p.close_price,
                p.profit,
                p.commission,
                p.swap,
            ];
            for (k, v) in floats.iter().enumerate() {
                assert_eq!(
                    c[6 + k].parse::<f64>().ok(),
                    Some(*v),
                    "column {} of {line}",
                    6 + k
                );
            }
            let extra = format!(r#"{{"strategy":"{}"}}"#, p.strategy);
            let tail = [
                p.opened_at_ms.to_string(),
                p.closed_at_ms.to_string(),
                extra,
            ];
            assert_eq!(c[12..15], tail, "trade row {line}");
            assert_eq!(c[15..], [t.entries.to_string(), "moved".into()], "{line}");
            seen += 1;
        }
        assert_eq!(seen, trades.len(), "trades rows under FINAL");

        let rows = self.tsv(&format!("SELECT trade_id, seq, {}, step, instance_id, account_id, symbol, side, volume, price, sl, tp, order_ticket, deal_ticket, retcode, latency_us, comment, extra, position, source_key FROM DB.trade_executions FINAL WHERE {}", common::ms("ts_ms"), ids("trade_id"))).await;
        let mut seen = 0;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "\\N".into());
        for line in rows.lines() {
            let c: Vec<&str> = line.split('\t').collect();
            let t = by_id[c[0]];
            let e = trades::exec(t, c[1].parse().expect("seq"));
            let want = [
                e.trade_id.clone(),
                e.seq.to_string(),
                e.ts_ms.to_string(),
                e.step.into(),
                e.instance_id,
                e.account_id,
                e.symbol.into(),
                e.side.into(),
            ];
            assert_eq!(c[..8], want, "execution row {line}");
            let floats = [Some(e.volume), Some(e.price), e.sl, e.tp];
            for (k, v) in floats.iter().enumerate() {
                assert_eq!(
                    c[8 + k].parse::<f64>().ok(),
                    *v,
                    "column {} of {line}",
                    8 + k
                );
            }
            let want = [
                e.order_ticket.to_string(),
                opt(e.deal_ticket.map(|d| d.to_string())),
                e.retcode.to_string(),
                e.latency_us.to_string(),
                e.comment,
                format!(r#"{{"slippage_points":{}}}"#, e.slippage_points),
                (e.seq - 1).to_string(),
                t.key(),
            ];
            assert_eq!(c[12..], want, "execution row {line}");
            seen += 1;
        }
        assert_eq!(seen as u64, trades::total_entries(trades), "execution rows");
    }

    pub(super) async fn figures(&self) -> Figures {
        Figures {
            trades: self.count("SELECT count() FROM DB.trades FINAL").await,
            executions: self
                .count("SELECT count() FROM DB.trade_executions FINAL")
                .await,
            raw_rows: self.count("SELECT count() FROM DB.trade_executions").await,
            dead_letters: self
                .count("SELECT count() FROM DB.dead_letters FINAL")
                .await,
            pending: self.pending(),
            undelivered: self.undelivered(),
            rls_keys: self.rls_keys(),
        }
    }
}

/// What landed and what waits.
#[derive(Debug)]
pub(super) struct Figures {
    pub trades: u64,
    pub executions: u64,
    pub raw_rows: u64,
    pub dead_letters: u64,
    pub pending: u64,
    pub undelivered: u64,
    pub rls_keys: u64,
}

pub(super) fn report(test: &str, trades: &[Trade], f: &Figures, took: Duration) {
    println!(
        "{test}: sent {} trades / {} entries; archived {} trades / {} executions \
         ({} rows before FINAL); pending {}, undelivered {}, RLS keys {}, dead letters {}; {:.1} s",
        trades.len(),
        trades::total_entries(trades),
        f.trades,
        f.executions,
        f.raw_rows,
        f.pending,
        f.undelivered,
        f.rls_keys,
        f.dead_letters,
        took.as_secs_f64()
    );
}
