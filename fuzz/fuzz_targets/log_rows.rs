//! The rows of a value of a taken execution log (`log_value_rows`: a MessagePack map or array
//! of maps, JSON, text) and of a stream payload (`trade_row`), encoded in RowBinary and read
//! back: no panic on any bytes, and the entries of a value are numbered one after another.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::rows::trade::{log_value_rows, trade_row, LogOrigin};
use spillway::rows::Record;

fuzz_target!(|data: &[u8]| {
    let origin = LogOrigin {
        trade_id: "T-1",
        take_id: "1-0",
        key: "trade_execution:T-1",
        now: 1_764_547_200_000,
    };
    let position = data.first().map_or(0, |&b| u32::from(b));
    if let Ok(log) = log_value_rows(origin, data, position) {
        for (i, row) in log.rows.into_iter().enumerate() {
            assert_eq!(row.position, position + i as u32);
            let Record::Row(row) = Record::trade_execution(row) else {
                unreachable!()
            };
            assert!(row.to_json().is_object());
        }
    }
    if let Ok(row) = trade_row("T-1", "closed", Some(data), "1-1", 0) {
        let Record::Row(row) = Record::trade(row) else {
            unreachable!()
        };
        assert!(row.to_json().is_object());
    }
});
