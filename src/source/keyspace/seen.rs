//! The values this process has archived: a bounded memory of (key, content) pairs, so that a
//! rescan does not insert again what is already on its way to ClickHouse or committed, and a
//! notification whose read-back finds a value already archived is counted as such.
//!
//! Each pair is kept as one 64-bit fingerprint (the key's xxh3 seeded with the content hash), in
//! two generations of hash sets, each allocated whole when it starts: a set of 2^k buckets (9
//! bytes each) holds 2^k * 7/8 pairs, so the default 1,835,008 pairs take two sets of 2^20
//! buckets, 19 MB in all (10 bytes a pair). When the current generation is full, the older
//! one is dropped and the current one becomes the older: what was archived recently is
//! remembered, the oldest forgotten first (as alert keys expire), and forgetting costs only a re-insert that
//! ClickHouse deduplicates (the first capture's version wins). A false "known" would skip a
//! value: with 64-bit fingerprints its odds are about n / 2^64 per lookup (1e-13 at a million).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A pair's fingerprint.
pub(super) fn fingerprint(key: &[u8], content_hash: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, content_hash)
}

/// Fingerprints are uniform already: the set hashes them as they are.
#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Set = HashSet<u64, BuildHasherDefault<Identity>>;

/// The remembered pairs.
pub(super) struct Seen {
    current: Set,
    older: Set,
    /// Pairs a generation holds before it turns over.
    generation: usize,
}

impl Seen {
    /// Remembers about `pairs` pairs (at least the last `pairs / 2`); 0 remembers nothing.
    pub(super) fn new(pairs: usize) -> Seen {
        Seen {
            current: Set::default(),
            older: Set::default(),
            generation: pairs / 2,
        }
    }

    /// Whether the pair is remembered.
    #[cfg(test)]
    pub(super) fn contains(&self, fingerprint: u64) -> bool {
        self.current.contains(&fingerprint) || self.older.contains(&fingerprint)
    }

    /// Remembers a pair; false if it was remembered already.
    pub(super) fn insert(&mut self, fingerprint: u64) -> bool {
        if self.generation == 0 {
            return true;
        }
        // A pair seen again stays where it is: moving it to the young generation would fill
        // that one and drop the older one while a rescan is still going through it (measured:
        // 31,000 of a million keys inserted again by one rescan). Pairs are forgotten in the
        // order they were archived, as alert keys expire.
        if self.older.contains(&fingerprint) || self.current.contains(&fingerprint) {
            return false;
        }
        self.add(fingerprint);
        true
    }

    fn add(&mut self, fingerprint: u64) {
        if self.current.len() >= self.generation {
            self.older = std::mem::take(&mut self.current);
        }
        if self.current.capacity() == 0 {
            // Whole at once: no rehash while it fills, and no table twice its size meanwhile.
            self.current.reserve(self.generation);
        }
        self.current.insert(fingerprint);
    }

    /// Forgets every pair (the table they were archived in was dropped); the sets keep their
    /// memory.
    pub(super) fn clear(&mut self) {
        self.current.clear();
        self.older.clear();
    }

    /// Pairs remembered now.
    pub(super) fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_recent_and_forgets_the_oldest_generation() {
        let mut s = Seen::new(4);
        assert!(s.insert(1));
        assert!(!s.insert(1));
        assert!(s.insert(2));
        // The current generation (2 pairs) is full: 1 and 2 become the older one.
        assert!(s.insert(3));
        assert!(s.contains(1) && s.contains(2) && s.contains(3));
        // Seen again, 1 stays in the older generation: a rescan does not push pairs out.
        assert!(!s.insert(1));
        assert!(s.insert(4));
        assert!(s.contains(1) && s.contains(2) && s.contains(3) && s.contains(4));
        // 3 and 4 turn over; 1 and 2, the oldest, are forgotten.
        assert!(s.insert(5));
        assert!(!s.contains(1) && !s.contains(2));
        assert!(s.contains(3) && s.contains(4) && s.contains(5));
        assert!(s.len() <= 4);
    }

    #[test]
    fn size_zero_remembers_nothing() {
        let mut s = Seen::new(0);
        assert!(s.insert(7));
        assert!(s.insert(7));
        assert!(!s.contains(7));
    }

    #[test]
    fn the_content_is_part_of_the_fingerprint() {
        assert_ne!(fingerprint(b"alert:1", 1), fingerprint(b"alert:1", 2));
        assert_ne!(fingerprint(b"alert:1", 1), fingerprint(b"alert:2", 1));
    }
}
