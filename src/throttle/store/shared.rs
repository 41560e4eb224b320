//! The Redis backend of the counter store: a fleet of mailgate instances enforces one set of
//! counts, blocks, familiar sources and remembered passwords (issue 10, item 6).
//!
//! Each [`Store`](super::Store) operation is ONE Lua script run with `EVALSHA` (the `redis`
//! crate loads it on `NOSCRIPT`), so it is atomic across the fleet exactly as the local
//! backend's mutex is within one process; the scripts implement the semantics in the parent
//! module's docs line by line. Keys are `mailgate:` plus the parent's key table (`u:{U}:f`,
//! `s:{S}`, …; `U` is a 32-hex-digit hash, `S` an address or /64: bounded whatever the client
//! sends), each with a `PEXPIRE` to the end of what it remembers. One Redis (or a Sentinel /
//! replicated primary); not Redis Cluster (a script touches a user's and a source's keys).
//!
//! Never on the hot path for long, never a reason to refuse everyone:
//! - every call is bounded by `timeout` (default 50 ms); one that fails or times out falls
//!   back to the local counters for that attempt;
//! - a connection error, or [`DOWN_AFTER`] failures in a row, marks Redis down: from then on
//!   no Redis call is made by logins at all. The local counters (which mirror this instance's
//!   own outcomes all along) apply, so a fleet of N allows at most N times the limits, never
//!   unlimited guessing. The log says so, `mailgate_throttle_store_up` is 0 and `/readyz`
//!   names it;
//! - a background probe reconnects every [`PROBE_EVERY`]; once Redis answers, the local
//!   counts are pushed up (merged by maximum, so nothing is counted twice) and Redis is
//!   shared again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};

use super::{
    Admission, Attempt, CounterKey, CounterStatus, Error, LocalStore, MAX_FAMILIAR, Millis,
    Outcome, REMEMBERED_PASSWORDS, RESERVATION_TTL, Scope, Settled, Side, SourceKey, SourceStatus,
    Status, StoreLimits, Target, Ticket, UserKey, UserStatus, ms,
};

/// Failed or timed-out calls in a row that mark Redis down (a connection error does at once):
/// one slow answer under load is not an outage.
pub const DOWN_AFTER: u32 = 3;

/// How often a down Redis is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Default bound on one Redis call: a script on a healthy Redis answers in well under a
/// millisecond on the LAN; 50 ms is long for that and short next to a login.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Key prefix: one Redis may hold other data.
const PREFIX: &str = "mailgate:";

/// Tickets issued by Redis carry this bit, so a ticket is settled where it was reserved.
const REDIS_TICKET: u64 = 1 << 63;

/// Settings, from `[limits] store`, `store_ca_file`, `store_timeout`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL; may hold a password, so never logged or shown.
    pub url: String,
    /// PEM CA bundle for `rediss://`; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The URL without user info (`redis://:secret@host` → `redis://host`), for logs and errors.
/// Also when the scheme is missing or misplaced (`:secret@host`, a mistyped store): those are
/// echoed in the config error, and everything before the last `@` may be a password.
pub fn redacted(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let host = &url[at + 1..];
    match url.split_once("://") {
        Some((scheme, _)) if !scheme.contains('@') => format!("{scheme}://{host}"),
        _ => host.to_owned(),
    }
}

/// Build the client: checks the URL and reads the CA file (config load calls this too).
pub fn client(config: &RedisConfig) -> Result<Client, String> {
    let scheme_ok = config.url.starts_with("redis://") || config.url.starts_with("rediss://");
    if !scheme_ok {
        return Err(format!(
            "{:?}: not a redis:// or rediss:// URL",
            redacted(&config.url)
        ));
    }
    let bad = |e: RedisError| format!("{}: {e}", redacted(&config.url));
    match &config.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad)
        }
        None => Client::open(config.url.as_str()).map_err(bad),
    }
}

/// The shared store, with the local counters it falls back on.
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    where_: String,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    failures_in_a_row: AtomicU32,
    probing: AtomicBool,
    local: LocalStore,
    gauge: Gauge,
    scripts: Scripts,
    /// The limits of the latest call: the resync needs the window for expiries.
    limits: Mutex<Option<StoreLimits>>,
}

impl RedisStore {
    /// Starts down and connects in the background at once: start-up never waits for Redis.
    /// `gauge` is `mailgate_throttle_store_up`.
    pub fn new(config: &RedisConfig, gauge: Gauge) -> Result<RedisStore, String> {
        let client = client(config)?;
        gauge.set(0);
        let store = RedisStore {
            inner: Arc::new(Inner {
                client,
                where_: redacted(&config.url),
                timeout: config.timeout,
                conn: Mutex::new(None),
                up: AtomicBool::new(false),
                failures_in_a_row: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                local: LocalStore::default(),
                gauge,
                scripts: Scripts::new(),
                limits: Mutex::new(None),
            }),
        };
        store.inner.probe(Duration::ZERO);
        Ok(store)
    }

    /// Whether Redis is answering (the counts are shared).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    pub async fn reserve(&self, attempt: Attempt, limits: &StoreLimits, now: Millis) -> Admission {
        let inner = &self.inner;
        inner.remember(limits);
        let answer = match attempt {
            Attempt::Password { user, source } => {
                let mut call = inner.scripts.reserve_password.prepare_invoke();
                call.key(key(&format!("k:{user}")))
                    .key(counter(CounterKey::User(user, Side::Familiar)))
                    .key(counter(CounterKey::User(user, Side::Unfamiliar)))
                    .key(counter(CounterKey::Source(source)))
                    .key(key("ticket"))
                    .arg(now)
                    .arg(ms(limits.window))
                    .arg(ms(limits.block))
                    .arg(source.to_string())
                    .arg(limits.user_failures)
                    .arg(limits.source_failures)
                    .arg(ms(RESERVATION_TTL));
                inner
                    .call(|mut c| async move { call.invoke_async(&mut c).await })
                    .await
            }
            Attempt::Token { source } => {
                let mut call = inner.scripts.reserve_token.prepare_invoke();
                call.key(counter(CounterKey::Token(source)))
                    .key(key("ticket"))
                    .arg(now)
                    .arg(ms(limits.window))
                    .arg(ms(limits.block))
                    .arg(limits.token_failures)
                    .arg(ms(RESERVATION_TTL));
                inner
                    .call(|mut c| async move { call.invoke_async(&mut c).await })
                    .await
            }
        };
        let answer: Option<(String, String, String, u64)> = answer;
        let Some((verdict, scope, side, n)) = answer else {
            return inner.local.reserve(attempt, limits, now);
        };
        let side: Side = if side == "f" {
            Side::Familiar
        } else {
            Side::Unfamiliar
        };
        if verdict == "proceed" {
            return Admission::Proceed(Ticket {
                attempt,
                side,
                id: n | REDIS_TICKET,
            });
        }
        let scope = match (scope.as_str(), attempt) {
            (_, Attempt::Token { .. }) => Scope::Token,
            ("source", _) => Scope::Source,
            _ => Scope::User(side),
        };
        if n != 0 {
            // Keep the fleet's block locally too, so it holds should Redis go away.
            inner.local.hold_block(attempt, scope, n, now);
        }
        Admission::Refused {
            scope,
            until: (n != 0).then_some(n),
        }
    }

    pub async fn settle(
        &self,
        ticket: Ticket,
        outcome: Outcome,
        limits: &StoreLimits,
        now: Millis,
    ) -> Settled {
        let inner = &self.inner;
        inner.remember(limits);
        let (code, hash) = match outcome {
            Outcome::Succeeded => ("s", String::new()),
            Outcome::Failed(hash) => ("f", hash.map(|h| hex(&h.0)).unwrap_or_default()),
            Outcome::Void => ("v", String::new()),
        };
        let shared_ticket = ticket.id & REDIS_TICKET != 0;
        // The local counters mirror this instance's outcomes all along, so that they hold
        // the moment Redis goes away; a ticket reserved locally is settled there for real.
        let mirror = Ticket {
            attempt: ticket.attempt,
            side: ticket.side,
            id: if shared_ticket { 0 } else { ticket.id },
        };
        let local = inner.local.settle(mirror, outcome, limits, now);
        let id = ticket.id & !REDIS_TICKET;
        let answer: Option<(u32, u32)> = match ticket.attempt {
            Attempt::Password { user, source } => {
                let mut call = inner.scripts.settle_password.prepare_invoke();
                call.key(key(&format!("k:{user}")))
                    .key(counter(CounterKey::User(user, ticket.side)))
                    .key(counter(CounterKey::Source(source)))
                    .key(key(&format!("p:{user}")))
                    .arg(now)
                    .arg(ms(limits.window))
                    .arg(ms(limits.block))
                    .arg(id)
                    .arg(code)
                    .arg(hash)
                    .arg(if ticket.side == Side::Familiar {
                        "f"
                    } else {
                        "u"
                    })
                    .arg(source.to_string())
                    .arg(limits.user_failures)
                    .arg(limits.source_failures)
                    .arg(ms(limits.familiar_for))
                    .arg(MAX_FAMILIAR)
                    .arg(REMEMBERED_PASSWORDS);
                inner
                    .call(|mut c| async move { call.invoke_async(&mut c).await })
                    .await
            }
            Attempt::Token { source } => {
                let mut call = inner.scripts.settle_token.prepare_invoke();
                call.key(counter(CounterKey::Token(source)))
                    .arg(now)
                    .arg(ms(limits.window))
                    .arg(ms(limits.block))
                    .arg(id)
                    .arg(code)
                    .arg(limits.token_failures);
                inner
                    .call(|mut c| async move { call.invoke_async(&mut c).await })
                    .await
            }
        };
        match answer {
            Some((failures, repeat)) => Settled {
                failures,
                repeat: repeat != 0,
            },
            None => local,
        }
    }

    pub async fn status(
        &self,
        user: Option<UserKey>,
        source: Option<SourceKey>,
        limits: &StoreLimits,
        now: Millis,
    ) -> Result<Status, Error> {
        let inner = &self.inner;
        if !self.is_up() {
            return Ok(inner.local.status(user, source, limits, now));
        }
        let u = user.map(|u| u.to_string()).unwrap_or_default();
        let s = source.map(|s| s.to_string()).unwrap_or_default();
        let mut call = inner.scripts.status.prepare_invoke();
        call.key(key(&format!("u:{u}:f")))
            .key(key(&format!("u:{u}:u")))
            .key(key(&format!("p:{u}")))
            .key(key(&format!("k:{u}")))
            .key(key(&format!("s:{s}")))
            .key(key(&format!("t:{s}")))
            .arg(now)
            .arg(ms(limits.window));
        type Raw = (Vec<u64>, Vec<u64>, usize, Vec<String>, Vec<u64>, Vec<u64>);
        let raw: Option<Raw> = inner
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await;
        let Some((uf, uu, remembered, familiar, sp, st)) = raw else {
            return Ok(inner.local.status(user, source, limits, now));
        };
        let user = user.map(|_| UserStatus {
            familiar: counter_status(&uf),
            unfamiliar: counter_status(&uu),
            remembered_passwords: remembered,
            familiar_sources: familiar
                .chunks(2)
                .filter_map(|pair| match pair {
                    [s, e] => Some((s.clone(), e.parse::<f64>().ok()? as Millis)),
                    _ => None,
                })
                .collect(),
        });
        let source = source.map(|_| SourceStatus {
            password: counter_status(&sp),
            token: counter_status(&st),
        });
        Ok(Status { user, source })
    }

    pub async fn clear(&self, target: Target) -> Result<bool, Error> {
        let inner = &self.inner;
        let local = inner.local.clear(target);
        let keys: Vec<String> = match target {
            Target::User(u) => vec![
                counter(CounterKey::User(u, Side::Familiar)),
                counter(CounterKey::User(u, Side::Unfamiliar)),
                key(&format!("p:{u}")),
            ],
            Target::Source(s) => vec![
                counter(CounterKey::Source(s)),
                counter(CounterKey::Token(s)),
            ],
        };
        if !self.is_up() {
            // The helpdesk must know the unlock did not reach the fleet.
            return Err(Error::Unavailable(format!(
                "{} is down; cleared on this instance only ({})",
                inner.where_,
                if local {
                    "it had entries"
                } else {
                    "nothing here"
                }
            )));
        }
        let mut call = inner.scripts.clear.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        let deleted: Option<u32> = inner
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await;
        match deleted {
            Some(n) => Ok(n > 0 || local),
            None => Err(Error::Unavailable(format!(
                "{} did not answer; cleared on this instance only",
                inner.where_
            ))),
        }
    }
}

impl Inner {
    fn remember(&self, limits: &StoreLimits) {
        *self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(*limits);
    }

    /// One bounded Redis call, or `None` (fall back to local): Redis down, an error or the
    /// timeout. Marks Redis down on a connection error or [`DOWN_AFTER`] failures in a row.
    async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        let (why, fatal) = match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                return Some(v);
            }
            Ok(Err(e)) => {
                let fatal = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                (e.to_string(), fatal)
            }
            Err(_) => (format!("no answer within {:?}", self.timeout), false),
        };
        let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if fatal || n >= DOWN_AFTER {
            self.down(&why);
        } else {
            tracing::debug!(store = %self.where_, error = %why, "counter store call failed; local counters for this attempt");
        }
        None
    }

    fn down(self: &Arc<Self>, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::warn!(
                store = %self.where_,
                error = %why,
                "counter store down: limits now count on this instance only, until it is back"
            );
        }
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.probe(PROBE_EVERY);
    }

    /// Reconnect in the background (one probe task at a time), resync, and go back up.
    fn probe(self: &Arc<Self>, first_wait: Duration) {
        if self.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut wait = first_wait;
            loop {
                tokio::time::sleep(wait).await;
                wait = PROBE_EVERY;
                // The store is gone (the server stopped): so is the probe.
                let Some(inner) = weak.upgrade() else { return };
                match inner.reconnect().await {
                    Ok(pushed) => {
                        inner.failures_in_a_row.store(0, Ordering::Relaxed);
                        inner.up.store(true, Ordering::Relaxed);
                        inner.gauge.set(1);
                        inner.probing.store(false, Ordering::Relaxed);
                        tracing::info!(
                            store = %inner.where_,
                            pushed,
                            "counter store up: limits are shared by the fleet"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(store = %inner.where_, error = %e, "counter store still down");
                    }
                }
            }
        });
    }

    /// Connect, check with PING, push the local counts (resync), keep the connection.
    async fn reconnect(&self) -> Result<usize, String> {
        // Connecting gets a longer bound than a call (TCP and TLS handshakes), still short.
        let connect = (self.timeout * 10).max(Duration::from_millis(500));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(connect));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let pushed = self.resync(&mut conn, connect).await?;
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
        Ok(pushed)
    }

    /// Push what this instance counted while Redis was away (and before): every counter with
    /// failures or a block, every remembered wrong password and familiar source, merged by
    /// maximum (a count Redis already holds is not added twice).
    async fn resync(
        &self,
        conn: &mut MultiplexedConnection,
        bound: Duration,
    ) -> Result<usize, String> {
        let now = super::super::now_ms();
        let window = self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map_or(Duration::from_secs(86_400), |l| l.window);
        let snapshot = self.local.snapshot(now, ms(window));
        let mut pushed = 0;
        for (k, c) in &snapshot.counters {
            let mut call = self.scripts.merge_counter.prepare_invoke();
            call.key(counter(*k))
                .arg(now)
                .arg(c.failures)
                .arg(c.window_start)
                .arg(c.blocked_until.unwrap_or(0))
                .arg(c.expires.saturating_sub(now).max(1));
            let merged: Result<Result<u32, _>, _> =
                tokio::time::timeout(bound, call.invoke_async(conn)).await;
            merged
                .map_err(|_| "resync timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            pushed += 1;
        }
        for set in &snapshot.sets {
            let mut call = self.scripts.merge_set.prepare_invoke();
            call.key(&set.key).arg(set.ttl.max(1));
            for (member, score) in &set.members {
                call.arg(member).arg(score);
            }
            let merged: Result<Result<u32, _>, _> =
                tokio::time::timeout(bound, call.invoke_async(conn)).await;
            merged
                .map_err(|_| "resync timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            pushed += 1;
        }
        Ok(pushed)
    }
}

/// A counter as the local store holds it, for the resync.
pub(super) struct CounterSnapshot {
    pub failures: u32,
    pub window_start: Millis,
    pub blocked_until: Option<Millis>,
    /// When Redis may forget it.
    pub expires: Millis,
}

/// What the local store pushes to Redis on resync.
pub(super) struct Snapshot {
    pub counters: Vec<(CounterKey, CounterSnapshot)>,
    /// Familiar sources and remembered passwords.
    pub sets: Vec<SetSnapshot>,
}

/// One sorted set to merge: its Redis key, (member, score) pairs, TTL in ms.
pub(super) struct SetSnapshot {
    pub key: String,
    pub members: Vec<(String, Millis)>,
    pub ttl: Millis,
}

impl LocalStore {
    /// Mirror a block the fleet decided (Redis refused with `until`) on the local counter.
    fn hold_block(&self, attempt: Attempt, scope: Scope, until: Millis, now: Millis) {
        let key = match (attempt, scope) {
            (Attempt::Password { source, .. }, Scope::Source) => CounterKey::Source(source),
            (Attempt::Password { user, .. }, Scope::User(side)) => CounterKey::User(user, side),
            (Attempt::Token { source }, _) | (Attempt::Password { source, .. }, Scope::Token) => {
                CounterKey::Token(source)
            }
        };
        let mut t = self.lock();
        let counter = t.counter(key, now);
        counter.blocked_until = Some(counter.blocked_until.unwrap_or(0).max(until));
    }

    pub(super) fn snapshot(&self, now: Millis, window: Millis) -> Snapshot {
        let t = self.lock();
        let counters = t
            .counters
            .iter()
            .filter(|(_, c)| c.failures > 0 || c.blocked_until.is_some_and(|b| b > now))
            .map(|(k, c)| {
                let blocked_until = c.blocked_until.filter(|b| *b > now);
                let expires = c
                    .window_start
                    .saturating_add(window)
                    .max(blocked_until.unwrap_or(0));
                (
                    *k,
                    CounterSnapshot {
                        failures: c.failures,
                        window_start: c.window_start,
                        blocked_until,
                        expires,
                    },
                )
            })
            .collect();
        let mut sets = Vec::new();
        for (user, known) in &t.familiar {
            let members: Vec<_> = known
                .iter()
                .filter(|(_, e)| *e > now)
                .map(|(s, e)| (s.to_string(), *e))
                .collect();
            if let Some(last) = members.iter().map(|(_, e)| *e).max() {
                sets.push(SetSnapshot {
                    key: key(&format!("k:{user}")),
                    members,
                    ttl: last.saturating_sub(now),
                });
            }
        }
        for (user, seen) in &t.passwords {
            let members: Vec<_> = seen.iter().map(|(h, at)| (hex(&h.0), *at)).collect();
            if !members.is_empty() {
                // Remembered for a window after the last attempt.
                sets.push(SetSnapshot {
                    key: key(&format!("p:{user}")),
                    members,
                    ttl: window,
                });
            }
        }
        Snapshot { counters, sets }
    }
}

fn key(suffix: &str) -> String {
    format!("{PREFIX}{suffix}")
}

fn counter(k: CounterKey) -> String {
    match k {
        CounterKey::User(u, Side::Familiar) => key(&format!("u:{u}:f")),
        CounterKey::User(u, Side::Unfamiliar) => key(&format!("u:{u}:u")),
        CounterKey::Source(s) => key(&format!("s:{s}")),
        CounterKey::Token(s) => key(&format!("t:{s}")),
    }
}

fn counter_status(raw: &[u64]) -> CounterStatus {
    match raw {
        [failures, in_flight, blocked] => CounterStatus {
            failures: u32::try_from(*failures).unwrap_or(u32::MAX),
            in_flight: u32::try_from(*in_flight).unwrap_or(u32::MAX),
            blocked_until: (*blocked != 0).then_some(*blocked),
        },
        _ => CounterStatus::default(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The scripts, hashed once (EVALSHA by hash; loaded on NOSCRIPT).
struct Scripts {
    reserve_password: Script,
    reserve_token: Script,
    settle_password: Script,
    settle_token: Script,
    status: Script,
    clear: Script,
    merge_counter: Script,
    merge_set: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_counters = |body: &str| Script::new(&format!("{COUNTER_LUA}\n{body}"));
        Scripts {
            reserve_password: with_counters(RESERVE_PASSWORD_LUA),
            reserve_token: with_counters(RESERVE_TOKEN_LUA),
            settle_password: with_counters(SETTLE_PASSWORD_LUA),
            settle_token: with_counters(SETTLE_TOKEN_LUA),
            status: with_counters(STATUS_LUA),
            clear: Script::new(CLEAR_LUA),
            merge_counter: Script::new(MERGE_COUNTER_LUA),
            merge_set: Script::new(MERGE_SET_LUA),
        }
    }
}

/// A counter (parent module docs, "A counter"): hash fields `f` failures, `w` window start,
/// `b` blocked until (0: none); reservations in the sorted set `<key>:r` (ticket id scored by
/// expiry). ARGV[1] is always `now`, ARGV[2] the window, ARGV[3] the block (ms).
const COUNTER_LUA: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local block = tonumber(ARGV[3])

-- Read and refresh at now: failures older than the window forgotten, an ended block dropped,
-- expired reservations dropped.
local function load(key)
  local h = redis.call('HMGET', key, 'f', 'w', 'b')
  local c = {key = key, f = tonumber(h[1]) or 0, w = tonumber(h[2]) or now, b = tonumber(h[3]) or 0}
  if now - c.w > window then c.f = 0; c.w = now end
  if c.b <= now then c.b = 0 end
  redis.call('ZREMRANGEBYSCORE', key .. ':r', '-inf', now)
  c.r = redis.call('ZCARD', key .. ':r')
  return c
end

-- Write back; expire at the latest of window end and block end.
local function save(c)
  if c.f == 0 and c.b == 0 then
    redis.call('DEL', c.key)
  else
    redis.call('HSET', c.key, 'f', c.f, 'w', c.w, 'b', c.b)
    redis.call('PEXPIRE', c.key, math.max(1, math.max(c.w + window, c.b) - now))
  end
end

local function count_failure(c, threshold)
  if c.f == 0 then c.w = now end
  c.f = c.f + 1
  if threshold ~= 0 and c.f >= threshold then
    c.b = now + block; c.f = 0; c.w = now
  end
  save(c)
end
"#;

/// KEYS: familiar set, user familiar counter, user unfamiliar counter, source counter, ticket
/// sequence. ARGV[4..]: source, user limit, source limit, reservation TTL.
const RESERVE_PASSWORD_LUA: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local side = 'u'
local user_key = KEYS[3]
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then side = 'f'; user_key = KEYS[2] end
local list = {}
-- A familiar source is not held to the source limit.
if side == 'u' then list[#list + 1] = {KEYS[4], tonumber(ARGV[6]), 'source'} end
list[#list + 1] = {user_key, tonumber(ARGV[5]), 'user'}
for _, e in ipairs(list) do
  local c = load(e[1])
  if e[2] ~= 0 then
    if c.b > now then return {'refused', e[3], side, c.b} end
    if c.f + c.r >= e[2] then return {'refused', e[3], side, 0} end
  end
end
local id = redis.call('INCR', KEYS[5])
local ttl = tonumber(ARGV[7])
for _, e in ipairs(list) do
  if e[2] ~= 0 then
    redis.call('ZADD', e[1] .. ':r', now + ttl, id)
    redis.call('PEXPIRE', e[1] .. ':r', ttl)
  end
end
return {'proceed', '', side, id}
"#;

/// KEYS: token counter, ticket sequence. ARGV[4..]: token limit, reservation TTL.
const RESERVE_TOKEN_LUA: &str = r#"
local limit = tonumber(ARGV[4])
local c = load(KEYS[1])
if limit ~= 0 then
  if c.b > now then return {'refused', 'token', 'u', c.b} end
  if c.f + c.r >= limit then return {'refused', 'token', 'u', 0} end
end
local id = redis.call('INCR', KEYS[2])
if limit ~= 0 then
  local ttl = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[1] .. ':r', now + ttl, id)
  redis.call('PEXPIRE', KEYS[1] .. ':r', ttl)
end
return {'proceed', '', 'u', id}
"#;

/// KEYS: familiar set, user counter (the ticket's side), source counter, remembered passwords.
/// ARGV[4..]: ticket id, outcome (s / f / v), password hash or '', side (f / u), source, user
/// limit, source limit, familiar_for, most familiar sources, most remembered passwords.
const SETTLE_PASSWORD_LUA: &str = r#"
local counters = {}
if ARGV[7] == 'u' then counters[#counters + 1] = {KEYS[3], tonumber(ARGV[10])} end
counters[#counters + 1] = {KEYS[2], tonumber(ARGV[9])}
for _, e in ipairs(counters) do redis.call('ZREM', e[1] .. ':r', ARGV[4]) end
local again = 0
if ARGV[5] == 's' then
  -- The user side forgets its failures and block (its reservations stay: in flight); the
  -- source keeps its failures (one good account must not launder a spraying address).
  redis.call('DEL', KEYS[2])
  redis.call('DEL', KEYS[4])
  local keep = tonumber(ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZADD', KEYS[1], now + keep, ARGV[8])
  local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[12])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[1], keep)
elseif ARGV[5] == 'f' then
  local h = ARGV[6]
  if h ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now - window))
    if redis.call('ZSCORE', KEYS[4], h) then again = 1 end
    redis.call('ZADD', KEYS[4], now, h)
    local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[13])
    if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
    redis.call('PEXPIRE', KEYS[4], window)
  end
  if again == 0 then
    for _, e in ipairs(counters) do count_failure(load(e[1]), e[2]) end
  end
end
return {load(KEYS[2]).f, again}
"#;

/// KEYS: token counter. ARGV[4..]: ticket id, outcome, token limit.
const SETTLE_TOKEN_LUA: &str = r#"
redis.call('ZREM', KEYS[1] .. ':r', ARGV[4])
if ARGV[5] == 'f' then count_failure(load(KEYS[1]), tonumber(ARGV[6])) end
return {load(KEYS[1]).f, 0}
"#;

/// Read-only. KEYS: user familiar counter, user unfamiliar counter, remembered passwords,
/// familiar set, source counter, token counter (unused ones name nobody).
const STATUS_LUA: &str = r#"
local function view(key)
  local h = redis.call('HMGET', key, 'f', 'w', 'b')
  local f, w, b = tonumber(h[1]) or 0, tonumber(h[2]) or now, tonumber(h[3]) or 0
  if now - w > window then f = 0 end
  if b <= now then b = 0 end
  local r = redis.call('ZCOUNT', key .. ':r', '(' .. now, '+inf')
  return {f, r, b}
end
local remembered = redis.call('ZCOUNT', KEYS[3], now - window, '+inf')
local familiar = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, '+inf', 'WITHSCORES')
return {view(KEYS[1]), view(KEYS[2]), remembered, familiar, view(KEYS[5]), view(KEYS[6])}
"#;

/// KEYS: what to forget, each with its reservations.
const CLEAR_LUA: &str = r#"
local n = 0
for _, k in ipairs(KEYS) do
  n = n + redis.call('DEL', k)
  redis.call('DEL', k .. ':r')
end
return n
"#;

/// Resync one counter: the larger count (with its window start) and the later block win.
/// KEYS: the counter. ARGV: now, failures, window start, blocked until, TTL.
const MERGE_COUNTER_LUA: &str = r#"
local f, w, b, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'f', 'w', 'b')
local rf, rw, rb = tonumber(h[1]) or 0, tonumber(h[2]) or w, tonumber(h[3]) or 0
if f > rf then rf = f; rw = w end
if b > rb then rb = b end
redis.call('HSET', KEYS[1], 'f', rf, 'w', rw, 'b', rb)
local left = redis.call('PTTL', KEYS[1])
if left < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return rf
"#;

/// Resync one sorted set (familiar sources, remembered passwords): each member keeps the
/// later of its two scores. KEYS: the set. ARGV: TTL, then member, score pairs.
const MERGE_SET_LUA: &str = r#"
for i = 2, #ARGV, 2 do
  local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > old then redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i]) end
end
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"#;
