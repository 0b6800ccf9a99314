//! Trades as the platform writes them (docs/reference.md): each execution step is appended to
//! `trade_execution:{trade_id}` on RLS as it happens (`RPUSH` of a MessagePack map; one trade
//! in ten keeps its log as a STRING, rewritten at each step: one map, then an array of maps),
//! and the outcome is `XADD trade_results * trade_id T event E payload P` on RTRS: `closed`
//! after the last step, `rejected` for the few the broker refuses, and `opened` for some fills.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Serialize;

use super::rng::{self, Rng, Symbol, SYMBOLS};
use super::Cmd;

/// Share of trades the broker rejects.
pub(crate) const REJECT_SHARE: f64 = 0.02;
/// Share of trades whose log is a STRING instead of a LIST.
pub(crate) const STRING_SHARE: f64 = 0.10;
/// Share of filled trades announced with an `opened` event.
pub(crate) const OPENED_SHARE: f64 = 0.25;
/// Time between two steps of a trade: 100 ms to this many times 100 ms.
const MAX_GAP_STEPS: u64 = 5;

/// An execution step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The order went to the broker.
    OrderSent,
    /// Part of the volume was filled.
    PartialFill,
    /// The rest was filled: the position is open.
    Filled,
    /// Stop loss / take profit moved.
    Modified,
    /// The close order went out.
    CloseRequested,
    /// The position is closed.
    Closed,
    /// The broker refused the order.
    Rejected,
}

impl Step {
    /// The `step` field.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::OrderSent => "order_sent",
            Step::PartialFill => "partial_fill",
            Step::Filled => "filled",
            Step::Modified => "modified",
            Step::CloseRequested => "close_requested",
            Step::Closed => "closed",
            Step::Rejected => "rejected",
        }
    }
}

/// One log entry; `magic` (the expert advisor's number) is a field Spillway does not know.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    trade_id: &'a str,
    seq: i64,
    ts_ms: i64,
    step: &'static str,
    instance_id: &'a str,
    account_id: &'a str,
    symbol: &'static str,
    side: &'static str,
    volume: f64,
    price: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tp: Option<f64>,
    order_ticket: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deal_ticket: Option<i64>,
    retcode: i64,
    latency_us: i64,
    comment: String,
    magic: u32,
}

/// The payload of a `trade_results` entry; `magic` and `reason` are fields Spillway does not know.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    account_id: &'a str,
    instance_id: &'a str,
    symbol: &'static str,
    side: &'static str,
    volume: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profit: Option<f64>,
    commission: f64,
    swap: f64,
    opened_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at_ms: Option<i64>,
    magic: u32,
    reason: &'static str,
}

/// A trade in flight.
#[derive(Debug)]
struct Open {
    id: String,
    n: u64,
    account: String,
    instance: String,
    symbol: Symbol,
    side: &'static str,
    volume: f64,
    filled: f64,
    open_price: f64,
    price: f64,
    sl: Option<f64>,
    tp: Option<f64>,
    magic: u32,
    seq: i64,
    opened_at_ms: i64,
    /// STRING log: the entries written so far, concatenated, and their count.
    string_log: Option<(Vec<u8>, u32)>,
    plan: VecDeque<Step>,
    /// When the next step is due (epoch ms).
    due_ms: i64,
}

/// What a generator has written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Execution log entries.
    pub entries: u64,
    /// `closed` events.
    pub closed: u64,
    /// `rejected` events.
    pub rejected: u64,
    /// `opened` events.
    pub opened: u64,
}

/// Plays the trades of one writer: ids `{run}-{n * stride + offset}`.
#[derive(Debug)]
pub(crate) struct TradeGen {
    rng: Rng,
    run: String,
    stride: u64,
    offset: u64,
    next: u64,
    open: Vec<Open>,
    /// What was written so far.
    pub counts: Counts,
}

impl TradeGen {
    /// A generator for writer `offset` of `stride`.
    pub(crate) fn new(seed: u64, run: &str, offset: u64, stride: u64) -> Self {
        TradeGen {
            rng: Rng::new(rng::mix(seed ^ 0x7EAD) ^ offset),
            run: run.to_string(),
            stride: stride.max(1),
            offset,
            next: 0,
            open: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Trades in flight.
    pub(crate) fn open_trades(&self) -> usize {
        self.open.len()
    }

    /// Starts a trade: its first step goes to `rls` now.
    pub(crate) fn start(&mut self, now_ms: i64, rls: &mut Vec<Cmd>, rtrs: &mut Vec<Cmd>) {
        let r = &mut self.rng;
        let n = self.next * self.stride + self.offset;
        self.next += 1;
        let symbol = *r.pick(&SYMBOLS);
        let price = rng::round(symbol.price * (0.98 + r.unit() * 0.04), symbol.digits);
        let side = if r.chance(0.5) { "buy" } else { "sell" };
        let dir = if side == "buy" { 1.0 } else { -1.0 };
        let mut plan = VecDeque::new();
        if r.chance(REJECT_SHARE) {
            if r.chance(0.5) {
                plan.push_back(Step::OrderSent);
            }
            plan.push_back(Step::Rejected);
        } else {
            plan.push_back(Step::OrderSent);
            plan.extend((0..r.below(3)).map(|_| Step::PartialFill));
            plan.push_back(Step::Filled);
            plan.extend((0..r.below(4)).map(|_| Step::Modified));
            plan.extend([Step::CloseRequested, Step::Closed]);
        }
        let mut t = Open {
            id: format!("{}-{n}", self.run),
            n,
            account: rng::account(r),
            instance: rng::instance(r),
            symbol,
            side,
            volume: (1 + r.below(200)) as f64 / 100.0,
            filled: 0.0,
            open_price: price,
            price,
            sl: r
                .chance(0.8)
                .then(|| rng::round(price * (1.0 - dir * 0.01), symbol.digits)),
            tp: r
                .chance(0.7)
                .then(|| rng::round(price * (1.0 + dir * 0.02), symbol.digits)),
            magic: 1000 + r.below(20) as u32,
            seq: 0,
            opened_at_ms: now_ms,
            string_log: r.chance(STRING_SHARE).then(|| (Vec::new(), 0)),
            plan,
            due_ms: 0,
        };
        let finished = self.step(&mut t, now_ms, rls, rtrs);
        if !finished {
            self.open.push(t);
        }
    }

    /// At `now_ms`, every trade whose next step is due writes it.
    pub(crate) fn advance(&mut self, now_ms: i64, rls: &mut Vec<Cmd>, rtrs: &mut Vec<Cmd>) {
        let mut open = std::mem::take(&mut self.open);
        open.retain_mut(|t| t.due_ms > now_ms || !self.step(t, now_ms, rls, rtrs));
        self.open = open;
    }

    /// Writes every remaining step of up to `max` trades in flight (at the end of a run);
    /// returns how many are still in flight.
    pub(crate) fn finish(
        &mut self,
        max: usize,
        now_ms: i64,
        rls: &mut Vec<Cmd>,
        rtrs: &mut Vec<Cmd>,
    ) -> usize {
        let keep = self.open.len().saturating_sub(max);
        for mut t in self.open.split_off(keep) {
            while !self.step(&mut t, now_ms, rls, rtrs) {}
        }
        self.open.len()
    }

    /// Writes `t`'s next step; true when the trade is finished (closed or rejected).
    fn step(&mut self, t: &mut Open, now_ms: i64, rls: &mut Vec<Cmd>, rtrs: &mut Vec<Cmd>) -> bool {
        let r = &mut self.rng;
        let Some(step) = t.plan.pop_front() else {
            return true;
        };
        t.seq += 1;
        t.due_ms = now_ms + 100 * (1 + r.below(MAX_GAP_STEPS)) as i64;
        let d = t.symbol.digits;
        if step != Step::OrderSent && step != Step::Rejected {
            t.price = rng::round(t.price * (1.0 + (r.unit() - 0.5) * 0.002), d);
        }
        let (volume, deal, retcode, comment) = match step {
            Step::OrderSent => (t.volume, false, 10008, "order sent".to_string()),
            Step::PartialFill => {
                let part = rng::round((t.volume - t.filled) * (0.2 + r.unit() * 0.3), 2);
                t.filled += part;
                (
                    part,
                    true,
                    10010,
                    format!("partial fill {part} of {}", t.volume),
                )
            }
            Step::Filled => {
                let rest = rng::round(t.volume - t.filled, 2);
                t.filled = t.volume;
                t.open_price = t.price;
                (rest, true, 10009, "filled".to_string())
            }
            Step::Modified => {
                t.sl = Some(rng::round(t.price * (0.99 + r.unit() * 0.005), d));
                t.tp = t.tp.map(|tp| rng::round(tp * (0.995 + r.unit() * 0.01), d));
                (t.volume, false, 10009, "sl/tp modified".to_string())
            }
            Step::CloseRequested => (t.volume, false, 10008, "close requested".to_string()),
            Step::Closed => (t.volume, true, 10009, "closed".to_string()),
            Step::Rejected => {
                let (code, why) = *r.pick(&[
                    (10006, "rejected"),
                    (10019, "no money"),
                    (10014, "invalid volume"),
                    (10016, "invalid stops"),
                ]);
                (t.volume, false, code, format!("rejected: {why}"))
            }
        };
        let entry = Entry {
            trade_id: &t.id,
            seq: t.seq,
            ts_ms: now_ms,
            step: step.name(),
            instance_id: &t.instance,
            account_id: &t.account,
            symbol: t.symbol.name,
            side: t.side,
            volume,
            price: t.price,
            sl: t.sl,
            tp: t.tp,
            order_ticket: 50_000_000 + t.n as i64,
            deal_ticket: deal.then_some(90_000_000 + t.n as i64 * 64 + t.seq),
            retcode,
            latency_us: 200 + r.below(20_000) as i64,
            comment,
            magic: t.magic,
        };
        let bytes = rmp_serde::to_vec_named(&entry).expect("plain struct encodes");
        let key = format!("trade_execution:{}", t.id);
        self.counts.entries += 1;
        match &mut t.string_log {
            None => rls.push(Cmd::Rpush(key, Bytes::from(bytes))),
            Some((log, count)) => {
                log.extend_from_slice(&bytes);
                *count += 1;
                let value = if *count == 1 {
                    log.clone()
                } else {
                    let mut v = Vec::with_capacity(log.len() + 5);
                    rmp::encode::write_array_len(&mut v, *count).expect("Vec write");
                    v.extend_from_slice(log);
                    v
                };
                rls.push(Cmd::Set(key, Bytes::from(value)));
            }
        }
        let event = match step {
            Step::Filled if r.chance(OPENED_SHARE) => "opened",
            Step::Closed => "closed",
            Step::Rejected => "rejected",
            _ => return false,
        };
        let closed = step == Step::Closed;
        let profit = (t.price - t.open_price)
            * t.volume
            * t.symbol.contract
            * if t.side == "buy" { 1.0 } else { -1.0 };
        let payload = Payload {
            account_id: &t.account,
            instance_id: &t.instance,
            symbol: t.symbol.name,
            side: t.side,
            volume: t.volume,
            open_price: (step != Step::Rejected).then_some(t.open_price),
            close_price: closed.then_some(t.price),
            profit: closed.then_some(rng::round(profit, 2)),
            commission: -rng::round(t.volume * 7.0, 2),
            swap: if closed {
                -rng::round(r.unit(), 2)
            } else {
                0.0
            },
            opened_at_ms: t.opened_at_ms,
            closed_at_ms: closed.then_some(now_ms),
            magic: t.magic,
            reason: match step {
                Step::Closed => ["tp", "sl", "client", "expert"][r.below(4) as usize],
                Step::Rejected => "broker",
                _ => "fill",
            },
        };
        rtrs.push(Cmd::Xadd {
            trade_id: t.id.clone(),
            event,
            payload: Bytes::from(rmp_serde::to_vec_named(&payload).expect("plain struct encodes")),
        });
        match step {
            Step::Closed => self.counts.closed += 1,
            Step::Rejected => self.counts.rejected += 1,
            _ => self.counts.opened += 1,
        }
        t.plan.is_empty()
    }
}

#[cfg(test)]
#[path = "trades_tests.rs"]
mod tests;
