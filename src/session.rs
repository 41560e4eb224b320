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

use crate::config::{Listener, ListenerTls};
use crate::policy::{self, Decision, Reason};
use crate::proto::imap::frontend::ImapFrontend;
use crate::proto::pop3::frontend::Pop3Frontend;
use crate::proto::{
    CloseReason, FrontendEvent, LoginOutcome, LoginRequest, Protocol, Refusal, Security,
};
use crate::server::{Generation, Phase, Shared};
use crate::splice::{self, End, Interrupt, Side, Totals};
use crate::stream::{Downstream, MaybeTls};
use crate::upstream;

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

/// Serve one accepted connection to its end. Never panics and never returns an error: every
/// failure ends the session with a protocol answer where one can still be sent.
pub async fn run(tcp: TcpStream, peer: SocketAddr, ctx: Arc<SessionContext>) {
    let id = uuid::Uuid::now_v7();
    let span = tracing::info_span!(
        "session",
        id = %id.simple(),
        listener = %ctx.listener.name,
        peer = %peer,
    );
    async move {
        // Each pre-auth turn is one small line; Nagle would stall every reply.
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let ending = drive(tcp, &ctx, &reference(&id)).await;
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
/// find the audit record and nothing about the user.
fn reference(id: &uuid::Uuid) -> String {
    let hex = id.simple().to_string();
    hex.get(hex.len().saturating_sub(12)..)
        .unwrap_or(&hex)
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

async fn drive(tcp: TcpStream, ctx: &SessionContext, reference: &str) -> Ending {
    // TLS and limits come from the generation current at accept; policy and upstream are read
    // again at each login, so a reload applies to the next login even on this connection.
    let generation = ctx.shared.current();
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
                reference,
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
                reference,
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
    reference: &'a str,
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
                        Ok(logged) => return self.splice(logged).await,
                        Err(refusal) => self.machine.handle_outcome(LoginOutcome::Refused(refusal)),
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

    /// Decide, then replay upstream. `Err` is the refusal to send.
    async fn login(&mut self, request: &LoginRequest) -> Result<upstream::LoggedIn, Refusal> {
        self.generation = self.ctx.shared.current();
        let protocol = self.ctx.listener.protocol;
        let user = request.user().unwrap_or("");
        match policy::unwired(request, protocol) {
            Decision::Allow(_) => {}
            Decision::Deny(denial) => {
                tracing::info!(
                    user,
                    reason = denial.reason.as_str(),
                    "login denied by policy"
                );
                return Err(self.refusal(denial.reason, None, None));
            }
        }
        let Some(connector) = self.generation.connector(&self.ctx.listener).cloned() else {
            tracing::warn!(
                user,
                "listener has no upstream in the current configuration"
            );
            return Err(self.refusal(Reason::UpstreamUnavailable, None, None));
        };
        match connector.login(request).await {
            Ok(logged) => {
                tracing::info!(user, mechanism = request.mechanism.as_str(), upstream = %logged.address, "login allowed");
                Ok(logged)
            }
            Err(upstream::Error::Rejected { text, challenge }) => {
                tracing::info!(user, "upstream rejected the login");
                Err(self.refusal(Reason::UpstreamRejected, Some(text), challenge))
            }
            Err(upstream::Error::Unsafe(e)) => {
                tracing::warn!(user, error = %e, "login refused: credential not replayable");
                Err(self.refusal(Reason::UpstreamRejected, None, None))
            }
            Err(e) => {
                tracing::warn!(user, error = %e, "upstream unavailable");
                Err(self.refusal(Reason::UpstreamUnavailable, None, None))
            }
        }
    }

    fn refusal(
        &self,
        reason: Reason,
        upstream_text: Option<String>,
        challenge: Option<Bytes>,
    ) -> Refusal {
        let text = match (reason, upstream_text) {
            (Reason::UpstreamRejected, Some(t)) if !t.trim().is_empty() => t,
            (Reason::UpstreamUnavailable | Reason::IdpUnavailable, _) => {
                "Mail service temporarily unavailable, try again later".to_owned()
            }
            _ => "Authentication failed".to_owned(),
        };
        Refusal {
            class: reason.class(),
            text: format!("{} (ref {})", text.trim_end_matches('.'), self.reference),
            challenge,
        }
    }

    async fn splice(mut self, logged: upstream::LoggedIn) -> Ending {
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
        let interrupt = interrupt(&ctx.shared, |_generation| {
            // TODO(#3): re-decide this login under the new policy (revoke_on_reload).
            true
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
