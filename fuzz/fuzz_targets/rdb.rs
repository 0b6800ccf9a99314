//! The RDB parser of the replication source: any bytes as an RDB (keys wanted by their first
//! byte, all of them, none) and as a DUMP payload never panic; where reading and skipping every
//! value both succeed, they give the same keys.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::rdb::{parse_dump, Entry, Parser, RdbError};

fn parse(data: &[u8], want: impl Fn(&[u8]) -> bool) -> Result<Vec<(u64, Vec<u8>)>, RdbError> {
    let mut p = Parser::new(data)?;
    let mut keys = Vec::new();
    while let Some(Entry { db, key, .. }) = p.next(&mut |_, k| want(k))? {
        keys.push((db, key.to_vec()));
    }
    assert!(p.position() <= data.len() as u64);
    Ok(keys)
}

fuzz_target!(|data: &[u8]| {
    let all = parse(data, |_| true);
    let none = parse(data, |_| false);
    let _ = parse(data, |k| k.first().is_some_and(|b| b & 1 == 1));
    if let (Ok(all), Ok(none)) = (&all, &none) {
        assert_eq!(all, none);
    }
    if let Err(e) = parse_dump(data) {
        assert!(!e.to_string().is_empty());
    }
});
