//! Property tests: the RDB of a real Redis 7.0 (the unit tests' fixture) and a hand-built RDB 12
//! (hashes with field expiry, slot info) damaged at random
//! (bytes changed, inserted, removed, cut short, checksum disabled so the damage is met by the
//! value readers rather than the final check) and random DUMP payloads never make the parser
//! panic; it returns entries or an error. Where reading every value and skipping every value
//! both succeed, they agree on the keys: skipping consumes exactly the bytes reading does.

use proptest::prelude::*;

use super::tests::FIXTURE;
use super::v12_tests::full_rdb;
use super::{parse_dump, Entry, Parser, RdbError};
use crate::source::replication::crc64;

/// Every entry, each key wanted when `want` says so (by the key's first byte).
fn parse(bytes: &[u8], want: impl Fn(&[u8]) -> bool) -> Result<Vec<Entry>, RdbError> {
    let mut p = Parser::new(bytes)?;
    let mut out = Vec::new();
    while let Some(e) = p.next(&mut |_, k| want(k))? {
        out.push(e);
        assert!(out.len() <= bytes.len(), "more entries than bytes");
    }
    assert!(p.position() <= bytes.len() as u64);
    Ok(out)
}

/// One edit of the fixture's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
    ]
}

fn damaged(base: &[u8], edits: &[Edit], cut: Option<usize>, no_checksum: bool) -> Vec<u8> {
    let mut bytes = base.to_vec();
    if no_checksum {
        let n = bytes.len();
        bytes[n - 8..].fill(0);
    }
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Set(i, b) => {
                if let Some(x) = bytes.get_mut(i % n) {
                    *x = b;
                }
            }
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Remove(i) => {
                if !bytes.is_empty() {
                    bytes.remove(i % n);
                }
            }
        }
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
    bytes
}

/// Parsing `bytes` wanting every key, none, and some never panics; where wanting all and none
/// both succeed, they give the same keys (skipping consumes exactly what reading does).
fn check_damaged(bytes: &[u8], mask: u8) -> Result<(), TestCaseError> {
    let all = parse(bytes, |_| true);
    let none = parse(bytes, |_| false);
    let _ = parse(bytes, |k| k.first().is_some_and(|b| b & mask != 0));
    if let (Ok(all), Ok(none)) = (all, none) {
        let keys = |v: &[Entry]| v.iter().map(|e| (e.db, e.key.clone())).collect::<Vec<_>>();
        prop_assert_eq!(keys(&all), keys(&none));
    }
    Ok(())
}

proptest! {
    // Failures are not persisted to a file: a failing case is printed, and becomes a unit test.
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_rdb_never_panics(
        edits in prop::collection::vec(edit(), 1..6),
        cut in prop::option::of(any::<usize>()),
        no_checksum in any::<bool>(),
        mask in any::<u8>(),
    ) {
        check_damaged(&damaged(FIXTURE, &edits, cut, no_checksum), mask)?;
    }

    #[test]
    fn a_damaged_rdb_12_never_panics(
        edits in prop::collection::vec(edit(), 1..6),
        cut in prop::option::of(any::<usize>()),
        no_checksum in any::<bool>(),
        mask in any::<u8>(),
    ) {
        check_damaged(&damaged(&full_rdb(), &edits, cut, no_checksum), mask)?;
    }

    #[test]
    fn random_dump_payloads_never_panic(
        ty in prop_oneof![0u8..=26, any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..200),
        version in 0u16..14,
    ) {
        let mut payload = [&[ty][..], &body, &version.to_le_bytes()].concat();
        let crc = crc64::update(0, &payload);
        payload.extend(crc.to_le_bytes());
        let _ = parse_dump(&payload);
        // And the same bytes with the checksum left wrong.
        let n = payload.len();
        payload[n - 1] ^= 1;
        prop_assert!(parse_dump(&payload).is_err());
    }
}
