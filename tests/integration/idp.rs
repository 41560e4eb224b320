//! A real OAuth 2.0 / OpenID provider per test: the npm package `oidc-provider`, run by
//! `tests/idp/server.mjs` on 127.0.0.1 and a free port (installed by
//! `scripts/install-test-deps`, `npm ci` in `tests/idp`).
//!
//! What it has (see `server.mjs`): clients `mail-app` and `other-client` (the mail clients),
//! `mailgate` / `mailgate-secret` and `dovecot` / `dovecot-secret` (introspecting resource
//! servers); JWT access tokens with `aud` = [`JWT_AUDIENCE`] and opaque ones with
//! `aud` = [`OPAQUE_AUDIENCE`]. [`Idp::token`] and [`Idp::rotate_keys`] use two routes that
//! exist only in this test server (no browser needed). `Drop` kills the process.
//!
//! For shared-mailbox grants (`shared_e2e`): client `mailgate-grants` / `grants-secret` with the
//! device flow (interval 1 s), refresh tokens rotated on every use, revocation at
//! `/token/revocation`, and three more test routes: `/test/device/approve` (the browser step),
//! `/test/config?grant_ttl=N` and `/test/count` (token-endpoint requests so far).

// Shared test API: not every helper is used by every area.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::free_port;

/// `aud` of the IdP's JWT access tokens.
pub const JWT_AUDIENCE: &str = "https://mail.example.com/";
/// `aud` of the IdP's opaque access tokens (as introspection reports it).
pub const OPAQUE_AUDIENCE: &str = "https://mail.example.com/opaque";
/// How long [`Idp::start`] waits for the discovery document.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Access token format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// RFC 9068 JWT, RS256, verifiable with the JWKS.
    Jwt,
    /// Opaque; only introspection knows it.
    Opaque,
}

/// A running test IdP.
pub struct Idp {
    pub issuer: String,
    pub jwks_uri: String,
    pub introspection_endpoint: String,
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Idp {
    /// Starts the IdP and waits (bounded) until its discovery document is served.
    pub async fn start() -> Idp {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(idp) => return idp,
                Err(e) => last = e,
            }
        }
        panic!("test IdP did not start: {last}");
    }

    async fn try_start() -> Result<Idp, String> {
        let dir = tempfile::Builder::new()
            .prefix("mailgate-idp-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log = dir.path().join("idp.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let port = free_port();
        let idp_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
        let mut cmd = Command::new("node");
        cmd.arg(idp_dir.join("server.mjs"))
            .arg(port.to_string())
            .current_dir(&idp_dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        // If the test process dies without Drop, the IdP goes too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("spawn node: {e}"))?;
        let issuer = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let mut idp = Idp {
            jwks_uri: String::new(),
            introspection_endpoint: String::new(),
            issuer,
            port,
            child,
            log,
            _dir: dir,
            http,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/.well-known/openid-configuration", idp.issuer);
        loop {
            if let Ok(Some(status)) = idp.child.try_wait() {
                return Err(format!("node exited with {status}:\n{}", idp.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no discovery after {START_TIMEOUT:?}:\n{}",
                    idp.log()
                ));
            }
            if let Ok(resp) = idp.http.get(&url).send().await
                && resp.status().is_success()
                && let Ok(text) = resp.text().await
                && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text)
            {
                idp.jwks_uri = doc["jwks_uri"].as_str().unwrap_or_default().to_owned();
                idp.introspection_endpoint = doc["introspection_endpoint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                return Ok(idp);
            }
            // Polling a port that is not bound yet: no readiness signal to wait on instead.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fresh access token for `user` issued to `client` (`mail-app`, `other-client`).
    pub async fn token(&self, user: &str, client: &str, kind: TokenKind) -> String {
        self.token_with_ttl(user, client, kind, None).await
    }

    /// As [`Idp::token`], valid for `ttl` seconds.
    pub async fn token_with_ttl(
        &self,
        user: &str,
        client: &str,
        kind: TokenKind,
        ttl: Option<u64>,
    ) -> String {
        let kind = match kind {
            TokenKind::Jwt => "jwt",
            TokenKind::Opaque => "opaque",
        };
        let mut query = vec![("user", user.to_owned()), ("client", client.to_owned())];
        query.push(("kind", kind.to_owned()));
        if let Some(ttl) = ttl {
            query.push(("ttl", ttl.to_string()));
        }
        let resp = self
            .http
            .get(format!("{}/test/token", self.issuer))
            .query(&query)
            .send()
            .await
            .expect("mint token");
        let status = resp.status();
        let body = resp.text().await.expect("token body");
        assert!(
            status.is_success(),
            "mint token: {status} {body}\n{}",
            self.log()
        );
        body
    }

    /// Rotates the signing key (the old one stays published); returns the new `kid`.
    pub async fn rotate_keys(&self) -> String {
        let resp = self
            .http
            .post(format!("{}/test/rotate", self.issuer))
            .send()
            .await
            .expect("rotate");
        assert!(resp.status().is_success(), "rotate: {}", resp.status());
        resp.text().await.expect("kid")
    }

    /// The IdP's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- test IdP log ----\n{}", self.log());
        }
    }
}
