//! Tiny per-replica PRNG (wyrand). Not cryptographic; only used to spread load.

/// wyrand: a 64-bit state, one multiply per output, passes BigCrush/PractRand for this use.
#[derive(Debug, Clone)]
pub(crate) struct WyRand {
    state: u64,
}

impl WyRand {
    pub(crate) fn new(seed: u64) -> Self {
        WyRand {
            state: splitmix64(seed),
        }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform-enough integer in `0..n` (Lemire's multiply-shift; bias < n / 2^64). `n` must be > 0.
    #[inline]
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// splitmix64 finalizer: a bijective 64-bit mixer.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A per-worker seed: the worker index, the address of a stack slot (differs per thread/ASLR run)
/// and the wall clock, mixed together. Never fails: a clock before the epoch contributes 0.
pub(crate) fn seed_for_worker(worker: usize) -> u64 {
    let stack_slot = 0u8;
    let addr = std::ptr::addr_of!(stack_slot) as usize as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix64(worker as u64) ^ splitmix64(addr.rotate_left(17) ^ nanos)
}
