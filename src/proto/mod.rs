//! Stage: protocol machines. SANS-IO: bytes in, events and bytes out.
//!
//! Nothing in here touches a socket, a runtime or the clock; time is passed in as an argument.
//! `imap` and `pop3` each hold a pre-auth front-end machine (downstream side) and a login replay
//! machine (upstream side). `sasl` decodes and encodes the SASL payloads both share.
//!
//! These types are the contract between the machines and the driver in `session.rs`.

use std::time::Duration;

use bytes::Bytes;

use crate::secret::Secret;

pub mod imap;
pub mod pop3;
pub mod proxy_header;
pub mod sasl;

/// The mail protocol of a listener or upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

/// How the downstream authenticated. The upstream login is replayed with the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// IMAP `LOGIN user pass` (RFC 9051 6.2.3).
    ImapLogin,
    /// POP3 `USER` + `PASS` (RFC 1939 7).
    UserPass,
    /// SASL PLAIN (RFC 4616), via IMAP AUTHENTICATE or POP3 AUTH.
    Plain,
    /// SASL LOGIN (draft-murchison-sasl-login), via IMAP AUTHENTICATE or POP3 AUTH.
    Login,
    /// Google/Microsoft XOAUTH2.
    XOAuth2,
    /// SASL OAUTHBEARER (RFC 7628).
    OAuthBearer,
}

impl Mechanism {
    /// Password mechanisms are the "less secure app" logins of decision step 3 (docs/policy.md).
    pub fn is_password(self) -> bool {
        !matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }

    /// Name used in audit records and metrics labels (a small fixed set).
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::ImapLogin => "login",
            Mechanism::UserPass => "user",
            Mechanism::Plain => "plain",
            Mechanism::Login => "sasl-login",
            Mechanism::XOAuth2 => "xoauth2",
            Mechanism::OAuthBearer => "oauthbearer",
        }
    }

    /// The SASL mechanism name on the wire, for the SASL ones.
    pub fn sasl_name(self) -> Option<&'static str> {
        match self {
            Mechanism::ImapLogin | Mechanism::UserPass => None,
            Mechanism::Plain => Some("PLAIN"),
            Mechanism::Login => Some("LOGIN"),
            Mechanism::XOAuth2 => Some("XOAUTH2"),
            Mechanism::OAuthBearer => Some("OAUTHBEARER"),
        }
    }
}

/// What the downstream presented, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// IMAP LOGIN, POP3 USER/PASS, SASL PLAIN and LOGIN.
    Password {
        /// SASL PLAIN authorization identity, when the client sent one.
        authzid: Option<String>,
        user: String,
        password: Secret<Vec<u8>>,
    },
    /// XOAUTH2 and OAUTHBEARER.
    Bearer {
        /// XOAUTH2 `user=`, OAUTHBEARER GS2 `a=`.
        user: Option<String>,
        token: Secret<String>,
        /// OAUTHBEARER `host=` / `port=` kvpairs, kept so the replay is exact.
        host: Option<String>,
        port: Option<u16>,
    },
}

/// A complete login attempt, reported by a front-end machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub mechanism: Mechanism,
    pub credentials: Credentials,
}

impl LoginRequest {
    /// Whether every identity the request names (user, SASL authzid, bearer `user=`) fits in
    /// `max` octets.
    pub fn names_fit(&self, max: usize) -> bool {
        match &self.credentials {
            Credentials::Password { authzid, user, .. } => {
                user.len() <= max && authzid.as_ref().is_none_or(|a| a.len() <= max)
            }
            Credentials::Bearer { user, .. } => user.as_ref().is_none_or(|u| u.len() <= max),
        }
    }

    /// The claimed user, when the mechanism carries one.
    pub fn user(&self) -> Option<&str> {
        match &self.credentials {
            Credentials::Password { user, .. } => Some(user),
            Credentials::Bearer { user, .. } => user.as_deref(),
        }
    }
}

/// Which class of refusal the wire answer belongs to. Only the policy `Reason` (or the driver,
/// for upstream and IdP trouble) picks it; the machines only format it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// Policy said no: IMAP `NO [AUTHORIZATIONFAILED]`, POP3 `-ERR [AUTH]` (RFC 5530, RFC 3206).
    Authorization,
    /// Bad credentials or token: IMAP `NO [AUTHENTICATIONFAILED]`, POP3 `-ERR [AUTH]`.
    Authentication,
    /// Temporary: IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`.
    Unavailable,
}

impl ReplyClass {
    /// The response code this class carries on `protocol`'s wire: RFC 5530 for IMAP
    /// (`NO [AUTHORIZATIONFAILED]`), RFC 2449 / 3206 for POP3 (`-ERR [AUTH]`), where policy and
    /// credential refusals share `AUTH`.
    pub fn code(self, protocol: Protocol) -> &'static str {
        match (protocol, self) {
            (Protocol::Imap, ReplyClass::Authorization) => "AUTHORIZATIONFAILED",
            (Protocol::Imap, ReplyClass::Authentication) => "AUTHENTICATIONFAILED",
            (Protocol::Imap, ReplyClass::Unavailable) => "UNAVAILABLE",
            (Protocol::Pop3, ReplyClass::Authorization | ReplyClass::Authentication) => "AUTH",
            (Protocol::Pop3, ReplyClass::Unavailable) => "SYS/TEMP",
        }
    }

    /// The refusal line's start as sent: `NO [CODE]` (after the tag) or `-ERR [CODE]`.
    pub fn wire_prefix(self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Imap => format!("NO [{}]", self.code(protocol)),
            Protocol::Pop3 => format!("-ERR [{}]", self.code(protocol)),
        }
    }
}

/// A refusal to send to the downstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub class: ReplyClass,
    /// Human text, one line, no CR/LF (the machine strips them anyway).
    pub text: String,
    /// For XOAUTH2/OAUTHBEARER: the decoded JSON error to send first as a `+ base64` continuation.
    /// The machine then waits for the downstream's (empty or `AQ==`) response line before it
    /// sends the refusal.
    pub challenge: Option<Bytes>,
}

/// The generic credentials failure, identical to what a wrong password earns. Also
/// `policy::refusal::GENERIC_FAILURE`; defined here so the front-ends' own refusals use the same
/// words as the policy's.
pub const GENERIC_FAILURE: &str = "Authentication failed";

impl Refusal {
    /// A user name over `max_username`: the generic credentials failure, as for a wrong
    /// password, so the answer says nothing about limits or accounts.
    pub fn name_too_long() -> Self {
        Self {
            class: ReplyClass::Authentication,
            text: GENERIC_FAILURE.to_owned(),
            challenge: None,
        }
    }
}

/// The driver's answer to `Event::LoginRequested`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The upstream accepted the replayed login.
    Accepted {
        /// IMAP: raw untagged lines (each ending CRLF) the upstream sent during the login, to
        /// relay before the tagged answer. POP3: empty.
        untagged: Bytes,
        /// IMAP: the upstream's tagged answer without its tag and leading space, e.g.
        /// `OK [CAPABILITY IMAP4rev1 ...] Logged in\r\n`; the machine prefixes the downstream's
        /// tag. POP3: the whole `+OK ...\r\n` line.
        reply: Bytes,
    },
    /// The login is refused; the machine answers, counts the attempt and waits for the next
    /// command (or closes when attempts are exhausted).
    Refused(Refusal),
}

/// Why a front-end machine ended the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// LOGOUT / QUIT.
    Logout,
    /// Pre-auth time limit passed.
    AuthTimeout,
    /// Too many failed logins on this connection.
    TooManyAttempts,
    /// Too many invalid commands before login (`max_bad_commands`).
    TooManyErrors,
    /// Line or literal over its limit, or input the machine cannot resynchronise after.
    ProtocolViolation,
}

/// Limits the front-end machines enforce before login (docs/wire.md, "Limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreauthLimits {
    /// Longest command line, CRLF included. 16 KiB: room for a 4 KiB JWT base64-encoded in
    /// XOAUTH2 with headroom (Dovecot allows 64 KiB after login, far less is needed before).
    pub max_line: usize,
    /// Largest literal in LOGIN. 8 KiB: no password is larger.
    pub max_literal: usize,
    /// Failed logins allowed on one connection, as Dovecot's default of 3.
    pub max_attempts: u32,
    /// Invalid commands (answered IMAP `BAD`, POP3 `-ERR` for an unknown, malformed or
    /// out-of-state command) allowed before login; the next closes the connection. 10, as
    /// Dovecot's login processes (nginx mail's `max_errors`: 5): a client that answers every
    /// refusal with another line of junk would otherwise loop until `auth_timeout`.
    pub max_bad_commands: u32,
    /// Longest user name (and SASL authorization identity, XOAUTH2/OAUTHBEARER `user=`) in
    /// octets. 320: RFC 5321 4.5.3.1 local-part (64) + `@` + domain (255). A longer name is
    /// refused in the front-end as a credentials failure, never replayed, logged or audited.
    pub max_username: usize,
    /// Time from connect to a completed login.
    pub auth_timeout: Duration,
}

impl Default for PreauthLimits {
    fn default() -> Self {
        Self {
            max_line: 16 * 1024,
            max_literal: 8 * 1024,
            max_attempts: 3,
            max_bad_commands: 10,
            max_username: 320,
            auth_timeout: Duration::from_secs(60),
        }
    }
}

/// TLS state of the downstream connection as the front-end sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// TLS is active (implicit, or after STARTTLS). Logins allowed.
    Tls,
    /// STARTTLS/STLS is offered and not done yet: logins refused, `LOGINDISABLED`, no AUTH=.
    StartTlsOffered,
    /// Plaintext listener on loopback (`tls = "none"`): logins allowed, no STARTTLS.
    Plaintext,
}

impl Security {
    pub fn logins_allowed(self) -> bool {
        !matches!(self, Security::StartTlsOffered)
    }
}

/// What a front-end machine reports to the driver (`poll_event`). Past tense; each says what the
/// driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontendEvent {
    /// The downstream sent STARTTLS/STLS and the go-ahead is queued. The driver must send every
    /// pending transmit, run the TLS handshake, then call `tls_established()`. Every byte that
    /// arrived after the STARTTLS line has already been discarded (CVE-2011-0411).
    TlsRequested,
    /// A complete login arrived. The driver must decide, replay it upstream when allowed, and
    /// answer with `handle_outcome()`. The machine reads no further command until then (bytes
    /// that arrive meanwhile are buffered and become residual on success).
    LoginRequested(LoginRequest),
    /// The session is over (answer already queued). The driver must send pending transmits and
    /// close the connection.
    Closed(CloseReason),
}

/// What a login replay machine reports to the driver (`poll_event`).
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayEvent {
    /// The upstream accepted STARTTLS/STLS. The driver must send pending transmits, run the TLS
    /// handshake, then call `tls_established()`.
    TlsRequested,
    /// The upstream accepted the login. The driver answers the front-end with
    /// `LoginOutcome::Accepted { untagged, reply }`, sends the front-end's residual upstream,
    /// the replay's residual downstream, and splices.
    LoggedIn { untagged: Bytes, reply: Bytes },
    /// The upstream refused the login: a tagged `NO` / `-ERR`, or a `* BYE` or close once the
    /// login command was sent (Dovecot answers some bad logins, e.g. an oversized user name,
    /// that way: a failed login, not an outage). The driver answers the front-end with a
    /// refusal of class `Authentication` carrying `text` (empty after a BYE or close: the
    /// generic text is sent) and `challenge`.
    Rejected {
        /// The upstream's human text, stripped of its tag and response code.
        text: String,
        /// The decoded SASL challenge the upstream sent before refusing (XOAUTH2 error JSON).
        challenge: Option<Bytes>,
    },
    /// A capability probe ([`imap::ImapReplay::probe`]) learnt the upstream's capabilities and
    /// queued `LOGOUT`. The driver reads them with `capabilities()`, sends the pending transmit
    /// and closes.
    Probed,
    /// The upstream broke the protocol, or said BYE or closed before the login command was
    /// sent. The driver refuses with `Unavailable`.
    Failed(ReplayError),
}

/// Why a replay could not complete. Never carries credential bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("upstream greeting was not OK: {0}")]
    Greeting(String),
    #[error("upstream refused STARTTLS: {0}")]
    StartTlsRefused(String),
    #[error("unexpected upstream answer: {0}")]
    Unexpected(String),
    #[error("upstream line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("upstream said BYE: {0}")]
    Bye(String),
    #[error("upstream closed the connection before the login was sent")]
    Closed,
}

/// A credential cannot be replayed safely: it holds a byte the upstream protocol would read as a
/// separator (CR, LF, NUL; `\x01` in XOAUTH2/OAUTHBEARER). Such a login is refused, never relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("credential holds a byte the upstream protocol forbids ({field})")]
pub struct UnsafeCredential {
    pub field: &'static str,
}

/// Answers a front-end machine queues before it stops reading further pipelined commands: 4 KiB,
/// a few dozen answers. A client that pipelines thousands of `NOOP`s and never reads would
/// otherwise have each read of its commands multiplied into answers held in memory (issue 9).
/// The rest of its input waits unparsed until `poll_transmit` has handed the answers out.
pub const MAX_PENDING_OUTPUT: usize = 4 * 1024;

/// Most bytes the driver hands a front-end machine at once. The driver reads only after it has
/// sent every queued answer, so input held back behind [`MAX_PENDING_OUTPUT`] is at most one
/// message plus one read; more means the driver does not drain, and the machine closes.
pub const PREAUTH_READ: usize = 4 * 1024;

/// Longest upstream line the replay machines accept before login: 64 KiB, as Dovecot's
/// `imap_max_line_length`; a capability line is far shorter.
pub const MAX_UPSTREAM_LINE: usize = 64 * 1024;
