//! Stage: admin HTTP listener. A bound `TcpListener`, the shared [`Metrics`] and a
//! [`Readiness`] flag in; HTTP/1.1 answers out, until the shutdown future resolves.
//!
//! | path       | answer                                                                  |
//! |------------|-------------------------------------------------------------------------|
//! | `/metrics` | 200, OpenMetrics text of every `mailgate_*` family                      |
//! | `/healthz` | 200 while the process runs (liveness: restart me only if this fails)    |
//! | `/readyz`  | 200 when ready, 503 before the first config and while draining; the body also says whether the counter store answers |
//! | other      | 404                                                                     |
//!
//! No authentication: `[admin] bind` defaults to loopback and a non-loopback bind is warned
//! about in `Config::warnings`. Nothing served here holds user data (metric labels never do).
//!
//! Must not: touch sessions or config; it only reads the metrics and the flag.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::{self, Metrics};

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

/// Serves the admin routes on `listener` until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish. An accept error on one connection does not end the loop
/// (axum retries); the `Err` is only for the listener itself failing.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
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

    #[tokio::test]
    async fn non_get_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            Readiness::new(),
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
