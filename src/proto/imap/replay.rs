//! Stage: IMAP login replay (upstream side). SANS-IO.
//!
//! Input: the [`LoginRequest`] the front-end reported and the policy allowed, then bytes from
//! the real server (`handle_input`) and the end of a STARTTLS handshake (`tls_established`).
//! Output: bytes for the upstream (`poll_transmit`, they carry the credentials) and one final
//! [`ReplayEvent`] (`LoggedIn`, `Rejected` or `Failed`), plus `TlsRequested` on the STARTTLS
//! path. At hand-off `into_residual` returns what the upstream sent after its tagged answer.
//!
//! The login is replayed with the mechanism the client used, so the upstream checks exactly
//! what the client presented. Tags are `mg1`, `mg2`, ... which no client-chosen tag matters for:
//! the upstream sees no client command before the login completes.
//!
//! # States
//!
//! | state                 | upstream says                              | we send / report                                 | next                  |
//! |-----------------------|--------------------------------------------|--------------------------------------------------|-----------------------|
//! | `ExpectGreeting`      | `* OK [CAPABILITY ...]`                    | `STARTTLS` / login command                       | `ExpectStartTls` / `ExpectLoginAnswer` |
//! |                       | `* OK` without capabilities                | `STARTTLS` / `CAPABILITY`                        | `ExpectStartTls` / `ExpectCapability` |
//! |                       | `* PREAUTH`, `* BYE`, anything else        | `Failed(Greeting / Bye)`                         | `Done`                |
//! | `ExpectStartTls`      | tagged `OK`                                | `TlsRequested`, buffered bytes dropped           | `ExpectTlsHandshake`  |
//! |                       | tagged `NO` / `BAD`                        | `Failed(StartTlsRefused)`                        | `Done`                |
//! | `ExpectTlsHandshake`  | `tls_established()`                        | `CAPABILITY` (RFC 9051 6.2.1: forget old ones)   | `ExpectCapability`    |
//! | `ExpectCapability`    | `* CAPABILITY ...`, tagged `OK`            | login command (or first `ID`, when configured)   | `ExpectLoginAnswer` / `ExpectIdAnswer` |
//! | (probe) capabilities known | instead of `ID` / the login           | `LOGOUT`, `Probed`                               | `Done`                |
//! | `ExpectIdAnswer`      | tagged `OK` / `NO` / `BAD` to the `ID`     | login command                                    | `ExpectLoginAnswer`   |
//! | `ExpectLoginAnswer`   | `+` (with or without text), more to send   | next piece (literal, SASL response, LOGIN step)  | same                  |
//! |                       | `+ base64json` after the last piece (OAuth)| record challenge, `""` (XOAUTH2) / `AQ==`        | same                  |
//! |                       | `* ...` (not BYE)                          | kept as `untagged`                               | same                  |
//! |                       | tagged `OK [CAPABILITY ...]`, or `OK` after an untagged `* CAPABILITY` | `LoggedIn { untagged, reply }` | `LoggedIn` (input kept as residual) |
//! |                       | tagged `OK` without a capability list      | `CAPABILITY`                                     | `ExpectPostLoginCapability` |
//! |                       | tagged `NO`                                | `Rejected { text, challenge }`                   | `Done`                |
//! |                       | `* BYE`, or the connection closes          | `Rejected { text: "" }` (a failed login)         | `Done`                |
//! | `ExpectPostLoginCapability` | `* CAPABILITY ...`                   | list kept                                        | same                  |
//! |                       | other untagged                             | kept as `untagged`                               | same                  |
//! |                       | tagged (`OK`, or `NO`/`BAD`: still logged in) | `LoggedIn`, the list as the reply's `[CAPABILITY ...]` code (as an untagged line when the OK has another code) | `LoggedIn` |
//! | any other             | `* BYE`                                    | `Failed(Bye)`                                    | `Done`                |
//! |                       | the connection closes (`handle_eof`)       | `Failed(Closed)`                                 | `Done`                |
//! |                       | tagged `BAD`, foreign tag, garbage         | `Failed(Unexpected)`                             | `Done`                |
//! |                       | line over `MAX_UPSTREAM_LINE`              | `Failed(LineTooLong)`                            | `Done`                |
//!
//! Once the login command went out, a `Failed` error names only the kind, status and response
//! code of the upstream's answer (`tagged BAD [PARSE] (text withheld)`), never its text: some
//! servers echo the command line they got, password included (issue 9 item 6).
//!
//! The login's `OK` must tell the downstream the post-login capabilities: a client that sees
//! none keeps mailgate's pre-login list (RFC 9051 7.1), and Courier's `OK` carries none. So,
//! as Dovecot's proxy does, the replay asks with `CAPABILITY` and writes the answer into the
//! `OK` it reports.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::proto::imap::parse::{Frame, FrameLimits, Framer, LiteralMode};
use crate::proto::sasl;
use crate::proto::{
    Credentials, LoginRequest, MAX_UPSTREAM_LINE, Mechanism, ReplayError, ReplayEvent,
    UnsafeCredential,
};
use crate::secret::Secret;

/// Longest upstream text quoted in an error.
const MAX_ERROR_TEXT: usize = 200;

const LIMITS: FrameLimits = FrameLimits {
    max_line: MAX_UPSTREAM_LINE,
    max_literal: MAX_UPSTREAM_LINE,
    max_message: MAX_UPSTREAM_LINE * 2,
    literals: LiteralMode::Server,
};

/// The login, checked and encoded at construction so nothing unsafe is ever sent.
enum Prepared {
    /// IMAP `LOGIN user password`; neither holds NUL.
    Command {
        user: Vec<u8>,
        password: Secret<Vec<u8>>,
    },
    /// PLAIN, XOAUTH2, OAUTHBEARER: the raw one-step response.
    OneStep {
        mechanism: Mechanism,
        payload: Secret<Vec<u8>>,
    },
    /// SASL LOGIN: user name, then password, each answering a prompt.
    SaslLogin {
        user: Vec<u8>,
        password: Secret<Vec<u8>>,
    },
    /// No login: learn the capabilities, then `LOGOUT` (the startup / reload probe).
    Probe,
}

/// What the machine waits for.
#[derive(Debug)]
enum State {
    ExpectGreeting,
    ExpectStartTls {
        tag: String,
    },
    ExpectTlsHandshake,
    ExpectCapability {
        tag: String,
    },
    /// The answer to the `ID` sent before the login (any status goes on to the login).
    ExpectIdAnswer {
        tag: String,
    },
    ExpectLoginAnswer {
        tag: String,
        /// Pieces still to send, one per `+` (literal data, SASL responses); they hold
        /// credentials.
        pending: Secret<VecDeque<Bytes>>,
        /// Raw untagged lines seen since the login command.
        untagged: BytesMut,
        /// The decoded SASL error challenge, when the upstream sent one.
        challenge: Option<Bytes>,
    },
    /// The login succeeded without a `[CAPABILITY ...]` code; `CAPABILITY` was sent so the
    /// downstream learns the post-login list (as Dovecot's proxy does).
    ExpectPostLoginCapability {
        tag: String,
        /// Untagged lines from the login, plus any (but `* CAPABILITY`) since.
        untagged: BytesMut,
        /// The upstream's tagged OK to the login, without its tag.
        reply: Bytes,
        /// The post-login capability list, once the upstream sent it.
        list: Option<String>,
    },
    /// `LoggedIn` is queued; input is kept as residual.
    LoggedIn,
    /// `Rejected` or `Failed` is queued; input is ignored.
    Done,
}

/// Replays one login to the upstream IMAP server. See the module docs for the states.
#[must_use = "a replay does nothing unless driven"]
pub struct ImapReplay {
    state: State,
    login: Prepared,
    starttls: bool,
    /// Upper-cased capabilities the upstream advertised (since the last STARTTLS).
    capabilities: Option<Vec<String>>,
    next_tag: u32,
    /// RFC 2971 `ID` parameter list to send before the login (client address forwarding).
    id: Option<String>,
    input: BytesMut,
    framer: Framer,
    out: BytesMut,
    events: VecDeque<ReplayEvent>,
    /// The login command went out: from here on the upstream may echo a credential, so no
    /// upstream text goes into an error (issue 9 item 6), only [`Response::summary`].
    credentials_sent: bool,
    /// [`Response::summary`] of the last upstream response since `credentials_sent`.
    last: String,
}

// Hand-written: `out` and `pending` carry credentials.
impl std::fmt::Debug for ImapReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapReplay")
            .field("state", &self.state)
            .field("starttls", &self.starttls)
            .field("capabilities", &self.capabilities)
            .field("buffered", &self.input.len())
            .finish_non_exhaustive()
    }
}

impl ImapReplay {
    /// Prepare the replay of `request`; `starttls` upgrades the upstream connection first.
    /// Fails when a credential holds a byte the upstream would read as a separator.
    pub fn new(request: &LoginRequest, starttls: bool) -> Result<Self, UnsafeCredential> {
        let login = match (request.mechanism, &request.credentials) {
            (
                Mechanism::ImapLogin | Mechanism::UserPass,
                Credentials::Password { user, password, .. },
            ) => {
                // CR/LF are fine inside a literal; NUL is not an IMAP CHAR8 (RFC 9051 9).
                sasl::check(user.as_bytes(), b"\0", "user")?;
                sasl::check(password.expose(), b"\0", "password")?;
                Prepared::Command {
                    user: user.as_bytes().to_vec(),
                    password: password.clone(),
                }
            }
            (Mechanism::Login, Credentials::Password { user, password, .. }) => {
                sasl::check(user.as_bytes(), b"\0\r\n", "user")?;
                sasl::check(password.expose(), b"\0", "password")?;
                Prepared::SaslLogin {
                    user: user.as_bytes().to_vec(),
                    password: password.clone(),
                }
            }
            (mechanism @ (Mechanism::Plain | Mechanism::XOAuth2 | Mechanism::OAuthBearer), c) => {
                Prepared::OneStep {
                    mechanism,
                    payload: Secret::new(sasl::encode(mechanism, c)?),
                }
            }
            _ => return Err(UnsafeCredential { field: "mechanism" }),
        };
        Ok(Self::with_login(login, starttls))
    }

    /// A connection that only learns the upstream's pre-login capabilities (after STARTTLS
    /// when `starttls`), then sends `LOGOUT` and reports [`ReplayEvent::Probed`]. No credential
    /// is involved.
    pub fn probe(starttls: bool) -> Self {
        Self::with_login(Prepared::Probe, starttls)
    }

    fn with_login(login: Prepared, starttls: bool) -> Self {
        Self {
            state: State::ExpectGreeting,
            login,
            starttls,
            capabilities: None,
            next_tag: 0,
            id: None,
            input: BytesMut::new(),
            framer: Framer::default(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            credentials_sent: false,
            last: String::new(),
        }
    }

    /// Send `ID ("x-originating-ip" IP "x-originating-port" PORT)` before the login, so an
    /// upstream that trusts this proxy (Dovecot `login_trusted_networks`) logs and limits by the
    /// real client address. Any answer to it goes on to the login.
    pub fn with_client_address(mut self, client: core::net::SocketAddr) -> Self {
        // An IP address and a port are printable ASCII with no quote or backslash: safe as
        // quoted strings.
        self.id = Some(format!(
            "(\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\")",
            client.ip(),
            client.port()
        ));
        self
    }

    /// Bytes from the upstream.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        match self.state {
            // Plaintext racing the TLS handshake is never read (CVE-2011-0411, both ways).
            State::ExpectTlsHandshake => {}
            // Everything after the tagged OK is the residual, for the downstream.
            State::LoggedIn => self.input.extend_from_slice(bytes),
            State::Done => {}
            _ => {
                self.input.extend_from_slice(bytes);
                self.process();
            }
        }
    }

    /// The upstream closed the connection (EOF or reset). Once the login command is out, that
    /// is its answer to the login, a refusal; before, the upstream is unavailable.
    pub fn handle_eof(&mut self) {
        match self.state {
            State::LoggedIn | State::Done => {}
            State::ExpectLoginAnswer { .. } => self.rejected_by_close(),
            _ => self.fail(ReplayError::Closed),
        }
    }

    /// The driver finished the TLS handshake [`ReplayEvent::TlsRequested`] asked for.
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::ExpectTlsHandshake) {
            self.input.clear();
            self.framer.reset();
            // RFC 9051 6.2.1: capabilities learnt before TLS are void.
            self.capabilities = None;
            let tag = self.send_command(b"CAPABILITY");
            self.state = State::ExpectCapability { tag };
        }
    }

    pub fn poll_event(&mut self) -> Option<ReplayEvent> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// What the upstream sent after its tagged answer to the login, for the downstream.
    #[must_use = "residual bytes belong to the downstream; dropping them loses server data"]
    pub fn into_residual(self) -> Bytes {
        self.input.freeze()
    }

    /// Capabilities the upstream advertised, upper-cased, once known.
    pub fn capabilities(&self) -> Option<&[String]> {
        self.capabilities.as_deref()
    }

    fn process(&mut self) {
        while !matches!(
            self.state,
            State::Done | State::LoggedIn | State::ExpectTlsHandshake
        ) {
            match self.framer.next(&self.input, &LIMITS) {
                Frame::Incomplete => return,
                Frame::Complete { len } => {
                    let line = self.input.split_to(len).freeze();
                    self.framer.reset();
                    self.line(line);
                }
                Frame::LiteralAnnounced { .. }
                | Frame::LiteralTooLarge { .. }
                | Frame::LineTooLong => {
                    self.fail(ReplayError::LineTooLong(MAX_UPSTREAM_LINE));
                }
            }
        }
    }

    /// One complete response (a line, or a line with literals).
    fn line(&mut self, line: Bytes) {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let response = Response::parse(text);
        if self.credentials_sent {
            // Only read by `fail` once the login went out; before, errors carry the text.
            self.last = response.summary();
        }
        if let Response::Untagged {
            status: Some(Status::Bye),
            text,
            ..
        } = &response
        {
            if matches!(self.state, State::ExpectLoginAnswer { .. }) {
                return self.rejected_by_close();
            }
            return self.fail(ReplayError::Bye(text.clone()));
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::ExpectGreeting => self.greeting(response),
            State::ExpectStartTls { tag } => match response {
                Response::Untagged { .. } => self.state = State::ExpectStartTls { tag },
                Response::Tagged {
                    tag: got,
                    status: Status::Ok,
                    ..
                } if got == tag => {
                    // Anything the server pipelined after its OK is injection: drop it.
                    self.input.clear();
                    self.framer.reset();
                    self.state = State::ExpectTlsHandshake;
                    self.events.push_back(ReplayEvent::TlsRequested);
                }
                Response::Tagged { tag: got, text, .. } if got == tag => {
                    self.fail(ReplayError::StartTlsRefused(text))
                }
                other => self.fail(other.unexpected()),
            },
            State::ExpectCapability { tag } => match response {
                Response::Untagged { status: None, .. } => {
                    // From the raw line: `text` is cut short for error messages.
                    if let Some(list) = untagged_capability(&line) {
                        self.capabilities = Some(capability_list(list));
                    }
                    self.state = State::ExpectCapability { tag };
                }
                Response::Untagged { .. } => self.state = State::ExpectCapability { tag },
                Response::Tagged {
                    tag: got,
                    status: Status::Ok,
                    code,
                    ..
                } if got == tag => {
                    if let Some(list) = code.as_deref().and_then(capability_code) {
                        self.capabilities = Some(list);
                    }
                    self.send_login();
                }
                other => self.fail(other.unexpected()),
            },
            State::ExpectIdAnswer { tag } => match response {
                Response::Untagged { .. } => self.state = State::ExpectIdAnswer { tag },
                Response::Tagged { tag: got, .. } if got == tag => self.send_login(),
                other => self.fail(other.unexpected()),
            },
            State::ExpectLoginAnswer {
                tag,
                pending,
                untagged,
                challenge,
            } => self.login_answer(tag, pending, untagged, challenge, response, &line),
            State::ExpectPostLoginCapability {
                tag,
                mut untagged,
                reply,
                mut list,
            } => match response {
                Response::Untagged { status: None, .. } if untagged_capability(&line).is_some() => {
                    list = untagged_capability(&line).map(|l| capability_tokens(l).join(" "));
                    self.state = State::ExpectPostLoginCapability {
                        tag,
                        untagged,
                        reply,
                        list,
                    };
                }
                Response::Untagged { .. } => {
                    untagged.extend_from_slice(&line);
                    self.state = State::ExpectPostLoginCapability {
                        tag,
                        untagged,
                        reply,
                        list,
                    };
                }
                // Logged in either way; a refused CAPABILITY only means no list to add.
                Response::Tagged { tag: got, .. } if got == tag => {
                    self.logged_in(untagged, reply, list)
                }
                other => self.fail(other.unexpected()),
            },
            State::ExpectTlsHandshake | State::LoggedIn | State::Done => {}
        }
    }

    fn greeting(&mut self, response: Response) {
        match response {
            Response::Untagged {
                status: Some(Status::Ok),
                code,
                ..
            } => {
                self.capabilities = code.as_deref().and_then(capability_code);
                if self.starttls {
                    let tag = self.send_command(b"STARTTLS");
                    self.state = State::ExpectStartTls { tag };
                } else if self.capabilities.is_some() {
                    self.send_login();
                } else {
                    let tag = self.send_command(b"CAPABILITY");
                    self.state = State::ExpectCapability { tag };
                }
            }
            Response::Untagged { text, .. } => self.fail(ReplayError::Greeting(text)),
            other => self.fail(ReplayError::Greeting(other.text())),
        }
    }

    fn login_answer(
        &mut self,
        tag: String,
        pending: Secret<VecDeque<Bytes>>,
        mut untagged: BytesMut,
        mut challenge: Option<Bytes>,
        response: Response,
        raw: &[u8],
    ) {
        let mut pending = pending.into_inner();
        match response {
            Response::Continuation { text } => {
                if let Some(piece) = pending.pop_front() {
                    self.out.extend_from_slice(&piece);
                } else {
                    // RFC 7628 3.2.3 / XOAUTH2: an error challenge before the NO; the client
                    // must answer it (`AQ==` / empty) for the server to finish.
                    let ack: &[u8] = match &self.login {
                        Prepared::OneStep {
                            mechanism: Mechanism::XOAuth2,
                            ..
                        } => b"\r\n",
                        Prepared::OneStep {
                            mechanism: Mechanism::OAuthBearer,
                            ..
                        } => b"AQ==\r\n",
                        _ => {
                            return self.fail(ReplayError::Unexpected(
                                "continuation after the complete login".into(),
                            ));
                        }
                    };
                    let decoded = sasl::decode_base64(text.trim_ascii())
                        .unwrap_or_else(|_| text.trim_ascii().to_vec());
                    challenge = Some(Bytes::from(decoded));
                    self.out.extend_from_slice(ack);
                }
                self.state = State::ExpectLoginAnswer {
                    tag,
                    pending: Secret::new(pending),
                    untagged,
                    challenge,
                };
            }
            Response::Untagged { .. } => {
                untagged.extend_from_slice(raw);
                self.state = State::ExpectLoginAnswer {
                    tag,
                    pending: Secret::new(pending),
                    untagged,
                    challenge,
                };
            }
            Response::Tagged {
                tag: got,
                status,
                code,
                text,
            } if got == tag => match status {
                Status::Ok => {
                    let reply = raw.get(tag.len().saturating_add(1)..).unwrap_or_default();
                    let reply = Bytes::copy_from_slice(reply);
                    let told = code.as_deref().and_then(capability_code).is_some()
                        || untagged
                            .as_ref()
                            .split(|b: &u8| *b == b'\n')
                            .any(|l| untagged_capability(l).is_some());
                    if told || matches!(self.login, Prepared::Probe) {
                        self.logged_in(untagged, reply, None);
                    } else {
                        // RFC 9051 7.1: the OK may carry the new list, and a client that
                        // sees none keeps the pre-login one. Courier's OK carries none, so
                        // ask, and hand the answer down in the OK (as Dovecot's proxy does).
                        let tag = self.send_command(b"CAPABILITY");
                        self.state = State::ExpectPostLoginCapability {
                            tag,
                            untagged,
                            reply,
                            list: None,
                        };
                    }
                }
                Status::No => {
                    self.events
                        .push_back(ReplayEvent::Rejected { text, challenge });
                    self.input.clear();
                }
                _ => self.fail(ReplayError::Unexpected(format!("BAD {text}"))),
            },
            other => self.fail(other.unexpected()),
        }
    }

    /// Report the login: `reply` as the upstream sent it, with `list` (the post-login
    /// capabilities learnt by asking) added as its `[CAPABILITY ...]` code, or as an untagged
    /// `* CAPABILITY` line when the OK already carries another code.
    fn logged_in(&mut self, mut untagged: BytesMut, reply: Bytes, list: Option<String>) {
        self.state = State::LoggedIn;
        let reply = match list {
            None => reply,
            Some(list) => match reply.strip_prefix(b"OK") {
                Some(rest) if !rest.trim_ascii_start().starts_with(b"[") => {
                    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                    let mut coded = BytesMut::with_capacity(reply.len() + list.len() + 16);
                    coded.extend_from_slice(b"OK [CAPABILITY ");
                    coded.extend_from_slice(list.as_bytes());
                    coded.extend_from_slice(b"] ");
                    coded.extend_from_slice(rest);
                    coded.freeze()
                }
                _ => {
                    untagged.extend_from_slice(format!("* CAPABILITY {list}\r\n").as_bytes());
                    reply
                }
            },
        };
        self.events.push_back(ReplayEvent::LoggedIn {
            untagged: untagged.freeze(),
            reply,
        });
    }

    /// Send the login command (first piece) and wait for its answer.
    fn send_login(&mut self) {
        if matches!(self.login, Prepared::Probe) {
            self.send_command(b"LOGOUT");
            self.state = State::Done;
            self.input.clear();
            self.events.push_back(ReplayEvent::Probed);
            return;
        }
        // RFC 2971 3.1: ID only to an upstream that lists it (Dovecot does; Courier does
        // not, and would take the ID command's answer for the login's).
        if let Some(id) = self.id.take()
            && self.has_capability("ID")
        {
            let tag = self.send_command(format!("ID {id}").as_bytes());
            self.state = State::ExpectIdAnswer { tag };
            return;
        }
        let tag = self.next_tag();
        let literal_plus = self.has_capability("LITERAL+");
        let sasl_ir = self.has_capability("SASL-IR");
        let mut pieces = VecDeque::new();
        let mut piece = BytesMut::new();
        piece.extend_from_slice(tag.as_bytes());
        match &self.login {
            Prepared::Command { user, password } => {
                piece.extend_from_slice(b" LOGIN ");
                push_astring(&mut piece, &mut pieces, user, literal_plus);
                piece.extend_from_slice(b" ");
                push_astring(&mut piece, &mut pieces, password.expose(), literal_plus);
                piece.extend_from_slice(b"\r\n");
            }
            Prepared::OneStep { mechanism, payload } => {
                piece.extend_from_slice(b" AUTHENTICATE ");
                piece.extend_from_slice(mechanism.sasl_name().unwrap_or("PLAIN").as_bytes());
                let response = sasl::encode_base64(payload.expose());
                if sasl_ir {
                    piece.extend_from_slice(b" ");
                    piece.extend_from_slice(response.as_bytes());
                    piece.extend_from_slice(b"\r\n");
                } else {
                    piece.extend_from_slice(b"\r\n");
                    pieces.push_back(piece.split().freeze());
                    piece.extend_from_slice(response.as_bytes());
                    piece.extend_from_slice(b"\r\n");
                }
            }
            Prepared::Probe => {}
            Prepared::SaslLogin { user, password } => {
                piece.extend_from_slice(b" AUTHENTICATE LOGIN\r\n");
                pieces.push_back(piece.split().freeze());
                piece.extend_from_slice(sasl::encode_base64(user).as_bytes());
                piece.extend_from_slice(b"\r\n");
                pieces.push_back(piece.split().freeze());
                piece.extend_from_slice(sasl::encode_base64(password.expose()).as_bytes());
                piece.extend_from_slice(b"\r\n");
            }
        }
        pieces.push_back(piece.freeze());
        if let Some(first) = pieces.pop_front() {
            self.out.extend_from_slice(&first);
        }
        self.credentials_sent = true;
        self.state = State::ExpectLoginAnswer {
            tag,
            pending: Secret::new(pieces),
            untagged: BytesMut::new(),
            challenge: None,
        };
    }

    fn has_capability(&self, name: &str) -> bool {
        self.capabilities
            .as_deref()
            .is_some_and(|caps| caps.iter().any(|c| c == name))
    }

    fn next_tag(&mut self) -> String {
        self.next_tag = self.next_tag.saturating_add(1);
        format!("mg{}", self.next_tag)
    }

    fn send_command(&mut self, command: &[u8]) -> String {
        let tag = self.next_tag();
        self.out.extend_from_slice(tag.as_bytes());
        self.out.extend_from_slice(b" ");
        self.out.extend_from_slice(command);
        self.out.extend_from_slice(b"\r\n");
        tag
    }

    /// A `* BYE` or close in answer to the login command: a failed login, not an outage. Its
    /// text is not relayed: an upstream may echo the command it got (the password) in it.
    fn rejected_by_close(&mut self) {
        let challenge = match std::mem::replace(&mut self.state, State::Done) {
            State::ExpectLoginAnswer { challenge, .. } => challenge,
            _ => None,
        };
        self.input.clear();
        self.events.push_back(ReplayEvent::Rejected {
            text: String::new(),
            challenge,
        });
    }

    fn fail(&mut self, error: ReplayError) {
        let error = if self.credentials_sent {
            // An upstream may echo the line it got (`BAD Error in command: a LOGIN u p`).
            match error {
                ReplayError::LineTooLong(limit) => ReplayError::LineTooLong(limit),
                ReplayError::Bye(_) => ReplayError::Bye(self.last.clone()),
                _ => ReplayError::Unexpected(self.last.clone()),
            }
        } else {
            error
        };
        self.state = State::Done;
        self.input.clear();
        self.events.push_back(ReplayEvent::Failed(error));
    }
}

/// An astring for the LOGIN replay (RFC 9051 9): a quoted string when every byte is printable
/// ASCII (with `"` and `\` escaped), otherwise a literal: `{n+}` with LITERAL+ (RFC 7888),
/// else a synchronising `{n}` that ends the current piece (the next waits for `+`).
fn push_astring(piece: &mut BytesMut, pieces: &mut VecDeque<Bytes>, value: &[u8], plus: bool) {
    if value.iter().all(|b| (0x20..0x7f).contains(b)) {
        piece.extend_from_slice(b"\"");
        for &b in value {
            if b == b'"' || b == b'\\' {
                piece.extend_from_slice(b"\\");
            }
            piece.extend_from_slice(&[b]);
        }
        piece.extend_from_slice(b"\"");
    } else if plus {
        piece.extend_from_slice(format!("{{{}+}}\r\n", value.len()).as_bytes());
        piece.extend_from_slice(value);
    } else {
        piece.extend_from_slice(format!("{{{}}}\r\n", value.len()).as_bytes());
        pieces.push_back(piece.split().freeze());
        piece.extend_from_slice(value);
    }
}

/// Response status words (RFC 9051 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
            Status::PreAuth => "PREAUTH",
        }
    }
}

/// The parts of an upstream response the replay needs. Hand-parsed: only the first line's
/// shape matters, and imap-proto would reject lines a replay must still report.
#[derive(Debug)]
enum Response {
    /// `+ text` or `+` (Dovecot and others send a bare `+`).
    Continuation {
        text: Vec<u8>,
    },
    /// `* ...`; `status` for `OK`/`NO`/`BAD`/`BYE`/`PREAUTH`, `None` for data (`* CAPABILITY`).
    Untagged {
        status: Option<Status>,
        code: Option<String>,
        text: String,
    },
    Tagged {
        tag: String,
        status: Status,
        code: Option<String>,
        text: String,
    },
    Garbage(String),
}

impl Response {
    /// ```text
    /// response-tagged = tag SP resp-cond-state CRLF
    /// resp-cond-state = ("OK" / "NO" / "BAD") SP resp-text
    /// resp-text       = ["[" resp-text-code "]" SP] [text]
    /// continue-req    = "+" [SP (resp-text / base64)] CRLF    ; SP made optional
    /// ```
    fn parse(line: &[u8]) -> Self {
        if let Some(rest) = line.strip_prefix(b"+") {
            let text = rest.strip_prefix(b" ").unwrap_or(rest);
            return Response::Continuation {
                text: text.to_vec(),
            };
        }
        let Some(space) = line.iter().position(|b| *b == b' ') else {
            return Response::Garbage(clean(line));
        };
        let (head, rest) = (
            line.get(..space).unwrap_or_default(),
            line.get(space.saturating_add(1)..).unwrap_or_default(),
        );
        let (word, after) = match rest.iter().position(|b| *b == b' ') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i.saturating_add(1)..).unwrap_or_default(),
            ),
            None => (rest, &b""[..]),
        };
        let status = match word.to_ascii_uppercase().as_slice() {
            b"OK" => Some(Status::Ok),
            b"NO" => Some(Status::No),
            b"BAD" => Some(Status::Bad),
            b"BYE" => Some(Status::Bye),
            b"PREAUTH" => Some(Status::PreAuth),
            _ => None,
        };
        let (code, text) = match status {
            Some(_) => resp_text(after),
            None => (None, clean(rest)),
        };
        if head == b"*" {
            return Response::Untagged { status, code, text };
        }
        match status {
            Some(status @ (Status::Ok | Status::No | Status::Bad))
                if !head.is_empty()
                    && head
                        .iter()
                        .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(b)) =>
            {
                Response::Tagged {
                    tag: String::from_utf8_lossy(head).into_owned(),
                    status,
                    code,
                    text,
                }
            }
            _ => Response::Garbage(clean(line)),
        }
    }

    /// The human text, for errors and refusals.
    fn text(&self) -> String {
        match self {
            Response::Continuation { text } => clean(text),
            Response::Untagged { text, .. } | Response::Tagged { text, .. } => text.clone(),
            Response::Garbage(text) => text.clone(),
        }
    }

    /// What kind of response this was, its status and its response code's name, without any
    /// of its text: safe for an error once a credential may be echoed back.
    fn summary(&self) -> String {
        let (kind, status, code) = match self {
            Response::Continuation { .. } => return "continuation (text withheld)".into(),
            Response::Garbage(_) => return "garbage (text withheld)".into(),
            Response::Untagged { status, code, .. } => ("untagged", *status, code),
            Response::Tagged { status, code, .. } => ("tagged", Some(*status), code),
        };
        let mut summary = kind.to_owned();
        if let Some(status) = status {
            summary.push(' ');
            summary.push_str(status.as_str());
        }
        let name = code
            .as_deref()
            .and_then(|c| c.split_ascii_whitespace().next())
            .filter(|n| n.len() <= 32 && super::parse::is_atom(n.as_bytes()));
        if let Some(name) = name {
            summary.push_str(" [");
            summary.push_str(name);
            summary.push(']');
        }
        summary.push_str(" (text withheld)");
        summary
    }

    fn unexpected(&self) -> ReplayError {
        let what = match self {
            Response::Continuation { .. } => "continuation",
            Response::Untagged { .. } => "untagged",
            Response::Tagged { .. } => "tagged",
            Response::Garbage(_) => "garbage",
        };
        ReplayError::Unexpected(format!("{what}: {}", self.text()))
    }
}

/// `["[" resp-text-code "]" SP] text` → (code, text).
fn resp_text(rest: &[u8]) -> (Option<String>, String) {
    if let Some(inner) = rest.strip_prefix(b"[")
        && let Some(close) = inner.iter().position(|b| *b == b']')
    {
        let code = inner.get(..close).unwrap_or_default();
        let text = inner.get(close.saturating_add(1)..).unwrap_or_default();
        return (
            Some(String::from_utf8_lossy(code).into_owned()),
            clean(text.trim_ascii_start()),
        );
    }
    (None, clean(rest))
}

/// `CAPABILITY a b c` response code → upper-cased capabilities.
fn capability_code(code: &str) -> Option<Vec<String>> {
    strip_prefix_ci(code.as_bytes(), b"CAPABILITY ").map(capability_list)
}

fn capability_list(list: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(list)
        .split_ascii_whitespace()
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The capabilities of a list as the upstream spelled them, keeping only atoms (RFC 9051 9),
/// so the list can stand in a `[CAPABILITY ...]` code.
fn capability_tokens(list: &[u8]) -> Vec<&str> {
    std::str::from_utf8(list)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter(|c| super::parse::is_atom(c.as_bytes()))
        .collect()
}

/// The list of a raw `* CAPABILITY a b c` line (CRLF or not), else `None`.
fn untagged_capability(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    strip_prefix_ci(line, b"* CAPABILITY ")
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..).unwrap_or_default())
}

/// Upstream text made safe for an error or a refusal: lossy UTF-8, no control characters,
/// bounded length.
fn clean(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

#[cfg(test)]
mod tests;
