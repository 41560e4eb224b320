//! TEMP STUB (lead) — replaced by the config branch.
use crate::config::{ServerTls, Upstream};
use std::sync::Arc;
#[derive(Debug, thiserror::Error)]
#[error("tls")]
pub struct TlsError;
pub fn server_config(_t: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Err(TlsError)
}
pub fn upstream_connector(
    _u: &Upstream,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    TlsError,
> {
    Err(TlsError)
}
