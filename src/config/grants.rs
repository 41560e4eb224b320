//! `[[oauth.client]]` and `[grants]`: mailgate as an OAuth *client* of a mail provider, and where
//! the grants it holds for shared mailboxes live (the `crate::grants` store).
//!
//! ```toml
//! [[oauth.client]]
//! name = "m365"
//! client_id = "00000000-0000-0000-0000-000000000000"
//! client_secret_file = "secrets/m365-client-secret"     # or "env:NAME"; public clients: none
//! token_endpoint = "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token"
//! device_authorization_endpoint = "https://login.microsoftonline.com/TENANT/oauth2/v2.0/devicecode"
//! scopes = ["https://outlook.office365.com/IMAP.AccessAsUser.All", "offline_access"]
//!
//! [grants]
//! dir = "/var/lib/mailgate/grants"
//! ```
//!
//! Secrets are resolved here and held as [`Secret`]; their values never appear in an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::oauth::V;
use crate::secret::Secret;

/// One `[[oauth.client]]`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub name: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub request_timeout: Option<String>,
}

/// `[grants]`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsFile {
    pub dir: String,
    pub login_separator: Option<String>,
    pub retry_after: Option<String>,
}

/// A validated `[[oauth.client]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub name: String,
    pub client_id: String,
    /// `None`: a public client (no secret; the provider must allow that for the grant type).
    pub client_secret: Option<Secret<String>>,
    pub token_endpoint: String,
    /// RFC 8628 device authorization endpoint (`mailgate grant authorize`).
    pub device_authorization_endpoint: Option<String>,
    /// Authorization endpoint for code + PKCE (`mailgate grant authorize --redirect`).
    pub authorization_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint (`mailgate grant revoke` tells the provider too).
    pub revocation_endpoint: Option<String>,
    pub scopes: Vec<String>,
    /// Each token-endpoint request. 10 s, as the `[[oauth.provider]]` requests.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for OAuthClient {
    /// The secret is shown as present or absent only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("token_endpoint", &self.token_endpoint)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Validated `[grants]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// One `NAME.json` per grant, mode 0600; the directory itself should be 0700.
    pub dir: PathBuf,
    /// `LOGIN "mailbox*user" "user's password"`: `*`, as Dovecot's master-user separator.
    pub login_separator: String,
    /// After the provider failed to answer (down, slow), logins to the grant's mailboxes are
    /// refused as temporary failures for this long without asking it again: a down provider is
    /// not hammered by every login. 10 s.
    pub retry_after: Duration,
}

pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SEPARATOR: &str = "*";
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

pub(super) fn clients(
    files: Vec<ClientFile>,
    base_dir: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<OAuthClient> {
    let mut out: Vec<OAuthClient> = Vec::new();
    for (i, c) in files.into_iter().enumerate() {
        let at = if c.name.is_empty() {
            format!("oauth.client[{i}]")
        } else {
            format!("oauth.client \"{}\"", c.name)
        };
        let mut v = V { at, errors };
        if c.name.is_empty() || c.name.len() > 64 {
            v.invalid("name", "must be 1 to 64 characters");
        }
        if out.iter().any(|o| o.name == c.name) {
            v.invalid("name", format!("duplicate client name {:?}", c.name));
        }
        if c.client_id.is_empty() {
            v.invalid("client_id", "must not be empty");
        }
        v.url("token_endpoint", &c.token_endpoint);
        for (key, value) in [
            (
                "device_authorization_endpoint",
                &c.device_authorization_endpoint,
            ),
            ("authorization_endpoint", &c.authorization_endpoint),
            ("revocation_endpoint", &c.revocation_endpoint),
        ] {
            if let Some(value) = value {
                v.url(key, value);
            }
        }
        if c.device_authorization_endpoint.is_none() && c.authorization_endpoint.is_none() {
            v.invalid(
                "device_authorization_endpoint",
                "set device_authorization_endpoint (RFC 8628 device flow) or \
                 authorization_endpoint (code + PKCE), or both: a grant must be authorisable",
            );
        }
        let client_secret = v.client_secret(
            c.client_secret.as_deref(),
            c.client_secret_file.as_deref(),
            base_dir,
        );
        let request_timeout = v.duration(
            "request_timeout",
            c.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
            false,
        );
        out.push(OAuthClient {
            name: c.name,
            client_id: c.client_id,
            client_secret,
            token_endpoint: c.token_endpoint,
            device_authorization_endpoint: c.device_authorization_endpoint,
            authorization_endpoint: c.authorization_endpoint,
            revocation_endpoint: c.revocation_endpoint,
            scopes: c.scopes,
            request_timeout,
        });
    }
    out
}

pub(super) fn grants(file: GrantsFile, base_dir: &Path, errors: &mut Vec<ConfigError>) -> Grants {
    let mut v = V {
        at: "grants".to_owned(),
        errors,
    };
    if file.dir.is_empty() {
        v.invalid("dir", "must not be empty");
    }
    let login_separator = file
        .login_separator
        .unwrap_or_else(|| DEFAULT_SEPARATOR.to_owned());
    if login_separator.is_empty()
        || login_separator.len() > 4
        || login_separator
            .chars()
            .any(|c| c.is_alphanumeric() || c.is_whitespace() || c == '@' || c == '.')
    {
        v.invalid(
            "login_separator",
            format!(
                "{login_separator:?} must be 1 to 4 characters that cannot occur in an address \
                 (not a letter, digit, space, '@' or '.')"
            ),
        );
    }
    let retry_after = v.duration(
        "retry_after",
        file.retry_after.as_deref(),
        DEFAULT_RETRY_AFTER,
        false,
    );
    Grants {
        dir: base_dir.join(&file.dir),
        login_separator,
        retry_after,
    }
}
