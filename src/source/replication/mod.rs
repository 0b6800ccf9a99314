//! The replication source: Spillway as a Redis replica (PSYNC), reading the RDB snapshot and the
//! command stream.

pub(crate) mod crc64;
pub(crate) mod input;
pub(crate) mod lzf;
pub(crate) mod packed;
pub(crate) mod rdb;
pub(crate) mod values;
