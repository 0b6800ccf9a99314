//! Decoding of Redis values: a MessagePack map (decoded completely, nothing left over), a JSON
//! object, or plain UTF-8 text. Anything else is an error that names its reason, so the value
//! can go to `dead_letters` with its raw bytes. Nothing here panics on data.
//!
//! A MessagePack map of scalars, the usual shape, is read in place by [`Flat`] (`flat.rs`);
//! everything else goes through rmp-serde here, and both give a row the same fields
//! ([`TakeFields`]).

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

mod flat;
#[cfg(test)]
mod proptests;
pub use flat::Flat;

/// How a value was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A MessagePack map.
    MsgPack,
    /// A JSON object.
    Json,
    /// Plain UTF-8 text.
    Text,
}

impl Format {
    /// The name stored in ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::MsgPack => "msgpack",
            Format::Json => "json",
            Format::Text => "text",
        }
    }
}

/// A decoded value, every field as JSON (the tests' view of a value).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    /// The fields of a map or object, values as JSON.
    Object(Format, Map<String, Value>),
    /// Plain text.
    Text(String),
}

/// A decoded value, with the fields a row names taken out as they are read (no map of every
/// field is built on the way).
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The fields of a map or object.
    Object(Format, Fields),
    /// Plain text.
    Text(String),
}

/// Why a value could not be decoded. `reason` is a short, fixed label (for metrics and the
/// `reason` column), `detail` the decoder's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// Fixed label: `invalid_msgpack`, `msgpack_not_map`, `invalid_utf8`, `not_a_list_entry`, ...
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes a value that may be a MessagePack map, a JSON object or text, every field as JSON.
#[cfg(test)]
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Payload> {
    Ok(match decode_value_fields(bytes, &[])? {
        Decoded::Object(format, fields) => Payload::Object(format, fields.into_map()),
        Decoded::Text(text) => Payload::Text(text),
    })
}

/// Decodes a value that may be a MessagePack map, a JSON object or text, taking the fields
/// `names` out of a map or object.
pub fn decode_value_fields(bytes: &[u8], names: &'static [&'static str]) -> Result<Decoded> {
    let msgpack = decode_msgpack_fields(bytes, names);
    let msgpack = match msgpack {
        Ok(fields) => return Ok(Decoded::Object(Format::MsgPack, fields)),
        Err(e) => e,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(match msgpack {
            e if e.reason == "msgpack_not_map" => DecodeError {
                reason: "msgpack_not_map",
                detail: "MessagePack value is not a map, and the bytes are not UTF-8 text".into(),
            },
            e if looks_like_msgpack_container(bytes) => DecodeError {
                reason: "invalid_msgpack",
                detail: format!(
                    "MessagePack map or array that does not decode: {}",
                    e.detail
                ),
            },
            e => DecodeError {
                reason: "invalid_utf8",
                detail: format!(
                    "not MessagePack ({}), not a JSON object, not UTF-8 text",
                    e.detail
                ),
            },
        });
    };
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        if let Ok(fields) = FieldsSeed(names).deserialize(&mut de) {
            if de.end().is_ok() {
                return Ok(Decoded::Object(Format::Json, fields));
            }
        }
    }
    Ok(Decoded::Text(text.to_owned()))
}

/// Decodes bytes that must be exactly one MessagePack map (execution log entries, stream payloads).
pub fn decode_msgpack_map(bytes: &[u8]) -> Result<Map<String, Value>> {
    decode_msgpack_fields(bytes, &[]).map(Fields::into_map)
}

/// A value of an execution log decoded: the maps it holds (one, or an array of them) or text.
#[derive(Debug, Clone, PartialEq)]
pub enum LogValue {
    /// The fields of each map or object, in order.
    Maps(Format, Vec<Fields>),
    /// Plain text, kept whole.
    Text(String),
}

/// Decodes a value of an execution log, which the platform writes in every form: a MessagePack
/// map or array of maps, a JSON object or array of objects, or plain UTF-8 text. Like an alert,
/// a value is MessagePack only if it decodes completely; text that is not a JSON object or an
/// array of objects is text. Bytes that are none of these are an error naming why.
pub fn decode_log_value(bytes: &[u8], names: &'static [&'static str]) -> Result<LogValue> {
    if let Ok(items) = decode_msgpack_array_of_fields(bytes, names) {
        return Ok(LogValue::Maps(Format::MsgPack, items));
    }
    match decode_value_fields(bytes, names)? {
        Decoded::Object(format, fields) => Ok(LogValue::Maps(format, vec![fields])),
        Decoded::Text(text) => {
            if text.trim_start().starts_with('[') {
                let mut de = serde_json::Deserializer::from_str(&text);
                if let Ok(items) = ArraySeed(names).deserialize(&mut de) {
                    if de.end().is_ok() {
                        return Ok(LogValue::Maps(Format::Json, items));
                    }
                }
            }
            Ok(LogValue::Text(text))
        }
    }
}

/// Decodes bytes that must be exactly one MessagePack map, taking the fields `names` out.
pub fn decode_msgpack_fields(bytes: &[u8], names: &'static [&'static str]) -> Result<Fields> {
    decode_msgpack_with(bytes, FieldsSeed(names), "MessagePack value is not a map")
}

/// Decodes bytes that must be exactly one MessagePack array of maps (a STRING execution log).
#[cfg(test)]
pub(crate) fn decode_msgpack_array_of_maps(bytes: &[u8]) -> Result<Vec<Map<String, Value>>> {
    decode_msgpack_array_of_fields(bytes, &[])
        .map(|items| items.into_iter().map(Fields::into_map).collect())
}

/// Decodes bytes that must be exactly one MessagePack array of maps, taking the fields `names`
/// out of each.
pub fn decode_msgpack_array_of_fields(
    bytes: &[u8],
    names: &'static [&'static str],
) -> Result<Vec<Fields>> {
    decode_msgpack_with(
        bytes,
        ArraySeed(names),
        "MessagePack value is neither a map nor an array of maps",
    )
}

/// How deep MessagePack values may nest (serde_json's limit for JSON): rmp-serde's own, 1024,
/// overflowed a 2 MiB stack (a tokio worker's) in a debug build; no producer nests that deep.
const MAX_DEPTH: usize = 128;

/// Decodes exactly one MessagePack value covering all of `bytes` with `seed`: a well-formed
/// value of another type is `msgpack_not_map` (saying `not_map`), anything else
/// `invalid_msgpack`.
fn decode_msgpack_with<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
    not_map: &str,
) -> Result<S::Value> {
    let invalid = |detail| DecodeError {
        reason: "invalid_msgpack",
        detail,
    };
    // Borrowing from `bytes` (strings are not copied into a scratch buffer first); that reader
    // does not tell where the value ended, so `msgpack_len` does.
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let value = seed.deserialize(&mut de).map_err(|e| {
        let detail = e.to_string();
        if detail.contains(EXPECTING_MAP) && complete_value(bytes) {
            DecodeError {
                reason: "msgpack_not_map",
                detail: not_map.into(),
            }
        } else {
            invalid(detail)
        }
    })?;
    match msgpack_len(bytes).map(|len| bytes.len() - len) {
        Some(0) => Ok(value),
        Some(left) => Err(invalid(format!(
            "{left} bytes left over after a complete MessagePack value"
        ))),
        None => Err(invalid("MessagePack value cut short".into())),
    }
}

/// The length in bytes of the first MessagePack value of `bytes`, walking its headers only
/// (nothing is decoded); None when it is cut short or uses the reserved marker.
fn msgpack_len(bytes: &[u8]) -> Option<usize> {
    use rmp::Marker as M;
    let mut pos = 0usize;
    // Values still to walk: containers add their items. Each takes at least one byte, so a
    // huge announced count ends at the end of `bytes`.
    let mut pending: u64 = 1;
    let size = |pos: &mut usize, n: usize| -> Option<u64> {
        let b = bytes.get(*pos..*pos + n)?;
        *pos += n;
        Some(b.iter().fold(0, |acc, &x| acc << 8 | u64::from(x)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = M::from_u8(*bytes.get(pos)?);
        pos += 1;
        // (bytes of payload to skip, values inside)
        let (skip, items): (u64, u64) = match marker {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => (0, 0),
            M::U8 | M::I8 => (1, 0),
            M::U16 | M::I16 => (2, 0),
            M::U32 | M::I32 | M::F32 => (4, 0),
            M::U64 | M::I64 | M::F64 => (8, 0),
            M::FixStr(n) => (u64::from(n), 0),
            M::Str8 | M::Bin8 => (size(&mut pos, 1)?, 0),
            M::Str16 | M::Bin16 => (size(&mut pos, 2)?, 0),
            M::Str32 | M::Bin32 => (size(&mut pos, 4)?, 0),
            M::FixArray(n) => (0, u64::from(n)),
            M::Array16 => (0, size(&mut pos, 2)?),
            M::Array32 => (0, size(&mut pos, 4)?),
            M::FixMap(n) => (0, 2 * u64::from(n)),
            M::Map16 => (0, 2 * size(&mut pos, 2)?),
            M::Map32 => (0, 2 * size(&mut pos, 4)?),
            // Extensions: a type byte, then the data.
            M::FixExt1 => (2, 0),
            M::FixExt2 => (3, 0),
            M::FixExt4 => (5, 0),
            M::FixExt8 => (9, 0),
            M::FixExt16 => (17, 0),
            M::Ext8 => (size(&mut pos, 1)? + 1, 0),
            M::Ext16 => (size(&mut pos, 2)? + 1, 0),
            M::Ext32 => (size(&mut pos, 4)? + 1, 0),
            M::Reserved => return None,
        };
        pos = pos.checked_add(usize::try_from(skip).ok()?)?;
        if pos > bytes.len() {
            return None;
        }
        pending += items;
    }
    Some(pos)
}

/// Whether `bytes` are exactly one well-formed MessagePack value (of any type).
fn complete_value(bytes: &[u8]) -> bool {
    let mut de = rmp_serde::Deserializer::new(bytes);
    de.set_max_depth(MAX_DEPTH);
    serde::de::IgnoredAny::deserialize(&mut de).is_ok() && de.get_ref().is_empty()
}

fn looks_like_msgpack_container(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x9f | 0xdc..=0xdf))
}

/// A JSON value built directly from any self-describing serde input (here MessagePack), losing
/// nothing a JSON text can hold: binary data and strings that are not UTF-8 become
/// `{"$bin": base64}`, extension values `{"$ext": type, "data": base64}`, non-finite floats
/// strings, and map keys that are not strings their JSON text.
struct Json(Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor::default()).map(Json)
    }
}

/// How deep map keys that are maps or arrays may nest in one another. Such a key becomes its
/// JSON text, and every level escapes the quotes and backslashes of the text inside it again,
/// doubling them: unbounded, a value of a few hundred bytes (found by the fuzzer: sixty maps
/// each the key of the next) asked for gigabytes and hung the decoder.
const MAX_KEY_DEPTH: u8 = 2;

/// Makes a [`Value`]; `key_depth` counts the map keys it is inside of.
#[derive(Debug, Clone, Copy, Default)]
struct JsonVisitor {
    key_depth: u8,
}

/// A visitor for a map key (of a map that is not itself inside a key).
const KEY: JsonVisitor = JsonVisitor { key_depth: 1 };

impl JsonVisitor {
    /// Refuses a map or array inside more than [`MAX_KEY_DEPTH`] keys.
    fn container<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        match self.key_depth > MAX_KEY_DEPTH {
            true => Err(E::custom(format!(
                "map keys that are maps or arrays nest more than {MAX_KEY_DEPTH} deep"
            ))),
            false => Ok(()),
        }
    }
}

impl<'de> DeserializeSeed<'de> for JsonVisitor {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn base64(b: &[u8]) -> Value {
    use base64::Engine as _;
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
}

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a MessagePack value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f32<E>(self, v: f32) -> std::result::Result<Value, E> {
        Ok(float(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(float(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Value, E> {
        Ok(Value::Object(Map::from_iter([(
            "$bin".to_string(),
            base64(v),
        )])))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        self.container::<A::Error>()?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        self.container::<A::Error>()?;
        let key_visitor = JsonVisitor {
            key_depth: self.key_depth.saturating_add(1),
        };
        let mut out = Map::new();
        while let Some((k, v)) = map.next_entry_seed(key_visitor, self)? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        // rmp-serde hands extension values over as a newtype of (type, bytes).
        let (t, data): (i8, serde_bytes::ByteBuf) = Deserialize::deserialize(d)?;
        Ok(Value::Object(Map::from_iter([
            ("$ext".to_string(), Value::from(t)),
            ("data".to_string(), base64(&data)),
        ])))
    }
}

/// What a map that is not one says it expected (and how such an error is recognized).
const EXPECTING_MAP: &str = "a map of fields";

/// The fields of a decoded map: those a row names (`names`, taken out as they were read) and
/// the others (`extra`), kept as JSON.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    names: &'static [&'static str],
    known: Vec<Option<Value>>,
    extra: Map<String, Value>,
    /// After the name last asked for: rows ask in the order of the names.
    next: usize,
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        (self.names, &self.known, &self.extra) == (other.names, &other.known, &other.extra)
    }
}

impl Fields {
    /// Fields of a map already decoded: `names` are taken out of it.
    pub fn from_map(names: &'static [&'static str], mut extra: Map<String, Value>) -> Fields {
        let known = names.iter().map(|n| extra.remove(*n)).collect();
        Fields {
            names,
            known,
            extra,
            next: 0,
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<Value>> {
        let i = find(self.names, self.next, name)?;
        self.next = i + 1;
        self.known.get_mut(i)
    }

    /// Removes `name` and returns its value, if present.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        match self.slot(name) {
            Some(slot) => slot.take(),
            None => self.extra.remove(name),
        }
    }

    /// Removes `name` and returns it as text: strings as they are, numbers and booleans printed,
    /// arrays and maps as JSON; absent or null is empty.
    pub fn text(&mut self, name: &str) -> String {
        text_of(self.take(name))
    }

    /// Removes `name` if `parse` accepts its value; otherwise leaves it in place (so it is kept
    /// in `extra`) and returns None.
    fn take_if<T>(&mut self, name: &str, parse: impl FnOnce(&Value) -> Option<T>) -> Option<T> {
        let slot = match self.slot(name) {
            Some(slot) => slot,
            None => {
                let v = parse(self.extra.get(name)?);
                if v.is_some() {
                    self.extra.remove(name);
                }
                return v;
            }
        };
        let v = parse(slot.as_ref()?);
        if v.is_some() {
            *slot = None;
        }
        v
    }

    /// Removes `name` if it is an integer (or an integral float, or a decimal string) that fits
    /// i64; otherwise leaves it in place (so it is kept in `extra`) and returns None.
    pub fn int(&mut self, name: &str) -> Option<i64> {
        self.take_if(name, int_of)
    }

    /// Removes `name` if it is a number (or a decimal string); otherwise leaves it and returns None.
    pub fn float(&mut self, name: &str) -> Option<f64> {
        self.take_if(name, float_of)
    }

    /// Every field not taken, as one map.
    pub fn into_map(self) -> Map<String, Value> {
        let mut map = self.extra;
        for (name, v) in self.names.iter().zip(self.known) {
            if let Some(v) = v {
                map.insert((*name).to_string(), v);
            }
        }
        map
    }

    /// The fields not taken, as a JSON object text (`{}` when none).
    pub fn rest(self) -> String {
        if self.extra.is_empty() && self.known.iter().all(Option::is_none) {
            return "{}".to_string();
        }
        // Serialized straight into a string (Display goes through the formatter, slower).
        serde_json::to_string(&Value::Object(self.into_map())).unwrap_or_else(|_| "{}".into())
    }
}

/// A field's value as text: strings as they are, numbers and booleans printed, arrays and maps
/// as JSON; absent or null is empty.
fn text_of(v: Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

/// A field's value as an integer: an integer (or an integral float, or a decimal string) that
/// fits i64.
fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A field's value as a float: a number (or a decimal string).
fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What a row takes out of a decoded map, by name: [`Fields`] (any map, values as JSON) and
/// [`Flat`] (a map of scalars, borrowed from the bytes) give the same answers for the same map.
pub trait TakeFields<'a> {
    /// Removes `name` (the row has it from elsewhere).
    fn discard(&mut self, name: &str);
    /// See [`Fields::text`]; borrowed from the bytes decoded where it can be.
    fn str(&mut self, name: &str) -> Cow<'a, str>;
    /// See [`Fields::text`].
    fn text(&mut self, name: &str) -> String {
        self.str(name).into_owned()
    }
    /// See [`Fields::int`].
    fn int(&mut self, name: &str) -> Option<i64>;
    /// See [`Fields::float`].
    fn float(&mut self, name: &str) -> Option<f64>;
    /// See [`Fields::rest`].
    fn rest(self) -> String;
}

impl<'a> TakeFields<'a> for Fields {
    fn discard(&mut self, name: &str) {
        self.take(name);
    }
    fn str(&mut self, name: &str) -> Cow<'a, str> {
        Cow::Owned(Fields::text(self, name))
    }
    fn int(&mut self, name: &str) -> Option<i64> {
        Fields::int(self, name)
    }
    fn float(&mut self, name: &str) -> Option<f64> {
        Fields::float(self, name)
    }
    fn rest(self) -> String {
        Fields::rest(self)
    }
}

/// Decodes a map into [`Fields`], naming what it takes out.
struct FieldsSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldsSeed {
    type Value = Fields;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Fields, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(EXPECTING_MAP)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Fields, A::Error> {
        let names = self.0;
        let mut fields = Fields {
            names,
            known: vec![None; names.len()],
            extra: Map::new(),
            next: 0,
        };
        let mut next = 0;
        while let Some(key) = map.next_key_seed(KeySeed { names, next })? {
            let Json(v) = map.next_value()?;
            match key {
                Key::Known(i) => {
                    fields.known[i] = Some(v);
                    next = i + 1;
                }
                Key::Other(k) => {
                    fields.extra.insert(k, v);
                }
            }
        }
        Ok(fields)
    }
}

/// Decodes an array of maps into [`Fields`] each.
struct ArraySeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for ArraySeed {
    type Value = Vec<Fields>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Vec<Fields>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed {
    type Value = Vec<Fields>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of {EXPECTING_MAP}")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<Fields>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(f) = seq.next_element_seed(FieldsSeed(self.0))? {
            out.push(f);
        }
        Ok(out)
    }
}

/// A map key: one of the names (by position), or any other key as text.
enum Key {
    Known(usize),
    Other(String),
}

/// Finds a map key among the names, trying first the name after the last one found: producers
/// write their fields in one order, which the names follow.
struct KeySeed {
    names: &'static [&'static str],
    next: usize,
}

/// The position of `s` in `names`, trying `hint` first.
fn find(names: &[&str], hint: usize, s: &str) -> Option<usize> {
    match names.get(hint) {
        Some(n) if *n == s => Some(hint),
        _ => names.iter().position(|n| *n == s),
    }
}

impl KeySeed {
    fn key(&self, s: &str) -> Key {
        match find(self.names, self.next, s) {
            Some(i) => Key::Known(i),
            None => Key::Other(s.to_owned()),
        }
    }

    fn owned(&self, s: String) -> Key {
        match find(self.names, self.next, &s) {
            Some(i) => Key::Known(i),
            None => Key::Other(s),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Key, D::Error> {
        d.deserialize_any(self)
    }
}

/// Keys that are not strings become their JSON text, as [`JsonVisitor`] makes them.
macro_rules! key_via_json {
    ($($name:ident($t:ty)),*) => {$(
        fn $name<E: serde::de::Error>(self, v: $t) -> std::result::Result<Key, E> {
            KEY.$name(v).map(|v| self.owned(v.to_string()))
        }
    )*};
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map key")
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Key, E> {
        Ok(self.key(v))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Key, E> {
        Ok(self.owned(v))
    }
    key_via_json!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_f32(f32),
        visit_f64(f64),
        visit_bytes(&[u8])
    );
    fn visit_unit<E>(self) -> std::result::Result<Key, E> {
        Ok(self.owned("null".into()))
    }
    fn visit_none<E>(self) -> std::result::Result<Key, E> {
        Ok(self.owned("null".into()))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Key, D::Error> {
        KEY.visit_some(d).map(|v| self.owned(v.to_string()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Key, A::Error> {
        KEY.visit_seq(seq).map(|v| self.owned(v.to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Key, A::Error> {
        KEY.visit_map(map).map(|v| self.owned(v.to_string()))
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Key, D::Error> {
        KEY.visit_newtype_struct(d)
            .map(|v| self.owned(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mp(v: &impl serde::Serialize) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    /// Values nested deeper than any producer writes are refused (rmp-serde and serde_json stop
    /// at their depth limits), not decoded until a tokio worker's 2 MiB stack overflows.
    #[test]
    fn deep_nesting_fits_a_worker_stack() {
        let mut arrays = vec![0x91; 100_000];
        arrays.push(0x01);
        let mut maps = [0x81, 0xa1, b'a'].repeat(100_000);
        maps.push(0x01);
        let mut json_arrays = "[".repeat(100_000).into_bytes();
        json_arrays.extend(b"1");
        let mut entry = vec![0x81, 0xa1, b'x'];
        entry.extend(&arrays);
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for bytes in [&arrays, &maps, &json_arrays, &entry] {
                    let _ = decode_value_fields(bytes, crate::rows::alert::ALERT_FIELDS);
                    let _ = decode_log_value(bytes, crate::rows::trade::EXECUTION_FIELDS);
                }
                assert!(decode_msgpack_map(&entry).is_err());
                // A hundred levels are still a value like any other.
                let mut deep_enough = vec![0x81, 0xa1, b'x'];
                deep_enough.extend([0x91; 100]);
                deep_enough.push(0x01);
                assert!(decode_msgpack_map(&deep_enough).is_ok());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Found by the fuzzer (target `decode`, a timeout): maps each the key of the next, whose
    /// JSON texts doubled at every level. Refused now, at once, and named.
    #[test]
    fn keys_nested_in_keys_are_refused_not_expanded() {
        let found: Vec<u8> = [
        "8eaa6163636f8a918ba0969b5abe43432d818181818181818181818181818181818181818181818181818181",
        "818181818181818181818181818181818181818181818181818181818181818131ab696e7374616e63655f69",
        "64a56d74352d31a673796d626f6ca6455552555344a473696465a473656c6c5a856f6c90929a34c00fffff00",
        "000000aa6f70656e5f7072696365cb3ff199999999909090909090909090909090909090999aab636c6f7365",
        "5f7072696365cb3ff3333333333333a670726f666974cbffffffffffffffffc029000000000000aa6331ab69",
        "6e7374616e63655f6964a56d74352d31a673796d626f6c5ab95552555344a473696465a473656c6c5a856f6c",
        "90929a34c00fffff00000000aa6f70656e5f7072696365cb3ff199999999999aab636c6f73655f7072696365",
        "cb3ff3333333333333a670726f666974cbc029000000000000aa636f6d6d697373696f6e6d74352d31a67379",
        "6d626f6ca645556f756e745f6964a54143432d31ab696e7374617663655f6964a56d74352d31a673796d626f",
        "6ca64552555344a473696465a473656c6c6400a6766f6c75f265cb61745f6d7302a3746167c3a46e6f6d6d69",
        "7373696f6e6d742d31ab696e7374617663655f6964a56d0f00000000000000626f6ca64552555344a4736964",
        "65a473656c6c6400a6766f6c75f265cb61745f6d7302a3746167c3a46e6f6e65c0",
        ]
        .concat()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
        // Sixty-four maps, each the key of the next.
        let mut deep = vec![0x81; 64];
        deep.extend([0xa1, b'a']);
        deep.extend([0x01; 64]);
        for bytes in [&found, &deep] {
            let start = std::time::Instant::now();
            assert!(decode_value_fields(bytes, crate::rows::alert::ALERT_FIELDS).is_err());
            let e = decode_log_value(bytes, crate::rows::trade::EXECUTION_FIELDS).unwrap_err();
            assert_eq!(e.reason, "invalid_msgpack", "{e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
        }
        let e = decode_value_fields(&deep, &[]).unwrap_err();
        assert!(e.detail.contains("nest more than 2 deep"), "{e}");
        // Two levels are kept, as JSON text.
        let two = [0x81, 0x81, 0x81, 0xa1, b'a', 0x01, 0x02, 0x03];
        let map = decode_msgpack_map(&two).unwrap();
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map[r#"{"{\"a\":1}":2}"#], json!(3));
    }

    #[test]
    fn msgpack_len_walks_every_kind_of_value() {
        let values = [
            json!(null),
            json!(true),
            json!(7),
            json!(-7),
            json!(200),
            json!(-200),
            json!(70000),
            json!(-70000),
            json!(5_000_000_000_i64),
            json!(-5_000_000_000_i64),
            json!(1.5),
            json!("short"),
            json!("x".repeat(40)),
            json!("y".repeat(300)),
            json!("z".repeat(70_000)),
            json!([1, [2, [3, {"a": [4]}]]]),
            json!((0..20).collect::<Vec<_>>()),
            json!((0..70_000).collect::<Vec<_>>()),
            json!({"alert_id": "a1", "nested": {"k": [1, 2.5, "s", null]}}),
            serde_json::Value::Object((0..20).map(|i| (format!("k{i}"), json!(i))).collect()),
        ];
        for v in &values {
            let bytes = mp(v);
            assert_eq!(msgpack_len(&bytes), Some(bytes.len()), "{v}");
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"tail");
            assert_eq!(msgpack_len(&longer), Some(bytes.len()), "{v}");
            assert_eq!(msgpack_len(&bytes[..bytes.len() - 1]), None, "{v}");
        }
        // Binary, 32-bit float, extensions (fixed and sized), and the reserved marker.
        for bytes in [
            &[0xc4, 2, 1, 2][..],
            &[0xc5, 0, 1, 9][..],
            &[0xca, 0, 0, 0, 0][..],
            &[0xd4, 1, 0][..],
            &[&[0xd8, 1][..], &[0; 16]].concat()[..],
            &[0xc7, 2, 5, 0, 0][..],
        ] {
            assert_eq!(msgpack_len(bytes), Some(bytes.len()), "{bytes:?}");
            assert_eq!(msgpack_len(&bytes[..bytes.len() - 1]), None, "{bytes:?}");
        }
        assert_eq!(msgpack_len(&[0xc1]), None);
        // An array announcing four billion items ends with the bytes.
        assert_eq!(msgpack_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2]), None);
    }

    #[test]
    fn msgpack_map() {
        let bytes = mp(&json!({"alert_id": "a1", "ts_ms": 1700000000123_i64, "x": [1, 2]}));
        let Payload::Object(Format::MsgPack, m) = decode_value(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(m["alert_id"], "a1");
        assert_eq!(m["ts_ms"], 1700000000123_i64);
        assert_eq!(m["x"], json!([1, 2]));
    }

    #[test]
    fn json_object_and_text() {
        let Payload::Object(Format::Json, m) =
            decode_value(br#" {"severity":"critical"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(m["severity"], "critical");
        assert_eq!(
            decode_value(b"[1,2]").unwrap(),
            Payload::Text("[1,2]".into())
        );
        assert_eq!(
            decode_value(b"{broken").unwrap(),
            Payload::Text("{broken".into())
        );
        assert_eq!(decode_value(b"").unwrap(), Payload::Text(String::new()));
    }

    #[test]
    fn json_floats_are_read_exactly() {
        // Found by the property test: without serde_json's float_roundtrip the last digit moves.
        let Payload::Object(_, m) = decode_value(br#"{"p": -260213239735.28998}"#).unwrap() else {
            panic!()
        };
        assert_eq!(m["p"].as_f64(), Some(-260213239735.28998));
    }

    #[test]
    fn plain_string_that_starts_like_msgpack_is_text() {
        // 'T' is a MessagePack positive fixint: it decodes, but with bytes left over.
        assert_eq!(
            decode_value(b"Trade execution failed").unwrap(),
            Payload::Text("Trade execution failed".into())
        );
        // A one-character string decodes completely as an integer: still text, not a map.
        assert_eq!(decode_value(b"5").unwrap(), Payload::Text("5".into()));
        // Unicode text.
        assert_eq!(
            decode_value("Ошибка ⚠".as_bytes()).unwrap(),
            Payload::Text("Ошибка ⚠".into())
        );
    }

    #[test]
    fn corrupt_values_have_reasons() {
        let full = mp(&json!({"alert_id": "a1", "message": "hello"}));
        let e = decode_value(&full[..full.len() - 3]).unwrap_err();
        assert_eq!(e.reason, "invalid_msgpack", "{e}");
        let mut trailing = full.clone();
        trailing.push(0xc1);
        assert_eq!(
            decode_value(&trailing).unwrap_err().reason,
            "invalid_msgpack"
        );
        assert_eq!(
            decode_value(&[0xff, 0xfe, 0x00, 0x80]).unwrap_err().reason,
            "invalid_utf8"
        );
        // A MessagePack string is a complete value but not a map, and not UTF-8 text as a whole.
        assert_eq!(
            decode_value(&mp(&"hi")).unwrap_err().reason,
            "msgpack_not_map"
        );
        // Huge declared lengths must not allocate or panic.
        for bytes in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_value(bytes).is_err());
        }
    }

    #[test]
    fn binary_ext_and_odd_keys_are_kept() {
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 5).unwrap();
        rmp::encode::write_uint(&mut buf, 7).unwrap();
        rmp::encode::write_str(&mut buf, "seven").unwrap();
        rmp::encode::write_str(&mut buf, "blob").unwrap();
        rmp::encode::write_bin(&mut buf, &[0, 255]).unwrap();
        rmp::encode::write_str(&mut buf, "nan").unwrap();
        rmp::encode::write_f64(&mut buf, f64::NAN).unwrap();
        rmp::encode::write_str(&mut buf, "ext").unwrap();
        rmp::encode::write_ext_meta(&mut buf, 2, 5).unwrap();
        buf.extend_from_slice(&[1, 2]);
        rmp::encode::write_str(&mut buf, "latin1").unwrap();
        rmp::encode::write_str_len(&mut buf, 3).unwrap();
        buf.extend_from_slice(&[b'c', b'a', 0xe9]);
        let m = decode_msgpack_map(&buf).unwrap();
        assert_eq!(m["ext"], json!({"$ext": 5, "data": "AQI="}));
        assert_eq!(m["latin1"], json!({"$bin": "Y2Hp"}));
        assert_eq!(m["7"], "seven");
        assert_eq!(m["blob"], json!({"$bin": "AP8="}));
        assert_eq!(m["nan"], "NaN");
    }

    #[test]
    fn fields_take_known_and_keep_rest() {
        const NAMES: &[&str] = &["a", "n", "bad", "o", "absent"];
        let v = json!({"a": "x", "n": 5, "f": 1.5, "s": "42", "bad": "soon", "o": {"k": 1}});
        let bytes = mp(&v);
        let Value::Object(m) = v else { panic!() };
        // The same answers whether the fields were named while decoding, named afterwards, or
        // not named at all.
        for mut f in [
            decode_msgpack_fields(&bytes, NAMES).unwrap(),
            Fields::from_map(NAMES, m.clone()),
            Fields::from_map(&[], m),
        ] {
            assert_eq!(f.text("a"), "x");
            assert_eq!(f.text("n"), "5");
            assert_eq!(f.text("missing"), "");
            assert_eq!(f.int("s"), Some(42));
            assert_eq!(f.int("bad"), None);
            assert_eq!(f.float("f"), Some(1.5));
            assert_eq!(f.text("o"), r#"{"k":1}"#);
            assert_eq!(f.rest(), r#"{"bad":"soon"}"#);
        }
    }

    #[test]
    fn named_fields_decode_like_the_whole_map() {
        const NAMES: &[&str] = &["dup", "7", "x"];
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 4).unwrap();
        rmp::encode::write_str(&mut buf, "dup").unwrap();
        rmp::encode::write_uint(&mut buf, 1).unwrap();
        rmp::encode::write_uint(&mut buf, 7).unwrap();
        rmp::encode::write_str(&mut buf, "seven").unwrap();
        rmp::encode::write_str(&mut buf, "dup").unwrap();
        rmp::encode::write_uint(&mut buf, 2).unwrap();
        rmp::encode::write_str(&mut buf, "y").unwrap();
        rmp::encode::write_bool(&mut buf, true).unwrap();
        let mut f = decode_msgpack_fields(&buf, NAMES).unwrap();
        // The last of duplicate keys wins, as in the whole map; a non-string key is its text.
        assert_eq!(f.clone().into_map(), decode_msgpack_map(&buf).unwrap());
        assert_eq!(f.int("dup"), Some(2));
        assert_eq!(f.text("7"), "seven");
        assert_eq!(f.rest(), r#"{"y":true}"#);
        // An array of maps is not a map; an array holding a non-map is not an array of maps.
        let arr = mp(&json!([{"x": 1}, {"x": 2}]));
        assert_eq!(
            decode_msgpack_fields(&arr, NAMES).unwrap_err().reason,
            "msgpack_not_map"
        );
        let mut items = decode_msgpack_array_of_fields(&arr, NAMES).unwrap();
        assert_eq!(items[1].int("x"), Some(2));
        let mixed = mp(&json!([{"x": 1}, 2]));
        assert_eq!(
            decode_msgpack_array_of_fields(&mixed, NAMES)
                .unwrap_err()
                .reason,
            "msgpack_not_map"
        );
        assert_eq!(
            decode_msgpack_array_of_fields(&arr[..arr.len() - 1], NAMES)
                .unwrap_err()
                .reason,
            "invalid_msgpack"
        );
    }
}
