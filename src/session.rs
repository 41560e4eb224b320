//! Stage: session. The per-connection driver, and the only module that wires the stages
//! together: downstream TLS → pre-auth front-end machine → policy → upstream replay → splice.
//!
//! It owns the sockets and the clock; the machines own the protocol. The loop is small on
//! purpose: send what the machine queued, act on its event, otherwise read (bounded by the
//! machine's deadline) and feed the bytes in.
//!
//! ```text
//! accept ─▶ [implicit TLS handshake] ─▶ pre-auth loop ──LoginRequested──▶ policy
//!                 │ fail: close            │  ▲    │                          │ Deny ─▶ Refused ─┐
//!                 ▼                        │  │    │ TlsRequested ─▶ handshake  │ Allow           │
//!               end=error                  │  └────┴──────────────────────────┼─────────────────┘
//!                                          │ Closed ─▶ flush, close           ▼
//!                                          │                           upstream login
//!                                          │        Rejected / Unavailable ◀┘  │ LoggedIn
//!                                          ▼                                    ▼
//!                                   end=client_closed                        splice ─▶ end
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::Instrument as _;

use crate::audit::{self, Event};
use crate::auth::{AuthError, VerificationMode, VerifiedToken};
use crate::config::{Listener, ListenerTls};
use crate::metrics::{Refused, TokenResult};
use crate::pacing::Pacing;
use crate::policy::{self, Attempt, Decision, Identity, Reason, TokenFacts};
use crate::proto::imap::frontend::ImapFrontend;
use crate::proto::pop3::frontend::Pop3Frontend;
use crate::proto::proxy_header::{self, ProxyHeader};
use crate::proto::{
    CloseReason, Credentials, FrontendEvent, LoginOutcome, LoginRequest, Mechanism, Protocol,
    Refusal, ReplyClass, Security,
};
use crate::server::{Generation, Phase, Services, Shared};
use crate::splice::{self, End, Interrupt, Side, Totals};
use crate::stream::{Downstream, MaybeTls};
use crate::throttle::store::Outcome;
use crate::upstream::{self, Peer};

/// Longest a TLS handshake may take before the session is dropped: a handshake is a few round
/// trips, and a client that cannot finish in 10 s is not going to.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every session on one listener shares: the listener (bound once) and the current
/// configuration generation (swapped on reload).
pub struct SessionContext {
    pub listener: Listener,
    pub shared: Arc<Shared>,
}

/// How a session ended, before or after the splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Ended before login: the downstream left, a limit was hit, or LOGOUT/QUIT.
    Preauth(PreauthEnd),
    /// Ended after the splice.
    Spliced(End, Totals),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreauthEnd {
    DownstreamClosed,
    Machine(CloseReason),
    /// The server began to drain before this session logged in.
    Shutdown,
    Error(Side),
}

/// What a session writes down about itself: its id and reference, where the client really is,
/// and the services it reports to. Exactly one `connect` and one `session_end` record each.
struct Trail {
    id: String,
    reference: String,
    listener: String,
    protocol: Protocol,
    services: Services,
    /// The downstream's address and the address it connected to; behind a PROXY header, the
    /// ones the header names.
    peer: Peer,
    connected: bool,
}

impl Trail {
    fn connect(&mut self, down: Option<&Downstream>) {
        if self.connected {
            return;
        }
        self.connected = true;
        let (tls, sni) = match down {
            Some(MaybeTls::Tls(tls)) => {
                let conn = tls.get_ref().1;
                (
                    conn.protocol_version()
                        .and_then(audit::TlsVersion::from_rustls),
                    conn.server_name().map(str::to_owned),
                )
            }
            _ => (None, None),
        };
        self.services.audit.record(
            &self.id,
            Event::Connect(audit::Connect {
                listener: self.listener.clone(),
                protocol: self.protocol,
                client: self.peer.source,
                tls,
                sni,
            }),
        );
    }

    fn auth(&self, record: audit::Auth) {
        self.services.metrics.login(self.protocol, record.reason);
        self.services.audit.record(&self.id, Event::Auth(record));
    }

    fn end(&mut self, ending: Ending, duration: Duration) {
        self.connect(None);
        let (end, totals) = ending.as_splice_end();
        let metrics = &self.services.metrics;
        metrics.session_ended(self.protocol, end.into());
        metrics.bytes_spliced(self.protocol, totals);
        self.services.audit.record(
            &self.id,
            Event::SessionEnd(audit::SessionEnd {
                bytes_up: totals.bytes_up,
                bytes_down: totals.bytes_down,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                end: end.into(),
            }),
        );
    }
}

impl Ending {
    /// The splice vocabulary for every ending, so audit and metrics map one way.
    fn as_splice_end(self) -> (End, Totals) {
        match self {
            Ending::Spliced(end, totals) => (end, totals),
            Ending::Preauth(end) => {
                let end = match end {
                    PreauthEnd::DownstreamClosed | PreauthEnd::Machine(CloseReason::Logout) => {
                        End::DownstreamClosed
                    }
                    PreauthEnd::Machine(CloseReason::AuthTimeout) => End::IdleTimeout,
                    PreauthEnd::Machine(
                        CloseReason::TooManyAttempts | CloseReason::ProtocolViolation,
                    ) => End::Error(Side::Downstream),
                    PreauthEnd::Shutdown => End::Shutdown,
                    PreauthEnd::Error(side) => End::Error(side),
                };
                (end, Totals::default())
            }
        }
    }
}

/// Serve one accepted connection to its end. Never panics and never returns an error: every
/// failure ends the session with a protocol answer where one can still be sent, and with one
/// `session_end` audit record.
pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<SessionContext>) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let span = tracing::info_span!(
        "session",
        id = %id,
        listener = %ctx.listener.name,
        peer = %peer,
    );
    async move {
        // Each pre-auth turn is one small line; Nagle would stall every reply.
        let _ = tcp.set_nodelay(true);
        let services = ctx.shared.services.clone();
        let _active = services
            .metrics
            .connection_opened(&ctx.listener.name, ctx.listener.protocol);
        let started = Instant::now();
        let local = tcp.local_addr().unwrap_or(peer);
        let mut trail = Trail {
            reference: reference(&id),
            id,
            listener: ctx.listener.name.clone(),
            protocol: ctx.listener.protocol,
            services,
            peer: Peer {
                source: peer,
                destination: local,
            },
            connected: false,
        };
        let ending = drive(tcp, &ctx, &mut trail).await;
        let ms = started.elapsed().as_millis();
        match ending {
            Ending::Preauth(end) => tracing::info!(?end, duration_ms = ms, "session ended"),
            Ending::Spliced(end, totals) => tracing::info!(
                end = end.as_str(),
                bytes_up = totals.bytes_up,
                bytes_down = totals.bytes_down,
                duration_ms = ms,
                "session ended"
            ),
        }
        trail.end(ending, started.elapsed());
    }
    .instrument(span)
    .await
}

/// Answer a connection over the global cap with a protocol goodbye, then close.
pub async fn refuse_busy(tcp: TcpStream, ctx: Arc<SessionContext>) {
    let goodbye: &[u8] = match ctx.listener.protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    };
    let generation = ctx.shared.current();
    let _ = timeout(HANDSHAKE_TIMEOUT, async {
        let mut down = accept_tls(tcp, &ctx.listener, &generation).await?;
        down.write_all(goodbye).await?;
        down.shutdown().await
    })
    .await;
}

/// The short reference ending every refusal text: the random tail of the session id, enough to
/// find the audit record (`audit tail --session REF`) and nothing about the user.
fn reference(id: &str) -> String {
    id.get(id.len().saturating_sub(12)..)
        .unwrap_or(id)
        .to_owned()
}

async fn accept_tls(
    tcp: TcpStream,
    listener: &Listener,
    generation: &Generation,
) -> std::io::Result<Downstream> {
    match (listener.tls, &generation.acceptor) {
        (ListenerTls::Implicit, Some(acceptor)) => {
            Ok(MaybeTls::Tls(Box::new(acceptor.accept(tcp).await?)))
        }
        _ => Ok(MaybeTls::Plain(tcp)),
    }
}

/// Read a PROXY v1/v2 header without reading one byte past it: the bytes after it are the
/// client's TLS handshake or first command. v1 is read byte by byte up to its LF (at most 107
/// bytes); v2 as its 16-byte fixed part, then exactly the length that part announces.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<ProxyHeader, ()> {
    let mut buf = Vec::with_capacity(proxy_header::MAX_V1_LEN);
    let mut first = [0u8; 6];
    tcp.read_exact(&mut first).await.map_err(|_| ())?;
    buf.extend_from_slice(&first);
    let mut want = if first == *b"PROXY " { 1 } else { 10 };
    loop {
        match proxy_header::parse(&buf) {
            Ok(proxy_header::Parsed::Complete { header, .. }) => return Ok(header),
            Ok(proxy_header::Parsed::Incomplete) => {}
            Err(_) => return Err(()),
        }
        if buf.len() + want > proxy_header::MAX_V2_LEN {
            return Err(());
        }
        let start = buf.len();
        buf.resize(start + want, 0);
        tcp.read_exact(buf.get_mut(start..).ok_or(())?)
            .await
            .map_err(|_| ())?;
        want = if buf.starts_with(b"PROXY ") {
            1
        } else if buf.len() >= 16 {
            // v2: bytes 14..16 are the big-endian length of the rest.
            let len = buf
                .get(14..16)
                .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
            (16 + len).saturating_sub(buf.len()).max(1)
        } else {
            16 - buf.len()
        };
    }
}

async fn drive(mut tcp: TcpStream, ctx: &SessionContext, trail: &mut Trail) -> Ending {
    // TLS and limits come from the generation current at accept; policy and upstream are read
    // again at each login, so a reload applies to the next login even on this connection.
    let generation = ctx.shared.current();
    if let Some(trusted) = &ctx.listener.proxy_protocol {
        // Only a trusted load balancer may name another client address; from anyone else, and
        // without a valid header, the connection is closed (nothing else is safe to assume).
        let refused = if !trusted.contains(trail.peer.source.ip()) {
            Some(Refused::ProxyUntrusted)
        } else {
            match timeout(HANDSHAKE_TIMEOUT, read_proxy_header(&mut tcp)).await {
                Ok(Ok(ProxyHeader::Proxied {
                    source,
                    destination,
                })) => {
                    trail.peer = Peer {
                        source,
                        destination,
                    };
                    tracing::debug!(client = %source, "PROXY header");
                    None
                }
                // LOCAL (the balancer's health check) and UNKNOWN: the connection is the
                // balancer's own.
                Ok(Ok(ProxyHeader::Local | ProxyHeader::Unknown)) => None,
                Ok(Err(())) | Err(_) => Some(Refused::ProxyHeader),
            }
        };
        if let Some(refused) = refused {
            tracing::info!(reason = refused.as_str(), "PROXY header refused; closing");
            trail
                .services
                .metrics
                .connection_refused(&ctx.listener.name, refused);
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
    }
    let down = match timeout(
        HANDSHAKE_TIMEOUT,
        accept_tls(tcp, &ctx.listener, &generation),
    )
    .await
    {
        Ok(Ok(down)) => down,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "downstream tls handshake failed");
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
        Err(_) => {
            tracing::info!("downstream tls handshake timed out");
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
    };
    trail.connect(Some(&down));
    // One address may hold only so many connections (a NAT'd office shares one, so the cap
    // is generous); the slot is held for the whole session.
    let Some(_slot) = ctx.shared.throttle.connect(trail.peer.source.ip()) else {
        tracing::warn!(client = %trail.peer.source.ip(), "too many connections from one address");
        trail
            .services
            .metrics
            .connection_refused(&ctx.listener.name, Refused::Limit);
        let goodbye: &[u8] = match ctx.listener.protocol {
            Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
            Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
        };
        let mut down = down;
        let _ = timeout(HANDSHAKE_TIMEOUT, async {
            down.write_all(goodbye).await?;
            down.shutdown().await
        })
        .await;
        return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
    };
    let security = match ctx.listener.tls {
        ListenerTls::Implicit => Security::Tls,
        ListenerTls::StartTls => Security::StartTlsOffered,
        ListenerTls::None => Security::Plaintext,
    };
    let limits = generation.config.limits.preauth;
    let now = Instant::now().into_std();
    match ctx.listener.protocol {
        Protocol::Imap => {
            let machine = ImapFrontend::new(security, limits, now);
            Preauth {
                ctx,
                generation: generation.clone(),
                trail,
                down,
                machine,
            }
            .run()
            .await
        }
        Protocol::Pop3 => {
            let machine = Pop3Frontend::new(security, limits, now);
            Preauth {
                ctx,
                generation: generation.clone(),
                trail,
                down,
                machine,
            }
            .run()
            .await
        }
    }
}

/// The I/O face of a front-end machine (see `proto::imap::frontend`), so one driver serves both
/// protocols.
trait Frontend {
    fn handle_input(&mut self, bytes: &[u8]);
    fn handle_outcome(&mut self, outcome: LoginOutcome);
    fn handle_timeout(&mut self, now: std::time::Instant);
    fn poll_timeout(&self) -> Option<std::time::Instant>;
    fn tls_established(&mut self);
    fn poll_event(&mut self) -> Option<FrontendEvent>;
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn into_residual(self) -> Bytes;
}

macro_rules! frontend {
    ($machine:ty) => {
        impl Frontend for $machine {
            fn handle_input(&mut self, bytes: &[u8]) {
                <$machine>::handle_input(self, bytes)
            }
            fn handle_outcome(&mut self, outcome: LoginOutcome) {
                <$machine>::handle_outcome(self, outcome)
            }
            fn handle_timeout(&mut self, now: std::time::Instant) {
                <$machine>::handle_timeout(self, now)
            }
            fn poll_timeout(&self) -> Option<std::time::Instant> {
                <$machine>::poll_timeout(self)
            }
            fn tls_established(&mut self) {
                <$machine>::tls_established(self)
            }
            fn poll_event(&mut self) -> Option<FrontendEvent> {
                <$machine>::poll_event(self)
            }
            fn poll_transmit(&mut self) -> Option<Bytes> {
                <$machine>::poll_transmit(self)
            }
            fn into_residual(self) -> Bytes {
                <$machine>::into_residual(self)
            }
        }
    };
}

frontend!(ImapFrontend);
frontend!(Pop3Frontend);

struct Preauth<'a, F> {
    ctx: &'a SessionContext,
    /// The generation of the last login attempt (of the accept, before any).
    generation: Arc<Generation>,
    trail: &'a Trail,
    down: Downstream,
    machine: F,
}

impl<F: Frontend> Preauth<'_, F> {
    async fn run(mut self) -> Ending {
        let mut buf = vec![0u8; 4096];
        let mut phase = self.ctx.shared.phase();
        loop {
            if self.flush().await.is_err() {
                return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
            }
            match self.machine.poll_event() {
                Some(FrontendEvent::TlsRequested) => {
                    if let Err(end) = self.start_tls().await {
                        return Ending::Preauth(end);
                    }
                    continue;
                }
                Some(FrontendEvent::LoginRequested(request)) => {
                    match self.login(&request).await {
                        Ok(admitted) => {
                            // The pre-auth read buffer is not needed for the rest of the session.
                            drop(std::mem::take(&mut buf));
                            return self.splice(admitted).await;
                        }
                        Err(refusal) => {
                            if refusal.class != ReplyClass::Unavailable {
                                // fail2ban reads this line (packaging/fail2ban).
                                let client = self.trail.peer.source.ip();
                                let user = request.user().unwrap_or("");
                                tracing::warn!(%client, user, "login failed");
                            }
                            self.machine.handle_outcome(LoginOutcome::Refused(refusal));
                        }
                    }
                    continue;
                }
                Some(FrontendEvent::Closed(reason)) => {
                    let _ = self.flush().await;
                    let _ = timeout(HANDSHAKE_TIMEOUT, self.down.shutdown()).await;
                    return Ending::Preauth(PreauthEnd::Machine(reason));
                }
                None => {}
            }
            // No deadline from the machine means none to keep: a far one keeps the select simple.
            let deadline = self.machine.poll_timeout().map_or_else(
                || Instant::now() + Duration::from_secs(86_400),
                Instant::from_std,
            );
            let read = tokio::select! {
                r = self.down.read(&mut buf) => r,
                () = tokio::time::sleep_until(deadline) => {
                    self.machine.handle_timeout(Instant::now().into_std());
                    continue;
                }
                () = async { let _ = phase.wait_for(|p| *p != Phase::Serving).await; } => {
                    // Nobody logs in on a server that is going away.
                    let goodbye = splice::goodbye(self.ctx.listener.protocol, End::Shutdown);
                    let _ = timeout(HANDSHAKE_TIMEOUT, async {
                        self.down.write_all(goodbye.unwrap_or_default()).await?;
                        self.down.shutdown().await
                    })
                    .await;
                    return Ending::Preauth(PreauthEnd::Shutdown);
                }
            };
            match read {
                Ok(0) => return Ending::Preauth(PreauthEnd::DownstreamClosed),
                Ok(n) => self.machine.handle_input(buf.get(..n).unwrap_or_default()),
                Err(_) => return Ending::Preauth(PreauthEnd::Error(Side::Downstream)),
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let mut wrote = false;
        while let Some(out) = self.machine.poll_transmit() {
            self.down.write_all(&out).await?;
            wrote = true;
        }
        if wrote {
            self.down.flush().await?;
        }
        Ok(())
    }

    async fn start_tls(&mut self) -> Result<(), PreauthEnd> {
        let Some(acceptor) = self.generation.acceptor.clone() else {
            return Err(PreauthEnd::Error(Side::Downstream));
        };
        // The stream is moved out for the handshake; on failure the session ends, so the
        // detached placeholder is never read.
        let down = std::mem::replace(&mut self.down, MaybeTls::Detached);
        let tcp = down
            .into_plain()
            .ok_or(PreauthEnd::Error(Side::Downstream))?;
        match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.down = MaybeTls::Tls(Box::new(tls));
                self.machine.tls_established();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "starttls handshake failed");
                Err(PreauthEnd::Error(Side::Downstream))
            }
            Err(_) => Err(PreauthEnd::Error(Side::Downstream)),
        }
    }

    /// One login attempt: reserve its slot (smart lockout), verify the token (OAuth), decide
    /// (policy), replay upstream, in SPEC's decision order; then settle the slot with the
    /// outcome and hold a failure's answer for the growing delay. `Err` is the refusal to
    /// send. Every attempt leaves one `auth` audit record.
    async fn login(&mut self, request: &LoginRequest) -> Result<Admitted, Refusal> {
        self.generation = self.ctx.shared.current();
        let mut record = audit::Auth {
            user: request.user().map(str::to_owned),
            ou: None,
            mechanism: request.mechanism,
            client_id: None,
            issuer: None,
            policy_source: None,
            upstream: None,
            reason: Reason::Ok,
        };
        let throttle = self.ctx.shared.throttle.clone();
        let client = self.trail.peer.source.ip();
        // Issue 10: the slot is taken before the upstream (or IdP) is asked, so attempts in
        // flight count against the limit. Password attempts reserve on the user and source
        // counters; OAuth ones only on the invalid-token counter, so password guessing never
        // locks out a user's OAuth logins.
        let reserved = match &request.credentials {
            Credentials::Password { user, .. } => throttle.reserve_password(client, user).await,
            Credentials::Bearer { .. } => throttle.reserve_token(client).await,
        };
        let ticket = match reserved {
            Ok(ticket) => ticket,
            Err(refused) => {
                let user = request.user().unwrap_or("");
                tracing::warn!(%client, user, scope = ?refused.scope, "login refused: rate limited");
                record.reason = Reason::RateLimited;
                self.trail.auth(record);
                return Err(self.refusal(
                    ReplyClass::Unavailable,
                    policy::refusal::RATE_LIMITED,
                    None,
                ));
            }
        };
        let result = self.attempt(request, &mut record).await;
        let outcome = match (record.reason, &request.credentials) {
            (Reason::Ok, _) => Outcome::Succeeded,
            (Reason::UpstreamUnavailable | Reason::IdpUnavailable, _) => Outcome::Void,
            (_, Credentials::Password { user, password, .. }) => {
                Outcome::Failed(Some(throttle.password_hash(user, password.expose())))
            }
            (Reason::InvalidToken, Credentials::Bearer { .. }) => Outcome::Failed(None),
            // The token was valid; whatever refused the login, it was no guess.
            (_, Credentials::Bearer { .. }) => Outcome::Succeeded,
        };
        let delay = throttle.settle(ticket, outcome).await;
        self.trail.auth(record);
        // A growing delay before a failure's answer slows a guesser on one connection.
        tokio::time::sleep(delay).await;
        result
    }

    /// Verify, decide, replay; fills in `record` (its `reason` says how it went).
    async fn attempt(
        &mut self,
        request: &LoginRequest,
        record: &mut audit::Auth,
    ) -> Result<Admitted, Refusal> {
        let generation = self.generation.clone();
        let config = &generation.config;
        let protocol = self.ctx.listener.protocol;
        let mechanism = request.mechanism;

        // Step 4's token check comes first: without a verified token there are no facts to
        // decide on. An invalid token and an unreachable IdP are refused here, never let
        // through.
        let mut token = None;
        let mut identity = Identity::of(mechanism);
        if let Credentials::Bearer { token: secret, .. } = &request.credentials {
            let started = Instant::now();
            let verified = generation.verifier.verify(secret).await;
            let result = match &verified {
                Ok(_) => TokenResult::Ok,
                Err(AuthError::Invalid(_)) => TokenResult::Invalid,
                Err(AuthError::Unavailable(_)) => TokenResult::Unavailable,
            };
            self.trail
                .services
                .metrics
                .token_verification(result, started.elapsed());
            match verified {
                Ok(v) => {
                    record.client_id = v.client_id.clone();
                    record.issuer = Some(v.issuer.clone());
                    if record.user.is_none() {
                        record.user = Some(v.user.clone());
                    }
                    // Claims read without a signature check may refuse, never prove.
                    if v.mode == VerificationMode::UnverifiedClaims {
                        identity = Identity::Unproven;
                    }
                    tracing::debug!(mode = v.mode.as_str(), provider = %v.provider, "token verified");
                    token = Some(facts(v));
                }
                Err(e) => {
                    let reason = match e {
                        AuthError::Invalid(ref why) => {
                            tracing::info!(error = %why, "token refused");
                            Reason::InvalidToken
                        }
                        AuthError::Unavailable(ref why) => {
                            tracing::warn!(error = %why, "identity provider unavailable");
                            Reason::IdpUnavailable
                        }
                    };
                    record.reason = reason;
                    record.policy_source = Some("token".to_owned());
                    let text = match reason.class() {
                        ReplyClass::Unavailable => TEMPORARY_FAILURE,
                        _ => policy::refusal::GENERIC_FAILURE,
                    };
                    return Err(self.refusal(
                        reason.class(),
                        text,
                        oauth_challenge(mechanism, reason),
                    ));
                }
            }
        }

        let user = record.user.clone().unwrap_or_default();
        let attempt = Attempt {
            protocol,
            mechanism,
            user: &user,
            token: token.as_ref(),
        };
        match policy::decide(&config.directory, &attempt) {
            Decision::Allow(permit) => {
                record.ou = permit.ou.as_deref().map(str::to_owned);
                record.policy_source = Some(permit.source);
            }
            Decision::Deny(denial) => {
                tracing::info!(user, reason = denial.reason.as_str(), source = %denial.source, "login denied by policy");
                let reply = policy::refusal::reply(
                    &denial,
                    protocol,
                    identity,
                    config.policy.disclose_reasons,
                    &config.policy.contact,
                );
                record.ou = denial.ou.as_deref().map(str::to_owned);
                record.policy_source = Some(denial.source.clone());
                record.reason = denial.reason;
                let challenge = oauth_challenge(mechanism, denial.reason);
                self.pace_policy_refusal(&generation, request).await;
                return Err(self.refusal(reply.class, &reply.text, challenge));
            }
        }

        let Some(connector) = generation.connector(&self.ctx.listener).cloned() else {
            tracing::warn!(
                user,
                "listener has no upstream in the current configuration"
            );
            record.reason = Reason::UpstreamUnavailable;
            return Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None));
        };
        record.upstream = Some(connector.name().to_owned());
        let metrics = &self.trail.services.metrics;
        let asked = Instant::now();
        match connector.login(request, &self.trail.peer).await {
            Ok(logged) => {
                metrics.upstream_connect(protocol, logged.connect_time);
                metrics.upstream_login(protocol, logged.login_time);
                tracing::info!(user, mechanism = mechanism.as_str(), upstream = %logged.address, "login allowed");
                Ok(Admitted {
                    logged,
                    attempt: (protocol, mechanism, user, token),
                })
            }
            Err(upstream::Error::Rejected { text, challenge }) => {
                tracing::info!(user, "upstream rejected the login");
                record.reason = Reason::UpstreamRejected;
                if is_password(request) {
                    // Learn how long this upstream takes to refuse, and take at least the
                    // floor: policy refusals follow the same schedule (crate::pacing).
                    let took = asked.elapsed();
                    self.ctx.shared.pacing.rejected(connector.name(), took);
                    let floor = config.limits.refusal_delay_min;
                    tokio::time::sleep(Pacing::upstream_refusal(floor, took)).await;
                }
                let text = if text.trim().is_empty() {
                    policy::refusal::GENERIC_FAILURE.to_owned()
                } else {
                    text
                };
                Err(self.refusal(ReplyClass::Authentication, &text, challenge))
            }
            Err(upstream::Error::Unsafe(e)) => {
                tracing::warn!(user, error = %e, "login refused: credential not replayable");
                record.reason = Reason::UpstreamRejected;
                // Refused before any connection: as fast as a policy refusal would be.
                self.pace_policy_refusal(&generation, request).await;
                Err(self.refusal(
                    ReplyClass::Authentication,
                    policy::refusal::GENERIC_FAILURE,
                    None,
                ))
            }
            Err(e) => {
                tracing::warn!(user, error = %e, "upstream unavailable");
                record.reason = Reason::UpstreamUnavailable;
                Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None))
            }
        }
    }

    /// Before answering a password login mailgate refused itself, wait as long as the
    /// upstream would have taken to refuse it (`crate::pacing`): unknown, suspended and
    /// not-allowed accounts must not answer faster than a wrong password (issue 10, item 4).
    /// Only a timer is held; no upstream connection. Bearer logins are not paced: a token
    /// refusal says nothing about which accounts exist.
    async fn pace_policy_refusal(&self, generation: &Generation, request: &LoginRequest) {
        if !is_password(request) {
            return;
        }
        let floor = generation.config.limits.refusal_delay_min;
        let delay = match generation.connector(&self.ctx.listener) {
            Some(c) => {
                self.ctx
                    .shared
                    .pacing
                    .policy_refusal(c.name(), floor, crate::pacing::random())
            }
            None => floor,
        };
        tokio::time::sleep(delay).await;
    }

    /// A refusal whose text ends with the session reference.
    fn refusal(&self, class: ReplyClass, text: &str, challenge: Option<Bytes>) -> Refusal {
        Refusal {
            class,
            text: format!(
                "{} (ref {})",
                text.trim().trim_end_matches('.'),
                self.trail.reference
            ),
            challenge,
        }
    }

    async fn splice(mut self, admitted: Admitted) -> Ending {
        let Admitted { logged, attempt } = admitted;
        self.machine.handle_outcome(LoginOutcome::Accepted {
            untagged: logged.untagged,
            reply: logged.reply,
        });
        if self.flush().await.is_err() {
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
        let Preauth {
            mut down,
            machine,
            generation,
            ctx,
            ..
        } = self;
        let mut up = logged.stream;
        // Bytes the downstream pipelined after its login go upstream now, in order; bytes the
        // upstream sent after its answer go downstream. Nothing is lost or sent twice.
        let residual = machine.into_residual();
        if !residual.is_empty()
            && (up.write_all(&residual).await.is_err() || up.flush().await.is_err())
        {
            return Ending::Spliced(End::Error(Side::Upstream), Totals::default());
        }
        if !logged.residual.is_empty()
            && (down.write_all(&logged.residual).await.is_err() || down.flush().await.is_err())
        {
            return Ending::Spliced(End::Error(Side::Downstream), Totals::default());
        }
        // On a reload with revoke_on_reload, re-decide this login under the new policy.
        let (protocol, mechanism, user, token) = attempt;
        let interrupt = interrupt(&ctx.shared, move |generation: &Generation| {
            if !generation.config.policy.revoke_on_reload {
                return true;
            }
            let attempt = Attempt {
                protocol,
                mechanism,
                user: &user,
                token: token.as_ref(),
            };
            matches!(
                policy::decide(&generation.config.directory, &attempt),
                Decision::Allow(_)
            )
        });
        let (end, totals) = splice::splice(
            down,
            up,
            ctx.listener.protocol,
            generation.config.limits.idle_timeout,
            interrupt,
        )
        .await;
        Ending::Spliced(end, totals)
    }
}

/// Resolves when a spliced session must end: the drain deadline passed, or a reload took the
/// user's access away (`still_allowed` says no under the new generation).
async fn interrupt(shared: &Shared, still_allowed: impl Fn(&Generation) -> bool) -> Interrupt {
    let mut phase = shared.phase();
    let mut changed = shared.subscribe();
    let mut reloads = true;
    loop {
        tokio::select! {
            () = async { let _ = phase.wait_for(|p| *p == Phase::Stopping).await; } => {
                return Interrupt::Shutdown;
            }
            r = changed.changed(), if reloads => {
                if r.is_err() {
                    // No more reloads can come; only shutdown can still interrupt.
                    reloads = false;
                    continue;
                }
                if !still_allowed(&shared.current()) {
                    return Interrupt::Revoked;
                }
            }
        }
    }
}

/// The reply text for temporary failures (upstream or identity provider down).
const TEMPORARY_FAILURE: &str = "Mail service temporarily unavailable, try again later";

/// A login the policy allowed and the upstream accepted, with what is needed to re-decide it
/// on a reload.
struct Admitted {
    logged: upstream::LoggedIn,
    attempt: (Protocol, Mechanism, String, Option<TokenFacts>),
}

fn facts(v: VerifiedToken) -> TokenFacts {
    TokenFacts {
        user: v.user,
        client_id: v.client_id,
        issuer: v.issuer,
        delegated: v.delegated,
    }
}

/// A login with a password (any mechanism but the bearer-token ones).
fn is_password(request: &LoginRequest) -> bool {
    !matches!(request.credentials, Credentials::Bearer { .. })
}

/// The error challenge an OAuth refusal sends before the final `NO` / `-ERR`, as the big
/// providers do: XOAUTH2 gets Google's `{"status":"400",...}`, OAUTHBEARER the RFC 7628 3.2.2
/// error (`invalid_token`, or `insufficient_scope` for a token that is valid but not allowed
/// here). Temporary failures send none: the client should retry, not re-authenticate.
fn oauth_challenge(mechanism: Mechanism, reason: Reason) -> Option<Bytes> {
    let json = match (mechanism, reason.class()) {
        (_, ReplyClass::Unavailable) => return None,
        (Mechanism::XOAuth2, _) => r#"{"status":"400","schemes":"Bearer","scope":"email"}"#,
        (Mechanism::OAuthBearer, ReplyClass::Authentication) => {
            r#"{"status":"invalid_token","scope":"email"}"#
        }
        (Mechanism::OAuthBearer, _) => r#"{"status":"insufficient_scope","scope":"email"}"#,
        _ => return None,
    };
    Some(Bytes::from_static(json.as_bytes()))
}
