//! Stage: POP3 login replay (upstream side). SANS-IO.
//!
//! Input: the [`LoginRequest`] the front-end reported (at construction), upstream bytes
//! (`handle_input`), the end of the STLS handshake (`tls_established`). Output: bytes for the
//! upstream (`poll_transmit`), [`ReplayEvent`]s (`poll_event`), and after login the upstream
//! bytes that followed the `+OK` (`into_residual`). It replays the login with the same
//! mechanism the downstream used; it must not do I/O, decide policy, or let a credential byte
//! reach the upstream as a separator (CR, LF, NUL: the command-injection hole).
//!
//! # States
//!
//! | state | upstream says | replay sends / reports | next |
//! |---|---|---|---|
//! | `ExpectGreeting` | `+OK` | `STLS` (starttls) | `ExpectStlsOk` |
//! | | `+OK` | first login line (below) | per mechanism |
//! | | `-ERR` | `Failed(Greeting)` | `Finished` |
//! | `ExpectStlsOk` | `+OK` | `TlsRequested`; buffered bytes dropped | `ExpectTlsHandshake` |
//! | | `-ERR` | `Failed(StartTlsRefused)` | `Finished` |
//! | `ExpectTlsHandshake` | bytes | dropped (CVE-2011-0411, upstream side) | same |
//! | | `tls_established()` | first login line | per mechanism |
//! | (before the first login line, when the greeting offered `[XCLIENT]` and a client address was given) | | `XCLIENT ADDR=… PORT=…` | `ExpectXclientOk` |
//! | `ExpectXclientOk` | `+OK` / `-ERR` | first login line (a refusal only loses the address) | per mechanism |
//! | `ExpectUserOk` (after `USER u`) | `+OK` | `PASS p` | `ExpectPassOk` |
//! | `ExpectPassOk` | `+OK` | `LoggedIn` | `LoggedIn` |
//! | `ExpectContinue` (after `AUTH M`, IR > 255) | `+ ...` | base64 response | `ExpectAuthResult` |
//! | `ExpectLoginPrompt` (after `AUTH LOGIN`) | `+ ...` | base64 user | `ExpectPasswordPrompt` |
//! | `ExpectPasswordPrompt` | `+ ...` | base64 password | `ExpectAuthResult` |
//! | `ExpectAuthResult` (after `AUTH M ir` or a response) | `+OK` | `LoggedIn` | `LoggedIn` |
//! | | `+ base64` (XOAUTH2, OAUTHBEARER) | empty line / `AQ==` | `ExpectFinalError` |
//! | `ExpectFinalError` | `-ERR` | `Rejected { challenge: Some }` | `Finished` |
//! | any login state | `-ERR` | `Rejected { text }` | `Finished` |
//! | any login state | connection closed (`handle_eof`) | `Rejected { text: "" }` (a failed login) | `Finished` |
//! | before the login | connection closed | `Failed(Closed)` | `Finished` |
//! | any | anything else | `Failed(Unexpected)` | `Finished` |
//! | any | line over `MAX_UPSTREAM_LINE` | `Failed(LineTooLong)` | `Finished` |
//! | `LoggedIn` | bytes | kept for `into_residual()` | same |
//! | (probe) instead of the first login line | | `CAPA` | `ExpectCapaOk` |
//! | `ExpectCapaOk` | `+OK` | | `ExpectCapaLines` |
//! | | `-ERR` | `QUIT`, `Probed` (nothing learnt) | `Finished` |
//! | `ExpectCapaLines` | a capability line | kept | same |
//! | | `.` | `QUIT`, `Probed` | `Finished` |
//! | `Finished` | bytes | ignored | same |
//!
//! An `Unexpected` error names the state, never the upstream line once a credential was sent,
//! in case the upstream echoes it.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::proto::pop3::parse::{self, Split, Status};
use crate::proto::sasl;
use crate::proto::{
    Credentials, LoginRequest, MAX_UPSTREAM_LINE, Mechanism, ReplayError, ReplayEvent,
    UnsafeCredential,
};
use crate::secret::Secret;

/// RFC 2449 4 / RFC 5034 4: a command, CRLF included, is at most 255 octets; an initial
/// response that would exceed it is sent after an empty challenge instead.
const MAX_COMMAND: usize = 255;

/// The login replay for one upstream connection. See the module docs for states.
#[must_use = "a replay that is not polled never logs in"]
pub struct Pop3Replay {
    state: State,
    plan: Plan,
    starttls: bool,
    /// Probe: the upstream's `CAPA` lines (while `ExpectCapaLines`, those so far).
    capabilities: Option<Vec<String>>,
    /// Unparsed upstream bytes.
    input: BytesMut,
    /// Bytes for the upstream; hold credentials, so never printed.
    output: BytesMut,
    events: VecDeque<ReplayEvent>,
    /// `XCLIENT ADDR=… PORT=…` to send before the login, when the greeting offers it.
    xclient: Option<String>,
    /// The greeting carried the `[XCLIENT]` response code: Dovecot offers it only to
    /// `login_trusted_networks`, and anyone else would answer `-ERR`.
    xclient_offered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    ExpectGreeting,
    ExpectStlsOk,
    ExpectTlsHandshake,
    ExpectXclientOk,
    ExpectUserOk,
    ExpectPassOk,
    ExpectContinue,
    ExpectLoginPrompt,
    ExpectPasswordPrompt,
    ExpectAuthResult,
    ExpectFinalError {
        challenge: Option<Bytes>,
    },
    /// Probe: the answer to `CAPA` (RFC 2449 5).
    ExpectCapaOk,
    /// Probe: the capability lines, up to the terminating `.`.
    ExpectCapaLines,
    LoggedIn,
    Finished,
}

impl State {
    /// What the state waits for, for error messages (no upstream bytes, no credentials).
    fn waiting_for(&self) -> &'static str {
        match self {
            State::ExpectGreeting => "greeting",
            State::ExpectStlsOk => "STLS",
            State::ExpectTlsHandshake => "TLS handshake",
            State::ExpectXclientOk => "XCLIENT",
            State::ExpectUserOk => "USER",
            State::ExpectPassOk => "PASS",
            State::ExpectContinue => "AUTH continuation",
            State::ExpectLoginPrompt => "AUTH LOGIN user prompt",
            State::ExpectPasswordPrompt => "AUTH LOGIN password prompt",
            State::ExpectAuthResult => "AUTH",
            State::ExpectFinalError { .. } => "AUTH challenge",
            State::ExpectCapaOk | State::ExpectCapaLines => "CAPA",
            State::LoggedIn | State::Finished => "post-login",
        }
    }
}

/// What to send for the login, checked and encoded once at construction.
#[derive(Debug)]
enum Plan {
    /// RFC 1939 7: `USER name`, `PASS string`.
    UserPass {
        user: String,
        password: Secret<Vec<u8>>,
    },
    /// PLAIN, XOAUTH2, OAUTHBEARER: the base64 one-step response.
    OneStep {
        mechanism: Mechanism,
        response: Secret<String>,
    },
    /// SASL LOGIN: base64 user name and password, one per prompt.
    SaslLogin {
        user: Secret<String>,
        password: Secret<String>,
    },
    /// No login: learn the capabilities with `CAPA`, then `QUIT` (the startup probe).
    Probe,
}

impl Pop3Replay {
    /// Check and encode the login. Refuses a credential the upstream could read as more than
    /// one field or command, and a mechanism that does not match its credentials.
    pub fn new(request: &LoginRequest, starttls: bool) -> Result<Self, UnsafeCredential> {
        let plan = match (request.mechanism, &request.credentials) {
            (
                Mechanism::UserPass,
                Credentials::Password {
                    authzid,
                    user,
                    password,
                },
            ) => {
                // USER/PASS cannot carry an authorization identity; dropping it would log in
                // as someone else than asked.
                if authzid.is_some() {
                    return Err(UnsafeCredential { field: "authzid" });
                }
                nonempty(user.as_bytes(), "user")?;
                // A CR or LF would end the command early and start another (injection).
                sasl::check(user.as_bytes(), b"\0\r\n", "user")?;
                sasl::check(password.expose(), b"\0\r\n", "password")?;
                Plan::UserPass {
                    user: user.clone(),
                    password: password.clone(),
                }
            }
            (
                Mechanism::Login,
                Credentials::Password {
                    authzid,
                    user,
                    password,
                },
            ) => {
                if authzid.is_some() {
                    return Err(UnsafeCredential { field: "authzid" });
                }
                nonempty(user.as_bytes(), "user")?;
                sasl::check(user.as_bytes(), b"\0\r\n", "user")?;
                sasl::check(password.expose(), b"\0", "password")?;
                Plan::SaslLogin {
                    user: Secret::new(sasl::encode_base64(user.as_bytes())),
                    password: Secret::new(sasl::encode_base64(password.expose())),
                }
            }
            (mechanism @ (Mechanism::Plain | Mechanism::XOAuth2 | Mechanism::OAuthBearer), c) => {
                let payload = Secret::new(sasl::encode(mechanism, c)?);
                Plan::OneStep {
                    mechanism,
                    response: Secret::new(sasl::encode_base64(payload.expose())),
                }
            }
            _ => return Err(UnsafeCredential { field: "mechanism" }),
        };
        Ok(Self::with_plan(plan, starttls))
    }

    /// A connection that only learns the upstream's pre-login `CAPA` list (after STLS when
    /// `starttls`), then sends `QUIT` and reports [`ReplayEvent::Probed`].
    pub fn probe(starttls: bool) -> Self {
        Self::with_plan(Plan::Probe, starttls)
    }

    fn with_plan(plan: Plan, starttls: bool) -> Self {
        Self {
            state: State::ExpectGreeting,
            plan,
            starttls,
            capabilities: None,
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            xclient: None,
            xclient_offered: false,
        }
    }

    /// Probe: the capability lines of the upstream's `CAPA` answer, once complete.
    pub fn capabilities(&self) -> Option<&[String]> {
        self.capabilities.as_deref()
    }

    /// Send `XCLIENT ADDR=<ip> PORT=<port>` before the login when the upstream's greeting
    /// offers it (Dovecot does to `login_trusted_networks`), so it logs and rate-limits by the
    /// real client address (Postfix XCLIENT syntax, as Dovecot's pop3-login takes it). POP3 has
    /// no ID command; this is its equivalent of IMAP `ID x-originating-ip`.
    pub fn with_client_address(mut self, client: core::net::SocketAddr) -> Self {
        // An IP address and a port are printable ASCII without spaces: nothing to escape.
        self.xclient = Some(format!(
            "XCLIENT ADDR={} PORT={}\r\n",
            client.ip(),
            client.port()
        ));
        self
    }

    /// Bytes read from the upstream.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        match self.state {
            State::Finished | State::ExpectTlsHandshake => {}
            State::LoggedIn => self.input.extend_from_slice(bytes),
            _ => {
                self.input.extend_from_slice(bytes);
                self.process();
            }
        }
    }

    /// The upstream closed the connection (EOF or reset). Once the login is under way (`USER`
    /// or `AUTH` sent) that is its answer to the login, a refusal: Dovecot closes on some bad
    /// logins. Before, the upstream is unavailable.
    pub fn handle_eof(&mut self) {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::LoggedIn => self.state = State::LoggedIn,
            State::Finished => {}
            // No credential was sent before these answers: the upstream is unavailable.
            State::ExpectGreeting
            | State::ExpectStlsOk
            | State::ExpectTlsHandshake
            | State::ExpectXclientOk
            | State::ExpectCapaOk
            | State::ExpectCapaLines => self.fail(ReplayError::Closed),
            State::ExpectFinalError { challenge } => self.reject(b"", challenge),
            State::ExpectUserOk
            | State::ExpectPassOk
            | State::ExpectContinue
            | State::ExpectLoginPrompt
            | State::ExpectPasswordPrompt
            | State::ExpectAuthResult => self.reject(b"", None),
        }
    }

    /// The TLS handshake after `TlsRequested` finished; the login starts.
    pub fn tls_established(&mut self) {
        if self.state == State::ExpectTlsHandshake {
            self.input.clear();
            self.start_login();
        }
    }

    pub fn poll_event(&mut self) -> Option<ReplayEvent> {
        self.events.pop_front()
    }

    /// Bytes for the upstream, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// After `LoggedIn`: the upstream bytes that followed its `+OK` line, for the downstream.
    pub fn into_residual(self) -> Bytes {
        match self.state {
            State::LoggedIn => self.input.freeze(),
            _ => Bytes::new(),
        }
    }

    fn process(&mut self) {
        while !matches!(
            self.state,
            State::LoggedIn | State::Finished | State::ExpectTlsHandshake
        ) {
            match parse::split_line(&self.input, MAX_UPSTREAM_LINE) {
                Split::Incomplete => return,
                Split::TooLong => {
                    self.fail(ReplayError::LineTooLong(MAX_UPSTREAM_LINE));
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
        let status = parse::status(line);
        match (std::mem::replace(&mut self.state, State::Finished), status) {
            (State::ExpectGreeting, Status::Ok) => {
                self.xclient_offered = line
                    .windows(b"[XCLIENT]".len())
                    .any(|w| w.eq_ignore_ascii_case(b"[XCLIENT]"));
                if self.starttls {
                    // RFC 2595 4.
                    self.send(b"STLS\r\n");
                    self.state = State::ExpectStlsOk;
                } else {
                    self.start_login();
                }
            }
            (State::ExpectGreeting, Status::Err(text)) => {
                self.fail(ReplayError::Greeting(printable(text)))
            }
            (State::ExpectGreeting, _) => {
                // No credential was sent yet: the line may be named.
                self.fail(ReplayError::Unexpected(format!(
                    "greeting: {}",
                    printable(line)
                )))
            }
            (State::ExpectStlsOk, Status::Ok) => {
                // CVE-2011-0411 on the upstream side: nothing the upstream sent in the clear
                // after its go-ahead may be read as a TLS-protected answer.
                self.input.clear();
                self.state = State::ExpectTlsHandshake;
                self.events.push_back(ReplayEvent::TlsRequested);
            }
            (State::ExpectStlsOk, Status::Err(text)) => {
                self.fail(ReplayError::StartTlsRefused(printable(text)))
            }
            // Either answer goes on to the login: a refused XCLIENT only loses the address.
            (State::ExpectXclientOk, Status::Ok | Status::Err(_)) => self.send_login(),
            (State::ExpectUserOk, Status::Ok) => {
                if let Plan::UserPass { password, .. } = &self.plan {
                    let mut line = Vec::with_capacity(password.expose().len() + 7);
                    line.extend_from_slice(b"PASS ");
                    line.extend_from_slice(password.expose());
                    line.extend_from_slice(b"\r\n");
                    self.send(&line);
                }
                self.state = State::ExpectPassOk;
            }
            (State::ExpectContinue, Status::Continue(_)) => {
                if let Plan::OneStep { response, .. } = &self.plan {
                    let line = format!("{}\r\n", response.expose());
                    self.send(line.as_bytes());
                }
                self.state = State::ExpectAuthResult;
            }
            (State::ExpectLoginPrompt, Status::Continue(_)) => {
                if let Plan::SaslLogin { user, .. } = &self.plan {
                    let line = format!("{}\r\n", user.expose());
                    self.send(line.as_bytes());
                }
                self.state = State::ExpectPasswordPrompt;
            }
            (State::ExpectPasswordPrompt, Status::Continue(_)) => {
                if let Plan::SaslLogin { password, .. } = &self.plan {
                    let line = format!("{}\r\n", password.expose());
                    self.send(line.as_bytes());
                }
                self.state = State::ExpectAuthResult;
            }
            (State::ExpectPassOk | State::ExpectAuthResult, Status::Ok) => {
                // The downstream gets the upstream's own line, normalised to CRLF.
                let mut reply = BytesMut::with_capacity(line.len() + 2);
                reply.extend_from_slice(line);
                reply.extend_from_slice(b"\r\n");
                self.state = State::LoggedIn;
                self.events.push_back(ReplayEvent::LoggedIn {
                    untagged: Bytes::new(),
                    reply: reply.freeze(),
                });
            }
            (State::ExpectAuthResult, Status::Continue(payload)) if self.is_oauth() => {
                // XOAUTH2 / RFC 7628 3.2.3: the failure JSON comes as a challenge; the client
                // answers with an empty response (XOAUTH2) or %x01 (OAUTHBEARER, `AQ==`) and
                // the server then sends the -ERR.
                let Ok(challenge) = sasl::decode_base64(payload) else {
                    self.fail(ReplayError::Unexpected(
                        "AUTH challenge is not base64".into(),
                    ));
                    return;
                };
                let ack: &[u8] = match &self.plan {
                    Plan::OneStep {
                        mechanism: Mechanism::OAuthBearer,
                        ..
                    } => b"AQ==\r\n",
                    _ => b"\r\n",
                };
                self.send(ack);
                self.state = State::ExpectFinalError {
                    challenge: (!challenge.is_empty()).then(|| Bytes::from(challenge)),
                };
            }
            (State::ExpectCapaOk, Status::Ok) => {
                self.capabilities = Some(Vec::new());
                self.state = State::ExpectCapaLines;
            }
            (State::ExpectCapaOk, Status::Err(_)) => self.probed(),
            (State::ExpectCapaLines, _) => {
                if line == b"." {
                    return self.probed();
                }
                // RFC 2449 5: `capability = capa-tag *(SP param) CRLF`, printable ASCII.
                if let (Some(list), Ok(text)) =
                    (self.capabilities.as_mut(), std::str::from_utf8(line))
                    && !text.is_empty()
                    && text.bytes().all(|b| (0x20..0x7f).contains(&b))
                {
                    list.push(text.to_owned());
                }
                self.state = State::ExpectCapaLines;
            }
            (State::ExpectFinalError { challenge }, Status::Err(text)) => {
                self.reject(text, challenge)
            }
            (
                State::ExpectUserOk
                | State::ExpectPassOk
                | State::ExpectContinue
                | State::ExpectLoginPrompt
                | State::ExpectPasswordPrompt
                | State::ExpectAuthResult,
                Status::Err(text),
            ) => self.reject(text, None),
            (state, _) => self.fail(ReplayError::Unexpected(format!(
                "{} answer is not one the protocol allows",
                state.waiting_for()
            ))),
        }
    }

    /// Probe done: `QUIT` and report.
    fn probed(&mut self) {
        self.send(b"QUIT\r\n");
        self.state = State::Finished;
        self.input.clear();
        self.events.push_back(ReplayEvent::Probed);
    }

    /// After the greeting, or after STLS: the client address first when the upstream takes
    /// it, then the login.
    fn start_login(&mut self) {
        match self.xclient.take() {
            Some(line) if self.xclient_offered => {
                self.send(line.as_bytes());
                self.state = State::ExpectXclientOk;
            }
            _ => self.send_login(),
        }
    }

    /// Send the first line of the login.
    fn send_login(&mut self) {
        match &self.plan {
            Plan::Probe => {
                self.send(b"CAPA\r\n");
                self.state = State::ExpectCapaOk;
            }
            Plan::UserPass { user, .. } => {
                let line = format!("USER {user}\r\n");
                self.send(line.as_bytes());
                self.state = State::ExpectUserOk;
            }
            Plan::OneStep {
                mechanism,
                response,
            } => {
                let name = mechanism.sasl_name().unwrap_or_default();
                // "AUTH " name SP response CRLF
                let with_ir = 5 + name.len() + 1 + response.expose().len() + 2;
                let line = if with_ir <= MAX_COMMAND {
                    self.state = State::ExpectAuthResult;
                    format!("AUTH {name} {}\r\n", response.expose())
                } else {
                    // RFC 5034 4: too long for an initial response; wait for `+ `.
                    self.state = State::ExpectContinue;
                    format!("AUTH {name}\r\n")
                };
                self.send(line.as_bytes());
            }
            Plan::SaslLogin { .. } => {
                self.send(b"AUTH LOGIN\r\n");
                self.state = State::ExpectLoginPrompt;
            }
        }
    }

    fn is_oauth(&self) -> bool {
        matches!(
            self.plan,
            Plan::OneStep {
                mechanism: Mechanism::XOAuth2 | Mechanism::OAuthBearer,
                ..
            }
        )
    }

    fn reject(&mut self, text: &[u8], challenge: Option<Bytes>) {
        self.state = State::Finished;
        self.input.clear();
        self.events.push_back(ReplayEvent::Rejected {
            text: printable(parse::strip_resp_code(text)),
            challenge,
        });
    }

    fn fail(&mut self, error: ReplayError) {
        self.state = State::Finished;
        self.input.clear();
        self.events.push_back(ReplayEvent::Failed(error));
    }

    fn send(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }
}

/// Never prints the output buffer: it holds the replayed credentials.
impl fmt::Debug for Pop3Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pop3Replay")
            .field("state", &self.state)
            .field("plan", &self.plan)
            .field("starttls", &self.starttls)
            .field("buffered", &self.input.len())
            .field("pending_output", &self.output.len())
            .finish_non_exhaustive()
    }
}

fn nonempty(bytes: &[u8], field: &'static str) -> Result<(), UnsafeCredential> {
    if bytes.is_empty() {
        Err(UnsafeCredential { field })
    } else {
        Ok(())
    }
}

/// Upstream text for events and errors: lossy UTF-8, control characters as spaces, at most
/// 200 characters (enough for any status text, short enough for a log line).
fn printable(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests;
