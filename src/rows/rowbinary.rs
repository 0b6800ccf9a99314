//! RowBinary, the format rows are inserted in: rows are encoded as soon as they are batched, so a
//! batch waiting for its commit (or for ClickHouse to come back) holds compact bytes, not row
//! structs with a heap string per field; a retry sends the same bytes again.
//!
//! The `clickhouse` crate's encoder is private, and this is the small subset the rows of
//! [`crate::rows`] and [`crate::rows::trade`] use: integers and floats little-endian, strings and bytes
//! with a LEB128 length, `Option` as a null flag then the value, structs as their fields in order.

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Value};

use super::schema::Col;

/// A value the encoder does not support (no row has one).
#[derive(Debug, thiserror::Error)]
#[error("RowBinary cannot encode {0}")]
pub struct Unsupported(String);

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

/// Appends the RowBinary encoding of `row` to `out`. On error `out` is left as it was.
pub(crate) fn encode<T: Serialize>(row: &T, out: &mut Vec<u8>) -> Result<(), Unsupported> {
    let start = out.len();
    let result = row.serialize(&mut Encoder(out));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

struct Encoder<'a>(&'a mut Vec<u8>);

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_string()))
}

/// Numbers: their little-endian bytes.
macro_rules! little_endian {
    ($($name:ident($t:ty)),*) => {$(
        fn $name(self, v: $t) -> Result<(), Unsupported> {
            self.0.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl ser::Serializer for &mut Encoder<'_> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.0.push(u8::from(v));
        Ok(())
    }
    little_endian!(
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64)
    );
    fn serialize_char(self, _: char) -> Result<(), Unsupported> {
        unsupported("a char")
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        put_len(self.0, v.len());
        self.0.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.0.push(1);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Unsupported> {
        self.0.push(0);
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        unsupported(&format!("enum variant {variant}"))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        unsupported(&format!("enum variant {variant}"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        unsupported("a sequence")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple struct")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a tuple variant")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        unsupported("a map")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a struct variant")
    }
}

impl ser::SerializeStruct for &mut Encoder<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Unsupported> {
        Ok(())
    }
}

/// Reads one encoded row back as a JSON object of its columns (for a row ClickHouse refused,
/// kept in `dead_letters`). Strings that are not UTF-8 are read lossily; a truncated row gives
/// the columns read so far.
pub(crate) fn to_json(columns: &[(&'static str, Col)], mut row: &[u8]) -> Value {
    let mut map = Map::new();
    for (name, col) in columns {
        let Some(v) = read_value(*col, &mut row) else {
            break;
        };
        map.insert((*name).to_string(), v);
    }
    Value::Object(map)
}

fn take<'a>(row: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if row.len() < n {
        return None;
    }
    let (head, rest) = row.split_at(n);
    *row = rest;
    Some(head)
}

fn take_array<const N: usize>(row: &mut &[u8]) -> Option<[u8; N]> {
    take(row, N)?.try_into().ok()
}

fn read_value(col: Col, row: &mut &[u8]) -> Option<Value> {
    let nullable = matches!(col, Col::TimeMsOpt | Col::F64Opt | Col::I64Opt);
    if nullable && take(row, 1)? == [1] {
        return Some(Value::Null);
    }
    Some(match col {
        Col::Str | Col::Label => {
            let mut len = 0usize;
            for shift in (0..64).step_by(7) {
                let b = take(row, 1)?[0];
                len |= usize::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
            }
            Value::String(String::from_utf8_lossy(take(row, len)?).into_owned())
        }
        Col::U64 => Value::from(u64::from_le_bytes(take_array(row)?)),
        Col::I64 | Col::TimeMs | Col::TimeMsOpt | Col::I64Opt => {
            Value::from(i64::from_le_bytes(take_array(row)?))
        }
        Col::F64Opt => serde_json::Number::from_f64(f64::from_le_bytes(take_array(row)?))
            .map_or(Value::Null, Value::Number),
        Col::U32 => Value::from(u32::from_le_bytes(take_array(row)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Sample {
        s: String,
        n: Option<f64>,
        m: Option<i64>,
        u: u64,
        t: i64,
        c: u32,
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
    }

    const COLUMNS: &[(&str, Col)] = &[
        ("s", Col::Str),
        ("n", Col::F64Opt),
        ("m", Col::I64Opt),
        ("u", Col::U64),
        ("t", Col::TimeMs),
        ("c", Col::U32),
        ("raw", Col::Label),
    ];

    #[test]
    fn encodes_row_binary_and_reads_it_back() {
        let row = Sample {
            s: "é".repeat(100),
            n: None,
            m: Some(-2),
            u: 7,
            t: 1_700_000_000_123,
            c: 3,
            raw: vec![0xff, 0],
        };
        let mut out = vec![9];
        encode(&row, &mut out).unwrap();
        // 200 bytes of string: a two-byte length (200 = 0xc8 0x01).
        assert_eq!(&out[..4], &[9, 0xc8, 0x01, 0xc3]);
        let rest = &out[1 + 2 + 200..];
        assert_eq!(rest[0], 1, "None is a null flag only");
        assert_eq!(
            &rest[1..10],
            &[0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(out.len(), 1 + 202 + 1 + 9 + 8 + 8 + 4 + 3);
        let json = to_json(COLUMNS, &out[1..]);
        assert_eq!(
            json,
            serde_json::json!({"s": row.s, "n": null, "m": -2, "u": 7, "t": 1_700_000_000_123_i64,
                "c": 3, "raw": "\u{fffd}\u{0}"})
        );
        // Truncated: the columns read so far, no panic.
        assert_eq!(to_json(COLUMNS, &out[1..10]), serde_json::json!({}));
        assert_eq!(to_json(COLUMNS, &out[1..205]).as_object().unwrap().len(), 2);
    }

    #[test]
    fn unsupported_values_leave_the_buffer_as_it_was() {
        let mut out = vec![1, 2];
        assert!(encode(&("a", 1), &mut out).is_err());
        assert!(encode(&vec![1], &mut out).is_err());
        assert_eq!(out, [1, 2]);
    }
}
