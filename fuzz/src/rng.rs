//! Deterministic randomness: the same `--seed` gives the same inputs on every machine and with
//! every version of every crate (which `rand`'s small generators do not promise).

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator for one target: each target's run depends only on the seed and its
    /// name, so `all` and a run of the target alone see the same inputs.
    pub fn for_target(seed: u64, target: &str) -> Rng {
        Rng(seed ^ fnv1a(target.as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, one_in: u32) -> bool {
        self.next_u64().is_multiple_of(u64::from(one_in.max(1)))
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length biased towards small ones: most mutations touch a few bytes, some many.
    pub fn small_len(&mut self, max: usize) -> usize {
        let cap = match self.below(4) {
            0 => 1,
            1 => 4,
            2 => 16,
            _ => max,
        };
        1 + self.below(cap.min(max).max(1))
    }
}

/// FNV-1a, 64 bits: names and inputs to stable numbers (file names, outcome fingerprints).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
