//! Alerts as the platform writes them (docs/reference.md, RLS `alert:{alert_id}`): mostly MessagePack
//! maps, some JSON objects (older producers), some plain text; a small fraction of writes reuse
//! a recent key with a new value (a new occurrence of the same alert).

use std::collections::VecDeque;

use serde::Serialize;

use super::rng::{self, Rng, SYMBOLS};

/// Share of alerts written as JSON objects.
pub(crate) const JSON_SHARE: f64 = 0.10;
/// Share of alerts written as plain text.
pub(crate) const TEXT_SHARE: f64 = 0.10;
/// Recent alert ids a repeated write picks from.
const RECENT: usize = 1024;

/// How an alert value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// A MessagePack map (the normal case).
    MsgPack,
    /// A JSON object.
    Json,
    /// Plain UTF-8 text.
    Text,
}

/// One `SET alert:{id} <value> EX ttl`.
#[derive(Debug, Clone)]
pub(crate) struct Alert {
    /// `alert:{id}`.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// Its encoding (checked by the tests against what Spillway decodes).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    pub form: Form,
    /// Whether the key was written before (a new occurrence).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    pub repeated: bool,
}

/// The fields of a MessagePack or JSON alert; `value`, `threshold` and `occurrence` are fields
/// Spillway does not know (they must land in `extra`).
#[derive(Debug, Serialize)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert_id: Option<&'a str>,
    ts_ms: i64,
    severity: &'static str,
    kind: &'static str,
    message: &'a str,
    account_id: &'a str,
    instance_id: &'a str,
    symbol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trade_id: Option<String>,
    value: f64,
    threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrence: Option<u32>,
}

/// Writes the alerts of one writer: ids `{run}-{n * stride + offset}`, so writers sharing a run
/// never collide.
#[derive(Debug)]
pub(crate) struct AlertGen {
    rng: Rng,
    run: String,
    stride: u64,
    offset: u64,
    next: u64,
    repeat: f64,
    /// Recent ids and how often each was written.
    recent: VecDeque<(u64, u32)>,
}

impl AlertGen {
    /// A generator for writer `offset` of `stride`, repeating a recent key with probability
    /// `repeat`.
    pub(crate) fn new(seed: u64, run: &str, offset: u64, stride: u64, repeat: f64) -> Self {
        AlertGen {
            rng: Rng::new(rng::mix(seed ^ 0xA1E7) ^ offset),
            run: run.to_string(),
            stride: stride.max(1),
            offset,
            next: 0,
            repeat,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// The next alert, stamped `now_ms`.
    pub(crate) fn next(&mut self, now_ms: i64) -> Alert {
        let r = &mut self.rng;
        let (n, occurrence) = if !self.recent.is_empty() && r.chance(self.repeat) {
            let i = r.below(self.recent.len() as u64) as usize;
            let (n, count) = &mut self.recent[i];
            *count += 1;
            (*n, *count)
        } else {
            let n = self.next * self.stride + self.offset;
            self.next += 1;
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((n, 1));
            (n, 1)
        };
        let id = format!("{}-{n}", self.run);
        let (kind, severity, value, threshold) = match r.below(7) {
            0 => (
                "margin_call",
                "critical",
                rng::round(20.0 + r.unit() * 30.0, 1),
                50.0,
            ),
            1 => (
                "trade_failed",
                "warning",
                (10_004 + r.below(30)) as f64,
                0.0,
            ),
            2 => ("latency", "warning", (250 + r.below(2000)) as f64, 250.0),
            3 => ("connectivity", "critical", (1 + r.below(5)) as f64, 0.0),
            4 => ("heartbeat_missed", "info", (5 + r.below(60)) as f64, 5.0),
            5 => ("slippage", "warning", (3 + r.below(40)) as f64, 3.0),
            _ => ("price_gap", "info", (10 + r.below(500)) as f64, 10.0),
        };
        let (account, instance) = (rng::account(r), rng::instance(r));
        let symbol = r.pick(&SYMBOLS).name;
        let mut message = match kind {
            "margin_call" => format!("Margin level {value}% below {threshold}% on {account}"),
            "trade_failed" => format!("Trade execution failed on {instance}: retcode {value}"),
            "latency" => format!("Order latency {value} ms on {instance}"),
            "connectivity" => format!("Broker connection lost on {instance}, retry {value}"),
            "heartbeat_missed" => format!("Heartbeat missed on {instance} for {value} s"),
            "slippage" => format!("Slippage of {value} points on {symbol} for {account}"),
            _ => format!("Price gap of {value} points on {symbol}"),
        };
        if occurrence > 1 {
            message.push_str(&format!(" (occurrence {occurrence})"));
        }
        let roll = r.unit();
        let form = if roll < TEXT_SHARE {
            Form::Text
        } else if roll < TEXT_SHARE + JSON_SHARE {
            Form::Json
        } else {
            Form::MsgPack
        };
        let fields = Fields {
            // One in ten leaves it out: it defaults to the key's suffix.
            alert_id: (!r.chance(0.1)).then_some(id.as_str()),
            ts_ms: now_ms,
            severity,
            kind,
            message: &message,
            account_id: &account,
            instance_id: &instance,
            symbol,
            trade_id: matches!(kind, "trade_failed" | "slippage")
                .then(|| format!("{}-{}", self.run, r.below(1 << 20))),
            value,
            threshold,
            occurrence: (occurrence > 1).then_some(occurrence),
        };
        let value = match form {
            Form::MsgPack => rmp_serde::to_vec_named(&fields).expect("plain struct encodes"),
            Form::Json => serde_json::to_vec(&fields).expect("plain struct encodes"),
            Form::Text => message.clone().into_bytes(),
        };
        Alert {
            key: format!("alert:{id}"),
            value,
            form,
            repeated: occurrence > 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_value_fields, Decoded, Format};
    use crate::rows::alert::{CapturedAlert, CapturedBy, ALERT_FIELDS};

    fn row(a: &Alert) -> (crate::rows::AlertRow, Format) {
        let payload = decode_value_fields(&a.value, ALERT_FIELDS).expect("decodes");
        let format = match &payload {
            Decoded::Object(f, _) => *f,
            Decoded::Text(_) => Format::Text,
        };
        // The platform's MessagePack alerts are maps of scalars: read in place in Spillway.
        let flat = crate::decode::Flat::map(&a.value, ALERT_FIELDS).is_some();
        assert_eq!(flat, format == Format::MsgPack, "{a:?}");
        let captured = CapturedAlert {
            key: &a.key,
            id_from_key: a.key.strip_prefix("alert:").unwrap(),
            raw: &a.value,
            ttl_ms: 3_600_000,
            captured_at_ms: 5,
            captured_by: CapturedBy::Event,
        };
        (captured.decode().expect("decodes"), format)
    }

    #[test]
    fn every_form_decodes_into_the_right_row() {
        let mut g = AlertGen::new(42, "r1", 0, 1, 0.02);
        let mut forms = [0usize; 3];
        let mut repeats = 0;
        for _ in 0..5000 {
            let a = g.next(1_700_000_000_000);
            let (r, format) = row(&a);
            let expected = match a.form {
                Form::MsgPack => Format::MsgPack,
                Form::Json => Format::Json,
                Form::Text => Format::Text,
            };
            assert_eq!(format, expected, "{a:?}");
            forms[a.form as usize] += 1;
            repeats += a.repeated as usize;
            assert!(!r.message.is_empty());
            assert_eq!(
                r.alert_id,
                a.key["alert:".len()..],
                "alert_id or its default"
            );
            if a.form == Form::Text {
                assert_eq!(r.ts_ms, 5, "text: the time Spillway saw it");
                assert_eq!(r.severity, "");
            } else {
                assert_eq!(r.ts_ms, 1_700_000_000_000);
                assert!(["info", "warning", "critical"].contains(&r.severity.as_str()));
                assert!(r.account_id.starts_with("ACC-") && r.instance_id.starts_with("mt5-"));
                let extra: serde_json::Value = serde_json::from_str(&r.extra).unwrap();
                assert!(extra.get("value").is_some() && extra.get("threshold").is_some());
            }
        }
        assert!(
            forms[0] > 3500 && forms[1] > 300 && forms[2] > 300,
            "{forms:?}"
        );
        assert!((40..200).contains(&repeats), "{repeats}");
    }

    #[test]
    fn repeated_keys_get_new_values_and_writers_do_not_collide() {
        let mut g = AlertGen::new(1, "r", 0, 1, 0.5);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..2000 {
            let a = g.next(7);
            if let Some(old) = seen.insert(a.key.clone(), a.value.clone()) {
                assert!(a.repeated);
                assert_ne!(old, a.value, "a repeated key carries a new value");
            }
        }
        let mut a = AlertGen::new(1, "r", 0, 2, 0.0);
        let mut b = AlertGen::new(1, "r", 1, 2, 0.0);
        let ka: Vec<String> = (0..100).map(|_| a.next(7).key).collect();
        assert!((0..100).all(|_| !ka.contains(&b.next(7).key)));
        let (mut x, mut y) = (
            AlertGen::new(9, "r", 0, 1, 0.1),
            AlertGen::new(9, "r", 0, 1, 0.1),
        );
        assert!(
            (0..500).all(|_| x.next(3).value == y.next(3).value),
            "same seed, same values"
        );
    }
}
