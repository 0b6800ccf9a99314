//! The general decoders of alert values and execution log values (MessagePack, JSON, text), and
//! the alert row made of a value, encoded in RowBinary and read back: no panic on any bytes, and
//! an error names a reason.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::decode::{decode_log_value, decode_value_fields, Decoded, LogValue};
use spillway::rows::alert::{CapturedAlert, CapturedBy, ALERT_FIELDS};
use spillway::rows::trade::EXECUTION_FIELDS;
use spillway::rows::Record;

fuzz_target!(|data: &[u8]| {
    match decode_value_fields(data, ALERT_FIELDS) {
        Ok(Decoded::Object(_, mut fields)) => {
            for name in ALERT_FIELDS {
                let _ = fields.text(name);
            }
            let _ = fields.rest();
        }
        Ok(Decoded::Text(text)) => assert_eq!(text.as_bytes(), data),
        Err(e) => assert!(!e.reason.is_empty()),
    }
    match decode_log_value(data, EXECUTION_FIELDS) {
        Ok(LogValue::Maps(_, items)) => {
            for mut f in items {
                let _ = (f.int("seq"), f.float("price"), f.text("step"));
                let _ = f.rest();
            }
        }
        Ok(LogValue::Text(text)) => assert_eq!(text.as_bytes(), data),
        Err(e) => assert!(!e.reason.is_empty()),
    }
    let captured = CapturedAlert {
        key: "alert:fuzz",
        id_from_key: "fuzz",
        raw: data,
        ttl_ms: 3_600_000,
        captured_at_ms: 1_764_547_200_000,
        captured_by: CapturedBy::Event,
    };
    if let Ok(row) = captured.decode() {
        let message = row.message.clone();
        let Record::Row(row) = Record::alert(row) else {
            unreachable!()
        };
        let back = row.to_json();
        assert_eq!(back["message"], serde_json::Value::String(message));
    }
});
