//! The parser on the RDB a real Redis 7.0 wrote (tests/fixtures/rdb/redis-7.0.rdb, from make.sh
//! there): every key and value, keys not wanted, the end of the RDB, damaged copies.

use bytes::Bytes;

use super::{Entry, Parser, RdbErrorKind, Value};

/// The RDB of make.sh.
pub(crate) const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/rdb/redis-7.0.rdb");

/// Every entry of `rdb`, wanting the keys `want` accepts.
pub(super) fn parse_all(
    rdb: &[u8],
    want: impl Fn(&[u8]) -> bool,
) -> Result<Vec<Entry>, super::RdbError> {
    let mut p = Parser::new(rdb)?;
    let mut out = Vec::new();
    while let Some(e) = p.next(&mut |_, k| want(k))? {
        out.push(e);
    }
    Ok(out)
}

pub(super) fn find<'a>(entries: &'a [Entry], key: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.key == key.as_bytes())
        .unwrap_or_else(|| panic!("{key} missing"))
}

pub(super) fn list(items: &[&str]) -> Value {
    Value::List(
        items
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect(),
    )
}

pub(super) fn string(s: &str) -> Value {
    Value::String(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn every_key_of_a_real_redis_7_0_rdb() {
    let entries = parse_all(FIXTURE, |_| true).unwrap();
    let mut keys: Vec<_> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.key))
        .collect();
    keys.sort();
    let want_keys = [
        "h:big", "h:small", "l:multi", "l:plain", "l:small", "s:big", "s:db1", "s:int", "s:short",
        "s:ttl", "set:big", "set:int", "st", "z:big", "z:small",
    ];
    assert_eq!(keys, want_keys);
    assert_eq!(find(&entries, "s:short").value, string("hello"));
    assert_eq!(find(&entries, "s:int").value, string("-12345"));
    assert_eq!(find(&entries, "s:big").value, string(&"alert ".repeat(200)));
    let ttl = find(&entries, "s:ttl");
    assert_eq!(
        (ttl.value.clone(), ttl.expire_at_ms),
        (string("v"), Some(4_102_444_800_123))
    );
    let db1 = find(&entries, "s:db1");
    assert_eq!((db1.db, db1.expire_at_ms.is_some()), (1, true));
    assert_eq!(find(&entries, "s:short").expire_at_ms, None);
    assert_eq!(
        find(&entries, "l:small").value,
        list(&["a", "1", "bb", "-7"])
    );
    let multi: Vec<String> = (1..=20)
        .map(|i| format!("entry-{i:02}-{}", "a".repeat(20)))
        .collect();
    let multi: Vec<&str> = multi.iter().map(String::as_str).collect();
    assert_eq!(find(&entries, "l:multi").value, list(&multi));
    let p300 = "P".repeat(300);
    assert_eq!(find(&entries, "l:plain").value, list(&["x", &p300, "y"]));
    for (key, ty) in [
        ("h:small", "hash"),
        ("h:big", "hash"),
        ("set:int", "set"),
        ("set:big", "set"),
        ("z:small", "zset"),
        ("z:big", "zset"),
        ("st", "stream"),
    ] {
        assert_eq!(find(&entries, key).value, Value::Skipped(ty), "{key}");
    }
}

#[test]
fn keys_not_wanted_come_back_skipped_and_the_rest_still_parses() {
    let entries = parse_all(FIXTURE, |k| k.starts_with(b"l:small") || k == b"s:short").unwrap();
    assert_eq!(entries.len(), 15);
    assert_eq!(find(&entries, "s:big").value, Value::Skipped("string"));
    assert_eq!(find(&entries, "l:multi").value, Value::Skipped("list"));
    assert_eq!(find(&entries, "l:plain").value, Value::Skipped("list"));
    assert_eq!(
        find(&entries, "l:small").value,
        list(&["a", "1", "bb", "-7"])
    );
    assert_eq!(find(&entries, "s:short").value, string("hello"));
}

#[test]
fn the_parser_stops_after_the_checksum_and_keeps_the_aux_fields() {
    let mut bytes = FIXTURE.to_vec();
    bytes.extend(b"*1\r\n$4\r\nPING\r\n");
    let mut p = Parser::new(&bytes[..]).unwrap();
    assert_eq!(p.version(), 10);
    while p.next(&mut |_, _| true).unwrap().is_some() {}
    assert!(p.next(&mut |_, _| true).unwrap().is_none());
    assert_eq!(p.position(), FIXTURE.len() as u64);
    assert!(p
        .aux()
        .iter()
        .any(|(k, v)| k == "redis-ver" && v == "7.0.15"));
    assert_eq!(p.into_inner(), b"*1\r\n$4\r\nPING\r\n");
}

#[test]
fn a_flipped_byte_fails_the_checksum() {
    let mut bytes = FIXTURE.to_vec();
    let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
    bytes[at] = b'j';
    let e = parse_all(&bytes, |_| true).unwrap_err();
    assert_eq!(e.kind(), RdbErrorKind::Corrupt);
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    // A checksum of 0 means "not computed" (rdbchecksum no).
    let n = bytes.len();
    bytes[n - 8..].fill(0);
    assert_eq!(parse_all(&bytes, |_| true).unwrap().len(), 15);
}

#[test]
fn every_truncation_is_an_error() {
    for cut in 0..FIXTURE.len() {
        let e = parse_all(&FIXTURE[..cut], |_| true).unwrap_err();
        assert_eq!(e.kind(), RdbErrorKind::Truncated, "cut at {cut}: {e}");
    }
}
