//! Stage: metrics. Events from `server`, `session`, `upstream`, `auth`, `audit` and `reload` in,
//! OpenMetrics text out (served by `admin` at `/metrics`).
//!
//! Every family is registered once, in [`Metrics::new`], and the rest of mailgate records through
//! typed methods (linkerd `MetricsFamilies::register`). Label values come only from small fixed
//! sets (docs/development.md section 3): listener names from the config, and the enums here or
//! elsewhere in mailgate that have an `as_str`. No method takes user, OU, token or client IP, so
//! none can reach a label by mistake, and the series count stays bounded by listeners x protocols x
//! reasons.
//!
//! | family                                     | type      | labels                      |
//! |--------------------------------------------|-----------|-----------------------------|
//! | `mailgate_connections_active`              | gauge     | listener, protocol          |
//! | `mailgate_connections_total`               | counter   | listener, protocol          |
//! | `mailgate_connections_refused_total`       | counter   | listener, reason            |
//! | `mailgate_logins_total`                    | counter   | protocol, decision, reason  |
//! | `mailgate_upstream_connect_seconds`        | histogram | protocol                    |
//! | `mailgate_upstream_login_seconds`          | histogram | protocol                    |
//! | `mailgate_token_verification_seconds`      | histogram | result                      |
//! | `mailgate_bytes_total`                     | counter   | protocol, side              |
//! | `mailgate_sessions_ended_total`            | counter   | protocol, end               |
//! | `mailgate_reloads_total`                   | counter   | result                      |
//! | `mailgate_audit_records_dropped_total`     | counter   | -                           |
//! | `mailgate_audit_errors_total`              | counter   | -                           |
//! | `mailgate_throttle_store_up`               | gauge     | -                           |
//! | `mailgate_tls_certificate_expiry_timestamp_seconds` | gauge | -                     |
//! | `mailgate_directory_sync_last_success_timestamp_seconds` | gauge | -                 |
//! | `mailgate_directory_sync_duration_seconds` | gauge     | - (the last sync attempt)   |
//! | `mailgate_directory_entries`               | gauge     | kind (`user`, `group`)      |
//! | `mailgate_directory_sync_failures_total`   | counter   | cause                       |
//!
//! Series an alert watches exist from the start at 0 (reload results, token results, the
//! temporary login failures, each listener's connection counts): Prometheus's `increase()`
//! sees nothing when a series first appears already at 1, so a first rejected reload or a
//! first unreachable upstream would otherwise never fire an alert.
//!
//! `side` on `mailgate_bytes_total` is the side the bytes were *written to*: `upstream` counts
//! downstream -> upstream (the audit record's `bytes_up`), `downstream` counts
//! upstream -> downstream (`bytes_down`).
//!
//! Must not: do I/O, block, or panic; recording is a few atomic operations (the label lookup
//! takes a read lock on the family's map).

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::policy::Reason;
use crate::proto::Protocol;
use crate::splice::{End, Side, Totals};

/// The OpenMetrics text content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a connection was closed before any protocol exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// `limits.max_connections` or `limits.max_connections_per_ip` reached.
    Limit,
    /// `limits.max_handshakes_per_ip` reached, or evicted at `limits.max_handshakes`: too many
    /// PROXY headers or TLS handshakes in progress.
    Handshakes,
    /// A listener with `proxy_protocol = true` got a missing, malformed or oversize header.
    ProxyHeader,
    /// A listener with `proxy_protocol = true` got a connection from outside `proxy_trusted`.
    /// Kept apart from `ProxyHeader`: this one means someone bypassed the load balancer.
    ProxyUntrusted,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::Handshakes => "handshakes",
            Refused::ProxyHeader => "proxy_header",
            Refused::ProxyUntrusted => "proxy_untrusted",
        }
    }
}

/// The `decision` label of a login, as in the audit `auth` record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
    /// Refused by a report-only policy (`enforce = false`) and let through.
    WouldDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
        }
    }
}

/// Outcome of one bearer-token verification (JWT or introspection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenResult {
    /// Verified.
    Ok,
    /// Bad signature, issuer, audience, expiry, or introspection said inactive.
    Invalid,
    /// The identity provider (JWKS or introspection endpoint) could not be reached.
    Unavailable,
}

impl TokenResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenResult::Ok => "ok",
            TokenResult::Invalid => "invalid",
            TokenResult::Unavailable => "unavailable",
        }
    }
}

/// How a session ended: the audit `session_end` record's `end` values (docs/audit.md).
/// A superset of `splice::End` in meaning (it converts with `From`), for sessions that end
/// before any splice, e.g. a pre-auth `LOGOUT` is `ClientClosed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    ClientClosed,
    UpstreamClosed,
    IdleTimeout,
    Revoked,
    Shutdown,
    Displaced,
    Error,
}

impl SessionEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::UpstreamClosed => "upstream_closed",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::Revoked => "revoked",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Displaced => "displaced",
            SessionEnd::Error => "error",
        }
    }
}

impl From<End> for SessionEnd {
    fn from(end: End) -> Self {
        match end {
            End::DownstreamClosed => SessionEnd::ClientClosed,
            End::UpstreamClosed => SessionEnd::UpstreamClosed,
            End::IdleTimeout => SessionEnd::IdleTimeout,
            End::Revoked => SessionEnd::Revoked,
            End::Shutdown => SessionEnd::Shutdown,
            End::Displaced => SessionEnd::Displaced,
            End::Error(_) => SessionEnd::Error,
        }
    }
}

/// Outcome of a config reload, as the audit `reload` record's `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    Ok,
    Rejected,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Rejected => "rejected",
        }
    }
}

/// What happened to a shared mailbox's grant (`mailgate_grant_events_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantEvent {
    /// An access token was refreshed (one token request that succeeded).
    Refreshed,
    /// The provider did not answer usably; logins are temporary failures for `retry_after`.
    RefreshFailed,
    /// The provider refused the refresh token: an administrator must re-authorise. Once per
    /// transition, not per login.
    NeedsReauthorization,
    /// A grant this server saw dead works again.
    Reauthorized,
}

impl GrantEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantEvent::Refreshed => "refreshed",
            GrantEvent::RefreshFailed => "refresh_failed",
            GrantEvent::NeedsReauthorization => "needs_reauthorization",
            GrantEvent::Reauthorized => "reauthorized",
        }
    }
}

/// Label values are written with `as_str`, so metrics and audit records spell them the same.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value!(
    Refused,
    Decision,
    TokenResult,
    SessionEnd,
    ReloadResult,
    Protocol,
    Reason,
    GrantEvent
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    result: GrantEvent,
}

/// `splice::Side` as the `side` label. (`Side` is not `Hash`, so the label set keeps the text.)
fn side_str(side: Side) -> &'static str {
    match side {
        Side::Downstream => "downstream",
        Side::Upstream => "upstream",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    protocol: Protocol,
    decision: Decision,
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    result: TokenResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    protocol: Protocol,
    /// Only ever [`side_str`]'s output.
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    protocol: Protocol,
    end: SessionEnd,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// TCP connect plus, for implicit TLS, the handshake: 1 ms to ~8 s (the default connect timeout
/// is 5 s), doubling.
fn connect_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Greeting, STARTTLS and the replayed login: 5 ms to ~41 s (Dovecot delays failed logins by
/// seconds; the default login timeout is 30 s), doubling.
fn login_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// JWT checks take microseconds with a cached JWKS; a JWKS fetch or an introspection call takes
/// a round trip to the IdP: 0.1 ms to ~6.5 s, doubling.
fn token_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric family of mailgate. Create one at start-up, share it as `Arc<Metrics>`; it
/// survives config reloads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_active: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    connections_refused: Family<RefusedLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    upstream_connect: HistogramFamily<ProtocolLabels>,
    upstream_login: HistogramFamily<ProtocolLabels>,
    token_verification: HistogramFamily<TokenLabels>,
    bytes: Family<BytesLabels, Counter>,
    sessions_ended: Family<EndLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    grant_events: Family<GrantLabels, Counter>,
    grant_refresh: Histogram,
    audit_dropped: Counter,
    audit_errors: Counter,
    throttle_store_up: Gauge,
    certificate_expiry: Gauge,
    sync_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    sync_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    directory_entries: Family<KindLabels, Gauge>,
    sync_failures: Family<CauseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family. Counter names are given without `_total`: the encoder appends it
    /// (OpenMetrics counters are named `<family>_total`).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections_active = Family::default();
        registry.register(
            "mailgate_connections_active",
            "Downstream connections open now",
            connections_active.clone(),
        );
        let connections = Family::default();
        registry.register(
            "mailgate_connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "mailgate_connections_refused",
            "Downstream connections closed before the greeting",
            connections_refused.clone(),
        );
        let logins = Family::default();
        registry.register(
            "mailgate_logins",
            "Login attempts by decision and reason code",
            logins.clone(),
        );
        let upstream_connect: HistogramFamily<_> =
            Family::new_with_constructor(connect_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mailgate_upstream_connect",
            "Time to connect to an upstream (TCP, and TLS for implicit TLS)",
            Unit::Seconds,
            upstream_connect.clone(),
        );
        let upstream_login: HistogramFamily<_> =
            Family::new_with_constructor(login_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mailgate_upstream_login",
            "Time from upstream connect to the answer to the replayed login",
            Unit::Seconds,
            upstream_login.clone(),
        );
        let token_verification: HistogramFamily<_> =
            Family::new_with_constructor(token_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mailgate_token_verification",
            "Time to verify a bearer token (JWT or introspection)",
            Unit::Seconds,
            token_verification.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "mailgate_bytes",
            "Bytes spliced after login, by the side they were written to",
            bytes.clone(),
        );
        let sessions_ended = Family::default();
        registry.register(
            "mailgate_sessions_ended",
            "Sessions ended, by how they ended",
            sessions_ended.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "mailgate_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let grant_events = Family::default();
        registry.register(
            "mailgate_grant_events",
            "Shared-mailbox grant refreshes and state changes, by event",
            grant_events.clone(),
        );
        let grant_refresh = token_histogram();
        registry.register_with_unit(
            "mailgate_grant_refresh",
            "Time of one token-endpoint request refreshing a shared-mailbox grant",
            Unit::Seconds,
            grant_refresh.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "mailgate_audit_records_dropped",
            "Audit records dropped because the sink was full or failing",
            audit_dropped.clone(),
        );
        let audit_errors = Counter::default();
        registry.register(
            "mailgate_audit_errors",
            "Audit sink write or reopen errors",
            audit_errors.clone(),
        );
        let throttle_store_up = Gauge::default();
        // 1 from the start: the local store always answers; a Redis store sets it itself.
        throttle_store_up.set(1);
        registry.register(
            "mailgate_throttle_store_up",
            "1 while the login-failure counter store answers (local: always; Redis: while \
             reachable); 0 while this instance counts alone",
            throttle_store_up.clone(),
        );
        let sync_last_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "mailgate_directory_sync_last_success_timestamp_seconds",
            "Unix time of the last LDAP directory sync that was applied (0: none yet)",
            sync_last_success.clone(),
        );
        let sync_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "mailgate_directory_sync_duration_seconds",
            "How long the last LDAP directory sync attempt took, applied or not",
            sync_duration.clone(),
        );
        let directory_entries = Family::default();
        registry.register(
            "mailgate_directory_entries",
            "Users and groups of the last applied LDAP sync",
            directory_entries.clone(),
        );
        let sync_failures = Family::default();
        registry.register(
            "mailgate_directory_sync_failures",
            "LDAP directory syncs not applied, by cause (connect, bind, search, timeout, \
             invalid, safety_valve, cache)",
            sync_failures.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "mailgate_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate served to mail clients, Unix seconds (0: no TLS \
             listener); set at start-up and on every reload",
            certificate_expiry.clone(),
        );
        for cause in crate::ldap::SyncError::CAUSES {
            drop(sync_failures.get_or_create(&CauseLabels { cause }));
        }
        for result in [ReloadResult::Ok, ReloadResult::Rejected] {
            drop(reloads.get_or_create(&ReloadLabels { result }));
        }
        for result in [
            TokenResult::Ok,
            TokenResult::Invalid,
            TokenResult::Unavailable,
        ] {
            drop(token_verification.get_or_create(&TokenLabels { result }));
        }
        for protocol in [Protocol::Imap, Protocol::Pop3] {
            for reason in [
                Reason::Ok,
                Reason::UpstreamUnavailable,
                Reason::IdpUnavailable,
                Reason::RateLimited,
            ] {
                let decision = if reason == Reason::Ok {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                drop(logins.get_or_create(&LoginLabels {
                    protocol,
                    decision,
                    reason,
                }));
            }
        }
        Self {
            registry,
            certificate_expiry,
            sync_last_success,
            sync_duration,
            directory_entries,
            sync_failures,
            throttle_store_up,
            connections_active,
            connections,
            connections_refused,
            logins,
            upstream_connect,
            upstream_login,
            token_verification,
            bytes,
            sessions_ended,
            reloads,
            grant_events,
            grant_refresh,
            audit_dropped,
            audit_errors,
        }
    }

    /// An LDAP sync was applied: `at` is its Unix time, with `users` and `groups` entries.
    pub fn directory_synced(&self, at: f64, took: Duration, users: usize, groups: usize) {
        self.sync_last_success.set(at);
        self.sync_duration.set(took.as_secs_f64());
        for (kind, n) in [("user", users), ("group", groups)] {
            self.directory_entries
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// An LDAP sync was not applied; `cause` is one of the fixed set in the family's help.
    pub fn directory_sync_failed(&self, cause: &'static str, took: Duration) {
        self.sync_duration.set(took.as_secs_f64());
        self.sync_failures
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// The `mailgate_throttle_store_up` gauge, for the counter store to keep current.
    pub fn throttle_store_gauge(&self) -> Gauge {
        self.throttle_store_up.clone()
    }

    /// Whether the counter store answers (see [`Metrics::throttle_store_gauge`]).
    pub fn throttle_store_is_up(&self) -> bool {
        self.throttle_store_up.get() != 0
    }

    /// A downstream connection was accepted on `listener` (a config listener name). Counts it
    /// and holds it in `connections_active` until the guard is dropped.
    pub fn connection_opened(&self, listener: &str, protocol: Protocol) -> ConnectionGuard {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
            protocol,
        };
        self.connections.get_or_create(&labels).inc();
        let active = self.connections_active.get_or_create_owned(&labels);
        active.inc();
        ConnectionGuard { active }
    }

    /// A configured listener: its connection series exist from now on, at 0.
    pub fn listener(&self, listener: &str, protocol: Protocol) {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
            protocol,
        };
        drop(self.connections.get_or_create(&labels));
        drop(self.connections_active.get_or_create(&labels));
        for reason in [
            Refused::Limit,
            Refused::Handshakes,
            Refused::ProxyHeader,
            Refused::ProxyUntrusted,
        ] {
            drop(self.connections_refused.get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            }));
        }
    }

    /// The served certificate's `notAfter` (Unix seconds), or `None` without TLS.
    pub fn set_certificate_expiry(&self, not_after: Option<i64>) {
        self.certificate_expiry.set(not_after.unwrap_or(0));
    }

    /// A connection on `listener` was closed before any protocol exchange.
    pub fn connection_refused(&self, listener: &str, reason: Refused) {
        let labels = RefusedLabels {
            listener: listener.to_owned(),
            reason,
        };
        self.connections_refused.get_or_create(&labels).inc();
    }

    /// One login attempt and its final reason code. The decision label follows from the reason:
    /// `ok` is the only allow (a permitted login the upstream refused is `upstream_rejected`,
    /// a deny), so the two labels can never disagree.
    pub fn login(&self, protocol: Protocol, reason: Reason) {
        let decision = if reason == Reason::Ok {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let labels = LoginLabels {
            protocol,
            decision,
            reason,
        };
        self.logins.get_or_create(&labels).inc();
    }

    /// A login a report-only policy would have refused for `reason` and let through: counted
    /// as `decision="would_deny"` with that reason, so an operator can watch what enforcing
    /// would refuse before switching it on.
    pub fn would_deny(&self, protocol: Protocol, reason: Reason) {
        let labels = LoginLabels {
            protocol,
            decision: Decision::WouldDeny,
            reason,
        };
        self.logins.get_or_create(&labels).inc();
    }

    /// Time taken to connect to an upstream (successful connects only).
    pub fn upstream_connect(&self, protocol: Protocol, took: Duration) {
        self.upstream_connect
            .get_or_create(&ProtocolLabels { protocol })
            .observe(took.as_secs_f64());
    }

    /// Time from upstream connect to its answer to the replayed login, accepted or refused.
    pub fn upstream_login(&self, protocol: Protocol, took: Duration) {
        self.upstream_login
            .get_or_create(&ProtocolLabels { protocol })
            .observe(took.as_secs_f64());
    }

    /// Time taken to verify one bearer token, and how it went.
    pub fn token_verification(&self, result: TokenResult, took: Duration) {
        self.token_verification
            .get_or_create(&TokenLabels { result })
            .observe(took.as_secs_f64());
    }

    /// `n` bytes written to `side`. For live counting during a splice.
    pub fn bytes(&self, protocol: Protocol, side: Side, n: u64) {
        if n > 0 {
            self.bytes
                .get_or_create(&BytesLabels {
                    protocol,
                    side: side_str(side),
                })
                .inc_by(n);
        }
    }

    /// A finished splice's totals, for counting once at the end instead of live.
    pub fn bytes_spliced(&self, protocol: Protocol, totals: Totals) {
        self.bytes(protocol, Side::Upstream, totals.bytes_up);
        self.bytes(protocol, Side::Downstream, totals.bytes_down);
    }

    /// A session ended (once per session, alongside its audit `session_end`).
    pub fn session_ended(&self, protocol: Protocol, end: SessionEnd) {
        self.sessions_ended
            .get_or_create(&EndLabels { protocol, end })
            .inc();
    }

    /// A shared-mailbox grant event.
    pub fn grant_event(&self, event: GrantEvent) {
        self.grant_events
            .get_or_create(&GrantLabels { result: event })
            .inc();
    }

    /// One token-endpoint request for a grant, whatever its outcome.
    pub fn grant_refresh(&self, took: Duration) {
        self.grant_refresh.observe(took.as_secs_f64());
    }

    /// A config reload finished.
    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// One audit record dropped (sink full or failing).
    pub fn audit_record_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// One audit sink error (write, flush or reopen failed).
    pub fn audit_error(&self) {
        self.audit_errors.inc();
    }

    /// For an audit sink that keeps its own running totals: raises the two counters to
    /// `dropped` and `errors`. Call it before [`Metrics::encode`] or whenever convenient.
    /// Counters never go down, so a smaller value (a sink recreated on reload) is ignored until
    /// its count passes the old one; `set_audit_stats` and the `audit_*` increments should not be
    /// mixed.
    pub fn set_audit_stats(&self, dropped: u64, errors: u64) {
        raise(&self.audit_dropped, dropped);
        raise(&self.audit_errors, errors);
    }

    /// The whole registry as OpenMetrics text, ending `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an Err here would only come from a label encoder, and
        // ours write fixed strings. A failed scrape still returns what was written.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}

/// Raises a counter to `target` (never lowers it). Two racing callers may both add; the audit
/// sink's totals are read by one task at a time, so that does not happen in practice.
fn raise(counter: &Counter, target: u64) {
    let now = counter.get();
    if target > now {
        counter.inc_by(target - now);
    }
}

/// Keeps one connection in `mailgate_connections_active`; dropping it takes it out again, on
/// every path, panics included.
#[derive(Debug)]
#[must_use = "dropping the guard at once marks the connection closed"]
pub struct ConnectionGuard {
    active: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests;
