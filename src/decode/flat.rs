//! The fast path of the MessagePack decoder, for the common shape of execution log entries and
//! stream payloads: one map of string keys and scalar values (nil, booleans, numbers, UTF-8
//! strings), read in place. Known keys are matched on their bytes and strings are borrowed, so
//! nothing is allocated for a known field; no JSON value is built unless a row asks a field
//! for a type it does not have.
//!
//! Anything else (nested values, binary, extensions, keys that are not strings, text that is not
//! UTF-8, bytes cut short or left over) is not an error here: [`Flat::map`] says None and the
//! caller takes the general decoder ([`super::decode_msgpack_fields`]), which handles every
//! value and names what is wrong. For the maps it accepts, [`Flat`] answers exactly as
//! [`super::Fields`] does (the same coercions, the same `extra` text), which a property test
//! below checks on random maps.

use std::borrow::Cow;

use rmp::Marker as M;
use serde_json::Value;

use super::{find, float, float_of, int_of, text_of, TakeFields};

/// Most names a [`Flat`] can be asked to take out.
const MAX_NAMES: usize = 32;

/// A scalar value, borrowed from the bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    /// The JSON value the general decoder makes of it (see `JsonVisitor`).
    fn to_value(self) -> Value {
        match self {
            Scalar::Nil => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::from(i),
            Scalar::UInt(u) => Value::from(u),
            Scalar::F32(f) => float(f64::from(f)),
            Scalar::F64(f) => float(f),
            Scalar::Str(s) => Value::String(s.to_owned()),
        }
    }
}

/// Reads MessagePack from a slice; every read is None when the bytes end first.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }

    fn marker(&mut self) -> Option<M> {
        self.take(1).map(|b| M::from_u8(b[0]))
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A big-endian unsigned integer of `n` bytes (1, 2, 4 or 8).
    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0, |acc, &x| acc << 8 | u64::from(x)),
        )
    }

    /// The length announced by a string marker; None for any other marker.
    fn str_len(&mut self, m: M) -> Option<usize> {
        let n = match m {
            M::FixStr(n) => u64::from(n),
            M::Str8 => self.uint(1)?,
            M::Str16 => self.uint(2)?,
            M::Str32 => self.uint(4)?,
            _ => return None,
        };
        usize::try_from(n).ok()
    }

    /// The number of entries announced by a map marker; None for any other marker.
    fn map_len(&mut self) -> Option<u64> {
        match self.marker()? {
            M::FixMap(n) => Some(u64::from(n)),
            M::Map16 => self.uint(2),
            M::Map32 => self.uint(4),
            _ => None,
        }
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        let m = self.marker()?;
        Some(match m {
            M::Null => Scalar::Nil,
            M::True => Scalar::Bool(true),
            M::False => Scalar::Bool(false),
            M::FixPos(n) => Scalar::UInt(u64::from(n)),
            M::FixNeg(n) => Scalar::Int(i64::from(n)),
            M::U8 => Scalar::UInt(self.uint(1)?),
            M::U16 => Scalar::UInt(self.uint(2)?),
            M::U32 => Scalar::UInt(self.uint(4)?),
            M::U64 => Scalar::UInt(self.uint(8)?),
            M::I8 => Scalar::Int(i64::from(i8::from_be_bytes(self.array()?))),
            M::I16 => Scalar::Int(i64::from(i16::from_be_bytes(self.array()?))),
            M::I32 => Scalar::Int(i64::from(i32::from_be_bytes(self.array()?))),
            M::I64 => Scalar::Int(i64::from_be_bytes(self.array()?)),
            M::F32 => Scalar::F32(f32::from_be_bytes(self.array()?)),
            M::F64 => Scalar::F64(f64::from_be_bytes(self.array()?)),
            _ => {
                let n = self.str_len(m)?;
                Scalar::Str(std::str::from_utf8(self.take(n)?).ok()?)
            }
        })
    }
}

/// The fields of a map of scalars, borrowed from its bytes: those of `names` by position, the
/// others in the order read.
#[derive(Debug)]
pub struct Flat<'a> {
    names: &'static [&'static str],
    known: [Option<Scalar<'a>>; MAX_NAMES],
    others: Vec<(&'a str, Scalar<'a>)>,
    /// After the name last asked for: rows ask in the order of the names.
    next: usize,
}

impl<'a> Flat<'a> {
    /// The fields of `bytes` when they are exactly one map of string keys and scalar values;
    /// None otherwise (the general decoder then takes them).
    pub fn map(bytes: &'a [u8], names: &'static [&'static str]) -> Option<Flat<'a>> {
        let mut c = Cursor { bytes, pos: 0 };
        let flat = Flat::read(&mut c, names)?;
        (c.pos == bytes.len()).then_some(flat)
    }

    /// `each` of the fields of every map when `bytes` are exactly one array of such maps; None
    /// otherwise. Each map's fields are handed to `each` as they are read, so that only what it
    /// makes of them is held.
    pub fn array<T>(
        bytes: &'a [u8],
        names: &'static [&'static str],
        mut each: impl FnMut(Flat<'a>) -> T,
    ) -> Option<Vec<T>> {
        let mut c = Cursor { bytes, pos: 0 };
        let n = match c.marker()? {
            M::FixArray(n) => u64::from(n),
            M::Array16 => c.uint(2)?,
            M::Array32 => c.uint(4)?,
            _ => return None,
        };
        // The count is the producer's word: room for a few maps only, the rest as they come.
        let mut out = Vec::with_capacity(usize::try_from(n).ok()?.min(64));
        for _ in 0..n {
            out.push(each(Flat::read(&mut c, names)?));
        }
        (c.pos == bytes.len()).then_some(out)
    }

    fn read(c: &mut Cursor<'a>, names: &'static [&'static str]) -> Option<Flat<'a>> {
        if names.len() > MAX_NAMES {
            return None;
        }
        let mut flat = Flat {
            names,
            known: [None; MAX_NAMES],
            others: Vec::new(),
            next: 0,
        };
        let mut hint = 0;
        for _ in 0..c.map_len()? {
            let m = c.marker()?;
            let len = c.str_len(m)?;
            let key = c.take(len)?;
            // A name is ASCII: a key equal to its bytes is that name.
            let i = match names.get(hint) {
                Some(n) if n.as_bytes() == key => Some(hint),
                _ => names.iter().position(|n| n.as_bytes() == key),
            };
            let value = c.scalar()?;
            match i {
                Some(i) => {
                    flat.known[i] = Some(value);
                    hint = i + 1;
                }
                None => flat.others.push((std::str::from_utf8(key).ok()?, value)),
            }
        }
        Some(flat)
    }

    /// Removes `name` and returns its value, if present.
    fn take(&mut self, name: &str) -> Option<Scalar<'a>> {
        self.take_if(name, Some)
    }

    /// Removes `name` if `parse` accepts its value; otherwise leaves it in place.
    fn take_if<T>(&mut self, name: &str, parse: impl FnOnce(Scalar<'a>) -> Option<T>) -> Option<T> {
        if let Some(i) = find(self.names, self.next, name) {
            self.next = i + 1;
            let v = parse(self.known[i]?);
            if v.is_some() {
                self.known[i] = None;
            }
            return v;
        }
        // A repeated key: the last one counts, as in a map.
        let (_, last) = self.others.iter().rev().find(|(k, _)| *k == name)?;
        let v = parse(*last);
        if v.is_some() {
            self.others.retain(|(k, _)| *k != name);
        }
        v
    }
}

impl<'a> TakeFields<'a> for Flat<'a> {
    fn discard(&mut self, name: &str) {
        self.take(name);
    }

    fn str(&mut self, name: &str) -> Cow<'a, str> {
        match self.take(name) {
            Some(Scalar::Str(s)) => Cow::Borrowed(s),
            v => Cow::Owned(text_of(v.map(Scalar::to_value))),
        }
    }

    fn int(&mut self, name: &str) -> Option<i64> {
        self.take_if(name, |v| match v {
            Scalar::Int(i) => Some(i),
            Scalar::UInt(u) if i64::try_from(u).is_ok() => Some(u as i64),
            other => int_of(&other.to_value()),
        })
    }

    fn float(&mut self, name: &str) -> Option<f64> {
        self.take_if(name, |v| match v {
            Scalar::F64(f) if f.is_finite() => Some(f),
            Scalar::Int(i) => Some(i as f64),
            Scalar::UInt(u) => Some(u as f64),
            other => float_of(&other.to_value()),
        })
    }

    fn rest(mut self) -> String {
        let untaken = self.names.iter().zip(&self.known[..self.names.len()]);
        self.others
            .extend(untaken.filter_map(|(name, v)| Some((*name, (*v)?))));
        if self.others.is_empty() {
            return "{}".to_string();
        }
        // As a JSON map orders its keys (by their bytes), a later value of a key replacing an
        // earlier one; written straight from the scalars.
        self.others.sort_by_key(|(k, _)| *k);
        let mut fields = self.others;
        fields.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                *earlier = *later;
            }
            same
        });
        serde_json::to_string(&Object(&fields)).unwrap_or_else(|_| "{}".into())
    }
}

/// Fields written as a JSON object, in order.
struct Object<'s, 'a>(&'s [(&'a str, Scalar<'a>)]);

impl serde::Serialize for Object<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A scalar as JSON, as the general decoder's value of it ([`Scalar::to_value`]) is written.
impl serde::Serialize for Scalar<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Scalar::Int(i) => s.serialize_i64(i),
            Scalar::UInt(u) => s.serialize_u64(u),
            Scalar::F64(f) if f.is_finite() => s.serialize_f64(f),
            Scalar::Str(v) => s.serialize_str(v),
            // Rare: null, booleans, 32-bit and non-finite floats.
            other => other.to_value().serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_msgpack_array_of_fields, decode_msgpack_fields, Fields};
    use super::*;
    use proptest::prelude::*;

    const NAMES: &[&str] = &["trade_id", "seq", "price", "step", "sl"];

    /// A value as written on the wire, scalars and the kinds the fast path leaves to the
    /// general decoder.
    #[derive(Debug, Clone)]
    enum W {
        Nil,
        Bool(bool),
        Int(i64),
        UInt(u64),
        F32(f32),
        F64(f64),
        Str(String),
        NotUtf8,
        Bin,
        Array,
    }

    fn write(out: &mut Vec<u8>, w: &W) {
        use rmp::encode::*;
        match w {
            W::Nil => write_nil(out).unwrap(),
            W::Bool(b) => write_bool(out, *b).unwrap(),
            W::Int(i) => drop(write_sint(out, *i).unwrap()),
            W::UInt(u) => drop(write_uint(out, *u).unwrap()),
            W::F32(f) => write_f32(out, *f).unwrap(),
            W::F64(f) => write_f64(out, *f).unwrap(),
            W::Str(s) => write_str(out, s).unwrap(),
            W::NotUtf8 => {
                write_str_len(out, 2).unwrap();
                out.extend_from_slice(&[0xff, 0xfe]);
            }
            W::Bin => write_bin(out, &[1, 2]).unwrap(),
            W::Array => {
                write_array_len(out, 1).unwrap();
                write_uint(out, 1).unwrap();
            }
        }
    }

    fn scalar() -> impl Strategy<Value = W> {
        prop_oneof![
            Just(W::Nil),
            any::<bool>().prop_map(W::Bool),
            any::<i64>().prop_map(W::Int),
            (0u64..300).prop_map(W::UInt),
            any::<u64>().prop_map(W::UInt),
            any::<f32>().prop_map(W::F32),
            any::<f64>().prop_map(W::F64),
            (-1e6f64..1e6).prop_map(|f| W::F64(f.trunc())),
            "[a-z ]{0,12}".prop_map(W::Str),
            (-99i64..99).prop_map(|i| W::Str(format!(" {i} "))),
            Just(W::Str("1.5".into())),
            Just(W::Str("NaN".into())),
            Just(W::Str("é\"\\\n".into())),
        ]
    }

    fn value() -> impl Strategy<Value = W> {
        prop_oneof![
            20 => scalar(),
            1 => Just(W::NotUtf8),
            1 => Just(W::Bin),
            1 => Just(W::Array),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(NAMES).prop_map(String::from),
            1 => prop::sample::select(&["x", "magic", "slippage", "é"][..]).prop_map(String::from),
        ]
    }

    fn encode(entries: &[(String, W)]) -> Vec<u8> {
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
        for (k, v) in entries {
            rmp::encode::write_str(&mut out, k).unwrap();
            write(&mut out, v);
        }
        out
    }

    /// A row's questions: each name asked as text, integer or float, in order (or skipped).
    #[derive(Debug, Clone, Copy)]
    enum Ask {
        Text,
        Int,
        Float,
        Skip,
    }

    fn answers<'a>(mut f: impl TakeFields<'a>, asks: &[Ask]) -> Vec<String> {
        let mut out: Vec<String> = NAMES
            .iter()
            .zip(asks)
            .map(|(name, ask)| match ask {
                Ask::Text => f.text(name),
                Ask::Int => format!("{:?}", f.int(name)),
                // Bits: NaN equals NaN here.
                Ask::Float => format!("{:?}", f.float(name).map(f64::to_bits)),
                Ask::Skip => String::new(),
            })
            .collect();
        // A name outside the list is looked up among the others.
        out.push(f.text("magic"));
        out.push(f.rest());
        out
    }

    fn ask() -> impl Strategy<Value = Ask> {
        prop_oneof![
            Just(Ask::Text),
            Just(Ask::Int),
            Just(Ask::Float),
            Just(Ask::Skip)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn answers_as_the_general_decoder_does(
            entries in prop::collection::vec((key(), value()), 0..9),
            asks in prop::collection::vec(ask(), NAMES.len()),
        ) {
            let bytes = encode(&entries);
            let general = decode_msgpack_fields(&bytes, NAMES).unwrap();
            let flat_only = entries
                .iter()
                .all(|(_, v)| !matches!(v, W::NotUtf8 | W::Bin | W::Array));
            match Flat::map(&bytes, NAMES) {
                Some(flat) => {
                    prop_assert!(flat_only);
                    prop_assert_eq!(answers(flat, &asks), answers(general, &asks));
                }
                None => prop_assert!(!flat_only, "a map of scalars left to the general decoder"),
            }
            // An array of such maps: the same answers for each.
            let mut arr = Vec::new();
            rmp::encode::write_array_len(&mut arr, 2).unwrap();
            arr.extend_from_slice(&bytes);
            arr.extend_from_slice(&bytes);
            if let Some(items) = Flat::array(&arr, NAMES, |f| answers(f, &asks)) {
                let general = decode_msgpack_array_of_fields(&arr, NAMES).unwrap();
                prop_assert_eq!(items.len(), 2);
                for (flat, general) in items.into_iter().zip(general) {
                    prop_assert_eq!(flat, answers(general, &asks));
                }
            }
        }

        #[test]
        fn anything_cut_or_extended_is_left_to_the_general_decoder(
            entries in prop::collection::vec((key(), scalar()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&entries);
            prop_assert!(Flat::map(&bytes, NAMES).is_some());
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(Flat::map(short, NAMES).is_none());
            prop_assert!(decode_msgpack_fields(short, NAMES).is_err());
            let long = [&bytes[..], b"\x01"].concat();
            prop_assert!(Flat::map(&long, NAMES).is_none());
            prop_assert!(decode_msgpack_fields(&long, NAMES).is_err());
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_general_decoder() {
        let non_string_key = [0x81, 0x01, 0x02];
        let not_a_map = [0x92, 0x01, 0x02];
        let nested = rmp_serde::to_vec_named(&serde_json::json!({"seq": {"a": 1}})).unwrap();
        for bytes in [&non_string_key[..], &not_a_map, &nested, &[], &[0xc1]] {
            assert!(Flat::map(bytes, NAMES).is_none(), "{bytes:?}");
        }
        assert!(Flat::array(&not_a_map, NAMES, drop).is_none());
        assert!(Flat::array(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x80], NAMES, drop).is_none());
        let general: Fields = decode_msgpack_fields(&nested, NAMES).unwrap();
        assert_eq!(general.rest(), r#"{"seq":{"a":1}}"#);
    }
}
