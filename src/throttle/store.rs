//! The counter store behind smart lockout: every count, block, familiar source and remembered
//! wrong password lives here, so one instance or a fleet (Redis) enforces the same limits.
//!
//! Pure bookkeeping with time passed in (`now`, milliseconds since the Unix epoch, so the
//! same values can live in Redis); the in-process backend does no I/O. Each operation below is
//! ONE atomic step: the local backend holds one mutex for its whole body, a Redis backend runs
//! it as one Lua script. Limits are arguments of every call, never stored, so a reload that
//! changes `[limits]` applies to the next call while the counts survive.
//!
//! # Keys (bounded size whatever the client sends)
//!
//! | key            | holds                                            | Redis sketch             |
//! |----------------|--------------------------------------------------|--------------------------|
//! | `u:{U}:f`      | counter: user U's failures from familiar sources | hash + zset `…:r`        |
//! | `u:{U}:u`      | counter: user U's failures from unfamiliar ones  | hash + zset `…:r`        |
//! | `s:{S}`        | counter: password failures from source S         | hash + zset `…:r`        |
//! | `t:{S}`        | counter: invalid OAuth tokens from source S      | hash + zset `…:r`        |
//! | `p:{U}`        | the last [`REMEMBERED_PASSWORDS`] wrong-password hashes of U, each with its time | zset |
//! | `k:{U}`        | U's familiar sources, each with its expiry       | zset member S, score exp |
//!
//! `U` is [`UserKey`]: the first 16 bytes of SHA-256 of the lowercased user name, as 32 hex
//! digits (unkeyed, so every instance and the helpdesk CLI compute the same key without the
//! secret). `S` is [`SourceKey`]: an IPv4 address, or an IPv6 /64 prefix (`2001:db8:1:2::/64`;
//! one IPv6 host owns a whole /64, so per-address counting would be free to evade); an
//! IPv4-mapped IPv6 address counts as its IPv4 address. Password hashes are [`PasswordHash`]:
//! HMAC-SHA256 of the user and attempted secret under the process key (see `throttle::Key`),
//! truncated to 16 bytes; the secret itself never reaches the store.
//!
//! # A counter
//!
//! Fields: `failures`, `window_start`, `blocked_until`, and in-flight reservations (ticket id →
//! expiry). Every operation that touches a counter first *refreshes* it at `now`:
//! - failures older than the window are forgotten: if `now - window_start > window`, then
//!   `failures = 0, window_start = now`;
//! - a block that ended is dropped: if `blocked_until <= now`, it is cleared;
//! - reservations whose expiry `<= now` are dropped (an instance died between reserve and
//!   settle; [`RESERVATION_TTL`] outlives any login, so a live one is never dropped).
//!
//! A counter with threshold `T` (0 = that limit is off: never blocked, nothing reserved) is
//! **refusing** at `now` when `blocked_until > now` (a *block*), or when
//! `failures + reservations >= T` (*full*: attempts in flight could still reach the limit, so
//! no more may go to the upstream until they are settled).
//!
//! Counting one failure: `failures += 1` (first failure of a window sets `window_start = now`),
//! and when `failures >= T`: `blocked_until = now + block`, `failures = 0`, `window_start = now`
//! (the block carries the state; after it a fresh window starts). A key may expire once it has
//! no failures, no block and no reservations (Redis: `PEXPIRE` to the latest of window end,
//! block end and reservation expiry).
//!
//! # Operations
//!
//! **[`Store::reserve`]`(attempt, limits, now)`** — take the slot before the upstream is asked.
//! 1. Password attempt (user U, source S): the user side is `f` when S is in `k:{U}` with an
//!    expiry `> now` (expired members are removed), else `u`. The counters are `s:{S}`
//!    (threshold `limits.source_failures`) and `u:{U}:{side}` (`limits.user_failures`); on the
//!    familiar side only `u:{U}:f` (a source familiar to the user is not held to the source
//!    limit, so an office NAT where many people mistype does not lock out its own users).
//!    Token attempt (source S): the one counter `t:{S}` (`limits.token_failures`).
//! 2. Refresh the counters. If any is refusing, change nothing and answer
//!    [`Admission::Refused`] with the refusing counter (source before user) and its
//!    `blocked_until` (`None` when only full; the caller, `Throttle::reserve`, then retries
//!    for up to `throttle::SLOT_WAIT` before refusing the login, so a user's own burst is
//!    served while no more than `T` attempts are ever in flight).
//! 3. Otherwise add one reservation (a fresh ticket id, expiry `now + RESERVATION_TTL`) to each
//!    counter whose threshold is not 0 and answer [`Admission::Proceed`] with a [`Ticket`]
//!    naming the counters, the side, and the id.
//!
//! **[`Store::settle`]`(ticket, outcome, limits, now)`** — the outcome of a reserved attempt.
//! Removes the ticket's reservation from each of its counters (missing: nothing to remove,
//! e.g. after `clear`), refreshes them, then:
//! - [`Outcome::Succeeded`] (password): `u:{U}:{side}` loses its failures and block (other
//!   reservations stay: those attempts are still in flight), `p:{U}` is deleted; S is added to
//!   `k:{U}` with expiry `now + familiar_for` (if `k:{U}` then holds more than
//!   [`MAX_FAMILIAR`] members, those with the earliest expiry are removed). The source counter
//!   keeps its failures: one good account must not launder a spraying address.
//! - [`Outcome::Failed`]`(hash)` (password): members of `p:{U}` older than `window` are
//!   removed. If `hash` is in `p:{U}` it is a *repeat*: its time is set to `now` and nothing is
//!   counted. Otherwise it is added (beyond [`REMEMBERED_PASSWORDS`], the oldest go) and one
//!   failure is counted on each of the ticket's counters (as chosen in `reserve`). Failed without a hash (the attempt
//!   carried no password, e.g. a refused SASL exchange) always counts.
//!   Token attempt: one failure is counted on `t:{S}`.
//! - [`Outcome::Void`]: nothing else (the upstream or IdP was unavailable: not the user's
//!   fault, not evidence of guessing).
//!
//! Answers [`Settled`]: the user side's failure count after the operation (the session derives
//! the growing answer delay from it), and whether this was a repeat.
//!
//! **[`Store::status`]`(user, source, now)`** — read-only: the refreshed counters of the user
//! (both sides), the number of remembered wrong passwords, the unexpired familiar sources; and
//! of the source (password and token counters). Missing keys read as zero.
//!
//! **[`Store::clear`]`(target, now)`** — the helpdesk's unlock. A user: deletes `u:{U}:f`,
//! `u:{U}:u`, `p:{U}` (familiar sources stay: they are the user's, not the attacker's). A
//! source: deletes `s:{S}` and `t:{S}`. Answers whether anything was there.
//!
//! # Notes for a shared (Redis) backend
//!
//! - Ticket ids must be unique across the fleet (`INCR` of one key, or 64 random bits); id 0
//!   is [`Ticket::unreserved`]: settling it removes nothing and records the outcome.
//! - `now` is the caller's wall clock; a script may use the server's `TIME` instead, so that
//!   skewed instances agree. Keep every stored time in milliseconds since the epoch.
//! - A reservation zset member is the ticket id, its score the expiry; `ZREMRANGEBYSCORE
//!   key -inf now` is the refresh step, `ZCARD` the reservation count.
//! - An unavailable store must not refuse everyone: `Store` methods answer `Err` only when no
//!   local fallback can answer either, and then the caller lets the attempt through unreserved.
//!
//! # Bounds
//!
//! Local backend: each table holds at most [`MAX_ENTRIES`] keys; beyond that, entries with no
//! failures, block or reservation go first, then the stalest tenth. Redis: key expiry.

use core::net::IpAddr;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Most keys one local table tracks: 100k users or sources is a few tens of MB at most, and an
/// attacker rotating addresses past that only sheds idle entries.
pub const MAX_ENTRIES: usize = 100_000;

/// Wrong-password hashes remembered per user (Entra smart lockout remembers 3; 8 covers a
/// user with several devices, each with its own stale password).
pub const REMEMBERED_PASSWORDS: usize = 8;

/// Familiar sources remembered per user (home, office, phone networks, a few travels).
pub const MAX_FAMILIAR: usize = 32;

/// How long an unsettled reservation holds its slot: longer than any upstream connect + login
/// (timeouts of 30 s each by default) plus the answer delay, so only a reservation whose
/// instance died ever expires.
pub const RESERVATION_TTL: Duration = Duration::from_secs(5 * 60);

/// Milliseconds since the Unix epoch: the store's clock, the same on every instance of a fleet.
pub type Millis = u64;

/// The limits a store operation applies; passed in on every call (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Failures per user side (familiar / unfamiliar, counted apart) before that side blocks.
    pub user_failures: u32,
    /// Password failures from one source before it blocks.
    pub source_failures: u32,
    /// Invalid OAuth tokens from one source before it blocks its token logins.
    pub token_failures: u32,
    pub window: Duration,
    pub block: Duration,
    pub familiar_for: Duration,
}

/// A user's store key (see the module doc): never the name itself, so key size is bounded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey([u8; 16]);

impl UserKey {
    pub fn of(user: &str) -> UserKey {
        let digest = Sha256::digest(user.to_lowercase().as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        UserKey(key)
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({self})")
    }
}

/// A source's store key: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    SourceKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

impl fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceKey({self})")
    }
}

/// A keyed hash of an attempted password (see `throttle::Key`); comparable, never reversible.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordHash(pub [u8; 16]);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// What is being attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A login with a password (or any non-OAuth mechanism) for `user` from `source`.
    Password { user: UserKey, source: SourceKey },
    /// An OAuth bearer login from `source`, before its token is verified.
    Token { source: SourceKey },
}

/// Which side of a user's failures an attempt counts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Familiar,
    Unfamiliar,
}

/// Which counter refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Source,
    User(Side),
    Token,
}

/// The answer to [`Store::reserve`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Proceed ticket must be settled, or its slot stays taken until it expires"]
pub enum Admission {
    Proceed(Ticket),
    /// Refuse without asking the upstream. `until` is the end of a block; `None` when the
    /// counter is only full of attempts in flight.
    Refused {
        scope: Scope,
        until: Option<Millis>,
    },
}

/// A reserved attempt: settle it with its outcome.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "settle the ticket, or its slot stays taken until it expires"]
pub struct Ticket {
    pub attempt: Attempt,
    /// The user side (for a token attempt: unused, `Unfamiliar`).
    pub side: Side,
    id: u64,
}

impl Ticket {
    /// A ticket that holds no reservation (the store could not take one); settling it only
    /// records the outcome.
    pub fn unreserved(attempt: Attempt) -> Ticket {
        Ticket {
            attempt,
            side: Side::Unfamiliar,
            id: 0,
        }
    }
}

/// How a reserved attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A refused login; the hash of the attempted password when there was one.
    Failed(Option<PasswordHash>),
    /// Neither: the upstream or IdP could not answer.
    Void,
}

/// The answer to [`Store::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    /// Failures on the attempt's user side (token attempts: on its source) after settling.
    pub failures: u32,
    /// The password was one of the user's remembered wrong ones: not counted again.
    pub repeat: bool,
}

/// One counter as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CounterStatus {
    pub failures: u32,
    pub in_flight: u32,
    pub blocked_until: Option<Millis>,
}

/// The answer to [`Store::status`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Status {
    pub user: Option<UserStatus>,
    pub source: Option<SourceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserStatus {
    pub familiar: CounterStatus,
    pub unfamiliar: CounterStatus,
    pub remembered_passwords: usize,
    /// Familiar sources and when each stops being familiar.
    pub familiar_sources: Vec<(String, Millis)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceStatus {
    pub password: CounterStatus,
    pub token: CounterStatus,
}

/// What `clear` unlocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(UserKey),
    Source(SourceKey),
}

/// A store that could not answer (Redis down). Never seen from the local backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
}

/// The counter store: in-process by default; a Redis backend shares it across a fleet.
pub enum Store {
    Local(LocalStore),
    /// Redis, falling back on local counters while it is away ([`shared`]).
    Redis(RedisStore),
}

impl Store {
    pub fn local() -> Store {
        Store::Local(LocalStore::default())
    }

    /// Whether the counts are where they should be: always for the local store; for Redis,
    /// whether it answers (else this instance counts alone).
    pub fn is_up(&self) -> bool {
        match self {
            Store::Local(_) => true,
            Store::Redis(s) => s.is_up(),
        }
    }

    pub async fn reserve(
        &self,
        attempt: Attempt,
        limits: &StoreLimits,
        now: Millis,
    ) -> Result<Admission, Error> {
        match self {
            Store::Local(s) => Ok(s.reserve(attempt, limits, now)),
            Store::Redis(s) => Ok(s.reserve(attempt, limits, now).await),
        }
    }

    pub async fn settle(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        limits: &StoreLimits,
        now: Millis,
    ) -> Result<Settled, Error> {
        match self {
            Store::Local(s) => Ok(s.settle(ticket, outcome, limits, now)),
            Store::Redis(s) => Ok(s.settle(ticket, outcome, limits, now).await),
        }
    }

    pub async fn status(
        &self,
        user: Option<UserKey>,
        source: Option<SourceKey>,
        limits: &StoreLimits,
        now: Millis,
    ) -> Result<Status, Error> {
        match self {
            Store::Local(s) => Ok(s.status(user, source, limits, now)),
            Store::Redis(s) => s.status(user, source, limits, now).await,
        }
    }

    pub async fn clear(&self, target: Target) -> Result<bool, Error> {
        match self {
            Store::Local(s) => Ok(s.clear(target)),
            Store::Redis(s) => s.clear(target).await,
        }
    }
}

/// Counter keys (the `u:`, `s:`, `t:` rows of the module doc's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CounterKey {
    User(UserKey, Side),
    Source(SourceKey),
    Token(SourceKey),
}

#[derive(Debug, Clone, Default)]
struct Counter {
    failures: u32,
    window_start: Millis,
    blocked_until: Option<Millis>,
    /// Ticket id → expiry. At most the threshold many: a full counter reserves no more.
    reservations: Vec<(u64, Millis)>,
    /// Last touched, for shedding.
    last: Millis,
}

impl Counter {
    fn refresh(&mut self, window: Duration, now: Millis) {
        if now.saturating_sub(self.window_start) > ms(window) {
            self.failures = 0;
            self.window_start = now;
        }
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
        }
        self.reservations.retain(|(_, expiry)| *expiry > now);
        self.last = now;
    }

    fn refusing(&self, threshold: u32, now: Millis) -> Option<Option<Millis>> {
        if threshold == 0 {
            return None;
        }
        if let Some(until) = self.blocked_until.filter(|u| *u > now) {
            return Some(Some(until));
        }
        let pending = self.failures as usize + self.reservations.len();
        (pending >= threshold as usize).then_some(None)
    }

    fn count_failure(&mut self, threshold: u32, block: Duration, now: Millis) {
        if self.failures == 0 {
            self.window_start = now;
        }
        self.failures = self.failures.saturating_add(1);
        if threshold != 0 && self.failures >= threshold {
            self.blocked_until = Some(now.saturating_add(ms(block)));
            self.failures = 0;
            self.window_start = now;
        }
    }

    fn status(&self) -> CounterStatus {
        CounterStatus {
            failures: self.failures,
            in_flight: u32::try_from(self.reservations.len()).unwrap_or(u32::MAX),
            blocked_until: self.blocked_until,
        }
    }
}

#[derive(Debug, Default)]
struct Tables {
    counters: HashMap<CounterKey, Counter>,
    /// `p:{U}`: hash → when last attempted.
    passwords: HashMap<UserKey, Vec<(PasswordHash, Millis)>>,
    /// `k:{U}`: source → expiry.
    familiar: HashMap<UserKey, Vec<(SourceKey, Millis)>>,
    next_ticket: u64,
}

/// The in-process backend: one mutex over all tables, so each operation is atomic.
#[derive(Debug, Default)]
pub struct LocalStore {
    tables: Mutex<Tables>,
}

impl LocalStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A poisoned lock only means another session panicked mid-update of plain counters.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn reserve(&self, attempt: Attempt, limits: &StoreLimits, now: Millis) -> Admission {
        let mut t = self.lock();
        let (side, keys) = t.keys(attempt, now);
        for (key, threshold) in keys.iter().flatten() {
            let counter = t.counter(*key, now);
            counter.refresh(limits.window, now);
            if let Some(until) = counter.refusing(threshold(limits), now) {
                return Admission::Refused {
                    scope: key.scope(),
                    until,
                };
            }
        }
        t.next_ticket = t.next_ticket.wrapping_add(1);
        let id = t.next_ticket;
        let expiry = now.saturating_add(ms(RESERVATION_TTL));
        for (key, threshold) in keys.iter().flatten() {
            if threshold(limits) != 0 {
                t.counter(*key, now).reservations.push((id, expiry));
            }
        }
        Admission::Proceed(Ticket { attempt, side, id })
    }

    pub fn settle(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        limits: &StoreLimits,
        now: Millis,
    ) -> Settled {
        let mut t = self.lock();
        let keys = ticket_keys(&ticket);
        for (key, _) in keys.iter().flatten() {
            if let Some(counter) = t.counters.get_mut(key) {
                counter.reservations.retain(|(id, _)| *id != ticket.id);
                counter.refresh(limits.window, now);
            }
        }
        let mut repeat = false;
        match (ticket.attempt, outcome) {
            (_, Outcome::Void) => {}
            (Attempt::Password { user, source }, Outcome::Succeeded) => {
                if let Some(c) = t.counters.get_mut(&CounterKey::User(user, ticket.side)) {
                    c.failures = 0;
                    c.blocked_until = None;
                }
                t.passwords.remove(&user);
                shed_if_full(&mut t.familiar, &user);
                let expiry = now.saturating_add(ms(limits.familiar_for));
                let known = t.familiar.entry(user).or_default();
                known.retain(|(s, e)| *s != source && *e > now);
                known.push((source, expiry));
                if known.len() > MAX_FAMILIAR {
                    known.sort_by_key(|(_, e)| std::cmp::Reverse(*e));
                    known.truncate(MAX_FAMILIAR);
                }
            }
            (Attempt::Token { .. }, Outcome::Succeeded) => {}
            (Attempt::Password { user, .. }, Outcome::Failed(hash)) => {
                if let Some(hash) = hash {
                    repeat = t.remember(user, hash, limits.window, now);
                }
                if !repeat {
                    for (key, threshold) in keys.iter().flatten() {
                        t.counter(*key, now)
                            .count_failure(threshold(limits), limits.block, now);
                    }
                }
            }
            (Attempt::Token { .. }, Outcome::Failed(_)) => {
                for (key, threshold) in keys.iter().flatten() {
                    t.counter(*key, now)
                        .count_failure(threshold(limits), limits.block, now);
                }
            }
        }
        // The count the answer delay grows with: the user side's, or the token counter's.
        let failures = keys
            .iter()
            .flatten()
            .filter(|(k, _)| !matches!(k, CounterKey::Source(_)))
            .find_map(|(k, _)| t.counters.get(k))
            .map_or(0, |c| c.failures);
        Settled { failures, repeat }
    }

    pub fn status(
        &self,
        user: Option<UserKey>,
        source: Option<SourceKey>,
        limits: &StoreLimits,
        now: Millis,
    ) -> Status {
        let mut t = self.lock();
        let mut read = |key: CounterKey| {
            t.counters
                .get_mut(&key)
                .map_or_else(CounterStatus::default, |c| {
                    c.refresh(limits.window, now);
                    c.status()
                })
        };
        let user_counters = user.map(|u| {
            (
                read(CounterKey::User(u, Side::Familiar)),
                read(CounterKey::User(u, Side::Unfamiliar)),
            )
        });
        let source = source.map(|s| SourceStatus {
            password: read(CounterKey::Source(s)),
            token: read(CounterKey::Token(s)),
        });
        let user = user.zip(user_counters).map(|(u, (familiar, unfamiliar))| {
            let window = ms(limits.window);
            UserStatus {
                familiar,
                unfamiliar,
                remembered_passwords: t.passwords.get(&u).map_or(0, |p| {
                    p.iter()
                        .filter(|(_, at)| now.saturating_sub(*at) <= window)
                        .count()
                }),
                familiar_sources: t
                    .familiar
                    .get(&u)
                    .map(|k| {
                        k.iter()
                            .filter(|(_, e)| *e > now)
                            .map(|(s, e)| (s.to_string(), *e))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        });
        Status { user, source }
    }

    pub fn clear(&self, target: Target) -> bool {
        let mut t = self.lock();
        match target {
            Target::User(u) => {
                let a = t.counters.remove(&CounterKey::User(u, Side::Familiar));
                let b = t.counters.remove(&CounterKey::User(u, Side::Unfamiliar));
                let c = t.passwords.remove(&u);
                a.is_some() || b.is_some() || c.is_some()
            }
            Target::Source(s) => {
                let a = t.counters.remove(&CounterKey::Source(s));
                let b = t.counters.remove(&CounterKey::Token(s));
                a.is_some() || b.is_some()
            }
        }
    }
}

type Threshold = fn(&StoreLimits) -> u32;

/// The counters an attempt touches, source first, each with the limit that applies to it.
fn attempt_keys(attempt: Attempt, side: Side) -> [Option<(CounterKey, Threshold)>; 2] {
    match attempt {
        // A source familiar to the user is not held to the source limit: an office NAT where
        // many users mistype must not lock out its own people.
        Attempt::Password { user, .. } if side == Side::Familiar => [
            None,
            Some((CounterKey::User(user, side), |l| l.user_failures)),
        ],
        Attempt::Password { user, source } => [
            Some((CounterKey::Source(source), |l| l.source_failures)),
            Some((CounterKey::User(user, side), |l| l.user_failures)),
        ],
        Attempt::Token { source } => [
            Some((CounterKey::Token(source), |l| l.token_failures)),
            None,
        ],
    }
}

fn ticket_keys(ticket: &Ticket) -> [Option<(CounterKey, Threshold)>; 2] {
    attempt_keys(ticket.attempt, ticket.side)
}

impl CounterKey {
    fn scope(self) -> Scope {
        match self {
            CounterKey::User(_, side) => Scope::User(side),
            CounterKey::Source(_) => Scope::Source,
            CounterKey::Token(_) => Scope::Token,
        }
    }
}

impl Tables {
    fn keys(
        &mut self,
        attempt: Attempt,
        now: Millis,
    ) -> (Side, [Option<(CounterKey, Threshold)>; 2]) {
        let side = match attempt {
            Attempt::Password { user, source } => {
                let familiar = self.familiar.get_mut(&user).is_some_and(|known| {
                    known.retain(|(_, expiry)| *expiry > now);
                    known.iter().any(|(s, _)| *s == source)
                });
                if familiar {
                    Side::Familiar
                } else {
                    Side::Unfamiliar
                }
            }
            Attempt::Token { .. } => Side::Unfamiliar,
        };
        (side, attempt_keys(attempt, side))
    }

    fn counter(&mut self, key: CounterKey, now: Millis) -> &mut Counter {
        if self.counters.len() >= MAX_ENTRIES && !self.counters.contains_key(&key) {
            shed(&mut self.counters, now);
        }
        self.counters.entry(key).or_insert_with(|| Counter {
            window_start: now,
            last: now,
            ..Counter::default()
        })
    }

    /// Remember `hash` as a wrong password of `user`; true when it already was (a repeat).
    fn remember(
        &mut self,
        user: UserKey,
        hash: PasswordHash,
        window: Duration,
        now: Millis,
    ) -> bool {
        shed_if_full(&mut self.passwords, &user);
        let seen = self.passwords.entry(user).or_default();
        seen.retain(|(_, at)| now.saturating_sub(*at) <= ms(window));
        if let Some(entry) = seen.iter_mut().find(|(h, _)| *h == hash) {
            entry.1 = now;
            return true;
        }
        seen.push((hash, now));
        if seen.len() > REMEMBERED_PASSWORDS {
            seen.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            seen.truncate(REMEMBERED_PASSWORDS);
        }
        false
    }
}

/// Before adding `key` to a full per-user table, drop the tenth of its users touched longest
/// ago.
fn shed_if_full<V>(map: &mut HashMap<UserKey, Vec<(V, Millis)>>, key: &UserKey) {
    if map.len() < MAX_ENTRIES || map.contains_key(key) {
        return;
    }
    let mut by_age: Vec<(UserKey, Millis)> = map
        .iter()
        .map(|(k, v)| (*k, v.iter().map(|(_, t)| *t).max().unwrap_or(0)))
        .collect();
    by_age.sort_by_key(|(_, t)| *t);
    for (k, _) in by_age.into_iter().take(MAX_ENTRIES / 10) {
        map.remove(&k);
    }
}

/// Drop idle counters; if none are, the tenth touched longest ago that holds no block.
fn shed(map: &mut HashMap<CounterKey, Counter>, now: Millis) {
    map.retain(|_, c| {
        c.blocked_until.is_some_and(|u| u > now)
            || c.failures > 0
            || c.reservations.iter().any(|(_, e)| *e > now)
    });
    if map.len() >= MAX_ENTRIES {
        let mut by_age: Vec<(CounterKey, Millis)> = map
            .iter()
            .filter(|(_, c)| c.blocked_until.is_none())
            .map(|(k, c)| (*k, c.last))
            .collect();
        by_age.sort_by_key(|(_, last)| *last);
        for (k, _) in by_age.into_iter().take(MAX_ENTRIES / 10) {
            map.remove(&k);
        }
    }
}

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

pub mod shared;
pub use shared::{RedisConfig, RedisStore};

#[cfg(test)]
mod tests;
