//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the parts of Spillway that
//! read bytes from the outside and are not public otherwise. Not an API: it changes with them.
//! The MessagePack and JSON readers ([`crate::decode`], [`crate::rows`]) are public already.

/// The keyevent notifications the subscriber takes out of `reads` (the bytes of successive
/// socket reads), on the channels of `set` and `expired` in db 0, as (operation, key); the
/// error's text when the bytes are not Redis talking.
pub fn parse_notifications(reads: &[&[u8]]) -> Result<Vec<(String, Vec<u8>)>, String> {
    crate::source::keyspace::subscriber::fuzzing::notifications(reads)
}

/// The whole frames of `bytes` as the subscriber's handshake prints them, up to the first
/// error or incomplete frame.
pub fn parse_frames(bytes: &[u8]) -> Vec<String> {
    crate::source::keyspace::subscriber::fuzzing::frames(bytes)
}
