//! The values of an RDB, by type byte (`rdb.h`): strings and lists read into a [`Value`], every
//! other type (and any value not wanted) skipped byte-exactly without being held in memory;
//! module payloads skipped through their opcodes. Hashes with field expiry (RDB 12: types 22
//! and 23 of the 7.4 release candidates, 24 and 25 since) are skipped like other hashes.

use std::io::Read;

use bytes::Bytes;

use super::input::{Input, Length};
use super::packed::{self, PackedError};
use super::rdb::{RdbError, RdbErrorKind, Value};

/// Most list elements reserved ahead of reading them (a count is only a claim until read).
const MAX_RESERVED_ELEMENTS: u64 = 1024;

/// The name of type `ty` (`TYPE` command's answer), `None` for an unknown type byte.
pub(crate) fn type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        0 => "string",
        1 | 10 | 14 | 18 => "list",
        2 | 11 | 20 => "set",
        3 | 5 | 12 | 17 => "zset",
        4 | 9 | 13 | 16 | 22..=25 => "hash",
        15 | 19 | 21 => "stream",
        6 | 7 => "module",
        _ => return None,
    })
}

/// Refuses a type byte this parser cannot read past, before its key is read.
pub(crate) fn check_type<R: Read>(input: &Input<R>, ty: u8) -> Result<(), RdbError> {
    match ty {
        6 => Err(input.err(
            RdbErrorKind::Unsupported,
            "a module value in the pre-release format (type 6), which cannot be skipped without \
             its module",
        )),
        _ if type_name(ty).is_none() => {
            Err(input.corrupt(format!("unknown value type or opcode 0x{ty:02x} ({ty})")))
        }
        _ => Ok(()),
    }
}

/// The value of type `ty`: read when `want` and a string or list, skipped otherwise.
pub(crate) fn read<R: Read>(input: &mut Input<R>, ty: u8, want: bool) -> Result<Value, RdbError> {
    check_type(input, ty)?;
    let name = type_name(ty).expect("checked");
    if want {
        match ty {
            0 => return Ok(Value::String(input.string()?)),
            1 => return linked_list(input).map(Value::List),
            10 => {
                let at = input.position();
                let blob = input.string()?;
                return packed_at(at, packed::ziplist(&blob)).map(Value::List);
            }
            14 | 18 => return quicklist(input, ty == 18).map(Value::List),
            _ => {}
        }
    }
    skip(input, ty)?;
    Ok(Value::Skipped(name))
}

/// A packed blob's error at the blob's offset `at` in the RDB.
fn packed_at(at: u64, r: Result<Vec<Bytes>, PackedError>) -> Result<Vec<Bytes>, RdbError> {
    r.map_err(|e| RdbError::new(RdbErrorKind::Corrupt, at, format!("in a list node: {e}")))
}

/// A count of items: a length, capped for reserving.
fn reserve(n: u64) -> usize {
    n.min(MAX_RESERVED_ELEMENTS) as usize
}

fn linked_list<R: Read>(input: &mut Input<R>) -> Result<Vec<Bytes>, RdbError> {
    let n = input.len()?;
    let mut out = Vec::with_capacity(reserve(n));
    for _ in 0..n {
        out.push(input.string()?);
    }
    Ok(out)
}

/// A quicklist: nodes of ziplists (type 14), or of listpacks or single plain elements, each
/// with its container (type 18); compressed nodes are LZF strings.
fn quicklist<R: Read>(input: &mut Input<R>, v2: bool) -> Result<Vec<Bytes>, RdbError> {
    let nodes = input.len()?;
    let mut out = Vec::with_capacity(reserve(nodes));
    for _ in 0..nodes {
        let container = if v2 { input.len()? } else { 2 };
        let at = input.position();
        let blob = input.string()?;
        match (container, v2) {
            (1, true) => out.push(blob),
            (2, true) => out.extend(packed_at(at, packed::listpack(&blob))?),
            (2, false) => out.extend(packed_at(at, packed::ziplist(&blob))?),
            (c, _) => return Err(input.corrupt(format!("unknown quicklist container {c}"))),
        }
    }
    Ok(out)
}

/// Skips a value of type `ty`.
fn skip<R: Read>(input: &mut Input<R>, ty: u8) -> Result<(), RdbError> {
    match ty {
        0 | 9..=13 | 16 | 17 | 20 | 23 => input.skip_string(),
        1 | 2 => strings(input, 1),
        4 => strings(input, 2),
        3 => {
            for _ in 0..input.len()? {
                input.skip_string()?;
                let len = input.u8()?;
                if len < 253 {
                    input.skip(u64::from(len))?;
                }
            }
            Ok(())
        }
        5 => {
            for _ in 0..input.len()? {
                input.skip_string()?;
                input.skip(8)?;
            }
            Ok(())
        }
        14 => strings(input, 1),
        18 => {
            for _ in 0..input.len()? {
                input.len()?;
                input.skip_string()?;
            }
            Ok(())
        }
        15 | 19 | 21 => skip_stream(input, ty),
        22 => hash_with_ttls(input),
        24 => {
            input.skip(8)?; // the earliest field expiry, Unix ms
            hash_with_ttls(input)
        }
        25 => {
            input.skip(8)?; // the earliest field expiry, Unix ms
            input.skip_string() // listpack of (field, value, expiry or 0) triples
        }
        7 => {
            input.len()?; // module id
            skip_module_value(input)
        }
        _ => unreachable!("check_type refused type {ty}"),
    }
}

/// Skips a count of items of `per_item` strings each.
fn strings<R: Read>(input: &mut Input<R>, per_item: u32) -> Result<(), RdbError> {
    for _ in 0..input.len()? {
        for _ in 0..per_item {
            input.skip_string()?;
        }
    }
    Ok(())
}

/// Skips a hash table with field expiry (types 22 and 24): a count, then per field its expiry
/// as a length (0: none; absolute in 22, relative to the earliest plus 1 in 24), name, value.
fn hash_with_ttls<R: Read>(input: &mut Input<R>) -> Result<(), RdbError> {
    for _ in 0..input.len()? {
        input.len()?;
        input.skip_string()?;
        input.skip_string()?;
    }
    Ok(())
}

/// Skips `n` lengths.
fn lens<R: Read>(input: &mut Input<R>, n: u32) -> Result<(), RdbError> {
    for _ in 0..n {
        input.len()?;
    }
    Ok(())
}

/// A stream: its listpacks, its counters and ids, then each consumer group with its pending
/// entries and its consumers (type 19 adds ids and counters, 21 consumers' active time).
fn skip_stream<R: Read>(input: &mut Input<R>, ty: u8) -> Result<(), RdbError> {
    strings(input, 2)?; // (master id, listpack) per node
    lens(input, 3)?; // length, last id (ms, seq)
    if ty >= 19 {
        lens(input, 5)?; // first id, max deleted id, entries added
    }
    for _ in 0..input.len()? {
        input.skip_string()?; // group name
        lens(input, if ty >= 19 { 3 } else { 2 })?; // last delivered id (+ entries read)
        for _ in 0..input.len()? {
            input.skip(16 + 8)?; // entry id, delivery time
            input.len()?; // delivery count
        }
        for _ in 0..input.len()? {
            input.skip_string()?; // consumer name
            input.skip(if ty >= 21 { 16 } else { 8 })?; // seen time (+ active time)
            for _ in 0..input.len()? {
                input.skip(16)?; // entry id of its pending entry
            }
        }
    }
    Ok(())
}

/// Module opcodes (`RDB_MODULE_OPCODE_*`).
const MODULE_EOF: u64 = 0;
const MODULE_SINT: u64 = 1;
const MODULE_UINT: u64 = 2;
const MODULE_FLOAT: u64 = 3;
const MODULE_DOUBLE: u64 = 4;
const MODULE_STRING: u64 = 5;

/// Skips a module value saved with opcodes, up to its EOF opcode.
fn skip_module_value<R: Read>(input: &mut Input<R>) -> Result<(), RdbError> {
    loop {
        match input.len()? {
            MODULE_EOF => return Ok(()),
            MODULE_SINT | MODULE_UINT => {
                input.len()?;
            }
            MODULE_FLOAT => input.skip(4)?,
            MODULE_DOUBLE => input.skip(8)?,
            MODULE_STRING => input.skip_string()?,
            other => return Err(input.corrupt(format!("unknown module opcode {other}"))),
        }
    }
}

/// Skips a module's AUX data: module id, "when" (an unsigned opcode and its value), then
/// opcode-encoded values.
pub(crate) fn skip_module_aux<R: Read>(input: &mut Input<R>) -> Result<(), RdbError> {
    input.len()?;
    let when_opcode = input.len()?;
    if when_opcode != MODULE_UINT {
        return Err(input.corrupt(format!(
            "module AUX data with 'when' opcode {when_opcode}, expected {MODULE_UINT}"
        )));
    }
    input.len()?;
    skip_module_value(input)
}

/// A string of at most `max` bytes (as stored, or decompressed), `None` (skipped) when longer.
pub(crate) fn small_string<R: Read>(
    input: &mut Input<R>,
    max: u64,
) -> Result<Option<Bytes>, RdbError> {
    let n = match input.length()? {
        Length::Len(n) => n,
        Length::Int(size) => return input.int_string(size).map(Some),
        Length::Lzf => {
            let (clen, len) = (input.len()?, input.len()?);
            if len > max {
                input.skip(clen)?;
                return Ok(None);
            }
            return input.lzf_string(clen, len).map(Some);
        }
    };
    if n > max {
        input.skip(n)?;
        return Ok(None);
    }
    Ok(Some(input.bytes(n)?.into()))
}
