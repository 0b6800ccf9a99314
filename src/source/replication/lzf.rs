//! LZF decompression, the format Redis compresses RDB strings and quicklist nodes with: a
//! control byte below 32 copies that many plus one literal bytes; any other is a back reference
//! of `ctrl >> 5` (7 meaning "plus the next byte") plus 2 bytes, at a distance taken from the
//! control byte's low 5 bits and the next byte.

/// Why compressed bytes could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LzfError {
    /// The compressed data ends inside a literal run or a back reference.
    #[error("LZF data ends inside an instruction at byte {0}")]
    Truncated(usize),
    /// A back reference points before the start of the output.
    #[error("LZF back reference at byte {at} reaches {distance} bytes back, before the start")]
    BadReference {
        /// Offset of the instruction in the compressed data.
        at: usize,
        /// How far back it points.
        distance: usize,
    },
    /// The output would not be exactly the declared length.
    #[error("LZF output is {got}{more} bytes, the header declares {want}")]
    Length {
        /// Bytes produced (so far, when `more` is "+").
        got: usize,
        /// "+" when decompression stopped because the output would exceed `want`.
        more: &'static str,
        /// Declared length.
        want: usize,
    },
}

/// Largest first allocation for the output: the declared length comes from the data, and the
/// output grows as it is produced, so a hostile header cannot reserve memory by itself.
const FIRST_ALLOCATION: usize = 64 * 1024;

/// Decompresses `input` into exactly `len` bytes.
pub(crate) fn decompress(input: &[u8], len: usize) -> Result<Vec<u8>, LzfError> {
    let mut out = Out {
        buf: vec![0; len.min(FIRST_ALLOCATION)],
        op: 0,
        len,
    };
    let mut ip = 0;
    while ip < input.len() {
        let at = ip;
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input.get(ip..ip + run).ok_or(LzfError::Truncated(at))?;
            let op = out.room(run)?;
            out.buf[op..op + run].copy_from_slice(lit);
            ip += run;
            continue;
        }
        let mut run = ctrl >> 5;
        if run == 7 {
            run += usize::from(*input.get(ip).ok_or(LzfError::Truncated(at))?);
            ip += 1;
        }
        let low = usize::from(*input.get(ip).ok_or(LzfError::Truncated(at))?);
        ip += 1;
        run += 2;
        let distance = ((ctrl & 0x1f) << 8) + low + 1;
        if distance > out.op {
            return Err(LzfError::BadReference { at, distance });
        }
        let op = out.room(run)?;
        let start = op - distance;
        if distance >= run {
            out.buf.copy_within(start..start + run, op);
        } else {
            // Overlapping: the reference repeats bytes this copy has just written.
            for i in 0..run {
                out.buf[op + i] = out.buf[start + i];
            }
        }
    }
    if out.op != len {
        return Err(LzfError::Length {
            got: out.op,
            more: "",
            want: len,
        });
    }
    out.buf.truncate(len);
    Ok(out.buf)
}

/// The output: a buffer grown (doubling, up to the declared length) as it is written.
struct Out {
    buf: Vec<u8>,
    /// Bytes written.
    op: usize,
    /// Declared length.
    len: usize,
}

impl Out {
    /// Makes room for `n` more bytes and counts them written; where they go.
    fn room(&mut self, n: usize) -> Result<usize, LzfError> {
        let op = self.op;
        if op + n > self.len {
            return Err(LzfError::Length {
                got: op,
                more: "+",
                want: self.len,
            });
        }
        if op + n > self.buf.len() {
            let grown = (self.buf.len() * 2).max(op + n).min(self.len);
            self.buf.resize(grown, 0);
        }
        self.op = op + n;
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::{decompress, LzfError};

    #[test]
    fn literal_runs_and_back_references() {
        // "abc" literal, then ctrl 0x60: run 3 (+2 = 5 bytes) at distance 2 + 1 = 3.
        let input = [2, b'a', b'b', b'c', 0x60, 2];
        assert_eq!(decompress(&input, 8).unwrap(), b"abcabcab");
    }

    #[test]
    fn a_long_reference_takes_the_extra_length_byte() {
        // "x", then run 7 + 10 + 2 = 19 copies at distance 1.
        let input = [0, b'x', 0xe0, 10, 0];
        assert_eq!(decompress(&input, 20).unwrap(), vec![b'x'; 20]);
    }

    #[test]
    fn a_far_reference_uses_the_high_distance_bits() {
        let mut input = vec![31];
        input.extend(0..32u8);
        input.extend([0, 32]); // literal of one byte: 32
                               // Reference: run 1 (+2 = 3), distance ((0 << 8) | 32) + 1 = 33 -> bytes 0, 1, 2.
        input.extend([0x20, 32]);
        let mut want: Vec<u8> = (0..33u8).collect();
        want.extend([0, 1, 2]);
        assert_eq!(decompress(&input, 36).unwrap(), want);
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        assert_eq!(decompress(&[5, b'a'], 6), Err(LzfError::Truncated(0)));
        assert_eq!(decompress(&[0, b'a', 0xe0], 9), Err(LzfError::Truncated(2)));
        assert_eq!(
            decompress(&[0, b'a', 0x20, 5], 9),
            Err(LzfError::BadReference { at: 2, distance: 6 })
        );
        assert!(matches!(
            decompress(&[1, b'a', b'b'], 1),
            Err(LzfError::Length { .. })
        ));
        assert!(matches!(
            decompress(&[1, b'a', b'b'], 3),
            Err(LzfError::Length { .. })
        ));
        // A header claiming 4 GiB allocates nothing like it.
        assert!(matches!(
            decompress(&[0, b'a'], u32::MAX as usize),
            Err(LzfError::Length { .. })
        ));
    }
}
