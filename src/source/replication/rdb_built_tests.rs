//! The parser on hand-built RDBs, for what the Redis 7.0 here cannot write: other versions,
//! every string encoding and opcode, older and newer list and value types, module payloads,
//! refused formats, hostile lengths, DUMP payloads.

use bytes::Bytes;

use super::tests::{list, parse_all, string};
use super::{parse_dump, Parser, RdbErrorKind, Value};
use crate::source::replication::crc64;
use crate::source::replication::packed::tests::{build_listpack, build_ziplist};

/// A length field.
pub(super) fn len(n: u64) -> Vec<u8> {
    match n {
        0..=63 => vec![n as u8],
        64..=16383 => vec![0x40 | (n >> 8) as u8, n as u8],
        16384..=0xffff_ffff => [&[0x80][..], &(n as u32).to_be_bytes()].concat(),
        _ => [&[0x81][..], &n.to_be_bytes()].concat(),
    }
}

/// A plain string.
pub(super) fn s(b: &[u8]) -> Vec<u8> {
    [len(b.len() as u64), b.to_vec()].concat()
}

/// An RDB of `version` with `body` between the header and the EOF opcode, checksummed.
pub(super) fn rdb(version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = format!("REDIS{version:04}").into_bytes();
    out.extend(body);
    out.push(0xff);
    let crc = crc64::update(0, &out);
    out.extend(crc.to_le_bytes());
    out
}

/// One key `k` of type `ty` with `value` bytes, then the string key "after" = "ok".
pub(super) fn with_after(ty: u8, value: &[u8]) -> Vec<u8> {
    [
        vec![ty],
        s(b"k"),
        value.to_vec(),
        vec![0],
        s(b"after"),
        s(b"ok"),
    ]
    .concat()
}

/// The value of key "k" in `body`, the key "after" checked to be read right after it.
fn value_of(body: &[u8], want: bool) -> Value {
    let entries = parse_all(&rdb(11, body), |k| want || k == b"after").unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].value, string("ok"));
    entries[0].value.clone()
}

#[test]
fn versions_outside_6_to_12_are_refused_by_number() {
    for v in [5, 13, 99] {
        let e = Parser::new(&rdb(v, &[])[..]).err().unwrap();
        assert_eq!(e.kind(), RdbErrorKind::Unsupported);
        assert!(
            e.to_string()
                .contains(&format!("RDB version {v} is not supported")),
            "{e}"
        );
    }
    assert!(Parser::new(&b"RADIS0010"[..]).is_err());
    assert!(Parser::new(&rdb(6, &[])[..]).is_ok());
    assert!(Parser::new(&rdb(12, &[])[..]).is_ok());
}

#[test]
fn string_encodings() {
    let int = |b: &[u8]| value_of(&with_after(0, b), true);
    assert_eq!(int(&[0xc0, 0x85]), string("-123"));
    assert_eq!(int(&[0xc1, 0x18, 0xfc]), string("-1000"));
    assert_eq!(int(&[0xc2, 0x15, 0xcd, 0x5b, 0x07]), string("123456789"));
    assert_eq!(int(&[0xc2, 0xff, 0xff, 0xff, 0x7f]), string("2147483647"));
    let lzf = [
        &[0xc3][..],
        &len(6),
        &len(8),
        &[2, b'a', b'b', b'c', 0x60, 2],
    ]
    .concat();
    assert_eq!(int(&lzf), string("abcabcab"));
    let big = vec![b'x'; 20_000];
    assert_eq!(int(&s(&big)), Value::String(big.clone().into()));
    let as64 = [&[0x81][..], &20_000u64.to_be_bytes(), &big].concat();
    assert_eq!(int(&as64), Value::String(big.into()));
    // Skipped, an LZF string is not decompressed: a bad one goes unnoticed.
    let bad_lzf = [&[0xc3][..], &len(2), &len(8), &[7, b'a']].concat();
    assert_eq!(
        value_of(&with_after(0, &bad_lzf), false),
        Value::Skipped("string")
    );
    let e = parse_all(&rdb(11, &with_after(0, &bad_lzf)), |_| true).unwrap_err();
    assert!(e.to_string().contains("LZF"), "{e}");
}

#[test]
fn opcodes_between_keys() {
    let body = [
        &[0xfa][..],
        &s(b"repl-id"),
        &s(b"abc"),
        &[0xfa],
        &s(b"repl-offset"),
        &[0xc1, 0x39, 0x30],
        &[0xfe],
        &len(3),
        &[0xfb],
        &len(10),
        &len(2),
        &[0xf7],
        &len(12345),
        &len(2),
        &len(2), // module aux: id, when opcode, when
        &len(1),
        &len(9),
        &len(3),
        &[0; 4],
        &len(4),
        &[0; 8],
        &len(5),
        &s(b"zz"),
        &len(0),
        &[0xf5],
        &s(b"#!lua name=x\n"),
        &[0xfd],
        &100i32.to_le_bytes(),
        &[0xf9, 7, 0],
        &s(b"a"),
        &s(b"1"),
        &[0xf8],
        &len(500),
        &[0xfc],
        &(-5i64).to_le_bytes(),
        &[0],
        &s(b"b"),
        &s(b"2"),
        &[0],
        &s(b"c"),
        &s(b"3"),
    ]
    .concat();
    let bytes = rdb(9, &body);
    let mut p = Parser::new(&bytes[..]).unwrap();
    let mut got = Vec::new();
    while let Some(e) = p.next(&mut |_, _| true).unwrap() {
        got.push((e.db, e.key, e.expire_at_ms, e.value));
    }
    let b = |x: &str| Bytes::copy_from_slice(x.as_bytes());
    assert_eq!(
        got,
        [
            (3, b("a"), Some(100_000), string("1")),
            (3, b("b"), Some(-5), string("2")),
            (3, b("c"), None, string("3")),
        ]
    );
    assert_eq!(
        p.aux(),
        [(b("repl-id"), b("abc")), (b("repl-offset"), b("12345"))]
    );
}

#[test]
fn refused_with_a_clear_error() {
    let cases: [(Vec<u8>, &str); 4] = [
        ([&[0xf6][..], &s(b"f")].concat(), "opcode 0xf6"),
        (with_after(6, &len(1)), "type 6"),
        (
            with_after(26, &len(1)),
            "unknown value type or opcode 0x1a (26)",
        ),
        (
            [&[0xf7][..], &len(1), &len(1), &len(2), &len(0)].concat(),
            "'when' opcode 1",
        ),
    ];
    for (body, says) in cases {
        let e = parse_all(&rdb(11, &body), |_| true).unwrap_err();
        assert!(e.to_string().contains(says), "{e} lacks {says}");
    }
}

#[test]
fn lists_of_every_encoding() {
    let items = ["one", "2", "three"];
    let linked: Vec<u8> = [len(3), s(b"one"), vec![0xc0, 2], s(b"three")].concat();
    let zl = build_ziplist(&[
        [vec![3], b"one".to_vec()].concat(),
        vec![0xf3],
        [vec![5], b"three".to_vec()].concat(),
    ]);
    let lp = build_listpack(&[
        [vec![0x83], b"one".to_vec()].concat(),
        vec![2],
        [vec![0x85], b"three".to_vec()].concat(),
    ]);
    // A compressed node: the literal-only LZF form of the blob.
    let lzf_of = |blob: &[u8]| {
        let mut c = Vec::new();
        for chunk in blob.chunks(32) {
            c.push(chunk.len() as u8 - 1);
            c.extend(chunk);
        }
        [
            &[0xc3][..],
            &len(c.len() as u64),
            &len(blob.len() as u64),
            &c,
        ]
        .concat()
    };
    let quick_zl = [len(2), s(&zl), lzf_of(&zl)].concat();
    let quick_lp = [
        len(3),
        len(2),
        s(&lp),
        len(1),
        s(b"plain"),
        len(2),
        lzf_of(&lp),
    ]
    .concat();
    assert_eq!(value_of(&with_after(1, &linked), true), list(&items));
    assert_eq!(value_of(&with_after(10, &s(&zl)), true), list(&items));
    let twice = ["one", "2", "three", "one", "2", "three"];
    assert_eq!(value_of(&with_after(14, &quick_zl), true), list(&twice));
    let with_plain = ["one", "2", "three", "plain", "one", "2", "three"];
    assert_eq!(
        value_of(&with_after(18, &quick_lp), true),
        list(&with_plain)
    );
    for (ty, v) in [
        (1, &linked),
        (10, &s(&zl)),
        (14, &quick_zl),
        (18, &quick_lp),
    ] {
        assert_eq!(value_of(&with_after(ty, v), false), Value::Skipped("list"));
    }
    let bad_container = [len(1), len(3), s(b"x")].concat();
    let e = parse_all(&rdb(11, &with_after(18, &bad_container)), |_| true).unwrap_err();
    assert!(
        e.to_string().contains("unknown quicklist container 3"),
        "{e}"
    );
    let bad_node = [len(1), len(2), s(b"not a listpack")].concat();
    let e = parse_all(&rdb(11, &with_after(18, &bad_node)), |_| true).unwrap_err();
    assert!(e.to_string().contains("in a list node"), "{e}");
}

#[test]
fn every_other_type_is_skipped_exactly() {
    let id = |ms: u8| [[0u8; 7].as_slice(), &[ms], &[0; 8]].concat();
    let stream = |ty: u8| {
        let mut v = [
            len(1),
            s(&id(1)),
            s(b"listpack-bytes"),
            len(2),
            len(2),
            len(0),
        ]
        .concat();
        if ty >= 19 {
            v.extend([len(1), len(0), len(0), len(0), len(2)].concat());
        }
        v.extend([len(1), s(b"group"), len(2), len(0)].concat());
        if ty >= 19 {
            v.extend(len(2));
        }
        v.extend([len(1), id(2), vec![0; 8], len(1)].concat()); // one pending entry
        v.extend([len(1), s(b"consumer"), vec![0; 8]].concat());
        if ty >= 21 {
            v.extend([0; 8]);
        }
        v.extend([len(1), id(2)].concat());
        v
    };
    let two = [len(2), s(b"a"), s(b"b")].concat();
    let cases: Vec<(u8, Vec<u8>, &str)> = vec![
        (2, two.clone(), "set"),
        (4, [len(1), s(b"f"), s(b"v")].concat(), "hash"),
        (
            3,
            [
                len(3),
                s(b"a"),
                vec![3],
                b"1.5".to_vec(),
                s(b"b"),
                vec![253],
                s(b"c"),
                vec![255],
            ]
            .concat(),
            "zset",
        ),
        (
            5,
            [len(1), s(b"a"), 1.5f64.to_le_bytes().to_vec()].concat(),
            "zset",
        ),
        (
            7,
            [
                len(99),
                len(2),
                len(7),
                len(5),
                s(b"data"),
                len(4),
                vec![0; 8],
                len(0),
            ]
            .concat(),
            "module",
        ),
    ];
    let blobs: [(u8, &str); 8] = [
        (9, "hash"),
        (11, "set"),
        (12, "zset"),
        (13, "hash"),
        (16, "hash"),
        (17, "zset"),
        (20, "set"),
        (0, "string"),
    ];
    let mut all = cases;
    for (ty, name) in blobs {
        all.push((ty, s(b"some packed bytes"), name));
    }
    for ty in [15, 19, 21] {
        all.push((ty, stream(ty), "stream"));
    }
    for (ty, value, name) in all {
        for want in [ty != 0, false] {
            assert_eq!(
                value_of(&with_after(ty, &value), want),
                Value::Skipped(name),
                "type {ty}"
            );
        }
    }
}

#[test]
fn hostile_lengths_are_errors_not_allocations() {
    let huge = [&[0x81][..], &(1u64 << 62).to_be_bytes()].concat();
    let cases = [
        (0, huge.clone()),                                    // a string of 4 EiB
        (0, [&[0xc3][..], &len(4), &huge, b"abcd"].concat()), // decompressing to 4 EiB
        (1, [huge.clone(), s(b"a")].concat()),                // a list of 2^62 elements
        (18, [huge.clone(), len(1), s(b"a")].concat()),       // 2^62 quicklist nodes
        (2, [huge.clone(), s(b"a")].concat()),                // skipping 2^62 members
    ];
    for (i, (ty, value)) in cases.into_iter().enumerate() {
        // Skipped, the LZF string is not decompressed: its 4 bytes are all there is.
        let wants: &[bool] = if i == 1 { &[true] } else { &[true, false] };
        for &want in wants {
            let e = parse_all(&rdb(11, &with_after(ty, &value)), |_| want).unwrap_err();
            assert!(
                matches!(e.kind(), RdbErrorKind::Truncated | RdbErrorKind::Corrupt),
                "type {ty}: {e}"
            );
        }
    }
}

#[test]
fn dump_payloads() {
    let payload = |body: &[u8], version: u16| {
        let mut p = [body, &version.to_le_bytes()].concat();
        let crc = crc64::update(0, &p);
        p.extend(crc.to_le_bytes());
        p
    };
    assert_eq!(
        parse_dump(&payload(&[&[0][..], &s(b"v")].concat(), 10)).unwrap(),
        string("v")
    );
    let lp = build_listpack(&[vec![1], vec![0x81, b'x']]);
    let quick = [&[18][..], &len(1), &len(2), &s(&lp)].concat();
    assert_eq!(parse_dump(&payload(&quick, 11)).unwrap(), list(&["1", "x"]));
    let hash = [&[4][..], &len(1), &s(b"f"), &s(b"v")].concat();
    assert_eq!(
        parse_dump(&payload(&hash, 9)).unwrap(),
        Value::Skipped("hash")
    );
    let mut bad = payload(&[&[0][..], &s(b"v")].concat(), 10);
    bad[2] = b'w';
    assert!(parse_dump(&bad)
        .unwrap_err()
        .to_string()
        .contains("checksum mismatch"));
    let e = parse_dump(&payload(&[&[0][..], &s(b"v")].concat(), 13)).unwrap_err();
    assert!(e.to_string().contains("RDB version 13"), "{e}");
    let e = parse_dump(&payload(&[&[0][..], &s(b"v"), b"x"].concat(), 10)).unwrap_err();
    assert!(e.to_string().contains("bytes after the value"), "{e}");
    assert!(parse_dump(b"short").is_err());
}
