//! The verdict cache: SHA-256 of a token → verdict, each entry with its own deadline.
//!
//! Bounded: at capacity, expired entries go first, then the one closest to expiry (O(n), only
//! when full). Keys are digests, so a heap dump or a debug print of the cache holds no token.

use std::collections::HashMap;

use tokio::time::Instant;

use super::Verdict;

pub(super) struct Cache {
    entries: HashMap<[u8; 32], (Verdict, Instant)>,
    capacity: usize,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Verdict> {
        match self.entries.get(key) {
            Some((verdict, until)) if *until > now => Some(verdict.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn insert(&mut self, key: [u8; 32], verdict: Verdict, until: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries.retain(|_, (_, t)| *t > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k)
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (verdict, until));
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{AuthError, InvalidReason};

    #[test]
    fn bounded_and_expiring() {
        let now = Instant::now();
        let mut c = Cache::new(2);
        let bad = || Err(AuthError::Invalid(InvalidReason::Expired));
        c.insert([1; 32], bad(), now + Duration::from_secs(10));
        c.insert([2; 32], bad(), now + Duration::from_secs(20));
        c.insert([3; 32], bad(), now + Duration::from_secs(30));
        assert_eq!(c.len(), 2);
        assert!(c.get(&[1; 32], now).is_none(), "soonest evicted");
        assert!(c.get(&[3; 32], now).is_some());
        assert!(
            c.get(&[2; 32], now + Duration::from_secs(21)).is_none(),
            "expired"
        );
        assert_eq!(c.len(), 1);
    }
}
