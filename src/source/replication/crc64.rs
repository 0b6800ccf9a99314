//! CRC-64 as Redis computes it for RDB files and DUMP payloads (the Jones polynomial, reflected,
//! initial value 0, no final xor), sixteen bytes at a time.

/// The reflected Jones polynomial.
const POLY: u64 = 0x95ac_9329_ac4b_c9b5;

/// Slicing-by-16 tables: `TABLES[0]` is the classic byte table, `TABLES[k][b]` the CRC of byte
/// `b` followed by `k` zero bytes.
static TABLES: [[u64; 256]; 16] = tables();

const fn tables() -> [[u64; 256]; 16] {
    let mut t = [[0u64; 256]; 16];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][b] = crc;
        b += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            b += 1;
        }
        k += 1;
    }
    t
}

/// The CRC contribution of the eight bytes of `x`, followed by `8 * shift` zero bytes.
#[inline(always)]
fn eight(x: u64, shift: usize) -> u64 {
    let t = |i: usize| TABLES[shift + 7 - i][((x >> (8 * i)) & 0xff) as usize];
    t(0) ^ t(1) ^ t(2) ^ t(3) ^ t(4) ^ t(5) ^ t(6) ^ t(7)
}

fn le(c: &[u8]) -> u64 {
    u64::from_le_bytes(c[..8].try_into().expect("8 bytes"))
}

/// `crc` (0 to start) extended by `bytes`.
pub(crate) fn update(mut crc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(16);
    for c in &mut chunks {
        crc = eight(crc ^ le(c), 8) ^ eight(le(&c[8..]), 0);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 8 {
        crc = eight(crc ^ le(rest), 0);
        rest = &rest[8..];
    }
    for &b in rest {
        crc = TABLES[0][((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::update;

    /// Bit by bit, the definition the tables must agree with.
    fn slow(bytes: &[u8]) -> u64 {
        let mut crc = 0u64;
        for &b in bytes {
            crc ^= u64::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ super::POLY
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn the_check_value_of_redis_crc64() {
        assert_eq!(update(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(slow(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(update(0, b""), 0);
    }

    #[test]
    fn any_split_and_length_gives_the_bitwise_crc() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 64, 299, 300,
        ] {
            assert_eq!(update(0, &data[..len]), slow(&data[..len]), "len {len}");
        }
        let (a, b) = data.split_at(13);
        assert_eq!(update(update(0, a), b), slow(&data));
    }
}
