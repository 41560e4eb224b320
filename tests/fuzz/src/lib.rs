//! Shared pieces of mailgate's fuzz targets: the input layout, a driver for the pre-auth
//! front-end machines and one for the login replay machines, and the invariants they check.
//!
//! Input layout of the stream targets (`imap_parse`, `*_frontend`, `*_replay`):
//!
//! ```text
//! input  = ctrl-len ctrl stream
//! ctrl   = ctrl-len bytes, read with `arbitrary::Unstructured`: limits, chunk sizes, outcomes
//! stream = the protocol bytes, verbatim
//! ```
//!
//! so a seed is a readable transcript behind a short control prefix (`\0` + transcript feeds the
//! whole transcript in one chunk with default choices). Once `ctrl` runs out, every remaining
//! choice takes its default: the rest of the stream in one chunk, logins refused.

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use mailgate::proto::imap::{ImapFrontend, ImapReplay};
use mailgate::proto::pop3::frontend::Pop3Frontend;
use mailgate::proto::pop3::replay::Pop3Replay;
use mailgate::proto::{
    Credentials, FrontendEvent, LoginOutcome, LoginRequest, Mechanism, PreauthLimits, Refusal,
    ReplayEvent, ReplyClass, Security,
};
use mailgate::secret::Secret;

/// One `Instant` for the whole process, so runs are deterministic relative to it.
pub fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Split an input into its control part and its stream part (see the module docs).
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(n).min(rest.len()))
}

/// `true` with probability 1/n while control bytes last, `false` once they are used up
/// (`Unstructured::ratio` answers `true` on empty input, which would make defaults odd).
pub fn chance(u: &mut Unstructured<'_>, n: u8) -> bool {
    !u.is_empty() && u.ratio(1, n).unwrap_or(false)
}

/// Length of the next chunk of `remaining` stream bytes: fuzzer-chosen while control bytes
/// last, the whole rest afterwards.
pub fn chunk_len(u: &mut Unstructured<'_>, remaining: usize) -> usize {
    if u.is_empty() || remaining <= 1 {
        return remaining;
    }
    // Mostly short chunks, to split inside tokens, CRLFs and literals.
    let max = if chance(u, 4) {
        remaining
    } else {
        remaining.min(16)
    };
    u.int_in_range(1..=max).unwrap_or(remaining)
}

/// Pre-auth limits inside what `config::load` accepts (max_line 512..=1 MiB, max_literal
/// 255..=1 MiB, attempts 1..=100, auth_timeout 1 ms..=u64::MAX ms).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LimitsChoice {
    Default,
    /// The smallest config allows, so the limit paths are cheap to reach.
    Smallest {
        max_attempts: u8,
    },
    Custom {
        max_line: u16,
        max_literal: u16,
        max_attempts: u8,
        auth_timeout_ms: u64,
    },
}

impl LimitsChoice {
    pub fn limits(self) -> PreauthLimits {
        match self {
            LimitsChoice::Default => PreauthLimits::default(),
            LimitsChoice::Smallest { max_attempts } => PreauthLimits {
                max_line: 512,
                max_literal: 255,
                max_attempts: u32::from(max_attempts % 4).max(1),
                ..PreauthLimits::default()
            },
            LimitsChoice::Custom {
                max_line,
                max_literal,
                max_attempts,
                auth_timeout_ms,
            } => PreauthLimits {
                max_line: usize::from(max_line).max(512),
                max_literal: usize::from(max_literal).max(255),
                max_attempts: u32::from(max_attempts % 101).max(1),
                auth_timeout: Duration::from_millis(auth_timeout_ms.max(1)),
                ..PreauthLimits::default()
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityChoice {
    Tls,
    StartTlsOffered,
    Plaintext,
}

impl From<SecurityChoice> for Security {
    fn from(s: SecurityChoice) -> Self {
        match s {
            SecurityChoice::Tls => Security::Tls,
            SecurityChoice::StartTlsOffered => Security::StartTlsOffered,
            SecurityChoice::Plaintext => Security::Plaintext,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ClassChoice {
    Authentication,
    Authorization,
    Unavailable,
}

impl From<ClassChoice> for ReplyClass {
    fn from(c: ClassChoice) -> Self {
        match c {
            ClassChoice::Authentication => ReplyClass::Authentication,
            ClassChoice::Authorization => ReplyClass::Authorization,
            ClassChoice::Unavailable => ReplyClass::Unavailable,
        }
    }
}

/// Printable ASCII without CR/LF, as an upstream's status text is.
fn printable(u: &mut Unstructured<'_>, max: usize) -> String {
    let len = u.int_in_range(0..=max).unwrap_or(0);
    (0..len)
        .map(|_| char::from(u.int_in_range(0x20u8..=0x7e).unwrap_or(b'x')))
        .collect()
}

/// The driver's answer to a `LoginRequested`, in the shape the driver contract promises
/// (`LoginOutcome` docs): a refusal with any text, or an acceptance made of CRLF lines.
pub fn outcome(u: &mut Unstructured<'_>, protocol: mailgate::proto::Protocol) -> LoginOutcome {
    // Refusal first: it is the default once control bytes are used up, and it keeps the
    // machine reading commands.
    if u.is_empty() || !chance(u, 3) {
        let class = ClassChoice::arbitrary(u).unwrap_or(ClassChoice::Authentication);
        // Any text at all: the machine must make it one line.
        let text = String::arbitrary(u).unwrap_or_default();
        let challenge = if chance(u, 2) {
            Some(Bytes::from(Vec::<u8>::arbitrary(u).unwrap_or_default()))
        } else {
            None
        };
        return LoginOutcome::Refused(Refusal {
            class: class.into(),
            text,
            challenge,
        });
    }
    match protocol {
        mailgate::proto::Protocol::Imap => {
            let lines = u.int_in_range(0..=3u8).unwrap_or(0);
            let mut untagged = Vec::new();
            for _ in 0..lines {
                untagged.extend_from_slice(b"* ");
                untagged.extend_from_slice(printable(u, 40).as_bytes());
                untagged.extend_from_slice(b"\r\n");
            }
            let mut reply = format!("OK {}", printable(u, 40));
            if chance(u, 2) {
                reply.push_str("\r\n");
            }
            LoginOutcome::Accepted {
                untagged: untagged.into(),
                reply: reply.into(),
            }
        }
        mailgate::proto::Protocol::Pop3 => LoginOutcome::Accepted {
            untagged: Bytes::new(),
            reply: format!("+OK {}\r\n", printable(u, 40)).into(),
        },
    }
}

/// Every transmit of a front-end is whole CRLF lines: it ends in CRLF and holds no bare CR or
/// LF (a bare one would let attacker text start a forged line at the mail client).
pub fn assert_crlf_lines(chunk: &[u8]) {
    assert!(
        chunk.ends_with(b"\r\n"),
        "transmit does not end in CRLF: {:?}",
        String::from_utf8_lossy(chunk)
    );
    for (i, b) in chunk.iter().enumerate() {
        match b {
            b'\r' => assert!(
                chunk.get(i + 1) == Some(&b'\n'),
                "bare CR in transmit: {:?}",
                String::from_utf8_lossy(chunk)
            ),
            b'\n' => assert!(
                i > 0 && chunk[i - 1] == b'\r',
                "bare LF in transmit: {:?}",
                String::from_utf8_lossy(chunk)
            ),
            _ => {}
        }
    }
}

/// Every byte the machines' `Debug` output is made of, apart from the values it shows: struct,
/// enum and field names, numbers, punctuation and the `/* REDACTED */` marker. A secret made only
/// of these bytes can match the output by accident (a password of `" failures: "` does), so only
/// secrets holding some other byte are checked.
const DEBUG_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 {}()[]:,\"._\\/*-+=";

/// Passwords and tokens the machines were handed or reported, and the text that may show up in
/// `Debug` output for innocent reasons (user names, tags, refusal texts).
#[derive(Default)]
pub struct Secrets {
    secrets: Vec<Vec<u8>>,
    public: Vec<u8>,
    /// The forms of the secrets worth looking for, recomputed when either list grows.
    forms: Vec<Vec<u8>>,
    dirty: bool,
}

impl Secrets {
    /// Remember the secret of a login request, and its user names as public text.
    pub fn record(&mut self, request: &LoginRequest) {
        match &request.credentials {
            Credentials::Password {
                authzid,
                user,
                password,
            } => {
                self.secrets.push(password.expose().clone());
                self.public(user.as_bytes());
                if let Some(a) = authzid {
                    self.public(a.as_bytes());
                }
            }
            Credentials::Bearer {
                user, token, host, ..
            } => {
                self.secrets.push(token.expose().as_bytes().to_vec());
                for s in [user, host].into_iter().flatten() {
                    self.public(s.as_bytes());
                }
            }
        }
        self.dirty = true;
    }

    pub fn public(&mut self, text: &[u8]) {
        self.public.extend_from_slice(text);
        self.public.push(b'\n');
        let debug = format!("{:?}\n{:?}\n", String::from_utf8_lossy(text), text);
        self.public.extend_from_slice(debug.as_bytes());
        self.dirty = true;
    }

    /// No secret appears in `debug()`, raw, as a `Debug`-escaped string or as a `Debug` byte
    /// list. Only secrets that cannot match by accident are checked: at least 8 bytes, a byte
    /// outside [`DEBUG_ALPHABET`] among them, and no form of it part of any public text.
    /// `debug` is only called when there is something to look for.
    pub fn assert_absent(&mut self, what: &str, debug: impl FnOnce() -> String) {
        self.refresh();
        if self.forms.is_empty() {
            return;
        }
        let debug = debug();
        for form in &self.forms {
            assert!(
                !contains(debug.as_bytes(), form),
                "a secret appears in the Debug output of {what}: {debug}"
            );
        }
    }

    fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.forms.clear();
        for secret in &self.secrets {
            if !checkable(secret) || contains(&self.public, secret) {
                continue;
            }
            let escaped = format!("{:?}", String::from_utf8_lossy(secret));
            let listed = format!("{secret:?}");
            let forms = [
                secret.clone(),
                escaped.as_bytes()[1..escaped.len() - 1].to_vec(),
                listed.as_bytes()[1..listed.len() - 1].to_vec(),
            ];
            for form in forms {
                if !contains(&self.public, &form) {
                    self.forms.push(form);
                }
            }
        }
    }
}

/// A secret that cannot be found in `Debug` output by accident (see [`Secrets::assert_absent`]).
pub fn checkable(secret: &[u8]) -> bool {
    secret.len() >= 8 && secret.iter().any(|b| !DEBUG_ALPHABET.contains(b))
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

// ---------------------------------------------------------------------------------------------
// Front-end machines
// ---------------------------------------------------------------------------------------------

/// What the driver needs of a pre-auth front-end machine; both share the `handle_*`/`poll_*`
/// shape of docs/development.md section 2.
pub trait Frontend: Debug + Sized {
    const PROTOCOL: mailgate::proto::Protocol;
    fn new(security: Security, limits: PreauthLimits, now: Instant) -> Self;
    fn handle_input(&mut self, bytes: &[u8]);
    fn handle_outcome(&mut self, outcome: LoginOutcome);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn tls_established(&mut self);
    fn poll_event(&mut self) -> Option<FrontendEvent>;
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn into_residual(self) -> Bytes;
    /// Text the machine may show in `Debug` for innocent reasons (IMAP: the tag in progress).
    fn public_text(&self) -> Option<String> {
        None
    }
    /// Text of the stream the machine may keep in `Debug` (POP3: `USER` names before `PASS`).
    fn public_in_stream(_stream: &[u8]) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

impl Frontend for ImapFrontend {
    const PROTOCOL: mailgate::proto::Protocol = mailgate::proto::Protocol::Imap;
    fn new(security: Security, limits: PreauthLimits, now: Instant) -> Self {
        ImapFrontend::new(security, limits, now)
    }
    fn handle_input(&mut self, bytes: &[u8]) {
        self.handle_input(bytes)
    }
    fn handle_outcome(&mut self, outcome: LoginOutcome) {
        self.handle_outcome(outcome)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn tls_established(&mut self) {
        self.tls_established()
    }
    fn poll_event(&mut self) -> Option<FrontendEvent> {
        self.poll_event()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn into_residual(self) -> Bytes {
        self.into_residual()
    }
    fn public_text(&self) -> Option<String> {
        self.tag().map(str::to_owned)
    }
}

impl Frontend for Pop3Frontend {
    const PROTOCOL: mailgate::proto::Protocol = mailgate::proto::Protocol::Pop3;
    fn new(security: Security, limits: PreauthLimits, now: Instant) -> Self {
        Pop3Frontend::new(security, limits, now)
    }
    fn handle_input(&mut self, bytes: &[u8]) {
        self.handle_input(bytes)
    }
    fn handle_outcome(&mut self, outcome: LoginOutcome) {
        self.handle_outcome(outcome)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn tls_established(&mut self) {
        self.tls_established()
    }
    fn poll_event(&mut self) -> Option<FrontendEvent> {
        self.poll_event()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn into_residual(self) -> Bytes {
        self.into_residual()
    }
    fn public_in_stream(stream: &[u8]) -> Vec<Vec<u8>> {
        stream
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let head = line.get(..5)?;
                let user =
                    head[..4].eq_ignore_ascii_case(b"USER") && matches!(head[4], b' ' | b'\t');
                user.then(|| line[5..].to_vec())
            })
            .collect()
    }
}

/// The driver's view of one front-end session, with the invariants it checks.
struct FrontendRun<'u, 'd, M: Frontend> {
    machine: M,
    u: &'u mut Unstructured<'d>,
    security: Security,
    /// `TlsRequested` was reported and `tls_established` not called yet.
    tls_pending: bool,
    /// A login is being decided; its outcome may be held back over some input (pipelining).
    login_pending: bool,
    closed: bool,
    /// `Closed` was reported and every transmit queued before it taken: nothing may follow.
    closed_flushed: bool,
    accepted: bool,
    /// The accepted reply was transmitted; nothing may follow it.
    handed_off: bool,
    /// Input since the last TLS handshake (what the residual must be a suffix of).
    since_tls: Vec<u8>,
    elapsed: Duration,
    secrets: Secrets,
}

impl<M: Frontend> FrontendRun<'_, '_, M> {
    /// Take every transmit and event, check them and react as `session.rs` would.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(chunk) = self.machine.poll_transmit() {
                progressed = true;
                assert!(!self.handed_off, "transmit after the login was handed off");
                assert!(!self.closed_flushed, "transmit after Closed");
                assert_crlf_lines(&chunk);
                if self.accepted {
                    self.handed_off = true;
                }
            }
            while let Some(event) = self.machine.poll_event() {
                progressed = true;
                assert!(!self.closed, "event after Closed: {event:?}");
                assert!(
                    !self.accepted,
                    "event after the login was accepted: {event:?}"
                );
                // A new login's user names are public before its Debug output is checked.
                if let FrontendEvent::LoginRequested(request) = &event {
                    self.secrets.record(request);
                }
                self.secrets
                    .assert_absent("an event", || format!("{event:?}"));
                match event {
                    FrontendEvent::TlsRequested => {
                        assert_eq!(self.security, Security::StartTlsOffered, "TlsRequested");
                        assert!(!self.tls_pending && !self.login_pending);
                        self.tls_pending = true;
                    }
                    FrontendEvent::LoginRequested(request) => {
                        assert!(
                            self.security.logins_allowed(),
                            "LoginRequested before STARTTLS: {request:?}"
                        );
                        assert!(!self.tls_pending && !self.login_pending, "second login");
                        self.login_pending = true;
                    }
                    FrontendEvent::Closed(_) => {
                        self.closed = true;
                        self.login_pending = false;
                        self.tls_pending = false;
                    }
                }
            }
            if let Some(text) = self.machine.public_text() {
                self.secrets.public(text.as_bytes());
            }
            self.secrets
                .assert_absent("the machine", || format!("{:?}", self.machine));
            // Hold a TLS handshake or a login verdict back over the next input sometimes: the
            // machine must drop (TLS) or buffer (login) what arrives meanwhile.
            if self.tls_pending && !chance(self.u, 3) {
                self.tls_pending = false;
                self.security = Security::Tls;
                self.since_tls.clear();
                self.machine.tls_established();
                progressed = true;
            }
            if self.login_pending && !chance(self.u, 3) {
                self.answer();
                progressed = true;
            }
            if !progressed {
                self.closed_flushed = self.closed;
                return;
            }
        }
    }

    fn answer(&mut self) {
        self.login_pending = false;
        let outcome = outcome(self.u, M::PROTOCOL);
        if let LoginOutcome::Refused(Refusal {
            text, challenge, ..
        }) = &outcome
        {
            self.secrets.public(text.as_bytes());
            if let Some(c) = challenge {
                self.secrets.public(c);
            }
        } else {
            self.accepted = true;
        }
        self.machine.handle_outcome(outcome);
    }

    fn input(&mut self, chunk: &[u8]) {
        let quiet = self.tls_pending || self.closed || self.accepted;
        if !self.tls_pending {
            self.since_tls.extend_from_slice(chunk);
        }
        self.machine.handle_input(chunk);
        if quiet {
            // CVE-2011-0411: plaintext racing the handshake is dropped unread; after Closed
            // nothing is read at all.
            assert!(
                self.machine.poll_transmit().is_none(),
                "answer to dropped input"
            );
            assert!(
                self.machine.poll_event().is_none(),
                "event from dropped input"
            );
        }
        self.drain();
    }

    fn timeout(&mut self, step: Duration) {
        self.elapsed = self.elapsed.saturating_add(step);
        let now = base().checked_add(self.elapsed).unwrap_or_else(base);
        let due = self.machine.poll_timeout().is_some_and(|t| now >= t);
        let was_open = !self.closed && !self.accepted;
        self.machine.handle_timeout(now);
        self.drain();
        if due && was_open {
            assert!(self.closed, "deadline passed but the session is still open");
        }
    }
}

/// Drive a front-end machine with `data` (module docs for the layout) and check its invariants:
/// no panic; no event after `Closed`; every transmit whole CRLF lines; no login before STARTTLS
/// completes; input racing STARTTLS dropped; no password or token in `Debug`; at hand-off the
/// residual is exactly what followed the login; the deadline always closes an open session.
pub fn run_frontend<M: Frontend>(data: &[u8]) {
    let (ctrl, stream) = split_input(data);
    let mut u = Unstructured::new(ctrl);
    let security: Security = SecurityChoice::arbitrary(&mut u)
        .unwrap_or(SecurityChoice::Tls)
        .into();
    let limits = LimitsChoice::arbitrary(&mut u)
        .unwrap_or(LimitsChoice::Default)
        .limits();
    let machine = M::new(security, limits, base());
    let mut run = FrontendRun {
        machine,
        u: &mut u,
        security,
        tls_pending: false,
        login_pending: false,
        closed: false,
        closed_flushed: false,
        accepted: false,
        handed_off: false,
        since_tls: Vec::new(),
        elapsed: Duration::ZERO,
        secrets: Secrets::default(),
    };
    for text in M::public_in_stream(stream) {
        run.secrets.public(&text);
    }
    run.drain();
    let mut rest = stream;
    while !rest.is_empty() {
        if chance(run.u, 8) {
            let step = Duration::from_millis(u64::from(u16::arbitrary(run.u).unwrap_or(0)) * 10);
            run.timeout(step);
        }
        let len = chunk_len(run.u, rest.len());
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        run.input(chunk);
    }
    // Answer whatever is still held back, then let the deadline pass.
    if run.tls_pending {
        run.tls_pending = false;
        run.security = Security::Tls;
        run.since_tls.clear();
        run.machine.tls_established();
    }
    if run.login_pending {
        run.answer();
    }
    run.drain();
    run.timeout(limits.auth_timeout);
    // Once the reply is out, further input is only buffered: it goes upstream as the residual.
    let accepted = run.accepted;
    let since_tls = run.since_tls;
    let residual = run.machine.into_residual();
    if accepted {
        assert!(
            since_tls.ends_with(&residual),
            "residual is not the unread end of the input"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Replay machines
// ---------------------------------------------------------------------------------------------

/// A password and a token no upstream input produces by accident; each holds a byte outside
/// [`DEBUG_ALPHABET`] so the `Debug` check applies to it.
pub const PASSWORD: &str = "pw#Qz8vK3!rT9wXf";
pub const TOKEN: &str = "tok~Lm4nB7cD2eFgH9jK";

/// The fixed logins the replay targets replay, one per mechanism.
pub fn login_request(choice: u8) -> LoginRequest {
    let password = || Credentials::Password {
        authzid: None,
        user: "alice@example.org".into(),
        password: Secret::new(PASSWORD.as_bytes().to_vec()),
    };
    let bearer = |host: Option<String>| Credentials::Bearer {
        user: Some("alice@example.org".into()),
        token: Secret::new(TOKEN.into()),
        port: host.as_ref().map(|_| 993),
        host,
    };
    let (mechanism, credentials) = match choice % 6 {
        0 => (Mechanism::ImapLogin, password()),
        1 => (Mechanism::UserPass, password()),
        2 => (Mechanism::Plain, password()),
        3 => (Mechanism::Login, password()),
        4 => (Mechanism::XOAuth2, bearer(None)),
        _ => (
            Mechanism::OAuthBearer,
            bearer(Some("imap.example.org".into())),
        ),
    };
    LoginRequest {
        mechanism,
        credentials,
    }
}

pub trait Replay: Debug + Sized {
    fn new(request: &LoginRequest, starttls: bool) -> Option<Self>;
    fn handle_input(&mut self, bytes: &[u8]);
    fn tls_established(&mut self);
    fn poll_event(&mut self) -> Option<ReplayEvent>;
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn into_residual(self) -> Bytes;
}

impl Replay for ImapReplay {
    fn new(request: &LoginRequest, starttls: bool) -> Option<Self> {
        ImapReplay::new(request, starttls).ok()
    }
    fn handle_input(&mut self, bytes: &[u8]) {
        self.handle_input(bytes)
    }
    fn tls_established(&mut self) {
        self.tls_established()
    }
    fn poll_event(&mut self) -> Option<ReplayEvent> {
        self.poll_event()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn into_residual(self) -> Bytes {
        self.into_residual()
    }
}

impl Replay for Pop3Replay {
    fn new(request: &LoginRequest, starttls: bool) -> Option<Self> {
        Pop3Replay::new(request, starttls).ok()
    }
    fn handle_input(&mut self, bytes: &[u8]) {
        self.handle_input(bytes)
    }
    fn tls_established(&mut self) {
        self.tls_established()
    }
    fn poll_event(&mut self) -> Option<ReplayEvent> {
        self.poll_event()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn into_residual(self) -> Bytes {
        self.into_residual()
    }
}

/// Drive a replay machine with upstream bytes for one of the fixed logins. Checks: no panic; at
/// most one final event and nothing after it; no output after it; TLS only when asked for and
/// input racing the handshake dropped; the password and token never in `Debug`; the residual
/// is the unread end of the input.
pub fn run_replay<R: Replay>(data: &[u8]) {
    let (ctrl, stream) = split_input(data);
    let mut u = Unstructured::new(ctrl);
    let choice = u8::arbitrary(&mut u).unwrap_or(0);
    let starttls = bool::arbitrary(&mut u).unwrap_or(false);
    let request = login_request(choice);
    let Some(mut machine) = R::new(&request, starttls) else {
        return;
    };
    let mut secrets = Secrets::default();
    secrets.record(&request);
    // The upstream may echo anything, the password too; only what the machine adds counts.
    // Error texts drop control bytes and cut or replace others, so compare printable ASCII.
    secrets.public(stream);
    let printable: Vec<u8> = stream
        .iter()
        .copied()
        .filter(|b| (0x20..0x7f).contains(b))
        .collect();
    secrets.public(&printable);
    let mut finished = false;
    let mut logged_in = false;
    let mut tls_pending = false;
    let mut tls_done = false;
    let mut since_tls = Vec::new();
    let mut rest = stream;
    loop {
        while let Some(_chunk) = machine.poll_transmit() {
            assert!(!finished, "transmit after the final event");
        }
        while let Some(event) = machine.poll_event() {
            assert!(!finished, "event after the final event: {event:?}");
            secrets.assert_absent("an event", || format!("{event:?}"));
            match event {
                ReplayEvent::TlsRequested => {
                    assert!(
                        starttls && !tls_done && !tls_pending,
                        "unasked TlsRequested"
                    );
                    tls_pending = true;
                }
                ReplayEvent::LoggedIn { .. } => {
                    finished = true;
                    logged_in = true;
                }
                ReplayEvent::Rejected { .. } | ReplayEvent::Failed(_) => finished = true,
                ReplayEvent::Probed => panic!("a login replay reported Probed"),
            }
        }
        secrets.assert_absent("the machine", || format!("{machine:?}"));
        if tls_pending && !chance(&mut u, 3) {
            tls_pending = false;
            tls_done = true;
            since_tls.clear();
            machine.tls_established();
            continue;
        }
        if rest.is_empty() {
            break;
        }
        let len = chunk_len(&mut u, rest.len());
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        if !tls_pending {
            since_tls.extend_from_slice(chunk);
        }
        machine.handle_input(chunk);
        if tls_pending {
            assert!(
                machine.poll_event().is_none(),
                "event from input racing TLS"
            );
        }
    }
    let residual = machine.into_residual();
    if logged_in {
        assert!(
            since_tls.ends_with(&residual),
            "residual is not the unread end of the input"
        );
    }
}
