//! Stage: IMAP pre-auth front-end (downstream side). SANS-IO.
//!
//! Input: bytes from the mail client (`handle_input`), the driver's verdict on a login
//! (`handle_outcome`), time (`handle_timeout`) and the end of a STARTTLS handshake
//! (`tls_established`). Output: bytes for the mail client (`poll_transmit`) and
//! [`FrontendEvent`]s (`poll_event`). At hand-off, `into_residual` returns the bytes the client
//! pipelined after its login. It never touches a socket or the clock, and it never reads a
//! command while a login is being decided.
//!
//! # States
//!
//! | state                | input                                   | answer queued                                  | next                 |
//! |----------------------|-----------------------------------------|------------------------------------------------|----------------------|
//! | `ExpectCommand`      | `CAPABILITY` / `NOOP` / `ID`            | untagged data + `tag OK`                       | `ExpectCommand`      |
//! |                      | `LOGOUT`                                | `* BYE` + `tag OK`, `Closed(Logout)`           | `Closed`             |
//! |                      | `STARTTLS` (offered)                    | `tag OK Begin TLS`, `TlsRequested`, drop input | `ExpectTlsHandshake` |
//! |                      | `STARTTLS` (not offered)                | `tag BAD`                                      | `ExpectCommand`      |
//! |                      | `LOGIN`/`AUTHENTICATE` before STARTTLS  | `tag NO [PRIVACYREQUIRED]`                     | `ExpectCommand`      |
//! |                      | `LOGIN u p`, `AUTHENTICATE m <ir>`      | nothing, `LoginRequested`                      | `ExpectOutcome`      |
//! |                      | ... with a name over `max_username`     | `tag NO [AUTHENTICATIONFAILED]`, counted       | `ExpectCommand` / `Closed` |
//! |                      | `AUTHENTICATE m` (no initial response)  | `+ ` / `+ VXNlcm5hbWU6`                        | `ExpectSaslResponse` |
//! |                      | sync literal `{n}` in LOGIN / ID        | `+ Ready for literal data`                     | `ExpectLiteral`      |
//! |                      | sync literal elsewhere                  | `tag BAD` / `tag NO` (client skips the data)   | `ExpectCommand`      |
//! |                      | sync literal over `max_literal`         | `tag BAD [TOOBIG]` (client skips the data)     | `ExpectCommand`      |
//! |                      | non-sync literal over `max_literal`     | `tag BAD [TOOBIG]` + `* BYE`, `Closed(ProtocolViolation)` | `Closed`  |
//! |                      | unknown mechanism                       | `tag NO [CANNOT]`                              | `ExpectCommand`      |
//! |                      | other command / malformed / no tag      | `tag BAD` / `* BAD`                            | `ExpectCommand`      |
//! | `ExpectLiteral`      | literal data, rest of the command       | as `ExpectCommand` once complete               | as `ExpectCommand`   |
//! | `ExpectSaslResponse` | base64 line                             | next prompt, or nothing + `LoginRequested`     | same / `ExpectOutcome` |
//! |                      | `*`                                     | `tag BAD Authentication cancelled`             | `ExpectCommand`      |
//! |                      | bad base64 / malformed payload          | `tag BAD`                                      | `ExpectCommand`      |
//! | `ExpectTlsHandshake` | `tls_established()`                     | nothing (input is discarded until then)        | `ExpectCommand`      |
//! | `ExpectOutcome`      | `Accepted { untagged, reply }`          | `untagged` + `tag reply`                       | `LoggedIn`           |
//! |                      | `Refused` with challenge (OAuth mech)   | `+ base64(challenge)`                          | `ExpectChallengeAck` |
//! |                      | `Refused`                               | `tag NO [code] text`                           | `ExpectCommand`      |
//! |                      | `Refused`, attempts exhausted           | `tag NO ...` + `* BYE`, `Closed(TooManyAttempts)` | `Closed`          |
//! |                      | bytes                                   | buffered, not parsed (residual on success)     | `ExpectOutcome`      |
//! | `ExpectChallengeAck` | any line (empty, `AQ==`, `*`)           | `tag NO [code] text` (+ BYE when exhausted)    | `ExpectCommand` / `Closed` |
//! | any pre-login state  | line over `max_line`                    | (`tag BAD` +) `* BYE Line too long`, `Closed(ProtocolViolation)` | `Closed` |
//! |                      | deadline passed                         | `* BYE Autologout`, `Closed(AuthTimeout)`      | `Closed`             |
//! |                      | `MAX_PENDING_OUTPUT` of answers queued  | nothing: input waits until `poll_transmit`     | same                 |
//! |                      | input held back past a message + a read | `* BYE Too much input`, `Closed(ProtocolViolation)` | `Closed`        |
//! | `LoggedIn`, `Closed` | anything                                | nothing                                        | same                 |
//!
//! A login whose user name (or SASL authzid, or bearer `user=`) is over `max_username` is not
//! reported: it is answered `tag NO [AUTHENTICATIONFAILED]` and counted like a refusal (closing
//! when attempts are exhausted), so it never reaches the upstream, the log or the audit.
//!
//! The greeting and `CAPABILITY` list mailgate's own capabilities plus what the upstream offers
//! before login (last learnt by the driver, [`ImapFrontend::with_upstream`]), minus what
//! mailgate handles itself. Clients keep that list after login unless the login's OK says
//! otherwise, so nothing is listed that only mailgate honours (`LITERAL+` only when the
//! upstream has it).
//!
//! Every close queues its protocol answer before `Closed` is reported: no silent close.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::imap::parse::{
    self, CommandBody, Frame, FrameLimits, Framer, InitialResponse, LiteralMode, SaslResponse,
};
use crate::proto::sasl;
use crate::proto::{
    CloseReason, Credentials, FrontendEvent, GENERIC_FAILURE, LoginOutcome, LoginRequest,
    MAX_PENDING_OUTPUT, Mechanism, PREAUTH_READ, PreauthLimits, Protocol, Refusal, Security,
};

/// Capabilities mailgate itself offers in every state (RFC 9051 7.2.2; SASL-IR RFC 4959, ID
/// RFC 2971). No `LITERAL+`: a client keeps the pre-login list after login unless told otherwise,
/// so only an upstream that offers it may have it advertised (see [`upstream_extras`]).
const BASE_CAPABILITIES: &str = "IMAP4rev1 SASL-IR ID";
/// Before STARTTLS no mechanism is offered and LOGIN is disabled (RFC 9051 6.2.1, 6.2.3).
const STARTTLS_CAPABILITIES: &str = "STARTTLS LOGINDISABLED";
const AUTH_CAPABILITIES: &str = "AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER";

/// Commands a client may send after login; before it they are answered `BAD` as "not valid in
/// this state" rather than "unknown" (RFC 9051 6).
const LATER_COMMANDS: &[&[u8]] = &[
    b"APPEND",
    b"CHECK",
    b"CLOSE",
    b"COMPRESS",
    b"COPY",
    b"CREATE",
    b"DELETE",
    b"ENABLE",
    b"EXAMINE",
    b"EXPUNGE",
    b"FETCH",
    b"GETACL",
    b"GETMETADATA",
    b"GETQUOTA",
    b"GETQUOTAROOT",
    b"IDLE",
    b"LIST",
    b"LSUB",
    b"MOVE",
    b"MYRIGHTS",
    b"NAMESPACE",
    b"RENAME",
    b"SEARCH",
    b"SELECT",
    b"SETACL",
    b"SETMETADATA",
    b"SORT",
    b"STATUS",
    b"STORE",
    b"SUBSCRIBE",
    b"THREAD",
    b"UID",
    b"UNSELECT",
    b"UNSUBSCRIBE",
];

/// What the machine waits for. States own the data they need.
#[derive(Debug)]
enum State {
    /// A command line.
    ExpectCommand,
    /// The rest of a command whose synchronising literal was accepted with `+`.
    ExpectLiteral { tag: String },
    /// A base64 line answering an AUTHENTICATE continuation.
    ExpectSaslResponse {
        tag: String,
        mechanism: Mechanism,
        step: SaslStep,
    },
    /// The driver's TLS handshake after STARTTLS; input meanwhile is plaintext injection.
    ExpectTlsHandshake,
    /// The driver's verdict on the reported login.
    ExpectOutcome { tag: String, mechanism: Mechanism },
    /// The client's answer to the OAuth error challenge, before the refusal is sent.
    ExpectChallengeAck { tag: String, refusal: Refusal },
    /// Handed off; the driver splices.
    LoggedIn,
    /// Over; the driver closes.
    Closed,
}

/// Where a multi-step SASL exchange is.
#[derive(Debug)]
enum SaslStep {
    /// The single response of PLAIN, XOAUTH2, OAUTHBEARER.
    Response,
    /// SASL LOGIN: the user name.
    LoginUser,
    /// SASL LOGIN: the password, after this user name (not secret).
    LoginPassword { user: Vec<u8> },
}

/// The IMAP pre-auth state machine toward the mail client. See the module docs for the states.
///
/// `Debug` shows state and counters only: buffered input may hold credentials.
#[must_use = "a front-end does nothing unless driven"]
pub struct ImapFrontend {
    state: State,
    security: Security,
    limits: PreauthLimits,
    /// `None` when `now + auth_timeout` does not fit an `Instant` (no deadline then).
    deadline: Option<Instant>,
    input: BytesMut,
    framer: Framer,
    out: BytesMut,
    events: VecDeque<FrontendEvent>,
    failures: u32,
    /// Commands answered `BAD` so far (an AUTHENTICATE cancelled with `*` is not counted).
    bad_commands: u32,
    id_params: Option<Vec<(String, Option<String>)>>,
    /// What the upstream offers beyond mailgate's own list (see [`upstream_extras`]), with a
    /// leading space, or empty.
    extras: String,
}

impl std::fmt::Debug for ImapFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapFrontend")
            .field("state", &self.state)
            .field("security", &self.security)
            .field("deadline", &self.deadline)
            .field("buffered", &self.input.len())
            .field("failures", &self.failures)
            .field("bad_commands", &self.bad_commands)
            .finish_non_exhaustive()
    }
}

impl ImapFrontend {
    /// A new connection; the greeting is queued. Advertises mailgate's own capabilities only,
    /// as before the upstream's are known.
    pub fn new(security: Security, limits: PreauthLimits, now: Instant) -> Self {
        Self::with_upstream(security, limits, now, &[])
    }

    /// A new connection whose greeting and `CAPABILITY` answer also list what the upstream
    /// offers (`upstream`: its last-learned pre-login list), minus what mailgate handles itself
    /// before login. Empty: the upstream is not known yet, only the safe base set is sent.
    pub fn with_upstream(
        security: Security,
        limits: PreauthLimits,
        now: Instant,
        upstream: &[String],
    ) -> Self {
        let mut machine = Self {
            state: State::ExpectCommand,
            security,
            limits,
            deadline: now.checked_add(limits.auth_timeout),
            input: BytesMut::new(),
            framer: Framer::default(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            failures: 0,
            bad_commands: 0,
            id_params: None,
            extras: upstream_extras(upstream),
        };
        let greeting = format!(
            "* OK [CAPABILITY {}] mailgate ready\r\n",
            machine.capabilities()
        );
        machine.send(greeting.as_bytes());
        machine
    }

    /// Bytes from the mail client.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        match self.state {
            // Plaintext that raced the TLS handshake is injection (CVE-2011-0411): drop it.
            State::ExpectTlsHandshake | State::Closed => return,
            State::LoggedIn => {
                self.input.extend_from_slice(bytes);
                return;
            }
            State::ExpectOutcome { .. } => self.input.extend_from_slice(bytes),
            _ => {
                self.input.extend_from_slice(bytes);
                self.process();
            }
        }
        self.limit_pipelined();
    }

    /// Input pipelined behind a login is kept for the upstream, but not without bound; nor is
    /// input held back while answers wait to be sent (more than one message and one read of it
    /// means nobody is draining the answers).
    fn limit_pipelined(&mut self) {
        let limit = if matches!(self.state, State::ExpectOutcome { .. }) {
            self.max_message()
        } else if self.holding() {
            self.max_message().saturating_add(PREAUTH_READ)
        } else {
            return;
        };
        if self.input.len() > limit {
            self.input.clear();
            self.send(b"* BYE Too much input before the login completed\r\n");
            self.close(CloseReason::ProtocolViolation);
        }
    }

    /// Too many answers wait to be sent: read no further command until they are.
    fn holding(&self) -> bool {
        self.out.len() >= MAX_PENDING_OUTPUT
    }

    /// The driver's answer to [`FrontendEvent::LoginRequested`]. Ignored in any other state.
    pub fn handle_outcome(&mut self, outcome: LoginOutcome) {
        if !matches!(self.state, State::ExpectOutcome { .. }) {
            return;
        }
        let State::ExpectOutcome { tag, mechanism } =
            std::mem::replace(&mut self.state, State::ExpectCommand)
        else {
            return;
        };
        match outcome {
            LoginOutcome::Accepted { untagged, reply } => {
                self.send(&untagged);
                self.send(tag.as_bytes());
                self.send(b" ");
                self.send(&reply);
                if !reply.ends_with(b"\r\n") {
                    self.send(b"\r\n");
                }
                self.state = State::LoggedIn;
                return;
            }
            LoginOutcome::Refused(refusal) => {
                let oauth = matches!(mechanism, Mechanism::XOAuth2 | Mechanism::OAuthBearer);
                match refusal.challenge.as_ref() {
                    Some(challenge) if oauth => {
                        // As the big providers do: the error JSON first, the NO after the ack.
                        let line = format!("+ {}\r\n", sasl::encode_base64(challenge));
                        self.send(line.as_bytes());
                        self.state = State::ExpectChallengeAck { tag, refusal };
                    }
                    _ => self.refuse(&tag, &refusal),
                }
            }
        }
        self.process();
    }

    /// Time passed; closes with `* BYE` when the authentication deadline is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.logged_in_or_closed() {
            return;
        }
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            self.input.clear();
            self.send(b"* BYE Autologout; authentication time limit\r\n");
            self.close(CloseReason::AuthTimeout);
        }
    }

    /// When the driver must call `handle_timeout` next; `None` once logged in or closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.logged_in_or_closed() {
            None
        } else {
            self.deadline
        }
    }

    /// The driver finished the TLS handshake [`FrontendEvent::TlsRequested`] asked for.
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::ExpectTlsHandshake) {
            self.security = Security::Tls;
            self.input.clear();
            self.framer.reset();
            self.state = State::ExpectCommand;
        }
    }

    pub fn poll_event(&mut self) -> Option<FrontendEvent> {
        self.events.pop_front()
    }

    /// Bytes for the downstream, in order. Handing them out lets the machine answer the
    /// commands it held back behind [`MAX_PENDING_OUTPUT`]; their answers come with the next
    /// call, so a driver that sends each chunk before it polls again never holds more than two.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let out = self.out.split().freeze();
        self.process();
        Some(out)
    }

    /// Input the client sent after its login, for the upstream. Only meaningful once logged in.
    #[must_use = "residual bytes belong to the upstream; dropping them loses client commands"]
    pub fn into_residual(self) -> Bytes {
        self.input.freeze()
    }

    /// The tag of the login in progress (being exchanged, decided or refused).
    pub fn tag(&self) -> Option<&str> {
        match &self.state {
            State::ExpectLiteral { tag }
            | State::ExpectSaslResponse { tag, .. }
            | State::ExpectOutcome { tag, .. }
            | State::ExpectChallengeAck { tag, .. } => Some(tag),
            _ => None,
        }
    }

    /// The parameters of the client's last `ID` command (RFC 2971), lossily decoded.
    pub fn id_params(&self) -> Option<&[(String, Option<String>)]> {
        self.id_params.as_deref()
    }

    /// The downstream's TLS state as the machine sees it.
    pub fn security(&self) -> Security {
        self.security
    }

    /// The list for the greeting and `CAPABILITY`: mailgate's own, then the upstream's extras,
    /// then what this security state allows for logging in.
    fn capabilities(&self) -> String {
        let login = match self.security {
            Security::StartTlsOffered => STARTTLS_CAPABILITIES,
            Security::Tls | Security::Plaintext => AUTH_CAPABILITIES,
        };
        format!("{BASE_CAPABILITIES}{} {login}", self.extras)
    }

    fn logged_in_or_closed(&self) -> bool {
        matches!(self.state, State::LoggedIn | State::Closed)
    }

    /// Largest message: one line plus two literals (LOGIN's user and password).
    fn max_message(&self) -> usize {
        self.limits
            .max_line
            .saturating_add(self.limits.max_literal.saturating_mul(2))
    }

    fn frame_limits(&self, literals: LiteralMode) -> FrameLimits {
        FrameLimits {
            max_line: self.limits.max_line,
            max_literal: self.limits.max_literal,
            max_message: self.max_message(),
            literals,
        }
    }

    /// Parse and answer buffered input until a state that reads nothing, or until more bytes
    /// are needed.
    fn process(&mut self) {
        loop {
            if self.bad_commands >= self.limits.max_bad_commands && !self.logged_in_or_closed() {
                // As Dovecot's imap-login: a client that keeps sending what it is told is
                // invalid is not a mail client; without this a junk loop runs until
                // `auth_timeout`.
                self.input.clear();
                self.send(b"* BYE Too many invalid commands\r\n");
                self.close(CloseReason::TooManyErrors);
                return;
            }
            if self.holding() {
                return;
            }
            let literals = match self.state {
                State::ExpectCommand | State::ExpectLiteral { .. } => LiteralMode::Client,
                State::ExpectSaslResponse { .. } | State::ExpectChallengeAck { .. } => {
                    LiteralMode::None
                }
                _ => return,
            };
            let limits = self.frame_limits(literals);
            match self.framer.next(&self.input, &limits) {
                Frame::Incomplete => return,
                Frame::LineTooLong => {
                    let tag = self.current_tag();
                    self.input.clear();
                    if let Some(tag) = tag {
                        self.send_tagged(&tag, "BAD Line too long");
                    }
                    self.send(b"* BYE Line too long\r\n");
                    self.close(CloseReason::ProtocolViolation);
                    return;
                }
                Frame::LiteralTooLarge { data_start, sync } => {
                    let tag = self.current_tag();
                    self.tagged_or_untagged(tag.as_deref(), "BAD [TOOBIG] Literal too large");
                    if sync {
                        // The client waits for `+`, gets BAD and does not send the data.
                        self.consume(data_start);
                        self.state = State::ExpectCommand;
                    } else {
                        // The data follows regardless; skipping it unseen is not safe.
                        self.input.clear();
                        self.send(b"* BYE Literal too large\r\n");
                        self.close(CloseReason::ProtocolViolation);
                        return;
                    }
                }
                Frame::LiteralAnnounced { data_start, len } => {
                    self.literal_announced(data_start, len)
                }
                Frame::Complete { len } => {
                    let msg = self.input.split_to(len);
                    self.framer.reset();
                    match std::mem::replace(&mut self.state, State::ExpectCommand) {
                        State::ExpectSaslResponse {
                            tag,
                            mechanism,
                            step,
                        } => self.sasl_line(tag, mechanism, step, &msg),
                        State::ExpectChallengeAck { tag, refusal } => self.refuse(&tag, &refusal),
                        _ => self.command(&msg),
                    }
                }
            }
        }
    }

    /// Tag of the message at the front of the buffer, or of the exchange in progress.
    fn current_tag(&self) -> Option<String> {
        self.tag()
            .map(str::to_owned)
            .or_else(|| parse::tag_prefix(&self.input).map(str::to_owned))
    }

    /// A synchronising literal fits the limit: continue only where a literal is expected,
    /// otherwise refuse now so the client never sends the data (RFC 9051 7.5).
    fn literal_announced(&mut self, data_start: usize, len: usize) {
        let head = parse::command_head(self.input.get(..data_start).unwrap_or_default())
            .map(|(tag, name)| (tag.to_owned(), name.to_ascii_uppercase()));
        let Some((tag, name)) = head else {
            self.consume(data_start);
            self.send_bad_untagged(b"* BAD Missing tag\r\n");
            return;
        };
        let refusal = match name.as_slice() {
            b"LOGIN" if !self.security.logins_allowed() => Some(privacy_required()),
            b"LOGIN" | b"ID" => None,
            b"CAPABILITY" | b"NOOP" | b"LOGOUT" | b"STARTTLS" | b"AUTHENTICATE" => {
                Some("BAD Invalid command syntax")
            }
            other => Some(other_command(other)),
        };
        match refusal {
            Some(answer) => {
                self.consume(data_start);
                self.state = State::ExpectCommand;
                self.send_tagged(&tag, answer);
            }
            None => {
                self.send(b"+ Ready for literal data\r\n");
                self.framer.accept_literal(data_start, len);
                self.state = State::ExpectLiteral { tag };
            }
        }
    }

    /// One complete command message.
    fn command(&mut self, msg: &[u8]) {
        let command = match parse::command(msg) {
            Ok(command) => command,
            Err(parse::Malformed { tag: Some(tag) }) => {
                return self.send_tagged(tag, "BAD Invalid command syntax");
            }
            Err(parse::Malformed { tag: None }) => {
                return self.send_bad_untagged(b"* BAD Missing or invalid tag\r\n");
            }
        };
        let tag = command.tag;
        match command.body {
            CommandBody::Capability => {
                let line = format!("* CAPABILITY {}\r\n", self.capabilities());
                self.send(line.as_bytes());
                self.send_tagged(tag, "OK CAPABILITY completed");
            }
            CommandBody::Noop => self.send_tagged(tag, "OK NOOP completed"),
            CommandBody::Logout => {
                self.send(b"* BYE mailgate logging out\r\n");
                self.send_tagged(tag, "OK LOGOUT completed");
                self.input.clear();
                self.close(CloseReason::Logout);
            }
            CommandBody::StartTls => {
                if self.security == Security::StartTlsOffered {
                    self.send_tagged(tag, "OK Begin TLS negotiation now");
                    // CVE-2011-0411: whatever followed STARTTLS in plaintext is never read.
                    self.input.clear();
                    self.framer.reset();
                    self.state = State::ExpectTlsHandshake;
                    self.events.push_back(FrontendEvent::TlsRequested);
                } else {
                    self.send_tagged(tag, "BAD STARTTLS not available");
                }
            }
            CommandBody::Id(params) => {
                self.id_params = params.map(|params| {
                    params
                        .iter()
                        .map(|(field, value)| {
                            (
                                String::from_utf8_lossy(field).into_owned(),
                                value
                                    .as_ref()
                                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                            )
                        })
                        .collect()
                });
                self.send(b"* ID (\"name\" \"mailgate\")\r\n");
                self.send_tagged(tag, "OK ID completed");
            }
            CommandBody::Login { user, password } => {
                if !self.security.logins_allowed() {
                    return self.send_tagged(tag, privacy_required());
                }
                match sasl::login_credentials(&user, password.into_owned()) {
                    Ok(credentials) => {
                        self.login_requested(tag.to_owned(), Mechanism::ImapLogin, credentials)
                    }
                    Err(_) => self.send_tagged(tag, "BAD Invalid user name"),
                }
            }
            CommandBody::Authenticate { mechanism, initial } => {
                self.authenticate(tag.to_owned(), mechanism, initial)
            }
            CommandBody::Other { name } => {
                self.send_tagged(tag, other_command(&name.to_ascii_uppercase()))
            }
        }
    }

    /// `AUTHENTICATE mechanism [initial-response]` (RFC 9051 6.2.2, RFC 4959).
    fn authenticate(&mut self, tag: String, name: &[u8], initial: Option<InitialResponse<'_>>) {
        if !self.security.logins_allowed() {
            return self.send_tagged(&tag, privacy_required());
        }
        let Some(mechanism) = sasl::parse_mechanism(name) else {
            return self.send_tagged(&tag, "NO [CANNOT] Unsupported authentication mechanism");
        };
        let first = if mechanism == Mechanism::Login {
            SaslStep::LoginUser
        } else {
            SaslStep::Response
        };
        match initial {
            None => {
                let prompt: &[u8] = match first {
                    SaslStep::LoginUser => b"+ VXNlcm5hbWU6\r\n",
                    _ => b"+ \r\n",
                };
                self.send(prompt);
                self.state = State::ExpectSaslResponse {
                    tag,
                    mechanism,
                    step: first,
                };
            }
            Some(InitialResponse::Empty) => self.sasl_response(tag, mechanism, first, Vec::new()),
            Some(InitialResponse::Base64(text)) => match sasl::decode_base64(text) {
                Ok(data) => self.sasl_response(tag, mechanism, first, data),
                Err(_) => self.send_tagged(&tag, "BAD Invalid base64 in SASL response"),
            },
        }
    }

    /// A line answering an AUTHENTICATE continuation.
    fn sasl_line(&mut self, tag: String, mechanism: Mechanism, step: SaslStep, line: &[u8]) {
        match parse::authenticate_response(line) {
            Some(SaslResponse::Cancel) => self.send_tagged(&tag, CANCELLED),
            Some(SaslResponse::Base64(text)) => match sasl::decode_base64(text) {
                Ok(data) => self.sasl_response(tag, mechanism, step, data),
                Err(_) => self.send_tagged(&tag, "BAD Invalid base64 in SASL response"),
            },
            None => self.send_tagged(&tag, "BAD Invalid base64 in SASL response"),
        }
    }

    /// A decoded SASL response at `step`.
    fn sasl_response(&mut self, tag: String, mechanism: Mechanism, step: SaslStep, data: Vec<u8>) {
        let credentials = match step {
            SaslStep::Response => sasl::decode(mechanism, &data),
            SaslStep::LoginUser => {
                if data.is_empty() {
                    return self.send_tagged(&tag, "BAD Malformed SASL response");
                }
                self.send(b"+ UGFzc3dvcmQ6\r\n");
                self.state = State::ExpectSaslResponse {
                    tag,
                    mechanism,
                    step: SaslStep::LoginPassword { user: data },
                };
                return;
            }
            SaslStep::LoginPassword { user } => sasl::login_credentials(&user, data),
        };
        match credentials {
            Ok(credentials) => self.login_requested(tag, mechanism, credentials),
            Err(_) => self.send_tagged(&tag, "BAD Malformed SASL response"),
        }
    }

    /// Report the login, unless a name in it is over `max_username`: that one is refused here
    /// as a credentials failure and counted as an attempt, and never reaches the driver (so
    /// neither the upstream, nor the log, nor the audit sees any of it).
    fn login_requested(&mut self, tag: String, mechanism: Mechanism, credentials: Credentials) {
        let request = LoginRequest {
            mechanism,
            credentials,
        };
        if !request.names_fit(self.limits.max_username) {
            return self.refuse(&tag, &Refusal::name_too_long());
        }
        self.state = State::ExpectOutcome { tag, mechanism };
        self.events
            .push_back(FrontendEvent::LoginRequested(request));
    }

    /// Send the refusal, count it, close when attempts are exhausted.
    fn refuse(&mut self, tag: &str, refusal: &Refusal) {
        let prefix = refusal.class.wire_prefix(Protocol::Imap);
        let text: String = refusal.text.chars().filter(|c| !c.is_control()).collect();
        let text = match text.trim() {
            "" => GENERIC_FAILURE,
            text => text,
        };
        self.send_tagged(tag, &format!("{prefix} {text}"));
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.limits.max_attempts {
            self.input.clear();
            self.send(b"* BYE Too many invalid authentication attempts\r\n");
            self.close(CloseReason::TooManyAttempts);
        } else {
            self.state = State::ExpectCommand;
        }
    }

    fn consume(&mut self, len: usize) {
        let len = len.min(self.input.len());
        let _ = self.input.split_to(len);
        self.framer.reset();
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.events.push_back(FrontendEvent::Closed(reason));
    }

    fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// A tagged answer; a `BAD` one (but for a cancelled AUTHENTICATE, which is the client's
    /// right) counts against `max_bad_commands`.
    fn send_tagged(&mut self, tag: &str, rest: &str) {
        if rest.starts_with("BAD ") && rest != CANCELLED {
            self.bad_commands = self.bad_commands.saturating_add(1);
        }
        self.out.extend_from_slice(tag.as_bytes());
        self.out.extend_from_slice(b" ");
        self.out.extend_from_slice(rest.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn send_bad_untagged(&mut self, line: &[u8]) {
        self.bad_commands = self.bad_commands.saturating_add(1);
        self.send(line);
    }

    fn tagged_or_untagged(&mut self, tag: Option<&str>, rest: &str) {
        self.send_tagged(tag.unwrap_or("*"), rest);
    }
}

/// The answer to `*` in an AUTHENTICATE exchange (RFC 9051 6.2.2): the client's right, not an
/// invalid command.
const CANCELLED: &str = "BAD Authentication cancelled";

/// The upstream's pre-login capabilities a client may rely on through mailgate, each with a
/// leading space: everything but what mailgate answers itself before login (`AUTH=`, `SASL-IR`,
/// `STARTTLS`, `LOGINDISABLED`, `ID`, and `IMAP4rev1`, already listed). `LITERAL+` / `LITERAL-`
/// stay only here: mailgate's front-end reads non-synchronising literals anyway, but a client
/// keeps this list after login, where only the upstream's support counts (a literal sent `{n+}`
/// to a server without LITERAL+ is read as commands). Tokens that are not IMAP atoms
/// (RFC 9051 9 `capability`) are dropped: they would break the `[CAPABILITY ...]` code.
fn upstream_extras(upstream: &[String]) -> String {
    let mut extras = String::new();
    let mut seen: Vec<String> = Vec::new();
    for capability in upstream {
        let upper = capability.to_ascii_uppercase();
        let handled = upper.starts_with("AUTH=")
            || matches!(
                upper.as_str(),
                "IMAP4REV1" | "SASL-IR" | "STARTTLS" | "LOGINDISABLED" | "ID"
            );
        if handled || !parse::is_atom(capability.as_bytes()) || seen.contains(&upper) {
            continue;
        }
        extras.push(' ');
        extras.push_str(capability);
        seen.push(upper);
    }
    extras
}

/// RFC 5530 3: "the operation is not permitted due to a lack of privacy".
fn privacy_required() -> &'static str {
    "NO [PRIVACYREQUIRED] Use STARTTLS before logging in"
}

fn other_command(upper_name: &[u8]) -> &'static str {
    if LATER_COMMANDS.contains(&upper_name) {
        "BAD Command not valid in this state"
    } else {
        "BAD Unknown command"
    }
}

#[cfg(test)]
mod tests;
