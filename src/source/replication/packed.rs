//! The packed encodings a quicklist node or a small list is stored in: ziplists (Redis up to
//! 6.2) and listpacks (7.0 on). Their integer entries come back as decimal text, as Redis
//! returns them.

use bytes::Bytes;

/// Why a packed blob could not be read: what, at which offset inside the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at} of the {kind}")]
pub(crate) struct PackedError {
    /// "ziplist" or "listpack".
    pub kind: &'static str,
    /// Offset inside the blob.
    pub at: usize,
    /// What is wrong.
    pub what: String,
}

/// A cursor over a blob that fails with a [`PackedError`] instead of reading past its end.
struct Cursor<'a> {
    kind: &'static str,
    blob: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, at: usize, what: impl Into<String>) -> PackedError {
        PackedError {
            kind: self.kind,
            at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PackedError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.blob.len());
        let Some(end) = end else {
            return Err(self.err(self.at, format!("an entry of {n} bytes runs past the end")));
        };
        let s = &self.blob[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, PackedError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian signed integer of `n` bytes (1..=8), sign-extended.
    fn int_le(&mut self, n: usize) -> Result<i64, PackedError> {
        let b = self.take(n)?;
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(b);
        let shift = 64 - 8 * n as u32;
        Ok((i64::from_le_bytes(buf) << shift) >> shift)
    }

    /// The blob's header: total bytes (u32 LE) must be its length.
    fn total_bytes(&mut self) -> Result<(), PackedError> {
        let total = self.int_le(4)? as u32 as usize;
        if total != self.blob.len() {
            return Err(self.err(
                0,
                format!(
                    "header says {total} bytes, the blob has {}",
                    self.blob.len()
                ),
            ));
        }
        Ok(())
    }

    /// After the last entry: the 0xFF end byte closes the blob, and the count agrees with the
    /// header's (`unknown` when the header's count saturated).
    fn end(&mut self, count: usize, header: usize, unknown: usize) -> Result<(), PackedError> {
        if self.at + 1 != self.blob.len() {
            return Err(self.err(self.at, "bytes after the end marker"));
        }
        if header != unknown && header != count {
            return Err(self.err(
                self.at,
                format!("{count} entries, the header says {header}"),
            ));
        }
        Ok(())
    }
}

fn int_text(v: i64) -> Bytes {
    Bytes::from(v.to_string())
}

/// Every entry of a ziplist, in order.
pub(crate) fn ziplist(blob: &[u8]) -> Result<Vec<Bytes>, PackedError> {
    let mut c = Cursor {
        kind: "ziplist",
        blob,
        at: 0,
    };
    c.total_bytes()?;
    c.take(4)?; // offset of the tail
    let header = c.int_le(2)? as u16 as usize;
    let mut out = Vec::with_capacity(header.min(blob.len()));
    loop {
        let start = c.at;
        let first = c.byte()?;
        if first == 0xff {
            c.at = start;
            c.end(out.len(), header, 0xffff)?;
            return Ok(out);
        }
        if first == 0xfe {
            c.take(4)?; // previous entry's length, 5-byte form
        }
        out.push(ziplist_entry(&mut c)?);
    }
}

fn ziplist_entry(c: &mut Cursor<'_>) -> Result<Bytes, PackedError> {
    let at = c.at;
    let enc = c.byte()?;
    let len = match enc >> 6 {
        0 => usize::from(enc & 0x3f),
        1 => usize::from(enc & 0x3f) << 8 | usize::from(c.byte()?),
        2 if enc == 0x80 => u32::from_be_bytes(c.take(4)?.try_into().expect("4 bytes")) as usize,
        2 => return Err(c.err(at, format!("unknown string encoding 0x{enc:02x}"))),
        _ => {
            let v = match enc {
                0xc0 => c.int_le(2)?,
                0xd0 => c.int_le(4)?,
                0xe0 => c.int_le(8)?,
                0xf0 => c.int_le(3)?,
                0xfe => c.int_le(1)?,
                0xf1..=0xfd => i64::from(enc & 0x0f) - 1,
                _ => return Err(c.err(at, format!("unknown integer encoding 0x{enc:02x}"))),
            };
            return Ok(int_text(v));
        }
    };
    Ok(Bytes::copy_from_slice(c.take(len)?))
}

/// Every entry of a listpack, in order.
pub(crate) fn listpack(blob: &[u8]) -> Result<Vec<Bytes>, PackedError> {
    let mut c = Cursor {
        kind: "listpack",
        blob,
        at: 0,
    };
    c.total_bytes()?;
    let header = c.int_le(2)? as u16 as usize;
    let mut out = Vec::with_capacity(header.min(blob.len()));
    loop {
        let start = c.at;
        if c.byte()? == 0xff {
            c.at = start;
            c.end(out.len(), header, 0xffff)?;
            return Ok(out);
        }
        c.at = start;
        out.push(listpack_entry(&mut c)?);
        // The entry's length backwards, 1 to 5 bytes.
        c.take(backlen_size(c.at - start))?;
    }
}

/// How many bytes the back length of an entry of `len` bytes takes.
fn backlen_size(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

fn listpack_entry(c: &mut Cursor<'_>) -> Result<Bytes, PackedError> {
    let at = c.at;
    let enc = c.byte()?;
    let v = match enc {
        0x00..=0x7f => i64::from(enc),
        0x80..=0xbf => return Ok(Bytes::copy_from_slice(c.take(usize::from(enc & 0x3f))?)),
        0xc0..=0xdf => {
            let u = i64::from(enc & 0x1f) << 8 | i64::from(c.byte()?);
            if u >= 1 << 12 {
                u - (1 << 13)
            } else {
                u
            }
        }
        0xe0..=0xef => {
            let len = usize::from(enc & 0x0f) << 8 | usize::from(c.byte()?);
            return Ok(Bytes::copy_from_slice(c.take(len)?));
        }
        0xf0 => {
            let len = c.int_le(4)? as u32 as usize;
            return Ok(Bytes::copy_from_slice(c.take(len)?));
        }
        0xf1 => c.int_le(2)?,
        0xf2 => c.int_le(3)?,
        0xf3 => c.int_le(4)?,
        0xf4 => c.int_le(8)?,
        _ => return Err(c.err(at, format!("unknown encoding 0x{enc:02x}"))),
    };
    Ok(int_text(v))
}

#[cfg(test)]
#[path = "packed_tests.rs"]
pub(crate) mod tests;
