//! Decoding of Redis values: a MessagePack map (decoded completely, nothing left over), a JSON
//! object, or plain UTF-8 text. Anything else is an error that names its reason, so the value
//! can go to `dead_letters` with its raw bytes. Nothing here panics on data.

use std::io::Cursor;

use serde::Deserialize;
use serde_json::{Map, Value};

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

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The fields of a map or object, values as JSON.
    Object(Format, Map<String, Value>),
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

/// Decodes a value that may be a MessagePack map, a JSON object or text.
pub fn decode_value(bytes: &[u8]) -> Result<Payload> {
    let msgpack = decode_msgpack(bytes);
    if let Ok(Value::Object(map)) = msgpack {
        return Ok(Payload::Object(Format::MsgPack, map));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(match msgpack {
            Ok(_) => DecodeError {
                reason: "msgpack_not_map",
                detail: "MessagePack value is not a map, and the bytes are not UTF-8 text".into(),
            },
            Err(e) if looks_like_msgpack_container(bytes) => DecodeError {
                reason: "invalid_msgpack",
                detail: format!("MessagePack map or array that does not decode: {e}"),
            },
            Err(e) => DecodeError {
                reason: "invalid_utf8",
                detail: format!("not MessagePack ({e}), not a JSON object, not UTF-8 text"),
            },
        });
    };
    if text.trim_start().starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
            return Ok(Payload::Object(Format::Json, map));
        }
    }
    Ok(Payload::Text(text.to_owned()))
}

/// Decodes bytes that must be exactly one MessagePack map (execution log entries, stream payloads).
pub fn decode_msgpack_map(bytes: &[u8]) -> Result<Map<String, Value>> {
    match decode_msgpack(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DecodeError {
            reason: "msgpack_not_map",
            detail: "MessagePack value is not a map".into(),
        }),
        Err(detail) => Err(DecodeError {
            reason: "invalid_msgpack",
            detail,
        }),
    }
}

/// Decodes bytes that must be exactly one MessagePack array of maps (a STRING execution log).
pub fn decode_msgpack_array_of_maps(bytes: &[u8]) -> Result<Vec<Map<String, Value>>> {
    let not = |detail: &str| DecodeError {
        reason: "msgpack_not_map",
        detail: detail.into(),
    };
    match decode_msgpack(bytes) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::Object(m) => Ok(m),
                _ => Err(not("MessagePack array holds a value that is not a map")),
            })
            .collect(),
        Ok(_) => Err(not(
            "MessagePack value is neither a map nor an array of maps",
        )),
        Err(detail) => Err(DecodeError {
            reason: "invalid_msgpack",
            detail,
        }),
    }
}

/// Decodes exactly one MessagePack value covering all of `bytes`, straight into JSON.
fn decode_msgpack(bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    let Json(value) = Json::deserialize(&mut de).map_err(|e| e.to_string())?;
    let used = de.position();
    if used != bytes.len() as u64 {
        return Err(format!(
            "{} bytes left over after a complete MessagePack value",
            bytes.len() as u64 - used
        ));
    }
    Ok(value)
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
        d.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

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
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(Json(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((Json(k), Json(v))) = map.next_entry()? {
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

/// Takes typed known fields out of a decoded map; what is left is kept as JSON text.
#[derive(Debug)]
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// Removes `name` and returns it as text: strings as they are, numbers and booleans printed,
    /// arrays and maps as JSON; absent or null is empty.
    pub fn text(&mut self, name: &str) -> String {
        match self.0.remove(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
        }
    }

    /// Removes `name` if it is an integer (or an integral float, or a decimal string) that fits
    /// i64; otherwise leaves it in place (so it is kept in `extra`) and returns None.
    pub fn int(&mut self, name: &str) -> Option<i64> {
        let v = match self.0.get(name)? {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            }),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if v.is_some() {
            self.0.remove(name);
        }
        v
    }

    /// Removes `name` if it is a number (or a decimal string); otherwise leaves it and returns None.
    pub fn float(&mut self, name: &str) -> Option<f64> {
        let v = match self.0.get(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if v.is_some() {
            self.0.remove(name);
        }
        v
    }

    /// The fields not taken, as a JSON object text (`{}` when none).
    pub fn rest(self) -> String {
        Value::Object(self.0).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mp(v: &impl serde::Serialize) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
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
        let m = json!({"a": "x", "n": 5, "f": 1.5, "s": "42", "bad": "soon", "o": {"k": 1}});
        let Value::Object(m) = m else { panic!() };
        let mut f = Fields(m);
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
