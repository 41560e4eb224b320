//! Stage: admin HTTP listener. A bound `TcpListener`, the shared [`Metrics`] and a
//! [`Readiness`] flag in; HTTP/1.1 answers out, until the shutdown future resolves.
//!
//! | path       | answer                                                                  |
//! |------------|-------------------------------------------------------------------------|
//! | `/metrics` | 200, OpenMetrics text of every `mailgate_*` family                      |
//! | `/healthz` | 200 while the process runs (liveness: restart me only if this fails)    |
//! | `/readyz`  | 200 when ready, 503 before the first config and while draining; the body also says whether the counter store answers |
//! | `/throttle`| smart lockout status and unlock, loopback only ([`throttle`])           |
//! | other      | 404                                                                     |
//!
//! No authentication: `[admin] bind` defaults to loopback and a non-loopback bind is warned
//! about in `Config::warnings`. Nothing above `/throttle` holds user data (metric labels never
//! do); `/throttle` answers only on loopback, whatever the bind.
//!
//! Bounded (issue 9: 3,000 partial requests stayed open 40 s, sharing the proxy's fd limit):
//! one request per connection (`Connection: close`), the request head within
//! `[admin] header_timeout`, the whole connection within `request_timeout`, and at most
//! `max_connections` at once. At the cap, a new connection takes the place of the one that has
//! waited longest for its request head (that one is closed): a flood of partial requests then
//! cannot keep a scrape out, since a scrape sends its head at once; when every connection is
//! busy answering, the new one is closed at once.
//!
//! Must not: touch sessions or the live config; it reads the metrics and the flag, and the
//! `/throttle` routes read and clear smart lockout counters.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::config::Admin;
use crate::metrics::{self, Metrics};

pub mod throttle;

/// Whether mailgate should get traffic. Cheap to clone; every clone shares the flag. Starts not
/// ready: the server sets it once the first config is loaded and the listeners are bound, and
/// clears it when draining starts, so a load balancer stops sending new connections first.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The admin routes, for [`serve`] and for tests that drive them without a socket.
pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness })
}

/// Serves the admin routes on `listener` until `shutdown` resolves, then stops accepting,
/// closes connections still waiting for their request head and lets the others finish (each is
/// bounded by `limits.request_timeout`). Accept errors (EMFILE) are logged and retried; the
/// `Err` is kept for callers but never returned today.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    limits: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(metrics, readiness), limits, shutdown).await
}

/// As [`serve`], for a router with more routes merged in (`throttle::routes`). Handlers may
/// extract the peer address (`ConnectInfo<SocketAddr>`).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Slots::default();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap with nobody to evict: closed at once (dropped).
        if let Some((ticket, evicted)) = slots.admit(limits.max_connections) {
            conns.spawn(connection(
                stream,
                peer,
                router.clone(),
                ticket,
                evicted,
                limits,
            ));
        }
    }
    drop(listener);
    slots.evict_waiting();
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// One admin connection: a single request, bounded as the module docs say.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    ticket: Ticket,
    evicted: oneshot::Receiver<()>,
    limits: Admin,
) {
    let service = TowerToHyperService::new(router);
    let (slots, id) = (ticket.slots.clone(), ticket.id);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // hyper calls the service once the whole head is in.
        slots.serving(id);
        // For handlers that check who asks (`throttle`: loopback only).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        hyper::service::Service::call(&service, request)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = tokio::time::timeout(limits.request_timeout, conn) => {}
        // Only an eviction sends; a dropped sender (now serving) disables this branch.
        Ok(()) = evicted => {}
    }
    drop(ticket);
}

/// Where each open admin connection is: waiting for its request head (evictable) or serving.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<SlotTable>>);

#[derive(Default)]
struct SlotTable {
    next: u64,
    /// By arrival: the first waiting entry is the oldest.
    open: BTreeMap<u64, Slot>,
}

enum Slot {
    Waiting(oneshot::Sender<()>),
    Serving,
}

/// An admitted connection's place in [`Slots`]; frees it on drop.
#[must_use = "dropping the ticket frees the connection's slot"]
struct Ticket {
    slots: Slots,
    id: u64,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        // A poisoned lock only means a connection task panicked mid-update of a plain map.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a new connection, evicting the oldest one still waiting for its head when at
    /// `max`; `None` when every open connection is serving.
    fn admit(&self, max: usize) -> Option<(Ticket, oneshot::Receiver<()>)> {
        let mut table = self.lock();
        if table.open.len() >= max {
            let oldest = table
                .open
                .iter()
                .find(|(_, slot)| matches!(slot, Slot::Waiting(_)))
                .map(|(id, _)| *id)?;
            if let Some(Slot::Waiting(kick)) = table.open.remove(&oldest) {
                let _ = kick.send(());
            }
        }
        let id = table.next;
        table.next += 1;
        let (kick, evicted) = oneshot::channel();
        table.open.insert(id, Slot::Waiting(kick));
        let ticket = Ticket {
            slots: self.clone(),
            id,
        };
        Some((ticket, evicted))
    }

    /// Close every connection still waiting for its head (shutdown).
    fn evict_waiting(&self) {
        let mut table = self.lock();
        let open = std::mem::take(&mut table.open);
        for (id, slot) in open {
            match slot {
                Slot::Waiting(kick) => {
                    let _ = kick.send(());
                }
                Slot::Serving => {
                    table.open.insert(id, Slot::Serving);
                }
            }
        }
    }

    /// The request head of `id` is in: no longer evictable. Dropping its sender disables the
    /// task's eviction branch.
    fn serving(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            *slot = Slot::Serving;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    // A shared counter store that is away does not make this instance unready: it keeps
    // serving with local limits (taking it out of the balancer would refuse everyone); the
    // detail line says so for the operator.
    let store = if state.metrics.throttle_store_is_up() {
        "counter store: up\n"
    } else {
        "counter store: down (limits count on this instance only)\n"
    };
    if state.readiness.is_ready() {
        (StatusCode::OK, format!("ready\n{store}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{store}"),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::*;
    use crate::proto::Protocol;

    const WAIT: Duration = Duration::from_secs(10);

    /// One `GET` over a fresh connection; returns status code, the head, and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn routes_answer_and_shutdown_stops_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            metrics.clone(),
            readiness.clone(),
            Admin::default(),
            async move {
                let _ = stopped.await;
            },
        ));

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready\ncounter store: up\n")
        );
        readiness.set_ready(true);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\ncounter store: up\n"));
        // Draining.
        readiness.set_ready(false);
        assert_eq!(get(addr, "/readyz").await.0, 503);

        let _guard = metrics.connection_opened("imaps", Protocol::Imap);
        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.contains("mailgate_connections_active{listener=\"imaps\",protocol=\"imap\"} 1"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        assert_eq!(get(addr, "/nope").await.0, 404);

        stop.send(()).unwrap();
        timeout(WAIT, server).await.unwrap().unwrap().unwrap();
        // The listener is closed once serve returns.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_gives_way() {
        let slots = Slots::default();
        let (first, mut first_evicted) = slots.admit(2).unwrap();
        let (second, mut second_evicted) = slots.admit(2).unwrap();
        // Both waiting: the newcomer evicts the oldest.
        let (third, _) = slots.admit(2).unwrap();
        assert_eq!(first_evicted.try_recv(), Ok(()));
        drop(first);
        assert!(second_evicted.try_recv().is_err());
        // Both remaining ones serving: nobody to evict, the newcomer is refused.
        slots.serving(second.id);
        slots.serving(third.id);
        assert!(slots.admit(2).is_none());
        // A finished one frees its slot.
        drop(second);
        assert!(slots.admit(2).is_some());
        assert_eq!(
            second_evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        );
    }

    #[tokio::test]
    async fn non_get_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            Readiness::new(),
            Admin::default(),
            std::future::pending(),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 405"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        server.abort();
    }
}
