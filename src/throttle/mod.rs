//! Abuse limits that span connections: per-IP concurrent connections, and smart lockout of
//! password guessing (issue 10): failures counted per user and per source, familiar sources
//! kept apart from unfamiliar ones, a repeated wrong password counted once, attempts reserved
//! before the upstream is asked, growing delays, then blocks; invalid OAuth tokens limited on
//! their own.
//!
//! The counts live in a [`store::Store`] (in-process, or shared by a fleet); this module turns a
//! login attempt into store keys, hashes the attempted password under a key held in memory
//! only, and derives the answer delay. Time is passed in; nothing here sleeps. The settings
//! are swapped on reload ([`Throttle::reconfigure`]) while the counts stay.

pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use store::{
    Admission, Attempt, Millis, Outcome, PasswordHash, Settled, SourceKey, Store, StoreLimits,
    Ticket, UserKey,
};

/// Settings, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Concurrent connections from one IP address. 0 = no cap.
    pub connections_per_ip: usize,
    /// Password failures from one source (IPv4 address, IPv6 /64) within `window`, against
    /// users for whom it is not a familiar source, before the source is blocked.
    pub failures_per_ip: u32,
    /// Failures for one user within `window` before that side (familiar / unfamiliar sources,
    /// counted apart) is blocked.
    pub failures_per_user: u32,
    /// Invalid OAuth tokens from one source within `window` before its token logins block.
    pub token_failures_per_ip: u32,
    pub window: Duration,
    /// How long a block lasts.
    pub block: Duration,
    /// Delay before answering the first failure; doubles with each further one.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A source where the user logged in successfully stays familiar this long.
    pub familiar_for: Duration,
    /// The key for hashing attempted passwords; `None`: a random one made at start.
    pub key: Option<Key>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            // Dovecot's mail_max_userip_connections is 10 per user+IP; a NAT'd office shares
            // one address, so the per-IP cap is larger.
            connections_per_ip: 100,
            // Reasons for these in README "Password guessing".
            failures_per_ip: 20,
            failures_per_user: 10,
            token_failures_per_ip: 30,
            window: Duration::from_secs(15 * 60),
            block: Duration::from_secs(15 * 60),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            familiar_for: Duration::from_secs(30 * 86_400),
            key: None,
        }
    }
}

impl ThrottleConfig {
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimits {
            user_failures: self.failures_per_user,
            source_failures: self.failures_per_ip,
            token_failures: self.token_failures_per_ip,
            window: self.window,
            block: self.block,
            familiar_for: self.familiar_for,
        }
    }

    /// The answer delay after a failure that leaves `failures` on the counter.
    pub fn delay(&self, failures: u32) -> Duration {
        let n = failures.saturating_sub(1).min(16);
        self.base_delay.saturating_mul(1 << n).min(self.max_delay)
    }
}

/// The secret under which attempted passwords are hashed (HMAC-SHA256). Shared by a fleet
/// through `[limits] secret_file` / `secret = "env:NAME"`; otherwise random per process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// From configured secret bytes of any length.
    pub fn derive(secret: &[u8]) -> Key {
        Key(Sha256::digest(secret).into())
    }

    fn random() -> Key {
        let mut key = [0u8; 32];
        // aws-lc's system RNG; should it ever fail, a key from the clock and address space
        // still differs per process, which is all the hash needs (it is never a credential).
        if rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut key)
            .is_err()
        {
            let now = format!("{:?}{:p}", SystemTime::now(), &key);
            key = Sha256::digest(now.as_bytes()).into();
        }
        Key(key)
    }

    /// HMAC-SHA256 (RFC 2104) of `user` and `password`, truncated to 16 bytes. The user is
    /// mixed in so that one password used by two accounts gives two unrelated hashes.
    pub fn hash(&self, user: &str, password: &[u8]) -> PasswordHash {
        let user = user.to_lowercase();
        let mut message = Vec::with_capacity(8 + user.len() + password.len());
        message.extend_from_slice(&(user.len() as u64).to_be_bytes());
        message.extend_from_slice(user.as_bytes());
        message.extend_from_slice(password);
        let mac = hmac_sha256(&self.0, &message);
        message.fill(0);
        let mut out = [0u8; 16];
        out.copy_from_slice(mac.get(..16).unwrap_or(&[0; 16]));
        PasswordHash(out)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(/* REDACTED */)")
    }
}

/// RFC 2104 with SHA-256 (block size 64).
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A login attempt refused before the upstream is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub scope: store::Scope,
    /// End of the block, if it is one (else too many attempts are in flight).
    pub until: Option<Millis>,
}

/// Shared by every session.
pub struct Throttle {
    config: ArcSwap<ThrottleConfig>,
    /// Used when the config names no key; made once, so a reload keeps remembered hashes.
    random_key: Key,
    connections: Mutex<HashMap<IpAddr, usize>>,
    store: Store,
}

/// Holds one connection slot of an IP; frees it on drop.
#[must_use = "dropping the guard frees the connection slot at once"]
pub struct ConnectionSlot<'a> {
    throttle: &'a Throttle,
    ip: IpAddr,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.throttle.connections);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle::with_store(config, Store::local())
    }

    pub fn with_store(config: ThrottleConfig, store: Store) -> Throttle {
        Throttle {
            config: ArcSwap::from_pointee(config),
            random_key: Key::random(),
            connections: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<ThrottleConfig> {
        self.config.load_full()
    }

    /// Apply new settings (a reload); every count, block and familiar source stays.
    pub fn reconfigure(&self, config: ThrottleConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Take a connection slot for `ip`, or `None` when the IP is at its cap.
    pub fn connect(&self, ip: IpAddr) -> Option<ConnectionSlot<'_>> {
        let cap = self.config.load().connections_per_ip;
        let mut map = lock(&self.connections);
        let n = map.entry(ip).or_insert(0);
        if cap != 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot { throttle: self, ip })
    }

    /// Reserve a password attempt by `user` from `ip` before the upstream is asked.
    pub async fn reserve_password(&self, ip: IpAddr, user: &str) -> Result<Ticket, Refused> {
        let attempt = Attempt::Password {
            user: UserKey::of(user),
            source: SourceKey::of(ip),
        };
        self.reserve(attempt).await
    }

    /// Reserve an OAuth attempt from `ip` before its token is verified.
    pub async fn reserve_token(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        self.reserve(Attempt::Token {
            source: SourceKey::of(ip),
        })
        .await
    }

    async fn reserve(&self, attempt: Attempt) -> Result<Ticket, Refused> {
        let limits = self.config.load().store_limits();
        match self.store.reserve(attempt, &limits, now_ms()).await {
            Ok(Admission::Proceed(ticket)) => Ok(ticket),
            Ok(Admission::Refused { scope, until }) => Err(Refused { scope, until }),
            // A store that cannot answer keeps its own local fallback (the Redis backend); the
            // attempt is let through unreserved rather than refusing everyone, which is what
            // an attacker would want.
            Err(e) => {
                tracing::warn!(error = %e, "counter store unavailable; attempt not reserved");
                Ok(Ticket::unreserved(attempt))
            }
        }
    }

    /// The hash a failed password is remembered by.
    pub fn password_hash(&self, user: &str, password: &[u8]) -> PasswordHash {
        self.config
            .load()
            .key
            .unwrap_or(self.random_key)
            .hash(user, password)
    }

    /// Settle a reserved attempt; returns how long to wait before answering it (zero unless
    /// it failed).
    pub async fn settle(&self, ticket: Ticket, outcome: Outcome) -> Duration {
        let config = self.config.load();
        let limits = config.store_limits();
        match self.store.settle(ticket, outcome, &limits, now_ms()).await {
            Ok(Settled { failures, .. }) if matches!(outcome, Outcome::Failed(_)) => {
                config.delay(failures.max(1))
            }
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(error = %e, "counter store unavailable; outcome not recorded");
                config.delay(1)
            }
        }
    }
}

/// The store's clock: wall time, the same on every instance of a fleet.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another session panicked mid-update of plain counters.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn delay_grows_and_caps() {
        let c = ThrottleConfig::default();
        let delays: Vec<_> = (1..=6).map(|n| c.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes, zero-padded the same way,
        // so "Jefe" padded with zeros to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn password_hashes_depend_on_key_user_and_password() {
        let a = Key::derive(b"one");
        let b = Key::derive(b"two");
        assert_eq!(a.hash("Alice", b"pw"), a.hash("alice", b"pw"));
        assert_ne!(a.hash("alice", b"pw"), b.hash("alice", b"pw"));
        assert_ne!(a.hash("alice", b"pw"), a.hash("bob", b"pw"));
        assert_ne!(a.hash("alice", b"pw"), a.hash("alice", b"pw2"));
        assert_eq!(format!("{a:?}"), "Key(/* REDACTED */)");
    }

    #[tokio::test]
    async fn reconfigure_applies_new_limits_and_keeps_counts() {
        let t = Throttle::new(ThrottleConfig::default());
        let ticket = t.reserve_password(ip(1), "a@x").await.unwrap();
        t.settle(ticket, Outcome::Failed(None)).await;
        t.reconfigure(ThrottleConfig {
            failures_per_user: 1,
            ..Default::default()
        });
        // The one failure counted before the reload now reaches the lower limit.
        assert!(t.reserve_password(ip(2), "a@x").await.is_err());
        assert!(t.reserve_password(ip(2), "b@x").await.is_ok());
    }

    #[test]
    fn connection_cap_per_ip() {
        let t = Throttle::new(ThrottleConfig {
            connections_per_ip: 2,
            ..Default::default()
        });
        let a = t.connect(ip(1)).expect("first");
        let _b = t.connect(ip(1)).expect("second");
        assert!(t.connect(ip(1)).is_none());
        assert!(t.connect(ip(2)).is_some());
        drop(a);
        assert!(t.connect(ip(1)).is_some());
    }
}
