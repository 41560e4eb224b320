//! mailgate as an OAuth 2.0 client of a mail provider: the `oauth2` crate's refresh, device
//! authorization (RFC 8628) and authorization code + PKCE (RFC 7636) exchanges, driven through
//! our reqwest 0.13 by [`send`] (oauth2's own reqwest support would add reqwest 0.12).
//!
//! Errors carry the provider's OAuth error code and the transport failure, never a token, a
//! code or the client secret (oauth2 keeps those in types whose `Debug` redacts; our messages
//! never format a request body).

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse as _, TokenUrl,
};

use crate::config::grants::OAuthClient;
use crate::secret::Secret;

type Client =
    BasicClient<EndpointMaybeSet, EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Why an exchange with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider refused (RFC 6749 5.2): `invalid_grant` means the grant is dead.
    #[error("provider refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        code: String,
        description: Option<String>,
    },
    /// No answer, a broken answer, or a server error: try again later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The grant itself is dead (RFC 6749 5.2 `invalid_grant`: the refresh token is invalid,
    /// expired, revoked), not the provider.
    pub fn is_dead_grant(&self) -> bool {
        matches!(self, Error::Refused { code, .. } if code == "invalid_grant")
    }
}

/// The transport error of [`send`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Reqwest(#[from] reqwest::Error),
    #[error("{0}")]
    Http(#[from] http::Error),
}

/// What a successful token request gave.
pub struct Tokens {
    pub access_token: Secret<String>,
    /// A rotated (or first) refresh token; `None` when the provider kept the old one.
    pub refresh_token: Option<Secret<String>>,
    pub expires_in: Option<Duration>,
    pub scopes: Option<Vec<String>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The reqwest client for talking to providers: no redirects (oauth2's advice against SSRF: a
/// token request must not be forwarded anywhere), bounded by the client's request timeout.
fn http(config: &OAuthClient) -> Result<Http, Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .build()
        .map(Http)
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

/// oauth2's `AsyncHttpClient`, over reqwest 0.13. A type rather than oauth2's closure form: a
/// closure's future borrows with a higher-ranked lifetime that keeps the session future from
/// being `Send`.
struct Http(reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(send(&self.0, request))
    }
}

async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut builder = http.request(parts.method, parts.uri.to_string()).body(body);
    for (k, v) in &parts.headers {
        builder = builder.header(k, v);
    }
    let response = builder.send().await?;
    let mut out = http::Response::builder().status(response.status());
    for (k, v) in response.headers() {
        out = out.header(k, v);
    }
    Ok(out.body(response.bytes().await?.to_vec())?)
}

fn client(config: &OAuthClient, redirect: Option<&str>) -> Result<Client, Error> {
    let url = |what: &str, e: oauth2::url::ParseError| Error::Config(format!("{what}: {e}"));
    let mut client = BasicClient::new(ClientId::new(config.client_id.clone()))
        .set_token_uri(
            TokenUrl::new(config.token_endpoint.clone()).map_err(|e| url("token_endpoint", e))?,
        )
        .set_auth_uri_option(
            config
                .authorization_endpoint
                .clone()
                .map(AuthUrl::new)
                .transpose()
                .map_err(|e| url("authorization_endpoint", e))?,
        )
        .set_device_authorization_url_option(
            config
                .device_authorization_endpoint
                .clone()
                .map(DeviceAuthorizationUrl::new)
                .transpose()
                .map_err(|e| url("device_authorization_endpoint", e))?,
        );
    if let Some(secret) = &config.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose().clone()));
    }
    if let Some(redirect) = redirect {
        client = client.set_redirect_uri(
            RedirectUrl::new(redirect.to_owned()).map_err(|e| url("redirect", e))?,
        );
    }
    Ok(client)
}

/// Maps oauth2's error, keeping the provider's code and dropping everything else it holds
/// (a parse error keeps the response body, which may hold a token).
fn token_error<T: oauth2::ErrorResponse + 'static>(
    e: RequestTokenError<HttpError, T>,
    code_of: impl Fn(&T) -> (String, Option<String>),
) -> Error {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let (code, description) = code_of(&r);
            Error::Refused { code, description }
        }
        RequestTokenError::Request(e) => Error::Unavailable(e.to_string()),
        RequestTokenError::Parse(e, _) => {
            Error::Unavailable(format!("unreadable token response: {}", e.path()))
        }
        RequestTokenError::Other(e) => Error::Unavailable(e),
    }
}

fn basic_code(r: &oauth2::basic::BasicErrorResponse) -> (String, Option<String>) {
    let code = match r.error() {
        BasicErrorResponseType::Extension(s) => s.clone(),
        other => other.as_ref().to_owned(),
    };
    (code, r.error_description().cloned())
}

fn tokens(r: &BasicTokenResponse) -> Tokens {
    Tokens {
        access_token: Secret::new(r.access_token().secret().clone()),
        refresh_token: r.refresh_token().map(|t| Secret::new(t.secret().clone())),
        expires_in: r.expires_in(),
        scopes: r
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect()),
    }
}

/// RFC 6749 section 6: a new access token (and maybe a rotated refresh token).
pub async fn refresh(
    config: &OAuthClient,
    refresh_token: &Secret<String>,
) -> Result<Tokens, Error> {
    let http = http(config)?;
    let client = client(config, None)?;
    let rt = RefreshToken::new(refresh_token.expose().clone());
    let response = client
        .exchange_refresh_token(&rt)
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, basic_code))?;
    Ok(tokens(&response))
}

/// RFC 8628 section 3.1-3.2: ask for a user code. `show` gets the verification URL (complete
/// with the code when the provider gives one) and the user code, then [`device_poll`] waits.
pub async fn device_start(
    config: &OAuthClient,
) -> Result<StandardDeviceAuthorizationResponse, Error> {
    let http = http(config)?;
    let client = client(config, None)?;
    client
        .exchange_device_code()
        .map_err(|e| Error::Config(format!("device flow: {e}")))?
        .add_scopes(config.scopes.iter().cloned().map(Scope::new))
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, basic_code))
}

/// RFC 8628 section 3.4-3.5: poll the token endpoint at the interval asked until the user
/// approved or denied, or `limit` passed.
pub async fn device_poll(
    config: &OAuthClient,
    details: &StandardDeviceAuthorizationResponse,
    limit: Duration,
) -> Result<Tokens, Error> {
    let http = http(config)?;
    let client = client(config, None)?;
    let response = client
        .exchange_device_access_token(details)
        .request_async(&http, tokio::time::sleep, Some(limit))
        .await
        .map_err(|e| {
            token_error(e, |r: &oauth2::DeviceCodeErrorResponse| {
                let code = match r.error() {
                    oauth2::DeviceCodeErrorResponseType::Basic(b) => match b {
                        BasicErrorResponseType::Extension(s) => s.clone(),
                        other => other.as_ref().to_owned(),
                    },
                    other => other.as_ref().to_owned(),
                };
                (code, r.error_description().cloned())
            })
        })?;
    Ok(tokens(&response))
}

/// Authorization code + PKCE (RFC 7636, S256) with a loopback redirect (RFC 8252 7.3): the
/// URL to open and what [`code_exchange`] needs.
pub fn code_start(
    config: &OAuthClient,
    redirect: &str,
) -> Result<(String, CsrfToken, PkceCodeVerifier), Error> {
    let client = client(config, Some(redirect))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .map_err(|e| Error::Config(format!("authorization_endpoint: {e}")))?
        .add_scopes(config.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    Ok((url.to_string(), state, verifier))
}

pub async fn code_exchange(
    config: &OAuthClient,
    redirect: &str,
    code: String,
    verifier: PkceCodeVerifier,
) -> Result<Tokens, Error> {
    let http = http(config)?;
    let client = client(config, Some(redirect))?;
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .map_err(|e| token_error(e, basic_code))?;
    Ok(tokens(&response))
}

/// RFC 7009: tell the provider the refresh token is no longer wanted. `Ok(false)`: the
/// client has no revocation endpoint. A plain form POST (section 2.1) rather than oauth2's:
/// oauth2 insists on https:// here, and the config already allows http:// only to loopback.
pub async fn revoke(config: &OAuthClient, refresh_token: &Secret<String>) -> Result<bool, Error> {
    let Some(endpoint) = &config.revocation_endpoint else {
        return Ok(false);
    };
    let Http(http) = http(config)?;
    let mut form = vec![
        ("token", refresh_token.expose().as_str()),
        ("token_type_hint", "refresh_token"),
    ];
    let mut request = http.post(endpoint);
    match &config.client_secret {
        Some(secret) => {
            request = request.basic_auth(&config.client_id, Some(secret.expose()));
        }
        None => form.push(("client_id", config.client_id.as_str())),
    }
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(true);
    }
    // RFC 7009 2.2.1: an error response is RFC 6749 5.2 JSON; keep its code only.
    let body = response.bytes().await.unwrap_or_default();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(Error::Refused {
        code,
        description: None,
    })
}
