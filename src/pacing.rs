//! Refusal pacing: a refused password login takes as long as the upstream takes to refuse one,
//! so the time of a refusal does not tell an outsider which accounts exist or are allowed.
//!
//! Without it, a login mailgate refuses itself (unknown user, suspended, protocol off, a
//! credential it will not replay) answers in a few milliseconds, while a wrong password for a
//! real account waits for the upstream's failure delay (Dovecot `auth_failure_delay`, 2 s by
//! default): a free, silent account-enumeration oracle (issue 10, item 4).
//!
//! Inputs: the latency of each login the upstream rejected ([`Pacing::rejected`]), per
//! upstream; a random number and the configured floor per question. Output: how long to wait
//! before sending a refusal. Pure bookkeeping: nothing here sleeps, the session waits (a timer
//! only, no upstream connection held). Memory: [`WINDOW`] durations per upstream name.
//!
//! The schedule: a policy refusal waits a latency drawn uniformly from the last [`WINDOW`]
//! rejections of the upstream it would have asked (the empirical distribution, so a slow
//! upstream and a jittery one are both matched), never less than the floor; an upstream
//! rejection is padded up to the floor. Both then follow `max(floor, upstream latency)`.
//! Before the first rejection of an upstream is seen, policy refusals wait the floor.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Rejection latencies remembered per upstream: enough for the draw to follow the upstream's
/// jitter, and recent enough to follow a change of its load or delay within ~100 failures
/// (a longer memory lagged behind load swings in the timing test). 128 × 16 bytes.
pub const WINDOW: usize = 128;

/// Shared by every session (in `server::Shared`), so what was learnt survives reloads.
#[derive(Debug, Default)]
pub struct Pacing {
    upstreams: Mutex<HashMap<String, VecDeque<Duration>>>,
}

impl Pacing {
    pub fn new() -> Pacing {
        Pacing::default()
    }

    /// The upstream `name` rejected a login after `took` (connect, TLS, greeting and the
    /// replayed login).
    pub fn rejected(&self, name: &str, took: Duration) {
        let mut map = self.lock();
        // Bounded: one entry per configured upstream name (names come from the config only).
        let window = map.entry(name.to_owned()).or_default();
        if window.len() >= WINDOW {
            window.pop_front();
        }
        window.push_back(took);
    }

    /// How long to wait before answering a password login that policy refused, for a login
    /// that would have gone to upstream `name`: a latency drawn from its rejections with
    /// `random`, at least `floor`.
    pub fn policy_refusal(&self, name: &str, floor: Duration, random: u64) -> Duration {
        let map = self.lock();
        let drawn = map.get(name).and_then(|w| {
            let len = u64::try_from(w.len()).ok().filter(|n| *n > 0)?;
            let i = usize::try_from(random % len).ok()?;
            w.get(i).copied()
        });
        drawn.unwrap_or(floor).max(floor)
    }

    /// How much longer to wait before relaying an upstream rejection that took `took`.
    pub fn upstream_refusal(floor: Duration, took: Duration) -> Duration {
        floor.saturating_sub(took)
    }

    /// Learnt latencies of `name`, oldest first (for tests and diagnostics).
    pub fn observed(&self, name: &str) -> Vec<Duration> {
        self.lock()
            .get(name)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Duration>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single pushes
        // and pops), so a poisoned lock is still good to use.
        self.upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A random draw for [`Pacing::policy_refusal`]. Not a secret: it only picks which observed
/// latency to replay, and every candidate is a real upstream timing. `RandomState` is seeded
/// from the OS once per thread and advanced per call.
pub fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn before_any_rejection_a_policy_refusal_waits_the_floor() {
        let p = Pacing::new();
        assert_eq!(p.policy_refusal("up", 2000 * MS, 7), 2000 * MS);
        assert_eq!(p.policy_refusal("up", Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn policy_refusals_replay_observed_rejections_of_their_upstream() {
        let p = Pacing::new();
        for ms in [1000, 1500, 1200] {
            p.rejected("slow", ms * MS);
        }
        p.rejected("fast", 5 * MS);
        let drawn: Vec<_> = (0..3)
            .map(|r| p.policy_refusal("slow", Duration::ZERO, r))
            .collect();
        assert_eq!(drawn, [1000 * MS, 1500 * MS, 1200 * MS]);
        assert_eq!(p.policy_refusal("fast", Duration::ZERO, 99), 5 * MS);
        // The floor holds both ways.
        assert_eq!(p.policy_refusal("fast", 800 * MS, 0), 800 * MS);
        assert_eq!(Pacing::upstream_refusal(800 * MS, 5 * MS), 795 * MS);
        assert_eq!(
            Pacing::upstream_refusal(800 * MS, 1000 * MS),
            Duration::ZERO
        );
    }

    #[test]
    fn the_window_keeps_the_latest() {
        let p = Pacing::new();
        for i in 0..(WINDOW as u32 + 10) {
            p.rejected("up", i * MS);
        }
        let seen = p.observed("up");
        assert_eq!(seen.len(), WINDOW);
        assert_eq!(seen.first(), Some(&(10 * MS)));
    }

    #[test]
    fn draws_vary() {
        let draws: std::collections::HashSet<_> = (0..64).map(|_| random() % 1000).collect();
        assert!(draws.len() > 10, "{draws:?}");
    }
}
