//! The byte reader under the RDB parser: it reads exactly what it is asked for (never ahead, so
//! what follows the RDB on a connection stays in the reader), counts the bytes, keeps the CRC-64
//! of everything read, and reads RDB lengths and strings with their special encodings. Nothing
//! is allocated from a length field alone: buffers grow as the bytes arrive.

use std::io::Read;

use bytes::Bytes;

use super::rdb::{RdbError, RdbErrorKind};
use super::{crc64, lzf};

/// Most bytes buffered at once when skipping, and the first allocation of a string.
const CHUNK: usize = 64 * 1024;

/// A length field: a length, or the encoding of a special string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// A plain length.
    Len(u64),
    /// An integer stored in 1, 2 or 4 bytes (little endian, signed).
    Int(usize),
    /// An LZF-compressed string: compressed length, then decompressed length, then the data.
    Lzf,
}

/// A counting, checksumming reader of RDB bytes.
pub(crate) struct Input<R> {
    r: R,
    pos: u64,
    crc: u64,
    scratch: Vec<u8>,
}

impl<R: Read> Input<R> {
    /// Reads from `r`, at byte 0.
    pub(crate) fn new(r: R) -> Self {
        Input {
            r,
            pos: 0,
            crc: 0,
            scratch: Vec::new(),
        }
    }

    /// Bytes read so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// The CRC-64 of every byte read so far.
    pub(crate) fn crc(&self) -> u64 {
        self.crc
    }

    /// The reader back.
    pub(crate) fn into_inner(self) -> R {
        self.r
    }

    /// An error of `kind` at the current position.
    pub(crate) fn err(&self, kind: RdbErrorKind, what: impl Into<String>) -> RdbError {
        RdbError::new(kind, self.pos, what.into())
    }

    /// A format error at the current position.
    pub(crate) fn corrupt(&self, what: impl Into<String>) -> RdbError {
        self.err(RdbErrorKind::Corrupt, what)
    }

    /// Fills `buf` entirely.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        if let Err(e) = self.r.read_exact(buf) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.err(RdbErrorKind::Truncated, "the data ends early")
            } else {
                RdbError::io(self.pos, e)
            });
        }
        self.pos += buf.len() as u64;
        self.crc = crc64::update(self.crc, buf);
        Ok(())
    }

    /// `N` bytes.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, RdbError> {
        Ok(self.array::<1>()?[0])
    }

    /// Eight bytes, a little-endian signed integer (a time in milliseconds).
    pub(crate) fn i64_le(&mut self) -> Result<i64, RdbError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Reads and discards `n` bytes, at most [`CHUNK`] buffered at a time.
    pub(crate) fn skip(&mut self, mut n: u64) -> Result<(), RdbError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(CHUNK.min(n as usize), 0);
        let mut result = Ok(());
        while n > 0 {
            let step = CHUNK.min(n as usize).min(scratch.len());
            result = self.fill(&mut scratch[..step]);
            if result.is_err() {
                break;
            }
            n -= step as u64;
        }
        self.scratch = scratch;
        result
    }

    /// `n` bytes, the buffer grown as they arrive.
    pub(crate) fn bytes(&mut self, n: u64) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::new();
        self.bytes_into(&mut out, n)?;
        Ok(out)
    }

    /// `n` bytes into `out` (cleared first), grown as they arrive.
    fn bytes_into(&mut self, out: &mut Vec<u8>, n: u64) -> Result<(), RdbError> {
        let n = usize::try_from(n).map_err(|_| self.corrupt(format!("a length of {n} bytes")))?;
        out.clear();
        out.reserve(n.min(CHUNK));
        while out.len() < n {
            let start = out.len();
            let step = CHUNK.max(start).min(n - start);
            out.resize(start + step, 0);
            self.fill(&mut out[start..])?;
        }
        Ok(())
    }

    /// A length field.
    pub(crate) fn length(&mut self) -> Result<Length, RdbError> {
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => Length::Len(u64::from(b & 0x3f)),
            1 => Length::Len(u64::from(b & 0x3f) << 8 | u64::from(self.u8()?)),
            2 if b == 0x80 => Length::Len(u64::from(u32::from_be_bytes(self.array()?))),
            2 if b == 0x81 => Length::Len(u64::from_be_bytes(self.array()?)),
            2 => return Err(self.corrupt(format!("unknown length encoding 0x{b:02x}"))),
            _ => match b & 0x3f {
                0 => Length::Int(1),
                1 => Length::Int(2),
                2 => Length::Int(4),
                3 => Length::Lzf,
                e => return Err(self.corrupt(format!("unknown string encoding {e}"))),
            },
        })
    }

    /// A plain length (a count, an id): a string encoding here is an error.
    pub(crate) fn len(&mut self) -> Result<u64, RdbError> {
        match self.length()? {
            Length::Len(n) => Ok(n),
            other => Err(self.corrupt(format!(
                "a string encoding ({other:?}) where a length belongs"
            ))),
        }
    }

    /// A string: integers as their decimal text, LZF decompressed.
    pub(crate) fn string(&mut self) -> Result<Bytes, RdbError> {
        match self.length()? {
            Length::Len(n) => Ok(self.bytes(n)?.into()),
            Length::Int(size) => self.int_string(size),
            Length::Lzf => {
                let (clen, len) = (self.len()?, self.len()?);
                self.lzf_string(clen, len)
            }
        }
    }

    /// The decimal text of a signed little-endian integer of `size` (1, 2 or 4) bytes.
    pub(crate) fn int_string(&mut self, size: usize) -> Result<Bytes, RdbError> {
        let mut buf = [0u8; 4];
        self.fill(&mut buf[..size])?;
        let shift = 32 - 8 * size as u32;
        let v = (i32::from_le_bytes(buf) << shift) >> shift;
        Ok(Bytes::from(v.to_string()))
    }

    /// `clen` bytes of LZF data decompressed into exactly `len` bytes (the compressed bytes read
    /// into the reused scratch buffer).
    pub(crate) fn lzf_string(&mut self, clen: u64, len: u64) -> Result<Bytes, RdbError> {
        let len = usize::try_from(len)
            .map_err(|_| self.corrupt(format!("an LZF length of {len} bytes")))?;
        let mut data = std::mem::take(&mut self.scratch);
        let result = self.bytes_into(&mut data, clen).and_then(|()| {
            lzf::decompress(&data, len)
                .map(Bytes::from)
                .map_err(|e| self.corrupt(e.to_string()))
        });
        data.clear();
        data.shrink_to(CHUNK);
        self.scratch = data;
        result
    }

    /// Skips a string without decompressing or keeping it.
    pub(crate) fn skip_string(&mut self) -> Result<(), RdbError> {
        match self.length()? {
            Length::Len(n) => self.skip(n),
            Length::Int(size) => self.skip(size as u64),
            Length::Lzf => {
                let clen = self.len()?;
                self.len()?;
                self.skip(clen)
            }
        }
    }
}
