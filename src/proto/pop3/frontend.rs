//! Stage: POP3 pre-auth front-end (downstream side). SANS-IO.
//!
//! Inputs: downstream bytes (`handle_input`), the driver's login verdict (`handle_outcome`),
//! time (`handle_timeout`), the end of the STLS handshake (`tls_established`). Outputs: bytes for
//! the downstream (`poll_transmit`), [`FrontendEvent`]s (`poll_event`), and at hand-off the
//! unread bytes (`into_residual`). It must not do I/O, read the clock, decide policy or talk to
//! the upstream; it only speaks POP3 (RFC 1939, 2449, 2595, 3206, 5034) to the downstream.
//!
//! # States
//!
//! Each state is named after what it waits for. Every edge into `Closed` queues a protocol
//! answer first, then reports `Closed(reason)`: the connection never closes silently.
//!
//! | state | input | answer | next |
//! |---|---|---|---|
//! | (new) | | `+OK mailgate ready.` | `ExpectCommand` |
//! | `ExpectCommand` | `CAPA` | capability list | same |
//! | | `NOOP` | `+OK` | same |
//! | | `QUIT` | `+OK Logging out.` | `Closed(Logout)` |
//! | | `STLS` (StartTlsOffered) | `+OK Begin TLS...`, `TlsRequested` (1) | `ExpectTlsHandshake` |
//! | | `STLS` (otherwise) | `-ERR` | same |
//! | | `USER`/`PASS`/`AUTH` before TLS | `-ERR [AUTH] Plaintext ... disallowed` | same |
//! | | `USER name` | `+OK` | `ExpectPass` |
//! | | `PASS` | `-ERR No user name given.` | same |
//! | | `AUTH` | mechanism list | same |
//! | | `AUTH m ir` (PLAIN, XOAUTH2, OAUTHBEARER) | `LoginRequested` | `ExpectOutcome` |
//! | | `AUTH m` | `+ ` | `ExpectSaslResponse` |
//! | | `AUTH LOGIN [ir]` | `+ VXNlcm5hbWU6` / `+ UGFzc3dvcmQ6` | `ExpectSaslResponse` |
//! | | unknown mechanism, bad base64, malformed | `-ERR` | same |
//! | | STAT, LIST, RETR, ... / unknown | `-ERR` | same |
//! | `ExpectPass` | `PASS pw` | `LoginRequested` | `ExpectOutcome` |
//! | any login edge above | a name over `max_username` (USER, authcid, authzid, `user=`) | `-ERR [AUTH] Authentication failed`, counted as a refusal, not reported | `ExpectCommand` / `Closed(TooManyAttempts)` |
//! | | `USER name` / `CAPA` / `NOOP` | as above | same |
//! | | anything else | as in `ExpectCommand` (user forgotten) | |
//! | `ExpectSaslResponse` | `*` | `-ERR Authentication cancelled.` | `ExpectCommand` |
//! | | bad base64 / malformed | `-ERR` | `ExpectCommand` |
//! | | LOGIN user name | `+ UGFzc3dvcmQ6` | same |
//! | | last response | `LoginRequested` | `ExpectOutcome` |
//! | `ExpectTlsHandshake` | bytes | dropped (CVE-2011-0411) | same |
//! | | `tls_established()` | | `ExpectCommand` (Security::Tls) |
//! | `ExpectOutcome` | bytes | buffered, not parsed | same |
//! | | more than `max_line` buffered | `-ERR Line too long.` | `Closed(ProtocolViolation)` |
//! | | `Accepted { reply }` | `reply` as sent by upstream | `LoggedIn` |
//! | | `Refused` + challenge (OAuth mech.) | `+ base64(challenge)` | `ExpectChallengeAck` |
//! | | `Refused` | `-ERR [AUTH]` / `-ERR [SYS/TEMP]` text | `ExpectCommand` |
//! | | `Refused`, attempts used up | refusal, `-ERR Too many...` | `Closed(TooManyAttempts)` |
//! | `ExpectChallengeAck` | any line (empty, `AQ==`, `*`) | the refusal, as above | as above |
//! | `LoggedIn` | bytes | buffered for `into_residual()` | same |
//! | not logged in | line over `max_line` | `-ERR Line too long.` | `Closed(ProtocolViolation)` |
//! | not logged in | `now >= deadline` | `-ERR [SYS/TEMP] Autologout...` | `Closed(AuthTimeout)` |
//! | `Closed` | anything | ignored | same |
//!
//! (1) Every byte already buffered after the STLS line is dropped (CVE-2011-0411).
//!
//! The auth deadline (`now` at [`Pop3Frontend::new`] plus `auth_timeout`) also runs while
//! the driver decides (`ExpectOutcome`): time to authenticate includes the upstream's answer.
//!
//! Pipelining (RFC 2449 6.6): every complete line in one `handle_input` is answered in order;
//! once a login is reported, reading stops and the rest waits in the buffer, so bytes pipelined
//! after `PASS` reach the upstream exactly once, through `into_residual()`. Once
//! [`MAX_PENDING_OUTPUT`] of answers wait, no further line is read until `poll_transmit` hands
//! them out (a client that pipelines and never reads gets no more answers queued, issue 9).

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::pop3::parse::{self, Command, InitialResponse, SaslResponse, Split};
use crate::proto::sasl;
use crate::proto::{
    CloseReason, Credentials, FrontendEvent, LoginOutcome, LoginRequest, MAX_PENDING_OUTPUT,
    Mechanism, PREAUTH_READ, PreauthLimits, Protocol, Refusal, Security,
};
use crate::secret::Secret;

const GREETING: &[u8] = b"+OK mailgate ready.\r\n";
/// RFC 3206 4: `[AUTH]` marks a credential problem, as Dovecot answers this case.
const PLAINTEXT_REFUSED: &[u8] =
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n";
const LINE_TOO_LONG: &[u8] = b"-ERR Line too long.\r\n";
/// RFC 3206 5: `[SYS/TEMP]`, a condition that will pass; reconnecting helps.
const AUTOLOGOUT: &[u8] = b"-ERR [SYS/TEMP] Autologout; authentication took too long.\r\n";
const TOO_MANY_ATTEMPTS: &[u8] = b"-ERR Too many failed logins; disconnecting.\r\n";
const TOO_MANY_ERRORS: &[u8] = b"-ERR Too many invalid commands; disconnecting.\r\n";
const MECHANISMS: &[u8] = b"PLAIN\r\nLOGIN\r\nXOAUTH2\r\nOAUTHBEARER\r\n";

/// The POP3 pre-auth machine for one downstream connection. See the module docs for states.
#[must_use = "a front-end that is not polled never answers the downstream"]
pub struct Pop3Frontend {
    state: State,
    security: Security,
    limits: PreauthLimits,
    deadline: Instant,
    /// Refused logins so far (RFC 5034 has no limit; Dovecot's default is 3).
    failures: u32,
    /// Invalid commands answered `-ERR` so far (`max_bad_commands`; a cancelled AUTH and
    /// refused logins are not counted here).
    bad_commands: u32,
    /// Unparsed downstream bytes; may hold credentials, so never printed.
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<FrontendEvent>,
    /// The upstream's extra `CAPA` lines (see [`upstream_extras`]), CRLF-terminated.
    extras: String,
}

/// What the machine waits for. Holds no secret: a password goes straight into the event.
#[derive(Debug)]
enum State {
    ExpectCommand,
    /// `USER` was accepted; waiting for `PASS` (RFC 1939 7).
    ExpectPass {
        user: String,
    },
    /// Inside `AUTH`: waiting for the downstream's next base64 line.
    ExpectSaslResponse {
        mechanism: Mechanism,
        step: SaslStep,
    },
    /// `TlsRequested` was reported; waiting for `tls_established()`.
    ExpectTlsHandshake,
    /// `LoginRequested` was reported; waiting for `handle_outcome()`.
    ExpectOutcome {
        mechanism: Mechanism,
    },
    /// The refusal's challenge was sent; waiting for the downstream's dummy response.
    ExpectChallengeAck {
        refusal: Refusal,
    },
    LoggedIn,
    Closed,
}

#[derive(Debug)]
enum SaslStep {
    /// The one response of PLAIN, XOAUTH2, OAUTHBEARER.
    Response,
    /// LOGIN: the user name, after `+ VXNlcm5hbWU6`.
    LoginUser,
    /// LOGIN: the password, after `+ UGFzc3dvcmQ6`.
    LoginPassword { user: Vec<u8> },
}

impl Pop3Frontend {
    /// A machine for a freshly accepted connection; the greeting is queued. `CAPA` lists
    /// mailgate's own capabilities only, as before the upstream's are known.
    pub fn new(security: Security, limits: PreauthLimits, now: Instant) -> Self {
        Self::with_upstream(security, limits, now, &[])
    }

    /// As [`Pop3Frontend::new`], with `CAPA` also listing the upstream's own capabilities
    /// (`upstream`: its last-learnt `CAPA` lines: `TOP`, `UIDL`, `EXPIRE 30`, ...) minus those
    /// mailgate handles before login.
    pub fn with_upstream(
        security: Security,
        limits: PreauthLimits,
        now: Instant,
        upstream: &[String],
    ) -> Self {
        let mut frontend = Self {
            state: State::ExpectCommand,
            security,
            limits,
            // A timeout too large for the clock (config allows up to u64::MAX ms) means "a day",
            // never a panic.
            deadline: now
                .checked_add(limits.auth_timeout)
                .or_else(|| now.checked_add(std::time::Duration::from_secs(86_400)))
                .unwrap_or(now),
            failures: 0,
            bad_commands: 0,
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            extras: upstream_extras(upstream),
        };
        frontend.send(GREETING);
        frontend
    }

    /// Bytes read from the downstream.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        match self.state {
            State::Closed => {}
            // CVE-2011-0411: nothing sent before the handshake may count as a command after it.
            State::ExpectTlsHandshake => {}
            _ => {
                self.input.extend_from_slice(bytes);
                self.process();
            }
        }
    }

    /// The driver's answer to `FrontendEvent::LoginRequested`. Ignored in any other state.
    pub fn handle_outcome(&mut self, outcome: LoginOutcome) {
        let State::ExpectOutcome { mechanism } = self.state else {
            return;
        };
        match outcome {
            LoginOutcome::Accepted { reply, .. } => {
                // The upstream's own `+OK ...\r\n` line, so the downstream sees its banner text.
                self.output.extend_from_slice(&reply);
                self.state = State::LoggedIn;
            }
            LoginOutcome::Refused(refusal) => {
                match (&refusal.challenge, mechanism) {
                    (Some(challenge), Mechanism::XOAuth2 | Mechanism::OAuthBearer) => {
                        // RFC 7628 3.2.2 / XOAUTH2: the error JSON goes out as a challenge; the
                        // final -ERR follows the client's dummy response.
                        let line = format!("+ {}\r\n", sasl::encode_base64(challenge));
                        self.send(line.as_bytes());
                        self.state = State::ExpectChallengeAck { refusal };
                    }
                    _ => self.refuse(&refusal),
                }
                self.process();
            }
        }
    }

    /// Time passed; closes the session when the auth deadline is reached before login.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::LoggedIn | State::Closed) || now < self.deadline {
            return;
        }
        self.send(AUTOLOGOUT);
        self.close(CloseReason::AuthTimeout);
    }

    /// When the driver must call `handle_timeout` next; `None` once logged in or closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::LoggedIn | State::Closed => None,
            _ => Some(self.deadline),
        }
    }

    /// The TLS handshake after `TlsRequested` finished; logins are allowed from now on.
    pub fn tls_established(&mut self) {
        if let State::ExpectTlsHandshake = self.state {
            self.security = Security::Tls;
            self.input.clear();
            self.state = State::ExpectCommand;
        }
    }

    pub fn poll_event(&mut self) -> Option<FrontendEvent> {
        self.events.pop_front()
    }

    /// Bytes for the downstream, in order. Send them all before acting on `Closed` or
    /// `TlsRequested`.
    ///
    /// Handing them out lets the machine answer the lines it held back behind
    /// [`MAX_PENDING_OUTPUT`]; their answers come with the next call.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.output.is_empty() {
            return None;
        }
        let out = self.output.split().freeze();
        self.process();
        Some(out)
    }

    /// The downstream bytes not read by the machine: after `LoggedIn`, everything that followed
    /// the login, exactly as received. The driver sends them upstream before splicing.
    pub fn into_residual(self) -> Bytes {
        self.input.freeze()
    }

    /// Answer every complete line the current state reads, in order.
    fn process(&mut self) {
        loop {
            if self.bad_commands >= self.limits.max_bad_commands
                && !matches!(self.state, State::Closed | State::LoggedIn)
            {
                // As Dovecot's pop3-login: a client that keeps sending what it is told is
                // invalid is not a mail client; without this a junk loop runs until
                // `auth_timeout`.
                self.send(TOO_MANY_ERRORS);
                self.close(CloseReason::TooManyErrors);
                return;
            }
            match self.state {
                State::Closed | State::LoggedIn | State::ExpectTlsHandshake => return,
                State::ExpectOutcome { .. } => {
                    // Pipelined bytes wait unparsed; bound them like one more line.
                    if self.input.len() > self.limits.max_line {
                        self.line_too_long();
                    }
                    return;
                }
                _ => {}
            }
            if self.output.len() >= MAX_PENDING_OUTPUT {
                // Answers wait to be sent: no further line is read until they are (RFC 2449 6.6
                // pipelining does not oblige a server to buffer without bound). The driver reads
                // only after sending them, so more than a line and a read means it does not.
                if self.input.len() > self.limits.max_line.saturating_add(PREAUTH_READ) {
                    self.line_too_long();
                }
                return;
            }
            match parse::split_line(&self.input, self.limits.max_line) {
                Split::Incomplete => return,
                Split::TooLong => {
                    self.line_too_long();
                    return;
                }
                Split::Line { content, consumed } => {
                    let line = self.input.split_to(consumed);
                    self.handle_line(&line[..content]);
                }
            }
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        match std::mem::replace(&mut self.state, State::ExpectCommand) {
            State::ExpectCommand => self.command(line, None),
            State::ExpectPass { user } => self.command(line, Some(user)),
            State::ExpectSaslResponse { mechanism, step } => self.sasl_line(line, mechanism, step),
            State::ExpectChallengeAck { refusal } => self.refuse(&refusal),
            // `process` reads no line in these; put the state back untouched.
            other => self.state = other,
        }
    }

    /// One command in AUTHORIZATION state (RFC 1939 4). `user` is the name from an earlier
    /// `USER`, if the previous command was one.
    fn command(&mut self, line: &[u8], user: Option<String>) {
        let command = parse::command(line);
        let login_command = matches!(
            command,
            Command::User(_) | Command::Pass(_) | Command::Auth(_)
        );
        if login_command && !self.security.logins_allowed() {
            // RFC 2595 4: no login before STLS; the answer says nothing about the user.
            self.send(PLAINTEXT_REFUSED);
            return;
        }
        match command {
            Command::Capa => {
                self.capa();
                self.keep_user(user);
            }
            Command::Noop => {
                self.send(b"+OK\r\n");
                self.keep_user(user);
            }
            Command::Quit => {
                self.send(b"+OK Logging out.\r\n");
                self.close(CloseReason::Logout);
            }
            Command::Stls => match self.security {
                Security::StartTlsOffered => {
                    self.send(b"+OK Begin TLS negotiation now.\r\n");
                    // CVE-2011-0411: drop what was pipelined after STLS.
                    self.input.clear();
                    self.state = State::ExpectTlsHandshake;
                    self.events.push_back(FrontendEvent::TlsRequested);
                }
                Security::Tls => self.send_bad(b"-ERR TLS is already active.\r\n"),
                Security::Plaintext => self.send_bad(b"-ERR STLS is not available.\r\n"),
            },
            Command::User(name) => match user_name(name) {
                Some(name) => {
                    self.send(b"+OK\r\n");
                    self.state = State::ExpectPass { user: name };
                }
                None => self.send_bad(b"-ERR Invalid user name.\r\n"),
            },
            Command::Pass(password) => match user {
                None => self.send_bad(b"-ERR No user name given.\r\n"),
                Some(_) if password.is_empty() => self.send_bad(b"-ERR No password given.\r\n"),
                Some(user) => self.login(
                    Mechanism::UserPass,
                    Credentials::Password {
                        authzid: None,
                        user,
                        password: Secret::new(password.to_vec()),
                    },
                ),
            },
            Command::Auth(None) => {
                self.send(b"+OK\r\n");
                self.send(MECHANISMS);
                self.send(b".\r\n");
            }
            Command::Auth(Some(auth)) => self.auth(auth),
            Command::NotBeforeLogin => self.send_bad(b"-ERR Command not valid before login.\r\n"),
            Command::Invalid(text) => {
                self.count_bad();
                self.send(b"-ERR ");
                self.send(text.as_bytes());
                self.send(b"\r\n");
            }
            Command::Unknown => self.send_bad(b"-ERR Unknown command.\r\n"),
        }
    }

    fn keep_user(&mut self, user: Option<String>) {
        if let Some(user) = user {
            self.state = State::ExpectPass { user };
        }
    }

    /// RFC 2449 5, 6. Login capabilities only when a login would be accepted (RFC 2595 4, as
    /// Dovecot hides them before STLS); `AUTH-RESP-CODE` from RFC 3206 6.
    fn capa(&mut self) {
        self.send(b"+OK Capability list follows\r\nCAPA\r\n");
        if self.security == Security::StartTlsOffered {
            self.send(b"STLS\r\n");
        }
        if self.security.logins_allowed() {
            self.send(b"USER\r\nSASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n");
        }
        self.output.extend_from_slice(self.extras.as_bytes());
        self.send(
            b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailgate\r\n.\r\n",
        );
    }

    fn auth(&mut self, auth: parse::Auth<'_>) {
        let Some(mechanism) = sasl::parse_mechanism(auth.mechanism) else {
            // RFC 5034 4: "the server SHOULD reject the AUTH command by sending a negative
            // response". No [AUTH] code: the credentials are not the problem.
            self.send_bad(b"-ERR Unsupported authentication mechanism.\r\n");
            return;
        };
        let initial = match auth.initial_response {
            None => None,
            Some(InitialResponse::Empty) => Some(Vec::new()),
            Some(InitialResponse::Base64(text)) => match sasl::decode_base64(text) {
                Ok(payload) => Some(payload),
                Err(_) => {
                    self.send_bad(b"-ERR Invalid base64 data in initial response.\r\n");
                    return;
                }
            },
        };
        match (mechanism, initial) {
            (Mechanism::Login, None) => self.prompt(mechanism, SaslStep::LoginUser),
            (_, None) => self.prompt(mechanism, SaslStep::Response),
            // LOGIN's initial response is the user name (draft-murchison-sasl-login 2).
            (Mechanism::Login, Some(payload)) => {
                self.sasl_step(mechanism, SaslStep::LoginUser, payload)
            }
            (_, Some(payload)) => self.sasl_step(mechanism, SaslStep::Response, payload),
        }
    }

    /// RFC 5034 4: `continue-req = "+" SP [base64] CRLF`.
    fn prompt(&mut self, mechanism: Mechanism, step: SaslStep) {
        match step {
            SaslStep::Response => self.send(b"+ \r\n"),
            SaslStep::LoginUser => {
                self.send(b"+ ");
                self.send(sasl::LOGIN_USER_PROMPT.as_bytes());
                self.send(b"\r\n");
            }
            SaslStep::LoginPassword { .. } => {
                self.send(b"+ ");
                self.send(sasl::LOGIN_PASSWORD_PROMPT.as_bytes());
                self.send(b"\r\n");
            }
        }
        self.state = State::ExpectSaslResponse { mechanism, step };
    }

    fn sasl_line(&mut self, line: &[u8], mechanism: Mechanism, step: SaslStep) {
        match parse::sasl_response(line) {
            // RFC 5034 4: "If the server receives such a response, it MUST reject the AUTH
            // command by sending an -ERR reply."
            SaslResponse::Cancel => self.send(b"-ERR Authentication cancelled.\r\n"),
            SaslResponse::Data(text) => match sasl::decode_base64(text) {
                Ok(payload) => self.sasl_step(mechanism, step, payload),
                Err(_) => self.send_bad(b"-ERR Invalid base64 data in continued response.\r\n"),
            },
        }
    }

    /// One decoded SASL response. For one-step mechanisms `step` is ignored.
    fn sasl_step(&mut self, mechanism: Mechanism, step: SaslStep, payload: Vec<u8>) {
        let credentials = match (mechanism, step) {
            (Mechanism::Login, SaslStep::LoginUser | SaslStep::Response) => {
                if payload.is_empty() {
                    self.send_bad(b"-ERR Invalid SASL response.\r\n");
                } else {
                    self.prompt(mechanism, SaslStep::LoginPassword { user: payload });
                }
                return;
            }
            (Mechanism::Login, SaslStep::LoginPassword { user }) => {
                sasl::login_credentials(&user, payload)
            }
            (_, _) => sasl::decode(mechanism, &payload),
        };
        match credentials {
            Ok(credentials) => self.login(mechanism, credentials),
            // The error names no input bytes; the answer stays generic.
            Err(_) => self.send_bad(b"-ERR Invalid SASL response.\r\n"),
        }
    }

    /// Report the login, unless a name in it is over `max_username`: refused here as a
    /// credentials failure (`-ERR [AUTH]`) and counted as an attempt, never reported (so it
    /// reaches neither the upstream nor the log nor the audit).
    fn login(&mut self, mechanism: Mechanism, credentials: Credentials) {
        let request = LoginRequest {
            mechanism,
            credentials,
        };
        if !request.names_fit(self.limits.max_username) {
            return self.refuse(&Refusal::name_too_long());
        }
        self.state = State::ExpectOutcome { mechanism };
        self.events
            .push_back(FrontendEvent::LoginRequested(request));
    }

    /// RFC 3206: `[AUTH]` for policy and credential refusals, `[SYS/TEMP]` for temporary
    /// trouble. Counts the attempt; closes once `max_attempts` refusals were sent.
    fn refuse(&mut self, refusal: &Refusal) {
        self.send(refusal.class.wire_prefix(Protocol::Pop3).as_bytes());
        self.send(b" ");
        self.send(one_line(&refusal.text).as_bytes());
        self.send(b"\r\n");
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.limits.max_attempts {
            self.send(TOO_MANY_ATTEMPTS);
            self.close(CloseReason::TooManyAttempts);
        } else {
            self.state = State::ExpectCommand;
        }
    }

    fn line_too_long(&mut self) {
        self.send(LINE_TOO_LONG);
        self.close(CloseReason::ProtocolViolation);
    }

    /// The answer is already queued; nothing is read after this.
    fn close(&mut self, reason: CloseReason) {
        self.input.clear();
        self.state = State::Closed;
        self.events.push_back(FrontendEvent::Closed(reason));
    }

    fn send(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// An `-ERR` for an invalid command: counted against `max_bad_commands`.
    fn send_bad(&mut self, bytes: &[u8]) {
        self.count_bad();
        self.send(bytes);
    }

    fn count_bad(&mut self) {
        self.bad_commands = self.bad_commands.saturating_add(1);
    }
}

/// The upstream's `CAPA` lines a client may rely on through mailgate, each ending CRLF: all but
/// those mailgate answers itself before login (`CAPA`, `USER`, `SASL`, `STLS`, and its own
/// `RESP-CODES`, `AUTH-RESP-CODE`, `PIPELINING`, `IMPLEMENTATION`) and `UTF8` / `LANG`, whose
/// commands are valid before login (RFC 6856 2, 3) but not answered by mailgate. A line that is
/// not printable ASCII, or `.`, is dropped (it would end or corrupt the list).
fn upstream_extras(upstream: &[String]) -> String {
    let mut extras = String::new();
    let mut seen: Vec<String> = Vec::new();
    for line in upstream {
        let tag = line
            .split_ascii_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let handled = matches!(
            tag.as_str(),
            "" | "."
                | "CAPA"
                | "USER"
                | "SASL"
                | "STLS"
                | "RESP-CODES"
                | "AUTH-RESP-CODE"
                | "PIPELINING"
                | "IMPLEMENTATION"
                | "UTF8"
                | "LANG"
        );
        if handled || seen.contains(&tag) || !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            continue;
        }
        extras.push_str(line);
        extras.push_str("\r\n");
        seen.push(tag);
    }
    extras
}

/// Never prints buffered input: it may hold a password pipelined after `PASS`.
impl fmt::Debug for Pop3Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pop3Frontend")
            .field("state", &self.state)
            .field("security", &self.security)
            .field("failures", &self.failures)
            .field("bad_commands", &self.bad_commands)
            .field("buffered", &self.input.len())
            .field("pending_output", &self.output.len())
            .finish_non_exhaustive()
    }
}

/// A `USER` argument: UTF-8, non-empty, no control characters (they could split a log line
/// or the replayed command).
fn user_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    (!name.is_empty() && !name.chars().any(char::is_control)).then(|| name.to_owned())
}

/// Refusal text on one line: control characters (CR, LF among them) become spaces.
fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match cleaned.trim() {
        "" => "Authentication failed.".to_owned(),
        t => t.to_owned(),
    }
}

#[cfg(test)]
mod tests;
