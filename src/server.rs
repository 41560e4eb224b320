//! Stage: server. Bind the listeners, accept connections, cap their number, hand each to a
//! session task, and swap in a new configuration on reload.
//!
//! Inputs: a validated [`Config`], later ones through [`Reloader::reload`]. Output: running
//! sessions until the shutdown future resolves.
//!
//! Admission happens in the accept loop, before any task exists (issue 9: half-open
//! connections from one address used to fill the global cap for the 10 s TLS timeout):
//!
//! | check, in order                          | over the cap                                 |
//! |------------------------------------------|----------------------------------------------|
//! | `max_connections` (all listeners)        | refused at once                              |
//! | `max_connections_per_ip`, held to the end | refused at once ("from your address")       |
//! | `max_handshakes_per_ip`                  | refused at once; held until TLS is up        |
//! | `max_handshakes` (all listeners)          | the oldest handshake in progress is evicted |
//!
//! "Refused at once" is one non-blocking write of `* BYE [UNAVAILABLE] …` / `-ERR [SYS/TEMP] …`
//! on a plaintext or STARTTLS listener, then close; on an implicit-TLS listener just close,
//! since nothing can be said before a handshake and doing one for a refused connection is the
//! cost the cap is there to avoid. A refused connection holds no task and no fd after the
//! accept loop turns to the next one. Handshake caps apply where a handshake comes first: a
//! PROXY header and/or implicit TLS (STARTTLS handshakes are bounded by `handshake_timeout` and
//! the per-address connection cap). Behind a PROXY balancer the TCP peer is the balancer, so
//! the per-address caps are taken by the session once the header names the real client.
//! Refusals are counted in `mailgate_connections_refused_total` and logged at debug level
//! only: a flood must not turn into a log flood.
//!
//! Everything built from one config (TLS acceptor, upstream connectors) forms a
//! [`Generation`]. A reload builds the whole next generation aside and swaps it in atomically;
//! if anything fails to build, the old generation keeps serving. A session reads the current
//! generation when it starts (TLS, limits) and again at each login (policy, upstream), so new
//! logins see a change at once, and live sessions are told through [`Shared::subscribe`].
//! Listener sockets are bound once: a changed `[[listener]]` needs a restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::admin::Readiness;
use crate::audit::Audit;
use crate::auth::Verifier;
use crate::config::{Config, Listener, ListenerTls, UpstreamTls};
use crate::conn_limit::{Admission, Caps, ConnLimits, ConnectionSlot, HandshakeSlot, Over};
use crate::metrics::{Metrics, Refused};
use crate::session::{self, SessionContext};
use crate::throttle::Throttle;
use crate::throttle::store::{RedisStore, Store};
use crate::upstream::Connector;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("listener {listener} uses tls but the config has no [tls] section")]
    NoTls { listener: String },
    #[error("listener {listener}: unknown upstream {upstream}")]
    UnknownUpstream { listener: String, upstream: String },
    #[error("oauth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// Members added on this reload that break their group's restriction.
    #[error("{0}")]
    AddedOffenders(crate::directory::Errors),
    /// `directory.toml` and the LDAP sync in force do not make a valid directory together.
    #[error("directory with the LDAP sync: {0}")]
    Directory(#[from] crate::directory::Errors),
}

/// Long-lived services every session reports to. Not swapped on reload.
#[derive(Clone)]
pub struct Services {
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

impl Default for Services {
    /// No audit, a fresh registry, not ready until serving.
    fn default() -> Self {
        Services {
            audit: Audit::disabled(),
            metrics: Arc::new(Metrics::new()),
            readiness: Readiness::new(),
        }
    }
}

/// Everything built from one configuration, shared by the sessions that use it.
pub struct Generation {
    /// 1 for the config the server started with, +1 for each accepted reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub acceptor: Option<TlsAcceptor>,
    pub connectors: BTreeMap<String, Arc<Connector>>,
    /// Bearer token verification for this config's providers. Rebuilt on reload, so its cache
    /// starts empty then (a reload may have changed the providers or their keys).
    pub verifier: Arc<Verifier>,
}

impl Generation {
    /// Build TLS and upstream connectors, so a bad certificate or CA file fails here, at
    /// startup or reload, not at the first login.
    pub fn build(config: Config, number: u64) -> Result<Generation, Error> {
        let needs_tls = config.listeners.iter().any(|l| l.tls != ListenerTls::None);
        let acceptor = match (&config.tls, needs_tls) {
            (Some(tls), true) => Some(TlsAcceptor::from(crate::tls::server_config(tls)?)),
            _ => None,
        };
        if let Some(l) = config.listeners.iter().find(|l| l.tls != ListenerTls::None)
            && acceptor.is_none()
        {
            return Err(Error::NoTls {
                listener: l.name.clone(),
            });
        }
        let mut connectors = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            if !upstream.verify_certificate && upstream.tls != UpstreamTls::None {
                tracing::warn!(upstream = %name, "upstream certificate verification is OFF");
            }
            connectors.insert(name.clone(), Arc::new(Connector::new(upstream.clone())?));
        }
        for listener in &config.listeners {
            if !connectors.contains_key(&listener.upstream) {
                return Err(Error::UnknownUpstream {
                    listener: listener.name.clone(),
                    upstream: listener.upstream.clone(),
                });
            }
        }
        let verifier = Arc::new(Verifier::new(&config.oauth)?);
        Ok(Generation {
            number,
            config: Arc::new(config),
            acceptor,
            connectors,
            verifier,
        })
    }

    /// Metrics that follow the config: the served certificate's expiry.
    fn observe(&self, metrics: &Metrics) {
        let not_after = self
            .acceptor
            .as_ref()
            .and(self.config.tls.as_ref())
            .and_then(crate::tls::certificate_not_after);
        metrics.set_certificate_expiry(not_after);
    }

    /// The connector for a listener's upstream in this generation.
    pub fn connector(&self, listener: &Listener) -> Option<&Arc<Connector>> {
        let name = self
            .config
            .listeners
            .iter()
            .find(|l| l.name == listener.name)
            .map_or(&listener.upstream, |l| &l.upstream);
        self.connectors.get(name)
    }

    /// The connector for `user`'s own mailboxes on `listener`: the directory's routing
    /// (`upstream` on the user, a group policy or the OU), else the listener's upstream. Each
    /// connector carries its own upstream's TLS, PROXY and ID settings.
    pub fn routed_connector(&self, listener: &Listener, user: &str) -> Option<&Arc<Connector>> {
        let protocol_of = |name: &str| self.config.upstreams.get(name).map(|u| u.protocol);
        crate::policy::route(&self.config.directory, user)
            .and_then(|r| r.value.for_protocol(listener.protocol, protocol_of))
            .and_then(|name| self.connectors.get(name))
            .or_else(|| self.connector(listener))
    }
}

/// Where the server is in its life. Sessions watch it to end themselves on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// SIGTERM: no new connections; sessions not logged in end now, logged-in ones may go on
    /// until the drain deadline.
    Draining,
    /// The drain deadline passed: every session ends with a goodbye.
    Stopping,
}

/// The current generation and the signals that it or the phase changed.
pub struct Shared {
    current: ArcSwap<Generation>,
    changed: watch::Sender<u64>,
    phase: watch::Sender<Phase>,
    pub services: Services,
    /// Smart lockout's counters. A reload swaps its settings and keeps its counts (who is
    /// blocked stays blocked). Shared with the admin listener.
    pub throttle: Arc<Throttle>,
    /// Each upstream's observed refusal latencies, which policy refusals replay.
    pub pacing: crate::pacing::Pacing,
    /// Connections per client address and handshakes in progress; the caps are read from the
    /// current generation at each connection.
    pub conn_limits: ConnLimits,
    /// The access tokens of shared-mailbox grants (`crate::grants`); a reload keeps them.
    pub grants: crate::grants::GrantStore,
    /// The LDAP sync in force (`[policy.ldap]`), merged into every directory a reload builds.
    ldap_snapshot: arc_swap::ArcSwapOption<crate::directory::ldap::Snapshot>,
    /// Held while a reload or an LDAP sync builds and swaps, so one cannot swap in a directory
    /// built from the other's stale half (a file reload racing a sync).
    swapping: std::sync::Mutex<()>,
}

impl Shared {
    fn new(generation: Generation, services: Services) -> Shared {
        let store = match &generation.config.counter_store {
            None => Store::local(),
            Some(redis) => match RedisStore::new(redis, services.metrics.throttle_store_gauge()) {
                Ok(store) => Store::Redis(store),
                // Checked when the config was loaded; should it fail now, counting locally
                // keeps every limit (per instance) rather than refusing to start.
                Err(why) => {
                    tracing::error!(error = %why, "counter store unusable; counting locally");
                    Store::local()
                }
            },
        };
        let throttle = Arc::new(Throttle::with_store(
            generation.config.limits.throttle,
            store,
        ));
        let (changed, _) = watch::channel(generation.number);
        let (phase, _) = watch::channel(Phase::Serving);
        Shared {
            current: ArcSwap::from_pointee(generation),
            changed,
            phase,
            services: services.clone(),
            throttle,
            pacing: crate::pacing::Pacing::new(),
            conn_limits: ConnLimits::new(),
            grants: crate::grants::GrantStore::new(services.clone()),
            ldap_snapshot: arc_swap::ArcSwapOption::empty(),
            swapping: std::sync::Mutex::new(()),
        }
    }

    /// The LDAP sync in force, if any.
    pub fn ldap_snapshot(&self) -> Option<Arc<crate::directory::ldap::Snapshot>> {
        self.ldap_snapshot.load_full()
    }

    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Notified with the new generation number after every accepted reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Swaps in new configurations. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Build `config` aside and swap it in. On error nothing changes. Returns the new
    /// generation number.
    pub fn reload(&self, config: Config) -> Result<u64, Error> {
        let _swapping = self.lock();
        // With `[policy.ldap]`, the file holds the policy and the last sync the organisation.
        let config = match (&config.policy.ldap, self.shared.ldap_snapshot()) {
            (Some(_), Some(snapshot)) => config.with_snapshot(&snapshot)?,
            _ => config,
        };
        self.swap(config)
    }

    /// Merge an LDAP sync into the config in force and swap it in; on success it is the
    /// snapshot later reloads merge. On error nothing changes.
    pub fn apply_snapshot(
        &self,
        snapshot: Arc<crate::directory::ldap::Snapshot>,
    ) -> Result<u64, Error> {
        let _swapping = self.lock();
        let config = self.shared.current().config.with_snapshot(&snapshot)?;
        let number = self.swap(config)?;
        self.shared.ldap_snapshot.store(Some(snapshot));
        Ok(number)
    }

    /// Records the snapshot the first generation was built with (start-up).
    pub fn set_snapshot(&self, snapshot: Arc<crate::directory::ldap::Snapshot>) {
        self.shared.ldap_snapshot.store(Some(snapshot));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while swapping leaves nothing half-done behind the lock (the swap is one
        // store), so a poisoned lock is still good to take.
        self.shared
            .swapping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn swap(&self, config: Config) -> Result<u64, Error> {
        let old = self.shared.current();
        if old.config.listeners != config.listeners {
            tracing::warn!("listener changes take effect only after a restart");
        }
        if old.config.counter_store != config.counter_store {
            tracing::warn!("limits.store changes take effect only after a restart");
        }
        // Sized or bound once at startup; the per-address and handshake caps apply at once.
        let (was, now) = (&old.config.limits, &config.limits);
        if (was.max_connections, was.backlog) != (now.max_connections, now.backlog) {
            tracing::warn!(
                "limits.max_connections and limits.backlog take effect only after a restart"
            );
        }
        if old.config.admin != config.admin {
            tracing::warn!("[admin] changes take effect only after a restart");
        }
        // Only compliant members may be *added* to a restricted group: one that was not in the
        // running directory's group is refused here; one that was is reported (`groups`).
        let added = config.directory.added_offenders(&old.config.directory);
        if !added.is_empty() {
            return Err(Error::AddedOffenders(crate::directory::Errors(added)));
        }
        let next = Generation::build(config, old.number + 1)?;
        next.observe(&self.shared.services.metrics);
        // What the old generation learnt of an upstream holds until the new probe answers.
        for (name, connector) in &next.connectors {
            if let Some(earlier) = old.connectors.get(name) {
                connector.inherit_capabilities(earlier);
            }
            connector.spawn_probe();
        }
        let number = next.number;
        self.shared
            .throttle
            .reconfigure(next.config.limits.throttle);
        self.shared.current.store(Arc::new(next));
        self.shared.changed.send_replace(number);
        Ok(number)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Bound listeners, ready to serve.
pub struct Server {
    bound: Vec<(TcpListener, Listener)>,
    shared: Arc<Shared>,
}

impl Server {
    /// Build the first generation and bind every listener, with default services (no audit).
    pub async fn bind(config: &Config) -> Result<Server, Error> {
        Self::bind_with(config, Services::default()).await
    }

    /// Build the first generation and bind every listener. Nothing is accepted yet.
    pub async fn bind_with(config: &Config, services: Services) -> Result<Server, Error> {
        let generation = Generation::build(config.clone(), 1)?;
        generation.observe(&services.metrics);
        for listener in &config.listeners {
            services.metrics.listener(&listener.name, listener.protocol);
        }
        let backlog = config.limits.backlog;
        if let Some(max) = somaxconn()
            && max < backlog
        {
            tracing::warn!(
                backlog,
                somaxconn = max,
                "limits.backlog is above net.core.somaxconn; the kernel uses somaxconn"
            );
        }
        for connector in generation.connectors.values() {
            connector.spawn_probe();
        }
        let mut bound = Vec::new();
        for listener in &config.listeners {
            let tcp = listen(listener.bind, backlog).map_err(|source| Error::Bind {
                listener: listener.name.clone(),
                addr: listener.bind,
                source,
            })?;
            bound.push((tcp, listener.clone()));
        }
        Ok(Server {
            bound,
            shared: Arc::new(Shared::new(generation, services)),
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(_, l)| l.name == listener)
            .and_then(|(tcp, _)| tcp.local_addr().ok())
    }

    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// Accept until `shutdown` resolves, then drain: stop accepting, end sessions that have not
    /// logged in, give logged-in ones `drain_timeout`, then end them with a goodbye. Returns
    /// when every session has ended (or 10 s after the deadline at the latest).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let max = self.shared.current().config.limits.max_connections;
        // The connection cap doubles as the session tracker: all permits back = all ended.
        let max = u32::try_from(max.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let permits = Arc::new(Semaphore::new(max as usize));
        let mut accept_loops = JoinSet::new();
        for (tcp, listener) in self.bound {
            if let Ok(addr) = tcp.local_addr() {
                tracing::info!(
                    listener = %listener.name,
                    protocol = listener.protocol.as_str(),
                    %addr,
                    "listening"
                );
            }
            let ctx = Arc::new(SessionContext {
                listener,
                shared: self.shared.clone(),
            });
            accept_loops.spawn(accept_loop(tcp, ctx, permits.clone()));
        }
        // After a wave of connections, their freed memory goes back to the kernel (trim.rs).
        let in_use = permits.clone();
        let trimmer = tokio::spawn(crate::trim::run(move || {
            (max as usize).saturating_sub(in_use.available_permits())
        }));
        self.shared.services.readiness.set_ready(true);
        shutdown.await;
        trimmer.abort();
        self.shared.services.readiness.set_ready(false);
        accept_loops.abort_all();
        while accept_loops.join_next().await.is_some() {}
        let drain = self.shared.current().config.limits.drain_timeout;
        let active = max as usize - permits.available_permits();
        tracing::info!(active, ?drain, "draining");
        self.shared.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(drain, permits.acquire_many(max))
            .await
            .is_err()
        {
            let active = max as usize - permits.available_permits();
            tracing::info!(
                active,
                "drain deadline passed; ending the remaining sessions"
            );
            self.shared.phase.send_replace(Phase::Stopping);
            let grace = Duration::from_secs(10);
            if tokio::time::timeout(grace, permits.acquire_many(max))
                .await
                .is_err()
            {
                tracing::warn!("sessions still running 10 s after the drain deadline");
            }
        }
    }
}

/// Bind `addr` with the configured listen backlog (std's `TcpListener::bind` uses 128).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's bind does on Unix: a restart may rebind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The kernel's cap on listen backlogs, where it can be read.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Why the accept loop turned a connection away.
#[derive(Debug, Clone, Copy)]
enum Turned {
    /// `max_connections`.
    Global,
    Cap(Over),
}

async fn accept_loop(tcp: TcpListener, ctx: Arc<SessionContext>, permits: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!(listener = %ctx.listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match admit(&ctx, peer, &permits) {
            Ok(Admitted::Now(permit, admission)) => {
                let ctx = ctx.clone();
                // Detached: a session outlives the accept loop (drain); its permit tracks it.
                tokio::spawn(async move {
                    session::run(stream, peer, ctx, admission).await;
                    drop(permit);
                });
            }
            Ok(Admitted::Displacing(connection)) => {
                let ctx = ctx.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    // The displaced session's permit comes back as soon as its task ends. Only
                    // then is the handshake slot taken: a connection waiting here must not
                    // count as a silent handshake that the next newcomer could evict.
                    let admitted = match timeout(ROOM_WAIT, permits.acquire_owned()).await {
                        Ok(Ok(permit)) => {
                            let caps = ctx.shared.current().config.limits.connections;
                            handshake_slot(&ctx, peer, &caps)
                                .map(|handshake| (permit, handshake))
                                .map_err(|over| (Refused::from(over), true))
                        }
                        _ => Err((Refused::Limit, false)),
                    };
                    match admitted {
                        Ok((permit, handshake)) => {
                            let admission = Admission {
                                connection,
                                handshake,
                            };
                            session::run(stream, peer, ctx, admission).await;
                            drop(permit);
                        }
                        Err((reason, per_ip)) => {
                            ctx.shared
                                .services
                                .metrics
                                .connection_refused(&ctx.listener.name, reason);
                            session::refuse_at_once(stream, &ctx.listener, per_ip);
                        }
                    }
                });
            }
            Err(turned) => {
                tracing::debug!(listener = %ctx.listener.name, %peer, ?turned, "refused at accept");
                let (reason, per_ip) = match turned {
                    Turned::Global => (Refused::Limit, false),
                    Turned::Cap(over) => (over.into(), true),
                };
                ctx.shared
                    .services
                    .metrics
                    .connection_refused(&ctx.listener.name, reason);
                session::refuse_at_once(stream, &ctx.listener, per_ip);
            }
        }
    }
}

/// How long a connection admitted by displacing another waits for that one's permit (it is
/// normally back within a scheduling round; bounded all the same).
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// What the accept loop may do with a connection.
enum Admitted {
    /// Serve it: its global permit and slots.
    Now(OwnedSemaphorePermit, Admission),
    /// At `max_connections` a connection that had not logged in was displaced for it
    /// (`ConnLimits::make_room`): wait for the permit that frees, then take the handshake
    /// slot. Holds the per-address connection slot meanwhile.
    Displacing(Option<ConnectionSlot>),
}

/// Take the global permit and, where the client is known and a handshake comes first, the
/// per-address and handshake slots (see the module docs). Nothing is taken on `Err`.
fn admit(
    ctx: &SessionContext,
    peer: SocketAddr,
    permits: &Arc<Semaphore>,
) -> Result<Admitted, Turned> {
    let permit = permits.clone().try_acquire_owned().ok();
    let generation = ctx.shared.current();
    let caps = &generation.config.limits.connections;
    let limits = &ctx.shared.conn_limits;
    // Behind a PROXY balancer the peer is the balancer; the session counts the real client.
    let connection = (ctx.listener.proxy_protocol.is_none())
        .then(|| limits.connection(peer.ip(), caps))
        .transpose()
        .map_err(Turned::Cap)?;
    let Some(permit) = permit else {
        return if limits.make_room() {
            Ok(Admitted::Displacing(connection))
        } else {
            Err(Turned::Global)
        };
    };
    let handshake = handshake_slot(ctx, peer, caps).map_err(Turned::Cap)?;
    Ok(Admitted::Now(
        permit,
        Admission {
            connection,
            handshake,
        },
    ))
}

/// The handshake slot of a connection whose handshake comes first (a PROXY header and/or
/// implicit TLS); counted for the peer unless a PROXY header is to name the client.
fn handshake_slot(
    ctx: &SessionContext,
    peer: SocketAddr,
    caps: &Caps,
) -> Result<Option<HandshakeSlot>, Over> {
    let proxied = ctx.listener.proxy_protocol.is_some();
    if !proxied && ctx.listener.tls != ListenerTls::Implicit {
        return Ok(None);
    }
    let client = (!proxied).then_some(peer.ip());
    ctx.shared.conn_limits.handshake(client, caps).map(Some)
}
