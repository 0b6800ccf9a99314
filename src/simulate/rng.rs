//! The simulator's randomness and its world: a tiny seeded PRNG (SplitMix64), so a run is
//! reproducible from its seed with no dependency, and the accounts, MT5 instances and symbols
//! the generated traffic is spread over.

/// SplitMix64: fast, good enough for test traffic, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The SplitMix64 output function: also a good 64-bit hash of a seed.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A traded symbol: its name, a typical price, the decimals it is quoted with and the units
/// in one lot (for the profit of a close).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Symbol {
    /// e.g. `EURUSD`.
    pub name: &'static str,
    /// A typical price.
    pub price: f64,
    /// Quoted decimals.
    pub digits: i32,
    /// Units per lot.
    pub contract: f64,
}

/// The symbols traded.
pub(crate) const SYMBOLS: [Symbol; 12] = [
    sym("EURUSD", 1.0842, 5, 100_000.0),
    sym("GBPUSD", 1.2710, 5, 100_000.0),
    sym("USDJPY", 151.32, 3, 100_000.0),
    sym("USDCHF", 0.9035, 5, 100_000.0),
    sym("AUDUSD", 0.6570, 5, 100_000.0),
    sym("USDCAD", 1.3610, 5, 100_000.0),
    sym("XAUUSD", 2351.40, 2, 100.0),
    sym("XAGUSD", 28.105, 3, 5_000.0),
    sym("BTCUSD", 67_250.0, 2, 1.0),
    sym("ETHUSD", 3_480.0, 2, 1.0),
    sym("US500", 5_230.5, 1, 1.0),
    sym("GER40", 18_410.0, 1, 1.0),
];

const fn sym(name: &'static str, price: f64, digits: i32, contract: f64) -> Symbol {
    Symbol {
        name,
        price,
        digits,
        contract,
    }
}

/// Trading accounts: `ACC-10000` .. `ACC-14999`.
pub(crate) const ACCOUNTS: u64 = 5_000;
/// MT5 terminal instances: `mt5-01` .. `mt5-48`.
pub(crate) const INSTANCES: u64 = 48;

/// A random account id.
pub(crate) fn account(rng: &mut Rng) -> String {
    format!("ACC-{}", 10_000 + rng.below(ACCOUNTS))
}

/// A random MT5 instance id.
pub(crate) fn instance(rng: &mut Rng) -> String {
    format!("mt5-{:02}", 1 + rng.below(INSTANCES))
}

/// `x` rounded to `digits` decimals.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Rng::new(8);
        assert_ne!(xs, (0..100).map(|_| c.next_u64()).collect::<Vec<_>>());
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!(r.below(10) < 10);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
        let hits = (0..10_000).filter(|_| r.chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert_eq!(round(1.234_567, 3), 1.235);
    }
}
