//! Stage: session. The per-connection driver, and the only module that wires the stages
//! together: downstream TLS → pre-auth front-end machine → policy → upstream replay → splice.
//!
//! It owns the sockets and the clock; the machines own the protocol. The loop is small on
//! purpose: send what the machine queued, act on its event, otherwise read (bounded by the
//! machine's deadline) and feed the bytes in.
//!
//! Every write is bounded (issue 9): before login by the machine's deadline (`auth_timeout`
//! from connect; a client that pipelines commands and never reads is closed then), a goodbye
//! by [`GOODBYE_TIMEOUT`], and from the login answer on by `send_timeout`. While a login is
//! verified or replayed the downstream is still read: its close ends the login at once, and
//! what it pipelines meanwhile is kept for the upstream.
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
//!
//! Before the first box the accept loop has admitted the connection under the caps of
//! `crate::conn_limit` (see `crate::server`). On a PROXY listener [`run`] first reads the
//! header, then takes the per-client slots for the client it names (over a cap: refused at
//! once); the handshake slot is given back once TLS is up. Until then a newer connection may
//! evict it at the `max_handshakes` cap (the connection is closed, as at the timeout).

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
use crate::conn_limit::{Admission, HandshakeSlot, Spoke};
use crate::directory;
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

/// Longest the last answer before a close (`* BYE`, `-ERR`) and the close itself (TLS
/// close_notify) may take once the machine has closed: one short line into a socket a reading
/// client has long drained. A peer still not reading after this is dropped without it.
/// (Handshakes have `[limits] handshake_timeout`.)
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Closed before login to make room at `max_connections` (`ConnLimits::make_room`).
    Displaced,
    /// A newer connection took this one's handshake slot at `max_handshakes`: as a refusal at
    /// accept, no log line and no audit record (a flood must not become an audit flood: one
    /// per evicted half-open connection was ~4,000 records/s in the soak).
    Evicted,
}

/// What a session writes down about itself: its id and reference, where the client really is,
/// and the services it reports to. Exactly one `connect` and one `session_end` record each.
///
/// The `connect` record says which TLS version protects the session. On a STARTTLS listener
/// that is only known after the upgrade, so there it is written after the STARTTLS/STLS
/// handshake, or, for a session that never upgrades, before its first `auth` record or with
/// its `session_end` (`tls: null`), whichever comes first. Elsewhere it is written right
/// after the accept (and the implicit TLS handshake). Its `ts` is when it was written.
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
    /// Writes the `connect` record, unless it is written already.
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
        match record.decision() {
            audit::Verdict::WouldDeny => self
                .services
                .metrics
                .would_deny(self.protocol, record.written_reason()),
            _ => self.services.metrics.login(self.protocol, record.reason),
        }
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

impl PreauthEnd {
    /// A failed read or write on the downstream before login: a client that went away (closed
    /// TCP without TLS close_notify, as imaplib, mbsync and getmail do, or reset the
    /// connection) closed the session; anything else is an error.
    fn downstream_failed(e: &std::io::Error) -> PreauthEnd {
        if splice::peer_gone(e) {
            PreauthEnd::DownstreamClosed
        } else {
            PreauthEnd::Error(Side::Downstream)
        }
    }
}

impl PreauthEnd {
    /// The detail a log line adds to the audit `end` code, in the same snake_case vocabulary.
    fn cause(self) -> &'static str {
        match self {
            PreauthEnd::DownstreamClosed => "closed",
            PreauthEnd::Machine(CloseReason::Logout) => "logout",
            PreauthEnd::Machine(CloseReason::AuthTimeout) => "auth_timeout",
            PreauthEnd::Machine(CloseReason::TooManyAttempts) => "too_many_attempts",
            PreauthEnd::Machine(CloseReason::TooManyErrors) => "too_many_errors",
            PreauthEnd::Machine(CloseReason::ProtocolViolation) => "protocol_violation",
            PreauthEnd::Shutdown => "shutdown",
            PreauthEnd::Displaced => "displaced",
            PreauthEnd::Error(Side::Downstream) => "client_error",
            PreauthEnd::Error(Side::Upstream) => "upstream_error",
            PreauthEnd::Evicted => "evicted",
        }
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
                        CloseReason::TooManyAttempts
                        | CloseReason::TooManyErrors
                        | CloseReason::ProtocolViolation,
                    ) => End::Error(Side::Downstream),
                    PreauthEnd::Shutdown => End::Shutdown,
                    PreauthEnd::Displaced => End::Displaced,
                    PreauthEnd::Error(side) => End::Error(side),
                    PreauthEnd::Evicted => End::Error(Side::Downstream),
                };
                (end, Totals::default())
            }
        }
    }
}

/// Serve one accepted connection to its end. Never panics and never returns an error: every
/// failure ends the session with a protocol answer where one can still be sent, and with one
/// `session_end` audit record.
pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<SessionContext>, admission: Admission) {
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
        let ending = drive(tcp, &ctx, &mut trail, admission).await;
        if matches!(ending, Ending::Preauth(PreauthEnd::Evicted)) {
            return;
        }
        let ms = started.elapsed().as_millis();
        match ending {
            // The audit record's `end` code, so a log line and its record read the same;
            // `cause` adds what the code folds together (logout, auth_timeout, …).
            Ending::Preauth(end) => tracing::info!(
                end = %ending.as_splice_end().0.as_str(),
                cause = %end.cause(),
                duration_ms = ms,
                "session ended"
            ),
            Ending::Spliced(end, totals) => tracing::info!(
                end = %end.as_str(),
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

/// Turn a connection away at once: no task, no wait, no TLS handshake (issue 9). On a
/// plaintext or STARTTLS listener the one-line goodbye goes out first, as one non-blocking write
/// into the fresh socket's empty send buffer (if it does not fit, it is dropped rather than
/// waited for); on an implicit-TLS listener nothing can be said before a handshake, so the
/// connection is just closed. `per_ip`: the client's own address is over its cap.
pub fn refuse_at_once(tcp: TcpStream, listener: &Listener, per_ip: bool) {
    if listener.tls == ListenerTls::Implicit {
        // A plain close (FIN), not a reset: a reset here reaches a client whose connect() has
        // not returned yet as a failed connect rather than as a refusal.
        return;
    }
    let goodbye: &[u8] = match (listener.protocol, per_ip) {
        (Protocol::Imap, false) => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        (Protocol::Pop3, false) => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
        (Protocol::Imap, true) => b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
        (Protocol::Pop3, true) => b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
    };
    // Leaves tokio's reactor; the std socket stays non-blocking, so this write cannot wait.
    if let Ok(mut tcp) = tcp.into_std() {
        let _ = std::io::Write::write(&mut tcp, goodbye);
    }
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
    spoke: Option<Spoke>,
) -> std::io::Result<Downstream> {
    match (listener.tls, &generation.acceptor) {
        (ListenerTls::Implicit, Some(acceptor)) => {
            // A handshake cut short (failed, timed out, evicted) has nothing to say: closed
            // with a reset, no TIME_WAIT socket per half-open connection of a flood. The
            // normal close is back once TLS is up (so a goodbye is never cut off).
            let _ = tcp.set_zero_linger();
            // No TLS state until the ClientHello's first bytes are here: a half-open
            // connection (a flood's, or a client on a slow link) then costs its task and
            // socket only, not rustls' buffers, while it waits out the handshake timeout.
            // `peek`, not `readable`: readiness alone fired for connections that had sent
            // nothing (every half-open one then counted as a handshake under way).
            tcp.peek(&mut [0u8; 1]).await?;
            spoke.inspect(Spoke::now);
            let tls = acceptor.accept(tcp).await?;
            #[allow(deprecated)]
            // Deprecated for blocking closes; `None` is the non-blocking default.
            tls.get_ref().0.set_linger(None)?;
            Ok(MaybeTls::Tls(Box::new(tls)))
        }
        _ => Ok(MaybeTls::Plain(tcp)),
    }
}

/// Why a handshake step (PROXY header, implicit TLS) was cut short.
enum Cut {
    /// `handshake_timeout`.
    TimedOut,
    /// A newer connection took its place at the `max_handshakes` cap (`crate::conn_limit`).
    Evicted,
}

/// `step`, bounded by the handshake deadline (`handshake_timeout` from accept, for the PROXY
/// header and the TLS handshake together) and by the eviction of the connection's handshake
/// slot (if it holds one).
async fn within_handshake<F: std::future::Future>(
    slot: &mut Option<HandshakeSlot>,
    deadline: tokio::time::Instant,
    step: F,
) -> Result<F::Output, Cut> {
    let evicted = async {
        match slot {
            Some(slot) => slot.evicted().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        out = tokio::time::timeout_at(deadline, step) => out.map_err(|_| Cut::TimedOut),
        () = evicted => Err(Cut::Evicted),
    }
}

/// Read a PROXY v1/v2 header without reading one byte past it: the bytes after it are the
/// client's TLS handshake or first command. v1 is read byte by byte up to its LF (at most 107
/// bytes); v2 as its 16-byte fixed part, then exactly the length that part announces.
async fn read_proxy_header(tcp: &mut TcpStream, spoke: Option<Spoke>) -> Result<ProxyHeader, ()> {
    tcp.peek(&mut [0u8; 1]).await.map_err(|_| ())?;
    spoke.inspect(Spoke::now);
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

async fn drive(
    mut tcp: TcpStream,
    ctx: &SessionContext,
    trail: &mut Trail,
    admission: Admission,
) -> Ending {
    // TLS and limits come from the generation current at accept; policy and upstream are read
    // again at each login, so a reload applies to the next login even on this connection.
    let generation = ctx.shared.current();
    let limits = &generation.config.limits;
    // Held for the whole session; behind a PROXY balancer taken below for the real client.
    let Admission {
        connection: mut _slot,
        mut handshake,
    } = admission;
    let handshake_deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    if let Some(trusted) = &ctx.listener.proxy_protocol {
        // Only a trusted load balancer may name another client address; from anyone else, and
        // without a valid header, the connection is closed (nothing else is safe to assume).
        let mut named = None;
        let refused = if !trusted.contains(trail.peer.source.ip()) {
            Some(Refused::ProxyUntrusted)
        } else {
            let spoke = handshake.as_ref().map(HandshakeSlot::spoke);
            match within_handshake(
                &mut handshake,
                handshake_deadline,
                read_proxy_header(&mut tcp, spoke),
            )
            .await
            {
                Ok(Ok(ProxyHeader::Proxied {
                    source,
                    destination,
                })) => {
                    trail.peer = Peer {
                        source,
                        destination,
                    };
                    named = Some(source.ip());
                    tracing::debug!(client = %source, "PROXY header");
                    None
                }
                // LOCAL (the balancer's health check) and UNKNOWN: the connection is the
                // balancer's own.
                Ok(Ok(ProxyHeader::Local | ProxyHeader::Unknown)) => None,
                Err(Cut::Evicted) => Some(Refused::Handshakes),
                Ok(Err(())) | Err(Cut::TimedOut) => Some(Refused::ProxyHeader),
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
        // The per-address caps count the client the header named, not the balancer.
        if let Some(client) = named {
            let caps = &limits.connections;
            let admitted = ctx
                .shared
                .conn_limits
                .connection(client, caps)
                .and_then(|slot| match handshake.as_mut() {
                    Some(h) if ctx.listener.tls == ListenerTls::Implicit => {
                        h.attribute(client, caps).map(|()| slot)
                    }
                    _ => Ok(slot),
                });
            match admitted {
                Ok(slot) => _slot = Some(slot),
                Err(over) => {
                    tracing::info!(%client, ?over, "too many connections from one address");
                    trail
                        .services
                        .metrics
                        .connection_refused(&ctx.listener.name, over.into());
                    refuse_at_once(tcp, &ctx.listener, true);
                    return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
                }
            }
        }
    }
    // Boxed, as the login below: a task's future is as large as its largest state, and the
    // handshake's (a whole rustls connection in the making) or the login's would otherwise be
    // reserved for every connection's whole life (18 KiB per task before, issue 9).
    let spoke = handshake.as_ref().map(HandshakeSlot::spoke);
    let down = match within_handshake(
        &mut handshake,
        handshake_deadline,
        Box::pin(accept_tls(tcp, &ctx.listener, &generation, spoke)),
    )
    .await
    {
        Ok(Ok(down)) => down,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "downstream tls handshake failed");
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
        Err(Cut::TimedOut) => {
            tracing::info!("downstream tls handshake timed out");
            return Ending::Preauth(PreauthEnd::Error(Side::Downstream));
        }
        Err(Cut::Evicted) => {
            // Debug only, as refusals at accept: a flood must not turn into a log flood.
            tracing::debug!("downstream tls handshake evicted by a newer one");
            trail
                .services
                .metrics
                .connection_refused(&ctx.listener.name, Refused::Handshakes);
            return Ending::Preauth(PreauthEnd::Evicted);
        }
    };
    drop(handshake.take());
    if ctx.listener.tls != ListenerTls::StartTls {
        trail.connect(Some(&down));
    }
    let security = match ctx.listener.tls {
        ListenerTls::Implicit => Security::Tls,
        ListenerTls::StartTls => Security::StartTlsOffered,
        ListenerTls::None => Security::Plaintext,
    };
    let limits = generation.config.limits.preauth;
    let now = Instant::now().into_std();
    // What the upstream offers, as last learnt, so the pre-login list holds after login.
    let upstream = generation
        .connector(&ctx.listener)
        .map(|connector| connector.capabilities())
        .unwrap_or_default();
    match ctx.listener.protocol {
        Protocol::Imap => {
            let machine = ImapFrontend::with_upstream(security, limits, now, &upstream);
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
            let machine = Pop3Frontend::with_upstream(security, limits, now, &upstream);
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
    trail: &'a mut Trail,
    down: Downstream,
    machine: F,
}

impl<F: Frontend> Preauth<'_, F> {
    async fn run(mut self) -> Ending {
        let mut phase = self.ctx.shared.phase();
        // Until login: may be displaced to make room at `max_connections` (oldest first).
        let mut prelogin = self.ctx.shared.conn_limits.prelogin();
        loop {
            if let Err(end) = self.flush(self.write_deadline()).await {
                return Ending::Preauth(end);
            }
            match self.machine.poll_event() {
                Some(FrontendEvent::TlsRequested) => {
                    if let Err(end) = self.start_tls().await {
                        return Ending::Preauth(end);
                    }
                    continue;
                }
                Some(FrontendEvent::LoginRequested(request)) => {
                    // Boxed: only a login in progress needs its state (see `drive`).
                    match Box::pin(self.login(&request)).await {
                        Err(NotAdmitted::Ended(PreauthEnd::Machine(reason))) => {
                            return self.close(reason).await;
                        }
                        Err(NotAdmitted::Ended(end)) => return Ending::Preauth(end),
                        Ok(admitted) => {
                            // Logged in: never displaced from here on.
                            drop(prelogin);
                            // Boxed too: a connection that never logs in need not reserve
                            // the splice's state.
                            return Box::pin(self.splice(admitted)).await;
                        }
                        Err(NotAdmitted::Refused(refusal)) => {
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
                Some(FrontendEvent::Closed(reason)) => return self.close(reason).await,
                None => {}
            }
            // No deadline from the machine means none to keep: a far one keeps the select simple.
            let deadline = self.machine.poll_timeout().map_or_else(
                || Instant::now() + Duration::from_secs(86_400),
                Instant::from_std,
            );
            let read = tokio::select! {
                // No read buffer of its own while the client is silent (stream::read_with);
                // at most PREAUTH_READ bytes per read, as the machine expects.
                r = crate::stream::read_with(&mut self.down, crate::proto::PREAUTH_READ, |bytes| {
                    if !bytes.is_empty() {
                        self.machine.handle_input(bytes);
                    }
                    bytes.len()
                }) => r,
                () = tokio::time::sleep_until(deadline) => {
                    self.machine.handle_timeout(Instant::now().into_std());
                    continue;
                }
                () = async { let _ = phase.wait_for(|p| *p != Phase::Serving).await; } => {
                    // Nobody logs in on a server that is going away.
                    self.goodbye(End::Shutdown).await;
                    return Ending::Preauth(PreauthEnd::Shutdown);
                }
                () = prelogin.displaced() => {
                    tracing::debug!("displaced before login to make room at max_connections");
                    self.goodbye(End::Displaced).await;
                    return Ending::Preauth(PreauthEnd::Displaced);
                }
            };
            match read {
                Ok(0) => return Ending::Preauth(PreauthEnd::DownstreamClosed),
                Ok(_) => {}
                Err(e) => return Ending::Preauth(PreauthEnd::downstream_failed(&e)),
            }
        }
    }

    /// mailgate ends the session before login: its goodbye line, bounded, then close.
    async fn goodbye(&mut self, end: End) {
        let goodbye = splice::goodbye(self.ctx.listener.protocol, end);
        let _ = timeout(GOODBYE_TIMEOUT, async {
            self.down.write_all(goodbye.unwrap_or_default()).await?;
            self.down.shutdown().await
        })
        .await;
    }

    /// Send everything the machine queued, by `until`. A client that pipelines commands and
    /// never reads the answers fills its receive window and then mailgate's send buffer; without
    /// a bound the write waits forever, past `auth_timeout`, pinning megabytes of kernel buffer
    /// per connection (issue 9). The machine stops answering while its output waits, so what
    /// is queued per read stays small; this bounds how long it may wait.
    async fn flush(&mut self, until: Instant) -> Result<(), PreauthEnd> {
        let machine = &mut self.machine;
        let down = &mut self.down;
        let io = async {
            let mut wrote = false;
            while let Some(out) = machine.poll_transmit() {
                down.write_all(&out).await?;
                wrote = true;
            }
            if wrote {
                down.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout_at(until, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PreauthEnd::downstream_failed(&e)),
            Err(_) => {
                tracing::info!("downstream did not read its answers before the deadline");
                Err(PreauthEnd::Machine(CloseReason::AuthTimeout))
            }
        }
    }

    /// Until when a pre-login write may wait: the machine's deadline (`auth_timeout` from
    /// connect), and once the machine has closed, a short grace for its goodbye.
    fn write_deadline(&self) -> Instant {
        self.machine
            .poll_timeout()
            .map_or_else(|| Instant::now() + GOODBYE_TIMEOUT, Instant::from_std)
    }

    /// The machine closed with its answer queued: send it (briefly), close, end.
    async fn close(&mut self, reason: CloseReason) -> Ending {
        let until = Instant::now() + GOODBYE_TIMEOUT;
        if self.flush(until).await.is_ok() {
            let _ = tokio::time::timeout_at(until, self.down.shutdown()).await;
        }
        Ending::Preauth(PreauthEnd::Machine(reason))
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
        let limit = self.generation.config.limits.handshake_timeout;
        match timeout(limit, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(tls)) => {
                self.down = MaybeTls::Tls(Box::new(tls));
                self.machine.tls_established();
                self.trail.connect(Some(&self.down));
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
    /// (policy), replay upstream, in the decision order of docs/policy.md; then settle the slot
    /// with the outcome and hold a failure's answer for the growing delay. `Err` is the refusal to
    /// send, or the end of a session whose downstream went away meanwhile. Every attempt leaves one
    /// `auth` audit record.
    async fn login(&mut self, request: &LoginRequest) -> Result<Admitted, NotAdmitted> {
        // A STARTTLS session that logs in without upgrading: its `connect` comes first.
        self.trail.connect(Some(&self.down));
        self.generation = self.ctx.shared.current();
        // A shared mailbox asked for with a password (`mailbox*user`, SASL authzid): from here
        // on the login is the user's own, and the mailbox rides along.
        let (own, ask) = shared_ask(request, &self.generation.config);
        let request = &own;
        let mut record = audit::Auth {
            user: request.user().map(str::to_owned),
            ou: None,
            mechanism: request.mechanism,
            client_id: None,
            issuer: None,
            policy_source: None,
            upstream: None,
            mailbox: None,
            grant: None,
            reason: Reason::Ok,
            client_name: None,
            would_deny: None,
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
        let reservation = match reserved {
            Ok(reservation) => reservation,
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
        let result = self.attempt(request, &mut record, ask).await;
        let outcome = match (record.reason, &request.credentials) {
            (Reason::Ok, _) => Outcome::Succeeded,
            // Not the user's doing, or no answer seen: neither a success nor a guess.
            (
                Reason::UpstreamUnavailable
                | Reason::IdpUnavailable
                | Reason::GrantUnavailable
                | Reason::ClientClosed,
                _,
            ) => Outcome::Void,
            // A shared mailbox refused after the user's own password was proven: the password
            // was right, so this is no guess (it must not lock the user out of their own mail).
            (Reason::MailboxNotAssigned, _) if record.mailbox.is_some() => Outcome::Succeeded,
            (_, Credentials::Password { user, password, .. }) => {
                Outcome::Failed(Some(throttle.password_hash(user, password.expose())))
            }
            (Reason::InvalidToken, Credentials::Bearer { .. }) => Outcome::Failed(None),
            // The token was valid; whatever refused the login, it was no guess.
            (_, Credentials::Bearer { .. }) => Outcome::Succeeded,
        };
        let delay = reservation.settle(outcome).await;
        self.trail.auth(record);
        if let Err(NotAdmitted::Refused(_)) = result {
            // A growing delay before a failure's answer slows a guesser on one connection.
            tokio::time::sleep(delay).await;
        }
        result
    }

    /// Verify, decide, replay; fills in `record` (its `reason` says how it went). `ask`: the
    /// shared mailbox a password login asked for.
    async fn attempt(
        &mut self,
        request: &LoginRequest,
        record: &mut audit::Auth,
        mut ask: Option<String>,
    ) -> Result<Admitted, NotAdmitted> {
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
            let verify = generation.verifier.verify(secret);
            let verified = self.watch(record, verify).await?;
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
                    record.client_name = v
                        .client_id
                        .as_deref()
                        .and_then(|id| config.directory.clients().name_of(id))
                        .map(str::to_owned);
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

        // A shared mailbox asked for with a token: `user=` names the mailbox, the token proves
        // who asks. Only names of shared mailboxes are taken so; any other mismatch stays
        // `token_user_mismatch`.
        if let (
            Credentials::Bearer {
                user: Some(named), ..
            },
            Some(facts),
        ) = (&request.credentials, &token)
            && config.grants.is_some()
            && directory::lowercase(named) != directory::lowercase(&facts.user)
            && config.directory.shared_mailbox(named).is_some()
        {
            ask = Some(named.clone());
            record.user = Some(facts.user.clone());
        }
        let user = record.user.clone().unwrap_or_default();
        let authzid = match &request.credentials {
            Credentials::Password { authzid, .. } => authzid.as_deref(),
            Credentials::Bearer { .. } => None,
        };
        let attempt = Attempt {
            protocol,
            mechanism,
            user: &user,
            token: token.as_ref(),
            authzid,
        };
        match policy::decide(&config.directory, &attempt) {
            Decision::Allow(permit) => {
                record.ou = permit.ou.as_deref().map(str::to_owned);
                record.policy_source = Some(permit.source);
            }
            // Report only (`enforce = false`, or before `enforce_from`): record what would have
            // been refused and why, and let the login go on to the upstream.
            Decision::Deny(denial) if !denial.enforced_at(std::time::SystemTime::now()) => {
                tracing::info!(user, reason = denial.reason.as_str(), source = %denial.source, "login would be denied by policy (report only)");
                record.ou = denial.ou.as_deref().map(str::to_owned);
                record.policy_source = Some(denial.source);
                record.would_deny = Some(denial.reason);
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
                // A token for another name reads as a wrong password (see `refusal::reply`),
                // challenge included.
                let wire_reason = match denial.reason {
                    Reason::TokenUserMismatch => Reason::UpstreamRejected,
                    reason => reason,
                };
                let challenge = oauth_challenge(mechanism, wire_reason);
                self.pace_policy_refusal(&generation, request).await;
                return Err(self.refusal(reply.class, &reply.text, challenge));
            }
        }
        if let Some(mailbox) = ask {
            record.mailbox = Some(directory::lowercase(&mailbox).into_owned());
            return Box::pin(self.open_shared(request, record, &mailbox, user, token)).await;
        }

        // Routing: the directory may place this user's mailboxes on another [[upstream]].
        let Some(connector) = generation
            .routed_connector(&self.ctx.listener, &user)
            .cloned()
        else {
            tracing::warn!(
                user,
                "listener has no upstream in the current configuration"
            );
            record.reason = Reason::UpstreamUnavailable;
            return Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None));
        };
        record.upstream = Some(connector.name().to_owned());
        let metrics = self.trail.services.metrics.clone();
        let asked = Instant::now();
        let peer = self.trail.peer;
        let replay = connector.login(request, &peer);
        let replayed = self.watch(record, replay).await?;
        match replayed {
            Ok(logged) => {
                metrics.upstream_connect(protocol, logged.connect_time);
                metrics.upstream_login(protocol, logged.login_time);
                tracing::info!(user, mechanism = mechanism.as_str(), upstream = %logged.address, "login allowed");
                Ok(Admitted {
                    logged,
                    attempt: (protocol, mechanism, user, token, None),
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

    /// A shared mailbox for a user the policy allowed: prove a password on the user's own
    /// upstream (a token is proven already), check the assignment, then log in to the
    /// mailbox's upstream with XOAUTH2 as the mailbox, with the grant's access token.
    ///
    /// Every refusal before the mailbox login reads like a wrong password (no enumeration of
    /// shared mailboxes); a grant that cannot give a token is a temporary failure, never a
    /// login as anyone else.
    async fn open_shared(
        &mut self,
        request: &LoginRequest,
        record: &mut audit::Auth,
        mailbox: &str,
        user: String,
        token: Option<TokenFacts>,
    ) -> Result<Admitted, NotAdmitted> {
        let generation = self.generation.clone();
        let config = &generation.config;
        let protocol = self.ctx.listener.protocol;
        let mechanism = request.mechanism;
        if is_password(request) {
            // The password is proven where the user's own mailboxes live (their routed
            // upstream); the shared mailbox's own `upstream` serves only the mailbox login.
            let Some(own) = generation
                .routed_connector(&self.ctx.listener, &user)
                .cloned()
            else {
                record.reason = Reason::UpstreamUnavailable;
                return Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None));
            };
            let asked = Instant::now();
            let peer = self.trail.peer;
            let proof = own.prove(request, &peer);
            let proved = self.watch(record, proof).await?;
            match proved {
                Ok(logged) => drop(logged.stream),
                Err(upstream::Error::Rejected { .. } | upstream::Error::Unsafe(_)) => {
                    tracing::info!(
                        user,
                        "shared mailbox: the user's own upstream rejected the password"
                    );
                    record.reason = Reason::UpstreamRejected;
                    let took = asked.elapsed();
                    let floor = config.limits.refusal_delay_min;
                    tokio::time::sleep(Pacing::upstream_refusal(floor, took)).await;
                    return Err(self.refusal(
                        ReplyClass::Authentication,
                        policy::refusal::GENERIC_FAILURE,
                        None,
                    ));
                }
                Err(e) => {
                    tracing::warn!(user, error = %e, "shared mailbox: the user's own upstream is unavailable");
                    record.reason = Reason::UpstreamUnavailable;
                    return Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None));
                }
            }
        }
        let assigned = policy::shared::open(&config.directory, &user, mailbox, protocol);
        let connector = assigned.as_ref().ok().and_then(|a| {
            let shared = config.directory.shared_mailbox(&a.mailbox)?;
            shared
                .upstreams
                .iter()
                .filter_map(|name| generation.connectors.get(&**name))
                .find(|c| c.protocol() == protocol)
                .cloned()
        });
        let (assignment, connector) = match (assigned, connector) {
            (Ok(a), Some(c)) => (a, c),
            (Ok(_), None) | (Err(_), _) => {
                tracing::info!(user, mailbox, "shared mailbox not assigned to the user");
                record.reason = Reason::MailboxNotAssigned;
                // As long as a wrong password would have taken, and the same answer.
                self.pace_policy_refusal(&generation, request).await;
                return Err(self.refusal(
                    ReplyClass::Authentication,
                    policy::refusal::GENERIC_FAILURE,
                    oauth_challenge(mechanism, Reason::UpstreamRejected),
                ));
            }
        };
        record.policy_source = Some(assignment.source());
        record.grant = Some(assignment.grant.to_string());
        record.upstream = Some(connector.name().to_owned());
        let metrics = self.trail.services.metrics.clone();
        let shared = self.ctx.shared.clone();
        let grants = &shared.grants;
        // Two tries: a token the provider revoked while it looked fresh here is dropped, and
        // the second try refreshes (and finds out whether the grant itself is dead).
        for retry in [false, true] {
            let access = grants.access_token(config, &assignment.grant);
            let access = self.watch(record, access).await?;
            let access = match access {
                Ok(access) => access,
                Err(why) => {
                    tracing::warn!(user, mailbox, error = %why, "shared mailbox grant unusable");
                    record.reason = Reason::GrantUnavailable;
                    let text = match why {
                        crate::grants::Unusable::NeedsReauthorization(_) => format!(
                            "The shared mailbox {} must be re-authorised by an administrator",
                            assignment.mailbox
                        ),
                        crate::grants::Unusable::Unavailable { .. } => TEMPORARY_FAILURE.to_owned(),
                    };
                    return Err(self.refusal(ReplyClass::Unavailable, &text, None));
                }
            };
            let as_mailbox = LoginRequest {
                mechanism: Mechanism::XOAuth2,
                credentials: Credentials::Bearer {
                    user: Some(assignment.mailbox.to_string()),
                    token: access.clone(),
                    host: None,
                    port: None,
                },
            };
            let peer = self.trail.peer;
            let replay = connector.login(&as_mailbox, &peer);
            let replayed = self.watch(record, replay).await?;
            match replayed {
                Ok(logged) => {
                    metrics.upstream_connect(protocol, logged.connect_time);
                    metrics.upstream_login(protocol, logged.login_time);
                    tracing::info!(user, mailbox = %assignment.mailbox, grant = %assignment.grant, upstream = %logged.address, "shared mailbox login allowed");
                    return Ok(Admitted {
                        logged,
                        attempt: (
                            protocol,
                            mechanism,
                            user,
                            token,
                            Some(assignment.mailbox.to_string()),
                        ),
                    });
                }
                Err(upstream::Error::Rejected { .. }) if !retry => {
                    tracing::info!(mailbox = %assignment.mailbox, "upstream refused the grant's token; refreshing once");
                    grants.forget(&assignment.grant, &access).await;
                }
                Err(e) => {
                    tracing::warn!(user, mailbox = %assignment.mailbox, error = %e, "shared mailbox upstream login failed");
                    record.reason = Reason::GrantUnavailable;
                    if matches!(e, upstream::Error::Rejected { .. }) {
                        grants.forget(&assignment.grant, &access).await;
                    }
                    return Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None));
                }
            }
        }
        record.reason = Reason::GrantUnavailable;
        Err(self.refusal(ReplyClass::Unavailable, TEMPORARY_FAILURE, None))
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
    fn refusal(&self, class: ReplyClass, text: &str, challenge: Option<Bytes>) -> NotAdmitted {
        NotAdmitted::Refused(Refusal {
            class,
            text: format!(
                "{} (ref {})",
                text.trim().trim_end_matches('.'),
                self.trail.reference
            ),
            challenge,
        })
    }

    /// [`watching`] the downstream while `work` runs; its going away ends the login as
    /// [`Preauth::abandoned`].
    async fn watch<T>(
        &mut self,
        record: &mut audit::Auth,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, NotAdmitted> {
        watching(&mut self.down, &mut self.machine, work)
            .await
            .map_err(|end| Self::abandoned(record, end))
    }

    /// The downstream went away (or broke a limit) while its login was in flight: the token
    /// check or upstream login was dropped unfinished, and the attempt is recorded as such.
    fn abandoned(record: &mut audit::Auth, end: PreauthEnd) -> NotAdmitted {
        tracing::info!(
            end = %Ending::Preauth(end).as_splice_end().0.as_str(),
            cause = %end.cause(),
            "downstream gone during its login; upstream login abandoned"
        );
        record.reason = Reason::ClientClosed;
        NotAdmitted::Ended(end)
    }

    async fn splice(mut self, admitted: Admitted) -> Ending {
        let Admitted { logged, attempt } = admitted;
        self.machine.handle_outcome(LoginOutcome::Accepted {
            untagged: logged.untagged,
            reply: logged.reply,
        });
        // From the login answer on, writes are bounded by the send timeout, as in the splice.
        let send = self.generation.config.limits.send_timeout;
        if let Err(end) = self.flush(Instant::now() + send).await {
            // Out of time here is the send timeout, not the pre-auth deadline.
            let end = match end {
                PreauthEnd::Machine(_) => PreauthEnd::Error(Side::Downstream),
                end => end,
            };
            return Ending::Preauth(end);
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
        if splice::send_all(&mut up, &residual, send).await.is_err() {
            return Ending::Spliced(End::Error(Side::Upstream), Totals::default());
        }
        if splice::send_all(&mut down, &logged.residual, send)
            .await
            .is_err()
        {
            return Ending::Spliced(End::Error(Side::Downstream), Totals::default());
        }
        // On a reload with revoke_on_reload, re-decide this login under the new policy.
        let (protocol, mechanism, user, token, mailbox) = attempt;
        let interrupt = interrupt(&ctx.shared, move |generation: &Generation| {
            if !generation.config.policy.revoke_on_reload {
                return true;
            }
            let attempt = Attempt {
                protocol,
                mechanism,
                user: &user,
                token: token.as_ref(),
                authzid: None,
            };
            let directory = &generation.config.directory;
            // A report-only refusal closes nothing: it would not refuse a new login either.
            let own = match policy::decide(directory, &attempt) {
                Decision::Allow(_) => true,
                Decision::Deny(denial) => !denial.enforced_at(std::time::SystemTime::now()),
            };
            own && mailbox
                .as_deref()
                .is_none_or(|m| policy::shared::open(directory, &user, m, protocol).is_ok())
        });
        let (end, totals) = splice::splice(
            down,
            up,
            ctx.listener.protocol,
            generation.config.limits.idle_timeout,
            send,
            interrupt,
        )
        .await;
        Ending::Spliced(end, totals)
    }
}

/// Why a login did not lead to a splice.
enum NotAdmitted {
    /// Answer the downstream with this refusal and read its next command.
    Refused(Refusal),
    /// The session ended while the login was in flight: the downstream closed or failed, or the
    /// machine closed on what the downstream sent meanwhile (its answer is queued).
    Ended(PreauthEnd),
}

/// Run `work` (a token check, an upstream login) while watching the downstream. Bytes it
/// pipelines meanwhile go to the machine, which keeps them (bounded) as the residual for the
/// upstream: they are never lost. Its close or failure ends the work at once: an upstream
/// login left running for a client that is gone holds two fds and the client's slots for up
/// to `login_timeout` (issue 9). So does the machine closing on too much pipelined input.
async fn watching<F: Frontend, T>(
    down: &mut Downstream,
    machine: &mut F,
    work: impl std::future::Future<Output = T>,
) -> Result<T, PreauthEnd> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            // No buffer of its own while the login waits (stream::read_with); cancel safe:
            // bytes reach the machine in the poll that reads them, or stay in the stream.
            // Pipelined input while a login is decided is a few commands at most.
            read = crate::stream::read_with(down, 1024, |bytes| {
                if !bytes.is_empty() {
                    machine.handle_input(bytes);
                }
                bytes.len()
            }) => match read {
                Ok(0) => return Err(PreauthEnd::DownstreamClosed),
                Ok(_) => {
                    // While a login is in flight the machine reports nothing but its close.
                    if let Some(FrontendEvent::Closed(reason)) = machine.poll_event() {
                        return Err(PreauthEnd::Machine(reason));
                    }
                }
                Err(e) => return Err(PreauthEnd::downstream_failed(&e)),
            },
        }
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
    /// Protocol, mechanism, user, token facts, and the shared mailbox opened (if one was).
    attempt: (
        Protocol,
        Mechanism,
        String,
        Option<TokenFacts>,
        Option<String>,
    ),
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

/// A password login that asks for a shared mailbox: `LOGIN "mailbox*user"` (the configured
/// separator, `*` by default, as Dovecot's master-user logins) or SASL PLAIN with
/// authzid = mailbox. Returns the user's own login (authzid dropped, name split) and the
/// mailbox; anything else unchanged. Only with `[grants]`: without it an authzid is refused by
/// policy as before (`mailbox_not_assigned`).
fn shared_ask<'r>(
    request: &'r LoginRequest,
    config: &crate::config::Config,
) -> (std::borrow::Cow<'r, LoginRequest>, Option<String>) {
    use std::borrow::Cow;
    let Some(grants) = &config.grants else {
        return (Cow::Borrowed(request), None);
    };
    let Credentials::Password {
        authzid,
        user,
        password,
    } = &request.credentials
    else {
        return (Cow::Borrowed(request), None);
    };
    let own = |user: &str| LoginRequest {
        mechanism: request.mechanism,
        credentials: Credentials::Password {
            authzid: None,
            user: user.to_owned(),
            password: password.clone(),
        },
    };
    match authzid {
        Some(mailbox)
            if !mailbox.is_empty()
                && directory::lowercase(mailbox) != directory::lowercase(user) =>
        {
            (Cow::Owned(own(user)), Some(mailbox.clone()))
        }
        Some(_) => (Cow::Borrowed(request), None),
        None => match user.split_once(grants.login_separator.as_str()) {
            Some((mailbox, who)) if !mailbox.is_empty() && !who.is_empty() => {
                (Cow::Owned(own(who)), Some(mailbox.to_owned()))
            }
            _ => (Cow::Borrowed(request), None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn config(grants: bool) -> crate::config::Config {
        let mut text = String::from(
            "[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:1143\"\n\
             tls = \"none\"\nupstream = \"up\"\n[[upstream]]\nname = \"up\"\nprotocol = \"imap\"\n\
             addresses = [\"127.0.0.1:143\"]\ntls = \"none\"\n",
        );
        if grants {
            text.push_str("[grants]\ndir = \"g\"\n");
        }
        crate::config::Config::from_toml(&text, std::path::Path::new("/tmp")).unwrap()
    }

    fn password(mechanism: Mechanism, authzid: Option<&str>, user: &str) -> LoginRequest {
        LoginRequest {
            mechanism,
            credentials: Credentials::Password {
                authzid: authzid.map(str::to_owned),
                user: user.to_owned(),
                password: Secret::new(b"pw".to_vec()),
            },
        }
    }

    #[test]
    fn the_two_password_forms_of_asking_for_a_shared_mailbox() {
        let c = config(true);
        let login = password(
            Mechanism::ImapLogin,
            None,
            "office@contoso.com*alice@example.com",
        );
        let (own, ask) = shared_ask(&login, &c);
        assert_eq!(ask.as_deref(), Some("office@contoso.com"));
        assert_eq!(own.user(), Some("alice@example.com"));
        let plain = password(
            Mechanism::Plain,
            Some("office@contoso.com"),
            "alice@example.com",
        );
        let (own, ask) = shared_ask(&plain, &c);
        assert_eq!(ask.as_deref(), Some("office@contoso.com"));
        assert!(matches!(
            &own.credentials,
            Credentials::Password { authzid: None, user, .. } if user == "alice@example.com"
        ));
        // Not a request for another mailbox: unchanged.
        for request in [
            password(
                Mechanism::Plain,
                Some("Alice@example.com"),
                "alice@example.com",
            ),
            password(Mechanism::ImapLogin, None, "alice@example.com"),
            password(Mechanism::ImapLogin, None, "*alice@example.com"),
            password(Mechanism::ImapLogin, None, "office@contoso.com*"),
        ] {
            let (own, ask) = shared_ask(&request, &c);
            assert_eq!(ask, None);
            assert_eq!(*own, request);
        }
        // Without [grants] nothing is split: an authzid stays for policy to refuse.
        let request = password(
            Mechanism::Plain,
            Some("office@contoso.com"),
            "alice@example.com",
        );
        let (own, ask) = shared_ask(&request, &config(false));
        assert_eq!((ask, &*own), (None, &request));
    }
}
