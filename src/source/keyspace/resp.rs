//! The RESP2 frames a subscriber sees (simple lines, and arrays of bulk strings and integers),
//! parsed in place from the read buffer: no frame is copied, a frame cut anywhere waits for
//! more bytes, and bytes that are not Redis talking are an error.

use fred::error::{Error, ErrorKind};

/// A protocol error: the bytes are not Redis talking.
pub(super) fn protocol(detail: String) -> Error {
    Error::new(ErrorKind::Protocol, detail)
}

/// A RESP2 frame, as far as a subscriber sees them, borrowing from the read buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Frame<'a> {
    /// `+OK`, `-ERR ...` or `:n`: the line after its type byte.
    Line(u8, &'a [u8]),
    /// An array of bulk strings and integers (as text; `$-1` as empty).
    Array(Vec<&'a [u8]>),
}

impl std::fmt::Display for Frame<'_> {
    /// `+OK`, `-ERR ...`, `:1`, or `[subscribe, channel, 1]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Line(kind, text) => {
                write!(f, "{}{}", *kind as char, String::from_utf8_lossy(text))
            }
            Frame::Array(items) => {
                let items: Vec<_> = items.iter().map(|i| String::from_utf8_lossy(i)).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// Redis's own limit on a bulk string (`proto-max-bulk-len`, 512 MB): anything longer is not
/// Redis talking.
pub(super) const MAX_BULK: i64 = 512 << 20;

/// `args` as one RESP command (an array of bulk strings), as a client writes it.
pub(crate) fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The first whole frame of `buf` and its length; None when more bytes are needed.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, Error> {
    let Some((head, mut at)) = line(buf, 0) else {
        return Ok(None);
    };
    let frame = match head.first() {
        Some(&kind @ (b'+' | b'-' | b':')) => Frame::Line(kind, &head[1..]),
        Some(b'*') => {
            let n = number(&head[1..])?;
            let mut items = Vec::with_capacity(n.clamp(0, 8) as usize);
            for _ in 0..n.max(0) {
                let Some((item, next)) = line(buf, at) else {
                    return Ok(None);
                };
                at = next;
                match item.first() {
                    Some(b'$') => {
                        let len = number(&item[1..])?;
                        if len < 0 {
                            items.push(&[][..]);
                            continue;
                        }
                        if len > MAX_BULK {
                            return Err(protocol(format!("bulk string of {len} bytes")));
                        }
                        let end = at + len as usize;
                        if buf.len() < end + 2 {
                            return Ok(None);
                        }
                        items.push(&buf[at..end]);
                        at = end + 2;
                    }
                    Some(b':') => items.push(&item[1..]),
                    _ => return Err(protocol(format!("unexpected array item {item:?}"))),
                }
            }
            Frame::Array(items)
        }
        _ => return Err(protocol(format!("unexpected frame {head:?}"))),
    };
    Ok(Some((frame, at)))
}

/// The line starting at `from` (without its CRLF) and where the next one starts.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], from + end + 2))
}

/// A RESP integer (a length, a count).
pub(super) fn number(digits: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("not a number: {digits:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, key: &str) -> Vec<u8> {
        format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{key}\r\n",
            channel.len(),
            key.len()
        )
        .into_bytes()
    }

    #[test]
    fn parses_messages_confirmations_and_errors() {
        let msg = message("__keyevent@0__:set", "alert:a\r\nb");
        let (frame, used) = parse(&msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(
            frame,
            Frame::Array(vec![
                &b"message"[..],
                &b"__keyevent@0__:set"[..],
                &b"alert:a\r\nb"[..],
            ])
        );
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nabc\r\n:1\r\n";
        let (frame, _) = parse(confirm).unwrap().unwrap();
        assert_eq!(frame.to_string(), "[subscribe, abc, 1]");
        let (frame, _) = parse(b"-WRONGPASS invalid\r\n").unwrap().unwrap();
        assert_eq!(frame.to_string(), "-WRONGPASS invalid");
        assert_eq!(
            parse(b"+OK\r\n").unwrap().unwrap(),
            (Frame::Line(b'+', &b"OK"[..]), 5)
        );
        assert_eq!(parse(b"*-1\r\n").unwrap().unwrap().0, Frame::Array(vec![]));
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"*1\r\n$9223372036854775807\r\n").is_err());
        assert!(parse(b"*x\r\n").is_err());
    }

    #[test]
    fn a_frame_cut_anywhere_waits_for_more_bytes() {
        let mut two = message("__keyevent@0__:expired", "alert:1");
        let first = two.len();
        two.extend(message("__keyevent@0__:set", "alert:2"));
        for cut in 0..first {
            assert_eq!(parse(&two[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (_, used) = parse(&two).unwrap().unwrap();
        assert_eq!(used, first);
        let (frame, used) = parse(&two[first..]).unwrap().unwrap();
        assert_eq!(used, two.len() - first);
        let Frame::Array(items) = frame else { panic!() };
        assert_eq!(items[2], b"alert:2");
    }
}
