//! Test helpers shared by the POP3 machine tests: the chunkings every transcript is re-run
//! with (whole, one byte at a time, and seeded random splits).

/// Ways to cut one write into reads: `None` is the whole write at once.
pub fn chunkings() -> Vec<Option<u64>> {
    let mut all = vec![None, Some(0)];
    all.extend((1..=12).map(Some));
    all
}

/// Split `bytes` per `chunking`: `Some(0)` is one byte at a time, `Some(seed)` random sizes
/// from 1 to 16 (xorshift; deterministic, so a failure names its seed).
pub fn split(bytes: &[u8], chunking: Option<u64>, out: &mut impl FnMut(&[u8])) {
    match chunking {
        None => out(bytes),
        Some(0) => bytes.chunks(1).for_each(&mut *out),
        Some(seed) => {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rest = bytes;
            while !rest.is_empty() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let n = (state % 16 + 1) as usize;
                let (head, tail) = rest.split_at(n.min(rest.len()));
                out(head);
                rest = tail;
            }
        }
    }
}

/// An arbitrary base instant for tests. std has no `Instant` constructor but the clock, so this
/// one read stays here, in test code only; the machines never read the clock themselves (the
/// the no-clock grep of scripts/test should skip `testing.rs`).
pub fn t0() -> std::time::Instant {
    std::time::Instant::now()
}
