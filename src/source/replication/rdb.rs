//! A streaming parser of Redis RDB files (versions 6 to 12: Redis 2.6 to 8.0) and of DUMP /
//! RESTORE payloads. It yields each key with its database and expiry; strings and lists come
//! with their content, every other type is skipped exactly, without being held in memory.
//!
//! It reads from any [`std::io::Read`] exactly the bytes of the RDB, up to the checksum after
//! the EOF opcode and never further: on a replication link the command stream follows on the
//! same connection. Each read goes to the reader, so give it a buffered one (what the buffer
//! holds beyond the RDB stays in it, and [`Parser::into_inner`] hands it back).

use std::io::Read;

use bytes::Bytes;

use super::input::Input;
use super::values;

/// Oldest RDB version read (Redis 2.6 and 3.0).
pub(crate) const MIN_VERSION: u32 = 6;
/// Newest RDB version read (Redis 7.4 and 8.0: hashes with field expiry, slot info).
pub(crate) const MAX_VERSION: u32 = 12;
/// The Redis releases that write [`MIN_VERSION`] to [`MAX_VERSION`], for error messages.
pub(crate) const REDIS_RELEASES: &str = "Redis 2.6 to 8.0";

/// A value of the snapshot, as far as Spillway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string (LZF-decompressed, integers rendered as their decimal text like Redis does).
    String(Bytes),
    /// A list's elements in order (quicklist of listpacks or ziplists, plain nodes, old linked
    /// lists, ziplist lists).
    List(Vec<Bytes>),
    /// Any other type, or a key not wanted, skipped without being materialized: its type name
    /// ("string", "list", "hash", "set", "zset", "stream", "module").
    Skipped(&'static str),
}

/// One key of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Database number (`SELECTDB`).
    pub db: u64,
    /// The key.
    pub key: Bytes,
    /// Absolute expiry time in Unix milliseconds, when the key has one.
    pub expire_at_ms: Option<i64>,
    /// The value.
    pub value: Value,
}

/// What kind of failure an [`RdbError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RdbErrorKind {
    /// The reader failed (the connection broke).
    Io,
    /// The data ended inside the RDB.
    Truncated,
    /// The bytes are not a valid RDB (bad encoding, length past the data, checksum mismatch).
    Corrupt,
    /// Valid but not supported: an RDB version, a value type or opcode this parser refuses.
    Unsupported,
}

/// Why an RDB could not be read: what, at which byte offset (counted from the header, or from
/// the start of a DUMP payload).
#[derive(Debug, thiserror::Error)]
#[error("RDB byte {offset}: {what}")]
pub struct RdbError {
    kind: RdbErrorKind,
    offset: u64,
    what: String,
    #[source]
    io: Option<std::io::Error>,
}

impl RdbError {
    pub(crate) fn new(kind: RdbErrorKind, offset: u64, what: String) -> Self {
        RdbError {
            kind,
            offset,
            what,
            io: None,
        }
    }

    pub(crate) fn io(offset: u64, e: std::io::Error) -> Self {
        RdbError {
            kind: RdbErrorKind::Io,
            offset,
            what: format!("reading failed: {e}"),
            io: Some(e),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> RdbErrorKind {
        self.kind
    }

    /// The byte offset the failure was found at.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Opcodes between keys (`rdb.h`).
mod op {
    pub(super) const SLOT_INFO: u8 = 0xf4;
    pub(super) const FUNCTION2: u8 = 0xf5;
    pub(super) const FUNCTION_PRE_GA: u8 = 0xf6;
    pub(super) const MODULE_AUX: u8 = 0xf7;
    pub(super) const IDLE: u8 = 0xf8;
    pub(super) const FREQ: u8 = 0xf9;
    pub(super) const AUX: u8 = 0xfa;
    pub(super) const RESIZEDB: u8 = 0xfb;
    pub(super) const EXPIRETIME_MS: u8 = 0xfc;
    pub(super) const EXPIRETIME: u8 = 0xfd;
    pub(super) const SELECTDB: u8 = 0xfe;
    pub(super) const EOF: u8 = 0xff;
}

/// AUX fields longer than this are skipped rather than kept.
const MAX_AUX_BYTES: u64 = 4096;
/// AUX fields beyond this many are skipped rather than kept.
const MAX_AUX_FIELDS: usize = 64;

/// A streaming RDB parser over `R`.
pub struct Parser<R: Read> {
    input: Input<R>,
    version: u32,
    db: u64,
    aux: Vec<(Bytes, Bytes)>,
    done: bool,
}

impl<R: Read> Parser<R> {
    /// Reads and checks the header ("REDIS" + 4-digit version, [`MIN_VERSION`] to
    /// [`MAX_VERSION`]).
    pub fn new(r: R) -> Result<Self, RdbError> {
        let mut input = Input::new(r);
        let magic: [u8; 9] = input.array()?;
        if &magic[..5] != b"REDIS" || !magic[5..].iter().all(u8::is_ascii_digit) {
            return Err(RdbError::new(
                RdbErrorKind::Corrupt,
                0,
                "not an RDB: it does not start with REDIS and a 4-digit version".into(),
            ));
        }
        let version: u32 = std::str::from_utf8(&magic[5..])
            .expect("ASCII digits")
            .parse()
            .expect("4 digits");
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(RdbError::new(
                RdbErrorKind::Unsupported,
                5,
                format!(
                    "RDB version {version} is not supported (versions {MIN_VERSION} to \
                     {MAX_VERSION}: {REDIS_RELEASES})"
                ),
            ));
        }
        Ok(Parser {
            input,
            version,
            db: 0,
            aux: Vec::new(),
            done: false,
        })
    }

    /// The RDB version of the header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The AUX fields read so far (`redis-ver`, `repl-id`, `repl-offset`, ...): the first 64,
    /// each name and value of at most 4 KiB.
    pub fn aux(&self) -> &[(Bytes, Bytes)] {
        &self.aux
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.input.position()
    }

    /// The reader back, positioned just after the RDB when [`Parser::next`] returned `None`.
    pub fn into_inner(self) -> R {
        self.input.into_inner()
    }

    /// The next key, or `None` after the EOF opcode (its checksum verified when not zero).
    /// `want(db, key)` is asked before the value is read: when false, the value is skipped (read
    /// and discarded in bounded chunks) and comes back as [`Value::Skipped`] with its type name.
    pub fn next(
        &mut self,
        want: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<Option<Entry>, RdbError> {
        if self.done {
            return Ok(None);
        }
        let mut expire_at_ms = None;
        loop {
            let opcode = self.input.u8()?;
            match opcode {
                op::EOF => {
                    self.eof()?;
                    return Ok(None);
                }
                op::SELECTDB => self.db = self.input.len()?,
                op::RESIZEDB => {
                    self.input.len()?;
                    self.input.len()?;
                }
                // A cluster node's slot, its key count and its count of keys with an expiry.
                op::SLOT_INFO => {
                    self.input.len()?;
                    self.input.len()?;
                    self.input.len()?;
                }
                op::EXPIRETIME_MS => expire_at_ms = Some(self.input.i64_le()?),
                op::EXPIRETIME => {
                    let secs = i32::from_le_bytes(self.input.array()?);
                    expire_at_ms = Some(i64::from(secs) * 1000);
                }
                op::AUX => self.aux_field()?,
                op::FREQ => {
                    self.input.u8()?;
                }
                op::IDLE => {
                    self.input.len()?;
                }
                op::MODULE_AUX => values::skip_module_aux(&mut self.input)?,
                op::FUNCTION2 => self.input.skip_string()?,
                op::FUNCTION_PRE_GA => {
                    return Err(self.unsupported(
                        "a function in the pre-release format of Redis 7.0 release candidates \
                         (opcode 0xf6); save the RDB again with Redis 7.0 or newer",
                    ))
                }
                ty => {
                    values::check_type(&self.input, ty)?;
                    let key = self.input.string()?;
                    let wanted = want(self.db, &key);
                    let value = values::read(&mut self.input, ty, wanted)?;
                    return Ok(Some(Entry {
                        db: self.db,
                        key,
                        expire_at_ms,
                        value,
                    }));
                }
            }
        }
    }

    fn unsupported(&self, what: &str) -> RdbError {
        self.input.err(RdbErrorKind::Unsupported, what)
    }

    fn aux_field(&mut self) -> Result<(), RdbError> {
        let name = values::small_string(&mut self.input, MAX_AUX_BYTES)?;
        let value = values::small_string(&mut self.input, MAX_AUX_BYTES)?;
        if let (Some(name), Some(value), true) = (name, value, self.aux.len() < MAX_AUX_FIELDS) {
            self.aux.push((name, value));
        }
        Ok(())
    }

    /// After the EOF opcode: the 8-byte checksum of everything before it (0: not computed).
    fn eof(&mut self) -> Result<(), RdbError> {
        let computed = self.input.crc();
        let stored = u64::from_le_bytes(self.input.array()?);
        self.done = true;
        if stored != 0 && stored != computed {
            return Err(self.input.corrupt(format!(
                "checksum mismatch: the RDB says {stored:016x}, its bytes give {computed:016x}"
            )));
        }
        Ok(())
    }
}

/// The value of a RESTORE / DUMP payload: type byte, object, 2-byte RDB version, 8-byte CRC-64
/// of everything before it.
pub fn parse_dump(payload: &[u8]) -> Result<Value, RdbError> {
    let corrupt = |offset: usize, what: String| {
        RdbError::new(
            RdbErrorKind::Corrupt,
            offset as u64,
            format!("DUMP payload: {what}"),
        )
    };
    let Some(body_len) = payload.len().checked_sub(10).filter(|&n| n > 0) else {
        return Err(corrupt(0, format!("{} bytes, too short", payload.len())));
    };
    let (body, footer) = payload.split_at(body_len);
    let version = u16::from_le_bytes([footer[0], footer[1]]);
    let stored = u64::from_le_bytes(footer[2..].try_into().expect("8 bytes"));
    let computed = super::crc64::update(0, &payload[..body_len + 2]);
    if stored != computed {
        return Err(corrupt(
            body_len + 2,
            format!(
                "checksum mismatch: the payload says {stored:016x}, its bytes give {computed:016x}"
            ),
        ));
    }
    if u32::from(version) > MAX_VERSION {
        return Err(RdbError::new(
            RdbErrorKind::Unsupported,
            body_len as u64,
            format!(
                "DUMP payload of RDB version {version}, newer than {MAX_VERSION} \
                 ({REDIS_RELEASES})"
            ),
        ));
    }
    let mut input = Input::new(body);
    let ty = input.u8()?;
    let value = values::read(&mut input, ty, true)?;
    if input.position() != body_len as u64 {
        return Err(corrupt(
            input.position() as usize,
            "bytes after the value".into(),
        ));
    }
    Ok(value)
}

#[cfg(test)]
#[path = "rdb_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rdb_built_tests.rs"]
mod built_tests;

#[cfg(test)]
#[path = "rdb_v12_tests.rs"]
mod v12_tests;

#[cfg(test)]
#[path = "rdb_proptests.rs"]
mod proptests;
