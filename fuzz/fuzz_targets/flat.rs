//! The in-place MessagePack reader (`Flat::map`, `Flat::array`) against the general decoder:
//! whatever `Flat` accepts, the general decoder accepts too, and both answer every question a
//! row asks (text, integer, float, the rest as JSON) alike.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::decode::{
    decode_msgpack_array_of_fields, decode_msgpack_fields, Fields, Flat, TakeFields,
};
use spillway::rows::alert::ALERT_FIELDS;
use spillway::rows::trade::{EXECUTION_FIELDS, TRADE_FIELDS};

/// Asks both the same questions, in the order of `names` (as rows do), the kind of question
/// picked by `pick`, and compares the answers.
fn same_answers<'a>(names: &[&str], pick: u8, mut flat: Flat<'a>, mut fields: Fields) {
    for (i, name) in names.iter().enumerate() {
        match (usize::from(pick) + i) % 3 {
            0 => assert_eq!(
                TakeFields::str(&mut flat, name),
                TakeFields::str(&mut fields, name),
                "text of {name}"
            ),
            1 => assert_eq!(
                TakeFields::int(&mut flat, name),
                TakeFields::int(&mut fields, name),
                "int of {name}"
            ),
            _ => {
                let (a, b) = (
                    TakeFields::float(&mut flat, name),
                    TakeFields::float(&mut fields, name),
                );
                assert_eq!(
                    a.map(f64::to_bits),
                    b.map(f64::to_bits),
                    "float of {name}: {a:?} {b:?}"
                );
            }
        }
    }
    assert_eq!(TakeFields::rest(flat), TakeFields::rest(fields), "rest");
}

fuzz_target!(|data: &[u8]| {
    let pick = data.last().copied().unwrap_or(0);
    for names in [ALERT_FIELDS, EXECUTION_FIELDS, TRADE_FIELDS] {
        if let Some(flat) = Flat::map(data, names) {
            let fields = decode_msgpack_fields(data, names)
                .unwrap_or_else(|e| panic!("Flat read a map the general decoder refuses: {e}"));
            same_answers(names, pick, flat, fields);
        }
        let mut flats = Vec::new();
        if Flat::array(data, names, |f| flats.push(f)).is_some() {
            let all = decode_msgpack_array_of_fields(data, names)
                .unwrap_or_else(|e| panic!("Flat read an array the general decoder refuses: {e}"));
            assert_eq!(flats.len(), all.len());
            for (flat, fields) in flats.into_iter().zip(all) {
                same_answers(names, pick, flat, fields);
            }
        }
    }
});
