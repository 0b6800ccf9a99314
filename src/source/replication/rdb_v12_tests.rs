//! The parser on hand-built RDB version 12 (Redis 7.4 and 8.0), which the Redis 7.0 here cannot
//! write: hashes with field expiry in both encodings (and the two layouts of the 7.4 release
//! candidates), the slot-info opcode of a cluster node, DUMP payloads of version 12. The bytes
//! follow Redis's writer (`rdbSaveKeyValuePair`, `rdbSaveObject`, `rdbSaveDb` in `rdb.c`).

use bytes::Bytes;

use super::built_tests::{len, rdb, s, with_after};
use super::tests::{list, parse_all, string};
use super::{parse_dump, Parser, RdbErrorKind, Value};
use crate::source::replication::crc64;
use crate::source::replication::packed::tests::build_listpack;

/// The hand-built RDB 12 of [`full_rdb`], kept as a seed of the fuzz target `rdb`.
const SEED: &[u8] = include_bytes!("../../../fuzz/seeds/rdb/hand-built-v12.rdb");

/// Earliest field expiry of the hashes below (Unix ms, 2026-01-01).
const MIN_EXPIRE: u64 = 1_767_225_600_000;

/// A listpack string entry (shorter than 64 bytes).
fn lp_str(b: &[u8]) -> Vec<u8> {
    [vec![0x80 | b.len() as u8], b.to_vec()].concat()
}

/// A listpack 64-bit integer entry.
fn lp_i64(v: i64) -> Vec<u8> {
    [vec![0xf4], v.to_le_bytes().to_vec()].concat()
}

/// The fields of a hash with expiry, as the writer saves a hash table: count, then per field
/// its expiry (`ttl`), name, value. An integer-like name ("123") is saved integer-encoded.
fn table(ttls: [u64; 3]) -> Vec<u8> {
    [
        len(3),
        len(ttls[0]),
        s(b"plain"),
        s(b"kept"),
        len(ttls[1]),
        vec![0xc0, 123],
        s(b"soon"),
        len(ttls[2]),
        s(b"later"),
        s(&[b'v'; 100]),
    ]
    .concat()
}

/// A listpack of (field, value, expiry or 0) triples, as a hash in `listpackex` encoding.
fn listpack_ex() -> Vec<u8> {
    build_listpack(&[
        lp_str(b"plain"),
        lp_str(b"kept"),
        vec![0], // no expiry
        lp_str(b"soon"),
        vec![7], // a 7-bit integer value
        lp_i64(MIN_EXPIRE as i64),
        lp_str(b"later"),
        lp_str(b"x"),
        lp_i64(MIN_EXPIRE as i64 + 5_000),
    ])
}

/// The value bytes of each hash type with field expiry.
fn hashes() -> [(u8, Vec<u8>); 4] {
    let min = MIN_EXPIRE.to_le_bytes().to_vec();
    [
        // 7.4 release candidates: absolute expiries, no earliest expiry first.
        (22, table([0, MIN_EXPIRE, MIN_EXPIRE + 5_000])),
        (23, s(&listpack_ex())),
        // Since 7.4.0: the earliest expiry first, then each expiry relative to it, plus 1.
        (24, [min.clone(), table([0, 1, 5_001])].concat()),
        (25, [min, s(&listpack_ex())].concat()),
    ]
}

/// The value of key "k" in an RDB 12 of `body`, the key "after" checked to follow it.
fn value_of(body: &[u8], want: bool) -> Value {
    let entries = parse_all(&rdb(12, body), |k| want || k == b"after").unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].value, string("ok"));
    entries[0].value.clone()
}

/// An RDB 12 as a cluster node with every kind of key writes it: AUX fields, database 0 with
/// its size hint, slot info before each slot's keys, strings, a list, the four hash types.
pub(super) fn full_rdb() -> Vec<u8> {
    let quick = [
        len(1),
        len(2),
        s(&build_listpack(&[lp_str(b"e1"), vec![2]])),
    ]
    .concat();
    let mut body = [
        &[0xfa][..],
        &s(b"redis-ver"),
        &s(b"7.4.1"),
        &[0xfa],
        &s(b"aof-base"),
        &[0xc0, 0],
        &[0xfe],
        &len(0),
        &[0xfb],
        &len(7),
        &len(1),
        &[0xf4],
        &len(866),
        &len(2),
        &len(1),
        &[0xfc],
        &(MIN_EXPIRE as i64).to_le_bytes(),
        &[0],
        &s(b"alert:1"),
        &s(b"boom"),
        &[18],
        &s(b"trade_execution:1"),
        &quick,
        &[0xf4],
        &len(12539),
        &len(5),
        &len(0),
    ]
    .concat();
    for (ty, value) in hashes() {
        body.extend([vec![ty], s(format!("h{ty}").as_bytes()), value].concat());
    }
    body.extend([vec![0], s(b"alert:2"), vec![0xc1, 0x39, 0x30]].concat());
    rdb(12, &body)
}

#[test]
fn hashes_with_field_expiry_are_skipped_exactly() {
    for (ty, value) in hashes() {
        for want in [true, false] {
            assert_eq!(
                value_of(&with_after(ty, &value), want),
                Value::Skipped("hash"),
                "type {ty}"
            );
        }
    }
}

#[test]
fn a_hash_with_field_expiry_cut_anywhere_is_truncated() {
    for (ty, value) in hashes() {
        let whole = rdb(12, &with_after(ty, &value));
        // Header (9 bytes), type byte, key "k" (2 bytes): the value starts at byte 12.
        for cut in 12..12 + value.len() {
            let e = parse_all(&whole[..cut], |_| true).unwrap_err();
            assert_eq!(e.kind(), RdbErrorKind::Truncated, "type {ty} cut at {cut}");
        }
    }
}

#[test]
fn slot_info_is_read_between_keys() {
    let body = [
        &[0xf4][..],
        &len(16383),
        &len(1),
        &len(0),
        &[0],
        &s(b"a"),
        &s(b"1"),
        &[0xf4],
        &[0x80],
        &3u32.to_be_bytes(), // a 32-bit length is a length too
        &len(1_000_000),
        &len(0),
    ]
    .concat();
    let entries = parse_all(&rdb(12, &[body, with_after(0, &s(b"v"))].concat()), |_| {
        true
    })
    .unwrap();
    let keys: Vec<_> = entries.iter().map(|e| (&e.key[..], &e.value)).collect();
    assert_eq!(
        keys,
        [
            (&b"a"[..], &string("1")),
            (b"k", &string("v")),
            (b"after", &string("ok"))
        ]
    );
    // The opcode holds three lengths: a string encoding is an error.
    let bad = [&[0xf4][..], &len(1), &[0xc0, 1], &len(0)].concat();
    let e = parse_all(&rdb(12, &bad), |_| true).unwrap_err();
    assert!(e.to_string().contains("where a length belongs"), "{e}");
}

#[test]
fn a_full_rdb_12_gives_its_strings_and_lists() {
    let bytes = full_rdb();
    assert_eq!(bytes, SEED, "the fuzz seed differs from full_rdb()");
    let mut p = Parser::new(&bytes[..]).unwrap();
    assert_eq!(p.version(), 12);
    let mut got = Vec::new();
    let mut want = |_, k: &[u8]| k.starts_with(b"alert:") || k.starts_with(b"trade_");
    while let Some(e) = p.next(&mut want).unwrap() {
        got.push((e.key, e.expire_at_ms, e.value));
    }
    assert_eq!(p.position(), bytes.len() as u64);
    let b = |x: &str| Bytes::copy_from_slice(x.as_bytes());
    let hash = |k: &str| (b(k), None, Value::Skipped("hash"));
    assert_eq!(
        got,
        [
            (b("alert:1"), Some(MIN_EXPIRE as i64), string("boom")),
            (b("trade_execution:1"), None, list(&["e1", "2"])),
            hash("h22"),
            hash("h23"),
            hash("h24"),
            hash("h25"),
            (b("alert:2"), None, string("12345")),
        ]
    );
    let redis_ver = p.aux().iter().find(|(k, _)| k == "redis-ver").unwrap();
    assert_eq!(redis_ver.1, "7.4.1");
}

#[test]
fn dump_payloads_of_version_12() {
    let payload = |body: &[u8], version: u16| {
        let mut p = [body, &version.to_le_bytes()].concat();
        let crc = crc64::update(0, &p);
        p.extend(crc.to_le_bytes());
        p
    };
    for (ty, value) in hashes() {
        let body = [vec![ty], value].concat();
        assert_eq!(
            parse_dump(&payload(&body, 12)).unwrap(),
            Value::Skipped("hash"),
            "type {ty}"
        );
    }
    let e = parse_dump(&payload(&[&[0][..], &s(b"v")].concat(), 13)).unwrap_err();
    assert_eq!(e.kind(), RdbErrorKind::Unsupported);
    assert!(e.to_string().contains("Redis 2.6 to 8.0"), "{e}");
}
