//! `mailgate grant authorize | status | revoke`: the administrator's side of the grants. The
//! server never runs these; it reads what they write (`super::file`) at the next login.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::client::{self, Tokens};
use super::file::{self, GrantFile, GrantState};
use crate::config::Config;
use crate::config::grants::OAuthClient;

/// What went wrong, for the command's one-line error. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no [grants] table in the config: set `dir` to where grants are kept")]
    NoGrants,
    #[error("{0}")]
    Client(String),
    #[error(transparent)]
    Provider(#[from] client::Error),
    #[error(transparent)]
    File(#[from] file::Error),
    #[error("the provider gave no refresh token; ask for offline access (scope offline_access)")]
    NoRefreshToken,
    #[error("loopback redirect: {0}")]
    Redirect(String),
}

fn pick_client<'c>(config: &'c Config, name: Option<&str>) -> Result<&'c OAuthClient, Error> {
    let clients = &config.oauth.clients;
    match name {
        Some(name) => clients
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::Client(format!("no [[oauth.client]] named {name:?}"))),
        None => match clients.as_slice() {
            [only] => Ok(only),
            [] => Err(Error::Client("no [[oauth.client]] configured".into())),
            _ => Err(Error::Client(
                "several [[oauth.client]] tables: choose one with --client".into(),
            )),
        },
    }
}

/// The shared mailboxes that use grant `name`, for the messages.
fn mailboxes(config: &Config, name: &str) -> Vec<String> {
    config
        .directory
        .shared_mailboxes()
        .iter()
        .filter(|m| &*m.grant == name)
        .map(|m| m.address.to_string())
        .collect()
}

/// `mailgate grant authorize`. Output goes to `out` (stdout), so a script or test can read the
/// URL and code as they are printed.
pub async fn authorize(
    config: &Config,
    name: &str,
    client_name: Option<&str>,
    redirect: Option<u16>,
    limit: Duration,
    out: &mut dyn std::io::Write,
) -> Result<(), Error> {
    let grants = config.grants.as_ref().ok_or(Error::NoGrants)?;
    file::check_name(name)?;
    let oauth = pick_client(config, client_name)?;
    let boxes = mailboxes(config, name);
    let _ = writeln!(
        out,
        "Authorising grant {name:?} with client {:?} for {}.",
        oauth.name,
        if boxes.is_empty() {
            "no shared mailbox yet".to_owned()
        } else {
            boxes.join(", ")
        }
    );
    let tokens = match redirect {
        None => device(oauth, limit, out).await?,
        Some(port) => code(oauth, port, limit, out).await?,
    };
    let refresh_token = tokens.refresh_token.ok_or(Error::NoRefreshToken)?;
    let grant = GrantFile {
        name: name.to_owned(),
        client: oauth.name.clone(),
        refresh_token,
        scopes: tokens.scopes.unwrap_or_else(|| oauth.scopes.clone()),
        obtained: file::now_rfc3339(),
        last_refresh: None,
        state: GrantState::Active,
        detail: None,
    };
    grant.write(&grants.dir)?;
    let _ = writeln!(
        out,
        "Grant {name:?} authorised and stored in {} (mode 0600). A running mailgate uses it \
         at the next login.",
        file::path(&grants.dir, name)?.display()
    );
    Ok(())
}

async fn device(
    oauth: &OAuthClient,
    limit: Duration,
    out: &mut dyn std::io::Write,
) -> Result<Tokens, Error> {
    if oauth.device_authorization_endpoint.is_none() {
        return Err(Error::Client(format!(
            "[[oauth.client]] {:?} has no device_authorization_endpoint; use --redirect",
            oauth.name
        )));
    }
    let details = client::device_start(oauth).await?;
    let _ = writeln!(
        out,
        "Sign in as the mailbox (or an administrator who may consent for it) at\n  {}\nand \
         enter the code {}",
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    if let Some(complete) = details.verification_uri_complete() {
        let _ = writeln!(out, "(or open {})", complete.secret());
    }
    let _ = writeln!(out, "Waiting for approval...");
    let _ = out.flush();
    let expires = details.expires_in().min(limit);
    Ok(client::device_poll(oauth, &details, expires).await?)
}

/// Authorization code + PKCE over a loopback redirect (RFC 8252 7.3): listen on 127.0.0.1,
/// print the URL, take one `GET /callback?code=...&state=...`, check the state (CSRF), and
/// exchange the code with its verifier.
async fn code(
    oauth: &OAuthClient,
    port: u16,
    limit: Duration,
    out: &mut dyn std::io::Write,
) -> Result<Tokens, Error> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::Redirect(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Redirect(e.to_string()))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let (url, state, verifier) = client::code_start(oauth, &redirect)?;
    let _ = writeln!(
        out,
        "Open this URL in a browser on this machine and sign in as the mailbox:\n  {url}\n\
         Waiting for the redirect to {redirect} ..."
    );
    let _ = out.flush();
    let callback = async {
        loop {
            let (mut tcp, _) = listener
                .accept()
                .await
                .map_err(|e| Error::Redirect(e.to_string()))?;
            let mut buf = vec![0u8; 8192];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            let target = head
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("GET "))
                .and_then(|l| l.split(' ').next())
                .unwrap_or("");
            let Some(query) = target.strip_prefix("/callback?") else {
                let _ = tcp
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
                continue;
            };
            let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let body: &[u8] = b"mailgate: you can close this window.";
            let _ = tcp
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            let _ = tcp.write_all(body).await;
            if get("state").as_deref() != Some(state.secret().as_str()) {
                return Err(Error::Redirect(
                    "the redirect's state does not match (a forged or stale redirect)".into(),
                ));
            }
            if let Some(error) = get("error") {
                return Err(Error::Provider(client::Error::Refused {
                    code: error,
                    description: get("error_description"),
                }));
            }
            return get("code")
                .ok_or_else(|| Error::Redirect("the redirect carries no code".into()));
        }
    };
    let code = tokio::time::timeout(limit, callback)
        .await
        .map_err(|_| Error::Redirect(format!("no redirect within {}s", limit.as_secs())))??;
    Ok(client::code_exchange(oauth, &redirect, code, verifier).await?)
}

/// `mailgate grant status`: one block per grant.
pub fn status(config: &Config, out: &mut dyn std::io::Write) -> Result<(), Error> {
    let grants = config.grants.as_ref().ok_or(Error::NoGrants)?;
    let listed = if grants.dir.exists() {
        GrantFile::list(&grants.dir)?
    } else {
        Vec::new()
    };
    let mut named: Vec<String> = config
        .directory
        .shared_mailboxes()
        .iter()
        .map(|m| m.grant.to_string())
        .collect();
    named.sort();
    named.dedup();
    let mut seen = Vec::new();
    for grant in listed {
        match grant {
            Ok(g) => {
                seen.push(g.name.clone());
                let boxes = mailboxes(config, &g.name);
                let _ = writeln!(out, "grant {}", g.name);
                let _ = writeln!(out, "  state         {}", g.state.as_str());
                if let Some(detail) = &g.detail {
                    let _ = writeln!(out, "  detail        {detail}");
                }
                let _ = writeln!(
                    out,
                    "  mailboxes     {}",
                    if boxes.is_empty() {
                        "(none)".to_owned()
                    } else {
                        boxes.join(", ")
                    }
                );
                let _ = writeln!(out, "  client        {}", g.client);
                let _ = writeln!(out, "  scopes        {}", g.scopes.join(" "));
                let _ = writeln!(out, "  obtained      {}", g.obtained);
                let _ = writeln!(
                    out,
                    "  last refresh  {}",
                    g.last_refresh.as_deref().unwrap_or("never")
                );
            }
            Err(e) => {
                let _ = writeln!(out, "unreadable grant: {e}");
            }
        }
    }
    for name in named.iter().filter(|n| !seen.contains(n)) {
        let _ = writeln!(out, "grant {name}");
        let _ = writeln!(
            out,
            "  state         not authorised (mailgate grant authorize {name})"
        );
        let _ = writeln!(
            out,
            "  mailboxes     {}",
            mailboxes(config, name).join(", ")
        );
    }
    if seen.is_empty() && named.is_empty() {
        let _ = writeln!(out, "no grants in {}", grants.dir.display());
    }
    Ok(())
}

/// `mailgate grant revoke`: at the provider first (RFC 7009, when configured), then here.
pub async fn revoke(
    config: &Config,
    name: &str,
    out: &mut dyn std::io::Write,
) -> Result<(), Error> {
    let grants = config.grants.as_ref().ok_or(Error::NoGrants)?;
    let grant = GrantFile::read(&grants.dir, name)?;
    match config.oauth.clients.iter().find(|c| c.name == grant.client) {
        Some(oauth) => match client::revoke(oauth, &grant.refresh_token).await {
            Ok(true) => {
                let _ = writeln!(out, "Revoked at the provider.");
            }
            Ok(false) => {
                let _ = writeln!(
                    out,
                    "[[oauth.client]] {:?} has no revocation_endpoint: revoke the consent at \
                     the provider too.",
                    oauth.name
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "The provider did not confirm the revocation ({e}); revoke the consent there too."
                );
            }
        },
        None => {
            let _ = writeln!(
                out,
                "No [[oauth.client]] {:?} any more; revoke the consent at the provider.",
                grant.client
            );
        }
    }
    remove(&grants.dir, name)?;
    let _ = writeln!(
        out,
        "Grant {name:?} deleted; logins to {} now fail until it is authorised again.",
        mailboxes(config, name).join(", ")
    );
    Ok(())
}

fn remove(dir: &Path, name: &str) -> Result<(), Error> {
    let path = file::path(dir, name)?;
    std::fs::remove_file(&path).map_err(|source| file::Error::Write { path, source })?;
    Ok(())
}
