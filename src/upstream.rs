//! Stage: upstream. Connect to the real mail server, do TLS, drive the protocol's replay machine,
//! and hand back a logged-in stream.
//!
//! Inputs: the upstream's config and a [`LoginRequest`] the policy allowed. Output:
//! [`LoggedIn`] (stream plus the upstream's answer to relay) or an [`Error`] whose variant says
//! whether the credentials were refused (relay as authentication failure) or the upstream was
//! unreachable or broken (temporary failure, never an allow). Errors never carry credentials.
//!
//! Each [`Connector`] also keeps the upstream's last-learnt pre-login capabilities, so the
//! front-end can advertise what the upstream really offers (issue 9 items 9, 10): mailgate
//! greets the downstream before it connects upstream, so the list comes from a probe
//! connection at startup and reload ([`Connector::probe`], bounded by the upstream's timeouts)
//! and, for IMAP, refreshed by every login replay, which sees the greeting anyway (a POP3 login
//! never asks `CAPA`). Until then it is empty, and the front-end advertises only its safe base
//! set.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{Upstream, UpstreamTls};
use crate::proto::imap::replay::ImapReplay;
use crate::proto::pop3::replay::Pop3Replay;
use crate::proto::proxy_header::encode_v2;
use crate::proto::{LoginRequest, Protocol, ReplayError, ReplayEvent, UnsafeCredential};
use crate::stream::{MaybeTls, UpstreamStream};

/// Why an upstream login did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credential cannot be replayed without changing its meaning; refuse it.
    #[error(transparent)]
    Unsafe(#[from] UnsafeCredential),
    /// The upstream checked the credentials and said no.
    #[error("upstream rejected the login")]
    Rejected {
        text: String,
        challenge: Option<Bytes>,
    },
    #[error("cannot connect to upstream {upstream}: {detail}")]
    Connect { upstream: String, detail: String },
    #[error("upstream {upstream} tls handshake failed: {source}")]
    Tls { upstream: String, source: io::Error },
    #[error("upstream {upstream}: {source}")]
    Protocol {
        upstream: String,
        source: ReplayError,
    },
    #[error("upstream {upstream} did not complete the login within {limit:?}")]
    Timeout { upstream: String, limit: Duration },
    #[error("upstream {upstream} i/o: {source}")]
    Io { upstream: String, source: io::Error },
}

/// The downstream connection's real addresses (behind a PROXY header, the ones it named), for
/// `send_proxy_protocol` and `send_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A logged-in upstream connection, ready to splice.
#[must_use = "a logged-in upstream session must be spliced or closed"]
pub struct LoggedIn {
    pub stream: UpstreamStream,
    /// The address that answered.
    pub address: String,
    /// Untagged lines to relay before `reply` (IMAP).
    pub untagged: Bytes,
    /// The upstream's success answer (see `LoginOutcome::Accepted`).
    pub reply: Bytes,
    /// Bytes the upstream sent after its answer; they go downstream before the splice.
    pub residual: Bytes,
    /// TCP connect (plus implicit TLS) of the address that answered.
    pub connect_time: Duration,
    /// Greeting, STARTTLS and the replayed login.
    pub login_time: Duration,
}

/// Connects to one configured upstream. Built once per config, shared by all sessions.
pub struct Connector {
    config: Arc<Upstream>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The upstream's pre-login capabilities (after STARTTLS / STLS), as last learnt; empty
    /// until then. IMAP: capability names, upper-cased; POP3: whole `CAPA` lines.
    capabilities: ArcSwap<Vec<String>>,
}

/// How a replay exchange ended without an error.
enum Ended {
    LoggedIn(LoggedIn),
    /// The capability probe is done.
    Probed,
}

impl Connector {
    pub fn new(config: Arc<Upstream>) -> Result<Self, crate::tls::TlsError> {
        let tls = match config.tls {
            UpstreamTls::None => None,
            UpstreamTls::Implicit | UpstreamTls::StartTls => {
                Some(crate::tls::upstream_connector(&config)?)
            }
        };
        Ok(Self {
            config,
            tls,
            capabilities: ArcSwap::default(),
        })
    }

    /// The upstream's pre-login capabilities as last learnt (empty: not known yet).
    pub fn capabilities(&self) -> Arc<Vec<String>> {
        self.capabilities.load_full()
    }

    /// Start from what an earlier connector to the same upstream learnt (on reload), until
    /// this one's own probe or login says otherwise.
    pub fn inherit_capabilities(&self, earlier: &Connector) {
        if self.capabilities.load().is_empty() {
            self.capabilities.store(earlier.capabilities());
        }
    }

    fn learn(&self, capabilities: Option<&[String]>) {
        if let Some(capabilities) = capabilities
            && capabilities != self.capabilities.load().as_slice()
        {
            tracing::debug!(upstream = %self.config.name, capabilities = capabilities.join(" "), "upstream capabilities learnt");
            self.capabilities.store(Arc::new(capabilities.to_vec()));
        }
    }

    /// Connect without logging in, learn the pre-login capabilities (after STARTTLS / STLS
    /// when configured: IMAP `CAPABILITY`, POP3 `CAPA`), log out. Bounded by
    /// `connect_timeout` plus `login_timeout`; a failure only leaves the list as it was
    /// (logged at debug: the logins will say more).
    pub async fn probe(&self) {
        let starttls = self.config.tls == UpstreamTls::StartTls;
        let limit = self
            .config
            .connect_timeout
            .saturating_add(self.config.login_timeout);
        let exchange = async {
            let (stream, _) = self.connect(None).await?;
            let replay = match self.config.protocol {
                Protocol::Imap => Replay::Imap(ImapReplay::probe(starttls)),
                Protocol::Pop3 => Replay::Pop3(Pop3Replay::probe(starttls)),
            };
            self.replay(stream, replay).await
        };
        match timeout(limit, exchange).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.config.name, error = %e, "capability probe failed");
            }
            Err(_) => {
                tracing::debug!(upstream = %self.config.name, "capability probe timed out");
            }
        }
    }

    /// Run [`Connector::probe`] in the background, when there is a runtime to run it on.
    pub fn spawn_probe(self: &Arc<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let connector = self.clone();
            runtime.spawn(async move { connector.probe().await });
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn protocol(&self) -> Protocol {
        self.config.protocol
    }

    /// Connect, replay `request`, and return the logged-in stream. The exchange after the
    /// connect (greeting, STARTTLS, login) is bounded by `login_timeout`.
    pub async fn login(&self, request: &LoginRequest, peer: &Peer) -> Result<LoggedIn, Error> {
        let starttls = self.config.tls == UpstreamTls::StartTls;
        // Build the replay first: an unsafe credential is refused before any connection.
        let replay = match self.config.protocol {
            Protocol::Imap => {
                let replay = ImapReplay::new(request, starttls)?;
                Replay::Imap(if self.config.send_id {
                    replay.with_client_address(peer.source)
                } else {
                    replay
                })
            }
            Protocol::Pop3 => {
                let replay = Pop3Replay::new(request, starttls)?;
                Replay::Pop3(if self.config.send_id {
                    replay.with_client_address(peer.source)
                } else {
                    replay
                })
            }
        };
        let started = tokio::time::Instant::now();
        let (stream, address) = self.connect(Some(peer)).await?;
        let connect_time = started.elapsed();
        let limit = self.config.login_timeout;
        match timeout(limit, self.replay(stream, replay)).await {
            Ok(Ok(Ended::LoggedIn(mut logged))) => {
                logged.address = address;
                logged.connect_time = connect_time;
                logged.login_time = started.elapsed().saturating_sub(connect_time);
                Ok(logged)
            }
            Ok(Ok(Ended::Probed)) => Err(Error::Protocol {
                upstream: self.config.name.clone(),
                source: ReplayError::Unexpected("probe instead of login".into()),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                upstream: self.config.name.clone(),
                limit,
            }),
        }
    }

    /// Prove a password: log in with `request` and log out again at once (`LOGOUT` / `QUIT`,
    /// bounded by one second; the answer is not awaited). For shared mailboxes, where the
    /// user's own upstream vouches for who they are before mailgate opens another mailbox.
    pub async fn prove(&self, request: &LoginRequest, peer: &Peer) -> Result<LoggedIn, Error> {
        let mut logged = self.login(request, peer).await?;
        let bye: &[u8] = match self.config.protocol {
            Protocol::Imap => b"Z LOGOUT\r\n",
            Protocol::Pop3 => b"QUIT\r\n",
        };
        let _ = timeout(Duration::from_secs(1), async {
            logged.stream.write_all(bye).await?;
            logged.stream.flush().await?;
            logged.stream.shutdown().await
        })
        .await;
        Ok(logged)
    }

    /// Try every configured address in order, each bounded by `connect_timeout` (TCP connect
    /// plus, for implicit TLS, the handshake). `peer`: the downstream a PROXY header names;
    /// `None` (the probe) names mailgate's own connection.
    async fn connect(&self, peer: Option<&Peer>) -> Result<(UpstreamStream, String), Error> {
        let mut last = None;
        for address in &self.config.addresses {
            let attempt = async {
                let tcp =
                    TcpStream::connect(address.as_str())
                        .await
                        .map_err(|e| Error::Connect {
                            upstream: self.config.name.clone(),
                            detail: format!("{address}: {e}"),
                        })?;
                // Login exchanges are small request/response turns: Nagle plus delayed ACK
                // would add ~40 ms to each.
                let mut tcp = tcp;
                let _ = tcp.set_nodelay(true);
                if self.config.send_proxy_protocol {
                    // PROXY v2 goes first, before any TLS byte (haproxy proxy-protocol.txt 2.2).
                    let header = match peer {
                        Some(peer) => encode_v2(peer.source, peer.destination),
                        None => {
                            let local = tcp.local_addr();
                            let remote = tcp.peer_addr();
                            match (local, remote) {
                                (Ok(local), Ok(remote)) => encode_v2(local, remote),
                                (Err(e), _) | (_, Err(e)) => {
                                    return Err(Error::Connect {
                                        upstream: self.config.name.clone(),
                                        detail: format!("{address}: {e}"),
                                    });
                                }
                            }
                        }
                    };
                    tcp.write_all(&header).await.map_err(|e| Error::Connect {
                        upstream: self.config.name.clone(),
                        detail: format!("{address}: sending the PROXY header: {e}"),
                    })?;
                }
                if self.config.tls == UpstreamTls::Implicit {
                    self.handshake(tcp).await
                } else {
                    Ok(MaybeTls::Plain(tcp))
                }
            };
            let error = match timeout(self.config.connect_timeout, attempt).await {
                Ok(Ok(stream)) => return Ok((stream, address.clone())),
                Ok(Err(e)) => e,
                Err(_) => Error::Connect {
                    upstream: self.config.name.clone(),
                    detail: format!(
                        "{address}: timed out after {:?}",
                        self.config.connect_timeout
                    ),
                },
            };
            tracing::debug!(upstream = %self.config.name, error = %error, "upstream address failed");
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| Error::Connect {
            upstream: self.config.name.clone(),
            detail: "no address configured".into(),
        }))
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<UpstreamStream, Error> {
        let Some((connector, name)) = &self.tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|source| Error::Tls {
                upstream: self.config.name.clone(),
                source,
            })?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }

    async fn replay(&self, mut stream: UpstreamStream, mut replay: Replay) -> Result<Ended, Error> {
        let upstream = || self.config.name.clone();
        let io_err = |source| Error::Io {
            upstream: upstream(),
            source,
        };
        let mut buf = vec![0u8; 8192];
        loop {
            while let Some(out) = replay.poll_transmit() {
                stream.write_all(&out).await.map_err(io_err)?;
            }
            stream.flush().await.map_err(io_err)?;
            let event = replay.poll_event();
            if matches!(
                event,
                Some(
                    ReplayEvent::LoggedIn { .. }
                        | ReplayEvent::Rejected { .. }
                        | ReplayEvent::Probed
                )
            ) {
                // The greeting (or post-STARTTLS CAPABILITY) the replay saw anyway.
                self.learn(replay.capabilities());
            }
            match event {
                Some(ReplayEvent::TlsRequested) => {
                    let tcp = stream.into_plain().ok_or_else(|| Error::Protocol {
                        upstream: upstream(),
                        source: ReplayError::Unexpected("STARTTLS inside TLS".into()),
                    })?;
                    stream = self.handshake(tcp).await?;
                    replay.tls_established();
                    continue;
                }
                Some(ReplayEvent::Probed) => {
                    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
                    return Ok(Ended::Probed);
                }
                Some(ReplayEvent::LoggedIn { untagged, reply }) => {
                    return Ok(Ended::LoggedIn(LoggedIn {
                        stream,
                        address: String::new(),
                        untagged,
                        reply,
                        residual: replay.into_residual(),
                        connect_time: Duration::ZERO,
                        login_time: Duration::ZERO,
                    }));
                }
                Some(ReplayEvent::Rejected { text, challenge }) => {
                    return Err(Error::Rejected { text, challenge });
                }
                Some(ReplayEvent::Failed(source)) => {
                    return Err(Error::Protocol {
                        upstream: upstream(),
                        source,
                    });
                }
                None => {}
            }
            match stream.read(&mut buf).await {
                Ok(0) => replay.handle_eof(),
                Ok(n) => replay.handle_input(buf.get(..n).unwrap_or_default()),
                // A server that closes with our unread bytes in its buffer resets instead; a TLS
                // server that closes without close_notify is reported as UnexpectedEof. Both are
                // its close, which after the login command is its answer (a refusal).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    replay.handle_eof()
                }
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

/// The two replay machines behind one face; the driver loop above is the same for both.
enum Replay {
    Imap(ImapReplay),
    Pop3(Pop3Replay),
}

macro_rules! forward {
    ($self:ident, $m:ident $(, $arg:expr)*) => {
        match $self {
            Replay::Imap(r) => r.$m($($arg),*),
            Replay::Pop3(r) => r.$m($($arg),*),
        }
    };
}

impl Replay {
    fn handle_input(&mut self, bytes: &[u8]) {
        forward!(self, handle_input, bytes)
    }
    fn tls_established(&mut self) {
        forward!(self, tls_established)
    }
    fn handle_eof(&mut self) {
        forward!(self, handle_eof)
    }
    fn poll_event(&mut self) -> Option<ReplayEvent> {
        forward!(self, poll_event)
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        forward!(self, poll_transmit)
    }
    fn into_residual(self) -> Bytes {
        forward!(self, into_residual)
    }
    fn capabilities(&self) -> Option<&[String]> {
        match self {
            Replay::Imap(r) => r.capabilities(),
            Replay::Pop3(r) => r.capabilities(),
        }
    }
}
