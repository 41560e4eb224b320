//! Abuse limits that span connections: smart lockout of password guessing (issue 10). Failures
//! are counted per user and per source, familiar sources kept apart from unfamiliar ones, a
//! repeated wrong password counted once, attempts reserved before the upstream is asked,
//! growing delays, then blocks; invalid OAuth tokens are limited on their own. Concurrent
//! connections per IP are `crate::conn_limit`'s.
//!
//! The counts live in a [`store::Store`] (in-process, or shared by a fleet); this module turns a
//! login attempt into store keys, hashes the attempted password under a key held in memory
//! only, derives the answer delay, and waits briefly for a slot held by attempts in flight.
//! The settings are swapped on reload ([`Throttle::reconfigure`]) while the counts stay.

pub mod store;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use store::{
    Admission, Attempt, Millis, Outcome, PasswordHash, Settled, SourceKey, Store, StoreLimits,
    Ticket, UserKey,
};

/// Longest an attempt waits for a slot held by attempts in flight before it is refused as
/// rate limited: several upstream logins' time (Dovecot answers a good password in
/// milliseconds, a wrong one after its failure delay of up to 2 s by default).
pub const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Settings, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
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
            // Reasons for these in docs/operations.md "Password guessing".
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
        // Fed in pieces: the password is never copied into a buffer of our own.
        let mac = hmac_sha256(
            &self.0,
            &[
                &(user.len() as u64).to_be_bytes(),
                user.as_bytes(),
                password,
            ],
        );
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

/// RFC 2104 with SHA-256 (block size 64); the message is the concatenation of `message`.
fn hmac_sha256(key: &[u8; 32], message: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new().chain_update(pad(0x36));
    for part in message {
        inner.update(part);
    }
    let inner = inner.finalize();
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
    store: Store,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle::with_store(config, Store::local())
    }

    pub fn with_store(config: ThrottleConfig, store: Store) -> Throttle {
        Throttle {
            config: ArcSwap::from_pointee(config),
            random_key: Key::random(),
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

    /// Reserve a password attempt by `user` from `ip` before the upstream is asked.
    pub async fn reserve_password(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &str,
    ) -> Result<Reservation, Refused> {
        let attempt = Attempt::Password {
            user: UserKey::of(user),
            source: SourceKey::of(ip),
        };
        self.reservation(attempt).await
    }

    /// Reserve an OAuth attempt from `ip` before its token is verified.
    pub async fn reserve_token(self: &Arc<Self>, ip: IpAddr) -> Result<Reservation, Refused> {
        self.reservation(Attempt::Token {
            source: SourceKey::of(ip),
        })
        .await
    }

    async fn reservation(self: &Arc<Self>, attempt: Attempt) -> Result<Reservation, Refused> {
        let ticket = self.reserve(attempt).await?;
        Ok(Reservation {
            throttle: self.clone(),
            ticket: Some(ticket),
        })
    }

    /// Reserve, waiting up to [`SLOT_WAIT`] while the counter is only full of attempts in
    /// flight: most of them succeed and free their slots within one upstream login, so a
    /// user's own burst (many devices, a client opening many connections) is served, while
    /// no more attempts than the limit are ever in flight (issue 10 item 2).
    async fn reserve(&self, attempt: Attempt) -> Result<Ticket, Refused> {
        let deadline = tokio::time::Instant::now() + SLOT_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let limits = self.config.load().store_limits();
            match self.store.reserve(attempt, &limits, now_ms()).await {
                Ok(Admission::Refused { until: None, .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return self.admitted(attempt, other),
            }
        }
    }

    fn admitted(
        &self,
        attempt: Attempt,
        admission: Result<Admission, store::Error>,
    ) -> Result<Ticket, Refused> {
        match admission {
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

/// A reserved attempt. Settle it with its outcome; dropped unsettled (the session ended
/// mid-login: the client left, the server stops), its slot is freed without counting.
#[must_use = "settle the reservation with the attempt's outcome"]
pub struct Reservation {
    throttle: Arc<Throttle>,
    ticket: Option<Ticket>,
}

impl Reservation {
    /// Record the outcome; returns how long to wait before answering (see
    /// [`Throttle::settle`]).
    pub async fn settle(mut self, outcome: Outcome) -> Duration {
        match self.ticket.take() {
            Some(ticket) => self.throttle.settle(ticket, outcome).await,
            None => Duration::ZERO,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let throttle = self.throttle.clone();
        // Without a runtime (process exit) the slot simply expires (store::RESERVATION_TTL).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                throttle.settle(ticket, Outcome::Void).await;
            });
        }
    }
}

/// The store's clock: wall time, the same on every instance of a fleet.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
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
        let t = Arc::new(Throttle::new(ThrottleConfig::default()));
        let reservation = t.reserve_password(ip(1), "a@x").await.unwrap();
        reservation.settle(Outcome::Failed(None)).await;
        t.reconfigure(ThrottleConfig {
            failures_per_user: 1,
            ..Default::default()
        });
        // The one failure counted before the reload now reaches the lower limit.
        assert!(t.reserve_password(ip(2), "a@x").await.is_err());
        assert!(t.reserve_password(ip(2), "b@x").await.is_ok());
    }

    #[tokio::test]
    async fn a_reservation_dropped_unsettled_frees_its_slot() {
        let t = Arc::new(Throttle::new(ThrottleConfig {
            failures_per_user: 1,
            ..Default::default()
        }));
        let held = t.reserve_password(ip(1), "a@x").await.unwrap();
        drop(held);
        // The release runs on a spawned task; the next reservation waits for the slot.
        let again = t.reserve_password(ip(1), "a@x").await;
        assert!(again.is_ok());
        let status = t
            .store()
            .status(
                Some(UserKey::of("a@x")),
                None,
                &t.config().store_limits(),
                now_ms(),
            )
            .await
            .unwrap();
        assert_eq!(status.user.unwrap().unfamiliar.failures, 0);
    }
}
