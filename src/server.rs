//! Stage: server. Bind the listeners, accept connections, cap their number, and hand each to a
//! session task.
//!
//! Inputs: a validated [`Config`]. Output: running sessions until the shutdown future resolves.
//! Builds the TLS acceptor and the upstream connectors once, so a bad certificate or CA file
//! fails at startup, not at the first login.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ListenerTls, UpstreamTls};
use crate::session::{self, ListenerContext};
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
}

/// Bound listeners, ready to serve.
pub struct Server {
    bound: Vec<(TcpListener, Arc<ListenerContext>)>,
    max_connections: usize,
}

impl Server {
    /// Build TLS and upstream connectors and bind every listener. Nothing is accepted yet.
    pub async fn bind(config: &Config) -> Result<Server, Error> {
        let needs_tls = config.listeners.iter().any(|l| l.tls != ListenerTls::None);
        let acceptor = match (&config.tls, needs_tls) {
            (Some(tls), true) => Some(TlsAcceptor::from(crate::tls::server_config(tls)?)),
            _ => None,
        };
        let mut connectors = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            if !upstream.verify_certificate && upstream.tls != UpstreamTls::None {
                tracing::warn!(upstream = %name, "upstream certificate verification is OFF");
            }
            connectors.insert(name.clone(), Arc::new(Connector::new(upstream.clone())?));
        }
        let mut bound = Vec::new();
        for listener in &config.listeners {
            if listener.tls != ListenerTls::None && acceptor.is_none() {
                return Err(Error::NoTls {
                    listener: listener.name.clone(),
                });
            }
            let connector = connectors.get(&listener.upstream).cloned().ok_or_else(|| {
                Error::UnknownUpstream {
                    listener: listener.name.clone(),
                    upstream: listener.upstream.clone(),
                }
            })?;
            let tcp = TcpListener::bind(listener.bind)
                .await
                .map_err(|source| Error::Bind {
                    listener: listener.name.clone(),
                    addr: listener.bind,
                    source,
                })?;
            let ctx = ListenerContext {
                listener: listener.clone(),
                acceptor: acceptor.clone(),
                connector,
                limits: config.limits,
            };
            bound.push((tcp, Arc::new(ctx)));
        }
        Ok(Server {
            bound,
            max_connections: config.limits.max_connections,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|(_, ctx)| ctx.listener.name == listener)
            .and_then(|(tcp, _)| tcp.local_addr().ok())
    }

    /// Accept until `shutdown` resolves, then stop accepting. Sessions already running are
    /// aborted when this returns (draining is TODO(#5)).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let mut accept_loops = JoinSet::new();
        for (tcp, ctx) in self.bound {
            if let Ok(addr) = tcp.local_addr() {
                tracing::info!(
                    listener = %ctx.listener.name,
                    protocol = ctx.listener.protocol.as_str(),
                    %addr,
                    "listening"
                );
            }
            accept_loops.spawn(accept_loop(tcp, ctx, permits.clone()));
        }
        shutdown.await;
        // Each accept loop owns its sessions' JoinSet; aborting the loop drops the set, which
        // aborts the sessions.
        accept_loops.abort_all();
        while accept_loops.join_next().await.is_some() {}
    }
}

async fn accept_loop(tcp: TcpListener, ctx: Arc<ListenerContext>, permits: Arc<Semaphore>) {
    let mut sessions = JoinSet::new();
    loop {
        // Reap finished sessions so the set does not grow with the connection count.
        while sessions.try_join_next().is_some() {}
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!(listener = %ctx.listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                sessions.spawn(async move {
                    session::run(stream, peer, ctx).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "connection limit reached, refusing");
                sessions.spawn(session::refuse_busy(stream, ctx));
            }
        }
    }
}
