//! Abuse limits that span connections: failed-login throttling per IP and per user (growing
//! delay, then a temporary block). Concurrent connections per IP are `crate::conn_limit`'s.
//!
//! Pure bookkeeping: time is passed in, nothing here sleeps or does I/O; the session applies
//! the verdicts (waits the delay before answering, refuses while blocked). Memory is bounded:
//! each table holds at most [`MAX_ENTRIES`] keys and sheds its stalest entries beyond that.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys one table tracks: 100k IPs or users is ~10 MB, and an attacker rotating
/// addresses past that only evicts stale entries.
pub const MAX_ENTRIES: usize = 100_000;

/// Settings, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed logins from one IP within `window` before it is blocked.
    pub failures_per_ip: u32,
    /// Failed logins for one user within `window` before the user is blocked.
    pub failures_per_user: u32,
    pub window: Duration,
    /// How long a block lasts.
    pub block: Duration,
    /// Delay before answering the first failure; doubles with each further one.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            failures_per_ip: 20,
            failures_per_user: 10,
            window: Duration::from_secs(15 * 60),
            block: Duration::from_secs(15 * 60),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Proceed,
    /// Refuse without asking the upstream, until the block ends.
    Blocked { until: Instant },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Shared by every session.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    ips: Mutex<HashMap<IpAddr, Entry>>,
    users: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            ips: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// May a login by `user` from `ip` go ahead now?
    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> Verdict {
        let ip_block = blocked(&lock(&self.ips), &ip, now);
        let user_block = blocked(&lock(&self.users), &user.to_lowercase(), now);
        match ip_block.into_iter().chain(user_block).max() {
            Some(until) => Verdict::Blocked { until },
            None => Verdict::Proceed,
        }
    }

    /// Record a failed login; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let c = &self.config;
        let ip_failures = record(&mut lock(&self.ips), ip, now, c, c.failures_per_ip);
        let user_failures = record(
            &mut lock(&self.users),
            user.to_lowercase(),
            now,
            c,
            c.failures_per_user,
        );
        let n = ip_failures.max(user_failures).saturating_sub(1).min(16);
        c.base_delay.saturating_mul(1 << n).min(c.max_delay)
    }

    /// A successful login clears the user's failures (not the IP's: one good account must not
    /// launder a password-spraying address).
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).remove(&user.to_lowercase());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another session panicked mid-update of plain counters.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn blocked<K: std::hash::Hash + Eq>(
    map: &HashMap<K, Entry>,
    key: &K,
    now: Instant,
) -> Option<Instant> {
    map.get(key)
        .and_then(|e| e.blocked_until)
        .filter(|until| *until > now)
}

/// Count one failure for `key`; returns the failures in the current window.
fn record<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    key: K,
    now: Instant,
    c: &ThrottleConfig,
    threshold: u32,
) -> u32 {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        shed(map, now, c);
    }
    let e = map.entry(key).or_insert(Entry {
        failures: 0,
        window_start: now,
        blocked_until: None,
        last: now,
    });
    if now.saturating_duration_since(e.window_start) > c.window {
        e.failures = 0;
        e.window_start = now;
    }
    e.failures = e.failures.saturating_add(1);
    e.last = now;
    if threshold != 0 && e.failures >= threshold {
        e.blocked_until = Some(now + c.block);
    }
    e.failures
}

/// Drop entries whose window and block are over; if none are, the oldest tenth.
fn shed<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    now: Instant,
    c: &ThrottleConfig,
) {
    map.retain(|_, e| {
        now.saturating_duration_since(e.last) <= c.window
            || e.blocked_until.is_some_and(|u| u > now)
    });
    if map.len() >= MAX_ENTRIES {
        let mut by_age: Vec<(K, Instant)> = map.iter().map(|(k, e)| (k.clone(), e.last)).collect();
        by_age.sort_by_key(|(_, last)| *last);
        for (k, _) in by_age.into_iter().take(MAX_ENTRIES / 10) {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn delay_grows_and_caps() {
        let t = Throttle::new(ThrottleConfig {
            failures_per_ip: 0,
            failures_per_user: 0,
            ..Default::default()
        });
        let now = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|_| t.failed(ip(1), "a@x", now).as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(t.check(ip(1), "a@x", now), Verdict::Proceed);
    }

    #[test]
    fn user_blocked_after_threshold_then_released() {
        let c = ThrottleConfig {
            failures_per_user: 3,
            ..Default::default()
        };
        let t = Throttle::new(c);
        let now = Instant::now();
        for n in 1..=3u8 {
            assert_eq!(t.check(ip(n), "Alice@X", now), Verdict::Proceed);
            t.failed(ip(n), "alice@x", now);
        }
        // Blocked whatever the address and the case of the name.
        let Verdict::Blocked { until } = t.check(ip(9), "ALICE@x", now) else {
            panic!("not blocked")
        };
        assert_eq!(until, now + c.block);
        assert_eq!(t.check(ip(9), "bob@x", now), Verdict::Proceed);
        assert_eq!(t.check(ip(9), "alice@x", until), Verdict::Proceed);
    }

    #[test]
    fn ip_blocked_after_threshold_and_success_does_not_clear_it() {
        let t = Throttle::new(ThrottleConfig {
            failures_per_ip: 2,
            ..Default::default()
        });
        let now = Instant::now();
        t.failed(ip(1), "a@x", now);
        t.failed(ip(1), "b@x", now);
        t.succeeded("b@x");
        assert!(matches!(
            t.check(ip(1), "c@x", now),
            Verdict::Blocked { .. }
        ));
        assert_eq!(t.check(ip(2), "c@x", now), Verdict::Proceed);
    }

    #[test]
    fn window_resets_the_count() {
        let c = ThrottleConfig {
            failures_per_user: 2,
            ..Default::default()
        };
        let t = Throttle::new(c);
        let now = Instant::now();
        t.failed(ip(1), "a@x", now);
        t.failed(ip(1), "a@x", now + c.window + Duration::from_secs(1));
        assert_eq!(
            t.check(ip(1), "a@x", now + c.window + Duration::from_secs(1)),
            Verdict::Proceed
        );
    }

    #[test]
    fn success_clears_user_failures() {
        let t = Throttle::new(ThrottleConfig {
            failures_per_user: 2,
            ..Default::default()
        });
        let now = Instant::now();
        t.failed(ip(1), "a@x", now);
        t.succeeded("a@x");
        t.failed(ip(1), "a@x", now);
        assert_eq!(t.check(ip(1), "a@x", now), Verdict::Proceed);
    }

    #[test]
    fn tables_stay_bounded() {
        let t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for n in 0..(MAX_ENTRIES + 10) {
            t.failed(
                IpAddr::from((n as u32).to_be_bytes()),
                &format!("u{n}"),
                now,
            );
        }
        assert!(lock(&t.ips).len() <= MAX_ENTRIES);
        assert!(lock(&t.users).len() <= MAX_ENTRIES);
    }
}
