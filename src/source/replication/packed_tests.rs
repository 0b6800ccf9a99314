//! Hand-built ziplists and listpacks with every entry encoding (Redis 7.0 here cannot write a
//! ziplist list, and writes only the listpack encodings its values need).

use super::{listpack, ziplist, PackedError};

/// A ziplist of entries given as (encoding + data) bytes: each gets the previous entry's length
/// in front, in the 1- or 5-byte form.
pub(crate) fn build_ziplist(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut prev = 0usize;
    let mut tail = 10;
    for e in entries {
        tail = 10 + body.len();
        let start = body.len();
        if prev < 254 {
            body.push(prev as u8);
        } else {
            body.push(0xfe);
            body.extend((prev as u32).to_le_bytes());
        }
        body.extend(e);
        prev = body.len() - start;
    }
    let mut zl = Vec::new();
    zl.extend(((10 + body.len() + 1) as u32).to_le_bytes());
    zl.extend((tail as u32).to_le_bytes());
    zl.extend((entries.len() as u16).to_le_bytes());
    zl.extend(body);
    zl.push(0xff);
    zl
}

/// A listpack of entries given as (encoding + data) bytes, each followed by its back length.
pub(crate) fn build_listpack(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body: Vec<u8> = Vec::new();
    for e in entries {
        body.extend(e);
        let mut l = e.len();
        let mut back = vec![(l & 0x7f) as u8];
        while l > 127 {
            l >>= 7;
            back.push((l & 0x7f) as u8 | 0x80);
        }
        body.extend(back.iter().rev());
    }
    let mut lp = Vec::new();
    lp.extend(((6 + body.len() + 1) as u32).to_le_bytes());
    lp.extend((entries.len() as u16).to_le_bytes());
    lp.extend(body);
    lp.push(0xff);
    lp
}

fn cat(head: &[u8], tail: &[u8]) -> Vec<u8> {
    [head, tail].concat()
}

fn texts(v: Vec<bytes::Bytes>) -> Vec<String> {
    v.iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn ziplist_every_encoding() {
    let s300 = vec![b's'; 300];
    let s20000 = vec![b'L'; 20_000];
    let entries = vec![
        cat(&[0x03], b"abc"),                                 // 6-bit string length
        cat(&[0x41, 0x2c], &s300),                            // 14-bit (big-endian) length
        cat(&[0x80, 0, 0, 0x4e, 0x20], &s20000),              // 32-bit (big-endian) length
        cat(&[0xc0], &(-2i16).to_le_bytes()),                 // int16
        cat(&[0xd0], &123_456_789i32.to_le_bytes()),          // int32
        cat(&[0xe0], &(-9_000_000_000_000i64).to_le_bytes()), // int64
        cat(&[0xf0], &(-8_388_608i32).to_le_bytes()[..3]),    // int24, smallest
        cat(&[0xf0], &(8_388_607i32).to_le_bytes()[..3]),     // int24, largest
        cat(&[0xfe], &[0x80]),                                // int8: -128
        vec![0xf1],                                           // immediate 0
        vec![0xfd],                                           // immediate 12
        cat(&[0x00], b""),                                    // empty string
    ];
    let got = ziplist(&build_ziplist(&entries)).unwrap();
    let mut want: Vec<Vec<u8>> = vec![b"abc".to_vec(), s300, s20000];
    for n in [
        "-2",
        "123456789",
        "-9000000000000",
        "-8388608",
        "8388607",
        "-128",
        "0",
        "12",
        "",
    ] {
        want.push(n.as_bytes().to_vec());
    }
    assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), want);
}

#[test]
fn ziplist_with_a_saturated_count_and_empty() {
    let mut zl = build_ziplist(&[vec![0xf2], vec![0xf3]]);
    zl[8..10].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(texts(ziplist(&zl).unwrap()), ["1", "2"]);
    assert!(ziplist(&build_ziplist(&[])).unwrap().is_empty());
}

#[test]
fn listpack_every_encoding() {
    let s4000 = vec![b'q'; 4000];
    let s70000 = vec![b'z'; 70_000];
    let entries = vec![
        vec![0x05],                                                    // 7-bit uint
        vec![0x7f],                                                    // 7-bit uint, largest
        cat(&[0x83], b"abc"),                                          // 6-bit string
        cat(&[0xe0 | (4000 >> 8) as u8, (4000 & 0xff) as u8], &s4000), // 12-bit string
        cat(&[0xf0], &cat(&70_000u32.to_le_bytes(), &s70000)),         // 32-bit string
        vec![0xc0 | 0x0f, 0xff],                                       // 13-bit int: 4095
        vec![0xc0 | 0x10, 0x00],                                       // 13-bit int: -4096
        vec![0xc0 | 0x1f, 0xff],                                       // 13-bit int: -1
        cat(&[0xf1], &(-300i16).to_le_bytes()),                        // int16
        cat(&[0xf2], &(-5_000_000i32).to_le_bytes()[..3]),             // int24
        cat(&[0xf3], &i32::MIN.to_le_bytes()),                         // int32
        cat(&[0xf4], &i64::MAX.to_le_bytes()),                         // int64
        cat(&[0xbf], &[b'x'; 63]),                                     // 6-bit string, 63 bytes
        cat(&[0xe0 | 0x0f, 0xff], &vec![b'y'; 4095]),                  // 12-bit string, largest
        cat(&[0x80], b""),                                             // empty string
    ];
    let lp = build_listpack(&entries);
    let got = listpack(&lp).unwrap();
    let mut want: Vec<Vec<u8>> = vec![
        b"5".to_vec(),
        b"127".to_vec(),
        b"abc".to_vec(),
        s4000,
        s70000,
    ];
    let (min32, max64) = (i32::MIN.to_string(), i64::MAX.to_string());
    for n in ["4095", "-4096", "-1", "-300", "-5000000", &min32, &max64] {
        want.push(n.as_bytes().to_vec());
    }
    want.extend([vec![b'x'; 63], vec![b'y'; 4095], vec![]]);
    assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), want);
}

#[test]
fn damaged_blobs_are_errors_naming_the_offset() {
    let lp = build_listpack(&[cat(&[0x83], b"abc"), vec![0x05]]);
    // Every truncation: the header's length no longer matches.
    for cut in 0..lp.len() {
        assert!(listpack(&lp[..cut]).is_err(), "cut at {cut}");
    }
    let zl = build_ziplist(&[cat(&[0x03], b"abc"), vec![0xf5]]);
    for cut in 0..zl.len() {
        assert!(ziplist(&zl[..cut]).is_err(), "cut at {cut}");
    }
    // A string length past the end, with the header made to agree with the blob.
    let mut bad = build_listpack(&[cat(&[0x83], b"abc")]);
    bad[6] = 0xbf;
    let e: PackedError = listpack(&bad).unwrap_err();
    assert_eq!((e.kind, e.at), ("listpack", 7));
    assert!(e.to_string().contains("runs past the end"), "{e}");
    // Unknown encodings.
    let e = listpack(&build_listpack(&[vec![0xf5]])).unwrap_err();
    assert!(
        e.to_string().contains("unknown encoding 0xf5 at byte 6"),
        "{e}"
    );
    let e = ziplist(&build_ziplist(&[vec![0xc8]])).unwrap_err();
    assert!(e.to_string().contains("0xc8"), "{e}");
    // The header's count disagrees.
    let mut wrong = build_listpack(&[vec![1], vec![2]]);
    wrong[4] = 3;
    assert!(listpack(&wrong)
        .unwrap_err()
        .to_string()
        .contains("2 entries, the header says 3"));
}
