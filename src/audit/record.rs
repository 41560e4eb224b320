//! Stage: audit, record layer. Typed events in, one JSON line out.
//!
//! [`Event`] is the only way to say what happened, and [`Record::write_json`] is the only place
//! that turns it into bytes (sozu `RequestRecord`): no hand-built JSON anywhere. Every line is an
//! object whose first three keys are `ts` (RFC 3339, UTC, milliseconds), `event` and `session`,
//! followed by the event's own fields, each always present (`null` when unknown), so a consumer
//! can rely on the key set of each event:
//!
//! | event         | fields                                                                   |
//! |---------------|--------------------------------------------------------------------------|
//! | `connect`     | `listener`, `protocol`, `client`, `tls`, `sni`                           |
//! | `auth`        | `user`, `ou`, `mechanism`, `client_id`, `client_name`, `issuer`, `decision`, `reason`, `policy_source`, `upstream` |
//! | `session_end` | `bytes_up`, `bytes_down`, `duration_ms`, `end`                           |
//! | `reload`      | `result`, `error`, `config_digest`, `source`, `changes`                  |
//!
//! `session` is the session id for the three session events and `null` for `reload`, which
//! belongs to the process, not to a connection.
//!
//! Strings are written as serde_json writes them, except that characters which hide themselves
//! or break lines ([`is_deceptive`]: bidi overrides, U+2028/9, zero-width characters, C1
//! controls) are always `\uXXXX` escapes: a line is one record for every JSONL reader, and a
//! crafted user name cannot display as somebody else's.
//!
//! Must not: hold a secret. No field takes a [`crate::secret::Secret`] (it has no `Serialize`
//! and no `Display` either), so a password or token can only get here by being exposed on
//! purpose first.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::policy::Reason;
use crate::proto::{Mechanism, Protocol};

/// One audit record: when, which session, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Taken when the event is recorded, not when the writer gets to it.
    pub ts: SystemTime,
    /// The session id; `None` for process events (`reload`), written as `null`.
    pub session: Option<String>,
    pub event: Event,
}

/// Everything the audit log can say. Adding an event (e.g. `rate_limited`) means a variant here,
/// a body struct below and one arm in [`Record::write_json`] and [`Event::name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A downstream connection was accepted.
    Connect(Connect),
    /// A login attempt was decided (allowed and replayed, or refused).
    Auth(Auth),
    /// The session is over; exactly one per session, whatever path it took.
    SessionEnd(SessionEnd),
    /// A configuration reload was applied or rejected.
    Reload(Reload),
    /// A shared mailbox's grant changed state (needs re-authorisation, usable again). Written
    /// once per change, never per login.
    Grant(GrantChange),
}

/// `grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantChange {
    /// The grant's name (`mailgate grant authorize NAME`).
    pub grant: String,
    /// `active` or `needs_reauthorization`.
    pub state: &'static str,
    /// Why, in the provider's words (an OAuth error code such as `invalid_grant`; never a
    /// token).
    pub detail: Option<String>,
}

/// `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connect {
    /// The listener's configured name.
    pub listener: String,
    pub protocol: Protocol,
    /// The real downstream address (behind a PROXY header, the one it names), as `ip:port`.
    pub client: SocketAddr,
    /// The TLS version protecting the session; `None` (`null`) for plaintext. On a STARTTLS
    /// listener the record is written after the upgrade (or, without one, before the first
    /// `auth` or at the end), so an upgraded session names its version here too.
    pub tls: Option<TlsVersion>,
    /// The server name the client asked for in its TLS ClientHello.
    pub sni: Option<String>,
}

/// `auth`. `decision` is not a field: it is derived from `reason` (`ok` → `allow`, anything
/// else → `deny`), so the two can never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The claimed user (after a valid token, the token's user). `None` when the mechanism
    /// carried none, e.g. an XOAUTH2 payload without `user=`.
    pub user: Option<String>,
    /// The user's OU path (`/Sales/Interns`), when the user is known.
    pub ou: Option<String>,
    pub mechanism: Mechanism,
    /// The OAuth client ID of the token, for XOAUTH2 and OAUTHBEARER.
    pub client_id: Option<String>,
    /// The token's issuer, for XOAUTH2 and OAUTHBEARER.
    pub issuer: Option<String>,
    /// `Reason::Ok` for a login that went through; otherwise why it did not.
    pub reason: Reason,
    /// Where the deciding value came from: `ou:/Sales`, `group:imap-pilot@example.com`, `user`.
    pub policy_source: Option<String>,
    /// The upstream's configured name, once one was chosen.
    pub upstream: Option<String>,
    /// The client catalogue's name for `client_id` (`apple-ios-mail`), when it has one.
    pub client_name: Option<String>,
    /// A report-only policy (`enforce = false`) would have refused this login for this
    /// reason, and let it through.
    pub would_deny: Option<Reason>,
    /// A shared-mailbox login: the mailbox asked for (`user` is who proved themselves).
    pub mailbox: Option<String>,
    /// A shared-mailbox login: the grant whose token opened the mailbox.
    pub grant: Option<String>,
}

impl Auth {
    /// `would_deny` for a login that went through although a report-only policy refuses it;
    /// `allow` for `ok`; `deny` otherwise (a would-deny login the upstream then refused is a
    /// `deny` with the upstream's reason).
    pub fn decision(&self) -> Verdict {
        match (self.reason, self.would_deny) {
            (Reason::Ok, Some(_)) => Verdict::WouldDeny,
            (Reason::Ok, None) => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }

    /// The `reason` written: for a would-deny, the reason it would have been refused for.
    pub fn written_reason(&self) -> Reason {
        match (self.reason, self.would_deny) {
            (Reason::Ok, Some(why)) => why,
            (reason, _) => reason,
        }
    }
}

/// Every `auth.reason` code, `ok` first (for `audit tail --reason` and tests).
pub const REASONS: [Reason; 17] = [
    Reason::Ok,
    Reason::UnknownUser,
    Reason::Suspended,
    Reason::ImapDisabled,
    Reason::PopDisabled,
    Reason::PasswordLoginDisabled,
    Reason::ClientNotAllowed,
    Reason::InvalidToken,
    Reason::TokenUserMismatch,
    Reason::DelegationNotSupported,
    Reason::UpstreamRejected,
    Reason::UpstreamUnavailable,
    Reason::IdpUnavailable,
    Reason::MailboxNotAssigned,
    Reason::GrantUnavailable,
    Reason::RateLimited,
    Reason::ClientClosed,
];

/// `auth.decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Report only: refused by policy, let through (`enforce = false`).
    WouldDeny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// `session_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionEnd {
    /// Downstream → upstream, after login.
    pub bytes_up: u64,
    /// Upstream → downstream, after login.
    pub bytes_down: u64,
    /// From accept to close.
    pub duration_ms: u64,
    pub end: End,
}

/// `session_end.end`: why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The mail client closed (or logged out), before or after login: its LOGOUT / QUIT, even
    /// though the upstream closes first in answer, and a close without TLS close_notify or a
    /// reset, which is how most clients leave.
    ClientClosed,
    /// The upstream closed on its own (not in answer to LOGOUT / QUIT).
    UpstreamClosed,
    IdleTimeout,
    /// A reload with `revoke_on_reload` would now refuse the user.
    Revoked,
    /// mailgate is stopping (SIGTERM drain deadline).
    Shutdown,
    /// Closed before login to make room for a new connection at `max_connections`.
    Displaced,
    /// A read or write failed, a limit was hit, or something internal went wrong.
    Error,
}

impl End {
    pub const ALL: [End; 7] = [
        End::ClientClosed,
        End::UpstreamClosed,
        End::IdleTimeout,
        End::Revoked,
        End::Shutdown,
        End::Displaced,
        End::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::IdleTimeout => "idle_timeout",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
            End::Displaced => "displaced",
            End::Error => "error",
        }
    }
}

impl From<crate::splice::End> for End {
    fn from(end: crate::splice::End) -> Self {
        match end {
            crate::splice::End::DownstreamClosed => End::ClientClosed,
            crate::splice::End::UpstreamClosed => End::UpstreamClosed,
            crate::splice::End::IdleTimeout => End::IdleTimeout,
            crate::splice::End::Revoked => End::Revoked,
            crate::splice::End::Shutdown => End::Shutdown,
            crate::splice::End::Displaced => End::Displaced,
            crate::splice::End::Error(_) => End::Error,
        }
    }
}

/// `reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    pub outcome: ReloadOutcome,
    /// A digest of the configuration the attempt read (applied or rejected), so an operator can
    /// tell which version of the files was in force. `None` when the files could not be read.
    pub config_digest: Option<String>,
    /// What triggered the new directory: a config file change or SIGHUP (`file`), or an LDAP
    /// directory sync (`ldap`).
    pub source: ReloadSource,
    /// For an LDAP sync: what it changed, or would have (`100 → 50 users: +0 -50 …`).
    pub changes: Option<String>,
}

/// `reload.source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReloadSource {
    #[default]
    File,
    Ldap,
}

/// `reload.result` and `reload.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `result: "ok"`, `error: null`.
    Applied,
    /// `result: "rejected"`; the previous configuration stays in force. `error` is what
    /// `mailgate check` would print (key paths, never secret values).
    Rejected { error: String },
}

/// The negotiated TLS version, as nginx's `$ssl_protocol` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

impl TlsVersion {
    /// `None` for versions mailgate never negotiates.
    pub fn from_rustls(version: rustls::ProtocolVersion) -> Option<Self> {
        match version {
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl Event {
    /// The `event` value.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Connect(_) => "connect",
            Event::Auth(_) => "auth",
            Event::SessionEnd(_) => "session_end",
            Event::Reload(_) => "reload",
            Event::Grant(_) => "grant",
        }
    }
}

impl Record {
    /// A record stamped now.
    pub fn now(session: Option<&str>, event: Event) -> Record {
        Record {
            ts: SystemTime::now(),
            session: session.map(str::to_owned),
            event,
        }
    }

    /// Appends this record as one JSON line (with its `\n`) to `out`. On error `out` is left
    /// as it was, so a batch never holds half a record.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let ts = format_ts(self.ts);
        let session = self.session.as_deref();
        let event = self.event.name();
        let start = out.len();
        let written = match &self.event {
            Event::Connect(body) => line(out, &ts, event, session, body),
            Event::Auth(body) => line(out, &ts, event, session, body),
            Event::SessionEnd(body) => line(out, &ts, event, session, body),
            Event::Reload(body) => line(out, &ts, event, session, body),
            Event::Grant(body) => line(out, &ts, event, session, body),
        };
        match written {
            Ok(()) => {
                out.push(b'\n');
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// The record as one JSON line without the trailing newline.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut out = Vec::new();
        self.write_json(&mut out)?;
        out.pop();
        // serde_json only writes UTF-8.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The common head of every line, then the event's fields in declaration order.
#[derive(Serialize)]
struct Line<'a, B: Serialize> {
    ts: &'a str,
    event: &'static str,
    session: Option<&'a str>,
    #[serde(flatten)]
    body: &'a B,
}

fn line<B: Serialize>(
    out: &mut Vec<u8>,
    ts: &str,
    event: &'static str,
    session: Option<&str>,
    body: &B,
) -> Result<(), serde_json::Error> {
    let mut serializer = serde_json::Serializer::with_formatter(out, Escaping);
    Line {
        ts,
        event,
        session,
        body,
    }
    .serialize(&mut serializer)
}

/// True for a character that changes how the text around it is displayed, or where a line
/// ends, without showing itself: C0 and C1 controls and DEL, the bidi marks, embeddings,
/// overrides and isolates (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069), the zero-width
/// characters (U+200B–U+200D, U+2060–U+2064, U+FEFF) and the line and paragraph separators
/// (U+2028/9). A user name is whatever a client sent: `user\u{202e}moc.elpmaxe@` displays as
/// someone else, and U+2028 ends a line for JavaScript-based JSONL readers.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Writes `text` with every [`is_deceptive`] character from DEL up as a JSON `\uXXXX` escape
/// (all of them are in the BMP, so one escape each). Below DEL it writes as is: there
/// serde_json escapes controls inside strings itself, and outside strings (a raw line being
/// re-printed) TAB, CR and LF are JSON whitespace, not string content. Any other raw
/// deceptive character in a valid JSON text is inside a string, so escaping it keeps the
/// meaning.
pub fn write_json_escaped<W: std::io::Write + ?Sized>(
    out: &mut W,
    text: &str,
) -> std::io::Result<()> {
    let mut rest = text;
    while let Some((at, c)) = rest
        .char_indices()
        .find(|(_, c)| *c >= '\u{7f}' && is_deceptive(*c))
    {
        let (clean, from) = rest.split_at(at);
        out.write_all(clean.as_bytes())?;
        write!(out, "\\u{:04x}", u32::from(c))?;
        rest = from.get(c.len_utf8()..).unwrap_or_default();
    }
    out.write_all(rest.as_bytes())
}

/// serde_json's compact format, but string contents go through [`write_json_escaped`]:
/// serde_json writes U+2028, U+202E and friends raw, which is valid JSON and still spoofs
/// (issue 9).
struct Escaping;

impl serde_json::ser::Formatter for Escaping {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        write_json_escaped(writer, fragment)
    }
}

impl Serialize for Auth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            user: Option<&'a str>,
            ou: Option<&'a str>,
            mechanism: &'static str,
            client_id: Option<&'a str>,
            client_name: Option<&'a str>,
            issuer: Option<&'a str>,
            decision: Verdict,
            reason: Reason,
            policy_source: Option<&'a str>,
            upstream: Option<&'a str>,
            // Only on shared-mailbox logins, so every other record keeps its shape.
            #[serde(skip_serializing_if = "Option::is_none")]
            mailbox: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            grant: Option<&'a str>,
        }
        Wire {
            user: self.user.as_deref(),
            ou: self.ou.as_deref(),
            mechanism: self.mechanism.as_str(),
            client_id: self.client_id.as_deref(),
            client_name: self.client_name.as_deref(),
            issuer: self.issuer.as_deref(),
            decision: self.decision(),
            reason: self.written_reason(),
            policy_source: self.policy_source.as_deref(),
            upstream: self.upstream.as_deref(),
            mailbox: self.mailbox.as_deref(),
            grant: self.grant.as_deref(),
        }
        .serialize(serializer)
    }
}

impl Serialize for Reload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            result: &'static str,
            error: Option<&'a str>,
            config_digest: Option<&'a str>,
            source: &'static str,
            changes: Option<&'a str>,
        }
        let (result, error) = match &self.outcome {
            ReloadOutcome::Applied => ("ok", None),
            ReloadOutcome::Rejected { error } => ("rejected", Some(error.as_str())),
        };
        Wire {
            result,
            error,
            config_digest: self.config_digest.as_deref(),
            source: match self.source {
                ReloadSource::File => "file",
                ReloadSource::Ldap => "ldap",
            },
            changes: self.changes.as_deref(),
        }
        .serialize(serializer)
    }
}

/// `2026-11-25T17:02:28.123Z`: RFC 3339 `date-time` in UTC with exactly three fraction digits,
/// so lines sort as text.
const TS_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats `t` as an audit timestamp. A clock before 1970 or past year 9999 (never on a sane
/// host) is clamped to the epoch rather than failing the record.
pub fn format_ts(t: SystemTime) -> String {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0));
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(TS_FORMAT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests;
