//! Property tests of every decoder: arbitrary bytes never panic, and well-formed values round-trip.

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::decode::{
    decode_msgpack_array_of_maps, decode_msgpack_fields, decode_msgpack_map, decode_value,
    decode_value_fields, Decoded, Fields, Format, Payload,
};

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(".{0,12}", json_value(), 0..10)
        .prop_map(|m| m.into_iter().collect())
}

/// Names taken out while decoding, drawn often as keys by [`named_map`].
const NAMED: &[&str] = &["a", "ts_ms", "message", ""];

fn named_map() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        prop::sample::select(NAMED).prop_map(str::to_string),
        ".{0,3}".prop_map(|s: String| s)
    ];
    prop::collection::btree_map(key, json_value(), 0..8).prop_map(|m| m.into_iter().collect())
}

proptest! {
    // Failures are not persisted to a file: a failing case is printed, and becomes a unit test.
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_value(&bytes);
        let _ = decode_msgpack_map(&bytes);
        let _ = decode_msgpack_array_of_maps(&bytes);
        let _ = crate::rows::trade::trade_row("t", "closed", Some(&bytes), "1-0", 0);
        let origin = crate::rows::trade::LogOrigin { trade_id: "t", take_id: "1-0", key: "k", now: 0 };
        let _ = crate::rows::trade::log_value_rows(origin, &bytes, 0);
        let _ = crate::source::stream::entries::close_message(bytes::Bytes::from(bytes.clone()));
    }

    #[test]
    fn msgpack_prefixes_never_panic(map in json_map(), cut in any::<prop::sample::Index>()) {
        let bytes = rmp_serde::to_vec_named(&map).unwrap();
        let end = cut.index(bytes.len() + 1);
        let _ = decode_value(&bytes[..end]);
        let _ = decode_msgpack_map(&bytes[..end]);
    }

    #[test]
    fn msgpack_maps_round_trip(map in json_map()) {
        let bytes = rmp_serde::to_vec_named(&map).unwrap();
        prop_assert_eq!(decode_value(&bytes).unwrap(), Payload::Object(Format::MsgPack, map.clone()));
        prop_assert_eq!(decode_msgpack_map(&bytes).unwrap(), map);
    }

    #[test]
    fn text_is_kept_whole(text in ".{0,64}") {
        match decode_value(text.as_bytes()) {
            Ok(Payload::Text(t)) => prop_assert_eq!(t, text),
            Ok(Payload::Object(Format::Json, _)) => {
                let object_text = text.trim_start().starts_with('{');
                prop_assert!(object_text, "JSON object from text that is not one: {:?}", text);
            }
            Ok(Payload::Object(_, _)) => {
                // Text that is also a complete MessagePack map: a map of zero entries is 0x80,
                // which is not valid UTF-8, so this cannot happen.
                prop_assert!(false, "text decoded as a MessagePack map: {:?}", text);
            }
            Err(e) => prop_assert!(false, "valid UTF-8 text rejected: {}", e),
        }
    }

    #[test]
    fn named_fields_are_the_whole_map(map in named_map()) {
        let bytes = rmp_serde::to_vec_named(&map).unwrap();
        let fields = decode_msgpack_fields(&bytes, NAMED).unwrap();
        prop_assert_eq!(&fields, &Fields::from_map(NAMED, map.clone()));
        prop_assert_eq!(fields.into_map(), map.clone());
        let json = serde_json::to_string(&map).unwrap();
        match decode_value_fields(json.as_bytes(), NAMED).unwrap() {
            Decoded::Object(Format::Json, f) => prop_assert_eq!(f.into_map(), map),
            other => prop_assert!(false, "JSON object decoded as {:?}", other),
        }
    }
}
