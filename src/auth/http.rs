//! HTTP to the identity provider: one reqwest client per provider with its timeouts, no
//! redirects (oauth2's docs: a redirect is an SSRF vector), and a bounded body reader so an IdP
//! answering a huge body cannot exhaust memory.
//!
//! Every error here is [`AuthError::Unavailable`]. reqwest errors are shown without their URL:
//! a tokeninfo URL carries the token in its query.

use std::sync::Arc;

use reqwest::StatusCode;

use super::AuthError;
use crate::config::oauth::Provider;

#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    max_body: usize,
}

impl Http {
    pub(crate) fn new(p: &Arc<Provider>) -> Result<Http, AuthError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(p.connect_timeout)
            .timeout(p.request_timeout)
            .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AuthError::Unavailable(format!("http client: {}", e.without_url())))?;
        Ok(Http {
            client,
            max_body: p.max_response_bytes,
        })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` and reads at most `max_response_bytes` of the body.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), AuthError> {
        let unavailable = |e: reqwest::Error| {
            let e = e.without_url();
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            AuthError::Unavailable(format!("{what}: {kind}: {e}"))
        };
        let mut response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(AuthError::Unavailable(format!(
                "{what}: response larger than {} bytes",
                self.max_body
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(AuthError::Unavailable(format!(
                    "{what}: response larger than {} bytes",
                    self.max_body
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    /// GET `url`, expecting 200 and a JSON object.
    pub(crate) async fn get_json(
        &self,
        url: &str,
        what: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let (status, body) = self.send(self.client.get(url), what).await?;
        if status != StatusCode::OK {
            return Err(AuthError::Unavailable(format!("{what}: HTTP {status}")));
        }
        json_object(&body, what)
    }
}

pub(crate) fn json_object(
    body: &[u8],
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(AuthError::Unavailable(format!("{what}: not a JSON object"))),
        Err(e) => Err(AuthError::Unavailable(format!("{what}: not JSON: {e}"))),
    }
}
