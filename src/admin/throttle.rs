//! The helpdesk's view of smart lockout on the admin listener ("I'm locked out"):
//!
//! | request                                  | answer                                         |
//! |------------------------------------------|------------------------------------------------|
//! | `GET /throttle?user=U&ip=A` (either)     | 200, JSON: the user's and the source's counters |
//! | `POST /throttle/clear?user=U` or `?ip=A` | 200, JSON `{"cleared": true/false}`            |
//!
//! Protection: these answer only to loopback peers, with a `Host` naming loopback (against DNS
//! rebinding), and `POST` also needs the header `X-Mailgate-Admin: 1` (a web page cannot send
//! it cross-origin without a CORS preflight, which is never granted). So even when `[admin]
//! bind` is opened for Prometheus, unlocking and reading users' familiar addresses stay on
//! the host: `mailgate throttle` runs there. Everything else gets 403.
//!
//! Must not: log or echo anything but the user name and address asked about.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::throttle::store::{CounterStatus, Millis, SourceKey, Target, UserKey};
use crate::throttle::{Throttle, now_ms};

/// The header a `POST` must carry (see the module doc).
pub const ADMIN_HEADER: &str = "x-mailgate-admin";

/// The throttle routes, to merge into the admin router.
pub fn routes(throttle: Arc<Throttle>) -> Router {
    Router::new()
        .route("/throttle", get(status))
        .route("/throttle/clear", post(clear))
        .with_state(throttle)
}

/// `user=` and `ip=` of the query.
struct Query {
    user: Option<String>,
    ip: Option<IpAddr>,
}

fn query(raw: Option<&str>) -> Result<Query, &'static str> {
    let mut q = Query {
        user: None,
        ip: None,
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "user" if !value.is_empty() => q.user = Some(value.into_owned()),
            "ip" => match value.parse() {
                Ok(ip) => q.ip = Some(ip),
                Err(_) => return Err("ip= is not an IP address"),
            },
            _ => return Err("expected user= and/or ip="),
        }
    }
    if q.user.is_none() && q.ip.is_none() {
        return Err("give user= or ip=");
    }
    Ok(q)
}

fn bad(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}

/// Loopback peer and loopback `Host`; `None` when the request may go on.
pub(crate) fn refused(peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Strip the port: `localhost:9925`, `127.0.0.1:9925`, `[::1]:9925`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback_host =
        name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if peer.ip().to_canonical().is_loopback() && loopback_host {
        None
    } else {
        Some((StatusCode::FORBIDDEN, "loopback only\n").into_response())
    }
}

async fn status(
    State(throttle): State<Arc<Throttle>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(no) = refused(peer, &headers) {
        return no;
    }
    let q = match query(raw.as_deref()) {
        Ok(q) => q,
        Err(why) => return bad(why),
    };
    let config = throttle.config();
    let limits = config.store_limits();
    let user_key = q.user.as_deref().map(UserKey::of);
    let source_key = q.ip.map(SourceKey::of);
    let status = match throttle
        .store()
        .status(user_key, source_key, &limits, now_ms())
        .await
    {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let mut out = serde_json::Map::new();
    if let (Some(name), Some(u)) = (&q.user, &status.user) {
        out.insert(
            "user".into(),
            json!({
                "name": name,
                "familiar": counter(&u.familiar, limits.user_failures),
                "unfamiliar": counter(&u.unfamiliar, limits.user_failures),
                "remembered_wrong_passwords": u.remembered_passwords,
                "familiar_sources": u.familiar_sources.iter().map(|(s, until)| {
                    json!({"source": s, "until": rfc3339(*until)})
                }).collect::<Vec<_>>(),
            }),
        );
    }
    if let (Some(ip), Some(s)) = (q.ip, &status.source) {
        out.insert(
            "source".into(),
            json!({
                "address": ip.to_string(),
                "counted_as": source_key.map(|k| k.to_string()),
                "password": counter(&s.password, limits.source_failures),
                "token": counter(&s.token, limits.token_failures),
            }),
        );
    }
    json_response(&Value::Object(out))
}

async fn clear(
    State(throttle): State<Arc<Throttle>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(no) = refused(peer, &headers) {
        return no;
    }
    if headers.get(ADMIN_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return (StatusCode::FORBIDDEN, "X-Mailgate-Admin: 1 required\n").into_response();
    }
    let q = match query(raw.as_deref()) {
        Ok(q) => q,
        Err(why) => return bad(why),
    };
    let target = match (&q.user, q.ip) {
        (Some(user), None) => Target::User(UserKey::of(user)),
        (None, Some(ip)) => Target::Source(SourceKey::of(ip)),
        _ => return bad("give user= or ip=, not both"),
    };
    match throttle.store().clear(target).await {
        Ok(cleared) => {
            tracing::info!(user = q.user, ip = ?q.ip, cleared, "throttle cleared by the admin");
            json_response(&json!({ "cleared": cleared }))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

fn counter(c: &CounterStatus, limit: u32) -> Value {
    json!({
        "failures": c.failures,
        "in_flight": c.in_flight,
        "limit": limit,
        "blocked_until": c.blocked_until.map(rfc3339),
    })
}

fn rfc3339(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn json_response(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v:#}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_queries_are_refused() {
        for (raw, why) in [
            (None, "give user= or ip="),
            (Some(""), "give user= or ip="),
            // An empty user= is not a user: refused like an unknown key.
            (Some("user="), "expected user= and/or ip="),
            (Some("ip=10.0.0.300"), "ip= is not an IP address"),
            (Some("user=a&ip="), "ip= is not an IP address"),
            (Some("user=a&password=x"), "expected user= and/or ip="),
        ] {
            assert_eq!(query(raw).err(), Some(why), "{raw:?}");
        }
        let q = query(Some("user=alice%40example.com&ip=%3A%3A1")).unwrap();
        assert_eq!(q.user.as_deref(), Some("alice@example.com"));
        assert_eq!(q.ip, Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])));
    }

    #[test]
    fn only_loopback_peers_naming_a_loopback_host_get_through() {
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            headers
        };
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let v6: SocketAddr = "[::1]:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        for host in [
            "localhost",
            "localhost:9925",
            "127.0.0.1:9925",
            "[::1]:9925",
            "[::1]",
        ] {
            for peer in [v4, v6, mapped] {
                assert!(refused(peer, &with_host(host)).is_none(), "{peer} {host}");
            }
        }
        for host in [
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example:9925",
            "[::2]:9925",
            "",
        ] {
            let no = refused(v4, &with_host(host)).map(|r| r.status());
            assert_eq!(no, Some(StatusCode::FORBIDDEN), "{host:?}");
        }
        assert!(refused(v4, &HeaderMap::new()).is_some(), "no Host");
        let outside: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        assert!(refused(outside, &with_host("localhost")).is_some());
    }
}
